//! Connectors: one task per map file, moving that connector's events from the feed to its
//! target in `seq` order and recording progress in the ledger.
//!
//! One round of [`Runner::run`]: read events after the cursor (re-queued ones first), drop
//! the ones `events:` does not select, map the rest (an event that cannot be mapped or
//! that compliance stops is parked as a dead letter, the others go on), let the target
//! propose an intent (committed durably before its first byte, when the committed
//! checkpoint does not describe where it writes), hand the records to the target, and
//! commit cursor + target checkpoint + parked events in one durable ledger transaction
//! that also drops the intent. A failed delivery is retried with back-off from the ledger's
//! [`RetryState`] (so a restart keeps the schedule), alone, so the failing event is the
//! one that gets parked (`on_failure: park`) or holds the others back (`block`).
//!
//! Architecture invariant: the cursor only moves after the target reported success, and
//! only through [`Ledger::commit_progress`]; a connector's failure never stops the others.

pub mod backoff;
pub mod command;
pub mod schedule;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::watch;

use crate::config::Diagnostic;
use crate::config::connector::{self, DeliverSpec, LoadedConnector};
use crate::event::{Event, Record, Seq};
use crate::feed::Feed;
use crate::ledger::actions::ErrorNote;
use crate::ledger::intent::Intent;
use crate::ledger::{CursorState, DeadLetter, Ledger, RetryState};
use crate::map::{MapContext, MapError, Mapping};
use crate::target::{Delivery, DeliveryError, Target};
use backoff::{OnFailure, RetryPolicy};
use schedule::Schedule;

/// Where a new connector begins in the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
}

/// A connector file, validated and compiled, ready to run.
pub struct ConnectorSpec {
    pub name: String,
    pub path: PathBuf,
    pub base_dir: PathBuf,
    pub format: String,
    pub mapping: Arc<Mapping>,
    pub deliver: DeliverSpec,
    pub policy: RetryPolicy,
    pub schedule: Option<Schedule>,
    pub start: Start,
    pub max_batch: Option<usize>,
    pub linger: Duration,
    /// `rotate:` — delete this connector's own output files older than this.
    pub rotate: Option<Duration>,
}

/// Loads and validates every connector of `maps_dir`; every problem of every file is
/// returned, not just the first.
pub fn load_all(maps_dir: &Path, tz: Tz) -> Result<Vec<ConnectorSpec>, Vec<Diagnostic>> {
    // Pickup sources (`source:`) are map files too, loaded by `crate::source`.
    connector::load_map_files(
        maps_dir,
        |p| !crate::source::is_source_file(p),
        |p| load_one(p, tz),
        |s: &ConnectorSpec| (s.name.as_str(), s.path.as_path()),
        ("target", "connector"),
    )
}

/// Loads and validates one connector file.
pub fn load_one(path: &Path, tz: Tz) -> Result<ConnectorSpec, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![Diagnostic::new(path, 1, 1, format!("cannot read: {e}"))])?;
    let loaded = connector::parse(path, &text).map_err(|e| vec![e])?;
    compile(&loaded, tz)
}

fn compile(loaded: &LoadedConnector, tz: Tz) -> Result<ConnectorSpec, Vec<Diagnostic>> {
    let f = &loaded.file;
    let path = &loaded.path;
    let mut errs = Vec::new();
    let name = f.target.value.clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        errs.push(Diagnostic::at(
            path,
            &f.target,
            format!("target {name:?} must be 1+ chars of [A-Za-z0-9_.-]"),
        ));
    }
    let mapping = Mapping::compile(loaded, &MapContext { timezone: tz })
        .map_err(|e| errs.extend(e))
        .ok();
    let policy = RetryPolicy::from_spec(f.retry.as_ref(), path)
        .map_err(|e| errs.extend(e))
        .ok();
    let schedule = match &f.schedule {
        None => None,
        Some(s) => Schedule::parse(&s.value)
            .map_err(|e| errs.push(Diagnostic::at(path, s, format!("schedule: {e}"))))
            .ok(),
    };
    let start = match f.start.as_ref().map(|s| (s, s.value.as_str())) {
        None | Some((_, "earliest")) => Start::Earliest,
        Some((_, "latest")) => Start::Latest,
        Some((s, other)) => {
            errs.push(Diagnostic::at(
                path,
                s,
                format!("start must be earliest or latest, not {other:?}"),
            ));
            Start::Earliest
        }
    };
    let linger = match f.batch.as_ref().and_then(|b| b.linger.as_ref()) {
        None => Duration::ZERO,
        Some(l) => crate::config::parse_duration(&l.value)
            .map_err(|e| errs.push(Diagnostic::at(path, l, format!("batch.linger: {e}"))))
            .unwrap_or_default(),
    };
    let rotate = f.rotate.as_ref().and_then(|r| {
        crate::config::parse_duration(&r.value)
            .map_err(|e| errs.push(Diagnostic::at(path, r, format!("rotate: {e}"))))
            .ok()
    });
    if f.deliver.is_none() {
        errs.push(Diagnostic::new(
            path,
            1,
            1,
            "missing deliver: add where records go, e.g.\n  deliver:\n    kind: file\n    dir: ../out\n    file: permit.txt\n    mode: append",
        ));
    }
    let deliver_kind = f.deliver.as_ref().map(|d| &d.value);
    if let (Some(r), Some(DeliverSpec::Sftp(_) | DeliverSpec::Http(_))) = (&f.rotate, deliver_kind)
    {
        errs.push(Diagnostic::at(
            path,
            r,
            "rotate: only file targets rotate their output (remote folders belong to their owners)",
        ));
    }
    let base_dir = loaded.base_dir();
    let spec = mapping
        .zip(policy)
        .zip(f.deliver.as_ref())
        .map(|((mapping, policy), deliver)| ConnectorSpec {
            name,
            path: path.clone(),
            base_dir,
            format: f
                .format
                .as_ref()
                .map_or("fixed".into(), |f| f.value.clone()),
            mapping: Arc::new(mapping),
            deliver: deliver.value.clone(),
            policy,
            schedule,
            start,
            max_batch: f.batch.as_ref().and_then(|b| b.max_events),
            linger,
            rotate,
        });
    if let Some(spec) = &spec {
        if let Err(e) = build_target(spec, tz) {
            if let Some(d) = &f.deliver {
                errs.push(Diagnostic::at(path, d, format!("deliver: {e}")));
            }
        }
    }
    match spec {
        Some(spec) if errs.is_empty() => Ok(spec),
        _ => Err(errs),
    }
}

