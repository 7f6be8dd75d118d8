//! `ess verify`: checks the whole database — redb's own page checksums
//! (`Database::check_integrity`) and every value's checksum of ours — and lists every damaged
//! seq and key.
//!
//! Invariant: verify never changes `ess.redb`. redb's integrity check may *repair* (roll the
//! file back to an older commit when the newest is damaged), so it runs on a copy; the copy
//! is taken only when the file's header did not change while it was copied (a running
//! daemon commits now and then; a copy taken between two commits is consistent, because
//! redb never overwrites the pages of the committed state). Our checksums are read through
//! a read-only handle when no daemon holds the file, else from the same copy.

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::schema::{self, CURSORS, DEAD, EVENTS, KEYS, META, REQUEUE, RETRIES};
use super::{Error, EventView, IndexKey, guarded};
use crate::event::Seq;

/// One damaged value (or region) found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Damage {
    pub table: String,
    pub seq: Option<Seq>,
    pub key: Option<String>,
    pub why: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.table)?;
        if let Some(k) = &self.key {
            write!(f, " {k:?}")?;
        }
        if let Some(s) = self.seq {
            write!(f, " seq {s}")?;
        }
        write!(f, ": {}", self.why)
    }
}

/// What redb's own check said.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum PageCheck {
    Passed,
    /// redb found problems it would repair at the next open (on the copy it checked).
    Repaired,
    Failed(String),
    Skipped(String),
}

/// The outcome of `ess verify`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub pages: PageCheck,
    pub events: u64,
    pub ledger_rows: u64,
    /// Sealed payloads that could not be opened for lack of their key (not damage).
    pub sealed_unchecked: u64,
    pub damaged: Vec<Damage>,
}

impl Report {
    /// Whether nothing damaged was found.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && !matches!(self.pages, PageCheck::Failed(_))
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pages {
            PageCheck::Passed => writeln!(f, "redb pages: ok")?,
            PageCheck::Repaired => writeln!(
                f,
                "redb pages: damaged or stale allocator state; redb repairs it at the next open"
            )?,
            PageCheck::Failed(m) => writeln!(f, "redb pages: DAMAGED: {m}")?,
            PageCheck::Skipped(m) => writeln!(f, "redb pages: not checked: {m}")?,
        }
        writeln!(
            f,
            "checksums: {} events, {} ledger rows checked",
            self.events, self.ledger_rows
        )?;
        if self.sealed_unchecked > 0 {
            writeln!(
                f,
                "sealed payloads not opened (their key is not configured): {}",
                self.sealed_unchecked
            )?;
        }
        if self.damaged.is_empty() {
            writeln!(f, "damaged values: none")?;
        } else {
            writeln!(f, "damaged values: {}", self.damaged.len())?;
            for d in &self.damaged {
                writeln!(f, "  {d}")?;
            }
        }
        Ok(())
    }
}

/// Verifies the database at `path` (which must exist).
pub fn verify(path: &Path) -> Result<Report, Error> {
    let copy = SnapshotCopy::take(path);
    let mut report = Report {
        pages: PageCheck::Skipped(String::new()),
        events: 0,
        ledger_rows: 0,
        sealed_unchecked: 0,
        damaged: Vec::new(),
    };
    match super::open_database_read_only(path) {
        Ok(db) => scan(&db, &mut report),
        // Left unclean by a crash (no daemon runs), or held by the daemon: read the copy (a
        // consistent one; redb repairs it if it must).
        Err(Error::Db(redb::Error::RepairAborted | redb::Error::DatabaseAlreadyOpen)) => {
            match &copy {
                Ok(c) => scan(&super::open_database(&c.path)?, &mut report),
                Err(why) => {
                    return Err(Error::Unavailable(format!(
                        "{} needs recovery and no copy could be taken to read it: {why}",
                        path.display()
                    )));
                }
            }
        }
        Err(e) => return Err(e),
    }
    report.pages = match &copy {
        Ok(c) => page_check(&c.path),
        Err(why) => PageCheck::Skipped(why.clone()),
    };
    Ok(report)
}

/// A consistent copy of the file, removed when dropped.
struct SnapshotCopy {
    path: PathBuf,
}

