//! `ess list` (per connector: pending, retrying, re-queued, dead, delivered) and `ess show`
//! (one event: metadata, where it stands at every connector, the record each map makes).

use serde::{Deserialize, Serialize};

use super::{ConnectorInfo, DeliveryState, Error, Reader, delivery_state, rfc3339, rfc3339_micros};
use crate::event::{Event, Seq};
use crate::ledger::view::View;
use crate::map::encoding::Encoding;

/// Most feed rows one list scans per connector looking for matching events.
const SCAN_MAX: usize = 1_000_000;
/// Events read at a time while scanning.
const CHUNK: usize = 1024;

/// Which entries `ess list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    /// Pending (with the retrying head and queued replays) and dead.
    #[default]
    All,
    /// Events the connector has still to deliver: queued replays, then after the cursor.
    Pending,
    /// Dead letters.
    Dead,
    /// The newest delivered events (what `ess replay --from/--to` can send again).
    Delivered,
}

/// One line of `ess list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    pub target: String,
    pub seq: Seq,
    /// `pending`, `retrying` (the head, after a failed attempt), `requeued`, `dead` or
    /// `delivered`.
    pub state: String,
    /// `None` when the event is no longer in the feed.
    pub event_type: Option<String>,
    pub key: Option<String>,
    /// RFC 3339, UTC.
    pub received_at: Option<String>,
    pub attempts: Option<u32>,
    /// Dead letters: `map`, `compliance`, `permanent`, `retries`, `skipped`.
    pub reason: Option<String>,
    /// Last error or dead-letter message.
    pub message: Option<String>,
    /// Dead letters: when parked; retrying: when the next attempt is due. RFC 3339, UTC.
    pub at: Option<String>,
}

fn entry(target: &str, seq: Seq, state: &str, ev: Option<&Event>) -> ListEntry {
    ListEntry {
        target: target.to_owned(),
        seq,
        state: state.to_owned(),
        event_type: ev.map(|e| e.event_type.clone()),
        key: ev.map(|e| e.key.clone()),
        received_at: ev.map(|e| rfc3339(e.received_at)),
        attempts: None,
        reason: None,
        message: None,
        at: None,
    }
}

/// Collects up to `limit` entries; `true` once one more was found than fits.
struct Page {
    entries: Vec<ListEntry>,
    limit: usize,
    more: bool,
}

impl Page {
    fn push(&mut self, e: ListEntry) -> bool {
        if self.entries.len() >= self.limit {
            self.more = true;
            return false;
        }
        self.entries.push(e);
        true
    }
}

impl Reader {
    /// Up to `limit` entries of `kind` per connector; `true` if some connector had more.
    pub fn list(
        &self,
        infos: &[ConnectorInfo],
        kind: ListKind,
        limit: usize,
    ) -> Result<(Vec<ListEntry>, bool), Error> {
        // redb may panic on a damaged page: contained as a damage report.
        crate::feed::guarded("ledger", || self.list_unguarded(infos, kind, limit))
    }

    fn list_unguarded(
        &self,
        infos: &[ConnectorInfo],
        kind: ListKind,
        limit: usize,
    ) -> Result<(Vec<ListEntry>, bool), Error> {
        let view = self.view()?;
        let mut all = Vec::new();
        let mut truncated = false;
        for info in infos {
            let parts: &[ListKind] = match kind {
                ListKind::All => &[ListKind::Pending, ListKind::Dead],
                k => std::slice::from_ref(match k {
                    ListKind::Pending => &ListKind::Pending,
                    ListKind::Dead => &ListKind::Dead,
                    _ => &ListKind::Delivered,
                }),
            };
            for part in parts {
                let mut page = Page {
                    entries: Vec::new(),
                    limit,
                    more: false,
                };
                match part {
                    ListKind::Pending => self.pending(&view, info, &mut page)?,
                    ListKind::Dead => self.dead(&view, info, &mut page)?,
                    _ => self.delivered(&view, info, &mut page)?,
                }
                truncated |= page.more;
                all.append(&mut page.entries);
            }
        }
        Ok((all, truncated))
    }

    fn dead(&self, view: &View, info: &ConnectorInfo, page: &mut Page) -> Result<(), Error> {
        for (seq, letter) in view.dead_letters(&info.name, 0, page.limit + 1)? {
            let ev = self.get(seq)?;
            let mut e = entry(&info.name, seq, "dead", ev.as_ref());
            e.attempts = Some(letter.attempts);
            e.reason = Some(letter.reason);
            e.message = Some(letter.message);
            e.at = Some(rfc3339_micros(letter.at_micros));
            if !page.push(e) {
                break;
            }
        }
        Ok(())
    }

    fn pending(&self, view: &View, info: &ConnectorInfo, page: &mut Page) -> Result<(), Error> {
        let name = &info.name;
        let retry = view.retry(name)?;
        let mark = |mut e: ListEntry| {
            if let Some(r) = retry.as_ref().filter(|r| r.seq == e.seq) {
                e.state = "retrying".into();
                e.attempts = Some(r.attempts);
                e.message = Some(r.last_error.clone());
                e.at = Some(rfc3339(r.next_at()));
            }
            e
        };
        for seq in view.requeued(name, page.limit + 1)?.0 {
            let e = mark(entry(name, seq, "requeued", self.get(seq)?.as_ref()));
            if !page.push(e) {
                return Ok(());
            }
        }
        if info.mapping.is_none() {
            return Ok(()); // no map: nothing will be taken
        }
        let mut after = match view.cursor(name)? {
            Some(c) => c.seq,
            // A connector that never ran starts at the beginning, or takes nothing old.
            None if info.start_latest => return Ok(()),
            None => 0,
        };
        let mut scanned = 0;
        while scanned < SCAN_MAX {
            let events = self.read_after(after, CHUNK)?;
            let Some(last) = events.last().map(|e| e.seq) else {
                return Ok(());
            };
            scanned += events.len();
            for ev in events.iter().filter(|e| info.selects(&e.event_type)) {
                if !page.push(mark(entry(name, ev.seq, "pending", Some(ev)))) {
                    return Ok(());
                }
            }
            after = last;
        }
        page.more = true;
        Ok(())
    }

