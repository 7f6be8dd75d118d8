//! The local file drop: `mode: append` (records appended to one, possibly dated, file) and
//! `mode: batch` (one whole file per delivery, written under a temp name and renamed).
//!
//! ## Append: exactly once through a crash
//! The checkpoint committed with the cursor is a [`FileMark`]: the file's path, device,
//! inode and length right after the last committed delivery. A delivery
//! 1. truncates the marked file back to the marked length if it is still the same inode
//!    and longer (bytes past the mark are ours: written by an attempt whose cursor commit
//!    never happened, possibly partial);
//! 2. appends the records in one write and `fdatasync`s the file (and its folder, when the
//!    file is new, so the name is durable too);
//! 3. returns the new mark; the connector commits it together with the cursor.
//!
//! A crash before step 3's commit leaves the old cursor and old mark: the next attempt
//! removes the tail and writes it again, so the file never holds a partial, doubled or
//! missing record.
//! A file the mark does not describe (the first delivery, a new `{{date}}` file) may hold
//! the uncommitted write of an attempt that crashed: its start is compared with what this
//! delivery writes, and our own prefix is completed (or our own longer write cut back);
//! content that is not ours is appended after, never touched. Bytes before the mark are never touched. If the legacy side moved the
//! file away (a different inode, or no file, at the path), a new file is started; nothing of
//! anybody else is ever truncated.
//!
//! ## Batch
//! One file per delivery, named from the template (which must contain `{{seq}}`: the first
//! seq of the batch, so a name is never reused). Written as `.<name>.ess-tmp`, fsynced,
//! renamed, folder fsynced. The connector pins a batch-mode delivery's range in the ledger
//! before calling it ([`Target::pins_batches`]), so after a crash the same range comes
//! again: if its file already exists, the rename happened and the delivery is done.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Checkpoint, Delivery, DeliveryError, Target};
use crate::config::connector::FileDeliver;
use crate::feed::schema;
use crate::map::Mapping;

/// `deliver.mode` of a file target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Append,
    Batch,
}

impl Mode {
    pub fn parse(mode: Option<&str>) -> Result<Mode, String> {
        match mode {
            None | Some("append") => Ok(Mode::Append),
            Some("batch") => Ok(Mode::Batch),
            Some(other) => Err(format!(
                "deliver.mode must be append or batch, not {other:?}"
            )),
        }
    }
}

/// Where the last committed append ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMark {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
}

/// Fault injection for crash tests: make one step fail (as a crash at that point would
/// leave things) without touching the real file system code paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Write only half of the bytes, then fail (a torn write).
    TornWrite,
    /// Write everything, then fail instead of fsyncing.
    FsyncFails,
}

/// A file drop for one connector.
pub struct FileTarget {
    dir: PathBuf,
    template: String,
    mode: Mode,
    connector: String,
    mapping: Option<Arc<Mapping>>,
    /// The next delivery fails at this step (then the fault clears itself).
    pub fault: Fault,
}

impl FileTarget {
    /// A file target writing into `spec.dir` (relative to `base_dir`, the map file's folder).
    /// `mapping` supplies batch header/trailer records.
    pub fn new(
        spec: &FileDeliver,
        base_dir: &Path,
        connector: &str,
        mapping: Option<Arc<Mapping>>,
    ) -> Result<FileTarget, String> {
        let mode = Mode::parse(spec.mode.as_deref())?;
        super::check_file_template(&spec.file)?;
        if mode == Mode::Batch && !spec.file.contains("{{seq}}") {
            return Err(format!(
                "deliver.file {:?}: batch mode needs {{{{seq}}}} in the name so no batch overwrites another, e.g. permit_{{{{seq}}}}.txt",
                spec.file
            ));
        }
        Ok(FileTarget {
            dir: crate::config::resolve_path(base_dir, &spec.dir),
            template: spec.file.clone(),
            mode,
            connector: connector.to_string(),
            mapping,
            fault: Fault::None,
        })
    }

