//! `transform:` and `compliance:` — what is removed or masked from a payload before any
//! field is read, and which fields must not be present afterwards.
//!
//! Invariant: transforms run before anything else reads the payload (SPEC §1.5), on a copy;
//! the feed's event is never changed. An event that still carries a denied field after the
//! transforms is refused as a whole (reason `compliance`), never partly written.

use std::borrow::Cow;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::spec::{PathSeg, Source};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// All but the last four characters become `*`.
    Last4,
    /// The value becomes `REDACTED`.
    Redact,
    /// The value becomes the lowercase hex SHA-256 of its text.
    Sha256,
}

impl Mask {
    pub fn parse(s: &str) -> Result<Mask, String> {
        match s.trim() {
            "last4" => Ok(Mask::Last4),
            "redact" => Ok(Mask::Redact),
            "sha256" => Ok(Mask::Sha256),
            other => Err(format!(
                "mask {other:?} is not `last4`, `redact` or `sha256`"
            )),
        }
    }

    fn apply(self, v: &Value) -> Value {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Value::String(match self {
            Mask::Last4 => {
                let n = text.chars().count();
                text.chars()
                    .enumerate()
                    .map(|(i, c)| if i + 4 < n { '*' } else { c })
                    .collect()
            }
            Mask::Redact => "REDACTED".into(),
            Mask::Sha256 => Sha256::digest(text.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Transforms {
    pub drop: Vec<Vec<PathSeg>>,
    pub mask: Vec<(Vec<PathSeg>, Mask)>,
    pub deny: Vec<(String, Vec<PathSeg>)>,
}

/// Parses a payload path for transform/compliance keys.
pub fn path(text: &str) -> Result<Vec<PathSeg>, String> {
    match Source::parse(text)? {
        Source::Path(p) => Ok(p),
        _ => Err(format!("{text:?} is not a payload path")),
    }
}

impl Transforms {
    /// Whether there are none (the payload goes to the fields as sent).
    pub fn is_empty(&self) -> bool {
        self.drop.is_empty() && self.mask.is_empty() && self.deny.is_empty()
    }

    /// The payload the fields read: transformed if anything applies, else borrowed as is.
    /// `Err` names the denied field still present.
    pub fn apply<'a>(
        &self,
        payload: &'a Map<String, Value>,
    ) -> Result<Cow<'a, Map<String, Value>>, String> {
        let touches = self
            .drop
            .iter()
            .chain(self.mask.iter().map(|(p, _)| p))
            .any(|p| present(payload, p));
        let payload = if touches {
            let mut p = payload.clone();
            for d in &self.drop {
                remove(&mut p, d);
            }
            for (m, mask) in &self.mask {
                for_each_mut(&mut p, m, &mut |v| {
                    if !v.is_null() {
                        *v = mask.apply(v);
                    }
                });
            }
            Cow::Owned(p)
        } else {
            Cow::Borrowed(payload)
        };
        for (name, d) in &self.deny {
            if present(&payload, d) {
                return Err(format!(
                    "the event carries {name}, which compliance.deny_fields forbids sending"
                ));
            }
        }
        Ok(payload)
    }
}

/// Whether any value (not null) sits at `path`; `[*]` means any element.
fn present(payload: &Map<String, Value>, path: &[PathSeg]) -> bool {
    fn go(v: &Value, path: &[PathSeg]) -> bool {
        match path.split_first() {
            None => !v.is_null(),
            Some((PathSeg::Key(k), rest)) => v
                .as_object()
                .and_then(|o| o.get(k))
                .is_some_and(|c| go(c, rest)),
            Some((PathSeg::Index(i), rest)) => v
                .as_array()
                .and_then(|a| a.get(*i))
                .is_some_and(|c| go(c, rest)),
            Some((PathSeg::Each, rest)) => {
                v.as_array().is_some_and(|a| a.iter().any(|c| go(c, rest)))
            }
        }
    }
    match path.split_first() {
        Some((PathSeg::Key(k), rest)) => payload.get(k).is_some_and(|v| go(v, rest)),
        _ => false,
    }
}

/// Calls `f` on every value at `path`.
fn for_each_mut(payload: &mut Map<String, Value>, path: &[PathSeg], f: &mut dyn FnMut(&mut Value)) {
    fn go(v: &mut Value, path: &[PathSeg], f: &mut dyn FnMut(&mut Value)) {
        match path.split_first() {
            None => f(v),
            Some((PathSeg::Key(k), rest)) => {
                if let Some(c) = v.as_object_mut().and_then(|o| o.get_mut(k)) {
                    go(c, rest, f);
                }
            }
            Some((PathSeg::Index(i), rest)) => {
                if let Some(c) = v.as_array_mut().and_then(|a| a.get_mut(*i)) {
                    go(c, rest, f);
                }
            }
            Some((PathSeg::Each, rest)) => {
                for c in v.as_array_mut().into_iter().flatten() {
                    go(c, rest, f);
                }
            }
        }
    }
    if let Some((PathSeg::Key(k), rest)) = path.split_first() {
        if let Some(v) = payload.get_mut(k) {
            go(v, rest, f);
        }
    }
}

/// Removes what sits at `path`. Object keys are removed; list elements are set to null
/// (removing them would renumber the others, which `items[1].code` fields rely on).
fn remove(payload: &mut Map<String, Value>, path: &[PathSeg]) {
    match path.split_last() {
        Some((PathSeg::Key(k), [])) => {
            payload.remove(k);
        }
        Some((PathSeg::Key(k), parent)) => {
            let k = k.clone();
            for_each_mut(payload, parent, &mut |v| {
                if let Some(o) = v.as_object_mut() {
                    o.remove(&k);
                }
            });
        }
        Some(_) => for_each_mut(payload, path, &mut |v| *v = Value::Null),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(
            Mask::Last4.apply(&Value::from("555-123-4567")),
            Value::from("********4567")
        );
        assert_eq!(Mask::Last4.apply(&Value::from("12")), Value::from("12"));
        assert_eq!(
            Mask::Sha256.apply(&Value::from("abc")),
            Value::from("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
    }

    #[test]
    fn every_element_paths() {
        let t = Transforms {
            drop: vec![path("people[*].ssn").unwrap()],
            mask: vec![(path("people[*].phone").unwrap(), Mask::Last4)],
            deny: vec![("people[*].ssn".into(), path("people[*].ssn").unwrap())],
        };
        let p: Map<String, Value> = serde_json::from_str(
            r#"{"people":[{"ssn":"1","phone":"5551234"},{"phone":null},{"ssn":"2"}]}"#,
        )
        .unwrap();
        let out = t.apply(&p).unwrap();
        assert_eq!(
            Value::Object(out.into_owned()).to_string(),
            r#"{"people":[{"phone":"***1234"},{"phone":null},{}]}"#
        );
        let deny_only = Transforms {
            deny: t.deny.clone(),
            ..Transforms::default()
        };
        assert!(deny_only.apply(&p).unwrap_err().contains("people[*].ssn"));
    }
}
