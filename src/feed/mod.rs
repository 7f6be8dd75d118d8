//! The feed: an append-only, gap-free log of events in redb (`ess.redb`), with group commit.
//!
//! ## On disk
//! See [`schema`]: `events` (seq -> versioned postcard [`StoredEvent`]), `keys`
//! (idempotency key -> seq) and `meta` (`format_version`, `last_seq`).
//!
//! ## Group commit
//! Every append goes through one committer thread. It takes the first waiting request, then
//! every request that queued up meanwhile (up to [`GROUP_MAX_EVENTS`]), and writes them all
//! in one redb write transaction with `Durability::Immediate`. Only when `commit()` has
//! returned, that is after redb's fsync, does it answer each request. So N concurrent
//! requests cost one fsync, not N, and none is answered before its events are durable.
//!
//! ## Crash argument
//! A transaction is all or nothing (redb's commit is atomic: a crash before the commit's
//! fsync leaves the previous state). Seqs are assigned inside the transaction from
//! `meta.last_seq`, so a crash can never leave a gap or a reused seq, and a request is never
//! acknowledged for events that are not in the committed state. Idempotency keys are
//! written in the same transaction as their event, so dedupe survives restarts exactly.

pub mod retention;
pub mod schema;

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use chrono::{DateTime, TimeZone, Utc};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch};

use crate::event::{Event, Seq};
use schema::{EVENTS, KEYS, META};

/// Most events written in one group transaction; the rest wait for the next one.
pub const GROUP_MAX_EVENTS: usize = 20_000;

/// Failures of the feed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(String),
    #[error("the feed is shut down")]
    Closed,
    #[error("{0}")]
    Format(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self { Error::Db(e.to_string()) }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// A validated event, not yet in the feed.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: String,
    pub payload: Map<String, Value>,
    pub key: String,
    pub trace_id: String,
    pub ts: Option<DateTime<Utc>>,
}

/// What one append did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AppendOutcome {
    pub accepted: usize,
    pub duplicates: usize,
    pub first_seq: Option<Seq>,
    pub last_seq: Option<Seq>,
}

/// An event as stored (see [`schema::encode`]): the payload as its JSON text, so numbers
/// keep their exact digits and postcard never has to describe arbitrary JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredEvent {
    pub event_type: String,
    pub payload: String,
    pub key: String,
    pub trace_id: String,
    pub ts_micros: Option<i64>,
    pub received_at_micros: i64,
}

/// [`StoredEvent`] borrowed from a [`NewEvent`] for writing: the same fields in the same
/// order, so postcard writes the same bytes without copying the strings.
#[derive(Serialize)]
struct StoredEventRef<'a> {
    event_type: &'a str,
    payload: String,
    key: &'a str,
    trace_id: &'a str,
    ts_micros: Option<i64>,
    received_at_micros: i64,
}

impl StoredEvent {
    fn into_event(self, seq: Seq) -> Result<Event, Error> {
        let payload = serde_json::from_str(&self.payload)
            .map_err(|e| Error::Format(format!("event {seq}: stored payload is not JSON: {e}")))?;
        Ok(Event {
            seq,
            event_type: self.event_type,
            payload,
            key: self.key,
            trace_id: self.trace_id,
            ts: self
                .ts_micros
                .and_then(|t| Utc.timestamp_micros(t).single()),
            received_at: Utc
                .timestamp_micros(self.received_at_micros)
                .single()
                .unwrap_or_default(),
        })
    }
}

struct AppendRequest {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<AppendOutcome, Error>>,
}