impl SnapshotCopy {
    fn take(path: &Path) -> Result<SnapshotCopy, String> {
        let copy = path.with_file_name(format!(".ess-verify-{}.redb", std::process::id()));
        let header = |p: &Path| -> std::io::Result<Vec<u8>> {
            use std::io::Read;
            let mut buf = vec![0u8; 4096];
            let n = std::fs::File::open(p)?.read(&mut buf)?;
            buf.truncate(n);
            Ok(buf)
        };
        for _ in 0..5 {
            let before =
                header(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if let Err(e) = std::fs::copy(path, &copy) {
                let _ = std::fs::remove_file(&copy);
                return Err(format!("cannot copy the file to check its pages: {e}"));
            }
            let after = header(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if before == after {
                return Ok(SnapshotCopy { path: copy });
            }
        }
        let _ = std::fs::remove_file(&copy);
        Err("the daemon committed during every copy; stop it to check the pages".into())
    }
}

impl Drop for SnapshotCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn page_check(copy: &Path) -> PageCheck {
    let mut db = match super::open_database(copy) {
        Ok(db) => db,
        Err(e) => return PageCheck::Failed(format!("redb cannot open it: {e}")),
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.check_integrity())) {
        Ok(Ok(true)) => PageCheck::Passed,
        Ok(Ok(false)) => PageCheck::Repaired,
        Ok(Err(e)) => PageCheck::Failed(e.to_string()),
        Err(_) => PageCheck::Failed("redb panicked checking the pages".into()),
    }
}

fn damage(report: &mut Report, e: Error) {
    let d = match e {
        Error::Corrupt {
            table,
            seq,
            key,
            why,
        } => Damage {
            table: table.into(),
            seq,
            key,
            why,
        },
        other => Damage {
            table: "?".into(),
            seq: None,
            key: None,
            why: other.to_string(),
        },
    };
    report.damaged.push(d);
}

fn scan<D: ReadableDatabase>(db: &D, report: &mut Report) {
    let version = guarded("meta", || {
        let tx = db.begin_read()?;
        let meta = tx.open_table(META)?;
        Ok(meta.get("format_version")?.map(|v| v.value()))
    });
    match version {
        Ok(Some(schema::FORMAT_VERSION)) => {}
        Ok(v) => {
            report.damaged.push(Damage {
                table: "meta".into(),
                seq: None,
                key: Some("format_version".into()),
                why: format!(
                    "format version {v:?}, not {} (run `ess serve` once to migrate a version 1 file)",
                    schema::FORMAT_VERSION
                ),
            });
            return;
        }
        Err(e) => return damage(report, e),
    }
    let max_seq = scan_events(db, report);
    if let Err(e) = check_meta(db, max_seq) {
        damage(report, e);
    }
    scan_index(db, report);
    scan_connector_table(db, CURSORS, "cursors", report, |name, v| {
        schema::decode_bound::<crate::ledger::CursorState>(
            &schema::connector_binding("cursors", name),
            v,
        )
        .map(drop)
    });
    scan_connector_table(db, RETRIES, "retries", report, |name, v| {
        schema::decode_bound::<crate::ledger::RetryState>(
            &schema::connector_binding("retries", name),
            v,
        )
        .map(drop)
    });
    scan_dead(db, report);
    scan_requeue(db, report);
    scan_operator_tables(db, report);
    let (n, found) = crate::ledger::sources::verify(db);
    report.ledger_rows += n;
    for e in found {
        damage(report, e);
    }
}

/// The tables of intents and operator actions: pauses, last errors and intents are
/// connector-keyed; settled dead letters carry the letter's own stored bytes; action records
/// are keyed by id. (A file from before these tables has none of them.)
fn scan_operator_tables<D: ReadableDatabase>(db: &D, report: &mut Report) {
    use crate::ledger::actions::{ActionRecord, ErrorNote, Pause};
    use crate::ledger::intent::Intent;
    // redb panics on some damaged pages of its table of tables: contained and reported
    // like any other damage, and then the tables below are not scanned.
    let names = guarded("table of tables", || {
        use redb::TableHandle;
        let tx = db.begin_read()?;
        Ok(tx
            .list_tables()?
            .map(|t| t.name().to_string())
            .collect::<Vec<_>>())
    });
    let names = match names {
        Ok(names) => names,
        Err(e) => {
            damage(report, e);
            return;
        }
    };
    let has = |name: &str| names.iter().any(|n| n == name);
    if has("pauses") {
        scan_connector_table(db, schema::PAUSES, "pauses", report, |name, v| {
            schema::decode_bound::<Pause>(&schema::connector_binding("pauses", name), v).map(drop)
        });
    }
    if has("errors") {
        scan_connector_table(db, schema::ERRORS, "errors", report, |name, v| {
            schema::decode_bound::<ErrorNote>(&schema::connector_binding("errors", name), v)
                .map(drop)
        });
    }
    if has("intents") {
        scan_connector_table(db, schema::INTENTS, "intents", report, |name, v| {
            schema::decode_bound::<Intent>(&schema::connector_binding("intents", name), v).map(drop)
        });
    }
    if has("settled") {
        report.ledger_rows += walk_table(report, "settled", |found, n| {
            let tx = db.begin_read()?;
            for row in tx.open_table(schema::SETTLED)?.iter()? {
                let (k, v) = row?;
                let (connector, seq) = k.value();
                *n += 1;
                match crate::ledger::actions::decode_settled(connector, seq, v.value()) {
                    Ok(_) | Err(Error::Seal { .. }) => {}
                    Err(e) => found.push(e),
                }
            }
            Ok(())
        });
    }
    if has("actions") {
        report.ledger_rows += walk_table(report, "actions", |found, n| {
            let tx = db.begin_read()?;
            for row in tx.open_table(schema::ACTIONS)?.iter()? {
                let (k, v) = row?;
                *n += 1;
                let binding = schema::connector_seq_binding("actions", "", k.value());
                if let Err(e) = schema::decode_bound::<ActionRecord>(&binding, v.value()) {
                    found.push(Error::corrupt("actions", Some(k.value()), None, e));
                }
            }
            Ok(())
        });
    }
}

/// Every event: checksum, layout, payload JSON (opened if sealed and its key is known).
/// Returns the highest intact seq. A region redb cannot read (a panic on a damaged page) is
/// reported and skipped.
fn scan_events<D: ReadableDatabase>(db: &D, report: &mut Report) -> Seq {
    let mut after: Seq = 0;
    let mut max = 0;
    let mut skip = 1u64;
    loop {
        let mut last_seen = None;
        let mut n = 0u64;
        let mut sealed_unchecked = 0u64;
        let mut damaged = Vec::new();
        let walk = guarded("events", || {
            let tx = db.begin_read()?;
            let table = tx.open_table(EVENTS)?;
            for row in table.range(after.saturating_add(1)..)?.take(100_000) {
                let (k, v) = row?;
                let seq = k.value();
                last_seen = Some(seq);
                n += 1;
                match EventView::decode(seq, v.value()) {
                    Err(e) => damaged.push(Error::corrupt("events", Some(seq), None, e)),
                    Ok(view) => match view.payload() {
                        Err(super::seal::SealError::UnknownKey { .. }) => sealed_unchecked += 1,
                        Err(e) => damaged.push(Error::corrupt("events", Some(seq), None, e)),
                        Ok(p) => {
                            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&p) {
                                damaged.push(Error::corrupt("events", Some(seq), None, e));
                            } else {
                                max = max.max(seq);
                            }
                        }
                    },
                }
            }
            Ok(())
        });
        report.events += n;
        report.sealed_unchecked += sealed_unchecked;
        for e in damaged {
            damage(report, e);
        }
        match (walk, last_seen) {
            (Ok(()), Some(s)) if n == 100_000 => {
                after = s;
                skip = 1;
            }
            (Ok(()), _) => return max,
            (Err(e), seen) => {
                let from = seen.unwrap_or(after);
                if skip == 1 {
                    damage(
                        report,
                        Error::corrupt(
                            "events",
                            Some(from.saturating_add(1)),
                            None,
                            format!("the rows from here on cannot be read: {e}"),
                        ),
                    );
                }
                // Skip ahead, ever further, until a walk starts on readable pages.
                after = from.saturating_add(skip);
                skip = skip.saturating_mul(2);
                if after >= u64::MAX / 2 || skip > 1 << 40 {
                    return max;
                }
            }
        }
    }
}

