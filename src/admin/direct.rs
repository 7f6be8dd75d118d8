//! [`AdminBackend`] on the database file itself: what the CLI uses when no daemon runs, and
//! what the daemon serves on its admin socket (given its own `Arc<Database>`).
//!
//! Connectors are the map files in `maps_dir` (their `target:` and `events:`), joined with
//! every connector the ledger knows, so a connector whose map was removed still shows.
//!
//! Invariant: reads use one read transaction each, so an answer is a consistent snapshot;
//! a backup copies every table from one read transaction and never overwrites a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use redb::{
    Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableError,
};

use super::{
    AdminBackend, AdminError, BackupRequest, BackupResponse, ConnectorStats, FeedStats, ListEntry,
    ListKind, ListRequest, ListResponse, ReplayRequest, ReplayResponse, RetryInfo, StatsResponse,
};
use crate::config::connector::{map_files, parse};
use crate::event::Seq;
use crate::feed::schema::{CURSORS, DEAD, EVENTS, KEYS, META, REQUEUE, RETRIES};
use crate::feed::{Error, Store, StoredEvent};
use crate::ledger::{CursorState, DeadLetter, Ledger, RetryState};
use crate::map::{MapContext, Mapping};

/// Rows written per transaction of a backup.
const BACKUP_CHUNK: usize = 50_000;
/// Most feed rows one `list --pending` scans per connector looking for matching events.
const PENDING_SCAN_MAX: usize = 1_000_000;

enum Db {
    Shared(Store),
    ReadOnly(ReadOnlyDatabase),
}

/// Called with the connector's name after a replay queued something.
pub type ReplayHook = Arc<dyn Fn(&str) + Send + Sync>;

/// The admin operations, straight on `ess.redb`.
pub struct DirectBackend {
    maps_dir: PathBuf,
    db_path: PathBuf,
    db: Db,
    on_replay: Option<ReplayHook>,
}

/// A connector as its map file describes it.
#[derive(Debug, Clone)]
struct MapInfo {
    /// The compiled mapping, whose `selects` is the connector's own filter; `None` when
    /// the map does not compile (then the raw `events:` list stands in).
    mapping: Option<Arc<Mapping>>,
    events: Option<Vec<String>>,
    start_latest: bool,
}

impl MapInfo {
    /// Whether the connector takes events of `event_type`, exactly as it decides.
    fn takes(&self, event_type: &str) -> bool {
        match &self.mapping {
            Some(m) => m.selects(event_type),
            None => self
                .events
                .as_ref()
                .is_none_or(|types| types.iter().any(|t| t == event_type)),
        }
    }
}

fn rfc3339(micros: i64) -> String {
    Utc.timestamp_micros(micros)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn runtime(e: impl std::fmt::Display) -> AdminError {
    AdminError::Runtime(e.to_string())
}

/// Opens `def` for reading; a table that does not exist yet reads as empty (`None`).
fn open_ro<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, AdminError> {
    match tx.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(runtime(e)),
    }
}

impl DirectBackend {
    /// The daemon's backend: shares its open database.
    pub fn new(maps_dir: &Path, db_path: &Path, db: impl Into<Store>) -> DirectBackend {
        DirectBackend::with(maps_dir, db_path, Db::Shared(db.into()))
    }

    fn with(maps_dir: &Path, db_path: &Path, db: Db) -> DirectBackend {
        DirectBackend {
            maps_dir: maps_dir.to_path_buf(),
            db_path: db_path.to_path_buf(),
            db,
            on_replay: None,
        }
    }

    /// The CLI never creates a database: a missing file means a wrong config or a daemon
    /// that never ran.
    fn require(db_path: &Path) -> Result<(), AdminError> {
        if db_path.exists() {
            return Ok(());
        }
        Err(AdminError::Runtime(format!(
            "no database at {} (has `ess serve` run with this config?)",
            db_path.display()
        )))
    }

