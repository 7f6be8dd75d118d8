//! Pickup sources in the ledger: per source, the legacy files it has seen and how far it got
//! in each (`source_files`), the records it could not read (`source_bad`, its dead letters)
//! and its running totals (`source_totals`). Same redb file, same value codec
//! ([`schema::encode_bound`], checksums bound to table and key), read through any handle.
//!
//! ## Commit point
//! [`Sources::commit`] appends a chunk of one file's records to the feed and, in the same
//! durable transaction ([`crate::feed::Store::write_appending`]), stores the file's new
//! checkpoint ([`SourceFile`]: records taken, byte offset, seqs, state), the chunk's bad
//! records and the source's totals. So after a crash at any instant the feed holds exactly
//! the records the checkpoint says were taken: a restart resumes at `next_record` and never
//! appends a record twice, and a file whose checkpoint says `Done` is never read again.
//! State changes without records (held, parked, refused, `then` carried out) go through the
//! same function with an empty batch.

use chrono::{DateTime, Utc};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::event::Seq;
use crate::feed::schema::{self, SOURCE_BAD, SOURCE_FILES, SOURCE_TOTALS};
use crate::feed::{AppendOutcome, Batch, Error, Store, guarded, seal};

/// Where a file stands for its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileState {
    /// Some of its records are in the feed; the rest follow from `next_record`.
    Reading,
    /// Every record is in the feed (or parked as a bad record).
    Done,
    /// `on_bad_record: hold`: a record does not decode; nothing of the file was taken.
    Held { reason: String },
    /// The file failed its trailer check or does not split into records: nothing was taken.
    Parked { reason: String },
    /// The file changed while it was being read: what was taken stays, nothing more is.
    Refused { reason: String },
}

impl FileState {
    /// The word the page, `ess list` and `/api/status` use.
    pub fn word(&self) -> &'static str {
        match self {
            FileState::Reading => "reading",
            FileState::Done => "done",
            FileState::Held { .. } => "held",
            FileState::Parked { .. } => "parked",
            FileState::Refused { .. } => "refused",
        }
    }

    /// Why the file is not taken (held, parked, refused).
    pub fn reason(&self) -> Option<&str> {
        match self {
            FileState::Held { reason }
            | FileState::Parked { reason }
            | FileState::Refused { reason } => Some(reason),
            FileState::Reading | FileState::Done => None,
        }
    }
}

/// One file a source has seen, and its checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Its name in the source's folder when it was taken.
    pub name: String,
    /// Local files: inode number and birth time (a file's identity, see
    /// [`crate::target::drop::FileId`]); SFTP: none (the name is the identity).
    pub ino: Option<u64>,
    pub born: Option<(i64, u32)>,
    /// Size and modification time (ns) it had when it was read.
    pub size: u64,
    pub mtime_ns: i64,
    /// SHA-256 of its bytes when it was first read: a resumed file must still have it.
    pub digest: [u8; 32],
    /// Records in the file (control records included).
    pub n_records: u64,
    /// Every record before this index is taken (an event, a bad record, or a control
    /// record skipped).
    pub next_record: u64,
    /// Byte offset of record `next_record`.
    pub next_offset: u64,
    /// Events this file put in the feed, and records whose key was there already.
    pub events: u64,
    pub duplicates: u64,
    /// Records that could not be read.
    pub bad: u64,
    pub first_seq: Option<Seq>,
    pub last_seq: Option<Seq>,
    pub state: FileState,
    /// `then:` (move, delete) carried out, or nothing to do (`keep`).
    pub then_done: bool,
    /// When it was first taken from, and when it was done, µs since the epoch.
    pub started_micros: i64,
    pub done_micros: Option<i64>,
}