/// Creates the target a connector delivers to (without connecting anywhere yet).
pub fn build_target(spec: &ConnectorSpec, tz: Tz) -> Result<Box<dyn Target>, String> {
    match &spec.deliver {
        DeliverSpec::File(f) => Ok(Box::new(crate::target::file::FileTarget::new(
            f,
            &spec.base_dir,
            &spec.name,
            Some(spec.mapping.clone()),
        )?)),
        DeliverSpec::Sftp(s) => Ok(Box::new(
            crate::target::sftp::SftpTarget::new(s, &spec.base_dir, &spec.name, tz)?
                .with_mapping(spec.mapping.clone()),
        )),
        DeliverSpec::Http(h) => Ok(Box::new(crate::target::http::HttpTarget::new(
            h,
            &spec.base_dir,
            &spec.name,
            &spec.format,
        )?)),
    }
}

/// What a connector is doing, for the status page and `ess stats`.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Phase {
    #[default]
    Idle,
    Delivering,
    Retrying,
    Blocked,
    OutsideSchedule,
    /// Held by `ess pause` until `ess resume`.
    Paused,
    /// A stored value this connector needs (its next event, its cursor...) failed its
    /// checksum: nothing more is delivered until an operator acts (`ess verify`, restore).
    /// `seq` is the damaged event's, when the damage is in an event.
    Corrupted {
        seq: Option<Seq>,
    },
}

impl Phase {
    /// Phases an operator tells apart: idle and delivering are both "ok", so going from
    /// one to the other does not restart the state's since-when.
    fn class(&self) -> u8 {
        match self {
            Phase::Idle | Phase::Delivering => 0,
            Phase::Retrying => 1,
            Phase::Blocked => 2,
            Phase::OutsideSchedule => 3,
            Phase::Paused => 4,
            Phase::Corrupted { .. } => 5,
        }
    }
}

/// Live state of one connector, updated by its task.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub phase: Phase,
    /// When the connector entered its current state (see [`Phase`]'s classes).
    pub since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub next_attempt: Option<DateTime<Utc>>,
    pub next_open: Option<DateTime<Utc>>,
    /// Rounds whose events were read and mapped ahead ([`ReadAhead`]), since start.
    pub read_ahead: u64,
}

impl Live {
    /// Moves to `phase`, restarting `since` only when the state an operator sees changes.
    pub fn set_phase(&mut self, phase: Phase, now: DateTime<Utc>) {
        if self.since.is_none() || self.phase.class() != phase.class() {
            self.since = Some(now);
        }
        self.phase = phase;
    }
}

/// Shared handles a connector task needs.
#[derive(Clone)]
pub struct Env {
    pub feed: Feed,
    pub ledger: Ledger,
    pub timezone: Tz,
    pub hooks: Arc<dyn Hooks>,
    /// Changes when work appears that is not a new feed event (`ess replay`).
    pub wake: watch::Receiver<u64>,
}

/// Notifications from connector tasks (metrics); the default does nothing.
pub trait Hooks: Send + Sync {
    fn delivered(&self, _connector: &str, _events: &[(Event, Record)]) {}
    fn failed(&self, _connector: &str, _error: &DeliveryError) {}
    /// A delivery goes out again although an interrupted attempt may have reached the
    /// legacy side already ([`crate::target::Prepared::ambiguous`]).
    fn ambiguous(&self, _connector: &str) {}
}

/// Hooks that do nothing.
pub struct NoHooks;
impl Hooks for NoHooks {}

/// A running connector.
pub struct Runner {
    pub spec: Arc<ConnectorSpec>,
    target: Box<dyn Target>,
    env: Env,
    pub live: Arc<Mutex<Live>>,
    rotation: Option<Rotation>,
    /// Operator actions, carried out between two rounds (see [`command`]).
    commands: tokio::sync::mpsc::Receiver<command::Command>,
    handle: command::Handle,
    /// `ess pause`, as the ledger keeps it; read at start, then changed only by commands.
    paused: bool,
    /// The next round's feed read, started while this round delivers ([`ReadAhead`]).
    ahead: Option<ReadAhead>,
}

