//! The one drop protocol: how records get into files of a folder exactly once, whatever the
//! folder is. A [`Folder`] is the small set of file operations a drop needs (stat, read a
//! range, truncate, write at an offset and sync, create, write a temp file and sync, rename
//! without replacing, remove, sync the folder's names); [`local::LocalFolder`] (the local
//! file system) and [`crate::target::sftp::SftpFolder`] implement it, and
//! [`fault::FaultyFolder`] wraps either to lose unsynced writes on a simulated power cut
//! or fail the way a full or broken disk does. [`DropTarget`] is the protocol over any of
//! them, so file and SFTP drops behave the same in every case; a new kind of drop (FTPS) is
//! one more `Folder`.
//!
//! ## Append
//! The checkpoint is a [`Mark`]: a file's name in the folder, its identity ([`FileId`]),
//! and a length. It says: *everything in this file up to `len` is settled (ours and
//! committed, or somebody else's); anything past `len` is ours and uncommitted*. The
//! committed mark says it after the last committed delivery; an *intent* (a mark with
//! `pending`) says it before the first byte of a delivery goes to a file no committed mark
//! describes, and is committed durably by the connector first ([`Target::prepare`]).
//!
//! [`DropTarget::prepare`] compares the starting mark with the file it names:
//! - same identity, same length, and the file the template names now (or an intent): the
//!   common case, no intent, no extra fsync;
//! - same identity, longer: an attempt went there and did not commit; the delivery goes
//!   there again (whatever the template says now) and first cuts that tail;
//! - otherwise (first delivery, a new `{{date}}`, the file moved away, emptied or replaced,
//!   a mark of another file): the file the template names is created empty if missing, its
//!   identity and current length become the intent (someone else's content is kept and
//!   appended after), and a CSV column row opens it if it starts at 0.
//!
//! [`DropTarget::deliver`] then writes at the mark's offset (cutting back at once whatever a
//! failed write left, so no partial record stays even while the disk is full) and returns
//! the new mark. What cannot be decided is named: if the file a mark describes changed
//! while an uncommitted write of ours may have been in it, the records are written again
//! and [`Prepared::ambiguous`] says so.
//!
//! ## Batch
//! The intent names the file (template at intent time, `{{seq}}` = first seq; a replay gets
//! `NAME.replay-LAST.EXT`) and the time its header and trailer carry, and the connector
//! pins the range ([`Target::pins_batches`]). The bytes go to `.NAME.ess-tmp`, are synced,
//! renamed without replacing and the folder is synced. A file already under the name is
//! this batch if its bytes are exactly the batch's (an attempt renamed it, its commit did
//! not happen): done; anything else there is never replaced: a permanent failure naming it.

pub mod fault;
pub mod local;
pub mod mem;

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::{Checkpoint, Delivery, DeliveryError, Prepared, Target, check_file_template};
use crate::event::Seq;
use crate::map::Mapping;

pub use super::rotate::TEMP_SUFFIX;

/// What a folder says about one of its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub len: u64,
    /// `None` where the folder has no notion of identity (SFTP).
    pub id: Option<FileId>,
}

/// Who a file is, in terms that survive a reboot: the inode number and the birth time.
///
/// Not the device number: LVM, btrfs and NFS hand out another `st_dev` after a reboot. The
/// inode number is the file system's own, stored on disk (NFS passes the server's), so it
/// survives remounts, another device number and moves within the file system; the birth
/// time (statx `STATX_BTIME`, stored in the inode on ext4, xfs, btrfs, tmpfs) tells a
/// file from a later one that got the freed inode number (ext4 reuses them quickly). Where
/// the birth time is not reported the inode number alone decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub ino: u64,
    /// Birth time (seconds, nanoseconds), if the file system reports it.
    pub born: Option<(i64, u32)>,
}

/// Whether two identities can be the same file (unknown parts do not differ).
fn same_file(a: Option<FileId>, b: Option<FileId>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            a.ino == b.ino && (a.born.is_none() || b.born.is_none() || a.born == b.born)
        }
        _ => true,
    }
}

/// A failed folder operation.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct FolderError {
    /// What was attempted, naming the file and where it is.
    pub what: String,
    /// Retrying will not help without someone acting (a missing remote folder, no
    /// permission): follows the connector's `on_failure`.
    pub permanent: bool,
    #[source]
    pub source: std::io::Error,
}