    /// Opens the database read-only (works while a daemon holds it): list, stats, backup.
    /// A file left unclean by a dead daemon is repaired first (see below).
    pub fn read_only(maps_dir: &Path, db_path: &Path) -> Result<DirectBackend, AdminError> {
        DirectBackend::require(db_path)?;
        let mut builder = Database::builder();
        builder.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
        let db = match builder.open_read_only(db_path) {
            Ok(db) => Db::ReadOnly(db),
            // Left by a daemon that died (kill -9, power loss) and none runs now: a reader
            // may not repair, so open it for writing, which repairs it exactly as the next
            // `ess serve` would (committed data only; redb's recovery is atomic).
            Err(redb::DatabaseError::RepairAborted) => {
                let db = crate::feed::open_database(db_path).map_err(|e| {
                    AdminError::Runtime(format!(
                        "{} needs recovery and cannot be opened: {e}",
                        db_path.display()
                    ))
                })?;
                Db::Shared(Store::from(db))
            }
            Err(e) => {
                return Err(AdminError::Runtime(format!(
                    "cannot open {}: {e}",
                    db_path.display()
                )));
            }
        };
        Ok(DirectBackend::with(maps_dir, db_path, db))
    }

    /// Opens the database for writing (fails while a daemon holds it): replay.
    pub fn writable(maps_dir: &Path, db_path: &Path) -> Result<DirectBackend, AdminError> {
        DirectBackend::require(db_path)?;
        let db = crate::feed::open_database(db_path).map_err(|e| {
            AdminError::Runtime(format!(
                "cannot open {} for writing: {e} (a daemon holds it but its admin socket does not answer?)",
                db_path.display()
            ))
        })?;
        Ok(DirectBackend::new(maps_dir, db_path, Arc::new(db)))
    }

    /// Calls `hook` with the connector's name after a replay queued events, so the daemon
    /// can wake that connector instead of waiting for the next feed event.
    pub fn on_replay(mut self, hook: impl Fn(&str) + Send + Sync + 'static) -> DirectBackend {
        self.on_replay = Some(Arc::new(hook));
        self
    }

    fn begin_read(&self) -> Result<ReadTransaction, AdminError> {
        match &self.db {
            Db::Shared(db) => db.begin_read().map_err(runtime),
            Db::ReadOnly(db) => db.begin_read().map_err(runtime),
        }
    }

    /// Map files by connector name. A file that does not parse is skipped with a warning
    /// (`ess check` is where its problems are shown).
    fn maps(&self) -> Result<BTreeMap<String, MapInfo>, AdminError> {
        let files = map_files(&self.maps_dir).map_err(|e| {
            AdminError::Runtime(format!(
                "cannot read maps_dir {}: {e}",
                self.maps_dir.display()
            ))
        })?;
        let mut out = BTreeMap::new();
        for path in files {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read map file");
                    continue;
                }
            };
            match parse(&path, &text) {
                Ok(c) => {
                    let start_latest = c.file.start.as_ref().is_some_and(|s| s.value == "latest");
                    out.insert(
                        c.file.target.value.clone(),
                        MapInfo {
                            // Selection does not depend on the timezone.
                            mapping: Mapping::compile(
                                &c,
                                &MapContext {
                                    timezone: chrono_tz::UTC,
                                },
                            )
                            .ok()
                            .map(Arc::new),
                            events: c.file.events.clone(),
                            start_latest,
                        },
                    );
                }
                Err(d) => tracing::warn!(problem = %d, "map file skipped"),
            }
        }
        Ok(out)
    }

    /// Every connector: from the maps and from the ledger's cursors, sorted by name.
    fn connectors(
        &self,
        tx: &ReadTransaction,
    ) -> Result<BTreeMap<String, Option<MapInfo>>, AdminError> {
        let mut all: BTreeMap<String, Option<MapInfo>> = self
            .maps()?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        if let Some(cursors) = open_ro(tx, CURSORS)? {
            for row in cursors.iter().map_err(runtime)? {
                let name = row.map_err(runtime)?.0.value().to_string();
                all.entry(name).or_insert(None);
            }
        }
        Ok(all)
    }

    fn selected(
        &self,
        tx: &ReadTransaction,
        target: Option<&str>,
    ) -> Result<BTreeMap<String, Option<MapInfo>>, AdminError> {
        let all = self.connectors(tx)?;
        match target {
            None => Ok(all),
            Some(t) => match all.get(t) {
                Some(info) => Ok(BTreeMap::from([(t.to_string(), info.clone())])),
                None => Err(unknown_target(t, all.keys())),
            },
        }
    }
}

fn unknown_target<'a>(t: &str, known: impl Iterator<Item = &'a String>) -> AdminError {
    let known: Vec<&str> = known.map(String::as_str).collect();
    AdminError::Usage(if known.is_empty() {
        format!("no connector named {t:?}: maps_dir has no connectors")
    } else {
        format!("no connector named {t:?} (known: {})", known.join(", "))
    })
}