/// The next round's feed read and mapping, done on other threads while this round is
/// mapped, delivered and committed: draining a backlog, a round's file write, fsync and
/// ledger commit then overlap the next round's CPU work, which itself uses both cores. It
/// only reads and maps (what a map makes of an event depends on the event alone): the next
/// round uses it only if that round starts exactly where it was read from, as a plain
/// forward round of the same size (no retry, no intent, no pin, nothing re-queued by `ess
/// replay`, no operator action in between); anything else drops it and reads again.
struct ReadAhead {
    /// The cursor it assumed (the round's `upto`).
    after: Seq,
    limit: usize,
    read: tokio::task::JoinHandle<Result<Forward, crate::feed::Error>>,
}

/// What a forward round read: the events `events:` selects, the last seq visited, and,
/// when read ahead, each event's record already made ([`read_and_render`]).
struct Forward {
    events: Vec<Event>,
    scanned: Seq,
    rendered: Option<Vec<Rendered>>,
}

/// An event's record (`Err`: it cannot be mapped), `None` when the map does not select it.
type Rendered = Option<Result<Record, MapError>>;

/// `rotate:` of a file connector, run at most every [`ROTATE_EVERY`].
struct Rotation {
    dir: PathBuf,
    template: String,
    max_age: Duration,
    last_run: Mutex<Option<std::time::Instant>>,
}

/// How often a connector looks for its own expired output files.
const ROTATE_EVERY: Duration = Duration::from_secs(600);

impl Rotation {
    fn of(spec: &ConnectorSpec) -> Option<Rotation> {
        match (&spec.deliver, spec.rotate) {
            (DeliverSpec::File(f), Some(max_age)) => Some(Rotation {
                dir: crate::config::resolve_path(&spec.base_dir, &f.dir),
                template: f.file.clone(),
                max_age,
                last_run: Mutex::new(None),
            }),
            _ => None,
        }
    }

    fn maybe_run(&self, connector: &str) {
        let Ok(mut last) = self.last_run.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < ROTATE_EVERY) {
            return;
        }
        *last = Some(std::time::Instant::now());
        let res = blocking(|| {
            crate::target::rotate::rotate(
                &self.dir,
                &self.template,
                connector,
                self.max_age,
                std::time::SystemTime::now(),
            )
        });
        match res {
            Ok(deleted) if !deleted.is_empty() => tracing::info!(
                connector,
                n_files = deleted.len(),
                "rotate: deleted expired output files"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(connector, error = %e, "rotate failed"),
        }
    }
}

/// The most events read from the feed per round (a round reads at most what it may deliver).
const READ_AHEAD: usize = 8192;

/// The most stored bytes (keys and payloads) read per round, so that a round's memory does
/// not grow with the size of the events: 8,192 permit events are 0.7 MB, a 40-field payroll
/// event is about 1.5 KB stored and ~5 KB once parsed.
const ROUND_BYTES: usize = 1 << 20;

impl Runner {
    pub fn new(spec: Arc<ConnectorSpec>, env: Env) -> Result<Runner, String> {
        let target = build_target(&spec, env.timezone)?;
        Ok(Runner::with_target(spec, env, target))
    }

    /// A runner with a given target (fault injection in tests).
    pub fn with_target(spec: Arc<ConnectorSpec>, env: Env, target: Box<dyn Target>) -> Runner {
        let rotation = Rotation::of(&spec);
        let (handle, commands) = command::channel(&spec.name);
        Runner {
            spec,
            target,
            env,
            live: Arc::new(Mutex::new(Live::default())),
            rotation,
            commands,
            handle,
            paused: false,
            ahead: None,
        }
    }

    /// Where operator actions for this connector are sent.
    pub fn handle(&self) -> command::Handle {
        self.handle.clone()
    }

    fn set_live(&self, f: impl FnOnce(&mut Live)) {
        if let Ok(mut l) = self.live.lock() {
            f(&mut l);
        }
    }

