//! The feed: an append-only, gap-free log of events in redb (`ess.redb`), with group commit.
//!
//! ## On disk
//! See [`schema`] (tables, ledger value codec, version log) and [`codec`] (one event's
//! bytes): `events` (seq -> the event, payload as received, checksummed and bound to its
//! seq), `key_index` (the idempotency key, or its prefix and digest when long -> seq) and `meta`
//! (`format_version`, `last_seq`, `last_seq_check`).
//!
//! ## Group commit
//! Every write to `ess.redb` goes through one write slot ([`store::Store::write`]): ingest
//! appends wait in a queue, a committer thread takes the first waiting request and every
//! request that queued up meanwhile (up to [`GROUP_MAX_EVENTS`]), and writes them all in one
//! redb write transaction, durable (redb fsyncs before `commit()` returns). A ledger write
//! (a connector's delivery commit) takes the same slot and carries whatever appends are
//! queued at that moment in its own transaction: one fsync serves both. Only when `commit()`
//! has returned does anybody get an answer. Events are encoded in the request's own task
//! before they queue ([`Batch`]), so the committer only assigns seqs, dedupes, checksums
//! (and seals) and inserts while the next group is being encoded.
//!
//! ## Crash argument
//! A transaction is all or nothing (redb's commit is atomic: a crash before the commit's
//! fsync leaves the previous state). Seqs are assigned inside the transaction from
//! `meta.last_seq`, so a crash can never leave a gap or a reused seq, and a request is never
//! acknowledged for events that are not in the committed state. Idempotency key entries are
//! written in the same transaction as their event, so dedupe survives restarts exactly.
//!
//! ## Integrity
//! Every value read is verified ([`codec::EventView::decode`], [`schema::decode`]); a
//! mismatch is [`Error::Corrupt`] naming table and seq or key, and is never handed out. A
//! panic inside redb on a damaged page is caught where redb is called (every read and write
//! of this module and of the ledger) and becomes the same error.

pub mod codec;
pub mod migrate;
pub mod retention;
pub mod schema;
pub mod seal;
pub mod store;
pub mod verify;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use redb::{Database, ReadableDatabase};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::event::{Event, Seq};
pub use codec::{EventView, StoredPayload};
use schema::{EVENTS, KEYS};
pub use store::{Store, StoreOptions};

/// Most events written in one group transaction; the rest wait for the next one.
pub const GROUP_MAX_EVENTS: usize = 20_000;

/// Failures of the feed (and the ledger, which shares its file).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[source] redb::Error),
    /// A commit failed; every request of its group gets this (hence shared).
    #[error("commit failed: {0}")]
    Commit(#[source] Arc<redb::Error>),
    #[error("the feed is shut down")]
    Closed,
    /// The database cannot be written now (a full disk made redb fail, and it is being
    /// reopened); nothing was stored. Retry later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A stored value failed its check: it is never handed out.
    #[error("{}: damaged value refused: {why} (run `ess verify`)", corrupt_place(table, *seq, key.as_deref()))]
    Corrupt {
        table: &'static str,
        seq: Option<Seq>,
        key: Option<String>,
        why: String,
    },
    /// A sealed payload or dead letter cannot be opened with the configured keys.
    #[error("{what}: {source}")]
    Seal {
        what: String,
        #[source]
        source: seal::SealError,
    },
    #[error(
        "ess.redb has feed format version {found}; this build reads versions 1 and {} (keep the older binary, or upgrade to a release that reads it)",
        schema::FORMAT_VERSION
    )]
    FormatVersion { found: u64 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn corrupt_place(table: &str, seq: Option<Seq>, key: Option<&str>) -> String {
    match (seq, key) {
        (Some(s), Some(k)) => format!("table {table}, {k:?} seq {s}"),
        (Some(s), None) => format!("table {table}, seq {s}"),
        (None, Some(k)) => format!("table {table}, key {k:?}"),
        (None, None) => format!("table {table}"),
    }
}

impl Error {
    /// Whether a stored value is damaged (as opposed to the database being unavailable).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }

    /// The seq a corruption names, if any.
    pub fn corrupt_seq(&self) -> Option<Seq> {
        match self {
            Error::Corrupt { seq, .. } => *seq,
            _ => None,
        }
    }

    pub(crate) fn corrupt(
        table: &'static str,
        seq: Option<Seq>,
        key: Option<&str>,
        why: impl std::fmt::Display,
    ) -> Error {
        Error::Corrupt {
            table,
            seq,
            key: key.map(str::to_string),
            why: why.to_string(),
        }
    }
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self { Error::Db(e.into()) }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        Error::Db(e)
    }
}

