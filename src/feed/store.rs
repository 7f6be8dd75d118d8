//! [`Store`]: the one handle to `ess.redb` that the feed, the ledger and everybody reading
//! them share, and the one write slot every write goes through.
//!
//! ## The write slot
//! redb has one writer at a time. Ingest appends are data ([`Batch`]) waiting in a queue; a
//! ledger write is a closure from the connector's own thread. Whoever takes the slot —
//! the committer thread for the queue, or a ledger writer ([`Store::write`]) — opens one
//! transaction, writes the queued appends and (for a ledger writer) its own closure, and
//! commits once. So a delivery commit never waits for an ingest commit to finish and then
//! pays its own fsync: it carries the appends queued behind it, and both are durable at the
//! same fsync. A ledger closure that fails puts the appends back in the queue, unanswered
//! (nothing was committed); appends that fail (a damaged index page) are answered with the
//! error and the ledger write goes on alone in a fresh transaction.
//!
//! ## Reopening
//! After an I/O error (a full disk: ENOSPC) or a panic inside a write, redb refuses every
//! later transaction until the database is closed and opened again. The store then marks
//! itself broken (reported through [`Health::set_database_error`], so ingest answers 503
//! and `/healthz` says why), and the committer thread reopens the file every
//! [`REOPEN_EVERY`] until a durable probe commit succeeds; then it clears the error. Handles
//! are held only for one operation ([`Store::db`] hands out the current one), so reopening
//! waits only for reads under way. `last_seq` is read from the file again after a reopen:
//! a commit that failed may still have become durable, and its events are then deduped when
//! their producer re-sends them.
//!
//! ## Clean close
//! [`Store::close`] takes the database out of every handle, waits for reads under way and
//! closes it explicitly, so the file is left clean (no repair at the next open) whatever
//! other clones of the store are still around.
//!
//! Architecture invariant: nothing else writes `ess.redb` in the daemon; every write
//! transaction is begun in [`Store::write`] or by the committer thread, under the slot.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::Utc;
use redb::{Database, ReadTransaction, ReadableDatabase, WriteTransaction};
use tokio::sync::{oneshot, watch};

use super::schema::{self, EVENTS, KEYS, META};
use super::{AppendOutcome, Batch, Error, GROUP_MAX_EVENTS, codec, guarded, seal};
use crate::event::Seq;
use crate::health::Health;

/// redb page cache when nothing else is configured (`feed.cache`): the daemon's RSS is about
/// 30 MiB plus this under load (measured by `cargo bench --bench backlog`), so 16 MiB keeps
/// it under 64 MiB.
pub const DEFAULT_CACHE: usize = 16 << 20;
/// How processes share `ess.redb`: the daemon writes alone, and no other process opens the
/// file while it runs (the CLI asks the daemon through its admin socket instead). The shared
/// modes would let a CLI read the live file, but they commit in two phases (two fsyncs per
/// commit instead of one), which halves the rate at which acknowledged events can be made
/// durable; see ARCHITECTURE.md, "Commit points".
const MODE: redb::ConcurrencyMode = redb::ConcurrencyMode::ExclusiveWriter;
/// How long an open waits for another process (a CLI command reading the file while no
/// daemon ran) to let go of `ess.redb`.
const OPEN_WAIT: Duration = Duration::from_secs(10);

/// How often a broken store tries to reopen the database.
pub const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// How long a deferred write ([`Store::write_deferred`]) may stay in memory only: if no
/// durable commit (an ingest group, a ledger write) carried it sooner, the committer makes
/// one by itself once this much time has passed.
pub const DEFER_DURABLE: Duration = Duration::from_millis(10);