/// Handle to the feed; cheap to clone. Appends go to the committer thread, reads open their
/// own read transactions.
#[derive(Clone)]
pub struct Feed {
    db: Arc<Database>,
    requests: mpsc::Sender<AppendRequest>,
    last_seq: watch::Receiver<Seq>,
    committer: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

/// Opens (or creates) `ess.redb` so that a CLI process can read it while the daemon writes.
pub fn open_database(path: &std::path::Path) -> Result<Database, Error> {
    let mut b = Database::builder();
    b.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
    Ok(b.create(path)?)
}

/// Opens the database read-only, for CLI commands when a daemon may be running.
pub fn open_database_read_only(path: &std::path::Path) -> Result<redb::ReadOnlyDatabase, Error> {
    let mut b = Database::builder();
    b.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
    Ok(b.open_read_only(path)?)
}

/// Creates the tables if needed and checks the format version.
fn prepare(db: &Database) -> Result<Seq, Error> {
    let tx = db.begin_write()?;
    let last_seq;
    {
        let mut meta = tx.open_table(META)?;
        let version = meta.get("format_version")?.map(|v| v.value());
        match version {
            None => {
                meta.insert("format_version", schema::FORMAT_VERSION)?;
            }
            Some(v) if v == schema::FORMAT_VERSION => {}
            Some(v) => {
                return Err(Error::Format(format!(
                    "ess.redb has feed format version {v}; this build reads version {} \
                     (keep the older binary, or upgrade to a release that reads it)",
                    schema::FORMAT_VERSION
                )));
            }
        }
        last_seq = meta.get("last_seq")?.map_or(0, |v| v.value());
        tx.open_table(EVENTS)?;
        tx.open_table(KEYS)?;
        tx.open_table(schema::CURSORS)?;
        tx.open_table(schema::RETRIES)?;
        tx.open_table(schema::DEAD)?;
        tx.open_table(schema::REQUEUE)?;
    }
    tx.commit()?;
    Ok(last_seq)
}

impl Feed {
    /// Opens the feed on `db`, starting the committer thread.
    pub fn open(db: Arc<Database>) -> Result<Feed, Error> {
        let last_seq = prepare(&db)?;
        let (requests, rx) = mpsc::channel::<AppendRequest>();
        let (seq_tx, seq_rx) = watch::channel(last_seq);
        let db2 = db.clone();
        let handle = std::thread::Builder::new()
            .name("feed-committer".into())
            .spawn(move || committer(&db2, &rx, &seq_tx, last_seq))
            .map_err(|e| Error::Db(format!("cannot start committer thread: {e}")))?;
        Ok(Feed {
            db,
            requests,
            last_seq: seq_rx,
            committer: Arc::new(std::sync::Mutex::new(Some(handle))),
        })
    }

    /// The database feed and ledger share.
    pub fn db(&self) -> &Arc<Database> {
        &self.db
    }

    /// Appends `events` atomically; returns only after they are durable.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<AppendOutcome, Error> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(AppendRequest { events, reply })
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// The highest committed seq (0 when empty).
    pub fn last_seq(&self) -> Seq {
        *self.last_seq.borrow()
    }

    /// A receiver that changes whenever new events are committed.
    pub fn subscribe(&self) -> watch::Receiver<Seq> {
        self.last_seq.clone()
    }

    /// Up to `limit` events with seq > `after`, in order.
    pub fn read_after(&self, after: Seq, limit: usize) -> Result<Vec<Event>, Error> {
        read_after(&*self.db, after, limit)
    }

    /// The event stored under idempotency key `key`, if any.
    pub fn get_by_key(&self, key: &str) -> Result<Option<Event>, Error> {
        get_by_key(&*self.db, key)
    }

