//! Where records go: the [`Target`] trait and its kinds (`file`, `sftp`, `http`).
//!
//! A target is told what the last *committed* delivery left behind (its [`Checkpoint`],
//! stored by the ledger in the same transaction as the cursor) and returns the checkpoint
//! after this delivery. That is how a target makes a delivery that was interrupted by a
//! crash idempotent: the file drops ([`drop`]: local folder and SFTP, one protocol) cut
//! their own uncommitted tail, the HTTP target relies on `Idempotency-Key`.
//!
//! Before a delivery the connector asks [`Target::prepare`] whether the checkpoint
//! describes where the delivery will write. If it does not (a new file, a new date, a file
//! someone else changed, a batch file still to be named), the target proposes an *intent*:
//! a checkpoint that does, which the connector commits durably before calling
//! [`Target::deliver`] with it. A retry after a crash or a failure starts from that intent,
//! so it writes to the same place whatever the clock says by then.
//!
//! Errors are classified where the knowledge is: [`DeliveryError::Transient`] is retried
//! with back-off, [`DeliveryError::Permanent`] follows the connector's `on_failure`.

pub mod drop;
pub mod file;
pub mod http;
pub mod rotate;
pub mod sftp;

use std::time::Duration;

use chrono::DateTime;
use chrono_tz::Tz;

use crate::event::{Event, Record};

/// Opaque per-target state committed with the cursor (empty before the first delivery).
pub type Checkpoint = Vec<u8>;

/// One delivery: consecutive mapped events of one connector, in `seq` order.
#[derive(Debug)]
pub struct Delivery<'a> {
    /// The connector's name (`target:` in the map).
    pub connector: &'a str,
    /// The events and the records the map made of them, in `seq` order.
    pub items: &'a [(Event, Record)],
    /// The delivery time in the appliance's timezone, for `{{date}}` templates (injected so
    /// tests control it).
    pub now: DateTime<Tz>,
    /// A deliberate re-delivery (`ess replay`) of events delivered before: a target that
    /// names outputs after their batch must not mistake it for a retry of the original.
    pub replay: bool,
}

impl Delivery<'_> {
    pub fn first_seq(&self) -> u64 {
        self.items.first().map_or(0, |(e, _)| e.seq)
    }
    pub fn last_seq(&self) -> u64 {
        self.items.last().map_or(0, |(e, _)| e.seq)
    }
}

/// Expands a file-name template: `{{date}}` (`%Y-%m-%d`), `{{date:STRFTIME}}`,
/// `{{target}}` (the connector name) and `{{seq}}` (the delivery's first seq).
/// Unknown placeholders are left as written; [`check_file_template`] refuses them first.
pub fn file_name(template: &str, connector: &str, first_seq: u64, now: &DateTime<Tz>) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        let inner = rest[start + 2..start + len].trim();
        match inner.split_once(':') {
            _ if inner == "date" => out.push_str(&now.format("%Y-%m-%d").to_string()),
            Some(("date", fmt)) => out.push_str(&now.format(fmt).to_string()),
            _ if inner == "target" => out.push_str(connector),
            _ if inner == "seq" => out.push_str(&first_seq.to_string()),
            _ => out.push_str(&rest[start..start + len + 2]),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Problems with a file-name template: unknown placeholders, bad date formats, slashes.
pub fn check_file_template(template: &str) -> Result<(), String> {
    if template.is_empty() || template.contains('/') {
        return Err(format!(
            "file name {template:?} must be a plain name (no '/'); put folders in dir"
        ));
    }
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            return Err(format!("unclosed {{{{ in file name {template:?}"));
        };
        let inner = rest[start + 2..start + len].trim();
        match inner.split_once(':') {
            _ if matches!(inner, "date" | "target" | "seq") => {}
            Some(("date", fmt)) => {
                use chrono::format::{Item, StrftimeItems};
                if StrftimeItems::new(fmt).any(|i| matches!(i, Item::Error)) {
                    return Err(format!("bad date format {fmt:?} in file name {template:?}"));
                }
            }
            _ => {
                return Err(format!(
                    "unknown placeholder {{{{{inner}}}}} in file name {template:?} (known: {{{{date}}}}, {{{{date:FORMAT}}}}, {{{{target}}}}, {{{{seq}}}})"
                ));
            }
        }
        rest = &rest[start + len + 2..];
    }
    Ok(())
}