impl FolderError {
    pub fn transient(what: impl Into<String>, source: std::io::Error) -> FolderError {
        FolderError {
            what: what.into(),
            permanent: false,
            source,
        }
    }
}

impl From<FolderError> for DeliveryError {
    fn from(e: FolderError) -> Self {
        if e.permanent {
            DeliveryError::Permanent(e.to_string())
        } else {
            DeliveryError::transient(e.to_string())
        }
    }
}

/// The checkpoint form the release before intents wrote for a kind of folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyForm {
    None,
    /// `FileMark { path, dev, ino, len }` of the file target.
    FileMark,
    /// `{ file, len }` of the SFTP target (`file` the remote path).
    SftpFile,
}

/// The file operations a drop is made of. Names are plain file names in the folder.
#[async_trait::async_trait]
pub trait Folder: Send {
    /// Where the folder is, for messages (`/srv/out`, `sftp [host]:22 /drop`).
    fn location(&self) -> String;
    /// The name in this folder of a path a legacy checkpoint stored, if it is in it.
    fn name_in(&self, path: &str) -> Option<String>;
    /// Which legacy checkpoint form this kind of folder wrote.
    fn legacy_form(&self) -> LegacyForm {
        LegacyForm::None
    }
    /// Length and identity of `name`; `None` if there is no such file.
    async fn stat(&mut self, name: &str) -> Result<Option<Stat>, FolderError>;
    /// Up to `len` bytes of `name` from `offset` (fewer at the end of the file).
    async fn read(&mut self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, FolderError>;
    /// Cuts `name` to `len` bytes (made durable by the next `write_at` of that file).
    async fn truncate(&mut self, name: &str, len: u64) -> Result<(), FolderError>;
    /// Writes `bytes` at `offset` of the existing file `name` and syncs its data and length.
    async fn write_at(&mut self, name: &str, offset: u64, bytes: &[u8]) -> Result<(), FolderError>;
    /// Creates `name` empty; `false` if it exists. The name is durable after `sync_names`.
    async fn create_new(&mut self, name: &str) -> Result<bool, FolderError>;
    /// Creates or empties `name`, writes `bytes` and syncs them (temp files).
    async fn write_new(&mut self, name: &str, bytes: &[u8]) -> Result<(), FolderError>;
    /// Renames `from` to `to` unless `to` exists (`false` then, nothing changed).
    async fn rename_new(&mut self, from: &str, to: &str) -> Result<bool, FolderError>;
    /// Removes `name` if it exists.
    async fn remove(&mut self, name: &str) -> Result<(), FolderError>;
    /// Makes the names created, renamed or removed so far survive a power cut (fsync of
    /// the folder).
    async fn sync_names(&mut self) -> Result<(), FolderError>;
}

/// `deliver.mode` of a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Append,
    Batch,
}

/// The validated `file:` and `mode:` of a drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropSpec {
    pub template: String,
    pub mode: Mode,
}

impl DropSpec {
    /// Validates a drop's file template and mode; every problem, not just the first.
    pub fn parse(file: &str, mode: Option<&str>) -> Result<DropSpec, Vec<String>> {
        let mut errs = Vec::new();
        if let Err(e) = check_file_template(file) {
            errs.push(e);
        }
        let mode = match mode {
            None | Some("append") => Mode::Append,
            Some("batch") => Mode::Batch,
            Some(other) => {
                errs.push(format!("mode must be append or batch, not {other:?}"));
                Mode::Append
            }
        };
        if mode == Mode::Batch && !file.contains("{{seq}}") {
            errs.push(format!(
                "mode batch writes one file per batch, so file {file:?} must contain {{{{seq}}}} (else a batch would replace the previous one), e.g. permit_{{{{seq}}}}.txt"
            ));
        }
        if errs.is_empty() {
            Ok(DropSpec {
                template: file.to_string(),
                mode,
            })
        } else {
            Err(errs)
        }
    }
}

/// Where the records of an append go: see the module doc for what it promises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub name: String,
    pub id: Option<FileId>,
    pub len: u64,
    /// An intent (committed before the write) rather than the mark of a committed delivery:
    /// a retry writes here whatever the template names by then.
    pub pending: bool,
}

/// A batch file's intent: its name and the time its header and trailer carry, for exactly
/// the seqs `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchIntent {
    pub name: String,
    pub at_micros: i64,
    pub first: Seq,
    pub last: Seq,
}

/// A drop checkpoint. Stored as [`CHECKPOINT_FORMAT`] followed by postcard; byte 0 = 1 is
/// the form before intents (decoded for upgrades, see [`LegacyForm`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DropState {
    Append(Mark),
    Batch(BatchIntent),
}