    /// Runs until `shutdown` turns true; a delivery under way is finished first.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let name = self.spec.name.clone();
        let start_seq = match self.spec.start {
            Start::Earliest => 0,
            Start::Latest => self.env.feed.last_seq(),
        };
        let started = blocking(|| {
            self.env.ledger.ensure_cursor(&name, start_seq)?;
            crate::ledger::view::View::open(self.env.feed.db())?.pause(&name)
        });
        match started {
            Ok(pause) => self.paused = pause.is_some(),
            Err(e) => {
                tracing::error!(connector = %name, error = %e, "cannot read the ledger; connector not started");
                if e.is_corrupt() {
                    stop_corrupted(&name, &self.live, &e, shutdown).await;
                }
                return;
            }
        }
        let mut new_events = self.env.feed.subscribe();
        let mut wake = self.env.wake.clone();
        let (mut feed_open, mut wake_open, mut commands_open) = (true, true, true);
        if let Some(rotation) = &self.rotation {
            rotation.maybe_run(&name);
        }
        while !*shutdown.borrow() {
            while let Ok(cmd) = self.commands.try_recv() {
                self.execute(cmd);
            }
            let wait = if self.paused {
                self.set_live(|l| l.set_phase(Phase::Paused, Utc::now()));
                Wait::Commands
            } else {
                match self.round().await {
                    Ok(Some(wait)) => wait,
                    Ok(None) => continue,
                    Err(e) if e.is_corrupt() => {
                        stop_corrupted(&name, &self.live, &e, shutdown).await;
                        return;
                    }
                    Err(e) => {
                        tracing::error!(connector = %name, error = %e, "connector round failed; retrying in 1s");
                        Wait::For(Duration::from_secs(1))
                    }
                }
            };
            let (sleep, on_events) = match wait {
                Wait::NewEvents => (None, true),
                Wait::For(d) => (Some(d), false),
                Wait::ForOrNewEvents(d) => (Some(d), true),
                Wait::Commands => (None, false),
            };
            // A closed channel (its sender gone: shutdown under way, or no admin socket in
            // tests) would answer at once forever; stop listening to it instead of spinning.
            let mut incoming = None;
            tokio::select! {
                _ = shutdown.changed() => {}
                r = new_events.changed(), if on_events && feed_open => feed_open = r.is_ok(),
                r = wake.changed(), if wake_open => wake_open = r.is_ok(),
                c = self.commands.recv(), if commands_open => match c {
                    Some(c) => incoming = Some(c),
                    None => commands_open = false,
                },
                _ = tokio::time::sleep(sleep.unwrap_or(Duration::from_secs(1))), if sleep.is_some() || (on_events && !feed_open) => {}
            }
            if let Some(cmd) = incoming {
                self.execute(cmd);
            }
        }
        tracing::info!(connector = %name, "connector stopped");
    }

    /// One round. `Ok(None)`: go again at once; `Ok(Some(w))`: wait for `w` first.
    async fn round(&mut self) -> Result<Option<Wait>, crate::feed::Error> {
        let now = Utc::now();
        let ahead = self.ahead.take();
        if let Some(wait) = self.schedule_closed(now) {
            return Ok(Some(wait));
        }
        let name = self.spec.name.clone();
        let ledger = self.env.ledger.clone();
        // One blocking section for the round's three reads: each `block_in_place` hands the
        // worker's other tasks to another thread, a context switch apiece at low rates.
        let (retry, cursor, intent) = blocking(|| {
            Ok::<_, crate::feed::Error>((
                ledger.retry_state(&name)?,
                ledger.cursor(&name)?,
                ledger.intent(&name)?,
            ))
        })?;
        if let Some(wait) = self.retry_not_due(retry.as_ref(), now) {
            return Ok(Some(wait));
        }
        let cursor = cursor.unwrap_or_default();
        let limit = if retry.is_some() {
            1
        } else {
            self.spec
                .max_batch
                .unwrap_or(self.target.max_batch())
                .max(1)
        };
        let ahead = match ahead {
            Some(a)
                if retry.is_none()
                    && intent.is_none()
                    && cursor.pinned.is_none_or(|p| p <= cursor.seq)
                    && (a.after, a.limit) == (cursor.seq, limit) =>
            {
                // A failed read is read again below, and fails there if it must.
                let read = a.read.await.ok().and_then(Result::ok);
                if read.is_some() {
                    self.set_live(|l| l.read_ahead += 1);
                }
                read
            }
            _ => None,
        };
        // Blocking as a whole: its reads (and a replay's clean-up commit) in one section.
        let Some(work) = blocking(|| self.take_work(&cursor, intent.as_ref(), limit, ahead, now))?
        else {
            self.set_live(|l| l.set_phase(Phase::Idle, now));
            return Ok(Some(Wait::NewEvents));
        };
        // More is waiting behind a plain forward round: read it while this one is mapped and
        // delivered (a round that will linger for more is not followed at once: not read).
        let next = work
            .scanned
            .max(work.events.last().map_or(0, |e| e.seq))
            .max(cursor.seq);
        if retry.is_none()
            && work.pinned.is_none()
            && !work.replay
            && !work.legacy_pin
            && (self.spec.linger.is_zero() || work.events.len() >= limit)
            && next < self.env.feed.last_seq()
        {
            let (feed, mapping) = (self.env.feed.clone(), self.spec.mapping.clone());
            self.ahead = Some(ReadAhead {
                after: next,
                limit,
                read: tokio::task::spawn_blocking(move || {
                    read_and_render(&feed, &mapping, next, limit)
                }),
            });
        }
        let round = self.select_and_map(work, &cursor, limit, now);
        if round.upto != next {
            // Not where this round ends after all: of no use.
            self.ahead = None;
        }
        if let Some(wait) = self.lingering(&round, limit, now) {
            self.set_live(|l| l.set_phase(Phase::Idle, now));
            return Ok(Some(wait));
        }
        // Where the delivery starts from: an interrupted attempt's intent, else the
        // committed checkpoint. Either one promises what is settled in the target.
        let resumed = intent.is_some() || retry.is_some();
        let start = intent.map_or(cursor.checkpoint, |i| i.checkpoint);
        if round.items.is_empty() {
            // Only filtered or parked events: move past them. Nothing was handed over, so
            // losing this commit in a power cut loses nothing: filtered again.
            let lose = if resumed {
                Commit::Durable
            } else {
                Commit::Deferrable
            };
            self.commit(&round, start, 0, &round.parked, now, lose)?;
            return Ok(None);
        }
        self.deliver(round, start, retry, resumed, now).await
    }

    /// `Some(wait)` while the connector's `schedule:` window is closed.
    fn schedule_closed(&self, now: DateTime<Utc>) -> Option<Wait> {
        let tz = self.env.timezone;
        let s = self.spec.schedule.as_ref()?;
        if s.is_open(now, tz) {
            return None;
        }
        let next = s.next_open(now, tz);
        self.set_live(|l| {
            l.set_phase(Phase::OutsideSchedule, now);
            l.next_open = next;
        });
        let wait = next.map_or(Duration::from_secs(60), |n| {
            (n - now)
                .to_std()
                .unwrap_or_default()
                .min(Duration::from_secs(60))
        });
        Some(Wait::For(wait.max(Duration::from_millis(100))))
    }

    /// `Some(wait)` while the head's next attempt is not due yet.
    fn retry_not_due(&self, retry: Option<&RetryState>, now: DateTime<Utc>) -> Option<Wait> {
        let r = retry?;
        let next = r.next_at();
        if next <= now {
            return None;
        }
        let blocked = r.attempts >= self.spec.policy.max_tries;
        self.set_live(|l| {
            let phase = if blocked {
                Phase::Blocked
            } else {
                Phase::Retrying
            };
            l.set_phase(phase, now);
            l.next_attempt = Some(next);
            l.last_error = Some(r.last_error.clone());
        });
        Some(Wait::For((next - now).to_std().unwrap_or_default()))
    }

    /// Blocking (redb reads and maybe a ledger commit): called inside [`blocking`].
    ///
    /// The events of this round: a pinned batch first (exactly the range of its intent),
    /// then events queued by `ess replay`, then events after the cursor (`ahead`: those,
    /// read already by the [`ReadAhead`] of the round before). `None` when there are none.
    fn take_work(
        &self,
        cursor: &CursorState,
        intent: Option<&Intent>,
        limit: usize,
        ahead: Option<Forward>,
        now: DateTime<Utc>,
    ) -> Result<Option<Work>, crate::feed::Error> {
        let name = &self.spec.name;
        let ledger = &self.env.ledger;
        // `CursorState::pinned` is what the release before intents pinned; a database it
        // left mid-batch still finishes that batch under the name it would have used.
        let legacy_pin = intent.is_none() && cursor.pinned.is_some_and(|last| last > cursor.seq);
        if let Some(i) = intent.filter(|i| i.exact && i.replay) {
            let (mut events, _) = ledger.requeued_events(name, READ_AHEAD)?;
            events.retain(|e| (i.first..=i.last).contains(&e.seq));
            if !events.is_empty() {
                return Ok(Some(Work {
                    events,
                    pinned: Some(i.last),
                    replay: true,
                    legacy_pin: false,
                    scanned: 0,
                    rendered: None,
                }));
            }
        }
        let pinned = match intent {
            Some(i) if i.exact && !i.replay && i.last > cursor.seq => Some(i.last),
            Some(_) => None,
            None => cursor.pinned.filter(|&last| last > cursor.seq),
        };
        if pinned.is_none() {
            let (events, missing) = ledger.requeued_events(name, limit)?;
            if !missing.is_empty() {
                ledger.commit_replayed(name, &missing, cursor.checkpoint.clone(), 0, &[], now)?;
            }
            if !events.is_empty() {
                return Ok(Some(Work {
                    events,
                    pinned,
                    replay: true,
                    legacy_pin: false,
                    scanned: 0,
                    rendered: None,
                }));
            }
        }
        let read = match (pinned, ahead) {
            // A pinned range is read whole: the retry must carry exactly its events.
            (Some(last), _) => {
                let n = usize::try_from(last - cursor.seq).unwrap_or(usize::MAX);
                Forward {
                    events: self.env.feed.read_after(cursor.seq, n)?,
                    scanned: 0,
                    rendered: None,
                }
            }
            (None, Some(read)) => read,
            (None, None) => read_forward(&self.env.feed, &self.spec.mapping, cursor.seq, limit)?,
        };
        let Forward {
            events,
            scanned,
            rendered,
        } = read;
        Ok(
            (!events.is_empty() || scanned > cursor.seq).then_some(Work {
                events,
                pinned,
                replay: false,
                legacy_pin,
                scanned,
                rendered,
            }),
        )
    }

    /// Drops what `events:` does not select and maps the rest, up to `limit` records (or
    /// exactly the pinned range). An event that cannot be mapped is parked; the others go on.
    fn select_and_map(
        &self,
        work: Work,
        cursor: &CursorState,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Round {
        let mut round = Round {
            items: Vec::new(),
            parked: Vec::new(),
            taken: Vec::new(),
            upto: cursor.seq,
            pinned: work.pinned,
            replay: work.replay,
            legacy_pin: work.legacy_pin,
        };
        let mut consumed_all = true;
        let (events, records) = match work.rendered {
            Some(r) if r.len() == work.events.len() => (work.events, r),
            _ => render_all(&self.spec.mapping, work.events),
        };
        for (ev, rendered) in events.into_iter().zip(records) {
            if round.pinned.is_none() && round.items.len() >= limit {
                consumed_all = false;
                break;
            }
            round.upto = round.upto.max(ev.seq);
            round.taken.push(ev.seq);
            let Some(rendered) = rendered else {
                continue;
            };
            match rendered {
                Ok(rec) => round.items.push((ev, rec)),
                Err(e) => {
                    let _span = crate::logging::event_span(&ev).entered();
                    tracing::warn!(connector = %self.spec.name, reason = e.reason(), "event cannot be mapped; parked as a dead letter: {e}");
                    round.parked.push((
                        ev.seq,
                        DeadLetter {
                            reason: e.reason().into(),
                            message: e.to_string(),
                            at_micros: now.timestamp_micros(),
                            attempts: 0,
                        },
                    ));
                }
            }
        }
        if consumed_all {
            round.upto = round.upto.max(work.scanned);
        }
        round
    }

    /// `batch.linger`: a batch that is not full waits for more events, up to `linger`
    /// after its first event arrived (a pinned or replayed batch goes at once).
    fn lingering(&self, round: &Round, limit: usize, now: DateTime<Utc>) -> Option<Wait> {
        if self.spec.linger.is_zero()
            || round.pinned.is_some()
            || round.replay
            || round.items.len() >= limit
        {
            return None;
        }
        let (first, _) = round.items.first()?;
        let due =
            first.received_at + chrono::Duration::from_std(self.spec.linger).unwrap_or_default();
        (due > now).then(|| Wait::ForOrNewEvents((due - now).to_std().unwrap_or_default()))
    }

    /// Commits a round's outcome: a replay through [`Ledger::commit_replayed`], anything
    /// else by moving the cursor past the round with [`Ledger::commit_progress`].
    ///
    /// A plain forward round (nothing parked, not a replay) with `Commit::Deferrable` is
    /// committed without waiting for its fsync ([`Ledger::commit_progress_deferred`]): the
    /// next durable commit carries it, within `DEFER_DURABLE`. Everything else is durable
    /// before this returns: a parked event, a replay, a cleared retry or intent must not
    /// come back after a power cut.
    fn commit(
        &self,
        round: &Round,
        checkpoint: Vec<u8>,
        n_delivered: u64,
        parked: &[(Seq, DeadLetter)],
        at: DateTime<Utc>,
        lose: Commit,
    ) -> Result<CursorState, crate::feed::Error> {
        let name = &self.spec.name;
        let ledger = &self.env.ledger;
        blocking(|| {
            if round.replay {
                ledger.commit_replayed(name, &round.taken, checkpoint, n_delivered, parked, at)
            } else if parked.is_empty() && round.pinned.is_none() && lose == Commit::Deferrable {
                ledger.commit_progress_deferred(name, round.upto, checkpoint, n_delivered, at)
            } else {
                ledger.commit_progress(name, round.upto, checkpoint, n_delivered, parked, at)
            }
        })
    }

    /// Hands the round's records to the target (after its intent, if it has one, is
    /// committed); commits on success, else records the failure (or parks the head) as the
    /// retry policy says.
    async fn deliver(
        &mut self,
        round: Round,
        mut start: Vec<u8>,
        retry: Option<RetryState>,
        resumed: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<Wait>, crate::feed::Error> {
        let name = self.spec.name.clone();
        if retry.is_none() {
            // A retry keeps showing retrying (or blocked) while it is attempted, so the
            // state's since-when is that of the first failure.
            self.set_live(|l| l.set_phase(Phase::Delivering, now));
        }
        // A batch pinned by the release before intents was named after its first event.
        let named_at = match round.items.first() {
            Some((first, _)) if round.legacy_pin => first.received_at,
            _ => now,
        };
        let delivery = Delivery {
            connector: &name,
            items: &round.items,
            now: named_at.with_timezone(&self.env.timezone),
            replay: round.replay,
        };
        // Whether this commit may wait for its fsync: the target repairs a lost one, and
        // there is no retry state or intent for it to clear (which must not come back).
        let mut lose = if resumed || !self.target.repairs_lost_commits() {
            Commit::Durable
        } else {
            Commit::Deferrable
        };
        let result = match self.intent_step(&round, &delivery, &start).await? {
            Ok((from, intent)) => {
                if intent {
                    lose = Commit::Durable;
                }
                start = from;
                self.target.deliver(&delivery, &start).await
            }
            Err(e) => Err(e),
        };
        let (first_seq, last_seq) = (delivery.first_seq(), delivery.last_seq());
        match result {
            Ok(checkpoint) => {
                let n = round.items.len() as u64;
                self.commit(&round, checkpoint, n, &round.parked, Utc::now(), lose)?;
                let replay = round.replay;
                for (ev, _) in &round.items {
                    let _span = crate::logging::event_span(ev).entered();
                    tracing::debug!(connector = %name, replay, "delivered");
                }
                tracing::info!(connector = %name, first_seq, last_seq, n_events = n, replay, "delivered");
                self.env.hooks.delivered(&name, &round.items);
                self.set_live(|l| {
                    l.set_phase(Phase::Idle, Utc::now());
                    l.next_attempt = None;
                });
                if let Some(rotation) = &self.rotation {
                    rotation.maybe_run(&name);
                }
                Ok(None)
            }
            Err(err) => {
                self.env.hooks.failed(&name, &err);
                self.on_failure(retry, &round, start, err, now)
                    .await
                    .map(Some)
            }
        }
    }

    /// Before the first byte: the target says whether `start` describes where this
    /// delivery writes; if not, its intent is committed durably and becomes the start.
    /// `Ok(Ok((start, intent)))`: where to deliver from, and whether an intent was
    /// committed. `Ok(Err(_))`: the target failed to tell (a delivery failure like any other).
    async fn intent_step(
        &mut self,
        round: &Round,
        delivery: &Delivery<'_>,
        start: &[u8],
    ) -> Result<Result<(Vec<u8>, bool), DeliveryError>, crate::feed::Error> {
        let prepared = match self.target.prepare(delivery, start).await {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let name = &self.spec.name;
        if prepared.ambiguous {
            tracing::warn!(connector = %name, first_seq = delivery.first_seq(), last_seq = delivery.last_seq(), "delivering again what an interrupted attempt may already have handed over (at least once)");
            self.env.hooks.ambiguous(name);
        }
        let Some(checkpoint) = prepared.intent else {
            return Ok(Ok((start.to_vec(), false)));
        };
        let intent = Intent {
            first: delivery.first_seq(),
            last: delivery.last_seq(),
            replay: round.replay,
            exact: self.target.pins_batches(),
            checkpoint,
        };
        blocking(|| self.env.ledger.set_intent(name, &intent))?;
        Ok(Ok((intent.checkpoint, true)))
    }

    /// `start`: the checkpoint the delivery started from; committed if the head is parked,
    /// so what the attempt may have left is still known as ours.
    async fn on_failure(
        &mut self,
        retry: Option<RetryState>,
        round: &Round,
        start: Vec<u8>,
        err: DeliveryError,
        now: DateTime<Utc>,
    ) -> Result<Wait, crate::feed::Error> {
        let name = self.spec.name.clone();
        let ledger = self.env.ledger.clone();
        let items = &round.items;
        let head = &items[0].0;
        let attempts = retry
            .as_ref()
            .filter(|r| r.seq == head.seq)
            .map_or(0, |r| r.attempts)
            + 1;
        let permanent = matches!(err, DeliveryError::Permanent(_));
        let exhausted = permanent || attempts >= self.spec.policy.max_tries;
        tracing::warn!(connector = %name, seq = head.seq, trace_id = %head.trace_id, attempts, error = %err, "delivery failed");
        let note = ErrorNote {
            seq: head.seq,
            message: err.to_string(),
            at_micros: now.timestamp_micros(),
        };
        // Only for the page and `ess stats`: a failure to keep it must not stop delivery.
        if let Err(e) = blocking(|| ledger.note_error(&name, &note)) {
            tracing::warn!(connector = %name, error = %e, "cannot record the last error");
        }
        if exhausted && items.len() == 1 && self.spec.policy.on_failure == OnFailure::Park {
            let reason = if permanent { "permanent" } else { "retries" };
            let letter = DeadLetter {
                reason: reason.into(),
                message: err.to_string(),
                at_micros: now.timestamp_micros(),
                attempts,
            };
            tracing::warn!(connector = %name, seq = head.seq, trace_id = %head.trace_id, reason, "parked as a dead letter");
            let head_seq = head.seq;
            let parked = [(head_seq, letter)];
            blocking(|| {
                if round.replay {
                    ledger.commit_replayed(&name, &[head_seq], start, 0, &parked, now)
                } else {
                    ledger.commit_progress(&name, head_seq, start, 0, &parked, now)
                }
            })?;
            self.set_live(|l| l.last_error = Some(err.to_string()));
            return Ok(Wait::For(Duration::ZERO));
        }
        let jitter: f64 = rand::random();
        let mut delay = self.spec.policy.delay(attempts, jitter);
        if let DeliveryError::Transient {
            retry_after: Some(ra),
            ..
        } = &err
        {
            delay = delay.max(*ra);
        }
        let next_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
        let state = RetryState {
            seq: head.seq,
            attempts,
            next_at_micros: next_at.timestamp_micros(),
            last_error: err.to_string(),
        };
        blocking(|| ledger.record_failure(&name, &state))?;
        let blocked = exhausted;
        self.set_live(|l| {
            let phase = if blocked {
                Phase::Blocked
            } else {
                Phase::Retrying
            };
            l.set_phase(phase, now);
            l.last_error = Some(err.to_string());
            l.next_attempt = Some(next_at);
        });
        Ok(Wait::For(delay))
    }
}

/// A damaged stored value: the connector delivers nothing more (a damaged value is never
/// delivered, and skipping it would break order) and shows why until shutdown.
async fn stop_corrupted(
    name: &str,
    live: &Mutex<Live>,
    e: &crate::feed::Error,
    mut shutdown: watch::Receiver<bool>,
) {
    let seq = e.corrupt_seq();
    tracing::error!(connector = %name, ?seq, error = %e, "damaged stored value; the connector stops (run `ess verify`)");
    if let Ok(mut l) = live.lock() {
        l.set_phase(Phase::Corrupted { seq }, Utc::now());
        l.last_error = Some(e.to_string());
        l.next_attempt = None;
    }
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    tracing::info!(connector = %name, "connector stopped");
}

/// The events one round took, before selecting and mapping.
struct Work {
    events: Vec<Event>,
    /// The pinned range's last seq, when the round finishes a pinned batch.
    pinned: Option<Seq>,
    /// Re-delivered events queued by `ess replay` (behind the cursor already).
    replay: bool,
    /// The pin is one the release before intents left (`CursorState::pinned`).
    legacy_pin: bool,
    /// The last seq read, selected or not (events `events:` does not select are skipped
    /// unread): the round moves past it once every event in `events` is handled.
    scanned: Seq,
    /// The records of `events`, made already by a [`ReadAhead`].
    rendered: Option<Vec<Rendered>>,
}

/// One round after selecting and mapping: what goes to the target and what is committed.
struct Round {
    /// The mapped events and their records, in seq order.
    items: Vec<(Event, Record)>,
    /// Events that could not be mapped (or compliance stopped), parked with this round.
    parked: Vec<(Seq, DeadLetter)>,
    /// Every seq the round took (selected or not): a replay commits exactly these.
    taken: Vec<Seq>,
    /// The cursor after this round commits (not a replay).
    upto: Seq,
    pinned: Option<Seq>,
    replay: bool,
    legacy_pin: bool,
}

/// Whether a round's commit may be lost in a power cut and repaired: see
/// [`Runner::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    Durable,
    Deferrable,
}

enum Wait {
    /// Until new events are committed (or a replay is queued).
    NewEvents,
    /// For this long (a retry, a schedule window).
    For(Duration),
    /// For this long, or until new events arrive (a batch lingering to fill up).
    ForOrNewEvents(Duration),
    /// Until an operator action (paused).
    Commands,
}

/// Events per piece of mapping work: a round of fewer is mapped on its own thread.
const SPLIT_RENDER: usize = 64;

/// Each event's record, on this thread.
fn render_each(mapping: &Mapping, events: &[Event]) -> Vec<Rendered> {
    events
        .iter()
        .map(|ev| mapping.selects(&ev.event_type).then(|| mapping.render(ev)))
        .collect()
}

/// The events `produce` hands out, in order, with each one's record (`None`: not
/// selected), and what `produce` returned. Full pieces of [`SPLIT_RENDER`] events go to a
/// second thread as they come, so it maps while the rest are produced (read from the feed,
/// say); this thread maps alongside it once `produce` is done (a map's work for one event
/// depends on that event alone; a 40-field copybook record is most of a drain's CPU, and
/// the machine has a second core). A round too small for a piece starts no thread; if the
/// thread cannot be started, this one maps everything.
fn map_in_pieces<R>(
    mapping: &Mapping,
    produce: impl FnOnce(&mut dyn FnMut(Event)) -> R,
) -> (R, Vec<Event>, Vec<Rendered>) {
    use std::sync::mpsc::{Receiver, channel};
    type Piece = (usize, Vec<Event>);
    type Done = Vec<(usize, Vec<Event>, Vec<Rendered>)>;
    /// Maps pieces until there are none left.
    fn work(mapping: &Mapping, pieces: &Mutex<Receiver<Piece>>) -> Done {
        let mut done = Vec::new();
        loop {
            // The lock is released at the end of the statement, before the piece is mapped.
            let next = match pieces.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => break,
            };
            let Ok((i, events)) = next else {
                break;
            };
            let records = render_each(mapping, &events);
            done.push((i, events, records));
        }
        done
    }
    let (tx, rx) = channel::<Piece>();
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        let mut helper = None;
        let (mut piece, mut n_pieces) = (Vec::with_capacity(SPLIT_RENDER), 0);
        let mut hand_out = |piece: Vec<Event>| {
            // `rx` lives until this function returns: a send cannot fail.
            tx.send((n_pieces, piece))
                .expect("the receiver outlives every send");
            n_pieces += 1;
        };
        let produced = produce(&mut |ev| {
            piece.push(ev);
            if piece.len() == SPLIT_RENDER {
                if helper.is_none() {
                    helper = Some(
                        std::thread::Builder::new()
                            .name("ess-map".into())
                            .spawn_scoped(scope, || work(mapping, &rx))
                            .ok(),
                    );
                }
                hand_out(std::mem::replace(
                    &mut piece,
                    Vec::with_capacity(SPLIT_RENDER),
                ));
            }
        });
        if !piece.is_empty() {
            hand_out(piece);
        }
        drop(tx);
        let mut done = work(mapping, &rx);
        if let Some(Some(helper)) = helper {
            match helper.join() {
                Ok(rest) => done.extend(rest),
                // A panic in a map is a bug: it goes on as if it had happened here.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        done.sort_unstable_by_key(|(i, ..)| *i);
        let n = done.iter().map(|(_, evs, _)| evs.len()).sum();
        let (mut events, mut rendered) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (_, evs, recs) in done {
            events.extend(evs);
            rendered.extend(recs);
        }
        (produced, events, rendered)
    })
}