impl SourceFile {
    /// A file about to be read for the first time: nothing of it taken yet, its identity
    /// (`ino`, `born`, `size`, `mtime_ns`) unknown until the caller sets it.
    pub fn first_read(name: String, digest: [u8; 32], started_micros: i64) -> SourceFile {
        SourceFile {
            name,
            ino: None,
            born: None,
            size: 0,
            mtime_ns: 0,
            digest,
            n_records: 0,
            next_record: 0,
            next_offset: 0,
            events: 0,
            duplicates: 0,
            bad: 0,
            first_seq: None,
            last_seq: None,
            state: FileState::Reading,
            then_done: false,
            started_micros,
            done_micros: None,
        }
    }
}

/// A record that could not be read: its dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRecord {
    /// The file's name.
    pub file: String,
    pub record_index: u64,
    /// Byte offset of the record in the file.
    pub offset: u64,
    /// The field that failed (`(record)` for the framing), and the byte of the record.
    pub field: String,
    pub field_offset: u64,
    /// What is wrong, never the value.
    pub message: String,
    pub at_micros: i64,
}

/// A source's totals since it began.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceTotals {
    /// Files done.
    pub files: u64,
    /// Events put in the feed.
    pub records: u64,
    pub bad_records: u64,
    pub duplicates: u64,
    pub last_done_micros: Option<i64>,
}

fn file_binding(source: &str, key: &str) -> Vec<u8> {
    let mut b = schema::connector_binding("source_files", source);
    b.push(0);
    b.extend_from_slice(key.as_bytes());
    b
}

fn bad_binding(table: &str, source: &str, key: &str, index: u64) -> Vec<u8> {
    let mut b = schema::connector_binding(table, source);
    b.push(0);
    b.extend_from_slice(key.as_bytes());
    b.push(0);
    b.extend_from_slice(&index.to_be_bytes());
    b
}

/// A bad record as stored: its message sealed when encryption at rest is on (it names a
/// field and a byte, and is kept as long as the file's row).
#[derive(Serialize, Deserialize)]
struct StoredBad {
    letter: BadRecord,
    sealed: Option<Vec<u8>>,
}

fn encode_bad(
    source: &str,
    key: &str,
    b: &BadRecord,
    seal: Option<&seal::Key>,
) -> Result<Vec<u8>, Error> {
    let stored = match seal {
        None => StoredBad {
            letter: b.clone(),
            sealed: None,
        },
        Some(k) => {
            let mut out = Vec::new();
            k.seal_into(
                &bad_binding("ess-source-bad", source, key, b.record_index),
                b.message.as_bytes(),
                &mut out,
            );
            StoredBad {
                letter: BadRecord {
                    message: String::new(),
                    ..b.clone()
                },
                sealed: Some(out),
            }
        }
    };
    Ok(schema::encode_bound(
        &bad_binding("source_bad", source, key, b.record_index),
        &stored,
    ))
}

/// Verifies and decodes a bad record stored under (`source`, `key`, `index`).
pub fn decode_bad(source: &str, key: &str, index: u64, bytes: &[u8]) -> Result<BadRecord, Error> {
    let stored: StoredBad =
        schema::decode_bound(&bad_binding("source_bad", source, key, index), bytes)
            .map_err(|e| Error::corrupt("source_bad", Some(index), Some(source), e))?;
    let mut letter = stored.letter;
    if let Some(sealed) = stored.sealed {
        let aad = bad_binding("ess-source-bad", source, key, index);
        let clear = seal::open(&aad, &sealed).map_err(|source_err| Error::Seal {
            what: format!("bad record {source} {key} {index}"),
            source: source_err,
        })?;
        letter.message = String::from_utf8(clear)
            .map_err(|e| Error::corrupt("source_bad", Some(index), Some(source), e))?;
    }
    Ok(letter)
}

/// Verifies and decodes a file row stored under (`source`, `key`).
pub fn decode_file(source: &str, key: &str, bytes: &[u8]) -> Result<SourceFile, Error> {
    schema::decode_bound(&file_binding(source, key), bytes)
        .map_err(|e| Error::corrupt("source_files", None, Some(&format!("{source} {key}")), e))
}

