//! The database the state module reads: the daemon's open handle, or `ess.redb` opened by
//! a CLI command while no daemon runs (read-only, which works beside a live daemon too).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::ReadOnlyDatabase;

use super::Error;
use super::lag::LagIndex;
use crate::event::{Event, Seq};
use crate::ledger::view::View;

enum Db {
    Shared(crate::feed::Store),
    ReadOnly(ReadOnlyDatabase),
}

/// Read access to feed and ledger, plus the lag index kept between reads.
pub struct Reader {
    db: Db,
    path: PathBuf,
    pub(super) lag: Mutex<LagIndex>,
}

/// Why the CLI could not open the database.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no database at {0} (has `ess serve` run with this config?)")]
    Missing(PathBuf),
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: Error,
    },
}

impl Reader {
    /// The daemon's database; `path` is its file (for its size).
    pub fn shared(db: impl Into<crate::feed::Store>, path: &Path) -> Reader {
        Reader::with(Db::Shared(db.into()), path)
    }

    fn with(db: Db, path: &Path) -> Reader {
        Reader {
            db,
            path: path.to_path_buf(),
            lag: Mutex::new(LagIndex::default()),
        }
    }

    /// Opens `path` for reading, beside a daemon or without one. A file left unclean by a
    /// daemon that died (kill -9, power loss) while none runs now cannot be opened by a
    /// reader; it is opened for writing instead, which repairs it exactly as the next
    /// `ess serve` would (committed data only; redb's recovery is atomic).
    pub fn open_read_only(path: &Path) -> Result<Reader, OpenError> {
        if !path.exists() {
            return Err(OpenError::Missing(path.to_path_buf()));
        }
        let open = |source| OpenError::Open {
            path: path.to_path_buf(),
            source,
        };
        let db = match crate::feed::open_database_read_only(path) {
            Ok(db) => Db::ReadOnly(db),
            Err(_) if needs_repair(path) => {
                Db::Shared(crate::feed::open_database(path).map_err(open)?.into())
            }
            Err(e) => return Err(open(e)),
        };
        Ok(Reader::with(db, path))
    }

    /// Opens `path` for reading and writing (only while no daemon holds it).
    pub fn open_writable(path: &Path) -> Result<Reader, OpenError> {
        if !path.exists() {
            return Err(OpenError::Missing(path.to_path_buf()));
        }
        let db = crate::feed::open_database(path).map_err(|source| OpenError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Reader::with(Db::Shared(db.into()), path))
    }

    /// The handle to write through, when this reader was opened for writing (or is the
    /// daemon's).
    pub fn writable(&self) -> Option<&crate::feed::Store> {
        match &self.db {
            Db::Shared(store) => Some(store),
            Db::ReadOnly(_) => None,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A consistent read of the ledger.
    pub fn view(&self) -> Result<View, Error> {
        match &self.db {
            Db::Shared(db) => View::open(db),
            Db::ReadOnly(db) => View::open(db),
        }
    }

    /// Up to `limit` events with seq > `after`.
    pub fn read_after(&self, after: Seq, limit: usize) -> Result<Vec<Event>, Error> {
        match &self.db {
            Db::Shared(db) => crate::feed::read_after(db, after, limit),
            Db::ReadOnly(db) => crate::feed::read_after(db, after, limit),
        }
    }

    /// The event stored under idempotency key `key`.
    pub fn get_by_key(&self, key: &str) -> Result<Option<Event>, Error> {
        match &self.db {
            Db::Shared(db) => crate::feed::get_by_key(db, key),
            Db::ReadOnly(db) => crate::feed::get_by_key(db, key),
        }
    }

    /// The newest committed seq (0 when empty).
    pub fn last_seq(&self) -> Result<Seq, Error> {
        match &self.db {
            Db::Shared(db) => crate::feed::read_last_seq(db),
            Db::ReadOnly(db) => crate::feed::read_last_seq(db),
        }
    }

    /// The event `seq`, if still in the feed.
    pub fn get(&self, seq: Seq) -> Result<Option<Event>, Error> {
        Ok(self
            .read_after(seq.saturating_sub(1), 1)?
            .into_iter()
            .find(|e| e.seq == seq))
    }

    /// The live database, for a backup (shared handle) or none (read-only handle).
    pub(super) fn backup_source(&self) -> BackupSource<'_> {
        match &self.db {
            Db::Shared(db) => BackupSource::Shared(db),
            Db::ReadOnly(db) => BackupSource::ReadOnly(db),
        }
    }
}

pub(super) enum BackupSource<'a> {
    Shared(&'a crate::feed::Store),
    ReadOnly(&'a ReadOnlyDatabase),
}

/// Whether redb refused a read-only open because the file needs its recovery (so that
/// opening it for writing, with no daemon running, repairs it).
fn needs_repair(path: &Path) -> bool {
    matches!(
        crate::feed::store::builder(0).open_read_only(path),
        Err(redb::DatabaseError::RepairAborted)
    )
}