/// How long the committer waits for more requests when it finds fewer than
/// [`GROUP_ENOUGH`] and the last group held two or more (several producers at once; a lone
/// producer sending one request after another never waits). Measured at 2,000 events/s
/// over 16 connections with the permit connector delivering (`benches/latency.rs`, runs
/// alternated): send → record p99 3.8–8.9 ms in four runs of five (18.7 in one) with it,
/// against 10.8–29.8 ms without; ack p99 about the same. While the committer waits it does
/// not hold the write slot, so a delivery commit gets it; without the wait the committer
/// took the slot back for the next group before the connector's thread woke, and a
/// delivery commit waited several groups.
const GROUP_LINGER: Duration = Duration::from_micros(500);
/// Requests that make a group worth committing at once.
const GROUP_ENOUGH: usize = 4;

/// Whether a write's commit waits for its fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    Durable,
    /// Durable with the next durable commit ([`Store::write_deferred`]).
    Deferred,
}

/// How to open `ess.redb`.
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// redb page cache in bytes (0: [`DEFAULT_CACHE`]).
    pub cache_size: usize,
    /// Told when the database cannot be written and when it can again.
    pub health: Option<Arc<Health>>,
    /// Seals new payloads and dead letters (encryption at rest).
    pub seal: Option<Arc<seal::Key>>,
    /// How long a deferred write may stay in memory only (zero: [`DEFER_DURABLE`]); tests
    /// lengthen it to cut the power inside the window.
    pub defer_durable: Duration,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("cache_size", &self.cache_size)
            .field("seal", &self.seal)
            .field("defer_durable", &self.defer_durable)
            .finish()
    }
}

/// A redb builder as every handle of ESS uses it: one process at a time ([`MODE`]) and a
/// bounded page cache.
pub fn builder(cache_size: usize) -> redb::Builder {
    let mut b = Database::builder();
    b.set_concurrency_mode(MODE);
    b.set_cache_size(if cache_size == 0 {
        DEFAULT_CACHE
    } else {
        cache_size
    });
    b
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its data consistent before anything can panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An append waiting for the write slot.
pub(crate) struct AppendRequest {
    batch: Batch,
    reply: oneshot::Sender<Result<AppendOutcome, Error>>,
}

#[derive(Default)]
struct Queue {
    requests: VecDeque<AppendRequest>,
    closing: bool,
    /// The committer is waiting on [`Shared::wake`]: only then does an append wake it (a
    /// notify is a futex syscall even when nobody waits; while the committer works it
    /// finds the new requests itself when it looks at the queue again).
    idle: bool,
    /// When the oldest write committed without its fsync ([`Store::write_deferred`]) and
    /// not yet made durable by a later commit was made.
    deferred_since: Option<Instant>,
    /// Requests in the last group taken.
    last_group: usize,
}

struct Writer {
    prepared: bool,
    last_seq: Seq,
    /// Why writes fail until the database is reopened.
    broken: Option<String>,
    next_reopen: Option<Instant>,
}

/// Handle to `ess.redb`; cheap to clone, shared by feed, ledger and readers.
#[derive(Clone)]
pub struct Store(Arc<Shared>);

impl std::ops::Deref for Store {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`Store`] clones share.
pub struct Shared {
    slot: RwLock<Option<Arc<Database>>>,
    /// Where the file is, when the store may reopen it.
    path: Option<PathBuf>,
    opts: StoreOptions,
    writer: Mutex<Writer>,
    queue: Mutex<Queue>,
    wake: Condvar,
    broken: AtomicBool,
    closed: AtomicBool,
    last_seq: watch::Sender<Seq>,
    last_repair: Mutex<Option<Duration>>,
}

impl Drop for Shared {
    /// redb closes the file when its last handle drops; after redb panicked on a damaged
    /// page (contained), its state may be poisoned and that close panics as well. Dropped
    /// here inside `catch_unwind`, so a damaged file ends in an error, never a crash.
    fn drop(&mut self) {
        let db = self
            .slot
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(db) = db {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(db))).is_err() {
                tracing::error!(
                    "redb panicked closing a damaged ess.redb; the next start repairs it"
                );
            }
        }
    }
}

impl From<Database> for Store {
    fn from(db: Database) -> Store {
        Store::from_database(db, StoreOptions::default())
    }
}