/// Runs redb work, turning a panic inside redb (a damaged page) into [`Error::Corrupt`].
///
/// The panic is contained quietly: the process's panic hook prints nothing for it (a CLI
/// reading a damaged file answers with one `error:` line, not a Rust backtrace note), and
/// where it happened goes into the one log line and the error instead.
pub(crate) fn guarded<T>(
    table: &'static str,
    f: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    quiet::install();
    let depth = quiet::CONTAINING.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
    quiet::CONTAINING.with(|c| c.set(depth - 1));
    match outcome {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let at = quiet::LOCATION.with(|l| l.take()).unwrap_or_default();
            tracing::error!(table, panic = %msg, at = %at, "redb panicked reading or writing a damaged page; contained");
            Err(Error::corrupt(
                table,
                None,
                None,
                format!("redb panicked on a damaged page: {msg}"),
            ))
        }
    }
}

/// The panic hook's part in [`guarded`]: a panic inside a guarded section is not printed
/// (its location is kept for the log line); any other panic goes to the hook that was
/// there before, as it would have.
mod quiet {
    use std::cell::{Cell, RefCell};
    use std::sync::Once;

    thread_local! {
        /// How many guarded sections this thread is inside.
        pub(super) static CONTAINING: Cell<usize> = const { Cell::new(0) };
        /// Where the last contained panic of this thread happened.
        pub(super) static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    static HOOK: Once = Once::new();

    pub(super) fn install() {
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if CONTAINING.with(Cell::get) == 0 {
                    previous(info);
                    return;
                }
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()));
                LOCATION.with(|l| *l.borrow_mut() = at);
            }));
        });
    }
}

/// A validated event, not yet in the feed (the form tests and tools build; the ingest
/// encodes straight into a [`Batch`]).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: String,
    pub payload: Map<String, Value>,
    pub key: String,
    pub trace_id: String,
    pub ts: Option<DateTime<Utc>>,
}

/// Events of one request, encoded and ready for the committer: one buffer, no per-event
/// allocation.
#[derive(Debug, Default)]
pub struct Batch {
    buf: Vec<u8>,
    items: Vec<BatchItem>,
}

#[derive(Debug, Clone, Copy)]
struct BatchItem {
    slot: codec::Slot,
    index: IndexKey,
}

/// Longest idempotency key the dedupe index holds as it is.
const INDEX_WHOLE_MAX: usize = 32;

/// An idempotency key's entry in the dedupe index (`key_index`): the key itself when it is at
/// most 32 bytes, else its first 16 bytes followed by the first 17 bytes of its SHA-256 (33
/// bytes, a length no whole key has, so the two forms never meet). Bounded in size, exact
/// for short keys, and a collision of long ones takes about 2^68 tries to find. Unlike a
/// plain digest it keeps the order of keys a producer numbers or stamps in sequence
/// (`c3-1041`, UUIDv7), so a group of inserts lands in a few index pages instead of one page
/// per event.
#[derive(Clone, Copy)]
pub struct IndexKey {
    len: u8,
    bytes: [u8; INDEX_WHOLE_MAX + 1],
}

