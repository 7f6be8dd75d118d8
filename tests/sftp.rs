//! The SFTP target against a real OpenSSH server on loopback: batch and append drops,
//! ed25519 and RSA keys, host key pinning, sshd down / killed mid-upload, and re-delivery
//! after a crash between upload and ledger commit never doubling a record. Deliveries go
//! through [`Ledgerish`], which keeps the committed checkpoint and the intent the way the
//! connector and the ledger do.

#[path = "support/sshd.rs"]
mod sshd;
mod support;

use std::fs;
use std::path::Path;

use chrono::TimeZone;
use ess::config::connector::SftpDeliver;
use ess::event::{Event, Record};
use ess::target::drop::fault::{Rehearsal, Stop};
use ess::target::sftp::SftpTarget;
use ess::target::{Checkpoint, Delivery, DeliveryError, Target};
use sshd::Sshd;

const TZ: chrono_tz::Tz = chrono_tz::UTC;

fn spec(sshd: &Sshd, key: &str, file: &str, mode: &str) -> SftpDeliver {
    SftpDeliver {
        host: "127.0.0.1".into(),
        port: Some(sshd.port),
        user: sshd::user(),
        key: key.into(),
        known_hosts: "known_hosts".into(),
        dir: sshd.drop_dir().display().to_string(),
        file: file.into(),
        mode: Some(mode.into()),
        timeout: Some("10s".into()),
    }
}

fn target(sshd: &Sshd, key: &str, file: &str, mode: &str) -> Ledgerish {
    Rehearsal::new(
        SftpTarget::new(&spec(sshd, key, file, mode), sshd.dir.path(), "drop", TZ).unwrap(),
    )
}

/// The SFTP drop with what the ledger keeps for it.
type Ledgerish = Rehearsal<SftpTarget>;

/// An attempt on April `day`, 2025 at `hour`; `commit: false` = the process dies right
/// after the target returned.
async fn attempt(
    t: &mut Ledgerish,
    (day, hour): (u32, u32),
    items: &[(Event, Record)],
    replay: bool,
    commit: bool,
) -> Result<Checkpoint, DeliveryError> {
    let now = TZ.with_ymd_and_hms(2025, 4, day, hour, 0, 0).unwrap();
    let stop = if commit {
        Stop::Commit
    } else {
        Stop::BeforeCommit
    };
    t.attempt(items, now, replay, stop).await
}

/// Events `seqs` with the record `"<seq> <pad>\n"`.
fn items(seqs: std::ops::RangeInclusive<u64>, pad: usize) -> Vec<(Event, Record)> {
    seqs.map(|seq| {
        let event = Event {
            seq,
            event_type: "PERMIT_STATUS".into(),
            payload: Default::default(),
            key: format!("k{seq}"),
            trace_id: format!("t{seq}").into(),
            ts: None,
            received_at: chrono::Utc.with_ymd_and_hms(2025, 4, 12, 9, 0, 0).unwrap(),
        };
        let bytes = format!("{seq:08} {}\n", "x".repeat(pad)).into_bytes();
        (event, Record { seq, bytes })
    })
    .collect()
}

fn expected(seqs: std::ops::RangeInclusive<u64>, pad: usize) -> Vec<u8> {
    items(seqs, pad)
        .into_iter()
        .flat_map(|(_, r)| r.bytes)
        .collect()
}

/// Delivers and commits, as if it were April 12, 2025.
async fn deliver(
    t: &mut Ledgerish,
    items: &[(Event, Record)],
) -> Result<Checkpoint, DeliveryError> {
    attempt(t, (12, 10), items, false, true).await
}