impl From<Arc<Database>> for Store {
    fn from(db: Arc<Database>) -> Store {
        Store::new(db, None, StoreOptions::default())
    }
}

impl Store {
    fn new(db: Arc<Database>, path: Option<PathBuf>, opts: StoreOptions) -> Store {
        Store(Arc::new(Shared {
            slot: RwLock::new(Some(db)),
            path,
            opts,
            writer: Mutex::new(Writer {
                prepared: false,
                last_seq: 0,
                broken: None,
                next_reopen: None,
            }),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            broken: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            last_seq: watch::channel(0).0,
            last_repair: Mutex::new(None),
        }))
    }

    /// A store on an open database (any backend); it cannot reopen it after an I/O error.
    pub fn from_database(db: Database, opts: StoreOptions) -> Store {
        Store::new(Arc::new(db), None, opts)
    }

    /// Opens (or creates) the file at `path`. A file left unclean by a crash is repaired by
    /// redb first; the repair's duration is logged. A new file's folder is fsynced so the
    /// file's name survives a power loss.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store, Error> {
        let (db, repair) = open_file(path, opts.cache_size)?;
        let store = Store::new(Arc::new(db), Some(path.to_path_buf()), opts);
        *lock(&store.last_repair) = repair;
        Ok(store)
    }

    /// A prepared store in memory (tests, benches): nothing of it outlives the process.
    pub fn in_memory() -> Result<Store, Error> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| Error::Db(e.into()))?;
        let store = Store::from(db);
        store.prepare()?;
        Ok(store)
    }

    /// How long redb's repair took when this store opened the file, if it had to repair.
    pub fn last_repair(&self) -> Option<Duration> {
        *lock(&self.last_repair)
    }
}

fn open_file(path: &Path, cache_size: usize) -> Result<(Database, Option<Duration>), Error> {
    let existed = path.exists();
    let repaired = Arc::new(AtomicBool::new(false));
    let flag = repaired.clone();
    let mut b = builder(cache_size);
    b.set_repair_callback(move |_| flag.store(true, Ordering::SeqCst));
    let started = Instant::now();
    let db = loop {
        // A damaged file can make redb panic while it opens (its allocator state, say).
        match guarded("file", || Ok(b.create(path)?)) {
            Err(Error::Db(redb::Error::DatabaseAlreadyOpen)) if started.elapsed() < OPEN_WAIT => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => break other?,
        }
    };
    let repair = repaired.load(Ordering::SeqCst).then(|| started.elapsed());
    if let Some(took) = repair {
        tracing::warn!(
            file = %path.display(),
            duration_ms = took.as_millis() as u64,
            "ess.redb was not closed cleanly; redb repaired it"
        );
    }
    if !existed {
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| Error::Io {
                    what: format!("fsync {}", dir.display()),
                    source,
                })?;
        }
    }
    Ok((db, repair))
}

/// Whether a redb failure leaves the handle unusable until it is reopened.
fn needs_reopen(e: &redb::Error) -> bool {
    matches!(
        e,
        redb::Error::Io(_)
            | redb::Error::PreviousIo
            | redb::Error::Corrupted(_)
            | redb::Error::TransactionPoisoned
            | redb::Error::LockPoisoned(_)
            | redb::Error::DatabaseClosed
    )
}

fn is_broken_by(e: &Error) -> bool {
    match e {
        Error::Db(e) => needs_reopen(e),
        Error::Commit(e) => needs_reopen(e),
        // A panic inside a write transaction leaves redb refusing writes until reopened.
        Error::Corrupt { why, .. } => why.starts_with("redb panicked"),
        _ => false,
    }
}

/// The same failure again, for the next request of a group.
fn share(e: &Error) -> Error {
    match e {
        Error::Commit(c) => Error::Commit(c.clone()),
        Error::Corrupt {
            table,
            seq,
            key,
            why,
        } => Error::Corrupt {
            table,
            seq: *seq,
            key: key.clone(),
            why: why.clone(),
        },
        Error::Closed => Error::Closed,
        other => Error::Unavailable(other.to_string()),
    }
}

