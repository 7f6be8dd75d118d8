//! `transform:` and `compliance:` — what is removed or masked from a payload before any
//! field is read, and which fields must not be present afterwards.
//!
//! Invariant: transforms run before anything else reads the payload (SPEC §1.5), on a copy;
//! the feed's event is never changed. An event that still carries a denied field after the
//! transforms is refused as a whole (reason `compliance`), never partly written.

use std::borrow::Cow;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::field::lookup;
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
            .any(|p| lookup(payload, p).is_some());
        let payload = if touches {
            let mut p = payload.clone();
            for d in &self.drop {
                remove(&mut p, d);
            }
            for (m, mask) in &self.mask {
                if let Some(v) = get_mut(&mut p, m) {
                    *v = mask.apply(v);
                }
            }
            Cow::Owned(p)
        } else {
            Cow::Borrowed(payload)
        };
        for (name, d) in &self.deny {
            if lookup(&payload, d).is_some() {
                return Err(format!(
                    "the event carries {name}, which compliance.deny_fields forbids sending"
                ));
            }
        }
        Ok(payload)
    }
}

fn get_mut<'a>(payload: &'a mut Map<String, Value>, path: &[PathSeg]) -> Option<&'a mut Value> {
    let (first, rest) = path.split_first()?;
    let PathSeg::Key(k) = first else { return None };
    let mut v = payload.get_mut(k)?;
    for seg in rest {
        v = match seg {
            PathSeg::Key(k) => v.as_object_mut()?.get_mut(k)?,
            PathSeg::Index(i) => v.as_array_mut()?.get_mut(*i)?,
        };
    }
    Some(v)
}

fn remove(payload: &mut Map<String, Value>, path: &[PathSeg]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let PathSeg::Key(k) = last else {
        // Removing a list element would renumber the others; blank it instead.
        if let Some(v) = get_mut(payload, path) {
            *v = Value::Null;
        }
        return;
    };
    if parent.is_empty() {
        payload.remove(k);
    } else if let Some(Value::Object(o)) = get_mut(payload, parent) {
        o.remove(k);
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
}
