//! Fault injection for tests: storage that loses what was never synced when the power is
//! cut, and that fails on command the way a full or failing disk does. The daemon never
//! uses any of this; it lives in the library so unit tests and `tests/` share one model of
//! a disk instead of each writing its own.
//!
//! The model: every `write` and `set_len` lands in a *volatile* view (what reads see) and
//! is remembered as pending; `sync_data` makes the pending operations *durable*. A power
//! cut ([`PowerCut::cut`]) throws the volatile view away. What survives of the pending
//! operations depends on the [`CutMode`]: nothing (a clean model of a write cache), or a
//! random subset of them, each torn at a random 512-byte sector boundary (what a real disk
//! with a volatile cache may leave). Only the durable image plus the survivors is what a
//! "reboot" ([`PowerCut::image`]) opens again.

use std::fmt;
use std::io;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a power cut leaves of the writes that were not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// Every unsynced write is lost.
    Forget,
    /// Each unsynced write independently survives whole, survives torn at a sector
    /// boundary, or is lost, drawn from this seed.
    Scramble(u64),
}

/// A fault a disk can show on command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// `ENOSPC` on every write and length change (a full disk).
    NoSpace,
    /// `EIO` on every sync (a failing disk).
    SyncFails,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Disk {
    /// What survives a power cut.
    durable: Vec<u8>,
    /// What reads see: `durable` plus the pending operations.
    volatile: Vec<u8>,
    pending: Vec<Pending>,
    /// After a cut the old handle is dead: every operation fails, as in a dead process.
    dead: bool,
    fault: Option<DiskFault>,
    n_syncs: u64,
    /// Operations the injected fault refused.
    n_refused: u64,
}

fn apply(image: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[*offset as usize..end].copy_from_slice(data);
        }
        Pending::SetLen(len) => image.resize(*len as usize, 0),
    }
}

/// The controller of one simulated disk: hand out [`PowerCut::backend`] to redb, then
/// [`PowerCut::cut`] the power and [`PowerCut::image`] what a restart would find.
#[derive(Clone, Default)]
pub struct PowerCut {
    disk: Arc<Mutex<Disk>>,
}

impl fmt::Debug for PowerCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.lock();
        f.debug_struct("PowerCut")
            .field("durable_len", &d.durable.len())
            .field("pending", &d.pending.len())
            .field("dead", &d.dead)
            .finish()
    }
}

impl PowerCut {
    /// An empty disk.
    pub fn new() -> PowerCut {
        PowerCut::default()
    }