/// Leading byte of the drop checkpoints this build writes.
pub const CHECKPOINT_FORMAT: u8 = 2;
/// Leading byte of the checkpoints of the release before intents (`schema::encode` v1).
const LEGACY_FORMAT: u8 = 1;

impl DropState {
    pub fn encode(&self) -> Checkpoint {
        let mut out = vec![CHECKPOINT_FORMAT];
        // Serializing these plain structs (strings, integers, options) into a Vec cannot
        // fail, so the error arm is unreachable.
        out.extend(postcard::to_stdvec(self).expect("postcard encodes plain structs into a Vec"));
        out
    }
}

#[derive(Deserialize)]
struct LegacyFileMark {
    path: std::path::PathBuf,
    #[allow(dead_code)] // the device number is exactly what must not identify a file
    dev: u64,
    ino: u64,
    len: u64,
}

#[derive(Deserialize)]
struct LegacySftpCheckpoint {
    file: String,
    len: u64,
}

/// A checkpoint this build cannot read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("drop checkpoint is damaged: {0}")]
    Damaged(#[source] postcard::Error),
    #[error(
        "drop checkpoint has format {0}; this build reads {LEGACY_FORMAT} and {CHECKPOINT_FORMAT}"
    )]
    UnknownFormat(u8),
}

/// Decodes a checkpoint of any release; `Ok(None)` for an empty one (nothing delivered
/// yet, or a batch committed) and for a legacy mark of a file outside `folder`.
pub fn decode_checkpoint(
    bytes: &[u8],
    folder: &dyn Folder,
) -> Result<Option<DropState>, CheckpointError> {
    let bad = CheckpointError::Damaged;
    match bytes.split_first() {
        None => Ok(None),
        Some((&CHECKPOINT_FORMAT, rest)) => postcard::from_bytes(rest).map(Some).map_err(bad),
        Some((&LEGACY_FORMAT, rest)) => {
            let (name, id, len) = match folder.legacy_form() {
                LegacyForm::FileMark => {
                    let m: LegacyFileMark = postcard::from_bytes(rest).map_err(bad)?;
                    let id = FileId {
                        ino: m.ino,
                        born: None,
                    };
                    (folder.name_in(&m.path.to_string_lossy()), Some(id), m.len)
                }
                LegacyForm::SftpFile => {
                    let c: LegacySftpCheckpoint = postcard::from_bytes(rest).map_err(bad)?;
                    (folder.name_in(&c.file), None, c.len)
                }
                LegacyForm::None => return Ok(None),
            };
            Ok(name.map(|name| {
                DropState::Append(Mark {
                    name,
                    id,
                    len,
                    pending: false,
                })
            }))
        }
        Some((&v, _)) => Err(CheckpointError::UnknownFormat(v)),
    }
}

/// How a file compares with the mark that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fit {
    /// Same file, same length.
    Exact,
    /// Same file, longer: an uncommitted tail of ours.
    Longer,
    /// Not the file the mark describes any more (why, for the log).
    Changed(&'static str),
}

impl Fit {
    fn of(mark: &Mark, stat: Option<&Stat>) -> Fit {
        match stat {
            None => Fit::Changed("is gone (moved away or deleted)"),
            Some(s) if !same_file(mark.id, s.id) => Fit::Changed("was replaced by another file"),
            Some(s) if s.len < mark.len => {
                Fit::Changed("is shorter than what was delivered (emptied or cut by someone else)")
            }
            Some(s) if s.len > mark.len => Fit::Longer,
            Some(_) => Fit::Exact,
        }
    }
}

/// `permit_1.txt` -> `permit_1.replay-9.txt`: the name of a replayed batch ending at `last`.
pub fn replay_name(name: &str, last: u64) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.replay-{last}.{ext}"),
        _ => format!("{name}.replay-{last}"),
    }
}

/// The hidden temp name a batch file is written under before its rename.
pub fn temp_name(name: &str) -> String {
    format!(".{name}{TEMP_SUFFIX}")
}