fn decode_totals(source: &str, bytes: &[u8]) -> Result<SourceTotals, Error> {
    schema::decode_bound(&schema::connector_binding("source_totals", source), bytes)
        .map_err(|e| Error::corrupt("source_totals", None, Some(source), e))
}

/// One change to a file's row: its new checkpoint and the bad records found since.
#[derive(Debug)]
pub struct FileCommit<'a> {
    pub source: &'a str,
    pub key: &'a str,
    /// The row as it is to be stored; `events`, `duplicates`, the seqs and (for a file
    /// that becomes done) the totals are completed from the append.
    pub file: &'a SourceFile,
    /// Whether the row was `Done` before (so the totals count a file once).
    pub was_done: bool,
    pub bad: &'a [BadRecord],
}

/// Handle to the source tables.
#[derive(Clone)]
pub struct Sources {
    store: Store,
}

impl Sources {
    pub fn new(store: Store) -> Sources {
        Sources { store }
    }

    /// Appends `batch` (the chunk's events, in record order) and stores the file's new
    /// row, its bad records and the totals, in one durable transaction. Returns the row as
    /// stored.
    pub fn commit(
        &self,
        change: &FileCommit<'_>,
        batch: Batch,
        now: DateTime<Utc>,
    ) -> Result<(AppendOutcome, SourceFile), Error> {
        let seal = self.store.sealing_key();
        let FileCommit {
            source,
            key,
            file,
            was_done,
            bad,
        } = *change;
        let (outcome, stored) = self.store.write_appending(batch, |tx, appended| {
            let mut row = file.clone();
            row.events += appended.accepted as u64;
            row.duplicates += appended.duplicates as u64;
            row.first_seq = row.first_seq.or(appended.first_seq);
            row.last_seq = appended.last_seq.or(row.last_seq);
            let becomes_done = row.state == FileState::Done && !was_done;
            if becomes_done {
                row.done_micros = Some(now.timestamp_micros());
            }
            tx.open_table(SOURCE_FILES)?.insert(
                (source, key),
                schema::encode_bound(&file_binding(source, key), &row).as_slice(),
            )?;
            let mut bad_table = tx.open_table(SOURCE_BAD)?;
            for b in bad {
                let bytes = encode_bad(source, key, b, seal.as_deref())?;
                bad_table.insert((source, key, b.record_index), bytes.as_slice())?;
            }
            let mut totals_table = tx.open_table(SOURCE_TOTALS)?;
            let mut totals = match totals_table.get(source)? {
                Some(v) => decode_totals(source, v.value())?,
                None => SourceTotals::default(),
            };
            totals.records += appended.accepted as u64;
            totals.duplicates += appended.duplicates as u64;
            totals.bad_records += bad.len() as u64;
            if becomes_done {
                totals.files += 1;
                totals.last_done_micros = row.done_micros;
            }
            totals_table.insert(
                source,
                schema::encode_bound(&schema::connector_binding("source_totals", source), &totals)
                    .as_slice(),
            )?;
            Ok(row)
        })?;
        Ok((outcome, stored))
    }

    /// Forgets files (their rows and bad records), in one transaction: rows past
    /// retention whose files are gone from the folder.
    pub fn forget(&self, source: &str, keys: &[String]) -> Result<(), Error> {
        if keys.is_empty() {
            return Ok(());
        }
        self.store.write(|tx| {
            let mut files = tx.open_table(SOURCE_FILES)?;
            let mut bad = tx.open_table(SOURCE_BAD)?;
            for key in keys {
                files.remove((source, key.as_str()))?;
                let indices: Vec<u64> = bad
                    .range((source, key.as_str(), 0)..=(source, key.as_str(), u64::MAX))?
                    .map(|r| r.map(|(k, _)| k.value().2))
                    .collect::<Result<_, _>>()?;
                for i in indices {
                    bad.remove((source, key.as_str(), i))?;
                }
            }
            Ok(())
        })
    }

    /// Every file row of `source`, by key.
    pub fn files(&self, source: &str) -> Result<Vec<(String, SourceFile)>, Error> {
        files_at(&self.store.begin_read()?, source)
    }
}