fn read_cursor(tx: &ReadTransaction, name: &str) -> Result<Option<CursorState>, AdminError> {
    crate::ledger::cursor_at(tx, name).map_err(runtime)
}

fn read_retry(tx: &ReadTransaction, name: &str) -> Result<Option<RetryState>, AdminError> {
    crate::ledger::retry_at(tx, name).map_err(runtime)
}

fn read_event(tx: &ReadTransaction, seq: Seq) -> Result<Option<StoredEvent>, AdminError> {
    let Some(t) = open_ro(tx, EVENTS)? else {
        return Ok(None);
    };
    let v = t.get(seq).map_err(runtime)?;
    v.map(|v| StoredEvent::decode(seq, v.value()))
        .transpose()
        .map_err(runtime)
}

fn last_seq(tx: &ReadTransaction) -> Result<Seq, AdminError> {
    let Some(meta) = open_ro(tx, META)? else {
        return Ok(0);
    };
    Ok(meta
        .get("last_seq")
        .map_err(runtime)?
        .map_or(0, |v| v.value()))
}

fn entry(target: &str, seq: Seq, state: &str, ev: Option<&StoredEvent>) -> ListEntry {
    ListEntry {
        target: target.to_string(),
        seq,
        state: state.to_string(),
        event_type: ev.map(|e| e.event_type.clone()),
        key: ev.map(|e| e.key.clone()),
        received_at: ev.map(|e| rfc3339(e.received_at_micros)),
        attempts: None,
        reason: None,
        message: None,
        at: None,
    }
}

fn list_dead(
    tx: &ReadTransaction,
    name: &str,
    limit: usize,
) -> Result<(Vec<ListEntry>, bool), AdminError> {
    let mut out = Vec::new();
    let Some(dead) = open_ro(tx, DEAD)? else {
        return Ok((out, false));
    };
    for row in dead.range((name, 0)..=(name, u64::MAX)).map_err(runtime)? {
        if out.len() == limit {
            return Ok((out, true));
        }
        let (k, v) = row.map_err(runtime)?;
        let seq = k.value().1;
        let letter: DeadLetter =
            crate::ledger::decode_dead(name, seq, v.value()).map_err(runtime)?;
        let ev = read_event(tx, seq)?;
        let mut e = entry(name, seq, "dead", ev.as_ref());
        e.attempts = Some(letter.attempts);
        e.reason = Some(letter.reason);
        e.message = Some(letter.message);
        e.at = Some(rfc3339(letter.at_micros));
        out.push(e);
    }
    Ok((out, false))
}

fn list_pending(
    tx: &ReadTransaction,
    name: &str,
    info: Option<&MapInfo>,
    limit: usize,
) -> Result<(Vec<ListEntry>, bool), AdminError> {
    let mut out = Vec::new();
    if let Some(requeue) = open_ro(tx, REQUEUE)? {
        for row in requeue
            .range((name, 0)..=(name, u64::MAX))
            .map_err(runtime)?
        {
            if out.len() == limit {
                return Ok((out, true));
            }
            let seq = row.map_err(runtime)?.0.value().1;
            out.push(entry(name, seq, "requeued", read_event(tx, seq)?.as_ref()));
        }
    }
    let Some(info) = info else {
        return Ok((out, false));
    }; // no map: nothing will be taken
    let cursor = match read_cursor(tx, name)? {
        Some(c) => c.seq,
        // A connector that never ran starts at the beginning, or takes nothing old.
        None if info.start_latest => return Ok((out, false)),
        None => 0,
    };
    let retry = read_retry(tx, name)?;
    let Some(events) = open_ro(tx, EVENTS)? else {
        return Ok((out, false));
    };
    for (scanned, row) in events
        .range(cursor.saturating_add(1)..)
        .map_err(runtime)?
        .enumerate()
    {
        if scanned >= PENDING_SCAN_MAX {
            return Ok((out, true));
        }
        let (k, v) = row.map_err(runtime)?;
        let seq = k.value();
        let ev = StoredEvent::decode(seq, v.value()).map_err(runtime)?;
        if !info.takes(&ev.event_type) {
            continue;
        }
        if out.len() == limit {
            return Ok((out, true));
        }
        let mut e = entry(name, seq, "pending", Some(&ev));
        if let Some(r) = retry.as_ref().filter(|r| r.seq == seq) {
            e.state = "retrying".into();
            e.attempts = Some(r.attempts);
            e.message = Some(r.last_error.clone());
            e.at = Some(rfc3339(r.next_at_micros));
        }
        out.push(e);
    }
    Ok((out, false))
}