/// One connector's drop: the protocol of the module doc over a [`Folder`].
pub struct DropTarget<F> {
    folder: F,
    spec: DropSpec,
    connector: String,
    /// Header/trailer records of batch files and the CSV column row.
    mapping: Option<Arc<Mapping>>,
    /// A checkpoint past which this process knows no uncommitted bytes of ours are (the
    /// last delivery returned it, or failed and cut back what it wrote). Anything else, in
    /// particular right after a start, may have an interrupted write behind it.
    clean: Option<Checkpoint>,
    /// What `prepare` saw of the file when it proposed no intent (the common case), so
    /// `deliver`, which follows at once, need not look again.
    seen: Option<(Checkpoint, Stat)>,
}

impl<F: Folder> std::fmt::Debug for DropTarget<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropTarget")
            .field("folder", &self.folder.location())
            .field("spec", &self.spec)
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

impl<F: Folder> DropTarget<F> {
    /// A drop into `folder`.
    pub fn over(folder: F, spec: DropSpec, connector: &str, mapping: Option<Arc<Mapping>>) -> Self {
        DropTarget {
            folder,
            spec,
            connector: connector.to_string(),
            mapping,
            clean: None,
            seen: None,
        }
    }

    /// Lets batch files carry the map's `header:` / `trailer:` records and new CSV files
    /// their column row.
    pub fn with_mapping(mut self, mapping: Arc<Mapping>) -> Self {
        self.mapping = Some(mapping);
        self
    }

    pub fn folder(&self) -> &F {
        &self.folder
    }

    pub fn folder_mut(&mut self) -> &mut F {
        &mut self.folder
    }

    fn decode(&self, cp: &[u8]) -> Result<Option<DropState>, DeliveryError> {
        decode_checkpoint(cp, &self.folder)
            .map_err(|e| DeliveryError::Permanent(format!("{}: {e}", self.folder.location())))
    }

    fn decode_mark(&self, cp: &[u8]) -> Result<Option<Mark>, DeliveryError> {
        Ok(match self.decode(cp)? {
            Some(DropState::Append(m)) => Some(m),
            _ => None,
        })
    }

    /// The name the template gives this delivery now.
    fn name_now(&self, d: &Delivery<'_>) -> String {
        super::file_name(&self.spec.template, d.connector, d.first_seq(), &d.now)
    }

    async fn prepare_append(
        &mut self,
        d: &Delivery<'_>,
        cp: &[u8],
    ) -> Result<Prepared, DeliveryError> {
        let start = self.decode_mark(cp)?;
        let wanted = self.name_now(d);
        let mut ambiguous = false;
        if let Some(m) = &start {
            let stat = self.folder.stat(&m.name).await?;
            let fit = Fit::of(m, stat.as_ref());
            match (&fit, stat) {
                (Fit::Longer, Some(stat)) => {
                    // An attempt wrote there and did not commit: it is completed there.
                    self.seen = Some((cp.to_vec(), stat));
                    return Ok(Prepared::default());
                }
                (Fit::Exact, Some(stat)) if m.pending || m.name == wanted => {
                    self.seen = Some((cp.to_vec(), stat));
                    return Ok(Prepared::default());
                }
                (Fit::Changed(why), _) => {
                    ambiguous = self.clean.as_deref() != Some(cp);
                    if ambiguous {
                        tracing::warn!(connector = %self.connector, folder = %self.folder.location(), file = %m.name, "the file {why} while an uncommitted write may have been in it; its records are delivered again (at least once)");
                    } else {
                        tracing::info!(connector = %self.connector, folder = %self.folder.location(), file = %m.name, "the file {why}; starting anew");
                    }
                }
                _ => {}
            }
        }
        let stat = self.stat_or_create(&wanted).await?;
        let intent = DropState::Append(Mark {
            name: wanted,
            id: stat.id,
            len: stat.len,
            pending: true,
        })
        .encode();
        // Not kept for `deliver`: the intent's commit takes a while, and a file emptied
        // meanwhile must not get records written past its new end.
        self.seen = None;
        Ok(Prepared {
            intent: Some(intent),
            ambiguous,
        })
    }

    /// The stat of `name`, created empty (and its name synced) if it does not exist.
    async fn stat_or_create(&mut self, name: &str) -> Result<Stat, DeliveryError> {
        for _ in 0..3 {
            if let Some(stat) = self.folder.stat(name).await? {
                return Ok(stat);
            }
            if self.folder.create_new(name).await? {
                self.folder.sync_names().await?;
            }
        }
        Err(DeliveryError::transient(format!(
            "{}: {name} keeps disappearing right after it is created",
            self.folder.location()
        )))
    }