fn open<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &ReadTransaction,
    def: redb::TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, Error> {
    match tx.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Every file row of `source` inside a read transaction (none in a file without sources).
pub fn files_at(tx: &ReadTransaction, source: &str) -> Result<Vec<(String, SourceFile)>, Error> {
    guarded("source_files", || {
        let Some(t) = open(tx, SOURCE_FILES)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in t.range((source, "")..)? {
            let (k, v) = row?;
            let (s, key) = k.value();
            if s != source {
                break;
            }
            out.push((key.to_string(), decode_file(source, key, v.value())?));
        }
        Ok(out)
    })
}

/// Up to `limit` bad records of `source` (file key, record), newest file key order aside,
/// in key order; and whether there were more.
pub fn bad_at(
    tx: &ReadTransaction,
    source: &str,
    limit: usize,
) -> Result<(Vec<(String, BadRecord)>, bool), Error> {
    guarded("source_bad", || {
        let Some(t) = open(tx, SOURCE_BAD)? else {
            return Ok((Vec::new(), false));
        };
        let mut out = Vec::new();
        for row in t.range((source, "", 0)..)? {
            let (k, v) = row?;
            let (s, key, index) = k.value();
            if s != source {
                break;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push((key.to_string(), decode_bad(source, key, index, v.value())?));
        }
        Ok((out, false))
    })
}

/// The totals of `source` (zero if it never took anything).
pub fn totals_at(tx: &ReadTransaction, source: &str) -> Result<SourceTotals, Error> {
    guarded("source_totals", || {
        let Some(t) = open(tx, SOURCE_TOTALS)? else {
            return Ok(SourceTotals::default());
        };
        t.get(source)?
            .map(|v| decode_totals(source, v.value()))
            .transpose()
            .map(Option::unwrap_or_default)
    })
}

/// The names of every source the ledger knows (it has totals), sorted.
pub fn known_at(tx: &ReadTransaction) -> Result<Vec<String>, Error> {
    guarded("source_totals", || {
        let Some(t) = open(tx, SOURCE_TOTALS)? else {
            return Ok(Vec::new());
        };
        t.iter()?
            .map(|r| r.map(|(k, _)| k.value().to_string()).map_err(Error::from))
            .collect()
    })
}

/// A pickup source as `/api/status`, `/metrics`, the page and `ess stats` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReport {
    pub name: String,
    /// Files whose every record is in the feed.
    pub files_taken: u64,
    /// Events its records became.
    pub records: u64,
    /// Records that could not be read (dead letters).
    pub bad_records: u64,
    /// Files being taken (a restart resumes them).
    pub files_reading: u64,
    /// Files held back (held, parked, refused), with why.
    pub files_held: Vec<HeldFile>,
    /// The newest bad records (file, record index, byte offset, field, message).
    pub recent_bad: Vec<BadRecord>,
    /// The files most recently started, newest first (`ess list --source`).
    #[serde(default)]
    pub recent_files: Vec<FileSummary>,
    /// Files waiting to be whole or taken, and the age of the oldest (running daemon only).
    #[serde(default)]
    pub files_waiting: Option<u64>,
    #[serde(default)]
    pub oldest_unread_age_secs: Option<u64>,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// One file of a source, in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSummary {
    pub file: String,
    /// `reading`, `done`, `held`, `parked` or `refused`.
    pub state: String,
    pub reason: Option<String>,
    /// Records taken (control records and bad ones included), of the file's records.
    pub records_taken: u64,
    pub events: u64,
    pub bad: u64,
    pub first_seq: Option<Seq>,
    pub last_seq: Option<Seq>,
    /// RFC 3339: when it was first taken from, and when it was done.
    pub started_at: String,
    pub done_at: Option<String>,
}

/// How many files a report lists.
const RECENT_FILES: usize = 20;

/// A file a source holds back, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldFile {
    pub file: String,
    /// `held`, `parked` or `refused`.
    pub state: String,
    pub reason: String,
    /// Records taken before it was refused.
    pub records_taken: u64,
}