    /// Stops the committer after the requests already queued are committed. Appends after
    /// this fail with [`Error::Closed`].
    pub fn close(self) {
        let handle = self.committer.lock().ok().and_then(|mut h| h.take());
        drop(self.requests);
        if let Some(h) = handle {
            // Other clones may still hold a sender; the thread then ends when they drop.
            if Arc::strong_count(&self.committer) == 1 {
                let _ = h.join();
            }
        }
    }
}

/// Reads up to `limit` events after `after` from any redb handle (daemon or read-only CLI).
pub fn read_after<D: ReadableDatabase>(
    db: &D,
    after: Seq,
    limit: usize,
) -> Result<Vec<Event>, Error> {
    let tx = db.begin_read()?;
    let table = tx.open_table(EVENTS)?;
    let mut out = Vec::new();
    for row in table.range(after.saturating_add(1)..)?.take(limit) {
        let (k, v) = row?;
        let stored: StoredEvent = schema::decode(v.value())
            .map_err(|e| Error::Format(format!("event {}: {e}", k.value())))?;
        out.push(stored.into_event(k.value())?);
    }
    Ok(out)
}

/// The newest committed seq (0 when empty), from any redb handle.
pub fn read_last_seq<D: ReadableDatabase>(db: &D) -> Result<Seq, Error> {
    let tx = db.begin_read()?;
    let meta = match tx.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    Ok(meta.get("last_seq")?.map_or(0, |v| v.value()))
}

/// The event stored under idempotency key `key`, from any redb handle.
pub fn get_by_key<D: ReadableDatabase>(db: &D, key: &str) -> Result<Option<Event>, Error> {
    let tx = db.begin_read()?;
    let Some(seq) = tx.open_table(KEYS)?.get(key)?.map(|v| v.value()) else {
        return Ok(None);
    };
    let events = tx.open_table(EVENTS)?;
    let Some(bytes) = events.get(seq)? else {
        return Ok(None);
    };
    let stored: StoredEvent = schema::decode(bytes.value()).map_err(Error::Format)?;
    Ok(Some(stored.into_event(seq)?))
}

fn committer(
    db: &Database,
    rx: &mpsc::Receiver<AppendRequest>,
    seq_tx: &watch::Sender<Seq>,
    mut last_seq: Seq,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        let mut n_events = group[0].events.len();
        while n_events < GROUP_MAX_EVENTS {
            match rx.try_recv() {
                Ok(r) => {
                    n_events += r.events.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        let now = Utc::now();
        match write_group(db, &group, last_seq, now) {
            Ok((outcomes, new_last)) => {
                last_seq = new_last;
                seq_tx.send_replace(last_seq);
                for (req, outcome) in group.into_iter().zip(outcomes) {
                    let _ = req.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, n_requests = group.len(), "feed commit failed; nothing of these requests was stored");
                for req in group {
                    let _ = req.reply.send(Err(Error::Db(e.to_string())));
                }
            }
        }
    }
}

/// Writes one group in one durable transaction. Nothing is visible, and nothing answered,
/// unless the whole group commits.
fn write_group(
    db: &Database,
    group: &[AppendRequest],
    mut last_seq: Seq,
    now: DateTime<Utc>,
) -> Result<(Vec<AppendOutcome>, Seq), Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(redb::Durability::Immediate)?;
    let mut outcomes = Vec::with_capacity(group.len());
    {
        let mut events = tx.open_table(EVENTS)?;
        let mut keys = tx.open_table(KEYS)?;
        let received_at_micros = now.timestamp_micros();
        for req in group {
            let mut out = AppendOutcome::default();
            for ev in &req.events {
                if keys.get(ev.key.as_str())?.is_some() {
                    out.duplicates += 1;
                    continue;
                }
                last_seq += 1;
                let stored = StoredEventRef {
                    event_type: &ev.event_type,
                    // A map with string keys always serializes.
                    payload: serde_json::to_string(&ev.payload)
                        .expect("a JSON object with string keys serializes"),
                    key: &ev.key,
                    trace_id: &ev.trace_id,
                    ts_micros: ev.ts.map(|t| t.timestamp_micros()),
                    received_at_micros,
                };
                events.insert(last_seq, schema::encode(&stored).as_slice())?;
                keys.insert(ev.key.as_str(), last_seq)?;
                out.accepted += 1;
                out.first_seq.get_or_insert(last_seq);
                out.last_seq = Some(last_seq);
            }
            outcomes.push(out);
        }
        tx.open_table(META)?.insert("last_seq", last_seq)?;
    }
    tx.commit()?;
    Ok((outcomes, last_seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_event(key: &str) -> NewEvent {
        let payload = serde_json::json!({"id": key, "amount": 19.99})
            .as_object()
            .unwrap()
            .clone();
        NewEvent {
            event_type: "T".into(),
            payload,
            key: key.into(),
            trace_id: "t".into(),
            ts: None,
        }
    }

    fn open(dir: &std::path::Path) -> Feed {
        Feed::open(Arc::new(open_database(&dir.join("ess.redb")).unwrap())).unwrap()
    }

    #[tokio::test]
    async fn seqs_are_gap_free_and_keys_dedupe_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let feed = open(dir.path());
        let out = feed
            .append(vec![new_event("a"), new_event("b"), new_event("a")])
            .await
            .unwrap();
        assert_eq!(
            out,
            AppendOutcome {
                accepted: 2,
                duplicates: 1,
                first_seq: Some(1),
                last_seq: Some(2)
            }
        );
        feed.close();

        let feed = open(dir.path());
        assert_eq!(feed.last_seq(), 2);
        let out = feed
            .append(vec![new_event("b"), new_event("c")])
            .await
            .unwrap();
        assert_eq!(
            out,
            AppendOutcome {
                accepted: 1,
                duplicates: 1,
                first_seq: Some(3),
                last_seq: Some(3)
            }
        );
        let all = feed.read_after(0, 10).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(all[2].key, "c");
        assert_eq!(all[0].payload["amount"].to_string(), "19.99");
        assert_eq!(feed.get_by_key("b").unwrap().unwrap().seq, 2);
        assert!(feed.get_by_key("zz").unwrap().is_none());
    }

    #[tokio::test]
    async fn concurrent_appends_share_commits_and_stay_gap_free() {
        let dir = tempfile::tempdir().unwrap();
        let feed = open(dir.path());
        let mut tasks = Vec::new();
        for t in 0..16 {
            let feed = feed.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    feed.append(vec![new_event(&format!("{t}-{i}"))])
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let all = feed.read_after(0, 1000).unwrap();
        assert_eq!(all.len(), 320);
        assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
    }

    #[test]
    fn a_newer_format_version_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_database(&dir.path().join("ess.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("format_version", 99)
            .unwrap();
        tx.commit().unwrap();
        let err = Feed::open(Arc::new(db)).err().unwrap().to_string();
        assert!(err.contains("format version 99"), "{err}");
    }
}