fn answer_all(group: Vec<AppendRequest>, e: &Error) {
    for req in group {
        let _ = req.reply.send(Err(share(e)));
    }
}

impl Shared {
    /// The database as it is now; hold it only for one operation.
    pub fn db(&self) -> Result<Arc<Database>, Error> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        self.slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| Error::Unavailable("ess.redb is being reopened".into()))
    }

    /// A write transaction outside the write slot, for tests and tools that write tables of
    /// their own; daemon code writes through [`Shared::write`].
    pub fn begin_write(&self) -> Result<WriteTransaction, Error> {
        Ok(self.db()?.begin_write()?)
    }

    /// The key new payloads and dead letters are sealed with, if encryption is on.
    pub fn sealing_key(&self) -> Option<Arc<seal::Key>> {
        self.opts.seal.clone()
    }

    /// The highest committed seq (0 when empty).
    pub fn last_seq(&self) -> Seq {
        *self.last_seq.borrow()
    }

    /// Changes whenever new events are committed.
    pub fn subscribe(&self) -> watch::Receiver<Seq> {
        self.last_seq.subscribe()
    }

    /// Checks the format (migrating a version 1 file in place) and reads `last_seq`.
    pub fn prepare(&self) -> Result<Seq, Error> {
        let mut w = lock(&self.writer);
        self.usable(&mut w)?;
        Ok(w.last_seq)
    }

    fn prepare_locked(&self, w: &mut Writer) -> Result<(), Error> {
        let db = self.db()?;
        let last = super::migrate::prepare(&db, self.opts.seal.as_deref())?;
        w.last_seq = last;
        w.prepared = true;
        self.last_seq.send_replace(last);
        Ok(())
    }

    /// Runs `f` in one durable write transaction together with the appends queued now, and
    /// commits once. Every ledger write goes through here.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut w = lock(&self.writer);
        self.usable(&mut w)?;
        self.round(&mut w, Commit::Durable, None, |tx, _| f(tx))
            .map(|(_, v)| v)
    }

    /// Runs `f` in one write transaction committed without waiting for an fsync (redb's
    /// `Durability::None`): readers see it at once, and it becomes durable with the next
    /// durable commit, which the committer makes within [`DEFER_DURABLE`] if no ingest group
    /// or ledger write comes first. The appends queued now are not taken: they wait for the
    /// committer, whose commit is durable. Only for a write whose loss in a power cut is
    /// repaired from elsewhere (a delivery commit whose target's checkpoint finds and cuts
    /// what an uncommitted attempt left: [`crate::target::Target::repairs_lost_commits`]).
    /// A write that fails leaves nothing; one that makes redb refuse writes marks the store
    /// broken, as [`Store::write`] does.
    pub fn write_deferred<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut w = lock(&self.writer);
        self.usable(&mut w)?;
        self.round(&mut w, Commit::Deferred, None, |tx, _| f(tx))
            .map(|(_, v)| v)
    }

    /// Appends `batch` and runs `f` in the same durable transaction (with the appends queued
    /// now), and commits once: for a writer whose events and own rows must be committed
    /// together (a pickup source: a file's records and its checkpoint). `f` sees what the
    /// append did (seqs, duplicates); if it fails, nothing of `batch` is stored.
    pub fn write_appending<T>(
        &self,
        batch: Batch,
        f: impl FnOnce(&WriteTransaction, &AppendOutcome) -> Result<T, Error>,
    ) -> Result<(AppendOutcome, T), Error> {
        let mut w = lock(&self.writer);
        self.usable(&mut w)?;
        let none = AppendOutcome::default();
        let (own, value) = self.round(&mut w, Commit::Durable, Some(batch), |tx, own| {
            f(tx, own.unwrap_or(&none))
        })?;
        Ok((own.unwrap_or_default(), value))
    }

    /// Err unless writes can go ahead: not closed, not broken (tries a reopen when one is
    /// due), the format checked.
    fn usable(&self, w: &mut Writer) -> Result<(), Error> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        if let Some(reason) = w.broken.clone() {
            let due = w.next_reopen.is_none_or(|t| Instant::now() >= t);
            if self.path.is_none() || !due {
                return Err(Error::Unavailable(reason));
            }
            w.next_reopen = Some(Instant::now() + REOPEN_EVERY);
            self.reopen(w)?;
        }
        if !w.prepared {
            self.prepare_locked(w)?;
        }
        Ok(())
    }

    fn mark_broken(&self, w: &mut Writer, e: &Error) {
        let reason = format!("{e} (reopening the database until writes work again)");
        if w.broken.is_none() {
            tracing::error!(error = %e, "ess.redb cannot be written; ingest refuses events until it can");
            w.next_reopen = Some(Instant::now() + REOPEN_EVERY);
        }
        w.broken = Some(reason.clone());
        self.broken.store(true, Ordering::SeqCst);
        if let Some(h) = &self.opts.health {
            h.set_database_error(Some(reason));
        }
        self.wake.notify_all();
    }

    /// Drops the broken handle, opens the file again and proves with a durable commit that
    /// writes work; only then is the store healthy again.
    fn reopen(&self, w: &mut Writer) -> Result<(), Error> {
        let Some(path) = &self.path else {
            return Err(Error::Unavailable("the database cannot be reopened".into()));
        };
        let old = self
            .slot
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(old) = old {
            wait_sole(&old, Duration::from_secs(5));
            drop(old);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let db = loop {
            match open_file(path, self.opts.cache_size) {
                Ok((db, _)) => break db,
                // A read under way still holds the old file open.
                Err(Error::Db(redb::Error::DatabaseAlreadyOpen)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(Error::Unavailable(format!(
                        "reopening ess.redb failed: {e}"
                    )));
                }
            }
        };
        *self.slot.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(db));
        w.prepared = false;
        let probe = self.prepare_locked(w).and_then(|()| {
            let db = self.db()?;
            guarded("meta", || {
                let tx = db.begin_write()?;
                {
                    let mut meta = tx.open_table(META)?;
                    meta.insert("last_seq", w.last_seq)?;
                    meta.insert("last_seq_check", schema::last_seq_check(w.last_seq))?;
                }
                tx.commit()?;
                Ok(())
            })
        });
        match probe {
            Ok(()) => {
                tracing::info!(
                    last_seq = w.last_seq,
                    "ess.redb reopened; writes work again"
                );
                w.broken = None;
                w.next_reopen = None;
                // What was deferred before the error is durable now or was lost with it.
                lock(&self.queue).deferred_since = None;
                self.broken.store(false, Ordering::SeqCst);
                if let Some(h) = &self.opts.health {
                    h.set_database_error(None);
                }
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, "ess.redb still cannot be written");
                Err(Error::Unavailable(
                    w.broken.clone().unwrap_or_else(|| e.to_string()),
                ))
            }
        }
    }

    /// Queues an append; the receiver answers after its commit.
    pub(crate) fn enqueue(
        &self,
        batch: Batch,
    ) -> Result<oneshot::Receiver<Result<AppendOutcome, Error>>, Error> {
        let (reply, answer) = oneshot::channel();
        if batch.is_empty() {
            let _ = reply.send(Ok(AppendOutcome::default()));
            return Ok(answer);
        }
        let mut q = lock(&self.queue);
        if q.closing || self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        q.requests.push_back(AppendRequest { batch, reply });
        let idle = q.idle;
        drop(q);
        if idle {
            self.wake.notify_one();
        }
        Ok(answer)
    }

    /// The requests of the next group: the first waiting one and those behind it, up to
    /// [`GROUP_MAX_EVENTS`] events.
    fn take_group(&self) -> Vec<AppendRequest> {
        let mut q = lock(&self.queue);
        let mut group = Vec::new();
        let mut n = 0;
        while let Some(r) = q.requests.front() {
            if !group.is_empty() && n + r.batch.len() > GROUP_MAX_EVENTS {
                break;
            }
            n += r.batch.len();
            group.extend(q.requests.pop_front());
        }
        if !group.is_empty() {
            q.last_group = group.len();
        }
        group
    }

    fn requeue_front(&self, group: Vec<AppendRequest>) {
        if group.is_empty() {
            return;
        }
        let mut q = lock(&self.queue);
        for r in group.into_iter().rev() {
            q.requests.push_front(r);
        }
        drop(q);
        self.wake.notify_one();
    }

    /// One transaction: the queued appends (and `own`, the caller's batch, last), then `f`
    /// with the outcome of `own`; one commit; then the answers.
    ///
    /// `Commit::Deferred` ([`Store::write_deferred`]): no appends are taken (their answers
    /// need a durable commit), and the commit does not wait for an fsync.
    fn round<T>(
        &self,
        w: &mut Writer,
        commit: Commit,
        own: Option<Batch>,
        f: impl FnOnce(&WriteTransaction, Option<&AppendOutcome>) -> Result<T, Error>,
    ) -> Result<(Option<AppendOutcome>, T), Error> {
        let db = self.db()?;
        let mut group = match commit {
            Commit::Durable => self.take_group(),
            Commit::Deferred => Vec::new(),
        };
        // Whether the commit went without its fsync (see below).
        let mut deferred = false;
        // The caller's own batch goes last, answered through the value returned, never
        // left in the queue.
        let own_at = own.map(|batch| {
            group.push(AppendRequest {
                batch,
                reply: oneshot::channel().0,
            });
            group.len() - 1
        });
        let now = Utc::now().timestamp_micros();
        let seal = self.opts.seal.clone();
        let last_seq = w.last_seq;
        let mut ledger_failed = false;
        let done = guarded("write", || {
            let mut tx = db.begin_write()?;
            if commit == Commit::Deferred {
                // Refused only in the modes that share the file between processes, which
                // the daemon does not use; the write is then simply durable.
                deferred = tx.set_durability(redb::Durability::None).is_ok();
            }
            let mut appended = None;
            if !group.is_empty() {
                match insert_group(&tx, &mut group, last_seq, now, seal.as_deref()) {
                    Ok(a) => appended = Some(a),
                    // The caller's rows must not be committed without its events.
                    Err(e) if is_broken_by(&e) || own_at.is_some() => return Err(e),
                    Err(e) => {
                        tracing::error!(error = %e, n_requests = group.len(), "appends failed; nothing of these requests was stored");
                        tx.abort()?;
                        answer_all(std::mem::take(&mut group), &e);
                        tx = db.begin_write()?;
                    }
                }
            }
            let own_outcome = own_at.and_then(|i| {
                appended
                    .as_ref()
                    .and_then(|(o, _): &(Vec<AppendOutcome>, Seq)| o.get(i))
            });
            let value = match f(&tx, own_outcome) {
                Ok(v) => v,
                Err(e) => {
                    ledger_failed = true;
                    tx.abort()?;
                    return Err(e);
                }
            };
            tx.commit()
                .map_err(|e| Error::Commit(Arc::new(redb::Error::from(e))))?;
            Ok((value, appended))
        });
        match done {
            Ok((value, appended)) => {
                let mut q = lock(&self.queue);
                if deferred {
                    q.deferred_since.get_or_insert_with(Instant::now);
                    if q.idle {
                        // The committer waits with no time-out: it must start counting.
                        self.wake.notify_one();
                    }
                } else {
                    // Durable, and so is every deferred write before it.
                    q.deferred_since = None;
                }
                drop(q);
                let mut own_outcome = None;
                if let Some((outcomes, new_last)) = appended {
                    w.last_seq = new_last;
                    self.last_seq.send_replace(new_last);
                    own_outcome = own_at.and_then(|i| outcomes.get(i).cloned());
                    for (req, out) in group.into_iter().zip(outcomes) {
                        let _ = req.reply.send(Ok(out));
                    }
                }
                Ok((own_outcome, value))
            }
            Err(e) => {
                if is_broken_by(&e) {
                    // Broken first: whoever gets the 503 finds /healthz saying so.
                    self.mark_broken(w, &e);
                    answer_all(group, &e);
                } else if ledger_failed {
                    // Nothing was committed: the appends wait for the next transaction
                    // (the caller's own batch is not theirs to keep).
                    if let Some(i) = own_at {
                        group.truncate(i);
                    }
                    self.requeue_front(group);
                } else {
                    if !group.is_empty() {
                        tracing::error!(error = %e, n_requests = group.len(), "feed commit failed; nothing of these requests was stored");
                    }
                    answer_all(group, &e);
                }
                Err(e)
            }
        }
    }

    /// The committer thread: writes queued appends until the store closes; while broken,
    /// tries to reopen every [`REOPEN_EVERY`].
    fn run_committer(&self) {
        loop {
            // A deferred write has waited DEFER_DURABLE for a durable commit to carry it.
            let mut flush = false;
            {
                let mut q = lock(&self.queue);
                while q.requests.is_empty() && !q.closing {
                    q.idle = true;
                    if self.broken.load(Ordering::SeqCst) {
                        q = self
                            .wake
                            .wait_timeout(q, REOPEN_EVERY)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                        q.idle = false;
                        break;
                    }
                    if let Some(since) = q.deferred_since {
                        let left = self.defer_durable().saturating_sub(since.elapsed());
                        if left.is_zero() {
                            q.idle = false;
                            flush = true;
                            break;
                        }
                        q = self
                            .wake
                            .wait_timeout(q, left)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    } else {
                        q = self.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
                    }
                    q.idle = false;
                }
                // At close, `Store::close` makes what is deferred durable (redb's close
                // commits it).
                if q.closing && q.requests.is_empty() {
                    return;
                }
                // A small group while requests come from several producers at once: wait a
                // little for the next ones (see GROUP_LINGER).
                if !q.requests.is_empty()
                    && q.last_group >= 2
                    && !self.broken.load(Ordering::SeqCst)
                {
                    let until = Instant::now() + GROUP_LINGER;
                    while q.requests.len() < GROUP_ENOUGH && !q.closing {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        q.idle = true;
                        q = self
                            .wake
                            .wait_timeout(q, left)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                        q.idle = false;
                    }
                }
            }
            let mut w = lock(&self.writer);
            match self.usable(&mut w) {
                Err(e) => {
                    let group = self.take_group();
                    answer_all(group, &e);
                    if matches!(e, Error::Closed) {
                        return;
                    }
                    drop(w);
                    // Paced by the wait above once the queue is empty.
                }
                Ok(()) => {
                    let q = lock(&self.queue);
                    // A deferred write's flush may have been carried meanwhile.
                    let work = !q.requests.is_empty() || (flush && q.deferred_since.is_some());
                    drop(q);
                    if work {
                        let _ = self.round(&mut w, Commit::Durable, None, |_, _| Ok(()));
                    }
                }
            }
        }
    }

    fn defer_durable(&self) -> Duration {
        if self.opts.defer_durable.is_zero() {
            DEFER_DURABLE
        } else {
            self.opts.defer_durable
        }
    }

    /// Stops taking appends; the committer thread ends once the queue is empty.
    fn stop_appends(&self) {
        lock(&self.queue).closing = true;
        self.wake.notify_all();
    }

    /// Closes the database for every handle: waits for the write and the reads under way,
    /// then closes it explicitly, so the next open needs no repair.
    pub fn close(&self) -> Result<(), Error> {
        self.stop_appends();
        let _w = lock(&self.writer);
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let Some(db) = self
            .slot
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return Ok(());
        };
        if !wait_sole(&db, Duration::from_secs(10)) {
            tracing::warn!("closing ess.redb while a read is still under way");
        }
        match Arc::try_unwrap(db) {
            // After redb panicked on a damaged page (contained), its own state may be
            // poisoned: closing then panics too. That is contained as well; the file is
            // left for the next open to repair, as after a crash.
            Ok(db) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.close())) {
                Ok(r) => r.map_err(Error::from),
                Err(_) => {
                    tracing::error!(
                        "redb panicked closing a damaged ess.redb; the next start repairs it"
                    );
                    Ok(())
                }
            },
            Err(_) => Err(Error::Unavailable(
                "ess.redb is still in use; it closes when the last reader ends".into(),
            )),
        }
    }
}