fn check_meta<D: ReadableDatabase>(db: &D, max_seq: Seq) -> Result<(), Error> {
    guarded("meta", || {
        let tx = db.begin_read()?;
        let meta = tx.open_table(META)?;
        let last = meta.get("last_seq")?.map(|v| v.value());
        let check = meta.get("last_seq_check")?.map(|v| v.value());
        match (last, check) {
            (None, None) if max_seq == 0 => Ok(()),
            (Some(l), Some(c)) if c == schema::last_seq_check(l) && l >= max_seq => Ok(()),
            (l, _) => Err(Error::corrupt(
                "meta",
                None,
                Some("last_seq"),
                format!("last_seq {l:?} fails its check (highest intact event: {max_seq})"),
            )),
        }
    })
}

/// Runs one table's walk, contained (a panic on a damaged page is a damage like any other):
/// `walk` pushes what it finds and counts the rows it read.
fn walk_table(
    report: &mut Report,
    table: &'static str,
    walk: impl FnOnce(&mut Vec<Error>, &mut u64) -> Result<(), Error>,
) -> u64 {
    let mut found = Vec::new();
    let mut n = 0;
    let done = guarded(table, || walk(&mut found, &mut n));
    for e in found {
        damage(report, e);
    }
    if let Err(e) = done {
        damage(report, e);
    }
    n
}

