//! Connector behaviour against a fault-injecting target: order, exactly once, retries,
//! `block` vs `park`, and events that cannot be mapped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::feed::{NewEvent, open_database};
use chrono::Timelike;
use command::{Action, ActionError};

/// A target that records what it got and fails the first `fail_first` calls.
#[derive(Clone, Default)]
struct Recorder {
    got: Arc<Mutex<Vec<String>>>,
    /// The size of every successful delivery.
    sizes: Arc<Mutex<Vec<usize>>>,
    calls: Arc<Mutex<u32>>,
    fail_first: u32,
    permanent: bool,
    /// Fails every delivery that contains this id.
    poison: Option<String>,
    /// Says its checkpoint repairs a lost delivery commit (as an append drop does).
    repairs: bool,
    /// A delivery holding this id goes to a new place (an append's new `{{date}}` file):
    /// `prepare` proposes an intent naming it, and later deliveries start from there.
    new_place_at: Option<String>,
}

/// The `id` field of every event a delivery holds.
fn ids_of(d: &Delivery<'_>) -> Vec<String> {
    d.items
        .iter()
        .map(|(e, _)| {
            e.payload.tree().unwrap()["id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[async_trait::async_trait]
impl Target for Recorder {
    async fn prepare(
        &mut self,
        d: &Delivery<'_>,
        _cp: &[u8],
    ) -> Result<crate::target::Prepared, DeliveryError> {
        let at = self.new_place_at.as_ref();
        Ok(crate::target::Prepared {
            intent: at
                .filter(|id| ids_of(d).contains(id))
                .map(|id| format!("place {id}").into_bytes()),
            ambiguous: false,
        })
    }

    async fn deliver(
        &mut self,
        d: &Delivery<'_>,
        cp: &[u8],
    ) -> Result<crate::target::Checkpoint, DeliveryError> {
        let mut calls = self.calls.lock().unwrap();
        *calls += 1;
        let poisoned = self.poison.as_ref().is_some_and(|p| {
            d.items
                .iter()
                .any(|(e, _)| e.payload.tree().unwrap()["id"] == p.as_str())
        });
        if *calls <= self.fail_first || poisoned {
            return Err(if self.permanent || poisoned {
                DeliveryError::Permanent("refused".into())
            } else {
                DeliveryError::transient("down")
            });
        }
        self.sizes.lock().unwrap().push(d.items.len());
        self.got.lock().unwrap().extend(ids_of(d));
        Ok(cp.to_vec())
    }

    fn repairs_lost_commits(&self) -> bool {
        self.repairs
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    env: Env,
    spec: Arc<ConnectorSpec>,
}

fn rig(retry: &str) -> Rig {
    rig_with(retry, "")
}

/// A rig whose map has `more` (whole lines) as well.
fn rig_with(retry: &str, more: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("m.yml");
    std::fs::write(
        &map,
        format!(
            "target: t\nevents: [P]\nfields:\n  ID: id | width:6\ndeliver: {{kind: file, dir: out, file: x.txt}}\nretry: {retry}\n{more}"
        ),
    )
    .unwrap();
    let spec = Arc::new(load_one(&map, chrono_tz::UTC).unwrap_or_else(|e| panic!("{e:?}")));
    let db = crate::feed::Store::from(open_database(&dir.path().join("ess.redb")).unwrap());
    let feed = Feed::open(db.clone()).unwrap();
    let env = Env {
        feed,
        ledger: Ledger::new(db),
        timezone: chrono_tz::UTC,
        hooks: Arc::new(NoHooks),
        wake: watch::channel(0).1,
    };
    Rig {
        _dir: dir,
        env,
        spec,
    }
}

async fn append(env: &Env, ids: &[&str], event_type: &str) {
    let events = ids
        .iter()
        .map(|id| NewEvent {
            event_type: event_type.into(),
            payload: serde_json::json!({"id": id}).as_object().unwrap().clone(),
            key: format!("{event_type}-{id}"),
            trace_id: "t".into(),
            ts: None,
        })
        .collect();
    env.feed.append(events).await.unwrap();
}

/// Polls `cond` until it holds; fails the test after 30 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts a connector with `target`: its stop switch, live state and task.
fn spawn(
    rig: &Rig,
    target: impl Target + 'static,
) -> (
    watch::Sender<bool>,
    Arc<Mutex<Live>>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stop_rx) = watch::channel(false);
    let runner = Runner::with_target(rig.spec.clone(), rig.env.clone(), Box::new(target));
    let live = runner.live.clone();
    (stop, live, tokio::spawn(runner.run(stop_rx)))
}

/// Runs the connector until `done` holds (bounded), then stops it.
async fn run_until(rig: &Rig, target: impl Target + 'static, done: impl Fn() -> bool) {
    let (stop, _live, task) = spawn(rig, target);
    eventually("the connector to get there", done).await;
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_fails_then_recovers_gets_everything_once_in_order() {
    let rig = rig("{base: 1ms, max_delay: 5ms}");
    append(&rig.env, &["a", "b", "c"], "P").await;
    append(&rig.env, &["x"], "OTHER").await;
    append(&rig.env, &["d"], "P").await;
    let target = Recorder {
        fail_first: 4,
        ..Recorder::default()
    };
    let got = target.got.clone();
    run_until(&rig, target, || got.lock().unwrap().len() >= 4).await;
    assert_eq!(*got.lock().unwrap(), ["a", "b", "c", "d"]);
    let cursor = rig.env.ledger.cursor("t").unwrap().unwrap();
    assert_eq!((cursor.seq, cursor.delivered), (5, 4));
    assert_eq!(rig.env.ledger.retry_state("t").unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_of_other_types_are_passed_over_and_the_cursor_moves_past_them() {
    let rig = rig("{base: 1ms, max_delay: 5ms}");
    append(&rig.env, &["a"], "P").await;
    let others: Vec<String> = (0..10_000).map(|i| format!("x{i}")).collect();
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    append(&rig.env, &others, "OTHER").await;
    append(&rig.env, &["b"], "P").await;
    append(&rig.env, &["y", "z"], "OTHER").await;
    let target = Recorder::default();
    let (got, sizes) = (target.got.clone(), target.sizes.clone());
    let ledger = rig.env.ledger.clone();
    run_until(&rig, target, || {
        ledger.cursor("t").unwrap().is_some_and(|c| c.seq == 10_004)
    })
    .await;
    assert_eq!(*got.lock().unwrap(), ["a", "b"]);
    assert!(sizes.lock().unwrap().iter().all(|&n| n > 0));
    let cursor = rig.env.ledger.cursor("t").unwrap().unwrap();
    assert_eq!((cursor.seq, cursor.delivered), (10_004, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn block_holds_later_events_and_park_moves_on() {
    // block: the poisoned event is retried and nothing after it is delivered.
    let rig_block = rig("{base: 1ms, max_delay: 2ms, max_tries: 3, on_failure: block}");
    append(&rig_block.env, &["a", "bad", "c"], "P").await;
    let target = Recorder {
        poison: Some("bad".into()),
        ..Recorder::default()
    };
    let (got, calls) = (target.got.clone(), target.calls.clone());
    run_until(&rig_block, target, || *calls.lock().unwrap() >= 6).await;
    assert_eq!(*got.lock().unwrap(), ["a"]);
    assert!(rig_block.env.ledger.dead_letters("t").unwrap().is_empty());
    assert_eq!(
        rig_block.env.ledger.retry_state("t").unwrap().unwrap().seq,
        2
    );

    // park: the poisoned event becomes a dead letter, the rest goes on in order.
    let rig_park = rig("{base: 1ms, max_delay: 2ms, max_tries: 3, on_failure: park}");
    append(&rig_park.env, &["a", "bad", "c"], "P").await;
    let target = Recorder {
        poison: Some("bad".into()),
        ..Recorder::default()
    };
    let got = target.got.clone();
    run_until(&rig_park, target, || got.lock().unwrap().len() >= 2).await;
    assert_eq!(*got.lock().unwrap(), ["a", "c"]);
    let dead = rig_park.env.ledger.dead_letters("t").unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].0, dead[0].1.reason.as_str()), (2, "permanent"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_that_cannot_be_mapped_is_parked_and_the_others_go_on() {
    let rig = rig("{base: 1ms}");
    append(&rig.env, &["a", "far-too-wide", "c"], "P").await;
    let target = Recorder::default();
    let got = target.got.clone();
    run_until(&rig, target, || {
        rig.env
            .ledger
            .cursor("t")
            .unwrap()
            .is_some_and(|c| c.seq == 3)
    })
    .await;
    assert_eq!(*got.lock().unwrap(), ["a", "c"]);
    let dead = rig.env.ledger.dead_letters("t").unwrap();
    assert_eq!(
        (dead.len(), dead[0].0, dead[0].1.reason.as_str()),
        (1, 2, "map")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_due_later_waits_for_its_time_after_a_restart() {
    let rig = rig("{base: 1ms}");
    append(&rig.env, &["a"], "P").await;
    // A previous run left a retry due in an hour.
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    rig.env.ledger.ensure_cursor("t", 0).unwrap();
    rig.env
        .ledger
        .record_failure(
            "t",
            &RetryState {
                seq: 1,
                attempts: 3,
                next_at_micros: later.timestamp_micros(),
                last_error: "down".into(),
            },
        )
        .unwrap();
    let target = Recorder::default();
    let got = target.got.clone();
    let (stop, live, task) = spawn(&rig, target);
    // It does not fire at once: the runner reads the ledger and waits for the due time.
    eventually("the runner to read the due time", || {
        live.lock().unwrap().next_attempt.is_some()
    })
    .await;
    assert_eq!(
        live.lock()
            .unwrap()
            .next_attempt
            .map(|t| t.timestamp_micros()),
        Some(later.timestamp_micros())
    );
    assert_eq!(live.lock().unwrap().phase, Phase::Retrying);
    assert!(got.lock().unwrap().is_empty(), "retried before its time");
    // Make it due now (as the clock would): it fires.
    rig.env
        .ledger
        .record_failure(
            "t",
            &RetryState {
                seq: 1,
                attempts: 3,
                next_at_micros: 0,
                last_error: "down".into(),
            },
        )
        .unwrap();
    stop.send(true).unwrap();
    task.await.unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let target = Recorder::default();
    let got = target.got.clone();
    let task = tokio::spawn(
        Runner::with_target(rig.spec.clone(), rig.env.clone(), Box::new(target)).run(stop_rx),
    );
    eventually("the retry to fire", || !got.lock().unwrap().is_empty()).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(*got.lock().unwrap(), ["a"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn outside_its_schedule_a_connector_waits_and_says_when_it_opens() {
    use chrono::Datelike;
    // A window on a day three days from today (UTC): closed all of today.
    let day = chrono::Utc::now().weekday().succ().succ().succ();
    let rig = rig(&format!("{{base: 1ms}}\nschedule: \"{day}\""));
    append(&rig.env, &["a"], "P").await;
    let target = Recorder::default();
    let got = target.got.clone();
    let (stop, live, task) = spawn(&rig, target);
    eventually("the connector to report outside schedule", || {
        live.lock().unwrap().phase == Phase::OutsideSchedule
    })
    .await;
    let next_open = live
        .lock()
        .unwrap()
        .next_open
        .expect("the next opening is known");
    assert_eq!(next_open.weekday(), day);
    assert_eq!((next_open.time().hour(), next_open.time().minute()), (0, 0));
    assert!(
        got.lock().unwrap().is_empty(),
        "nothing is delivered outside the window"
    );
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(
        rig.env.ledger.cursor("t").unwrap().unwrap().seq,
        0,
        "the event waits in the feed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lingering_batch_waits_to_fill_up_and_goes_when_full() {
    let rig = rig("{base: 1ms}\nbatch: {max_events: 3, linger: 1h}");
    let target = Recorder::default();
    let (got, sizes) = (target.got.clone(), target.sizes.clone());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(
        Runner::with_target(rig.spec.clone(), rig.env.clone(), Box::new(target)).run(stop_rx),
    );
    append(&rig.env, &["a", "b"], "P").await;
    append(&rig.env, &["c"], "P").await;
    eventually("a full batch goes at once, whatever the linger", || {
        got.lock().unwrap().len() >= 3
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(
        *sizes.lock().unwrap(),
        [3],
        "one batch of three, not a batch of two then one"
    );
}

/// A target whose deliveries wait until the test lets each one go.
struct Gated {
    started: std::sync::mpsc::Sender<Vec<u64>>,
    release: Arc<tokio::sync::Semaphore>,
}

#[async_trait::async_trait]
impl Target for Gated {
    async fn deliver(
        &mut self,
        d: &Delivery<'_>,
        cp: &[u8],
    ) -> Result<crate::target::Checkpoint, DeliveryError> {
        let seqs = d.items.iter().map(|(e, _)| e.seq).collect();
        let _ = self.started.send(seqs);
        self.release.acquire().await.unwrap().forget();
        Ok(cp.to_vec())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_skip_never_parks_a_head_that_is_being_delivered() {
    let rig = rig("{base: 1ms, max_delay: 5ms}");
    append(&rig.env, &["a"], "P").await;
    let (started_tx, started) = std::sync::mpsc::channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let target = Gated {
        started: started_tx,
        release: release.clone(),
    };
    let (stop, stop_rx) = watch::channel(false);
    let runner = Runner::with_target(rig.spec.clone(), rig.env.clone(), Box::new(target));
    let handle = runner.handle();
    let task = tokio::spawn(runner.run(stop_rx));
    // Seq 1 is being delivered now; a skip of it is sent in the middle of that delivery.
    let delivering =
        tokio::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(30)).unwrap())
            .await
            .unwrap();
    assert_eq!(delivering, [1]);
    let skip = tokio::task::spawn_blocking(move || {
        let act = Action::Skip {
            seq: 1,
            reason: String::new(),
        };
        handle.act(act, "op", Duration::from_secs(30))
    });
    // The skip waits for the round: let the delivery finish, then it is answered.
    release.add_permits(1);
    let answer = skip.await.unwrap();
    assert!(
        matches!(
            answer,
            Err(ActionError::NotHead {
                seq: 1,
                head: None,
                ..
            })
        ),
        "{answer:?}"
    );
    let ledger = &rig.env.ledger;
    assert_eq!(ledger.cursor("t").unwrap().unwrap().delivered, 1);
    assert!(
        ledger.dead_letters("t").unwrap().is_empty(),
        "seq 1 was delivered, not parked"
    );
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connector_paused_in_the_ledger_starts_paused_and_delivers_once_resumed() {
    let rig = rig("{base: 1ms, max_delay: 5ms}");
    let who = crate::ledger::actions::Actor {
        by: "op",
        at: Utc::now(),
    };
    // Paused before a restart: the ledger keeps it.
    assert!(rig.env.ledger.pause("t", "maintenance", &who).unwrap());
    let target = Recorder::default();
    let got = target.got.clone();
    let (stop, stop_rx) = watch::channel(false);
    let runner = Runner::with_target(rig.spec.clone(), rig.env.clone(), Box::new(target));
    let (handle, live) = (runner.handle(), runner.live.clone());
    let task = tokio::spawn(runner.run(stop_rx));
    append(&rig.env, &["a", "b"], "P").await;
    eventually("paused", || live.lock().unwrap().phase == Phase::Paused).await;
    assert!(got.lock().unwrap().is_empty(), "nothing while paused");
    let resume = move || handle.act(Action::Resume, "op", Duration::from_secs(30));
    let answer = tokio::task::spawn_blocking(resume).await.unwrap().unwrap();
    assert_eq!(answer, "t resumed");
    eventually("both delivered", || got.lock().unwrap().len() == 2).await;
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// One call of [`Planner::deliver`]: the range, the checkpoint it was asked to deliver
/// from, the intent the ledger held durably at that moment, and the delivery time.
type PlannedCall = (u64, u64, Vec<u8>, Option<Vec<u8>>, DateTime<Utc>);

/// A target that proposes an intent naming its range (unless it is handed one) and records
/// what it was asked to deliver.
#[derive(Clone)]
struct Planner {
    pins: bool,
    fail_first: usize,
    permanent: bool,
    ledger: Ledger,
    calls: Arc<Mutex<Vec<PlannedCall>>>,
}

impl Planner {
    fn new(rig: &Rig, pins: bool, fail_first: usize) -> Planner {
        Planner {
            pins,
            fail_first,
            permanent: false,
            ledger: rig.env.ledger.clone(),
            calls: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl Target for Planner {
    async fn prepare(
        &mut self,
        d: &Delivery<'_>,
        cp: &[u8],
    ) -> Result<crate::target::Prepared, DeliveryError> {
        if cp.starts_with(b"intent") {
            return Ok(crate::target::Prepared::default());
        }
        Ok(crate::target::Prepared {
            intent: Some(format!("intent-{}-{}", d.first_seq(), d.last_seq()).into_bytes()),
            ambiguous: false,
        })
    }

    async fn deliver(
        &mut self,
        d: &Delivery<'_>,
        cp: &[u8],
    ) -> Result<crate::target::Checkpoint, DeliveryError> {
        let durable = self.ledger.intent("t").unwrap().map(|i| i.checkpoint);
        let mut calls = self.calls.lock().unwrap();
        let now = d.now.with_timezone(&Utc);
        calls.push((d.first_seq(), d.last_seq(), cp.to_vec(), durable, now));
        if calls.len() <= self.fail_first {
            return Err(if self.permanent {
                DeliveryError::Permanent("refused".into())
            } else {
                DeliveryError::transient("down")
            });
        }
        Ok(format!("done-{}", d.last_seq()).into_bytes())
    }

    fn pins_batches(&self) -> bool {
        self.pins
    }
}

/// The intent is in the ledger, durably, before `deliver` writes anything; a failed batch
/// is retried with exactly its range from that intent (however many events came since);
/// the delivery's commit drops it together with the cursor move.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_intent_is_durable_before_deliver_and_pins_the_retry() {
    let rig = rig("{base: 1ms, max_delay: 5ms}");
    append(&rig.env, &["a", "b", "c"], "P").await;
    let target = Planner::new(&rig, true, 1);
    let calls = target.calls.clone();
    let (stop, _live, task) = spawn(&rig, target);
    eventually("the first attempt", || !calls.lock().unwrap().is_empty()).await;
    append(&rig.env, &["d", "e"], "P").await;
    eventually("everything", || {
        rig.env
            .ledger
            .cursor("t")
            .unwrap()
            .is_some_and(|c| c.seq == 5)
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let calls = calls.lock().unwrap();
    let ranges: Vec<(u64, u64, &[u8])> = calls.iter().map(|c| (c.0, c.1, c.2.as_slice())).collect();
    assert_eq!(
        ranges,
        [
            (1, 3, &b"intent-1-3"[..]),
            (1, 3, &b"intent-1-3"[..]),
            (4, 5, &b"intent-4-5"[..])
        ]
    );
    for c in calls.iter() {
        assert_eq!(
            c.3.as_deref(),
            Some(c.2.as_slice()),
            "durable before deliver"
        );
    }
    assert_eq!(rig.env.ledger.intent("t").unwrap(), None);
    assert_eq!(
        rig.env.ledger.cursor("t").unwrap().unwrap().checkpoint,
        b"done-5"
    );
}

/// A target that does not pin its range (appends) retries alone, as before intents, from
/// the intent's checkpoint.
#[tokio::test(flavor = "multi_thread")]
async fn an_append_intent_is_reused_by_a_retry_that_goes_alone() {
    let rig = rig("{base: 1ms, max_delay: 5ms}");
    append(&rig.env, &["a", "b", "c"], "P").await;
    let target = Planner::new(&rig, false, 1);
    let calls = target.calls.clone();
    run_until(&rig, target, || {
        rig.env
            .ledger
            .cursor("t")
            .unwrap()
            .is_some_and(|c| c.seq == 3)
    })
    .await;
    let calls = calls.lock().unwrap();
    assert_eq!((calls[0].0, calls[0].1), (1, 3));
    assert_eq!(
        (calls[1].0, calls[1].1, calls[1].2.as_slice()),
        (1, 1, &b"intent-1-3"[..])
    );
}

/// A batch pinned by the release before intents (`CursorState::pinned`) is finished with
/// exactly its range, named after its first event's time as that release named it.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_pinned_by_the_previous_release_keeps_its_range_and_name_time() {
    let rig = rig("{base: 1ms}");
    append(&rig.env, &["a", "b", "c"], "P").await;
    rig.env.ledger.ensure_cursor("t", 0).unwrap();
    rig.env.ledger.pin("t", 2).unwrap();
    let first = rig.env.feed.read_after(0, 1).unwrap()[0].received_at;
    let target = Planner::new(&rig, true, 0);
    let calls = target.calls.clone();
    run_until(&rig, target, || {
        rig.env
            .ledger
            .cursor("t")
            .unwrap()
            .is_some_and(|c| c.seq == 3)
    })
    .await;
    let calls = calls.lock().unwrap();
    assert_eq!((calls[0].0, calls[0].1, calls[0].4), (1, 2, first));
    assert_eq!((calls[1].0, calls[1].1), (3, 3));
    assert_eq!(rig.env.ledger.cursor("t").unwrap().unwrap().pinned, None);
}

/// Parking the head commits the checkpoint the delivery started from (its intent), so
/// whatever the failed attempt left is still known as ours to the next delivery.
#[tokio::test(flavor = "multi_thread")]
async fn parking_after_a_failed_attempt_commits_the_intent_as_the_checkpoint() {
    let rig = rig("{base: 1ms, max_tries: 1, on_failure: park}");
    append(&rig.env, &["a"], "P").await;
    let mut target = Planner::new(&rig, false, 1);
    target.permanent = true;
    run_until(&rig, target, || {
        rig.env
            .ledger
            .cursor("t")
            .unwrap()
            .is_some_and(|c| c.seq == 1)
    })
    .await;
    assert_eq!(rig.env.ledger.dead_letters("t").unwrap().len(), 1);
    assert_eq!(
        rig.env.ledger.cursor("t").unwrap().unwrap().checkpoint,
        b"intent-1-1"
    );
    assert_eq!(rig.env.ledger.intent("t").unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_event_stops_the_connector_in_corrupted_before_it_is_delivered() {
    let rig = rig("{base: 1ms, max_delay: 2ms}");
    append(&rig.env, &["a", "b", "c"], "P").await;
    // Flip one bit of seq 2's stored bytes, as a failing disk would.
    let store = rig.env.feed.db().clone();
    let tx = store.begin_write().unwrap();
    {
        use redb::ReadableTable;
        let mut events = tx.open_table(crate::feed::schema::EVENTS).unwrap();
        let mut bytes = events.get(2).unwrap().unwrap().value().to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10;
        events.insert(2, bytes.as_slice()).unwrap();
    }
    tx.commit().unwrap();
    let target = Recorder::default();
    let got = target.got.clone();
    let (stop, live, task) = spawn(&rig, target);
    eventually("the connector to stop at the damage", || {
        live.lock().unwrap().phase == Phase::Corrupted { seq: Some(2) }
    })
    .await;
    assert!(
        got.lock().unwrap().iter().all(|id| id == "a"),
        "nothing from seq 2 on is delivered: {:?}",
        got.lock().unwrap()
    );
    let why = live.lock().unwrap().last_error.clone().unwrap();
    assert!(why.contains("seq 2") && why.contains("checksum"), "{why}");
    stop.send(true).unwrap();
    task.await.unwrap();
    assert!(rig.env.ledger.cursor("t").unwrap().unwrap().seq < 2);
}

/// Every delivery a [`Scripted`] target took: its ids, and whether it was a replay.
type Deliveries = Arc<Mutex<Vec<(Vec<String>, bool)>>>;

/// A target that records every delivery (ids, and whether it was a replay) and, on each
/// call, does what `script` says for that call number: fail it, or meddle first.
struct Scripted {
    got: Deliveries,
    calls: u32,
    script: Box<dyn FnMut(u32) -> Option<DeliveryError> + Send>,
}

impl Scripted {
    fn new(
        script: impl FnMut(u32) -> Option<DeliveryError> + Send + 'static,
    ) -> (Scripted, Deliveries) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let target = Scripted {
            got: got.clone(),
            calls: 0,
            script: Box::new(script),
        };
        (target, got)
    }
}

#[async_trait::async_trait]
impl Target for Scripted {
    async fn deliver(
        &mut self,
        d: &Delivery<'_>,
        cp: &[u8],
    ) -> Result<crate::target::Checkpoint, DeliveryError> {
        self.calls += 1;
        if let Some(e) = (self.script)(self.calls) {
            return Err(e);
        }
        let ids = d
            .items
            .iter()
            .map(|(e, rec)| {
                let id = e.payload.tree().unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                // The record is this event's, wherever it was made.
                assert_eq!(rec.seq, e.seq);
                assert_eq!(String::from_utf8_lossy(&rec.bytes).trim_end(), id);
                id
            })
            .collect();
        self.got.lock().unwrap().push((ids, d.replay));
        Ok(cp.to_vec())
    }
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("e{i:02}")).collect()
}

fn delivered(got: &Mutex<Vec<(Vec<String>, bool)>>) -> usize {
    got.lock().unwrap().iter().map(|(d, _)| d.len()).sum()
}

/// Every id delivered, in the order of delivery.
fn in_order(got: &Mutex<Vec<(Vec<String>, bool)>>) -> Vec<String> {
    got.lock()
        .unwrap()
        .iter()
        .flat_map(|(d, _)| d.clone())
        .collect()
}

/// With a backlog, each round's successor is read and mapped while it delivers; a failed
/// delivery (the retry goes alone) drops what was read ahead, and every event still arrives
/// once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn read_ahead_behind_failed_deliveries_delivers_each_event_once_in_order() {
    let rig = rig_with("{base: 1ms, max_delay: 5ms}", "batch: {max_events: 3}\n");
    let all = ids(12);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    append(&rig.env, &refs, "P").await;
    let (target, got) = Scripted::new(|call| {
        [2, 5]
            .contains(&call)
            .then(|| DeliveryError::transient("down"))
    });
    let (stop, live, task) = spawn(&rig, target);
    eventually("all delivered", || delivered(&got) >= 12).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let flat = in_order(&got);
    let got = got.lock().unwrap().clone();
    assert_eq!(flat, all, "once each, in order: {got:?}");
    let sizes: Vec<usize> = got.iter().map(|(d, _)| d.len()).collect();
    assert_eq!(sizes, [3, 1, 3, 1, 3, 1], "a retry goes alone: {got:?}");
    assert!(
        live.lock().unwrap().read_ahead > 0,
        "the backlog was read ahead"
    );
    let cursor = rig.env.ledger.cursor("t").unwrap().unwrap();
    assert_eq!((cursor.seq, cursor.delivered), (12, 12));
}

/// A replay queued while a round delivers (as `ess replay` does, from another task) goes
/// before the events read ahead, which are then read again after it: nothing skipped,
/// nothing doubled on the forward path.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_queued_during_a_delivery_goes_before_what_was_read_ahead() {
    let rig = rig_with("{base: 1ms, max_delay: 5ms}", "batch: {max_events: 3}\n");
    let all = ids(12);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    append(&rig.env, &refs, "P").await;
    let ledger = rig.env.ledger.clone();
    let (target, got) = Scripted::new(move |call| {
        if call == 2 {
            assert_eq!(ledger.requeue_range("t", 1, 2).unwrap(), 2);
        }
        None
    });
    let (stop, live, task) = spawn(&rig, target);
    eventually("all delivered", || delivered(&got) >= 14).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let got = got.lock().unwrap().clone();
    let want: Vec<(Vec<String>, bool)> = [
        (&all[0..3], false),
        (&all[3..6], false),
        (&all[0..2], true),
        (&all[6..9], false),
        (&all[9..12], false),
    ]
    .into_iter()
    .map(|(ids, replay)| (ids.to_vec(), replay))
    .collect();
    assert_eq!(got, want);
    assert!(
        live.lock().unwrap().read_ahead > 0,
        "the backlog was read ahead"
    );
    assert!(rig.env.ledger.requeued("t", 10).unwrap().is_empty());
}

/// Rounds big enough to be mapped on two threads (the first here, the others read and
/// mapped ahead in pieces) keep each record with its event, in order, and park the one that
/// cannot be mapped where it stands.
#[tokio::test(flavor = "multi_thread")]
async fn rounds_mapped_on_two_threads_keep_records_with_their_events() {
    let round = SPLIT_RENDER * 2 + 22;
    let rig = rig_with(
        "{base: 1ms, max_delay: 5ms}",
        &format!("batch: {{max_events: {round}}}\n"),
    );
    let mut all = ids(round * 3);
    // Too wide for `width:6`: cannot be mapped. In the third round, mid-piece.
    let bad = round * 2 + SPLIT_RENDER + 5;
    all[bad] = "TOO-WIDE".into();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    append(&rig.env, &refs, "P").await;
    let (target, got) = Scripted::new(|_| None);
    let want: Vec<String> = all.iter().filter(|i| i.len() <= 6).cloned().collect();
    let n = want.len();
    let (stop, live, task) = spawn(&rig, target);
    eventually("all delivered", || delivered(&got) >= n).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let flat = in_order(&got);
    assert_eq!(flat, want);
    assert!(
        live.lock().unwrap().read_ahead >= 2,
        "rounds 2 and 3 were read ahead"
    );
    let dead = rig.env.ledger.dead_letters("t").unwrap();
    let dead: Vec<(Seq, &str)> = dead.iter().map(|(s, d)| (*s, d.reason.as_str())).collect();
    assert_eq!(dead, [(bad as u64 + 1, "map")]);
}

/// Read ahead over a backlog where other types come between the selected ones: they are
/// passed over as a plain read passes them, and the cursor ends past the last of them.
#[tokio::test(flavor = "multi_thread")]
async fn read_ahead_passes_over_other_types_as_a_plain_read_does() {
    let rig = rig_with("{base: 1ms, max_delay: 5ms}", "batch: {max_events: 3}\n");
    let all = ids(20);
    for (i, id) in all.iter().enumerate() {
        append(&rig.env, &[id], "P").await;
        if i % 3 == 0 {
            append(&rig.env, &[&format!("o{i}")], "OTHER").await;
        }
    }
    let last = rig.env.feed.last_seq();
    let (target, got) = Scripted::new(|_| None);
    let (stop, live, task) = spawn(&rig, target);
    eventually("the cursor past the last event", || {
        rig.env
            .ledger
            .cursor("t")
            .unwrap()
            .is_some_and(|c| c.seq == last)
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let flat = in_order(&got);
    assert_eq!(flat, all);
    assert!(
        live.lock().unwrap().read_ahead > 0,
        "the backlog was read ahead"
    );
    assert_eq!(rig.env.ledger.cursor("t").unwrap().unwrap().delivered, 20);
}

/// The rig's feed and ledger moved onto a simulated disk whose deferred writes wait `defer`.
fn on_disk(rig: &mut Rig, disk: &crate::fault::PowerCut, defer: Duration) {
    let db = crate::feed::store::builder(0)
        .create_with_backend(disk.backend())
        .unwrap();
    let store = crate::feed::Store::from_database(
        db,
        crate::feed::StoreOptions {
            defer_durable: defer,
            ..Default::default()
        },
    );
    rig.env.feed = Feed::open(store.clone()).unwrap();
    rig.env.ledger = Ledger::new(store);
}

/// Issue 11: only a target whose checkpoint repairs a lost commit gets deferred delivery
/// commits. With nothing else committing (an hour's bound) and the power cut after the
/// deliveries, an HTTP-like target's cursor survives (its commits were durable: a re-send
/// would double what the endpoint got), and a repairing target's goes back.
#[tokio::test(flavor = "multi_thread")]
async fn only_a_target_that_repairs_lost_commits_gets_deferred_delivery_commits() {
    use crate::fault::{CutMode, PowerCut};
    for repairs in [false, true] {
        let mut r = rig("{base: 5ms, max_delay: 20ms}");
        let disk = PowerCut::new();
        let hour = Duration::from_secs(3600);
        on_disk(&mut r, &disk, hour);
        append(&r.env, &["a", "b", "c"], "P").await;
        let target = Recorder {
            repairs,
            ..Default::default()
        };
        let got = target.got.clone();
        run_until(&r, target, || got.lock().unwrap().len() == 3).await;
        let seen = r.env.ledger.cursor("t").unwrap().map_or(0, |c| c.seq);
        assert_eq!(seen, 3, "readers see the cursor at once");
        disk.cut(CutMode::Forget);
        on_disk(&mut r, &PowerCut::from_image(disk.image()), hour);
        let after = r.env.ledger.cursor("t").unwrap().map_or(0, |c| c.seq);
        if repairs {
            assert!(after < 3, "deferred, so lost in the cut: {after}");
        } else {
            assert_eq!(after, 3, "durable before the next round");
        }
        r.env.feed.close();
    }
}

/// Issue 11, the edge of the deferred window: a delivery that goes to a new place (an
/// append's next `{{date}}` file, a file someone replaced) commits its intent and its
/// delivery durably, and so makes every deferred commit before it durable too. A cut after
/// later deferred rounds takes the cursor back no further than that delivery: the surviving
/// checkpoint names the new place, never the one before the date changed.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_never_takes_the_cursor_back_across_a_delivery_to_a_new_place() {
    use crate::fault::{CutMode, PowerCut};
    let mut r = rig_with("{base: 5ms, max_delay: 20ms}", "batch: {max_events: 1}\n");
    let disk = PowerCut::new();
    let hour = Duration::from_secs(3600);
    on_disk(&mut r, &disk, hour);
    append(&r.env, &["a", "b", "c", "d", "e", "f"], "P").await;
    let target = Recorder {
        repairs: true,
        new_place_at: Some("d".into()),
        ..Default::default()
    };
    let got = target.got.clone();
    run_until(&r, target, || got.lock().unwrap().len() == 6).await;
    assert_eq!(r.env.ledger.cursor("t").unwrap().unwrap().seq, 6);
    disk.cut(CutMode::Forget);
    on_disk(&mut r, &PowerCut::from_image(disk.image()), hour);
    let kept = r.env.ledger.cursor("t").unwrap().unwrap();
    assert_eq!(
        (kept.seq, kept.checkpoint.as_slice()),
        (4, &b"place d"[..]),
        "the deliveries after the new place were deferred and lost; it was not"
    );
    assert!(r.env.ledger.intent("t").unwrap().is_none());
    r.env.feed.close();
}