    async fn deliver_append(
        &mut self,
        d: &Delivery<'_>,
        cp: &[u8],
    ) -> Result<Checkpoint, DeliveryError> {
        let Some(mark) = self.decode_mark(cp)? else {
            return Err(DeliveryError::Permanent(format!(
                "{}: an append delivery needs a checkpoint naming its file (prepare comes first)",
                self.folder.location()
            )));
        };
        let stat = match self.seen.take() {
            Some((seen_cp, stat)) if seen_cp == cp => Some(stat),
            _ => self.folder.stat(&mark.name).await?,
        };
        let stat = match (Fit::of(&mark, stat.as_ref()), stat) {
            (Fit::Exact | Fit::Longer, Some(stat)) => stat,
            (fit, _) => {
                return Err(DeliveryError::transient(format!(
                    "{}: {} changed since this delivery was planned ({fit:?}); it is planned again",
                    self.folder.location(),
                    mark.name
                )));
            }
        };
        let mut bytes = Vec::new();
        if mark.len == 0 {
            if let Some(m) = &self.mapping {
                bytes = m
                    .csv_header_row()
                    .map_err(|e| DeliveryError::Permanent(format!("CSV header: {e}")))?;
            }
        }
        bytes.reserve(d.items.iter().map(|(_, r)| r.bytes.len()).sum());
        for (_, r) in d.items {
            bytes.extend_from_slice(&r.bytes);
        }
        self.clean = None;
        if stat.len > mark.len {
            tracing::warn!(connector = %self.connector, folder = %self.folder.location(), file = %mark.name, committed = mark.len, found = stat.len, "removing the uncommitted tail of an interrupted delivery");
            self.folder.truncate(&mark.name, mark.len).await?;
        }
        if let Err(e) = self.folder.write_at(&mark.name, mark.len, &bytes).await {
            // Cut back what a failed write left at once: no partial record stays in the
            // file, not even while the disk stays full, and the space comes back.
            if self.folder.truncate(&mark.name, mark.len).await.is_ok() {
                self.clean = Some(cp.to_vec());
            }
            return Err(e.into());
        }
        let next = DropState::Append(Mark {
            name: mark.name,
            id: stat.id,
            len: mark.len + bytes.len() as u64,
            pending: false,
        })
        .encode();
        self.clean = Some(next.clone());
        Ok(next)
    }

    fn batch_of(&self, d: &Delivery<'_>, cp: &[u8]) -> Result<Option<BatchIntent>, DeliveryError> {
        Ok(match self.decode(cp)? {
            Some(DropState::Batch(b)) if b.first == d.first_seq() && b.last == d.last_seq() => {
                Some(b)
            }
            _ => None,
        })
    }

    async fn prepare_batch(
        &mut self,
        d: &Delivery<'_>,
        cp: &[u8],
    ) -> Result<Prepared, DeliveryError> {
        if let Some(b) = self.batch_of(d, cp)? {
            // A retry of this batch. If an attempt may have renamed it into place and it is
            // gone, the legacy side may have taken it: it is written again (at least once).
            let ambiguous = self.clean.as_deref() != Some(cp)
                && self.folder.stat(&b.name).await?.is_none()
                && self.folder.stat(&temp_name(&b.name)).await?.is_none();
            if ambiguous {
                tracing::warn!(connector = %self.connector, folder = %self.folder.location(), file = %b.name, "an interrupted attempt may have renamed this batch file into place, and it is gone; it is written again (at least once)");
            }
            return Ok(Prepared {
                intent: None,
                ambiguous,
            });
        }
        let mut name = self.name_now(d);
        if d.replay {
            // The original may still be there: a replay never replaces it.
            name = replay_name(&name, d.last_seq());
        }
        let intent = DropState::Batch(BatchIntent {
            name,
            at_micros: d.now.timestamp_micros(),
            first: d.first_seq(),
            last: d.last_seq(),
        });
        Ok(Prepared {
            intent: Some(intent.encode()),
            ambiguous: false,
        })
    }

    fn batch_bytes(&self, d: &Delivery<'_>, at: &DateTime<Tz>) -> Result<Vec<u8>, DeliveryError> {
        let mut bytes = Vec::new();
        if let Some(m) = &self.mapping {
            bytes.extend(
                m.batch_header(d.items, *at)
                    .map_err(|e| DeliveryError::Permanent(format!("batch header: {e}")))?,
            );
        }
        bytes.reserve(d.items.iter().map(|(_, r)| r.bytes.len()).sum());
        for (_, r) in d.items {
            bytes.extend_from_slice(&r.bytes);
        }
        if let Some(m) = &self.mapping {
            bytes.extend(
                m.batch_trailer(d.items, *at)
                    .map_err(|e| DeliveryError::Permanent(format!("batch trailer: {e}")))?,
            );
        }
        Ok(bytes)
    }