/// Counts events received at or after `since`. The feed is a contiguous run of seqs
/// (compaction only removes a prefix) stamped in commit order, so a binary search on
/// `received_at` finds the first one in O(log n) reads, whatever the load.
fn received_since(tx: &ReadTransaction, since: DateTime<Utc>) -> Result<u64, AdminError> {
    let Some(events) = open_ro(tx, EVENTS)? else {
        return Ok(0);
    };
    let (Some(first), Some(last)) = (
        events.first().map_err(runtime)?,
        events.last().map_err(runtime)?,
    ) else {
        return Ok(0);
    };
    let (first, last) = (first.0.value(), last.0.value());
    let since = since.timestamp_micros();
    let received = |seq: Seq| -> Result<Option<i64>, AdminError> {
        let Some(v) = events.get(seq).map_err(runtime)? else {
            return Ok(None);
        };
        let ev = StoredEvent::decode(seq, v.value()).map_err(runtime)?;
        Ok(Some(ev.received_at_micros))
    };
    // The lowest seq in [lo, hi) received at or after `since`; hi = none is.
    let (mut lo, mut hi) = (first, last + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if received(mid)?.is_some_and(|t| t >= since) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(last + 1 - lo)
}

fn count_range<V: redb::Value + 'static>(
    tx: &ReadTransaction,
    def: TableDefinition<(&'static str, u64), V>,
    name: &str,
) -> Result<u64, AdminError> {
    let Some(t) = open_ro(tx, def)? else {
        return Ok(0);
    };
    let mut n = 0;
    for row in t.range((name, 0)..=(name, u64::MAX)).map_err(runtime)? {
        row.map_err(runtime)?;
        n += 1;
    }
    Ok(n)
}

/// Copies one table from `src` into `dst` in chunks; returns the rows copied. A table
/// missing in the source is created empty in the copy.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &ReadTransaction,
    dst: &Database,
    def: TableDefinition<K, V>,
) -> Result<u64, Error> {
    let Some(table) = open_ro(src, def).map_err(|e| Error::Unavailable(e.to_string()))? else {
        let tx = dst.begin_write()?;
        tx.open_table(def)?;
        tx.commit()?;
        return Ok(0);
    };
    let mut rows = table.iter()?;
    let mut n = 0;
    loop {
        let tx = dst.begin_write()?;
        let mut chunk = 0;
        {
            let mut out = tx.open_table(def)?;
            for row in rows.by_ref() {
                let (k, v) = row?;
                out.insert(k.value(), v.value())?;
                chunk += 1;
                if chunk == BACKUP_CHUNK {
                    break;
                }
            }
        }
        tx.commit()?;
        n += chunk as u64;
        if chunk < BACKUP_CHUNK {
            return Ok(n);
        }
    }
}

/// Writes the consistent copy; the caller has reserved `file` (created empty, exclusively).
fn write_backup(
    src: &ReadTransaction,
    file: std::fs::File,
    path: &Path,
) -> Result<BTreeMap<String, u64>, Error> {
    let dst = Database::builder().create_with_backend(redb::backends::FileBackend::new(file)?)?;
    let mut tables = BTreeMap::new();
    tables.insert("events".to_string(), copy_table(src, &dst, EVENTS)?);
    tables.insert("keys".to_string(), copy_table(src, &dst, KEYS)?);
    tables.insert("meta".to_string(), copy_table(src, &dst, META)?);
    tables.insert("cursors".to_string(), copy_table(src, &dst, CURSORS)?);
    tables.insert("retries".to_string(), copy_table(src, &dst, RETRIES)?);
    tables.insert("dead".to_string(), copy_table(src, &dst, DEAD)?);
    tables.insert("requeue".to_string(), copy_table(src, &dst, REQUEUE)?);
    drop(dst);
    // redb's commits are durable already; this covers the file's metadata too.
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| Error::Io {
            what: format!("fsync {}", path.display()),
            source,
        })?;
    Ok(tables)
}

