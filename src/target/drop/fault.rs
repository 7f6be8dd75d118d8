//! Fault injection for drops, for tests: [`FaultyFolder`] wraps any [`Folder`] (a
//! [`super::mem::MemFolder`], or the SFTP adapter on a real server) and
//!
//! - on command fails the way a disk does: full ([`FaultyFolder::set_free`]: a write
//!   writes what fits, then `ENOSPC`; truncating frees space), a sync that fails after the
//!   write (`EIO`), a write that stops halfway ([`DropFault`]);
//! - loses what was not synced when the power is cut ([`Power`]): the operation under way
//!   lands in part or not at all (with [`CutMode::Scramble`], a random subset of its
//!   512-byte sectors, holes left as zeros), and names created, renamed or removed since
//!   the folder's last `sync_names` vanish (a random prefix of them survives with
//!   `Scramble`), as do truncations not yet made durable by a write of their file.
//!
//! Every operation of the trait that writes syncs at its end, so "not synced" only ever
//! means the operation under way, names, and truncations: exactly what the wrapper can
//! undo on any folder. One [`Power`] can also cut an [`crate::fault::PowerCut`] redb disk
//! ([`PoweredBackend`]): whichever disk operation comes at the armed count cuts both, so
//! the ledger loses its unsynced commits at the same instant as the drop.
//!
//! The daemon never uses any of this.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use crate::fault::CutMode;
use crate::fault::{PowerCut, PowerCutBackend};

use super::{Folder, FolderError, LegacyForm, Stat};
use crate::event::{Event, Record};
use crate::target::{Checkpoint, Delivery, DeliveryError, Target};

/// A failure a drop disk shows on command, until cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropFault {
    /// A write writes all its bytes, then its sync fails with `EIO`.
    SyncFails,
    /// A write stops after half its bytes and fails with `EIO`.
    ShortWrite,
}

/// The power switch shared by the disks of one simulated machine.
#[derive(Clone)]
pub struct Power {
    inner: Arc<PowerState>,
}

struct PowerState {
    ops: AtomicU64,
    cut_at: AtomicU64,
    fired: AtomicBool,
    mode: Mutex<CutMode>,
    redb: Option<PowerCut>,
}

impl std::fmt::Debug for Power {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Power")
            .field("ops", &self.ops())
            .field("fired", &self.fired())
            .finish()
    }
}

/// What one disk operation does when it asks the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tick {
    Go,
    /// The power goes during this operation.
    Cut(CutMode),
    /// The power went before: the machine is off.
    Dead,
}

impl Power {
    /// A switch, also cutting `redb` (the ledger's disk) when it fires.
    pub fn new(redb: Option<PowerCut>) -> Power {
        Power {
            inner: Arc::new(PowerState {
                ops: AtomicU64::new(0),
                cut_at: AtomicU64::new(u64::MAX),
                fired: AtomicBool::new(false),
                mode: Mutex::new(CutMode::Forget),
                redb,
            }),
        }
    }

    /// The power goes during the `nth` disk operation from now (1 = the next one).
    pub fn arm(&self, nth: u64, mode: CutMode) {
        *self.inner.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
        self.inner.ops.store(0, Ordering::SeqCst);
        self.inner.cut_at.store(nth.max(1), Ordering::SeqCst);
    }

    /// Whether the power went.
    pub fn fired(&self) -> bool {
        self.inner.fired.load(Ordering::SeqCst)
    }

    /// Disk operations since the last [`Power::arm`].
    pub fn ops(&self) -> u64 {
        self.inner.ops.load(Ordering::SeqCst)
    }