/// Why a delivery did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying: the target is down, slow, full, or answered 5xx / 429.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Retrying the same bytes will not help: 4xx, SOAP fault, refused host key...
    #[error("{0}")]
    Permanent(String),
}

impl DeliveryError {
    pub fn transient(message: impl Into<String>) -> Self {
        DeliveryError::Transient {
            message: message.into(),
            retry_after: None,
        }
    }
}

/// What [`Target::prepare`] decided for one delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    /// The checkpoint to commit as the delivery's intent and to deliver from, when the
    /// committed one does not describe where this delivery writes. `None`: deliver from the
    /// checkpoint given to `prepare`.
    pub intent: Option<Checkpoint>,
    /// The place the checkpoint describes changed (moved away, emptied, replaced) while an
    /// uncommitted write of ours may have been in it: whether those records reached the
    /// legacy side cannot be known, so they are delivered again (at least once). Counted
    /// (`ess_drop_ambiguous_total`), never hidden.
    pub ambiguous: bool,
}

/// A destination for one connector's records.
#[async_trait::async_trait]
pub trait Target: Send {
    /// Called before [`Target::deliver`] with the checkpoint the delivery would start from
    /// (the committed one, or the intent of an interrupted attempt). Touches nothing the
    /// legacy side reads except, at most, creating an empty file to learn its identity.
    /// The default (targets without a place to describe, like HTTP): no intent.
    async fn prepare(
        &mut self,
        _delivery: &Delivery<'_>,
        _checkpoint: &[u8],
    ) -> Result<Prepared, DeliveryError> {
        Ok(Prepared::default())
    }

    /// Delivers `delivery` exactly once given `checkpoint`, the value the last committed
    /// delivery returned. Returns the checkpoint to commit with the cursor. Must leave the
    /// target so that calling it again with the same `checkpoint` (after a crash, or after
    /// an error) does not duplicate anything.
    async fn deliver(
        &mut self,
        delivery: &Delivery<'_>,
        checkpoint: &[u8],
    ) -> Result<Checkpoint, DeliveryError>;

    /// The most events worth handing over at once.
    fn max_batch(&self) -> usize {
        1000
    }

    /// Whether a delivery must be re-tried with exactly the same events after a crash (the
    /// connector then pins the range in the delivery's intent). Targets that name an output
    /// after its batch (batch files) need this; appends do not.
    fn pins_batches(&self) -> bool {
        false
    }

    /// Whether a delivery commit lost after it returned (a power cut before the next
    /// durable commit moves the cursor back to an earlier delivery) is repaired by this
    /// target's own checkpoint: a delivery again from the earlier checkpoint leaves the
    /// destination as if the lost commits had been made. The connector then commits such
    /// deliveries without waiting for their fsync ([`crate::ledger::Ledger::commit_progress_deferred`]).
    /// An append drop can (its mark finds what uncommitted attempts appended and cuts it
    /// before writing it again); an HTTP endpoint cannot (the request went out), and a
    /// batch file is pinned by its intent. The default: no.
    fn repairs_lost_commits(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn file_name_templates() {
        let now = chrono_tz::America::New_York
            .with_ymd_and_hms(2025, 4, 12, 23, 59, 0)
            .unwrap();
        assert_eq!(file_name("permit.txt", "c", 7, &now), "permit.txt");
        assert_eq!(
            file_name("p_{{date}}.txt", "c", 7, &now),
            "p_2025-04-12.txt"
        );
        assert_eq!(
            file_name("p_{{date:%Y%m%d}}_{{seq}}.{{target}}", "c", 7, &now),
            "p_20250412_7.c"
        );
        assert!(check_file_template("p_{{date:%Y%m%d}}_{{seq}}.txt").is_ok());
        assert!(
            check_file_template("p_{{when}}.txt")
                .unwrap_err()
                .contains("unknown placeholder {{when}}")
        );
        assert!(check_file_template("a/b.txt").is_err());
        assert!(check_file_template("p_{{date").is_err());
    }
}
