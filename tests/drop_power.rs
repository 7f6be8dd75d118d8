//! Power loss, not just kill -9 (issue 10, point 4, drop side): the real connector
//! (`connector::Runner`, with its intent step) delivers from a feed and a ledger on a
//! simulated redb disk (`ess::fault::PowerCut`) into a drop whose folder is fault-injected
//! (`FaultyFolder`: a memory folder, or the SFTP adapter on a real OpenSSH server). One
//! `Power` switch cuts both disks at a random disk operation, during ingest or delivery;
//! what was not synced is lost (whole, or scrambled: torn writes, a random part of the
//! unsynced names). Then the machine "reboots": redb reopens what survived, a new feed,
//! ledger, target and connector start, unacknowledged events are sent again, and maybe the
//! power goes again. At the end every event the feed acknowledged is in the drop exactly
//! once, in seq order, with no partial record and no temp file, for append and batch,
//! file and SFTP.
//!
//! CI cuts ≥ 200 times in all (`ESS_POWER_CUTS` raises the count for each of the four
//! kinds, e.g. `ESS_POWER_CUTS=5000` for a soak; `ESS_POWER_SEED` replays a run).

#[path = "support/sshd.rs"]
mod sshd;
mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ess::config::connector::SftpDeliver;
use ess::connector::{ConnectorSpec, Env, Hooks, Runner};
use ess::fault::{CutMode, PowerCut};
use ess::feed::{Feed, NewEvent};
use ess::ledger::Ledger;
use ess::target::drop::fault::{FaultyFolder, Power, PoweredBackend};
use ess::target::drop::mem::MemFolder;
use ess::target::drop::{DropSpec, DropTarget, Folder};
use ess::target::sftp::SftpFolder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

const N_EVENTS: usize = 24;
const WIDTH: usize = 9;