impl AdminBackend for DirectBackend {
    fn list(&self, req: &ListRequest) -> Result<ListResponse, AdminError> {
        let tx = self.begin_read()?;
        let mut entries = Vec::new();
        let mut truncated = false;
        for (name, info) in self.selected(&tx, req.target.as_deref())? {
            if req.kind != ListKind::Dead {
                let (mut e, t) = list_pending(&tx, &name, info.as_ref(), req.limit)?;
                entries.append(&mut e);
                truncated |= t;
            }
            if req.kind != ListKind::Pending {
                let (mut e, t) = list_dead(&tx, &name, req.limit)?;
                entries.append(&mut e);
                truncated |= t;
            }
        }
        Ok(ListResponse { entries, truncated })
    }

    fn replay(&self, req: &ReplayRequest) -> Result<ReplayResponse, AdminError> {
        let resp = self.replay_inner(req)?;
        if resp.requeued > 0 {
            if let Some(hook) = &self.on_replay {
                hook(&resp.target);
            }
        }
        Ok(resp)
    }

    fn stats(&self) -> Result<StatsResponse, AdminError> {
        self.stats_inner()
    }

    fn backup(&self, req: &BackupRequest) -> Result<BackupResponse, AdminError> {
        self.backup_inner(req)
    }
}

impl DirectBackend {
    fn replay_inner(&self, req: &ReplayRequest) -> Result<ReplayResponse, AdminError> {
        let Db::Shared(db) = &self.db else {
            return Err(AdminError::Runtime(
                "replay needs the database open for writing".into(),
            ));
        };
        let target = match req {
            ReplayRequest::Range { target, .. } | ReplayRequest::Dead { target } => target,
        };
        let tx = self.begin_read()?;
        self.selected(&tx, Some(target))?;
        let cursor = read_cursor(&tx, target)?.map_or(0, |c| c.seq);
        let last = last_seq(&tx)?;
        drop(tx);
        let ledger = Ledger::new(db.clone());
        match req {
            ReplayRequest::Dead { target } => {
                let n = ledger.requeue_dead(target)?;
                let note = (n == 0).then(|| format!("{target} has no dead letters"));
                Ok(ReplayResponse {
                    target: target.clone(),
                    requeued: n,
                    note,
                })
            }
            ReplayRequest::Range { target, from, to } => {
                if *from == 0 {
                    return Err(AdminError::Usage(
                        "--from must be at least 1 (seqs start at 1)".into(),
                    ));
                }
                let to = to.unwrap_or(cursor);
                if to < *from {
                    return Err(AdminError::Usage(format!(
                        "empty range: --to {to} is below --from {from}{}",
                        if cursor < *from {
                            format!(" ({target}'s cursor is at {cursor})")
                        } else {
                            String::new()
                        }
                    )));
                }
                if *from > last {
                    return Err(AdminError::Usage(format!(
                        "--from {from} is beyond the feed's last seq {last}"
                    )));
                }
                let n = ledger.requeue_range(target, *from, to)?;
                let mut notes = Vec::new();
                if to > cursor {
                    notes.push(format!(
                        "seqs above {target}'s cursor {cursor} are still pending and will be delivered anyway"
                    ));
                }
                let asked = to.min(cursor).saturating_sub(*from).saturating_add(1);
                if to.min(cursor) >= *from && n < asked {
                    notes.push(format!(
                        "{} of the {asked} seqs were already queued or are no longer in the feed",
                        asked - n
                    ));
                }
                let note = (!notes.is_empty()).then(|| notes.join("; "));
                Ok(ReplayResponse {
                    target: target.clone(),
                    requeued: n,
                    note,
                })
            }
        }
    }

    fn stats_inner(&self) -> Result<StatsResponse, AdminError> {
        let tx = self.begin_read()?;
        let last = last_seq(&tx)?;
        let (first_seq, n_events) = match open_ro(&tx, EVENTS)? {
            Some(t) => (
                t.first().map_err(runtime)?.map(|(k, _)| k.value()),
                t.len().map_err(runtime)?,
            ),
            None => (None, 0),
        };
        let now = Utc::now();
        let feed = FeedStats {
            last_seq: last,
            first_seq,
            events: n_events,
            file_bytes: std::fs::metadata(&self.db_path)
                .map(|m| m.len())
                .unwrap_or(0),
            free_disk_bytes: self
                .db_path
                .parent()
                .and_then(|d| crate::feed::retention::free_disk_bytes(d).ok()),
            received_last_minute: received_since(&tx, now - chrono::Duration::minutes(1))?,
            received_last_hour: received_since(&tx, now - chrono::Duration::hours(1))?,
        };
        let mut connectors = Vec::new();
        for (name, info) in self.connectors(&tx)? {
            let cursor = read_cursor(&tx, &name)?;
            let retry = read_retry(&tx, &name)?;
            connectors.push(ConnectorStats {
                has_map: info.is_some(),
                cursor: cursor.as_ref().map(|c| c.seq),
                lag: last.saturating_sub(cursor.as_ref().map_or(0, |c| c.seq)),
                delivered: cursor.as_ref().map_or(0, |c| c.delivered),
                retrying: retry.map(|r| RetryInfo {
                    seq: r.seq,
                    attempts: r.attempts,
                    next_at: rfc3339(r.next_at_micros),
                    last_error: r.last_error,
                }),
                dead: count_range(&tx, DEAD, &name)?,
                requeued: count_range(&tx, REQUEUE, &name)?,
                last_success: cursor.and_then(|c| c.last_success_micros).map(rfc3339),
                target: name,
            });
        }
        Ok(StatsResponse { feed, connectors })
    }