    /// The newest `limit` delivered events, oldest of them first.
    fn delivered(&self, view: &View, info: &ConnectorInfo, page: &mut Page) -> Result<(), Error> {
        let name = &info.name;
        let Some(cursor) = view.cursor(name)? else {
            return Ok(());
        };
        let mut newest_first = Vec::new();
        let (mut upto, mut scanned) = (cursor.seq, 0);
        'scan: while upto > 0 && scanned < SCAN_MAX {
            let from = upto.saturating_sub(CHUNK as u64);
            let mut events = self.read_after(from, CHUNK)?;
            events.retain(|e| e.seq <= upto);
            scanned += CHUNK;
            for ev in events.iter().rev() {
                if delivery_state(view, info, ev)? != DeliveryState::Delivered {
                    continue;
                }
                if newest_first.len() == page.limit {
                    page.more = true;
                    break 'scan;
                }
                newest_first.push(entry(name, ev.seq, "delivered", Some(ev)));
            }
            upto = from;
        }
        page.entries.extend(newest_first.into_iter().rev());
        Ok(())
    }

    /// `ess show`: everything about `event`, from one read transaction.
    pub fn show(&self, infos: &[ConnectorInfo], event: &Event) -> Result<EventReport, Error> {
        crate::feed::guarded("ledger", || self.show_unguarded(infos, event))
    }

    fn show_unguarded(&self, infos: &[ConnectorInfo], event: &Event) -> Result<EventReport, Error> {
        let view = self.view()?;
        let mut targets = Vec::new();
        for info in infos {
            let state = delivery_state(&view, info, event)?;
            let detail = detail(&view, info, event.seq, state)?;
            let (record, record_error) = match (&info.mapping, state) {
                (_, DeliveryState::Filtered) | (None, _) => (None, None),
                (Some(m), _) => match m.render(event) {
                    Ok(r) => (Some(RecordView::of(&r.bytes, m.encoding())), None),
                    Err(e) => (None, Some(e.to_string())),
                },
            };
            targets.push(TargetView {
                target: info.name.clone(),
                state,
                detail,
                record,
                record_error,
            });
        }
        Ok(EventReport {
            seq: event.seq,
            event_type: event.event_type.clone(),
            key: event.key.clone(),
            trace_id: event.trace_id.to_string(),
            received_at: rfc3339(event.received_at),
            ts: event.ts.map(rfc3339),
            targets,
        })
    }
}

/// What more there is to say about an event's state at one connector.
fn detail(
    view: &View,
    info: &ConnectorInfo,
    seq: Seq,
    state: DeliveryState,
) -> Result<Option<String>, Error> {
    let name = &info.name;
    Ok(match state {
        DeliveryState::Dead => {
            if let Some(d) = view.dead_letter(name, seq)? {
                Some(format!(
                    "parked ({}) at {} after {} attempt(s): {}",
                    d.reason,
                    rfc3339_micros(d.at_micros),
                    d.attempts,
                    d.message
                ))
            } else {
                view.settled(name, seq)?.map(|s| {
                    format!(
                        "{} by {} at {}: {} (parked ({}): {})",
                        s.how.as_str(),
                        s.by,
                        rfc3339_micros(s.at_micros),
                        s.reason,
                        s.letter.reason,
                        s.letter.message
                    )
                })
            }
        }
        DeliveryState::Retrying => view.retry(name)?.map(|r| {
            format!(
                "{} attempt(s), next at {}: {}",
                r.attempts,
                rfc3339(r.next_at()),
                r.last_error
            )
        }),
        DeliveryState::Pending if view.is_requeued(name, seq)? => {
            Some("queued again by `ess replay`".into())
        }
        _ => None,
    })
}

/// `ess show`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventReport {
    pub seq: Seq,
    #[serde(rename = "type")]
    pub event_type: String,
    pub key: String,
    pub trace_id: String,
    pub received_at: String,
    pub ts: Option<String>,
    pub targets: Vec<TargetView>,
}

/// One connector's view of the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetView {
    pub target: String,
    pub state: DeliveryState,
    pub detail: Option<String>,
    /// The record its map makes now (after its `drop_fields` and `mask`).
    pub record: Option<RecordView>,
    /// Why its map makes no record of this event.
    pub record_error: Option<String>,
}

/// Record bytes for people: the characters (control characters escaped) and, for
/// encodings that are not ASCII, the bytes in hex too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordView {
    pub text: String,
    pub hex: Option<String>,
    pub bytes: usize,
}

impl RecordView {
    pub fn of(bytes: &[u8], encoding: Encoding) -> RecordView {
        let text = bytes
            .iter()
            .map(|&b| encoding.decode_byte(b))
            .collect::<String>();
        RecordView {
            text: visible(&text),
            hex: (!encoding.is_ascii_compatible())
                .then(|| bytes.iter().map(|b| format!("{b:02x}")).collect()),
            bytes: bytes.len(),
        }
    }
}

/// `text` with line ends, tabs and other control characters written as escapes, so it
/// shows on one line and cannot drive a terminal.
pub fn visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