    async fn deliver_batch(
        &mut self,
        d: &Delivery<'_>,
        cp: &[u8],
    ) -> Result<Checkpoint, DeliveryError> {
        let Some(b) = self.batch_of(d, cp)? else {
            return Err(DeliveryError::Permanent(format!(
                "{}: a batch delivery needs its intent (prepare comes first)",
                self.folder.location()
            )));
        };
        let tz = d.now.timezone();
        let at = Utc
            .timestamp_micros(b.at_micros)
            .single()
            .map_or(d.now, |t| t.with_timezone(&tz));
        let bytes = self.batch_bytes(d, &at)?;
        let tmp = temp_name(&b.name);
        if let Some(stat) = self.folder.stat(&b.name).await? {
            return self.already_there(&b.name, stat, &bytes, &tmp).await;
        }
        // Until the rename is attempted, nothing can have reached the final name.
        self.clean = Some(cp.to_vec());
        self.folder.write_new(&tmp, &bytes).await?;
        self.clean = None;
        if !self.folder.rename_new(&tmp, &b.name).await? {
            self.clean = Some(cp.to_vec());
            let stat = self.folder.stat(&b.name).await?.ok_or_else(|| {
                DeliveryError::transient(format!(
                    "{}: {} exists and does not: retrying",
                    self.folder.location(),
                    b.name
                ))
            })?;
            return self.already_there(&b.name, stat, &bytes, &tmp).await;
        }
        self.folder.sync_names().await?;
        self.clean = Some(Vec::new());
        Ok(Vec::new())
    }

    /// A file is already under the batch's name: this batch if it holds exactly its bytes.
    async fn already_there(
        &mut self,
        name: &str,
        stat: Stat,
        bytes: &[u8],
        tmp: &str,
    ) -> Result<Checkpoint, DeliveryError> {
        let same =
            stat.len == bytes.len() as u64 && self.folder.read(name, 0, stat.len).await? == bytes;
        if !same {
            return Err(DeliveryError::Permanent(format!(
                "{}: batch file {name} is already there with other content; ESS never replaces a file: move it away and this batch is written",
                self.folder.location()
            )));
        }
        // Renamed by an attempt whose commit did not happen: done. Make its name durable
        // (that attempt may not have synced it) and drop a temp copy a link-based rename
        // may have left.
        if self.folder.stat(tmp).await?.is_some() {
            self.folder.remove(tmp).await?;
        }
        self.folder.sync_names().await?;
        self.clean = Some(Vec::new());
        Ok(Vec::new())
    }
}

#[async_trait::async_trait]
impl<F: Folder + 'static> Target for DropTarget<F> {
    async fn prepare(&mut self, d: &Delivery<'_>, cp: &[u8]) -> Result<Prepared, DeliveryError> {
        self.seen = None;
        if d.items.is_empty() {
            return Ok(Prepared::default());
        }
        match self.spec.mode {
            Mode::Append => self.prepare_append(d, cp).await,
            Mode::Batch => self.prepare_batch(d, cp).await,
        }
    }

    async fn deliver(&mut self, d: &Delivery<'_>, cp: &[u8]) -> Result<Checkpoint, DeliveryError> {
        if d.items.is_empty() {
            return Ok(cp.to_vec());
        }
        match self.spec.mode {
            Mode::Append => self.deliver_append(d, cp).await,
            Mode::Batch => self.deliver_batch(d, cp).await,
        }
    }

    fn pins_batches(&self) -> bool {
        self.spec.mode == Mode::Batch
    }

    /// An append's mark finds what attempts after it appended (same file, longer) and cuts
    /// it before writing those records again: see the module's "Append".
    fn repairs_lost_commits(&self) -> bool {
        self.spec.mode == Mode::Append
    }

    /// An append carries up to 8,192 records in one write and one fsync (a backlog drains
    /// at the disk's rate, not its fsync latency); a batch file keeps the default size.
    fn max_batch(&self) -> usize {
        match self.spec.mode {
            Mode::Append => APPEND_BATCH,
            Mode::Batch => 1000,
        }
    }
}

/// Records per append delivery when the map sets no `batch.max_events`.
const APPEND_BATCH: usize = 8192;

#[cfg(test)]
mod tests;
