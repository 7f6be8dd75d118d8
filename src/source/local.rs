//! A pickup source's scan over its folder (local, or SFTP through [`super::dir`]): each
//! scan lists the folder, keeps the files the pattern wants that are whole (`ready:`), and
//! takes each one in chunks of records, every chunk committed with the file's checkpoint;
//! then carries out `then:`.
//!
//! A file's identity (the file key, a digest): local files, name + inode number + birth
//! time (a file renamed into the folder keeps it, a new file written under an old name gets
//! a new one); SFTP has no inode, so name + modification time (a file whose first records
//! were taken is found again by its name while it is being read). A local file renamed
//! within the folder after it was taken (or while it was being taken) is found again by its
//! inode number and birth time: the same file, under the key it was taken under, so it is
//! not taken twice and its remaining records get the keys they would have had; a second
//! name for it (a hard link) is skipped with one log line. Without a birth time (a
//! filesystem that keeps none) an inode number alone could be a reused one, so a renamed
//! file there is a new file, as over SFTP, where a rename is not told from a new file with
//! the same modification time. Its SHA-256, size and
//! modification time when it was first read are in the checkpoint: a file resumed after a
//! restart must still have them, else it is refused (what was taken stays taken, nothing
//! more is).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::dir::{SourceDir, Stat};
use super::take::{Check, Reader};
use super::{Ready, SourceSpec, Then};
use crate::feed::Batch;
use crate::ledger::sources::{FileCommit, FileState, SourceFile, Sources};

/// Why a scan stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot commit to the feed: {0}")]
    Feed(#[from] crate::feed::Error),
}

/// What a running source shows between scans (the durable numbers are in the ledger).
#[derive(Debug, Default)]
pub struct Live {
    /// Modification time (µs) of the oldest file waiting to be taken; 0 when none waits.
    pub oldest_unread_micros: AtomicI64,
    /// Files waiting (wanted, not yet whole or not yet taken).
    pub waiting: AtomicU64,
    pub last_error: std::sync::Mutex<Option<String>>,
    pub scans: AtomicU64,
    /// The last look found the source outside its `schedule:` (nothing was scanned).
    pub outside_schedule: AtomicBool,
}

/// One source, its folder, and what it remembers between scans.
pub struct Pickup {
    pub spec: Arc<SourceSpec>,
    sources: Sources,
    dir: Box<dyn SourceDir>,
    /// `ready: {stable: ..}`: (size, mtime) first seen, and when.
    seen: HashMap<String, (u64, i64, Instant)>,
    /// Entries skipped and logged already (logged again only after they left the folder).
    reported: HashSet<String>,
    /// Second names of a file taken under its first (hard links), logged already.
    second_names: HashSet<String>,
    pub stop: Arc<AtomicBool>,
    pub live: Arc<Live>,
    /// Tests: stop after this many commits of records.
    pub chunk_limit: Option<u64>,
}

/// The file key: a digest of the name and what else tells this file from another of the
/// same name (32 hex digits).
pub fn file_key(name: &str, st: &Stat) -> String {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    match st.ino {
        Some(ino) => {
            h.update(ino.to_be_bytes());
            if let Some((s, n)) = st.born {
                h.update(s.to_be_bytes());
                h.update(n.to_be_bytes());
            }
        }
        None => {
            h.update(b"mtime");
            h.update(st.mtime_ns.to_be_bytes());
        }
    }
    let d = h.finalize();
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// What a listed file is to the scan ([`Pickup::known`]).
enum Known {
    /// The file of the row under this key.
    Row(String),
    /// Renamed within the folder: the row under this key, with the new name.
    Renamed(String, Box<SourceFile>),
    /// A second name of a file taken under another (a hard link).
    SecondName,
    /// A file no row describes: its key.
    New(String),
}

/// A local file's identity across names: inode number and birth time, only when both are
/// known (without the birth time a reused inode number could pass for a file taken before;
/// a birth time of 0 is a filesystem that keeps none and says 0 for every file).
type Identity = (u64, (i64, u32));

fn identity(ino: Option<u64>, born: Option<(i64, u32)>) -> Option<Identity> {
    Some((ino?, born.filter(|b| *b != (0, 0))?))
}

/// The idempotency key of record `index` of a file: `{source}/{file key}/{index}`.
pub fn record_key(source: &str, file_key: &str, index: u64) -> String {
    format!("{source}/{file_key}/{index}")
}

/// What one scan did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    pub files_done: u64,
    pub events: u64,
    pub bad: u64,
    pub waiting: u64,
}