impl IndexKey {
    pub fn of(key: &str) -> IndexKey {
        use sha2::{Digest, Sha256};
        let k = key.as_bytes();
        let mut bytes = [0u8; INDEX_WHOLE_MAX + 1];
        if k.len() <= INDEX_WHOLE_MAX {
            bytes[..k.len()].copy_from_slice(k);
            return IndexKey {
                len: k.len() as u8,
                bytes,
            };
        }
        bytes[..16].copy_from_slice(&k[..16]);
        bytes[16..].copy_from_slice(&Sha256::digest(k)[..INDEX_WHOLE_MAX + 1 - 16]);
        IndexKey {
            len: (INDEX_WHOLE_MAX + 1) as u8,
            bytes,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl Batch {
    pub fn with_capacity(n_events: usize, n_bytes: usize) -> Batch {
        Batch {
            buf: Vec::with_capacity(n_bytes),
            items: Vec::with_capacity(n_events),
        }
    }

    /// Adds one validated event; `payload` is the JSON object's bytes as received.
    pub fn push(
        &mut self,
        event_type: &str,
        key: &str,
        trace_id: &str,
        ts: Option<DateTime<Utc>>,
        payload: &[u8],
    ) {
        self.push_trace(event_type, key, codec::Trace::of(trace_id), ts, payload);
    }

    /// [`Batch::push`] for an event that brought no trace id: it gets a fresh random one
    /// (32 hex digits when read), generated straight in its stored form.
    pub fn push_new_trace(
        &mut self,
        event_type: &str,
        key: &str,
        ts: Option<DateTime<Utc>>,
        payload: &[u8],
    ) {
        let trace = codec::Trace::Bin(rand::random::<[u8; 16]>());
        self.push_trace(event_type, key, trace, ts, payload);
    }

    fn push_trace(
        &mut self,
        event_type: &str,
        key: &str,
        trace: codec::Trace<'_>,
        ts: Option<DateTime<Utc>>,
        payload: &[u8],
    ) {
        let slot = codec::encode_trace_into(
            &mut self.buf,
            event_type,
            key,
            trace,
            ts.map(|t| t.timestamp_micros()),
            payload,
        );
        self.items.push(BatchItem {
            slot,
            index: IndexKey::of(key),
        });
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The payload bytes of event `i` as they will be stored (unsealed).
    pub fn payload_bytes(&self, i: usize) -> &[u8] {
        let slot = self.items[i].slot;
        &self.buf[slot.start + slot.payload_start..slot.end - 4]
    }

    /// The events as they would read back from the feed (seqs 1, 2, ... in order, received
    /// now), for tests and previews.
    pub fn to_events(&self) -> Result<Vec<Event>, Error> {
        let now = Utc::now().timestamp_micros();
        let mut out = Vec::with_capacity(self.items.len());
        for (i, item) in self.items.iter().enumerate() {
            let seq = i as Seq + 1;
            let mut value = self.buf[item.slot.start..item.slot.end].to_vec();
            codec::finish(&mut value, seq, now);
            out.push(to_event(seq, &value)?);
        }
        Ok(out)
    }
}

impl From<Vec<NewEvent>> for Batch {
    fn from(events: Vec<NewEvent>) -> Batch {
        let mut b = Batch::with_capacity(events.len(), events.len() * 160);
        for ev in &events {
            // A map with string keys always serializes.
            let payload =
                serde_json::to_vec(&ev.payload).expect("a JSON object with string keys serializes");
            b.push(&ev.event_type, &ev.key, &ev.trace_id, ev.ts, &payload);
        }
        b
    }
}

/// What one append did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AppendOutcome {
    pub accepted: usize,
    pub duplicates: usize,
    pub first_seq: Option<Seq>,
    pub last_seq: Option<Seq>,
}

/// An event as stored, owned (for tools that copy or list events). The payload is the
/// stored form: the JSON text as received, or sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub event_type: String,
    pub payload: Vec<u8>,
    pub key: String,
    pub trace_id: String,
    pub ts_micros: Option<i64>,
    pub received_at_micros: i64,
}

impl StoredEvent {
    /// Verifies and decodes the event stored under `seq` (payload left as stored).
    pub fn decode(seq: Seq, bytes: &[u8]) -> Result<StoredEvent, Error> {
        let v = EventView::decode(seq, bytes)
            .map_err(|e| Error::corrupt("events", Some(seq), None, e))?;
        Ok(StoredEvent {
            event_type: v.event_type.to_string(),
            payload: match v.stored_payload {
                StoredPayload::Clear(p) | StoredPayload::Sealed(p) => p.to_vec(),
            },
            key: v.key.to_string(),
            trace_id: v.trace_id().into_owned(),
            ts_micros: v.ts_micros,
            received_at_micros: v.received_at_micros,
        })
    }

    /// The stored bytes of this event under `seq`, payload in clear.
    pub fn encode(&self, seq: Seq) -> Vec<u8> {
        let mut buf = Vec::new();
        let slot = codec::encode_into(
            &mut buf,
            &self.event_type,
            &self.key,
            &self.trace_id,
            self.ts_micros,
            &self.payload,
        );
        codec::finish(&mut buf[slot.start..slot.end], seq, self.received_at_micros);
        buf
    }
}

/// Handle to the feed; cheap to clone. Appends go to the committer thread, reads open their
/// own read transactions.
#[derive(Clone)]
pub struct Feed {
    store: Store,
    committer: Arc<store::Committer>,
}

/// Opens (or creates) `ess.redb` so that a CLI process can read it while the daemon writes.
/// A panic inside redb while it opens a damaged file is contained like any other.
pub fn open_database(path: &std::path::Path) -> Result<Database, Error> {
    guarded("file", || {
        Ok(store::builder(store::DEFAULT_CACHE).create(path)?)
    })
}

/// Opens the database read-only, for CLI commands when a daemon may be running.
pub fn open_database_read_only(path: &std::path::Path) -> Result<redb::ReadOnlyDatabase, Error> {
    guarded("file", || {
        Ok(store::builder(store::DEFAULT_CACHE).open_read_only(path)?)
    })
}

/// Whether the keys registered in this process ([`seal::load_configured`]) open what the
/// database at `path` was last sealed with; `current` is the key new values would be sealed
/// with. A missing file is fine (nothing sealed yet).
pub fn check_seal_keys(path: &std::path::Path, current: Option<&seal::Key>) -> Result<(), Error> {
    if !path.exists() {
        return Ok(());
    }
    let db = match open_database_read_only(path) {
        Ok(db) => db,
        // Left unclean by a crash (only a writer may repair it), or held by the running
        // daemon: `ess serve` checks the keys when it opens the file.
        Err(Error::Db(redb::Error::RepairAborted | redb::Error::DatabaseAlreadyOpen)) => {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let recorded = guarded("meta", || {
        let tx = db.begin_read()?;
        let meta = match tx.open_table(schema::META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(meta
            .get("seal_key_id")?
            .and_then(|v| u32::try_from(v.value()).ok()))
    })?;
    seal::check_recorded(recorded, current.map(seal::Key::id)).map_err(|source| Error::Seal {
        what: path.display().to_string(),
        source,
    })
}

impl Feed {
    /// Opens the feed on `store` (migrating an older file, checking the format), starting
    /// the committer thread.
    pub fn open(store: impl Into<Store>) -> Result<Feed, Error> {
        let store = store.into();
        store.prepare()?;
        let committer = store::Committer::start(store.clone())?;
        Ok(Feed {
            store,
            committer: Arc::new(committer),
        })
    }

    /// The database feed and ledger share.
    pub fn db(&self) -> &Store {
        &self.store
    }

    /// Appends `events` atomically; returns only after they are durable.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<AppendOutcome, Error> {
        self.append_batch(Batch::from(events)).await
    }

    /// Appends an encoded batch (what the ingest validated) atomically; returns only after
    /// it is durable.
    pub async fn append_batch(&self, batch: Batch) -> Result<AppendOutcome, Error> {
        let answer = self.store.enqueue(batch)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// The highest committed seq (0 when empty).
    pub fn last_seq(&self) -> Seq {
        self.store.last_seq()
    }

    /// A receiver that changes whenever new events are committed.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Seq> {
        self.store.subscribe()
    }

    /// Up to `limit` events with seq > `after`, in order.
    pub fn read_after(&self, after: Seq, limit: usize) -> Result<Vec<Event>, Error> {
        read_after(&self.store, after, limit)
    }

    /// The events after `after` whose type `select` takes, decoded and handed to `each` as
    /// they are (so that another thread can work on the first ones while the rest are
    /// read), up to `take` of them or until their stored bytes reach `max_bytes` (at least
    /// one is decoded), looking at most `scan` events; the others are passed over without
    /// decoding their payloads. Returns the last seq looked at (`after` when there was
    /// none): a round's memory is bounded by bytes, whatever the size of the events.
    pub fn read_selected(
        &self,
        after: Seq,
        scan: usize,
        take: usize,
        max_bytes: usize,
        select: impl Fn(&str) -> bool,
        mut each: impl FnMut(Event),
    ) -> Result<Seq, Error> {
        let (mut n, mut bytes, mut last) = (0, 0, after);
        visit_after(&self.store, after, scan, |view| {
            last = view.seq;
            if !select(view.event_type) {
                return Ok(std::ops::ControlFlow::Continue(()));
            }
            bytes += view.key.len()
                + match view.stored_payload {
                    codec::StoredPayload::Clear(p) | codec::StoredPayload::Sealed(p) => p.len(),
                };
            each(to_event_view(&view)?);
            n += 1;
            Ok(if n >= take || bytes >= max_bytes {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            })
        })?;
        Ok(last)
    }

    /// The event stored under idempotency key `key`, if any.
    pub fn get_by_key(&self, key: &str) -> Result<Option<Event>, Error> {
        get_by_key(&self.store, key)
    }

    /// Stops the committer after the requests already queued are committed, then closes the
    /// database (every handle sharing it sees [`Error::Closed`] afterwards), so the file is
    /// left clean and can be opened again. Appends after this fail with [`Error::Closed`].
    pub fn close(self) {
        self.committer.stop();
        if let Err(e) = self.store.close() {
            tracing::warn!(error = %e, "closing ess.redb");
        }
    }
}

fn to_event(seq: Seq, bytes: &[u8]) -> Result<Event, Error> {
    let view =
        EventView::decode(seq, bytes).map_err(|e| Error::corrupt("events", Some(seq), None, e))?;
    to_event_view(&view)
}

/// Reads up to `limit` events after `after` from any redb handle (daemon or read-only CLI).
pub fn read_after<D: ReadableDatabase>(
    db: &D,
    after: Seq,
    limit: usize,
) -> Result<Vec<Event>, Error> {
    let mut out = Vec::with_capacity(limit.min(4096));
    visit_after(db, after, limit, |view| {
        out.push(to_event_view(&view)?);
        Ok(std::ops::ControlFlow::Continue(()))
    })?;
    Ok(out)
}

fn to_event_view(view: &EventView<'_>) -> Result<Event, Error> {
    let seq = view.seq;
    view.to_event().map_err(|e| match e {
        codec::ToEventError::Seal(source) => Error::Seal {
            what: format!("event {seq}"),
            source,
        },
        codec::ToEventError::Utf8(e) => Error::corrupt("events", Some(seq), None, e),
    })
}

/// Hands each verified stored event after `after` (up to `limit`) to `visit`, borrowed from
/// the page: no copy, no JSON parse unless `visit` asks ([`EventView::payload`]). Returns
/// how many were visited. A damaged event stops the walk with [`Error::Corrupt`].
pub fn visit_after<D: ReadableDatabase>(
    db: &D,
    after: Seq,
    limit: usize,
    mut visit: impl FnMut(EventView<'_>) -> Result<std::ops::ControlFlow<()>, Error>,
) -> Result<usize, Error> {
    guarded("events", || {
        let tx = db.begin_read()?;
        let table = match tx.open_table(EVENTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut n = 0;
        for row in table.range(after.saturating_add(1)..)?.take(limit) {
            let (k, v) = row?;
            let seq = k.value();
            let view = EventView::decode(seq, v.value())
                .map_err(|e| Error::corrupt("events", Some(seq), None, e))?;
            n += 1;
            if visit(view)?.is_break() {
                break;
            }
        }
        Ok(n)
    })
}

/// How much of the file one table takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableSize {
    pub table: &'static str,
    pub rows: u64,
    pub leaf_pages: u64,
    pub branch_pages: u64,
    /// Bytes of keys and values in the leaves.
    pub stored_bytes: u64,
    /// Bytes of the pages that hold neither (free space inside pages).
    pub fragmented_bytes: u64,
}

/// The size of each of the feed's and ledger's tables, through any handle.
pub fn table_sizes<D: ReadableDatabase>(db: &D) -> Result<Vec<TableSize>, Error> {
    use redb::ReadableTableMetadata;
    guarded("meta", || {
        let tx = db.begin_read()?;
        let mut out = Vec::new();
        macro_rules! size {
            ($name:literal, $def:expr) => {
                if let Ok(t) = tx.open_table($def) {
                    let st = t.stats()?;
                    out.push(TableSize {
                        table: $name,
                        rows: t.len()?,
                        leaf_pages: st.leaf_pages(),
                        branch_pages: st.branch_pages(),
                        stored_bytes: st.stored_bytes(),
                        fragmented_bytes: st.fragmented_bytes(),
                    });
                }
            };
        }
        size!("events", EVENTS);
        size!("key_index", KEYS);
        size!("meta", schema::META);
        size!("cursors", schema::CURSORS);
        size!("retries", schema::RETRIES);
        size!("dead", schema::DEAD);
        size!("requeue", schema::REQUEUE);
        Ok(out)
    })
}

/// The highest seq ever committed (`meta.last_seq`; 0 for an empty feed), through any handle.
pub fn read_last_seq<D: ReadableDatabase>(db: &D) -> Result<Seq, Error> {
    guarded("meta", || {
        let tx = db.begin_read()?;
        let meta = match tx.open_table(schema::META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        Ok(meta.get("last_seq")?.map_or(0, |v| v.value()))
    })
}

/// The event with this seq, if it is (still) in the feed.
pub fn read_event<D: ReadableDatabase>(db: &D, seq: Seq) -> Result<Option<Event>, Error> {
    guarded("events", || {
        let tx = db.begin_read()?;
        let table = tx.open_table(EVENTS)?;
        let Some(v) = table.get(seq)? else {
            return Ok(None);
        };
        to_event(seq, v.value()).map(Some)
    })
}

/// The event stored under idempotency key `key`, if any, through any redb handle.
pub fn get_by_key<D: ReadableDatabase>(db: &D, key: &str) -> Result<Option<Event>, Error> {
    guarded("key_index", || {
        let tx = db.begin_read()?;
        let Some(seq) = tx
            .open_table(KEYS)?
            .get(IndexKey::of(key).as_bytes())?
            .map(|v| v.value())
        else {
            return Ok(None);
        };
        let events = tx.open_table(EVENTS)?;
        let Some(bytes) = events.get(seq)? else {
            // The event was compacted while its index row stayed (never written so), or
            // the row points nowhere.
            return Err(Error::corrupt(
                "key_index",
                Some(seq),
                Some(key),
                "points at a seq that is not in the feed",
            ));
        };
        let event = to_event(seq, bytes.value())?;
        if event.key != key {
            return Err(Error::corrupt(
                "key_index",
                Some(seq),
                Some(key),
                "points at an event with another key",
            ));
        }
        Ok(Some(event))
    })
}

#[cfg(test)]
mod tests;