    /// The folder files are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn append(&mut self, d: &Delivery<'_>, checkpoint: &[u8]) -> Result<Checkpoint, DeliveryError> {
        let mark: Option<FileMark> = if checkpoint.is_empty() {
            None
        } else {
            Some(
                schema::decode(checkpoint)
                    .map_err(|e| DeliveryError::Permanent(format!("file checkpoint: {e}")))?,
            )
        };
        if let Some(mark) = &mark {
            cut_uncommitted_tail(mark)
                .map_err(|e| io_err("cannot cut uncommitted tail of", &mark.path, e))?;
        }
        let path = self.dir.join(super::file_name(
            &self.template,
            &self.connector,
            d.first_seq(),
            &d.now,
        ));
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| io_err("cannot create folder", &self.dir, e))?;
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io_err("cannot open", &path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| io_err("cannot stat", &path, e))?;
        let records: Vec<u8> = d
            .items
            .iter()
            .flat_map(|(_, r)| r.bytes.iter().copied())
            .collect();
        let marked = mark
            .as_ref()
            .is_some_and(|m| m.path == path && m.dev == meta.dev() && m.ino == meta.ino());
        let bytes = if marked {
            // Our own file, its uncommitted tail already cut: append.
            records
        } else {
            // A file the checkpoint does not know: new (first delivery, a new date), or left
            // by an attempt whose commit never happened, or somebody else's.
            let mut ours = match &self.mapping {
                Some(m) => m
                    .csv_header_row()
                    .map_err(|e| DeliveryError::Permanent(format!("CSV header: {e}")))?,
                None => Vec::new(),
            };
            ours.extend_from_slice(&records);
            match reconcile_unknown(&mut file, meta.len(), &ours)
                .map_err(|e| io_err("cannot read", &path, e))?
            {
                Unknown::Ours { written } => ours.split_off(written),
                Unknown::OursLonger => {
                    tracing::warn!(path = %path.display(), "removing records an interrupted delivery wrote past this batch");
                    file.set_len(ours.len() as u64)
                        .map_err(|e| io_err("cannot truncate", &path, e))?;
                    Vec::new()
                }
                Unknown::Foreign => records,
            }
        };
        self.write_durably(&mut file, &bytes, &path)?;
        if !existed {
            sync_dir(&self.dir).map_err(|e| io_err("cannot fsync folder", &self.dir, e))?;
        }
        let meta = file
            .metadata()
            .map_err(|e| io_err("cannot stat", &path, e))?;
        let new_mark = FileMark {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
        };
        Ok(schema::encode(&new_mark))
    }

    fn batch(&mut self, d: &Delivery<'_>) -> Result<Checkpoint, DeliveryError> {
        // The name must not depend on when a retry happens: use the batch's first event time.
        let first_time = d
            .items
            .first()
            .map(|(e, _)| e.received_at.with_timezone(&d.now.timezone()))
            .unwrap_or(d.now);
        let mut name =
            super::file_name(&self.template, &self.connector, d.first_seq(), &first_time);
        if d.replay {
            // The original batch file may still be there: a replay gets its own name, still
            // deterministic (a crash during a replay re-delivers the same range).
            name = replay_name(&name, d.last_seq());
        }
        let path = self.dir.join(&name);
        if path.exists() {
            // Renamed by an attempt whose cursor commit did not happen: the batch is there.
            return Ok(Vec::new());
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| io_err("cannot create folder", &self.dir, e))?;
        let tmp = self.dir.join(format!(".{name}.ess-tmp"));
        let mut bytes = Vec::new();
        if let Some(m) = &self.mapping {
            bytes.extend(
                m.batch_header(d.items, d.now)
                    .map_err(|e| DeliveryError::Permanent(format!("batch header: {e}")))?,
            );
        }
        bytes.extend(d.items.iter().flat_map(|(_, r)| r.bytes.iter().copied()));
        if let Some(m) = &self.mapping {
            bytes.extend(
                m.batch_trailer(d.items, d.now)
                    .map_err(|e| DeliveryError::Permanent(format!("batch trailer: {e}")))?,
            );
        }
        let mut file = File::create(&tmp).map_err(|e| io_err("cannot create", &tmp, e))?;
        self.write_durably(&mut file, &bytes, &tmp)?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| io_err("cannot rename into place", &path, e))?;
        sync_dir(&self.dir).map_err(|e| io_err("cannot fsync folder", &self.dir, e))?;
        Ok(Vec::new())
    }

    fn write_durably(
        &mut self,
        file: &mut File,
        bytes: &[u8],
        path: &Path,
    ) -> Result<(), DeliveryError> {
        match std::mem::take(&mut self.fault) {
            Fault::TornWrite => {
                let _ = file.write_all(&bytes[..bytes.len() / 2]);
                return Err(DeliveryError::transient("injected torn write"));
            }
            Fault::FsyncFails => {
                let _ = file.write_all(bytes);
                return Err(DeliveryError::transient("injected fsync failure"));
            }
            Fault::None => {}
        }
        file.write_all(bytes)
            .map_err(|e| io_err("cannot write", path, e))?;
        file.sync_data()
            .map_err(|e| io_err("cannot fsync", path, e))
    }
}

/// `permit_1.txt` -> `permit_1.replay-9.txt`: the name of a replayed batch ending at `last`.
fn replay_name(name: &str, last: u64) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.replay-{last}.{ext}"),
        _ => format!("{name}.replay-{last}"),
    }
}