    fn mode(&self) -> CutMode {
        *self.inner.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tick(&self) -> Tick {
        if self.fired() {
            return Tick::Dead;
        }
        let n = self.inner.ops.fetch_add(1, Ordering::SeqCst) + 1;
        if n != self.inner.cut_at.load(Ordering::SeqCst)
            || self.inner.fired.swap(true, Ordering::SeqCst)
        {
            return if self.fired() { Tick::Dead } else { Tick::Go };
        }
        let mode = self.mode();
        if let Some(disk) = &self.inner.redb {
            disk.cut(mode);
        }
        Tick::Cut(mode)
    }
}

fn power_cut() -> std::io::Error {
    std::io::Error::other("power cut")
}

/// A redb backend on a [`PowerCut`] disk whose writes and syncs count on a [`Power`].
#[derive(Debug)]
pub struct PoweredBackend {
    inner: PowerCutBackend,
    power: Power,
}

impl PoweredBackend {
    /// `disk` must be the one `power` was made with, so a cut from either side cuts it.
    pub fn new(disk: &PowerCut, power: &Power) -> PoweredBackend {
        PoweredBackend {
            inner: disk.backend(),
            power: power.clone(),
        }
    }

    fn go(&self) -> std::io::Result<()> {
        match self.power.tick() {
            Tick::Go => Ok(()),
            Tick::Cut(_) | Tick::Dead => Err(power_cut()),
        }
    }
}

impl redb::StorageBackend for PoweredBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.go()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.go()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.go()?;
        self.inner.write(offset, data)
    }
}

/// A name change not yet made durable by `sync_names`, and how to take it back.
#[derive(Debug, Clone)]
enum NameOp {
    Created(String),
    Renamed { from: String, to: String },
    Removed { name: String, data: Vec<u8> },
}

#[derive(Debug)]
struct State {
    free: Option<u64>,
    fault: Option<DropFault>,
    unsynced: Vec<NameOp>,
    /// (file, length it was cut to, the bytes cut) not yet made durable by a write.
    truncated: Vec<(String, u64, Vec<u8>)>,
    /// The losses of the last cut were applied.
    settled: bool,
    rng: StdRng,
}

struct Shared<F> {
    inner: tokio::sync::Mutex<F>,
    state: Mutex<State>,
    power: Option<Power>,
}

/// A [`Folder`] that fails on command and loses unsynced work on a power cut. Clones share
/// the wrapped folder and the fault state.
pub struct FaultyFolder<F> {
    shared: Arc<Shared<F>>,
}

impl<F> Clone for FaultyFolder<F> {
    fn clone(&self) -> Self {
        FaultyFolder {
            shared: self.shared.clone(),
        }
    }
}