/// Cuts per kind of drop (four kinds), at least 50 each so CI makes ≥ 200.
fn cuts_per_kind() -> usize {
    std::env::var("ESS_POWER_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
}

fn seed() -> u64 {
    let seed = std::env::var("ESS_POWER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("power cut seed {seed} (re-run with ESS_POWER_SEED={seed})");
    seed
}

/// The connector; `max_events` differs between boots, so a retry after a cut carries
/// fewer or more events than the attempt it repeats.
fn spec(dir: &Path, max_events: usize) -> Arc<ConnectorSpec> {
    let map = dir.join("m.yml");
    std::fs::write(
        &map,
        format!(
            "target: c\nevents: [P]\nfields:\n  ID: id | width:{}\ndeliver: {{kind: file, dir: out, file: x.txt}}\nretry: {{base: 5ms, max_delay: 20ms}}\nbatch: {{max_events: {max_events}}}\n",
            WIDTH - 1
        ),
    )
    .unwrap();
    Arc::new(ess::connector::load_one(&map, chrono_tz::UTC).unwrap_or_else(|e| panic!("{e:?}")))
}

fn id(i: usize) -> String {
    format!("E{i:07}")
}

fn record(id: &str) -> String {
    format!("{id:<w$}\n", w = WIDTH - 1)
}

/// Counts the deliveries the connector calls ambiguous.
#[derive(Default)]
struct Ambiguous(AtomicU64);
impl Hooks for Ambiguous {
    fn ambiguous(&self, _connector: &str) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// The drop under test: how a boot gets its folder, and what the folder holds at the end.
trait DropUnderTest: Send {
    type F: Folder + 'static;
    fn boot(&mut self) -> Self::F;
    /// Name -> content of every file.
    fn files(&self) -> Vec<(String, Vec<u8>)>;
    fn clear(&mut self);
}

struct Memory(MemFolder);
impl DropUnderTest for Memory {
    type F = MemFolder;
    fn boot(&mut self) -> MemFolder {
        self.0.clone()
    }
    fn files(&self) -> Vec<(String, Vec<u8>)> {
        self.0
            .names()
            .into_iter()
            .map(|n| {
                let data = self.0.get(&n).unwrap_or_default();
                (n, data)
            })
            .collect()
    }
    fn clear(&mut self) {
        self.0 = MemFolder::new();
    }
}

struct Sftp {
    sshd: sshd::Sshd,
}
impl DropUnderTest for Sftp {
    type F = SftpFolder;
    fn boot(&mut self) -> SftpFolder {
        let user = sshd::user();
        let spec = SftpDeliver {
            host: "127.0.0.1".into(),
            port: Some(self.sshd.port),
            user,
            key: "user_ed25519".into(),
            known_hosts: "known_hosts".into(),
            dir: self.sshd.drop_dir().display().to_string(),
            file: "x".into(),
            mode: None,
            timeout: Some("10s".into()),
        };
        SftpFolder::open(&spec, self.sshd.dir.path()).unwrap()
    }
    fn files(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(self.sshd.drop_dir())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }
    fn clear(&mut self) {
        for e in std::fs::read_dir(self.sshd.drop_dir()).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
    }
}

/// One `P` event per id, keyed by it.
fn events_of(ids: &[String]) -> Vec<NewEvent> {
    ids.iter()
        .map(|id| NewEvent {
            event_type: "P".into(),
            payload: serde_json::json!({ "id": id }).as_object().unwrap().clone(),
            key: id.clone(),
            trace_id: "t".into(),
            ts: None,
        })
        .collect()
}

/// The connector's surroundings on one boot.
fn env(feed: &Feed, ledger: &Ledger, hooks: Arc<Ambiguous>) -> Env {
    Env {
        feed: feed.clone(),
        ledger: ledger.clone(),
        timezone: chrono_tz::UTC,
        hooks,
        wake: watch::channel(0).1,
    }
}

/// The events of one trial and what is known of them across its boots.
struct Trial {
    spec: Arc<ConnectorSpec>,
    mode: &'static str,
    /// The events, in the groups they are sent in.
    groups: Vec<Vec<String>>,
    /// Which groups the feed acknowledged.
    acked: Vec<bool>,
    hooks: Arc<Ambiguous>,
}

/// What one boot ended with.
enum Boot {
    /// The power went.
    Cut,
    /// Everything acknowledged was delivered; the ids in seq order.
    Done(Vec<String>),
}

/// One boot of the simulated machine: open what the disk holds, start the connector, send
/// every group not acknowledged yet, and wait for the cut or for the end.
async fn boot<D: DropUnderTest>(
    drop: &mut D,
    disk: &PowerCut,
    power: &Power,
    trial: &mut Trial,
) -> Boot {
    let Trial {
        spec,
        mode,
        groups,
        acked,
        hooks,
    } = trial;
    let db = {
        // (No SingleWriter mode: it needs file locks, which a simulated disk has not.)
        match redb::Database::builder().create_with_backend(PoweredBackend::new(disk, power)) {
            Ok(db) => ess::feed::Store::from(db),
            Err(e) => {
                assert!(
                    power.fired(),
                    "the database opens unless the power went: {e}"
                );
                return Boot::Cut;
            }
        }
    };
    let feed = match Feed::open(db.clone()) {
        Ok(f) => f,
        Err(_) => {
            assert!(power.fired(), "the feed opens unless the power went");
            return Boot::Cut;
        }
    };
    let ledger = Ledger::new(db.clone());
    let env = env(&feed, &ledger, hooks.clone());
    let file = if *mode == "append" {
        "permit.txt"
    } else {
        "p_{{seq}}.txt"
    };
    let faulty = FaultyFolder::new(drop.boot(), Some(power.clone()));
    let target = DropTarget::over(
        faulty.clone(),
        DropSpec::parse(file, Some(*mode)).unwrap(),
        "c",
        Some(spec.mapping.clone()),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let runner =
        tokio::spawn(Runner::with_target(spec.clone(), env, Box::new(target)).run(stop_rx));
    for (g, ids) in groups.iter().enumerate() {
        if acked[g] {
            continue;
        }
        let events = events_of(ids);
        match feed.append(events).await {
            Ok(_) => acked[g] = true,
            Err(_) => {
                assert!(power.fired(), "an append fails only when the power went");
                break;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let outcome = loop {
        if power.fired() {
            break Boot::Cut;
        }
        if acked.iter().all(|a| *a) {
            let cursor = ledger.cursor("c").ok().flatten().map_or(0, |c| c.seq);
            let pending = ledger.intent("c").ok().flatten().is_some();
            if cursor == feed.last_seq()
                && !pending
                && ledger.retry_state("c").ok().flatten().is_none()
            {
                let ids = feed
                    .read_after(0, usize::MAX)
                    .unwrap()
                    .into_iter()
                    .map(|e| {
                        e.payload.tree().unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    })
                    .collect();
                break Boot::Done(ids);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the connector never finished nor was cut"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let _ = stop_tx.send(true); // the runner may have stopped itself after the cut
    runner.await.unwrap();
    drop_folder_settles(&faulty).await;
    feed.close();
    outcome
}

async fn drop_folder_settles<F: Folder + 'static>(faulty: &FaultyFolder<F>) {
    let _ = faulty.settle().await;
}

/// Runs trials until `cuts` power cuts happened.
async fn cut_power_repeatedly<D: DropUnderTest>(
    drop: &mut D,
    mode: &'static str,
    cuts: usize,
    rng: &mut StdRng,
) {
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<_> = (1..=6).map(|n| spec(dir.path(), n)).collect();
    let hooks = Arc::new(Ambiguous::default());
    let (mut n_cuts, mut n_trials) = (0, 0);
    // Disk operations a whole trial takes without a cut: where a cut may fall.
    let mut span = 0u64;
    while n_cuts < cuts {
        n_trials += 1;
        drop.clear();
        let mut ids = (0..N_EVENTS).map(id);
        let mut groups = Vec::new();
        while groups.iter().map(Vec::len).sum::<usize>() < N_EVENTS {
            let n = rng.random_range(1..=4);
            groups.push(ids.by_ref().take(n).collect::<Vec<String>>());
        }
        groups.retain(|g| !g.is_empty());
        let mut trial = Trial {
            spec: specs[5].clone(),
            mode,
            acked: vec![false; groups.len()],
            groups,
            hooks: hooks.clone(),
        };
        // The appliance was installed and started once: a cut while redb lays down a new
        // file is the storage side's case, not the drop's.
        let mut disk = PowerCut::new();
        Feed::open(Arc::new(
            redb::Database::builder()
                .create_with_backend(disk.backend())
                .unwrap(),
        ))
        .unwrap()
        .close();
        let mut cuts_left = if span == 0 {
            0
        } else {
            rng.random_range(1..=3)
        };
        let delivered = loop {
            let power = Power::new(Some(disk.clone()));
            trial.spec = specs[rng.random_range(0..specs.len())].clone();
            if cuts_left > 0 {
                let mode = if rng.random_bool(0.5) {
                    CutMode::Forget
                } else {
                    CutMode::Scramble(rng.random())
                };
                power.arm(rng.random_range(1..=span), mode);
            }
            match boot(drop, &disk, &power, &mut trial).await {
                Boot::Cut => {
                    n_cuts += 1;
                    cuts_left -= 1;
                    disk = PowerCut::from_image(disk.image());
                }
                Boot::Done(ids) => {
                    if span == 0 {
                        span = power.ops();
                    }
                    break ids;
                }
            }
        };
        assert_eq!(delivered.len(), N_EVENTS, "every event once in the feed");
        check(drop, mode, &delivered, n_trials);
    }
    eprintln!(
        "{mode}: {n_cuts} power cuts in {n_trials} trials (span {span} disk operations), {} deliveries ambiguous",
        hooks.0.load(Ordering::SeqCst)
    );
    assert!(n_cuts >= cuts);
}

/// Every acknowledged event once, in seq order, no partial record, no stray file.
fn check<D: DropUnderTest>(drop: &D, mode: &str, ids: &[String], trial: usize) {
    let want: String = ids.iter().map(|i| record(i)).collect();
    let files = drop.files();
    let got: String = if mode == "append" {
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["permit.txt"], "trial {trial}: only the drop file");
        String::from_utf8(files[0].1.clone()).unwrap()
    } else {
        let mut batches: Vec<(u64, String)> = files
            .iter()
            .map(|(n, data)| {
                let seq = n
                    .strip_prefix("p_")
                    .and_then(|r| r.strip_suffix(".txt"))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("trial {trial}: stray file {n}"));
                (seq, String::from_utf8(data.clone()).unwrap())
            })
            .collect();
        batches.sort();
        batches.into_iter().map(|(_, d)| d).collect()
    };
    assert!(
        got == want,
        "trial {trial}: the drop is not every event once in order\n got: {got:?}\nwant: {want:?}"
    );
}

#[test]
fn power_cuts_during_ingest_and_file_delivery_lose_double_and_tear_nothing() {
    let mut rng = StdRng::seed_from_u64(seed());
    let rt = support::rt();
    for mode in ["append", "batch"] {
        let mut drop = Memory(MemFolder::new());
        rt.block_on(cut_power_repeatedly(
            &mut drop,
            mode,
            cuts_per_kind(),
            &mut rng,
        ));
    }
}

#[test]
fn power_cuts_during_ingest_and_sftp_delivery_lose_double_and_tear_nothing() {
    let mut rng = StdRng::seed_from_u64(seed());
    let rt = support::rt();
    let mut drop = Sftp {
        sshd: sshd::Sshd::start(),
    };
    for mode in ["append", "batch"] {
        rt.block_on(cut_power_repeatedly(
            &mut drop,
            mode,
            cuts_per_kind(),
            &mut rng,
        ));
    }
}

/// A running boot of the deferred-commit case: feed, ledger, the connector's task, its stop
/// switch and what it called ambiguous.
type Running = (
    Feed,
    Ledger,
    tokio::task::JoinHandle<()>,
    watch::Sender<bool>,
    Arc<Ambiguous>,
);

/// One boot of the deferred-commit case: a feed and ledger on `disk` whose deferred
/// writes wait `defer` for their fsync, and the connector delivering into `folder`.
fn start_deferring(
    disk: &PowerCut,
    folder: &MemFolder,
    spec: &Arc<ConnectorSpec>,
    defer: Duration,
) -> Running {
    let db = redb::Database::builder()
        .create_with_backend(disk.backend())
        .unwrap();
    let store = ess::feed::Store::from_database(
        db,
        ess::feed::StoreOptions {
            defer_durable: defer,
            ..Default::default()
        },
    );
    let feed = Feed::open(store.clone()).unwrap();
    let ledger = Ledger::new(store);
    let hooks = Arc::new(Ambiguous::default());
    let env = env(&feed, &ledger, hooks.clone());
    let target = DropTarget::over(
        folder.clone(),
        DropSpec::parse("permit.txt", Some("append")).unwrap(),
        "c",
        Some(spec.mapping.clone()),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let runner =
        tokio::spawn(Runner::with_target(spec.clone(), env, Box::new(target)).run(stop_rx));
    (feed, ledger, runner, stop_tx, hooks)
}

/// Waits (bounded) until the connector's cursor, as readers see it, is at `seq`.
async fn cursor_reaches(ledger: &Ledger, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let at = ledger.cursor("c").unwrap().map_or(0, |c| c.seq);
        let settled = ledger.intent("c").unwrap().is_none();
        if at == seq && settled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cursor stayed at {at}, not {seq}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What a cut left after nine events were delivered two by two with deferred commits that
/// nothing made durable (the bound is an hour).
struct AfterCut {
    _dir: tempfile::TempDir,
    spec: Arc<ConnectorSpec>,
    folder: MemFolder,
    ids: Vec<String>,
    /// What the disk kept.
    image: Vec<u8>,
    /// The cursor it kept, read on a copy of the image before a connector ran on it.
    back: u64,
}

impl AfterCut {
    /// The next boot on what the disk kept, once its connector has delivered everything.
    async fn reboot(&self) -> Running {
        let disk = PowerCut::from_image(self.image.clone());
        let boot = start_deferring(&disk, &self.folder, &self.spec, Duration::ZERO);
        cursor_reaches(&boot.1, self.ids.len() as u64).await;
        boot
    }
}

async fn deliver_deferred_then_cut() -> AfterCut {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 2);
    let folder = MemFolder::new();
    let ids: Vec<String> = (0..9).map(id).collect();
    let disk = PowerCut::new();
    let hour = Duration::from_secs(3600);
    let (feed, ledger, runner, stop, hooks) = start_deferring(&disk, &folder, &spec, hour);
    feed.append(events_of(&ids)).await.unwrap();
    cursor_reaches(&ledger, ids.len() as u64).await;
    let want: String = ids.iter().map(|i| record(i)).collect();
    assert_eq!(file_of(&folder), want, "delivered two by two");
    disk.cut(CutMode::Forget);
    let _ = stop.send(true);
    runner.await.unwrap();
    drop((feed, ledger));
    assert_eq!(hooks.0.load(Ordering::SeqCst), 0);

    let image = disk.image();
    let copy = redb::Database::builder()
        .create_with_backend(PowerCut::from_image(image.clone()).backend())
        .unwrap();
    let back = Ledger::new(ess::feed::Store::from(copy))
        .cursor("c")
        .unwrap()
        .map_or(0, |c| c.seq);
    assert!(
        back < ids.len() as u64,
        "the cut took deferred commits back (the cursor came back at {back})"
    );
    AfterCut {
        _dir: dir,
        spec,
        folder,
        ids,
        image,
        back,
    }
}

fn file_of(folder: &MemFolder) -> String {
    String::from_utf8(folder.get("permit.txt").unwrap_or_default()).unwrap()
}

/// Issue 11: an append's delivery commit does not wait for its fsync; the next durable
/// commit carries it. Here nothing else commits (the bound is an hour), so a power cut after
/// every event was delivered takes the cursor back past deliveries whose records are in
/// the file. The next boot finds the file longer than the mark it committed, cuts that tail
/// and writes those records again: every event once, in order, nothing called ambiguous.
#[test]
fn a_cut_that_takes_back_deferred_delivery_commits_leaves_each_record_once() {
    let rt = support::rt();
    rt.block_on(async {
        let cut = deliver_deferred_then_cut().await;
        let (ids, folder) = (&cut.ids, &cut.folder);
        let want: String = ids.iter().map(|i| record(i)).collect();
        let (feed, _ledger, runner, stop, hooks) = cut.reboot().await;
        assert_eq!(
            file_of(folder),
            want,
            "the tail past the mark was cut and written once more"
        );
        assert_eq!(
            hooks.0.load(Ordering::SeqCst),
            0,
            "not ambiguous: the same file, longer"
        );
        // Sending the same events again changes nothing: deduped.
        feed.append(events_of(ids)).await.unwrap();
        assert_eq!(feed.last_seq(), 9);
        let _ = stop.send(true);
        runner.await.unwrap();
        feed.close();
        assert_eq!(file_of(folder), want);
    });
}

/// The edge of the deferred window: the legacy job empties the file (`OPEN OUTPUT`) while
/// the machine is down after a cut that took deferred commits back. Whether it had read the
/// records past the surviving mark cannot be known, so they are delivered again into the
/// emptied file and the delivery is counted as ambiguous: at least once, never lost, and
/// never hidden (the documented exception, ARCHITECTURE "What stays at-least-once").
#[test]
fn the_legacy_side_emptying_the_file_after_a_cut_in_the_deferred_window_gets_the_records_again_counted()
 {
    let rt = support::rt();
    rt.block_on(async {
        let cut = deliver_deferred_then_cut().await;
        cut.folder.put("permit.txt", b"");
        let (feed, _ledger, runner, stop, hooks) = cut.reboot().await;
        let again: String = cut.ids[cut.back as usize..]
            .iter()
            .map(|i| record(i))
            .collect();
        assert_eq!(
            file_of(&cut.folder),
            again,
            "everything past the surviving cursor, once, in the emptied file"
        );
        assert_eq!(
            hooks.0.load(Ordering::SeqCst),
            1,
            "counted: the legacy side may have read them already"
        );
        let _ = stop.send(true);
        runner.await.unwrap();
        feed.close();
    });
}