/// How many bad records a report lists.
const RECENT_BAD: usize = 20;

/// Every source the ledger knows, with its totals and the files it holds back.
pub fn reports_at(tx: &ReadTransaction) -> Result<Vec<SourceReport>, Error> {
    let mut out = Vec::new();
    for name in known_at(tx)? {
        let totals = totals_at(tx, &name)?;
        let files = files_at(tx, &name)?;
        let (recent_bad, _) = bad_at(tx, &name, RECENT_BAD)?;
        out.push(SourceReport {
            files_taken: totals.files,
            records: totals.records,
            bad_records: totals.bad_records,
            files_reading: files
                .iter()
                .filter(|(_, f)| f.state == FileState::Reading)
                .count() as u64,
            files_held: files
                .iter()
                .filter_map(|(_, f)| {
                    Some(HeldFile {
                        file: f.name.clone(),
                        state: f.state.word().to_string(),
                        reason: f.state.reason()?.to_string(),
                        records_taken: f.next_record,
                    })
                })
                .collect(),
            recent_bad: recent_bad.into_iter().map(|(_, b)| b).collect(),
            recent_files: {
                let mut newest: Vec<&SourceFile> = files.iter().map(|(_, f)| f).collect();
                newest.sort_by_key(|f| std::cmp::Reverse(f.started_micros));
                newest
                    .into_iter()
                    .take(RECENT_FILES)
                    .map(|f| FileSummary {
                        file: f.name.clone(),
                        state: f.state.word().to_string(),
                        reason: f.state.reason().map(str::to_string),
                        records_taken: f.next_record,
                        events: f.events,
                        bad: f.bad,
                        first_seq: f.first_seq,
                        last_seq: f.last_seq,
                        started_at: crate::state::rfc3339_micros(f.started_micros),
                        done_at: f.done_micros.map(crate::state::rfc3339_micros),
                    })
                    .collect()
            },
            files_waiting: None,
            oldest_unread_age_secs: None,
            last_error: None,
            name,
        });
    }
    Ok(out)
}