    /// A disk whose durable content is `image` (what a restart after a cut finds).
    pub fn from_image(image: Vec<u8>) -> PowerCut {
        let disk = Disk {
            volatile: image.clone(),
            durable: image,
            ..Disk::default()
        };
        PowerCut {
            disk: Arc::new(Mutex::new(disk)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // A test thread that panicked while holding the lock leaves consistent data: every
        // operation below completes or does nothing before it could panic.
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A redb backend on this disk.
    pub fn backend(&self) -> PowerCutBackend {
        PowerCutBackend {
            disk: self.disk.clone(),
        }
    }

    /// Cuts the power: the handle in use dies (every later operation fails), and the disk
    /// keeps what `mode` lets survive of the unsynced writes.
    pub fn cut(&self, mode: CutMode) {
        let mut d = self.lock();
        let pending = std::mem::take(&mut d.pending);
        let mut image = d.durable.clone();
        if let CutMode::Scramble(seed) = mode {
            let mut rng = StdRng::seed_from_u64(seed);
            for op in &pending {
                match (rng.random_range(0..3u8), op) {
                    (0, _) => {}
                    (1, op) => apply(&mut image, op),
                    (_, Pending::Write { offset, data }) => {
                        let sectors = data.len().div_ceil(512);
                        let keep = rng.random_range(0..=sectors) * 512;
                        let torn = Pending::Write {
                            offset: *offset,
                            data: data[..keep.min(data.len())].to_vec(),
                        };
                        apply(&mut image, &torn);
                    }
                    (_, op) => apply(&mut image, op),
                }
            }
        }
        d.durable = image.clone();
        d.volatile = image;
        d.dead = true;
    }

    /// What a restart after the cut finds on the disk.
    pub fn image(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// Makes the disk fail as `fault` says from now on (`None`: heal it).
    pub fn inject(&self, fault: Option<DiskFault>) {
        self.lock().fault = fault;
    }

    /// How many times the data was synced so far.
    pub fn n_syncs(&self) -> u64 {
        self.lock().n_syncs
    }

    /// How many operations the injected fault has refused so far.
    pub fn n_refused(&self) -> u64 {
        self.lock().n_refused
    }
}

/// The [`redb::StorageBackend`] side of a [`PowerCut`] disk.
#[derive(Debug)]
pub struct PowerCutBackend {
    disk: Arc<Mutex<Disk>>,
}

impl PowerCutBackend {
    fn lock(&self) -> io::Result<MutexGuard<'_, Disk>> {
        let d = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        if d.dead {
            return Err(io::Error::other("power cut: this handle is gone"));
        }
        Ok(d)
    }
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl redb::StorageBackend for PowerCutBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock()?.volatile.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let d = self.lock()?;
        let end = offset as usize + out.len();
        if end > d.volatile.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.copy_from_slice(&d.volatile[offset as usize..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut d = self.lock()?;
        if d.fault == Some(DiskFault::NoSpace) && len > d.volatile.len() as u64 {
            d.n_refused += 1;
            return Err(no_space());
        }
        let op = Pending::SetLen(len);
        apply(&mut d.volatile, &op);
        d.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut d = self.lock()?;
        if d.fault == Some(DiskFault::SyncFails) {
            d.n_refused += 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let pending = std::mem::take(&mut d.pending);
        for op in &pending {
            let mut durable = std::mem::take(&mut d.durable);
            apply(&mut durable, op);
            d.durable = durable;
        }
        d.n_syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.lock()?;
        if d.fault == Some(DiskFault::NoSpace) {
            d.n_refused += 1;
            return Err(no_space());
        }
        let op = Pending::Write {
            offset,
            data: data.to_vec(),
        };
        apply(&mut d.volatile, &op);
        d.pending.push(op);
        Ok(())
    }

    // One process holds the simulated disk, so every byte-range lock is granted: that lets
    // every concurrency mode run on it (the shared ones lock byte ranges), with the commits
    // each makes.
    fn try_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, redb::BackendError> {
        Ok(true)
    }

    fn try_lock_shared_range(
        &self,
        _: Bound<u64>,
        _: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        Ok(true)
    }

    fn lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), redb::BackendError> {
        Ok(())
    }

    fn lock_shared_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), redb::BackendError> {
        Ok(())
    }

    fn unlock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), redb::BackendError> {
        Ok(())
    }

    fn query_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, redb::BackendError> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    fn open(disk: &PowerCut) -> Database {
        Database::builder()
            .create_with_backend(disk.backend())
            .unwrap()
    }

    /// A committed (durable) transaction survives every kind of cut; one that never
    /// committed leaves no trace, and the database opens again each time.
    #[test]
    fn committed_survives_and_uncommitted_vanishes_whatever_the_cut_leaves() {
        for mode in [CutMode::Forget]
            .into_iter()
            .chain((0..20).map(CutMode::Scramble))
        {
            let disk = PowerCut::new();
            let db = open(&disk);
            let tx = db.begin_write().unwrap();
            tx.open_table(T).unwrap().insert(1, 10).unwrap();
            tx.commit().unwrap();
            let mut tx = db.begin_write().unwrap();
            tx.set_durability(redb::Durability::None).unwrap();
            tx.open_table(T).unwrap().insert(2, 20).unwrap();
            tx.commit().unwrap();
            disk.cut(mode);
            drop(db);

            let after = PowerCut::from_image(disk.image());
            let db = open(&after);
            let tx = db.begin_read().unwrap();
            let t = tx.open_table(T).unwrap();
            assert_eq!(t.get(1).unwrap().unwrap().value(), 10, "{mode:?}");
            assert!(t.get(2).unwrap().is_none(), "{mode:?}");
        }
    }

    #[test]
    fn a_full_disk_fails_writes_until_it_is_healed() {
        let disk = PowerCut::new();
        let db = open(&disk);
        disk.inject(Some(DiskFault::NoSpace));
        let tx = db.begin_write().unwrap();
        let insert = tx
            .open_table(T)
            .and_then(|mut t| t.insert(1, 1).map(|_| ()).map_err(Into::into));
        let failed = insert.is_err() || tx.commit().is_err();
        assert!(failed, "a write on a full disk must fail");
    }
}
