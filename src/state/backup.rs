//! `ess backup`: a consistent copy of `ess.redb` while the daemon runs. Every table is
//! copied inside one read transaction (one committed state: feed, cursors, retries, dead
//! letters, actions together) to `.NAME.partial`, fsynced, then hard-linked into place.
//!
//! Architecture invariant: a backup never overwrites a file, never leaves a file that looks
//! whole unless it is, and never writes the live database. Every table of the file is
//! copied: a table this build does not know makes the backup fail instead of leaving it out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
};

use super::Reader;
use super::reader::BackupSource;
use crate::feed::guarded;
use crate::feed::schema::{
    ACTIONS, CURSORS, DEAD, ERRORS, EVENTS, INTENTS, KEYS, META, PAUSES, REQUEUE, RETRIES, SETTLED,
    SOURCE_BAD, SOURCE_FILES, SOURCE_TOTALS, TABLES,
};

/// Rows written per transaction of the copy.
const CHUNK: usize = 50_000;

/// Why a backup was not written.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup path {0} must be absolute")]
    Relative(PathBuf),
    #[error("backup path {0} needs a file name")]
    NoName(PathBuf),
    #[error("{0} exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error(
        "{partial} exists: a backup to {path} is running or was cut short (remove it if none runs)"
    )]
    Partial { partial: PathBuf, path: PathBuf },
    #[error(
        "the database has a table {0:?} this build does not know; a backup without it would not be whole (use the release that wrote it)"
    )]
    UnknownTable(String),
    #[error("backup to {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backup to {path} failed")]
    Db {
        path: PathBuf,
        #[source]
        source: crate::feed::Error,
    },
}

impl BackupError {
    /// The operator's mistake (exit code 2), not a failure.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            BackupError::Relative(_)
                | BackupError::NoName(_)
                | BackupError::Exists(_)
                | BackupError::Partial { .. }
        )
    }
}

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupReport {
    pub path: PathBuf,
    /// Rows copied per table.
    pub tables: BTreeMap<String, u64>,
    pub bytes: u64,
}

impl Reader {
    /// Writes a consistent copy of the database to the new file `path` (absolute).
    pub fn backup(&self, path: &Path) -> Result<BackupReport, BackupError> {
        if !path.is_absolute() {
            return Err(BackupError::Relative(path.to_path_buf()));
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Err(BackupError::NoName(path.to_path_buf()));
        };
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(BackupError::Exists(path.to_path_buf()));
        }
        // Written under a temp name and linked into place only when complete, so an
        // interrupted backup (error, shutdown, crash) never leaves a file that looks whole.
        let partial = path.with_file_name(format!(".{name}.partial"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => BackupError::Partial {
                    partial: partial.clone(),
                    path: path.to_path_buf(),
                },
                _ => BackupError::Io {
                    path: path.to_path_buf(),
                    source: e,
                },
            })?;
        let db_err = |source| BackupError::Db {
            path: path.to_path_buf(),
            source,
        };
        let tx = match self.backup_source() {
            BackupSource::Shared(db) => db.begin_read(),
            BackupSource::ReadOnly(db) => db.begin_read(),
        }
        .map_err(|e| db_err(e.into()));
        let written = tx
            .and_then(|tx| write(&tx, file, &partial, path))
            .and_then(|tables| publish(&partial, path).map(|()| tables));
        let _ = std::fs::remove_file(&partial);
        let tables = written?;
        let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
        Ok(BackupReport {
            path: path.to_path_buf(),
            tables,
            bytes,
        })
    }
}

/// Copies every table of `src` into the new database in `file`.
fn write(
    src: &ReadTransaction,
    file: std::fs::File,
    partial: &Path,
    path: &Path,
) -> Result<BTreeMap<String, u64>, BackupError> {
    let db_err = |source: crate::feed::Error| BackupError::Db {
        path: path.to_path_buf(),
        source,
    };
    // redb panics on some damaged pages (its table of tables, a table's tree): contained
    // by the feed's guard and reported as damage, as `ess verify` does.
    let present = guarded("table of tables", || {
        Ok(src
            .list_tables()?
            .map(|t| t.name().to_owned())
            .collect::<Vec<_>>())
    })
    .map_err(db_err)?;
    if let Some(t) = present.into_iter().find(|t| !TABLES.contains(&t.as_str())) {
        return Err(BackupError::UnknownTable(t));
    }
    let backend = redb::backends::FileBackend::new(file).map_err(|e| db_err(e.into()))?;
    let dst = Database::builder()
        .create_with_backend(backend)
        .map_err(|e| db_err(e.into()))?;
    let mut tables = BTreeMap::new();
    let mut copy =
        |def: &dyn TableHandle, n: Result<u64, crate::feed::Error>| -> Result<(), BackupError> {
            tables.insert(def.name().to_owned(), n.map_err(db_err)?);
            Ok(())
        };
    // One line per table of `schema::TABLES` (a test checks the two lists agree).
    copy(&EVENTS, copy_table(src, &dst, EVENTS))?;
    copy(&KEYS, copy_table(src, &dst, KEYS))?;
    copy(&META, copy_table(src, &dst, META))?;
    copy(&CURSORS, copy_table(src, &dst, CURSORS))?;
    copy(&RETRIES, copy_table(src, &dst, RETRIES))?;
    copy(&DEAD, copy_table(src, &dst, DEAD))?;
    copy(&REQUEUE, copy_table(src, &dst, REQUEUE))?;
    copy(&PAUSES, copy_table(src, &dst, PAUSES))?;
    copy(&SETTLED, copy_table(src, &dst, SETTLED))?;
    copy(&ACTIONS, copy_table(src, &dst, ACTIONS))?;
    copy(&ERRORS, copy_table(src, &dst, ERRORS))?;
    copy(&INTENTS, copy_table(src, &dst, INTENTS))?;
    copy(&SOURCE_FILES, copy_table(src, &dst, SOURCE_FILES))?;
    copy(&SOURCE_BAD, copy_table(src, &dst, SOURCE_BAD))?;
    copy(&SOURCE_TOTALS, copy_table(src, &dst, SOURCE_TOTALS))?;
    drop(dst);
    // redb's commits are durable already; this covers the file's metadata too.
    std::fs::File::open(partial)
        .and_then(|f| f.sync_all())
        .map_err(|source| BackupError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(tables)
}

/// Copies one table from `src` into `dst` in chunks; returns the rows copied. A table
/// missing in the source is created empty in the copy.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &ReadTransaction,
    dst: &Database,
    def: TableDefinition<K, V>,
) -> Result<u64, crate::feed::Error> {
    guarded(crate::ledger::table_name(&def), || copy_rows(src, dst, def))
}

fn copy_rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &ReadTransaction,
    dst: &Database,
    def: TableDefinition<K, V>,
) -> Result<u64, crate::feed::Error> {
    let table = match src.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            let tx = dst.begin_write()?;
            tx.open_table(def)?;
            tx.commit()?;
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
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
                if chunk == CHUNK {
                    break;
                }
            }
        }
        tx.commit()?;
        n += chunk as u64;
        if chunk < CHUNK {
            return Ok(n);
        }
    }
}

/// Gives the complete backup its name: a hard link, which (unlike rename) fails rather
/// than replace a file that appeared meanwhile; then makes the name durable.
fn publish(partial: &Path, path: &Path) -> Result<(), BackupError> {
    let io = |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::hard_link(partial, path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(BackupError::Exists(path.to_path_buf()));
        }
        Err(e) => return Err(io(e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
    }
    Ok(())
}