impl Pickup {
    pub fn new(spec: Arc<SourceSpec>, sources: Sources, dir: Box<dyn SourceDir>) -> Pickup {
        Pickup {
            spec,
            sources,
            dir,
            seen: HashMap::new(),
            reported: HashSet::new(),
            second_names: HashSet::new(),
            stop: Arc::new(AtomicBool::new(false)),
            live: Arc::new(Live::default()),
            chunk_limit: None,
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Lists the folder once and takes what is whole.
    pub fn scan(&mut self) -> Result<Scan, SourceError> {
        let rows: HashMap<String, SourceFile> =
            self.sources.files(&self.spec.name)?.into_iter().collect();
        let listing = self.dir.list()?;
        let mut listed = listing.files;
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        let all: HashSet<String> = listed.iter().map(|(n, _)| n.clone()).collect();
        let triggers: HashSet<String> = listed
            .iter()
            .filter_map(|(n, _)| self.spec.trigger_of(n))
            .collect();
        self.report_skipped(&listing.skipped, &listed);
        let wanted: Vec<(String, Stat)> = listed
            .into_iter()
            .filter(|(n, _)| self.spec.wants(n) && !triggers.contains(n))
            .collect();
        let mut scan = Scan::default();
        let mut keys_seen = HashSet::new();
        let mut oldest: Option<i64> = None;
        let by_identity: HashMap<Identity, &String> = rows
            .iter()
            .filter_map(|(k, r)| Some((identity(r.ino, r.born)?, k)))
            .collect();
        for (name, st) in &wanted {
            if self.stopping() {
                break;
            }
            let adopted: SourceFile;
            let (key, row) = match self.known(&rows, &by_identity, &wanted, name, st)? {
                Known::SecondName => continue,
                Known::Row(key) => {
                    let row = rows.get(&key);
                    (key, row)
                }
                Known::Renamed(key, row) => {
                    adopted = *row;
                    (key, Some(&adopted))
                }
                Known::New(key) => (key, None),
            };
            keys_seen.insert(key.clone());
            let fresh = match row {
                Some(r) if r.state == FileState::Done => {
                    if !r.then_done {
                        self.then(name, &key, r.clone())?;
                    }
                    continue;
                }
                Some(r) => match &r.state {
                    FileState::Reading => false,
                    // Nothing of it was taken: a file put right in place is taken again.
                    FileState::Held { .. } | FileState::Parked { .. } => {
                        if (r.size, r.mtime_ns) == (st.size, st.mtime_ns) {
                            continue;
                        }
                        true
                    }
                    FileState::Refused { .. } | FileState::Done => continue,
                },
                None => true,
            };
            if fresh && !self.is_whole(name, *st, &all) {
                scan.waiting += 1;
                oldest = Some(oldest.map_or(st.mtime_ns, |o| o.min(st.mtime_ns)));
                continue;
            }
            let prev = if fresh { None } else { row.cloned() };
            let taken = self.take(name, &key, prev)?;
            scan.events += taken.events;
            scan.bad += taken.bad;
            scan.files_done += u64::from(taken.done);
            if taken.waiting {
                scan.waiting += 1;
                oldest = Some(oldest.map_or(st.mtime_ns, |o| o.min(st.mtime_ns)));
            }
        }
        // A scan cut short by a stop has not seen every file: nothing is concluded from a
        // file it did not reach (it would be taken for gone: its `then:` recorded as done
        // unmade, or the file forgotten and taken again).
        let rows = if self.stopping() {
            HashMap::new()
        } else {
            rows
        };
        // Done files whose `then:` was carried out but not yet recorded (a crash between
        // the two): the file is no longer here. Done files gone from the folder for longer
        // than `remember:` are forgotten (their totals stay).
        let now = Utc::now().timestamp_micros();
        let remember = i64::try_from(self.spec.remember.as_micros()).unwrap_or(i64::MAX);
        let mut forget = Vec::new();
        for (key, row) in rows {
            if keys_seen.contains(&key) {
                continue;
            }
            if row.state == FileState::Reading && !self.stopping() {
                // Deleted (or moved away, or swapped for a link) with records still to
                // take: what was taken stays, and the file is not waited for forever.
                let why = format!(
                    "{} went away after its first {} records were taken",
                    row.name, row.next_record
                );
                self.refuse(&key, row, why)?;
                continue;
            }
            if row.state != FileState::Done {
                continue;
            }
            if !row.then_done {
                let mut r = row.clone();
                r.then_done = true;
                self.commit_state(&key, &r, true)?;
            } else if row
                .done_micros
                .is_some_and(|d| now.saturating_sub(d) >= remember)
            {
                forget.push(key);
            }
        }
        if !forget.is_empty() {
            tracing::info!(source = %self.spec.name, n_files = forget.len(), "forgetting files done and gone longer than remember:");
            self.sources.forget(&self.spec.name, &forget)?;
        }
        self.seen.retain(|n, _| all.contains(n));
        self.second_names.retain(|n| all.contains(n));
        self.live
            .oldest_unread_micros
            .store(oldest.map_or(0, |ns| ns / 1000), Ordering::Relaxed);
        self.live.waiting.store(scan.waiting, Ordering::Relaxed);
        self.live.scans.fetch_add(1, Ordering::Relaxed);
        Ok(scan)
    }

    /// Which row a listed file is. Its key is made from the name it was first taken under,
    /// so a local file renamed within the folder since is found by its inode number and
    /// birth time: it keeps the row's key (its records keep their keys) and the row takes the
    /// new name; listed under both names (a hard link), the second is skipped, logged once.
    fn known(
        &mut self,
        rows: &HashMap<String, SourceFile>,
        by_identity: &HashMap<Identity, &String>,
        wanted: &[(String, Stat)],
        name: &str,
        st: &Stat,
    ) -> Result<Known, SourceError> {
        let key = file_key(name, st);
        if rows.contains_key(&key) {
            return Ok(Known::Row(key));
        }
        let id = identity(st.ino, st.born);
        let listed_as = |n: &str| {
            wanted
                .iter()
                .find(|(w, _)| w == n)
                .and_then(|(_, s)| identity(s.ino, s.born))
        };
        if let Some(&k) = id.and_then(|id| by_identity.get(&id)) {
            // `by_identity` is built from `rows`: `rows[k]` is there.
            let first = &rows[k].name;
            if first == name {
                // Renamed before; its row has the name it has now.
                return Ok(Known::Row(k.clone()));
            }
            if listed_as(first) == id {
                if self.second_names.insert(name.to_string()) {
                    tracing::warn!(source = %self.spec.name, file = %name, first = %first, "skipped: the same file as {first} (a second name for it); taken once, under {first}");
                }
                return Ok(Known::SecondName);
            }
            tracing::info!(source = %self.spec.name, file = %name, was = %first, "{first} was renamed to {name}: the same file, taken once");
            let row = SourceFile {
                name: name.to_string(),
                ..rows[k].clone()
            };
            // A file being read takes the new name with its next chunk.
            if row.state != FileState::Reading {
                self.commit_state(k, &row, row.state == FileState::Done)?;
            }
            return Ok(Known::Renamed(k.clone(), Box::new(row)));
        }
        // A file being read that no longer has the identity it was taken under (rewritten,
        // replaced): found by its name, and refused by `take`. Not a row whose file is
        // still here under another name (renamed, then a new file written under the old
        // name).
        let replaced = rows.iter().find(|(_, r)| {
            r.state == FileState::Reading
                && r.name == name
                && !wanted.iter().any(|(n, s)| {
                    n != name
                        && identity(s.ino, s.born)
                            .is_some_and(|i| Some(i) == identity(r.ino, r.born))
                })
        });
        Ok(match replaced {
            Some((k, _)) => Known::Row(k.clone()),
            None => Known::New(key),
        })
    }

    /// Logs, once per name while it stays in the folder, an entry the pattern wants that is
    /// never taken (a symbolic link, a name that is not UTF-8).
    /// One log line per skipped entry the source would take, or whose trigger file it is
    /// (`ready: {done_file}`: a linked trigger is not followed, so its file waits), until
    /// the entry goes away.
    fn report_skipped(&mut self, skipped: &[(String, &'static str)], listed: &[(String, Stat)]) {
        let now: HashSet<&String> = skipped.iter().map(|(n, _)| n).collect();
        self.reported.retain(|n| now.contains(n));
        for (name, why) in skipped {
            if self.spec.wants(name) {
                if self.reported.insert(name.clone()) {
                    tracing::warn!(source = %self.spec.name, file = %name, "skipped: {why}");
                }
                continue;
            }
            let waiting = listed.iter().find(|(n, _)| {
                self.spec.wants(n) && self.spec.trigger_of(n).as_ref() == Some(name)
            });
            if let Some((file, _)) = waiting
                && self.reported.insert(name.clone())
            {
                tracing::warn!(source = %self.spec.name, file = %file, trigger = %name, "the trigger file is skipped ({why}): {file} waits for a trigger file that is not a link");
            }
        }
    }

    /// `ready:` for a file nothing was taken of yet.
    fn is_whole(&mut self, name: &str, st: Stat, all: &HashSet<String>) -> bool {
        match &self.spec.ready {
            Ready::Rename | Ready::Trailer => true,
            Ready::DoneFile(_) => self.spec.trigger_of(name).is_some_and(|t| all.contains(&t)),
            Ready::Stable(d) => {
                let now = Instant::now();
                let Some(e) = self.seen.get_mut(name) else {
                    // First sight: stable only once seen unchanged a second time.
                    self.seen
                        .insert(name.to_string(), (st.size, st.mtime_ns, now));
                    return false;
                };
                if (e.0, e.1) != (st.size, st.mtime_ns) {
                    *e = (st.size, st.mtime_ns, now);
                    return false;
                }
                now.duration_since(e.2) >= *d
            }
        }
    }

    fn commit_state(
        &self,
        key: &str,
        row: &SourceFile,
        was_done: bool,
    ) -> Result<SourceFile, SourceError> {
        let change = FileCommit {
            source: &self.spec.name,
            key,
            file: row,
            was_done,
            bad: &[],
        };
        Ok(self
            .sources
            .commit(&change, Batch::default(), Utc::now())?
            .1)
    }

    fn refuse(&self, key: &str, mut row: SourceFile, why: String) -> Result<(), SourceError> {
        tracing::error!(source = %self.spec.name, file = %row.name, "{why}: refused; what was taken stays");
        row.state = FileState::Refused { reason: why };
        self.commit_state(key, &row, false)?;
        Ok(())
    }

    /// Reads `name` and takes its records from where `prev` left off.
    fn take(
        &mut self,
        name: &str,
        key: &str,
        prev: Option<SourceFile>,
    ) -> Result<Taken, SourceError> {
        let mut out = Taken::default();
        let Some((before, bytes, after)) = self.dir.read(name)? else {
            return Ok(out);
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let now = Utc::now().timestamp_micros();
        if after != before || bytes.len() as u64 != after.size {
            let why = format!(
                "{name} changed while being read ({} bytes, then {} bytes)",
                before.size, after.size
            );
            match prev {
                // Nothing taken: not whole yet; looked at again next scan.
                None => {
                    tracing::warn!(source = %self.spec.name, file = %name, "{why}; not taken yet");
                    out.waiting = true;
                }
                Some(row) => self.refuse(key, row, why)?,
            }
            return Ok(out);
        }
        let mut row = match prev {
            Some(row) => {
                if row.digest != digest
                    || row.size != after.size
                    || row.mtime_ns != after.mtime_ns
                    || row.ino != after.ino
                {
                    let why = format!(
                        "{name} changed since its first {} records were taken (was {} bytes, now {}; content differs)",
                        row.next_record, row.size, after.size
                    );
                    self.refuse(key, row, why)?;
                    return Ok(out);
                }
                row
            }
            None => SourceFile {
                ino: after.ino,
                born: after.born,
                size: after.size,
                mtime_ns: after.mtime_ns,
                ..SourceFile::first_read(name.to_string(), digest, now)
            },
        };
        let spec = self.spec.clone();
        let mut reader = Reader::new(&spec, name, now);
        if row.next_record == 0 && row.events == 0 && row.bad == 0 {
            match reader.check(spec.mapping.framing().split(&bytes)) {
                Check::Take => {}
                Check::NotReady(why) => {
                    tracing::debug!(source = %spec.name, file = %name, "{why}: waiting");
                    out.waiting = true;
                    return Ok(out);
                }
                Check::Park(reason) => {
                    tracing::error!(source = %spec.name, file = %name, "{reason}: file parked, nothing taken");
                    row.state = FileState::Parked { reason };
                    self.commit_state(key, &row, false)?;
                    return Ok(out);
                }
                Check::Hold(reason) => {
                    tracing::error!(source = %spec.name, file = %name, "{reason}: file held (on_bad_record: hold), nothing taken");
                    row.state = FileState::Held { reason };
                    self.commit_state(key, &row, false)?;
                    return Ok(out);
                }
            }
        }
        let mut split = spec.mapping.framing().split(&bytes);
        for _ in 0..row.next_record {
            if split.next().is_none() {
                break;
            }
        }
        let prefix = format!("{}/{key}/", spec.name);
        let mut commits = 0u64;
        loop {
            let mut batch = Batch::default();
            let mut bad = Vec::new();
            let (n, next_offset, ended) =
                reader.chunk(&mut split, spec.chunk, &prefix, &mut batch, &mut bad);
            let mut next = row.clone();
            next.next_record += n;
            next.next_offset = next_offset.unwrap_or(next.next_offset);
            next.bad += bad.len() as u64;
            if ended {
                next.state = FileState::Done;
                next.n_records = next.next_record;
                next.then_done = spec.then == Then::Keep;
            }
            // The file must still be the one read: else what was read is not committed.
            let now_at = self.dir.stat(name)?;
            if now_at.is_none() {
                // Gone from this name: renamed within the folder (the next scan finds it by
                // its identity and goes on from here) or deleted (the next scan refuses it
                // as gone). Nothing of this chunk is committed.
                tracing::info!(source = %spec.name, file = %name, "{name} went away while being read, after {} records; looked for again at the next scan", row.next_record);
                return Ok(out);
            }
            if now_at != Some(after) {
                let why = format!(
                    "{name} changed (or was replaced) while being read, after {} records",
                    row.next_record
                );
                self.refuse(key, row, why)?;
                return Ok(out);
            }
            let change = FileCommit {
                source: &spec.name,
                key,
                file: &next,
                was_done: false,
                bad: &bad,
            };
            let (outcome, stored) = self.sources.commit(&change, batch, Utc::now())?;
            out.events += outcome.accepted as u64;
            out.bad += bad.len() as u64;
            for b in &bad {
                tracing::warn!(source = %spec.name, file = %name, record = b.record_index, offset = b.offset, field = %b.field, "bad record parked as a dead letter: {}", b.message);
            }
            row = stored;
            commits += 1;
            if ended {
                out.done = true;
                tracing::info!(source = %spec.name, file = %name, records = row.n_records, events = row.events, bad = row.bad, "file taken");
                break;
            }
            if self.stopping() || self.chunk_limit.is_some_and(|l| commits >= l) {
                return Ok(out);
            }
        }
        if !row.then_done {
            self.then(name, key, row)?;
        }
        Ok(out)
    }

    /// `then:` for a file whose records are all committed, then recorded.
    fn then(&mut self, name: &str, key: &str, row: SourceFile) -> Result<(), SourceError> {
        let trigger = self.spec.trigger_of(name);
        let alt = |n: &str| format!("{n}.{}", &key[..12]);
        match &self.spec.then {
            Then::Keep => {}
            Then::Delete => {
                self.dir.remove(name)?;
                if let Some(t) = &trigger {
                    self.dir.remove(t)?;
                }
            }
            Then::Move(to) => {
                // Gone already: moved before a crash, not yet recorded.
                if self.dir.stat(name)?.is_some() {
                    self.dir.move_out(name, to, &alt(name))?;
                }
                if let Some(t) = &trigger
                    && self.dir.stat(t)?.is_some()
                {
                    self.dir.move_out(t, to, &alt(t))?;
                }
            }
        }
        let mut r = row;
        r.then_done = true;
        self.commit_state(key, &r, true)?;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Taken {
    events: u64,
    bad: u64,
    done: bool,
    waiting: bool,
}

/// Runs a source until `stop`: a scan every `every` (inside `schedule:`, if any).
pub async fn run(pickup: Pickup, mut stop: watch::Receiver<bool>) {
    let every = pickup.spec.every;
    let flag = pickup.stop.clone();
    let live = pickup.live.clone();
    let name = pickup.spec.name.clone();
    let mut slot = Some(pickup);
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(mut p) = slot.take() else { return };
        let open = p
            .spec
            .schedule
            .as_ref()
            .is_none_or(|s| s.is_open(Utc::now(), p.spec.timezone));
        if open {
            let mut job = tokio::task::spawn_blocking(move || {
                let r = p.scan();
                (p, r)
            });
            let joined = tokio::select! {
                j = &mut job => j,
                _ = stop.changed() => {
                    flag.store(true, Ordering::Relaxed);
                    job.await
                }
            };
            match joined {
                Ok((p, r)) => {
                    match r {
                        Ok(s) => {
                            tracing::debug!(source = %name, ?s, "scan");
                            *live.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        }
                        Err(e) => {
                            tracing::error!(source = %name, error = %e, "pickup failed; tried again at the next scan");
                            *live.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(e.to_string());
                        }
                    }
                    slot = Some(p);
                }
                Err(e) => {
                    tracing::error!(source = %name, error = %e, "pickup scan panicked; source stopped");
                    return;
                }
            }
        } else {
            slot = Some(p);
        }
        live.outside_schedule.store(!open, Ordering::Relaxed);
        if flag.load(Ordering::Relaxed) {
            return;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Store;
    use crate::source::dir::LocalDir;

    /// The same source over the same ledger, as after a restart.
    fn again(p: &Pickup, store: &Store) -> Pickup {
        let dir = Box::new(LocalDir {
            dir: p.spec.dir.clone(),
        });
        Pickup::new(p.spec.clone(), Sources::new(store.clone()), dir)
    }
    use redb::ReadableDatabase;

    const COPYBOOK: &str = "       01  R-HEADER.
           05  RH-TYPE   PIC X.
               88  RH-IS-HEADER VALUE 'H'.
           05  RH-DATE   PIC 9(8).
       01  R-DETAIL.
           05  RD-TYPE   PIC X.
               88  RD-IS-DETAIL VALUE 'D'.
           05  RD-ID     PIC X(6).
           05  RD-FEE    PIC 9(5)V99.
       01  R-TRAILER.
           05  RT-TYPE   PIC X.
               88  RT-IS-TRAILER VALUE 'T'.
           05  RT-COUNT  PIC 9(5).
           05  RT-TOTAL  PIC 9(7)V99.
";

    struct World {
        dir: tempfile::TempDir,
        store: Store,
    }

    impl World {
        fn new(source_extra: &str, top_extra: &str) -> (World, Pickup) {
            let map = format!(
                "source:\n  name: results\n  kind: file\n  dir: in\n  pattern: \"RES_*.DAT\"\n  trailer: {{record: R-TRAILER, count: RT-COUNT, sum: {{RT-TOTAL: RD-FEE}}}}\n  chunk: 2\n{source_extra}format: fixed\nlayout: R.cpy\nrecord: {{encoding: ascii, framing: lines}}\nlayout_when: {{R-HEADER: RH-IS-HEADER, R-DETAIL: RD-IS-DETAIL, R-TRAILER: RT-IS-TRAILER}}\nevent:\n  type: PERMIT_RESULT\n  records: [R-DETAIL]\n  payload: {{id: RD-ID, fee.posted: RD-FEE}}\n{top_extra}"
            );
            World::with(COPYBOOK, &map)
        }

        /// A source from its copybook (`R.cpy`) and map file text.
        fn with(copybook: &str, map: &str) -> (World, Pickup) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("in")).unwrap();
            std::fs::write(dir.path().join("R.cpy"), copybook).unwrap();
            let path = dir.path().join("results.yml");
            std::fs::write(&path, map).unwrap();
            let spec = super::super::load_one(&path, chrono_tz::UTC).unwrap_or_else(|e| {
                panic!(
                    "{}",
                    e.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            });
            let store = Store::in_memory().unwrap();
            let folder = Box::new(LocalDir {
                dir: spec.dir.clone(),
            });
            let p = Pickup::new(Arc::new(spec), Sources::new(store.clone()), folder);
            (World { dir, store }, p)
        }

        fn put(&self, name: &str, text: &str) {
            let tmp = self.dir.path().join("in").join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.dir.path().join("in").join(name)).unwrap();
        }

        fn events(&self) -> Vec<(String, String)> {
            crate::feed::read_after(&self.store, 0, 1000)
                .unwrap()
                .into_iter()
                .map(|e| (e.key, e.payload.text().to_string()))
                .collect()
        }

        fn rows(&self) -> Vec<SourceFile> {
            Sources::new(self.store.clone())
                .files("results")
                .unwrap()
                .into_iter()
                .map(|(_, r)| r)
                .collect()
        }
    }

    fn file(details: &[(&str, &str)], count: usize, total: &str) -> String {
        let mut s = String::from("H20251201\n");
        for (id, fee) in details {
            s.push_str(&format!("D{id:<6}{fee}\n"));
        }
        s.push_str(&format!("T{count:05}{total}\n"));
        s
    }

    #[test]
    fn a_file_is_told_across_names_only_with_an_inode_and_a_real_birth_time() {
        assert_eq!(identity(Some(7), Some((5, 1))), Some((7, (5, 1))));
        assert_eq!(identity(Some(7), None), None, "no birth time");
        assert_eq!(identity(Some(7), Some((0, 0))), None, "a birth time of 0");
        assert_eq!(identity(None, Some((5, 1))), None, "SFTP: no inode");
    }

    #[test]
    fn a_file_is_taken_once_in_chunks_resumed_inside_and_moved_after_its_records() {
        let (w, mut p) = World::new("  then: {move: done}\n", "");
        let text = file(
            &[
                ("A1", "0001999"),
                ("A2", "0000100"),
                ("A3", "0000001"),
                ("A4", "0000000"),
                ("A5", "0010000"),
            ],
            5,
            "000012100",
        );
        w.put("RES_1.DAT", &text);
        // A temp name is never looked at.
        std::fs::write(w.dir.path().join("in/RES_2.DAT.part"), "garbage").unwrap();
        p.chunk_limit = Some(1);
        p.scan().unwrap();
        // The first chunk: header + A1 (2 records), checkpoint with them.
        let rows = w.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].next_record, rows[0].events, &rows[0].state),
            (2, 1, &FileState::Reading)
        );
        assert_eq!(w.events().len(), 1);
        // A restart (a new Pickup over the same ledger) resumes inside the file.
        let mut p = again(&p, &w.store);
        p.scan().unwrap();
        let ev = w.events();
        let ids: Vec<&str> = ev.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(ev.len(), 5, "{ids:?}");
        assert!(ev[0].1.contains(r#""id":"A1""#), "{}", ev[0].1);
        assert!(ev[0].1.contains(r#""fee":{"posted":19.99}"#), "{}", ev[0].1);
        assert!(ev[4].1.contains(r#""id":"A5""#));
        for (i, (k, _)) in ev.iter().enumerate() {
            assert!(
                k.starts_with("results/") && k.ends_with(&format!("/{}", i + 1)),
                "{k}"
            );
        }
        let rows = w.rows();
        assert_eq!(
            (&rows[0].state, rows[0].then_done, rows[0].events),
            (&FileState::Done, true, 5)
        );
        assert!(!w.dir.path().join("in/RES_1.DAT").exists());
        assert_eq!(
            std::fs::read_to_string(w.dir.path().join("done/RES_1.DAT")).unwrap(),
            text
        );
        // Moved back (same inode): taken already, never again.
        std::fs::rename(
            w.dir.path().join("done/RES_1.DAT"),
            w.dir.path().join("in/RES_1.DAT"),
        )
        .unwrap();
        p.scan().unwrap();
        assert_eq!(w.events().len(), 5);
        let t =
            crate::ledger::sources::totals_at(&w.store.begin_read().unwrap(), "results").unwrap();
        assert_eq!((t.files, t.records, t.bad_records), (1, 5, 0));
    }

    #[test]
    fn a_done_file_gone_from_the_folder_is_remembered_for_remember_then_forgotten() {
        let (w, mut p) = World::new("  then: {move: done}\n  remember: 1h\n", "");
        let text = file(&[("A1", "0000100")], 1, "000000100");
        w.put("RES_1.DAT", &text);
        p.scan().unwrap();
        p.scan().unwrap();
        assert_eq!(w.rows().len(), 1, "kept within remember:");
        let (w, mut p) = World::new("  then: {move: done}\n  remember: 0s\n", "");
        w.put("RES_1.DAT", &text);
        p.scan().unwrap();
        assert_eq!(w.rows().len(), 1);
        p.scan().unwrap();
        assert!(
            w.rows().is_empty(),
            "forgotten once gone and past remember:"
        );
        let t =
            crate::ledger::sources::totals_at(&w.store.begin_read().unwrap(), "results").unwrap();
        assert_eq!((t.files, t.records), (1, 1), "the totals stay");
        // Put back after that: a new file to the source (its records keep their keys, so a
        // receiver deduping by key still sees each once).
        std::fs::rename(
            w.dir.path().join("done/RES_1.DAT"),
            w.dir.path().join("in/RES_1.DAT"),
        )
        .unwrap();
        p.scan().unwrap();
        let ev = w.events();
        assert_eq!(ev.len(), 1, "the feed dedupes the same key");
    }

    #[test]
    fn a_scan_cut_short_by_a_stop_takes_no_file_it_did_not_reach_for_gone() {
        // Kept in place and past `remember:`: only its absence would make it forgotten.
        let (w, mut p) = World::new("  remember: 0s\n", "");
        w.put("RES_1.DAT", &file(&[("A1", "0000100")], 1, "000000100"));
        p.scan().unwrap();
        assert_eq!(w.rows().len(), 1);
        p.stop.store(true, Ordering::Relaxed);
        p.scan().unwrap();
        assert_eq!(
            w.rows().len(),
            1,
            "not forgotten by a scan that did not reach it"
        );
        p.stop.store(false, Ordering::Relaxed);
        p.scan().unwrap();
        let t =
            crate::ledger::sources::totals_at(&w.store.begin_read().unwrap(), "results").unwrap();
        assert_eq!(t.files, 1, "taken once");
    }

    #[test]
    fn a_file_failing_its_trailer_is_parked_whole() {
        let (w, mut p) = World::new("", "");
        w.put(
            "RES_1.DAT",
            &file(&[("A1", "0000100"), ("A2", "0000100")], 3, "000000200"),
        );
        w.put(
            "RES_2.DAT",
            &file(&[("B1", "0000100"), ("B2", "0000100")], 2, "000000300"),
        );
        w.put("RES_3.DAT", "H20251201\nD000001 0000100\n");
        p.scan().unwrap();
        assert!(w.events().is_empty());
        let rows = w.rows();
        let reasons: Vec<String> = rows
            .iter()
            .map(|r| format!("{}: {:?}", r.name, r.state))
            .collect();
        assert_eq!(rows.len(), 3, "{reasons:?}");
        let by = |n: &str| rows.iter().find(|r| r.name == n).unwrap().state.clone();
        assert!(
            matches!(by("RES_1.DAT"), FileState::Parked { reason } if reason.contains("RT-COUNT says 3 records, the file has 2")),
            "{reasons:?}"
        );
        assert!(
            matches!(by("RES_2.DAT"), FileState::Parked { reason } if reason.contains("RT-TOTAL says 3.00, the records' RD-FEE add up to 2.00")),
            "{reasons:?}"
        );
        assert!(
            matches!(by("RES_3.DAT"), FileState::Parked { reason } if reason.contains("no trailer")),
            "{reasons:?}"
        );
        // Put right in place: taken.
        w.put(
            "RES_1.DAT",
            &file(&[("A1", "0000100"), ("A2", "0000100")], 2, "000000200"),
        );
        p.scan().unwrap();
        assert_eq!(w.events().len(), 2);
    }

    #[test]
    fn ready_trailer_waits_for_the_trailer() {
        let (w, mut p) = World::new("  ready: trailer\n", "");
        let path = w.dir.path().join("in/RES_1.DAT");
        std::fs::write(&path, "H20251201\nD000001 0000100\n").unwrap();
        p.scan().unwrap();
        assert!(w.events().is_empty());
        assert!(w.rows().is_empty(), "not parked, waiting");
        assert_eq!(p.live.waiting.load(Ordering::Relaxed), 1);
        std::fs::write(&path, file(&[("000001", "0000100")], 1, "000000100")).unwrap();
        p.scan().unwrap();
        assert_eq!(w.events().len(), 1);
    }

    #[test]
    fn a_trigger_file_and_a_stable_file() {
        let (w, mut p) = World::new(
            "  ready: {done_file: \"{name}.done\"}\n  then: delete\n",
            "",
        );
        w.put("RES_1.DAT", &file(&[("A1", "0000100")], 1, "000000100"));
        p.scan().unwrap();
        assert!(w.events().is_empty(), "no trigger yet");
        std::fs::write(w.dir.path().join("in/RES_1.DAT.done"), "").unwrap();
        p.scan().unwrap();
        assert_eq!(w.events().len(), 1);
        assert!(!w.dir.path().join("in/RES_1.DAT").exists());
        assert!(!w.dir.path().join("in/RES_1.DAT.done").exists());

        let (w, mut p) = World::new("  ready: {stable: 0s}\n", "");
        w.put("RES_1.DAT", &file(&[("A1", "0000100")], 1, "000000100"));
        p.scan().unwrap();
        assert!(w.events().is_empty(), "seen once: not yet stable");
        p.scan().unwrap();
        assert_eq!(w.events().len(), 1);
    }

    #[test]
    fn a_file_changed_after_part_was_taken_is_refused() {
        let (w, mut p) = World::new("", "");
        let text = file(
            &[("A1", "0000100"), ("A2", "0000100"), ("A3", "0000100")],
            3,
            "000000300",
        );
        let path = w.dir.path().join("in/RES_1.DAT");
        std::fs::write(&path, &text).unwrap();
        p.chunk_limit = Some(1);
        p.scan().unwrap();
        assert_eq!(w.events().len(), 1);
        // Rewritten in place (same inode) before the rest was taken.
        std::fs::write(&path, text.replace("A2", "X2")).unwrap();
        let mut p = again(&p, &w.store);
        p.scan().unwrap();
        assert_eq!(w.events().len(), 1, "nothing more taken");
        let rows = w.rows();
        assert!(
            matches!(&rows[0].state, FileState::Refused { reason } if reason.contains("changed since its first 2 records were taken")),
            "{:?}",
            rows[0].state
        );
        p.scan().unwrap();
        assert_eq!(w.events().len(), 1);
    }

    #[test]
    fn a_bad_nibble_an_unmapped_byte_and_a_short_record_are_dead_letters_naming_the_place() {
        let copybook = "       01  R-DETAIL.\n           05  RD-ID     PIC X(4).\n           05  RD-FEE    PIC S9(3)V99 COMP-3.\n";
        let map = "source:\n  name: results\n  kind: file\n  dir: in\n  pattern: \"RES_*.DAT\"\nformat: fixed\nlayout: R.cpy\nrecord: {encoding: ascii, framing: fixed}\nevent:\n  type: PERMIT_RESULT\n";
        let (w, mut p) = World::with(copybook, map);
        let mut bytes = Vec::new();
        bytes.extend(b"AB01\x12\x34\x5c"); // 123.45
        bytes.extend(b"AB02\x1a\x34\x5c"); // a nibble that is not a digit
        bytes.extend(b"AB\x803\x12\x34\x5c"); // a byte ascii has no character for
        bytes.extend(b"AB04\x00\x01\x0c"); // 0.01
        bytes.extend(b"AB"); // short
        let tmp = w.dir.path().join("in/RES_1.DAT.tmp");
        std::fs::write(&tmp, &bytes).unwrap();
        std::fs::rename(&tmp, w.dir.path().join("in/RES_1.DAT")).unwrap();
        let scan = p.scan().unwrap();
        assert_eq!((scan.files_done, scan.events, scan.bad), (1, 2, 3));
        let ev = w.events();
        assert!(ev[0].1.contains(r#""RD-FEE":123.45"#), "{}", ev[0].1);
        assert!(ev[1].1.contains(r#""RD-ID":"AB04""#), "{}", ev[1].1);
        assert!(ev[0].0.ends_with("/0") && ev[1].0.ends_with("/3"));
        let tx = w.store.begin_read().unwrap();
        let (bad, _) = crate::ledger::sources::bad_at(&tx, "results", 10).unwrap();
        let got: Vec<(u64, u64, &str)> = bad
            .iter()
            .map(|(_, b)| (b.record_index, b.offset, b.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [(1, 7, "RD-FEE"), (2, 14, "RD-ID"), (4, 28, "(framing)")]
        );
        for (_, b) in &bad {
            assert_eq!(b.file, "RES_1.DAT");
            assert!(!b.message.is_empty());
        }
        assert_eq!(bad[1].1.field_offset, 2, "the byte in the record");
    }

    #[test]
    fn csv_and_fixed_width_files_without_a_copybook() {
        let csv = "source:\n  name: results\n  kind: file\n  dir: in\n  pattern: \"RES_*.CSV\"\nformat: csv\ncsv: {header: true}\nfields:\n  PERMIT: id\n  FEE: fee\n  STATUS: status\nevent:\n  type: PERMIT_RESULT\n  payload: {id: PERMIT, fee: FEE, status: STATUS}\n";
        let (w, mut p) = World::with(COPYBOOK, csv);
        w.put(
            "RES_1.CSV",
            "PERMIT,FEE,STATUS\nBP-1,19.99,A\nBP-2,0.01,R\n",
        );
        let scan = p.scan().unwrap();
        let (bad, _) =
            crate::ledger::sources::bad_at(&w.store.begin_read().unwrap(), "results", 10).unwrap();
        assert_eq!(
            (scan.events, scan.bad),
            (2, 0),
            "the header line is no record: {bad:?}"
        );
        let ev = w.events();
        assert!(
            ev[0].1.contains(r#""id":"BP-1""#) && ev[0].1.contains(r#""fee":"19.99""#),
            "{}",
            ev[0].1
        );
        assert!(ev[1].1.contains(r#""status":"R""#), "{}", ev[1].1);
        assert!(
            ev[0].0.ends_with("/1"),
            "record 0 is the header: {}",
            ev[0].0
        );

        let fixed = "source:\n  name: results\n  kind: file\n  dir: in\n  pattern: \"RES_*.TXT\"\nformat: fixed\nrecord: {encoding: latin1, framing: lines}\nfields:\n  PERMIT: id | width:6\n  STATUS: status | width:8\nevent:\n  type: PERMIT_RESULT\n";
        let (w, mut p) = World::with(COPYBOOK, fixed);
        w.put("RES_1.TXT", "BP-1  APPROVED\nBP-2  REJECTED\n");
        let scan = p.scan().unwrap();
        assert_eq!((scan.events, scan.bad), (2, 0));
        let ev = w.events();
        assert!(
            ev[1].1.contains(r#""PERMIT":"BP-2""#) && ev[1].1.contains("REJECTED"),
            "{}",
            ev[1].1
        );
    }

    #[test]
    fn outside_its_schedule_a_source_takes_nothing() {
        use chrono::Datelike;
        let day = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
            [(Utc::now().weekday().num_days_from_monday() as usize + 3) % 7];
        let (w, p) = World::new("  every: 10ms\n", &format!("schedule: \"{day}\"\n"));
        w.put("RES_1.DAT", &file(&[("A1", "0000100")], 1, "000000100"));
        let live = p.live.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (stop, stop_rx) = watch::channel(false);
        rt.block_on(async {
            let task = tokio::spawn(run(p, stop_rx));
            let deadline = Instant::now() + std::time::Duration::from_secs(30);
            while !live.outside_schedule.load(Ordering::Relaxed) {
                assert!(Instant::now() < deadline);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            stop.send(true).unwrap();
            task.await.unwrap();
        });
        assert_eq!(live.scans.load(Ordering::Relaxed), 0);
        assert!(w.events().is_empty());
        assert!(w.rows().is_empty());
    }

    #[test]
    fn bad_records_are_dead_letters_or_hold_the_file() {
        let text = file(
            &[("A1", "0000100"), ("A2", "00X0100"), ("A3", "0000100")],
            3,
            "000000200",
        );
        let (w, mut p) = World::new("", "");
        w.put("RES_1.DAT", &text);
        p.scan().unwrap();
        let ev = w.events();
        assert_eq!(ev.len(), 2, "the others go on");
        let (bad, _) =
            crate::ledger::sources::bad_at(&w.store.begin_read().unwrap(), "results", 10).unwrap();
        assert_eq!(bad.len(), 1);
        let b = &bad[0].1;
        assert_eq!(
            (
                b.file.as_str(),
                b.record_index,
                b.offset,
                b.field.as_str(),
                b.field_offset
            ),
            ("RES_1.DAT", 2, 25, "RD-FEE", 9)
        );

        let (w, mut p) = World::new("", "on_bad_record: hold\n");
        w.put("RES_1.DAT", &text);
        p.scan().unwrap();
        assert!(w.events().is_empty());
        assert!(
            matches!(&w.rows()[0].state, FileState::Held { reason } if reason.contains("RD-FEE")),
            "{:?}",
            w.rows()[0].state
        );
    }
}