/// `ess verify`: every row of the three tables against its checksum and binding. Returns
/// the rows checked and the damage found.
pub fn verify<D: ReadableDatabase>(db: &D) -> (u64, Vec<Error>) {
    let mut n = 0u64;
    let mut found = Vec::new();
    let walk = guarded("source_files", || {
        let tx = db.begin_read()?;
        if let Some(t) = open(&tx, SOURCE_FILES)? {
            for row in t.iter()? {
                let (k, v) = row?;
                let (s, key) = k.value();
                n += 1;
                if let Err(e) = decode_file(s, key, v.value()) {
                    found.push(e);
                }
            }
        }
        if let Some(t) = open(&tx, SOURCE_BAD)? {
            for row in t.iter()? {
                let (k, v) = row?;
                let (s, key, index) = k.value();
                n += 1;
                match decode_bad(s, key, index, v.value()) {
                    Ok(_) | Err(Error::Seal { .. }) => {}
                    Err(e) => found.push(e),
                }
            }
        }
        if let Some(t) = open(&tx, SOURCE_TOTALS)? {
            for row in t.iter()? {
                let (k, v) = row?;
                n += 1;
                if let Err(e) = decode_totals(k.value(), v.value()) {
                    found.push(e);
                }
            }
        }
        Ok(())
    });
    if let Err(e) = walk {
        found.push(e);
    }
    (n, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(state: FileState) -> SourceFile {
        SourceFile {
            ino: Some(7),
            born: Some((1, 2)),
            size: 100,
            mtime_ns: 5,
            n_records: 3,
            next_record: 3,
            next_offset: 100,
            state,
            ..SourceFile::first_read("RESULTS_1.DAT".into(), [3; 32], 1)
        }
    }

    fn store() -> Store {
        Store::in_memory().unwrap()
    }

    #[test]
    fn events_checkpoint_bad_records_and_totals_commit_together() {
        let store = store();
        let sources = Sources::new(store.clone());
        let mut batch = Batch::default();
        batch.push("T", "k-1", "t", None, br#"{"a":1}"#);
        batch.push("T", "k-2", "t", None, br#"{"a":2}"#);
        let bad = [BadRecord {
            file: "RESULTS_1.DAT".into(),
            record_index: 1,
            offset: 40,
            field: "RD-FEE".into(),
            field_offset: 12,
            message: "not a packed decimal".into(),
            at_micros: 9,
        }];
        let f = file(FileState::Done);
        let change = FileCommit {
            source: "s",
            key: "abc",
            file: &f,
            was_done: false,
            bad: &bad,
        };
        let (out, row) = sources.commit(&change, batch, Utc::now()).unwrap();
        assert_eq!(
            (out.accepted, out.first_seq, out.last_seq),
            (2, Some(1), Some(2))
        );
        assert_eq!(
            (row.events, row.first_seq, row.last_seq),
            (2, Some(1), Some(2))
        );
        assert!(row.done_micros.is_some());
        let tx = store.begin_read().unwrap();
        assert_eq!(
            files_at(&tx, "s").unwrap(),
            vec![("abc".to_string(), row.clone())]
        );
        assert_eq!(files_at(&tx, "t").unwrap(), vec![]);
        let (letters, more) = bad_at(&tx, "s", 10).unwrap();
        assert_eq!(letters, vec![("abc".to_string(), bad[0].clone())]);
        assert!(!more);
        let t = totals_at(&tx, "s").unwrap();
        assert_eq!((t.files, t.records, t.bad_records), (1, 2, 1));
        assert_eq!(known_at(&tx).unwrap(), ["s"]);
        drop(tx);
        // Done again (the `then` step): the totals count the file once.
        let change = FileCommit {
            was_done: true,
            bad: &[],
            ..change
        };
        sources
            .commit(&change, Batch::default(), Utc::now())
            .unwrap();
        let tx = store.begin_read().unwrap();
        assert_eq!(totals_at(&tx, "s").unwrap().files, 1);
        assert_eq!(crate::feed::read_last_seq(&store).unwrap(), 2);
        drop(tx);
        let (n, damage) = verify(&store);
        assert_eq!(n, 3);
        assert!(damage.is_empty(), "{damage:?}");
        sources.forget("s", &["abc".into()]).unwrap();
        let tx = store.begin_read().unwrap();
        assert!(files_at(&tx, "s").unwrap().is_empty());
        assert!(bad_at(&tx, "s", 10).unwrap().0.is_empty());
    }

    #[test]
    fn a_failing_row_write_stores_none_of_the_records() {
        let store = store();
        // A row bound to another key: decoding it fails, so the commit's totals read fails.
        store
            .write(|tx| {
                tx.open_table(SOURCE_TOTALS)?
                    .insert("s", schema::encode(&SourceTotals::default()).as_slice())?;
                Ok(())
            })
            .unwrap();
        let mut batch = Batch::default();
        batch.push("T", "k-1", "t", None, b"{}");
        let f = file(FileState::Reading);
        let change = FileCommit {
            source: "s",
            key: "abc",
            file: &f,
            was_done: false,
            bad: &[],
        };
        let err = Sources::new(store.clone())
            .commit(&change, batch, Utc::now())
            .unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        assert_eq!(crate::feed::read_last_seq(&store).unwrap(), 0);
        assert!(crate::feed::get_by_key(&store, "k-1").unwrap().is_none());
        assert!(
            files_at(&store.begin_read().unwrap(), "s")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn every_bit_flip_of_a_row_is_refused() {
        let f = file(FileState::Refused {
            reason: "changed".into(),
        });
        let bytes = schema::encode_bound(&file_binding("s", "k"), &f);
        assert_eq!(decode_file("s", "k", &bytes).unwrap(), f);
        assert!(
            decode_file("s", "other", &bytes).is_err(),
            "bound to its key"
        );
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode_file("s", "k", &b).is_err(), "bit {i}");
        }
    }
}