/// Waits (bounded) until `arc` is the only handle left; whether it is.
fn wait_sole<T>(arc: &Arc<T>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Arc::strong_count(arc) > 1 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Writes one group's events inside `tx`; the outcome of each request and the new last seq.
fn insert_group(
    tx: &WriteTransaction,
    group: &mut [AppendRequest],
    mut last_seq: Seq,
    now_micros: i64,
    seal: Option<&seal::Key>,
) -> Result<(Vec<AppendOutcome>, Seq), Error> {
    let mut events = tx.open_table(EVENTS)?;
    let mut keys = tx.open_table(KEYS)?;
    let mut outcomes = Vec::with_capacity(group.len());
    for req in group.iter_mut() {
        let mut out = AppendOutcome::default();
        let Batch { buf, items } = &mut req.batch;
        for item in items.iter() {
            let seq = last_seq + 1;
            // One lookup for both the dedupe and the index: a key seen before gets its old
            // seq back.
            let prev = keys.insert(item.index.as_bytes(), seq)?.map(|g| g.value());
            if let Some(prev) = prev {
                keys.insert(item.index.as_bytes(), prev)?;
                out.duplicates += 1;
                continue;
            }
            last_seq = seq;
            let value = &mut buf[item.slot.start..item.slot.end];
            match seal {
                None => {
                    codec::finish(value, seq, now_micros);
                    events.insert(seq, &*value)?;
                }
                Some(key) => {
                    let sealed =
                        codec::finish_sealed(value, item.slot.payload_start, seq, now_micros, key);
                    events.insert(seq, sealed.as_slice())?;
                }
            }
            out.accepted += 1;
            out.first_seq.get_or_insert(seq);
            out.last_seq = Some(seq);
        }
        outcomes.push(out);
    }
    let mut meta = tx.open_table(META)?;
    meta.insert("last_seq", last_seq)?;
    meta.insert("last_seq_check", schema::last_seq_check(last_seq))?;
    Ok((outcomes, last_seq))
}

/// The committer thread of a feed; stopping it (or dropping the last handle) lets it finish
/// the queued appends and end.
pub(crate) struct Committer {
    store: Store,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Committer {
    pub(crate) fn start(store: Store) -> Result<Committer, Error> {
        let s = store.clone();
        let thread = std::thread::Builder::new()
            .name("feed-committer".into())
            .spawn(move || s.run_committer())
            .map_err(|source| Error::Io {
                what: "cannot start the committer thread".into(),
                source,
            })?;
        Ok(Committer {
            store,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Lets the queued appends commit, then ends the thread.
    pub(crate) fn stop(&self) {
        self.store.stop_appends();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ReadableDatabase for Shared {
    fn begin_read(&self) -> Result<ReadTransaction, redb::TransactionError> {
        match self.db() {
            Ok(db) => db.begin_read(),
            Err(_) => Err(redb::TransactionError::Storage(
                redb::StorageError::DatabaseClosed,
            )),
        }
    }

    fn cache_stats(&self) -> redb::CacheStats {
        match self.db() {
            Ok(db) => db.cache_stats(),
            // CacheStats has no public constructor: report an empty in-memory database's.
            Err(_) => Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .expect("an in-memory redb database always opens")
                .cache_stats(),
        }
    }
}

impl ReadableDatabase for Store {
    fn begin_read(&self) -> Result<ReadTransaction, redb::TransactionError> {
        self.0.begin_read()
    }

    fn cache_stats(&self) -> redb::CacheStats {
        self.0.cache_stats()
    }
}