impl<F: Folder> FaultyFolder<F> {
    /// Wraps `inner`; with `power`, its operations count on that switch.
    pub fn new(inner: F, power: Option<Power>) -> FaultyFolder<F> {
        FaultyFolder {
            shared: Arc::new(Shared {
                inner: tokio::sync::Mutex::new(inner),
                state: Mutex::new(State {
                    free: None,
                    fault: None,
                    unsynced: Vec::new(),
                    truncated: Vec::new(),
                    settled: false,
                    rng: StdRng::seed_from_u64(0),
                }),
                power,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The disk holds only `free` more bytes (`None`: plenty).
    pub fn set_free(&self, free: Option<u64>) {
        self.state().free = free;
    }

    /// Bytes still free, if limited.
    pub fn free(&self) -> Option<u64> {
        self.state().free
    }

    /// Fail as `fault` says from now on (`None`: heal).
    pub fn inject(&self, fault: Option<DropFault>) {
        self.state().fault = fault;
    }

    /// After a cut: applies what the cut loses of unsynced names and truncations (once;
    /// the first operation after the cut does it too), and returns the folder as a reboot
    /// finds it.
    pub async fn settle(&self) -> tokio::sync::MutexGuard<'_, F> {
        let mut inner = self.shared.inner.lock().await;
        if let Some(power) = &self.shared.power {
            if power.fired() {
                self.lose_unsynced(&mut inner, power.mode()).await;
            }
        }
        inner
    }

    fn tick(&self) -> Tick {
        self.shared.power.as_ref().map_or(Tick::Go, Power::tick)
    }

    fn seed(&self, mode: CutMode) {
        if let CutMode::Scramble(seed) = mode {
            self.state().rng = StdRng::seed_from_u64(seed ^ 0xD209);
        }
    }

    fn coin(&self, mode: CutMode) -> bool {
        match mode {
            CutMode::Forget => false,
            CutMode::Scramble(_) => self.state().rng.random_bool(0.5),
        }
    }

    /// Takes back what a cut in `mode` loses: a suffix of the unsynced name changes (all
    /// of them with `Forget`), and each unsynced truncation with even odds.
    async fn lose_unsynced(&self, inner: &mut F, mode: CutMode) {
        let (ops, truncated) = {
            let mut st = self.state();
            if st.settled {
                return;
            }
            st.settled = true;
            let keep = match mode {
                CutMode::Forget => 0,
                CutMode::Scramble(_) => {
                    let n = st.unsynced.len();
                    st.rng.random_range(0..=n)
                }
            };
            let ops: Vec<NameOp> = st.unsynced.drain(..).skip(keep).collect();
            (ops, std::mem::take(&mut st.truncated))
        };
        for op in ops.into_iter().rev() {
            // Best effort: the undo runs on the folder as it is; a failure leaves the
            // change in place, which is one of the outcomes a real cut may have anyway.
            let _ = match op {
                NameOp::Created(name) => inner.remove(&name).await,
                NameOp::Renamed { from, to } => inner.rename_new(&to, &from).await.map(|_| ()),
                NameOp::Removed { name, data } => inner.write_new(&name, &data).await,
            };
        }
        for (name, len, tail) in truncated {
            if !self.coin(mode) {
                let _ = inner.write_at(&name, len, &tail).await;
            }
        }
    }

    /// Handles the tick of an operation: `Ok(None)` go on, `Ok(Some(mode))` the power goes
    /// during it (the caller lands what it may, then calls [`Self::cut_done`]), `Err` dead.
    async fn begin(&self, inner: &mut F) -> Result<Option<CutMode>, FolderError> {
        match self.tick() {
            Tick::Go => Ok(None),
            Tick::Cut(mode) => {
                self.seed(mode);
                Ok(Some(mode))
            }
            Tick::Dead => {
                if let Some(power) = &self.shared.power {
                    self.lose_unsynced(inner, power.mode()).await;
                }
                Err(FolderError::transient("power cut", power_cut()))
            }
        }
    }

    async fn cut_done(&self, inner: &mut F, mode: CutMode) -> FolderError {
        self.lose_unsynced(inner, mode).await;
        FolderError::transient("power cut", power_cut())
    }

    fn no_space(name: &str) -> FolderError {
        FolderError::transient(
            format!("cannot write {name}"),
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        )
    }

    fn io_error(what: String) -> FolderError {
        FolderError::transient(what, std::io::Error::from_raw_os_error(libc::EIO))
    }

    /// How many of `n` bytes written at `offset` of a file of `len` bytes fit on the disk;
    /// takes the growth from the free space.
    fn fitting(&self, len: u64, offset: u64, n: usize) -> usize {
        let mut st = self.state();
        let Some(free) = st.free else { return n };
        let end = offset + n as u64;
        let growth = end.saturating_sub(len.max(offset));
        let fit = if growth <= free {
            n
        } else {
            usize::try_from(len.max(offset) + free - offset)
                .unwrap_or(n)
                .min(n)
        };
        let used = (offset + fit as u64).saturating_sub(len.max(offset));
        st.free = Some(free - used.min(free));
        fit
    }
}

#[async_trait::async_trait]
impl<F: Folder + 'static> Folder for FaultyFolder<F> {
    fn location(&self) -> String {
        // The location is fixed at construction; reading it needs no lock wait in practice.
        match self.shared.inner.try_lock() {
            Ok(f) => format!("{} (fault-injected)", f.location()),
            Err(_) => "fault-injected folder".into(),
        }
    }

    fn name_in(&self, path: &str) -> Option<String> {
        self.shared.inner.try_lock().ok()?.name_in(path)
    }

    fn legacy_form(&self) -> LegacyForm {
        self.shared
            .inner
            .try_lock()
            .map_or(LegacyForm::None, |f| f.legacy_form())
    }

    async fn stat(&mut self, name: &str) -> Result<Option<Stat>, FolderError> {
        let mut inner = self.shared.inner.lock().await;
        if let Some(mode) = self.begin(&mut inner).await? {
            return Err(self.cut_done(&mut inner, mode).await);
        }
        inner.stat(name).await
    }

    async fn read(&mut self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, FolderError> {
        let mut inner = self.shared.inner.lock().await;
        if let Some(mode) = self.begin(&mut inner).await? {
            return Err(self.cut_done(&mut inner, mode).await);
        }
        inner.read(name, offset, len).await
    }

    async fn truncate(&mut self, name: &str, len: u64) -> Result<(), FolderError> {
        let mut inner = self.shared.inner.lock().await;
        let cut = self.begin(&mut inner).await?;
        if cut.is_some_and(|mode| !self.coin(mode)) {
            let mode = cut.unwrap_or(CutMode::Forget);
            return Err(self.cut_done(&mut inner, mode).await);
        }
        let old = inner.stat(name).await?.map_or(0, |s| s.len);
        if self.shared.power.is_some() && old > len {
            let tail = inner.read(name, len, old - len).await?;
            self.state().truncated.push((name.to_string(), len, tail));
        }
        inner.truncate(name, len).await?;
        if let Some(free) = self.state().free.as_mut() {
            *free += old.saturating_sub(len);
        }
        if let Some(mode) = cut {
            return Err(self.cut_done(&mut inner, mode).await);
        }
        Ok(())
    }

    async fn write_at(&mut self, name: &str, offset: u64, bytes: &[u8]) -> Result<(), FolderError> {
        let mut inner = self.shared.inner.lock().await;
        if let Some(mode) = self.begin(&mut inner).await? {
            if let CutMode::Scramble(_) = mode {
                // The write was under way: each of its sectors may have reached the disk.
                for (i, sector) in bytes.chunks(512).enumerate() {
                    if self.coin(mode) {
                        let _ = inner.write_at(name, offset + 512 * i as u64, sector).await;
                    }
                }
            }
            return Err(self.cut_done(&mut inner, mode).await);
        }
        let len = inner.stat(name).await?.map_or(0, |s| s.len);
        let fit = self.fitting(len, offset, bytes.len());
        let fault = self.state().fault;
        let n = match fault {
            Some(DropFault::ShortWrite) => fit.min(bytes.len() / 2),
            _ => fit,
        };
        if n > 0 {
            inner.write_at(name, offset, &bytes[..n]).await?;
        }
        if n < fit {
            return Err(Self::io_error(format!(
                "cannot write {name}: the write stopped after {n} bytes"
            )));
        }
        if fit < bytes.len() {
            return Err(Self::no_space(name));
        }
        if fault == Some(DropFault::SyncFails) {
            return Err(Self::io_error(format!("cannot fsync {name}")));
        }
        // The file's sync made its earlier truncations durable too.
        self.state().truncated.retain(|(n, _, _)| n != name);
        Ok(())
    }

    async fn create_new(&mut self, name: &str) -> Result<bool, FolderError> {
        let mut inner = self.shared.inner.lock().await;
        let cut = self.begin(&mut inner).await?;
        if cut.is_some_and(|mode| !self.coin(mode)) {
            let mode = cut.unwrap_or(CutMode::Forget);
            return Err(self.cut_done(&mut inner, mode).await);
        }
        let created = inner.create_new(name).await?;
        if created {
            self.state()
                .unsynced
                .push(NameOp::Created(name.to_string()));
        }
        if let Some(mode) = cut {
            return Err(self.cut_done(&mut inner, mode).await);
        }
        Ok(created)
    }

    async fn write_new(&mut self, name: &str, bytes: &[u8]) -> Result<(), FolderError> {
        let mut inner = self.shared.inner.lock().await;
        let cut = self.begin(&mut inner).await?;
        let existed = inner.stat(name).await?;
        if let Some(mode) = cut {
            if self.coin(mode) {
                // Created (or emptied) and part of the data written, unsynced.
                let keep = self.state().rng.random_range(0..=bytes.len());
                if inner.write_new(name, &bytes[..keep]).await.is_ok() && existed.is_none() {
                    self.state()
                        .unsynced
                        .push(NameOp::Created(name.to_string()));
                }
            }
            return Err(self.cut_done(&mut inner, mode).await);
        }
        // Emptying the old content frees its space first.
        if let Some(free) = self.state().free.as_mut() {
            *free += existed.map_or(0, |s| s.len);
        }
        let fit = self.fitting(0, 0, bytes.len());
        inner.write_new(name, &bytes[..fit]).await?;
        if existed.is_none() {
            self.state()
                .unsynced
                .push(NameOp::Created(name.to_string()));
        }
        if fit < bytes.len() {
            return Err(Self::no_space(name));
        }
        match self.state().fault {
            Some(DropFault::SyncFails) => Err(Self::io_error(format!("cannot fsync {name}"))),
            _ => Ok(()),
        }
    }

    async fn rename_new(&mut self, from: &str, to: &str) -> Result<bool, FolderError> {
        let mut inner = self.shared.inner.lock().await;
        let cut = self.begin(&mut inner).await?;
        if cut.is_some_and(|mode| !self.coin(mode)) {
            let mode = cut.unwrap_or(CutMode::Forget);
            return Err(self.cut_done(&mut inner, mode).await);
        }
        let renamed = inner.rename_new(from, to).await?;
        if renamed {
            self.state().unsynced.push(NameOp::Renamed {
                from: from.to_string(),
                to: to.to_string(),
            });
        }
        if let Some(mode) = cut {
            return Err(self.cut_done(&mut inner, mode).await);
        }
        Ok(renamed)
    }

    async fn remove(&mut self, name: &str) -> Result<(), FolderError> {
        let mut inner = self.shared.inner.lock().await;
        let cut = self.begin(&mut inner).await?;
        if cut.is_some_and(|mode| !self.coin(mode)) {
            let mode = cut.unwrap_or(CutMode::Forget);
            return Err(self.cut_done(&mut inner, mode).await);
        }
        if let Some(stat) = inner.stat(name).await? {
            let data = inner.read(name, 0, stat.len).await?;
            inner.remove(name).await?;
            self.state().unsynced.push(NameOp::Removed {
                name: name.to_string(),
                data,
            });
        }
        if let Some(mode) = cut {
            return Err(self.cut_done(&mut inner, mode).await);
        }
        Ok(())
    }

    async fn sync_names(&mut self) -> Result<(), FolderError> {
        let mut inner = self.shared.inner.lock().await;
        let cut = self.begin(&mut inner).await?;
        if cut.is_some_and(|mode| !self.coin(mode)) {
            let mode = cut.unwrap_or(CutMode::Forget);
            return Err(self.cut_done(&mut inner, mode).await);
        }
        inner.sync_names().await?;
        self.state().unsynced.clear();
        if let Some(mode) = cut {
            return Err(self.cut_done(&mut inner, mode).await);
        }
        match self.state().fault {
            Some(DropFault::SyncFails) => Err(Self::io_error("cannot fsync the folder".into())),
            _ => Ok(()),
        }
    }
}

/// Where a [`Rehearsal`] attempt stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Runs to the end and commits.
    Commit,
    /// The process dies after the intent commit, before `deliver`.
    AfterIntent,
    /// The process dies after `deliver` returned, before the delivery's commit.
    BeforeCommit,
}

/// A connector in miniature, for tests of one target: it keeps what the ledger keeps (the
/// committed checkpoint and the intent) and drives `prepare`, the intent commit, `deliver`
/// and the commit as `connector::Runner` does, stopping where a test says.
pub struct Rehearsal<T> {
    pub target: T,
    pub committed: Checkpoint,
    pub intent: Option<Checkpoint>,
    /// Deliveries the target reported ambiguous.
    pub n_ambiguous: u32,
}

impl<T: Target> Rehearsal<T> {
    pub fn new(target: T) -> Rehearsal<T> {
        Rehearsal {
            target,
            committed: Vec::new(),
            intent: None,
            n_ambiguous: 0,
        }
    }

    /// A restarted process: a new target, the same ledger.
    pub fn restarted(self, target: T) -> Rehearsal<T> {
        Rehearsal { target, ..self }
    }

    /// One attempt at delivering `items` at `now`; returns what `deliver` returned.
    pub async fn attempt(
        &mut self,
        items: &[(Event, Record)],
        now: chrono::DateTime<chrono_tz::Tz>,
        replay: bool,
        stop: Stop,
    ) -> Result<Checkpoint, DeliveryError> {
        let d = Delivery {
            connector: "c",
            items,
            now,
            replay,
        };
        let start = self
            .intent
            .clone()
            .unwrap_or_else(|| self.committed.clone());
        let prepared = self.target.prepare(&d, &start).await?;
        self.n_ambiguous += u32::from(prepared.ambiguous);
        let start = match prepared.intent {
            Some(i) => {
                self.intent = Some(i.clone());
                i
            }
            None => start,
        };
        if stop == Stop::AfterIntent {
            return Ok(start);
        }
        let next = self.target.deliver(&d, &start).await?;
        if stop == Stop::Commit {
            self.committed = next.clone();
            self.intent = None;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::super::mem::MemFolder;
    use super::*;

    #[tokio::test]
    async fn a_full_disk_writes_what_fits_and_truncating_frees_space() {
        let mem = MemFolder::new();
        let mut f = FaultyFolder::new(mem.clone(), None);
        f.create_new("a").await.unwrap();
        f.set_free(Some(5));
        let err = f.write_at("a", 0, b"0123456789").await.unwrap_err();
        assert_eq!(err.source.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(mem.get("a").unwrap(), b"01234");
        assert_eq!(f.free(), Some(0));
        // Overwriting in place needs no space; cutting gives it back.
        f.write_at("a", 0, b"AB").await.unwrap();
        f.truncate("a", 2).await.unwrap();
        assert_eq!(f.free(), Some(3));
        f.write_at("a", 2, b"CDE").await.unwrap();
        assert_eq!(mem.get("a").unwrap(), b"ABCDE");
        f.inject(Some(DropFault::ShortWrite));
        assert!(f.write_at("a", 5, b"").await.is_ok());
        f.set_free(None);
        assert!(f.write_at("a", 5, b"wxyz").await.is_err());
        assert_eq!(mem.get("a").unwrap(), b"ABCDEwx");
        f.inject(Some(DropFault::SyncFails));
        assert!(f.write_at("a", 7, b"!").await.is_err());
        assert_eq!(
            mem.get("a").unwrap(),
            b"ABCDEwx!",
            "written, not known synced"
        );
    }

    #[tokio::test]
    async fn a_cut_loses_unsynced_names_and_kills_the_machine() {
        let mem = MemFolder::new();
        let power = Power::new(None);
        let mut f = FaultyFolder::new(mem.clone(), Some(power.clone()));
        f.create_new("kept").await.unwrap();
        f.sync_names().await.unwrap();
        f.write_new(".t", b"batch").await.unwrap();
        assert!(f.rename_new(".t", "b").await.unwrap());
        power.arm(1, CutMode::Forget);
        assert!(f.stat("b").await.is_err());
        assert!(f.stat("b").await.is_err(), "dead after the cut");
        drop(f.settle().await);
        assert_eq!(
            mem.names(),
            ["kept"],
            "the unsynced temp file and rename are gone"
        );
    }

    #[tokio::test]
    async fn a_scrambled_cut_lands_some_sectors_of_the_write_under_way() {
        let mut landed_some = false;
        let mut landed_none = false;
        for seed in 0..64 {
            let mem = MemFolder::new();
            let power = Power::new(None);
            let mut f = FaultyFolder::new(mem.clone(), Some(power.clone()));
            f.create_new("a").await.unwrap();
            f.sync_names().await.unwrap();
            power.arm(1, CutMode::Scramble(seed));
            assert!(f.write_at("a", 0, &[7u8; 2048]).await.is_err());
            let data = mem.get("a").unwrap();
            assert!(
                data.len() <= 2048 && data.len() % 512 == 0,
                "{}",
                data.len()
            );
            assert!(data.chunks(512).all(|s| s == [0u8; 512] || s == [7u8; 512]));
            landed_some |= !data.is_empty();
            landed_none |= data.is_empty();
        }
        assert!(landed_some && landed_none);
    }
}