/// What a file unknown to the checkpoint holds, compared with what this delivery writes
/// (`ours`: CSV column row, if any, then the records).
enum Unknown {
    /// Empty, or a prefix of `ours` (an interrupted attempt): `written` bytes are there.
    Ours { written: usize },
    /// Starts with all of `ours` and more: an interrupted attempt of a bigger batch.
    OursLonger,
    /// Somebody else's content: append after it, never touch it.
    Foreign,
}

fn reconcile_unknown(file: &mut File, len: u64, ours: &[u8]) -> std::io::Result<Unknown> {
    use std::io::{Read, Seek, SeekFrom};
    if len == 0 {
        return Ok(Unknown::Ours { written: 0 });
    }
    let n = usize::try_from(len).unwrap_or(usize::MAX).min(ours.len());
    let mut head = vec![0u8; n];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut head)?;
    Ok(match (head == ours[..n], (len as usize) > ours.len()) {
        (true, false) => Unknown::Ours { written: n },
        (true, true) => Unknown::OursLonger,
        (false, _) => Unknown::Foreign,
    })
}

/// Truncates the marked file back to the marked length if it is the same file and longer.
fn cut_uncommitted_tail(mark: &FileMark) -> std::io::Result<()> {
    let file = match OpenOptions::new().write(true).open(&mark.path) {
        Ok(f) => f,
        // Moved away by the legacy side: nothing of ours to repair there.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if meta.dev() != mark.dev || meta.ino() != mark.ino {
        return Ok(());
    }
    if meta.len() > mark.len {
        tracing::warn!(path = %mark.path.display(), committed = mark.len, found = meta.len(), "removing an uncommitted tail left by an interrupted delivery");
        file.set_len(mark.len)?;
        file.sync_data()?;
    } else if meta.len() < mark.len {
        tracing::warn!(path = %mark.path.display(), committed = mark.len, found = meta.len(), "file is shorter than what was delivered; someone else changed it; appending after its end");
    }
    Ok(())
}

/// fsyncs a folder, so a new or renamed entry in it survives power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> DeliveryError {
    DeliveryError::transient(format!("{what} {}: {e}", path.display()))
}

#[async_trait::async_trait]
impl Target for FileTarget {
    async fn deliver(
        &mut self,
        d: &Delivery<'_>,
        checkpoint: &[u8],
    ) -> Result<Checkpoint, DeliveryError> {
        if d.items.is_empty() {
            return Ok(checkpoint.to_vec());
        }
        // Local disk I/O is short and blocking; keep it off the async worker's queue.
        tokio::task::block_in_place(|| match self.mode {
            Mode::Append => self.append(d, checkpoint),
            Mode::Batch => self.batch(d),
        })
    }

    fn pins_batches(&self) -> bool {
        self.mode == Mode::Batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Record};
    use chrono::{TimeZone, Utc};

    fn items(range: std::ops::RangeInclusive<u64>) -> Vec<(Event, Record)> {
        range
            .map(|seq| {
                let e = Event {
                    seq,
                    event_type: "T".into(),
                    payload: Default::default(),
                    key: format!("k{seq}"),
                    trace_id: "t".into(),
                    ts: None,
                    received_at: Utc.with_ymd_and_hms(2025, 4, 12, 10, 0, 0).unwrap(),
                };
                (
                    e,
                    Record {
                        seq,
                        bytes: format!("REC{seq:05}\n").into_bytes(),
                    },
                )
            })
            .collect()
    }

    fn target(dir: &Path, mode: &str, file: &str) -> FileTarget {
        let spec = FileDeliver {
            dir: "out".into(),
            file: file.into(),
            mode: Some(mode.into()),
        };
        FileTarget::new(&spec, dir, "c", None).unwrap()
    }

    fn now() -> chrono::DateTime<chrono_tz::Tz> {
        chrono_tz::UTC
            .with_ymd_and_hms(2025, 4, 12, 10, 0, 0)
            .unwrap()
    }

    async fn deliver(
        t: &mut FileTarget,
        it: &[(Event, Record)],
        cp: &[u8],
    ) -> Result<Checkpoint, DeliveryError> {
        t.deliver(
            &Delivery {
                connector: "c",
                items: it,
                now: now(),
                replay: false,
            },
            cp,
        )
        .await
    }

    fn expected(range: std::ops::RangeInclusive<u64>) -> String {
        range.map(|s| format!("REC{s:05}\n")).collect()
    }