/// The round's events with their records ([`map_in_pieces`] for a round of a piece or more).
fn render_all(mapping: &Mapping, events: Vec<Event>) -> (Vec<Event>, Vec<Rendered>) {
    if events.len() < SPLIT_RENDER {
        // Not one piece: no channel, no thread (a round at a low rate).
        let rendered = render_each(mapping, &events);
        return (events, rendered);
    }
    let ((), events, rendered) = map_in_pieces(mapping, |each| events.into_iter().for_each(each));
    (events, rendered)
}

/// Blocking: [`read_forward`] with the events mapped as they are read, for a [`ReadAhead`]
/// (reading is about a quarter of a payroll drain's work, mapping most of the rest).
fn read_and_render(
    feed: &Feed,
    mapping: &Mapping,
    after: Seq,
    limit: usize,
) -> Result<Forward, crate::feed::Error> {
    let (scanned, events, rendered) =
        map_in_pieces(mapping, |each| read_each(feed, mapping, after, limit, each));
    Ok(Forward {
        events,
        scanned: scanned?,
        rendered: Some(rendered),
    })
}

/// Blocking: the events after `after` that a forward round takes. A round takes no more
/// events than it may deliver (reading 4,096 to deliver 1,000 decoded each event about four
/// times), and the types `events:` does not select are skipped without decoding their
/// payloads.
fn read_forward(
    feed: &Feed,
    mapping: &Mapping,
    after: Seq,
    limit: usize,
) -> Result<Forward, crate::feed::Error> {
    let mut events = Vec::with_capacity(limit.min(READ_AHEAD));
    let scanned = read_each(feed, mapping, after, limit, |e| events.push(e))?;
    Ok(Forward {
        events,
        scanned,
        rendered: None,
    })
}

/// [`read_forward`], handing each event to `each` as it is read; the last seq looked at.
fn read_each(
    feed: &Feed,
    mapping: &Mapping,
    after: Seq,
    limit: usize,
    each: impl FnMut(Event),
) -> Result<Seq, crate::feed::Error> {
    feed.read_selected(
        after,
        READ_AHEAD,
        limit,
        ROUND_BYTES,
        |t| mapping.selects(t),
        each,
    )
}

/// Runs blocking redb work without stalling the async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[cfg(test)]
mod tests;