    fn backup_inner(&self, req: &BackupRequest) -> Result<BackupResponse, AdminError> {
        let path = &req.to;
        let usage = |m: String| Err(AdminError::Usage(m));
        if !path.is_absolute() {
            return usage(format!("backup path {} must be absolute", path.display()));
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return usage(format!("backup path {} needs a file name", path.display()));
        };
        if std::fs::symlink_metadata(path).is_ok() {
            return usage(format!(
                "{} exists; refusing to overwrite it",
                path.display()
            ));
        }
        // Written under a temp name and linked into place only when complete, so an
        // interrupted backup (error, shutdown, crash) never leaves a file that looks whole.
        let partial = path.with_file_name(format!(".{name}.partial"));
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&partial)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return usage(format!(
                    "{} exists: a backup to {} is running or was cut short (remove it if none runs)",
                    partial.display(),
                    path.display()
                ));
            }
            Err(e) => {
                return Err(AdminError::Runtime(format!(
                    "cannot create {}: {e}",
                    partial.display()
                )));
            }
        };
        let tx = self.begin_read()?;
        let written = write_backup(&tx, file, &partial)
            .map_err(|e| AdminError::Runtime(format!("backup to {} failed: {e}", path.display())))
            .and_then(|tables| publish(&partial, path).map(|()| tables));
        drop(tx);
        let _ = std::fs::remove_file(&partial);
        let tables = written?;
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Ok(BackupResponse {
            path: path.clone(),
            tables,
            bytes,
        })
    }
}

/// Gives the complete backup its name: a hard link, which (unlike rename) fails rather
/// than replace a file that appeared meanwhile; then makes the name durable.
fn publish(partial: &Path, path: &Path) -> Result<(), AdminError> {
    match std::fs::hard_link(partial, path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(AdminError::Usage(format!(
                "{} exists; refusing to overwrite it",
                path.display()
            )));
        }
        Err(e) => {
            return Err(AdminError::Runtime(format!(
                "cannot name the backup {}: {e}",
                path.display()
            )));
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| AdminError::Runtime(format!("fsync {}: {e}", dir.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_since_finds_the_first_recent_event_by_binary_search() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::feed::open_database(&dir.path().join("ess.redb")).unwrap();
        let at = |secs: i64| Utc.timestamp_opt(secs, 0).unwrap();
        // Seqs 11..=110 (a compacted prefix), received one per second from t=1000.
        let tx = db.begin_write().unwrap();
        {
            let mut events = tx.open_table(EVENTS).unwrap();
            for seq in 11u64..=110 {
                let stored = StoredEvent {
                    event_type: "T".into(),
                    payload: b"{}".to_vec(),
                    key: format!("k{seq}"),
                    trace_id: "t".into(),
                    ts_micros: None,
                    received_at_micros: at(1000 + seq as i64).timestamp_micros(),
                };
                events.insert(seq, stored.encode(seq).as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
        let tx = db.begin_read().unwrap();
        assert_eq!(received_since(&tx, at(0)).unwrap(), 100);
        assert_eq!(received_since(&tx, at(1011)).unwrap(), 100);
        assert_eq!(received_since(&tx, at(1012)).unwrap(), 99);
        assert_eq!(received_since(&tx, at(1100)).unwrap(), 11);
        assert_eq!(received_since(&tx, at(1110)).unwrap(), 1);
        assert_eq!(received_since(&tx, at(1111)).unwrap(), 0);
    }
}