    /// Every crash point of an append: after a torn write, after a write without fsync, and
    /// after write + fsync but before the cursor commit (the returned checkpoint is lost).
    /// In each case the retry with the committed checkpoint leaves each record exactly once.
    #[tokio::test(flavor = "multi_thread")]
    async fn append_recovers_from_a_crash_at_every_step() {
        for fault in [Fault::TornWrite, Fault::FsyncFails, Fault::None] {
            let dir = tempfile::tempdir().unwrap();
            let mut t = target(dir.path(), "append", "permit.txt");
            let cp1 = deliver(&mut t, &items(1..=3), &[]).await.unwrap();
            t.fault = fault;
            let attempt = deliver(&mut t, &items(4..=6), &cp1).await;
            assert_eq!(attempt.is_err(), fault != Fault::None, "{fault:?}");
            // The cursor never moved: the connector retries with cp1.
            let cp2 = deliver(&mut t, &items(4..=6), &cp1).await.unwrap();
            deliver(&mut t, &items(7..=7), &cp2).await.unwrap();
            let got = std::fs::read_to_string(dir.path().join("out/permit.txt")).unwrap();
            assert_eq!(got, expected(1..=7), "{fault:?}");
        }
    }

    /// A crash during the very first delivery (no checkpoint yet), or the first one into a
    /// new dated file, leaves a file the checkpoint does not know: it is recognised as ours.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_crash_before_the_first_commit_into_a_new_file_leaves_no_double() {
        for fault in [Fault::TornWrite, Fault::FsyncFails, Fault::None] {
            let dir = tempfile::tempdir().unwrap();
            let mut t = target(dir.path(), "append", "permit.txt");
            t.fault = fault;
            let _ = deliver(&mut t, &items(1..=3), &[]).await;
            // After a restart the retry may be bigger (more events arrived) ...
            let cp = deliver(&mut t, &items(1..=5), &[]).await.unwrap();
            deliver(&mut t, &items(6..=6), &cp).await.unwrap();
            let got = std::fs::read_to_string(dir.path().join("out/permit.txt")).unwrap();
            assert_eq!(got, expected(1..=6), "{fault:?}");
        }
        // ... or smaller (a retry goes alone): the extra uncommitted records are removed.
        let dir = tempfile::tempdir().unwrap();
        let mut t = target(dir.path(), "append", "permit.txt");
        let _lost = deliver(&mut t, &items(1..=3), &[]).await.unwrap();
        let cp = deliver(&mut t, &items(1..=1), &[]).await.unwrap();
        deliver(&mut t, &items(2..=3), &cp).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out/permit.txt")).unwrap(),
            expected(1..=3)
        );
        // Somebody else's file under our name is kept whole.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join("out/permit.txt"), "THEIRS\n").unwrap();
        let mut t = target(dir.path(), "append", "permit.txt");
        deliver(&mut t, &items(1..=2), &[]).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out/permit.txt")).unwrap(),
            format!("THEIRS\n{}", expected(1..=2))
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_file_moved_away_is_never_touched_and_a_new_one_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = target(dir.path(), "append", "permit.txt");
        let cp1 = deliver(&mut t, &items(1..=2), &[]).await.unwrap();
        let _uncommitted = deliver(&mut t, &items(3..=4), &cp1).await.unwrap();
        // The mainframe job picks the file up (including the uncommitted tail) ...
        std::fs::rename(
            dir.path().join("out/permit.txt"),
            dir.path().join("picked.txt"),
        )
        .unwrap();
        // ... and someone creates a new file of their own with the same name.
        std::fs::write(dir.path().join("out/permit.txt"), "THEIRS\n").unwrap();
        deliver(&mut t, &items(3..=4), &cp1).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("picked.txt")).unwrap(),
            expected(1..=4)
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out/permit.txt")).unwrap(),
            format!("THEIRS\n{}", expected(3..=4))
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn batch_files_are_whole_and_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = target(dir.path(), "batch", "permit_{{seq}}.txt");
        assert!(t.pins_batches());
        t.fault = Fault::FsyncFails;
        assert!(deliver(&mut t, &items(1..=3), &[]).await.is_err());
        assert!(
            !dir.path().join("out/permit_1.txt").exists(),
            "no partial file under the final name"
        );
        deliver(&mut t, &items(1..=3), &[]).await.unwrap();
        // A crash after the rename: the same pinned range comes again and is not rewritten.
        std::fs::write(dir.path().join("out/permit_1.txt"), expected(1..=3)).unwrap();
        deliver(&mut t, &items(1..=3), &[]).await.unwrap();
        deliver(&mut t, &items(4..=5), &[]).await.unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["permit_1.txt", "permit_4.txt"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out/permit_4.txt")).unwrap(),
            expected(4..=5)
        );
    }

    #[test]
    fn batch_mode_without_seq_in_the_name_is_refused() {
        let spec = FileDeliver {
            dir: "out".into(),
            file: "permit.txt".into(),
            mode: Some("batch".into()),
        };
        let err = FileTarget::new(&spec, Path::new("/tmp"), "c", None)
            .err()
            .unwrap();
        assert!(err.contains("{{seq}}"), "{err}");
    }
}