/// Delivers, then the process dies before the ledger commit.
async fn deliver_uncommitted(t: &mut Ledgerish, items: &[(Event, Record)]) {
    attempt(t, (12, 10), items, false, false).await.unwrap();
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn batch_files_appear_whole_under_deterministic_names_over_one_session() {
    let sshd = Sshd::start();
    let mut t = target(
        &sshd,
        "user_ed25519",
        "permit_{{date:%Y%m%d}}_{{seq}}.txt",
        "batch",
    );
    deliver(&mut t, &items(1..=3, 4)).await.unwrap();
    // A crash after the upload but before the ledger commit: the same batch again.
    deliver_uncommitted(&mut t, &items(4..=5, 4)).await;
    deliver(&mut t, &items(4..=5, 4)).await.unwrap();
    let drop = sshd.drop_dir();
    assert_eq!(
        listing(&drop),
        ["permit_20250412_1.txt", "permit_20250412_4.txt"]
    );
    assert_eq!(
        fs::read(drop.join("permit_20250412_1.txt")).unwrap(),
        expected(1..=3, 4)
    );
    assert_eq!(
        fs::read(drop.join("permit_20250412_4.txt")).unwrap(),
        expected(4..=5, 4)
    );
    assert_eq!(
        sshd.logins(),
        1,
        "one session for all deliveries:\n{}",
        sshd.log()
    );
}

#[tokio::test]
async fn rsa_key_logs_in_with_a_sha2_signature() {
    let sshd = Sshd::start();
    let mut t = target(&sshd, "user_rsa", "permit.txt", "append");
    deliver(&mut t, &items(1..=2, 3)).await.unwrap();
    assert_eq!(
        fs::read(sshd.drop_dir().join("permit.txt")).unwrap(),
        expected(1..=2, 3)
    );
    assert!(
        sshd.log().contains("Accepted publickey") && sshd.log().contains("RSA"),
        "{}",
        sshd.log()
    );
}

#[tokio::test]
async fn append_redelivery_after_a_lost_commit_never_doubles() {
    let sshd = Sshd::start();
    let file = sshd.drop_dir().join("permit.txt");
    let mut t = target(&sshd, "user_ed25519", "permit.txt", "append");

    // First delivery ever, then "crash": its intent names the new file at 0.
    deliver_uncommitted(&mut t, &items(1..=2, 3)).await;
    deliver(&mut t, &items(1..=2, 3)).await.unwrap();
    assert_eq!(fs::read(&file).unwrap(), expected(1..=2, 3));

    // Delivered, commit lost, delivered again from the committed mark.
    deliver_uncommitted(&mut t, &items(3..=4, 3)).await;
    deliver(&mut t, &items(3..=4, 3)).await.unwrap();
    assert_eq!(fs::read(&file).unwrap(), expected(1..=4, 3));

    // After the restart the batch is longer (more events arrived) or shorter.
    deliver_uncommitted(&mut t, &items(5..=6, 3)).await;
    deliver(&mut t, &items(5..=8, 3)).await.unwrap();
    assert_eq!(fs::read(&file).unwrap(), expected(1..=8, 3));
    deliver_uncommitted(&mut t, &items(9..=12, 3)).await;
    deliver(&mut t, &items(9..=10, 3)).await.unwrap();
    assert_eq!(fs::read(&file).unwrap(), expected(1..=10, 3));
    deliver(&mut t, &items(11..=12, 3)).await.unwrap();
    assert_eq!(fs::read(&file).unwrap(), expected(1..=12, 3));
    assert_eq!(
        listing(&sshd.drop_dir()),
        ["permit.txt"],
        "no temp file left"
    );
    assert_eq!(t.n_ambiguous, 0);
}

/// Issue 10 on SFTP: the first delivery into a file holding someone else's lines, then a
/// crash between the upload and the commit.
#[tokio::test]
async fn append_keeps_foreign_content_of_an_unknown_file_through_a_crash() {
    let sshd = Sshd::start();
    let file = sshd.drop_dir().join("permit.txt");
    fs::write(&file, b"HEADER FROM SOMEONE ELSE\n").unwrap();
    let mut t = target(&sshd, "user_ed25519", "permit.txt", "append");
    deliver_uncommitted(&mut t, &items(1..=1, 3)).await;
    let mut t = t.restarted(
        SftpTarget::new(
            &spec(&sshd, "user_ed25519", "permit.txt", "append"),
            sshd.dir.path(),
            "drop",
            TZ,
        )
        .unwrap(),
    );
    deliver(&mut t, &items(1..=1, 3)).await.unwrap();
    deliver(&mut t, &items(2..=2, 3)).await.unwrap();
    let mut want = b"HEADER FROM SOMEONE ELSE\n".to_vec();
    want.extend(expected(1..=2, 3));
    assert_eq!(fs::read(&file).unwrap(), want);
}

/// Issue 10 on SFTP: the consumer empties (or cuts) the file, then the next delivery is
/// interrupted: it starts at the file's new end, once.
#[tokio::test]
async fn append_after_the_file_was_emptied_behind_its_back_starts_at_its_new_end_once() {
    let sshd = Sshd::start();
    let file = sshd.drop_dir().join("permit.txt");
    let mut t = target(&sshd, "user_ed25519", "permit.txt", "append");
    deliver(&mut t, &items(1..=3, 3)).await.unwrap();
    fs::write(&file, b"").unwrap();
    deliver_uncommitted(&mut t, &items(4..=4, 3)).await;
    deliver(&mut t, &items(4..=4, 3)).await.unwrap();
    assert_eq!(fs::read(&file).unwrap(), expected(4..=4, 3));
    // Taken away by its consumer: a new file starts.
    fs::remove_file(&file).unwrap();
    deliver(&mut t, &items(5..=5, 3)).await.unwrap();
    assert_eq!(fs::read(&file).unwrap(), expected(5..=5, 3));
    assert_eq!(t.n_ambiguous, 0);
}

#[tokio::test]
async fn sshd_down_is_transient_then_delivered_once_when_back() {
    let mut sshd = Sshd::start();
    let file = sshd.drop_dir().join("permit.txt");
    let mut t = target(&sshd, "user_ed25519", "permit.txt", "append");
    deliver(&mut t, &items(1..=1, 3)).await.unwrap();
    sshd.kill();
    for _ in 0..3 {
        let err = deliver(&mut t, &items(2..=3, 3)).await.unwrap_err();
        assert!(matches!(err, DeliveryError::Transient { .. }), "{err:?}");
    }
    sshd.spawn();
    deliver(&mut t, &items(2..=3, 3)).await.unwrap();
    assert_eq!(fs::read(&file).unwrap(), expected(1..=3, 3));
    assert_eq!(sshd.logins(), 2);
}

#[tokio::test]
async fn a_dropped_session_is_reestablished_without_an_error() {
    let mut sshd = Sshd::start();
    let mut t = target(&sshd, "user_ed25519", "p_{{seq}}.txt", "batch");
    deliver(&mut t, &items(1..=1, 3)).await.unwrap();
    sshd.restart();
    deliver(&mut t, &items(2..=2, 3)).await.unwrap();
    assert_eq!(listing(&sshd.drop_dir()), ["p_1.txt", "p_2.txt"]);
    assert_eq!(sshd.logins(), 2);
}

/// sshd (with its session) is SIGKILLed while a big append is being written; whatever
/// part of it reached the file, re-delivering from the intent leaves every record exactly
/// once.
#[tokio::test]
async fn sshd_killed_mid_upload_then_redelivered_exactly_once() {
    let mut sshd = Sshd::start();
    let file = sshd.drop_dir().join("permit.txt");
    let mut t = target(&sshd, "user_ed25519", "permit.txt", "append");
    deliver(&mut t, &items(1..=10, 100)).await.unwrap();
    let committed = fs::metadata(&file).unwrap().len();

    let big = items(11..=60_000, 100);
    let task = tokio::spawn(async move {
        let r = deliver(&mut t, &big).await;
        (t, r)
    });
    // Wait until the upload is under way, then kill the server.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fs::metadata(&file).unwrap().len() == committed && !task.is_finished() {
        assert!(std::time::Instant::now() < deadline, "upload never started");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    sshd.kill();
    let (mut t, first) = task.await.unwrap();
    let partial = fs::metadata(&file).unwrap().len();
    if let Err(e) = &first {
        assert!(matches!(e, DeliveryError::Transient { .. }), "{e:?}");
    }
    eprintln!(
        "killed with {} of {} bytes written; first attempt: {:?}",
        partial - committed,
        expected(11..=60_000, 100).len(),
        first.as_ref().map(|_| "ok")
    );

    sshd.spawn();
    if first.is_err() {
        deliver(&mut t, &items(11..=60_000, 100)).await.unwrap();
    }
    assert!(
        fs::read(&file).unwrap() == expected(1..=60_000, 100),
        "file differs from records 1..=60000 once each"
    );
}

#[tokio::test]
async fn changed_host_key_is_refused_naming_the_key_and_nothing_is_written() {
    let mut sshd = Sshd::start();
    let mut t = target(&sshd, "user_ed25519", "p_{{seq}}.txt", "batch");
    deliver(&mut t, &items(1..=1, 3)).await.unwrap();
    sshd.kill();
    sshd.new_host_key();
    sshd.spawn();
    let err = deliver(&mut t, &items(2..=2, 3)).await.unwrap_err();
    let DeliveryError::Permanent(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains(&sshd.host_fingerprint()) && msg.contains("DIFFERENT key"),
        "{msg}"
    );
    assert_eq!(listing(&sshd.drop_dir()), ["p_1.txt"]);
    assert_eq!(sshd.logins(), 1);

    // The operator pins the new key: delivery resumes without a restart.
    sshd.write_known_hosts();
    deliver(&mut t, &items(2..=2, 3)).await.unwrap();
    assert_eq!(listing(&sshd.drop_dir()), ["p_1.txt", "p_2.txt"]);
}

#[tokio::test]
async fn unknown_host_key_is_refused() {
    let sshd = Sshd::start();
    let mut t = target(&sshd, "user_ed25519", "p.txt", "append");
    // known_hosts pins this host, but only an ECDSA key, a kind the server does not have:
    // the ed25519 key it offers is unknown.
    sshd::keygen(&sshd.path("other_ecdsa"), "ecdsa");
    let ecdsa = fs::read_to_string(sshd.path("other_ecdsa.pub")).unwrap();
    fs::write(
        sshd.path("known_hosts"),
        format!("[127.0.0.1]:{} {ecdsa}", sshd.port),
    )
    .unwrap();
    let err = deliver(&mut t, &items(1..=1, 3)).await.unwrap_err();
    let DeliveryError::Permanent(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains(&sshd.host_fingerprint()) && msg.contains("has no ssh-ed25519 key"),
        "{msg}"
    );
    assert!(listing(&sshd.drop_dir()).is_empty());
}

#[tokio::test]
async fn new_reports_every_problem_of_the_spec() {
    let sshd = Sshd::start();
    let mut s = spec(&sshd, "no_such_key", "p.txt", "batch");
    s.known_hosts = "empty_known_hosts".into();
    fs::write(sshd.path("empty_known_hosts"), "").unwrap();
    s.timeout = Some("soon".into());
    let err = SftpTarget::new(&s, sshd.dir.path(), "drop", TZ).unwrap_err();
    for want in [
        "cannot load private key",
        "has no key for [127.0.0.1]",
        "ssh-keyscan",
        "must contain {{seq}}",
        "timeout",
    ] {
        assert!(err.contains(want), "{want:?} missing in {err}");
    }
    let mut s = spec(&sshd, "user_ed25519", "p.txt", "sideways");
    s.known_hosts = "missing".into();
    let err = SftpTarget::new(&s, sshd.dir.path(), "drop", TZ).unwrap_err();
    assert!(
        err.contains("sideways") && err.contains("does not exist"),
        "{err}"
    );
}

/// ESS itself dies mid-upload (the delivery is abandoned and its connection goes with the
/// process); a new process re-delivers from the intent: exactly once, in both modes, and
/// no temp file is left behind.
#[tokio::test]
async fn process_dying_mid_upload_then_a_new_target_redelivers_exactly_once() {
    let sshd = Sshd::start();
    for (mode, file) in [("append", "permit.txt"), ("batch", "permit_{{seq}}.txt")] {
        let mut t = target(&sshd, "user_ed25519", file, mode);
        deliver(&mut t, &items(1..=10, 100)).await.unwrap();
        let watched = if mode == "append" {
            sshd.drop_dir().join("permit.txt")
        } else {
            sshd.drop_dir().join(".permit_11.txt.ess-tmp")
        };
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let before = size(&watched);
        let big = items(11..=60_000, 100);
        let (ledger_tx, ledger_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            // The ledger outlives the process: hand its state out before delivering.
            let mut t = t;
            let now = TZ.with_ymd_and_hms(2025, 4, 12, 10, 0, 0).unwrap();
            let d = Delivery {
                connector: "drop",
                items: &big,
                now,
                replay: false,
            };
            let p = t.target.prepare(&d, &t.committed).await.unwrap();
            let start = p.intent.clone().unwrap_or_else(|| t.committed.clone());
            let _ = ledger_tx.send((t.committed.clone(), p.intent));
            t.target.deliver(&d, &start).await
        });
        let (committed, intent) = ledger_rx.await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while size(&watched) == before && !task.is_finished() {
            assert!(std::time::Instant::now() < deadline, "upload never started");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // The "process" dies: its task and its SSH connection are gone.
        task.abort();
        let _ = task.await;

        let mut restarted = target(&sshd, "user_ed25519", file, mode);
        restarted.committed = committed;
        restarted.intent = intent;
        deliver(&mut restarted, &items(11..=60_000, 100))
            .await
            .unwrap();
        if mode == "append" {
            assert!(
                fs::read(&watched).unwrap() == expected(1..=60_000, 100),
                "append: not exactly once"
            );
        } else {
            assert_eq!(
                fs::read(sshd.drop_dir().join("permit_1.txt")).unwrap(),
                expected(1..=10, 100)
            );
            assert!(
                fs::read(sshd.drop_dir().join("permit_11.txt")).unwrap()
                    == expected(11..=60_000, 100)
            );
        }
    }
    assert_eq!(
        listing(&sshd.drop_dir()),
        ["permit.txt", "permit_1.txt", "permit_11.txt"]
    );
}

/// A server that stops answering (SIGSTOP) makes requests and the reconnect time out:
/// transient, and the delivery goes through once it answers again.
#[tokio::test]
async fn a_frozen_server_times_out_as_transient() {
    let sshd = Sshd::start();
    let mut s = spec(&sshd, "user_ed25519", "permit.txt", "append");
    s.timeout = Some("1s".into());
    let mut t = Rehearsal::new(SftpTarget::new(&s, sshd.dir.path(), "drop", TZ).unwrap());
    deliver(&mut t, &items(1..=1, 3)).await.unwrap();
    sshd.signal(libc::SIGSTOP);
    let err = deliver(&mut t, &items(2..=2, 3)).await.unwrap_err();
    sshd.signal(libc::SIGCONT);
    assert!(
        matches!(&err, DeliveryError::Transient { message, .. } if message.contains("timed out")),
        "{err:?}"
    );
    deliver(&mut t, &items(2..=2, 3)).await.unwrap();
    assert_eq!(
        fs::read(sshd.drop_dir().join("permit.txt")).unwrap(),
        expected(1..=2, 3)
    );
}

/// Issue 10 on SFTP: a delivery interrupted before midnight and retried after it went to
/// both daily files. The retry completes in the file its attempt chose; the next delivery
/// goes to the new day's file.
#[tokio::test]
async fn append_retry_after_midnight_completes_in_the_file_its_attempt_chose() {
    let sshd = Sshd::start();
    let mut t = target(
        &sshd,
        "user_ed25519",
        "permit_{{date:%Y%m%d}}.txt",
        "append",
    );
    // The very first delivery (an intent for the 12th's file), interrupted at 23:00 ...
    attempt(&mut t, (12, 23), &items(1..=2, 3), false, false)
        .await
        .unwrap();
    // ... and retried at 00:00 on the 13th.
    attempt(&mut t, (13, 0), &items(1..=2, 3), false, true)
        .await
        .unwrap();
    // A common-case delivery into that file (still the 12th) interrupted too, retried
    // two days later.
    attempt(&mut t, (12, 23), &items(3..=4, 3), false, false)
        .await
        .unwrap();
    attempt(&mut t, (14, 0), &items(3..=4, 3), false, true)
        .await
        .unwrap();
    attempt(&mut t, (14, 0), &items(5..=5, 3), false, true)
        .await
        .unwrap();
    let drop = sshd.drop_dir();
    assert_eq!(
        listing(&drop),
        ["permit_20250412.txt", "permit_20250414.txt"]
    );
    assert_eq!(
        fs::read(drop.join("permit_20250412.txt")).unwrap(),
        expected(1..=4, 3)
    );
    assert_eq!(
        fs::read(drop.join("permit_20250414.txt")).unwrap(),
        expected(5..=5, 3)
    );
}

/// Batch files are named when their intent is made, not when a retry happens, and the
/// connector is asked to pin their range.
#[tokio::test]
async fn batch_names_do_not_depend_on_when_the_retry_happens() {
    let sshd = Sshd::start();
    let mut t = target(
        &sshd,
        "user_ed25519",
        "p_{{date:%Y%m%d}}_{{seq}}.txt",
        "batch",
    );
    assert!(t.target.pins_batches());
    attempt(&mut t, (12, 23), &items(1..=2, 3), false, false)
        .await
        .unwrap();
    attempt(&mut t, (14, 10), &items(1..=2, 3), false, true)
        .await
        .unwrap();
    assert_eq!(listing(&sshd.drop_dir()), ["p_20250412_1.txt"]);
    assert!(
        !target(&sshd, "user_ed25519", "p.txt", "append")
            .target
            .pins_batches()
    );
}

/// Issue 10: `ess replay` of a range on an SFTP batch target replaced the original file
/// (1..=10 could end up holding 1..=3). A replay gets `NAME.replay-LAST.EXT`, as on file.
#[tokio::test]
async fn a_replayed_batch_never_replaces_the_original() {
    let sshd = Sshd::start();
    let mut t = target(&sshd, "user_ed25519", "p_{{seq}}.txt", "batch");
    deliver(&mut t, &items(1..=10, 3)).await.unwrap();
    attempt(&mut t, (12, 11), &items(1..=3, 3), true, false)
        .await
        .unwrap();
    attempt(&mut t, (12, 12), &items(1..=3, 3), true, true)
        .await
        .unwrap();
    let drop = sshd.drop_dir();
    assert_eq!(listing(&drop), ["p_1.replay-3.txt", "p_1.txt"]);
    assert_eq!(fs::read(drop.join("p_1.txt")).unwrap(), expected(1..=10, 3));
    assert_eq!(
        fs::read(drop.join("p_1.replay-3.txt")).unwrap(),
        expected(1..=3, 3)
    );
}

/// Issue 10: a batch file already there meant "replace" on SFTP and "done" on file. Now,
/// on both: exactly this batch's bytes are this batch (done); anything else stays and the
/// delivery fails permanently, naming it.
#[tokio::test]
async fn a_batch_file_already_there_is_never_replaced() {
    let sshd = Sshd::start();
    let drop = sshd.drop_dir();
    fs::write(drop.join("p_1.txt"), b"SOMEONE ELSE'S\n").unwrap();
    let mut t = target(&sshd, "user_ed25519", "p_{{seq}}.txt", "batch");
    let err = deliver(&mut t, &items(1..=2, 3)).await.unwrap_err();
    assert!(
        matches!(&err, DeliveryError::Permanent(m) if m.contains("already there with other content")),
        "{err:?}"
    );
    assert_eq!(fs::read(drop.join("p_1.txt")).unwrap(), b"SOMEONE ELSE'S\n");
    fs::write(drop.join("p_1.txt"), expected(1..=2, 3)).unwrap();
    deliver(&mut t, &items(1..=2, 3)).await.unwrap();
    assert_eq!(listing(&drop), ["p_1.txt"]);
}

/// Issue 10: the CSV column row was written by the file target only.
#[tokio::test]
async fn a_new_csv_file_gets_its_column_row_on_sftp_too() {
    let sshd = Sshd::start();
    let map = sshd.path("m.yml");
    fs::write(
        &map,
        "target: drop\nformat: csv\ncsv: {header: true}\nfields:\n  ID: id\ndeliver: {kind: file, dir: out, file: x.csv}\n",
    )
    .unwrap();
    let mapping = ess::connector::load_one(&map, TZ)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .mapping;
    let t = SftpTarget::new(
        &spec(&sshd, "user_ed25519", "p.csv", "append"),
        sshd.dir.path(),
        "drop",
        TZ,
    )
    .unwrap()
    .with_mapping(mapping);
    let mut t = Rehearsal::new(t);
    deliver_uncommitted(&mut t, &items(1..=1, 3)).await;
    deliver(&mut t, &items(1..=1, 3)).await.unwrap();
    deliver(&mut t, &items(2..=2, 3)).await.unwrap();
    let mut want = b"ID\n".to_vec();
    want.extend(expected(1..=2, 3));
    assert_eq!(fs::read(sshd.drop_dir().join("p.csv")).unwrap(), want);
}

#[tokio::test]
async fn a_missing_folder_is_a_permanent_failure_naming_it() {
    let sshd = Sshd::start();
    for (file, mode) in [("p_{{seq}}.txt", "batch"), ("p.txt", "append")] {
        let mut s = spec(&sshd, "user_ed25519", file, mode);
        s.dir = sshd.path("no/such/dir").display().to_string();
        let mut t = Rehearsal::new(SftpTarget::new(&s, sshd.dir.path(), "drop", TZ).unwrap());
        let err = deliver(&mut t, &items(1..=1, 3)).await.unwrap_err();
        let DeliveryError::Permanent(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains("no/such/dir does not exist on the server"),
            "{msg}"
        );
    }
}

/// The server has an ed25519 and an RSA host key; known_hosts pins only the RSA one (as
/// `ssh-keyscan -t rsa` writes it): the client asks for that kind and is let in.
#[tokio::test]
async fn the_kind_of_host_key_pinned_is_the_one_asked_for() {
    let sshd = Sshd::start();
    sshd.pin_rsa_host_key();
    let mut t = target(&sshd, "user_ed25519", "permit.txt", "append");
    deliver(&mut t, &items(1..=1, 3)).await.unwrap();
    assert_eq!(
        fs::read(sshd.drop_dir().join("permit.txt")).unwrap(),
        expected(1..=1, 3)
    );
}

/// known_hosts with hashed host names (`ssh-keygen -H`, `ssh-keyscan -H`) pins as well.
#[tokio::test]
async fn hashed_known_hosts_entries_are_understood() {
    let sshd = Sshd::start();
    let st = std::process::Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(sshd.path("known_hosts"))
        .output()
        .unwrap();
    assert!(st.status.success());
    let text = fs::read_to_string(sshd.path("known_hosts")).unwrap();
    assert!(
        text.starts_with("|1|") && !text.contains("127.0.0.1"),
        "{text}"
    );
    let mut t = target(&sshd, "user_ed25519", "permit.txt", "append");
    deliver(&mut t, &items(1..=1, 3)).await.unwrap();
    assert_eq!(
        fs::read(sshd.drop_dir().join("permit.txt")).unwrap(),
        expected(1..=1, 3)
    );
}

/// The server's disk fills up in the middle of an upload (its drop folder on a small
/// tmpfs): the delivery fails as transient, leaves no partial file under a final name (nor
/// a partial record in an append file), and once there is room again the same delivery
/// puts every record there once.
#[tokio::test]
async fn a_server_disk_filling_mid_upload_is_transient_and_delivered_once_space_returns() {
    for (file, mode, name) in [
        ("p_{{seq}}.txt", "batch", "p_11.txt"),
        ("p.txt", "append", "p.txt"),
    ] {
        let sshd = Sshd::start();
        let drop = sshd.drop_dir();
        let disk = support::Tmpfs::mount(&drop, "256k");
        let mut t = target(&sshd, "user_ed25519", file, mode);
        deliver(&mut t, &items(1..=10, 100)).await.unwrap();
        let before = if mode == "append" {
            expected(1..=10, 100)
        } else {
            fs::remove_file(drop.join("p_1.txt")).unwrap();
            Vec::new()
        };
        // Room for a part of the next upload (about 100 KiB) only.
        let filler = disk.fill(32 << 10);
        let big = items(11..=1000, 100);
        let err = deliver(&mut t, &big).await.unwrap_err();
        assert!(
            matches!(&err, DeliveryError::Transient { .. }),
            "{mode}: {err:?}"
        );
        assert!(
            err.to_string().contains("disk is full"),
            "{mode}: the operator is told what SFTP's bare failure most often means: {err}"
        );
        let now = fs::read(drop.join(name)).unwrap_or_default();
        assert!(
            now == before,
            "{mode}: {name} holds {} bytes, not the {} committed",
            now.len(),
            before.len()
        );
        fs::remove_file(&filler).unwrap();
        deliver(&mut t, &big).await.unwrap();
        let mut want = before.clone();
        want.extend(expected(11..=1000, 100));
        assert!(
            fs::read(drop.join(name)).unwrap() == want,
            "{mode}: every record once"
        );
        assert_eq!(listing(&drop), [name], "{mode}: no temp file left");
    }
}