/// Every index row points at an event whose key has that entry.
fn scan_index<D: ReadableDatabase>(db: &D, report: &mut Report) {
    walk_table(report, "key_index", |found, _| {
        let tx = db.begin_read()?;
        let keys = tx.open_table(KEYS)?;
        let events = tx.open_table(EVENTS)?;
        for row in keys.iter()? {
            let (k, v) = row?;
            let (entry, seq) = (k.value(), v.value());
            let ok = match events.get(seq)? {
                // Compaction removes an event and its index row together.
                None => false,
                Some(ev) => EventView::decode(seq, ev.value())
                    .map(|view| IndexKey::of(view.key).as_bytes() == entry)
                    // A damaged event is reported by the events scan.
                    .unwrap_or(true),
            };
            if !ok {
                found.push(Error::corrupt(
                    "key_index",
                    Some(seq),
                    Some(&String::from_utf8_lossy(entry)),
                    "the index row does not belong to the event it points at",
                ));
            }
        }
        Ok(())
    });
}

fn scan_connector_table<D: ReadableDatabase>(
    db: &D,
    def: TableDefinition<&'static str, &'static [u8]>,
    name: &'static str,
    report: &mut Report,
    check: impl Fn(&str, &[u8]) -> Result<(), schema::DecodeError>,
) {
    report.ledger_rows += walk_table(report, name, |found, n| {
        let tx = db.begin_read()?;
        for row in tx.open_table(def)?.iter()? {
            let (k, v) = row?;
            *n += 1;
            if let Err(e) = check(k.value(), v.value()) {
                found.push(Error::corrupt(name, None, Some(k.value()), e));
            }
        }
        Ok(())
    });
}

fn scan_dead<D: ReadableDatabase>(db: &D, report: &mut Report) {
    report.ledger_rows += walk_table(report, "dead", |found, n| {
        let tx = db.begin_read()?;
        for row in tx.open_table(DEAD)?.iter()? {
            let (k, v) = row?;
            let (connector, seq) = k.value();
            *n += 1;
            match crate::ledger::decode_dead(connector, seq, v.value()) {
                Ok(_) | Err(Error::Seal { .. }) => {}
                Err(e) => found.push(e),
            }
        }
        Ok(())
    });
}

/// A queued replay must be behind its connector's cursor, of an event still in the feed.
fn scan_requeue<D: ReadableDatabase>(db: &D, report: &mut Report) {
    report.ledger_rows += walk_table(report, "requeue", |found, n| {
        let tx = db.begin_read()?;
        let events = tx.open_table(EVENTS)?;
        for row in tx.open_table(REQUEUE)?.iter()? {
            let (k, _) = row?;
            let (connector, seq) = k.value();
            *n += 1;
            let cursor = crate::ledger::cursor_at(&tx, connector).ok().flatten();
            let behind = cursor.is_some_and(|c| seq <= c.seq);
            if !behind || events.get(seq)?.is_none() {
                found.push(Error::corrupt(
                    "requeue",
                    Some(seq),
                    Some(connector),
                    "a queued replay of an event that is not behind the cursor or not in the feed",
                ));
            }
        }
        Ok(())
    });
}
