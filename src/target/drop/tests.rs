//! The drop protocol against the cases of issue 10, on an in-memory folder with injected
//! faults: every crash point of an append and of a batch, the legacy side moving, emptying
//! or rewriting files, a clock that changes between an attempt and its retry, a full disk,
//! and checkpoints written by the release before intents.

use chrono::TimeZone;

use super::fault::{DropFault, FaultyFolder, Rehearsal, Stop};
use super::mem::MemFolder;
use super::*;
use crate::event::{Event, Record};

fn items(seqs: std::ops::RangeInclusive<u64>) -> Vec<(Event, Record)> {
    seqs.map(|seq| {
        let e = Event {
            seq,
            event_type: "T".into(),
            payload: Default::default(),
            key: format!("k{seq}"),
            trace_id: "t".into(),
            ts: None,
            received_at: Utc.with_ymd_and_hms(2025, 4, 12, 10, 0, 0).unwrap(),
        };
        let bytes = format!("REC{seq:05}\n").into_bytes();
        (e, Record { seq, bytes })
    })
    .collect()
}

fn recs(seqs: std::ops::RangeInclusive<u64>) -> String {
    seqs.map(|s| format!("REC{s:05}\n")).collect()
}

fn at(day: u32, h: u32, m: u32) -> DateTime<Tz> {
    chrono_tz::UTC
        .with_ymd_and_hms(2025, 4, day, h, m, 0)
        .unwrap()
}

/// The protocol over `folder`, driven as the connector drives it.
type Sim<F> = Rehearsal<DropTarget<F>>;

fn drop_sim<F: Folder + 'static>(folder: F, template: &str, mode: &str) -> Sim<F> {
    let spec = DropSpec::parse(template, Some(mode)).unwrap();
    Rehearsal::new(DropTarget::over(folder, spec, "c", None))
}

/// A restart: a new target (no in-memory knowledge) on the same folder and ledger.
fn restart<F: Folder + 'static>(s: Sim<F>, folder: F) -> Sim<F> {
    let spec = s.target.spec.clone();
    s.restarted(DropTarget::over(folder, spec, "c", None))
}

async fn deliver<F: Folder + 'static>(
    s: &mut Sim<F>,
    items: &[(Event, Record)],
    now: DateTime<Tz>,
) {
    s.attempt(items, now, false, Stop::Commit).await.unwrap();
}

fn text(mem: &MemFolder, name: &str) -> String {
    String::from_utf8(mem.get(name).unwrap_or_default()).unwrap()
}

#[tokio::test]
async fn every_crash_point_of_an_append_leaves_each_record_once() {
    for stop in [Stop::AfterIntent, Stop::BeforeCommit] {
        for first in [true, false] {
            let mem = MemFolder::new();
            let mut sim = drop_sim(mem.clone(), "permit.txt", "append");
            if !first {
                deliver(&mut sim, &items(1..=3), at(12, 10, 0)).await;
            }
            let next = if first { 1 } else { 4 };
            sim.attempt(&items(next..=next + 2), at(12, 10, 0), false, stop)
                .await
                .unwrap();
            // After the restart the retry may carry more events, or fewer.
            let mut sim = restart(sim, mem.clone());
            deliver(&mut sim, &items(next..=next), at(12, 10, 1)).await;
            deliver(&mut sim, &items(next + 1..=next + 4), at(12, 10, 1)).await;
            assert_eq!(
                text(&mem, "permit.txt"),
                recs(1..=next + 4),
                "{stop:?} {first}"
            );
            assert_eq!(sim.n_ambiguous, 0);
        }
    }
}

/// Issue 10: the first delivery into a file that already holds someone else's lines, with
/// a crash between the file's fsync and the ledger commit, doubled the record.
#[tokio::test]
async fn first_delivery_into_someone_elses_file_then_a_crash_keeps_their_lines_and_ours_once() {
    let mem = MemFolder::new();
    mem.put("permit.txt", b"HEADER FROM THE OLD CRON JOB\n");
    let mut sim = drop_sim(mem.clone(), "permit.txt", "append");
    sim.attempt(&items(1..=2), at(12, 10, 0), false, Stop::BeforeCommit)
        .await
        .unwrap();
    let mut sim = restart(sim, mem.clone());
    deliver(&mut sim, &items(1..=2), at(12, 10, 0)).await;
    deliver(&mut sim, &items(3..=3), at(12, 10, 0)).await;
    assert_eq!(
        text(&mem, "permit.txt"),
        format!("HEADER FROM THE OLD CRON JOB\n{}", recs(1..=3))
    );
}

/// Issue 10: a `{{date}}` whose date changes between an interrupted attempt and its retry
/// put the record into both daily files. The retry goes where the attempt went; the next
/// delivery goes to the new day's file.
#[tokio::test]
async fn a_retry_after_midnight_goes_to_the_file_its_attempt_chose() {
    for (stop, first) in [
        (Stop::BeforeCommit, true),
        (Stop::BeforeCommit, false),
        (Stop::AfterIntent, true),
    ] {
        let mem = MemFolder::new();
        let mut sim = drop_sim(mem.clone(), "permit_{{date:%Y%m%d}}.txt", "append");
        let next = if first { 1 } else { 3 };
        if !first {
            deliver(&mut sim, &items(1..=2), at(12, 22, 0)).await;
        }
        sim.attempt(&items(next..=next + 1), at(12, 23, 59), false, stop)
            .await
            .unwrap();
        let mut sim = restart(sim, mem.clone());
        deliver(&mut sim, &items(next..=next + 1), at(13, 0, 0)).await;
        deliver(&mut sim, &items(next + 2..=next + 2), at(13, 0, 1)).await;
        assert_eq!(
            text(&mem, "permit_20250412.txt"),
            recs(1..=next + 1),
            "{stop:?}"
        );
        assert_eq!(text(&mem, "permit_20250413.txt"), recs(next + 2..=next + 2));
    }
    // A delivery that crashed in the common case (no intent: same file, untouched) is
    // completed in its file as well, whatever the date is at the retry.
    let mem = MemFolder::new();
    let mut sim = drop_sim(mem.clone(), "permit_{{date:%Y%m%d}}.txt", "append");
    deliver(&mut sim, &items(1..=1), at(12, 23, 0)).await;
    sim.attempt(&items(2..=3), at(12, 23, 59), false, Stop::BeforeCommit)
        .await
        .unwrap();
    assert!(sim.intent.is_none(), "the common case commits no intent");
    let mut sim = restart(sim, mem.clone());
    deliver(&mut sim, &items(2..=2), at(13, 0, 5)).await;
    deliver(&mut sim, &items(3..=3), at(13, 0, 6)).await;
    assert_eq!(text(&mem, "permit_20250412.txt"), recs(1..=2));
    assert_eq!(text(&mem, "permit_20250413.txt"), recs(3..=3));
}

/// Issue 10: the legacy job empties the file after reading it (`OPEN OUTPUT`), then the
/// next delivery is interrupted: the record was written twice.
#[tokio::test]
async fn the_legacy_side_emptying_the_file_then_a_crash_writes_the_record_once() {
    let mem = MemFolder::new();
    let mut sim = drop_sim(mem.clone(), "permit.txt", "append");
    deliver(&mut sim, &items(1..=1), at(12, 10, 0)).await;
    mem.put("permit.txt", b"");
    sim.attempt(&items(2..=2), at(12, 10, 1), false, Stop::BeforeCommit)
        .await
        .unwrap();
    assert_eq!(
        sim.n_ambiguous, 0,
        "the last delivery of this process committed"
    );
    let mut sim = restart(sim, mem.clone());
    deliver(&mut sim, &items(2..=2), at(12, 10, 2)).await;
    deliver(&mut sim, &items(3..=3), at(12, 10, 2)).await;
    assert_eq!(text(&mem, "permit.txt"), recs(2..=3));
    assert_eq!(sim.n_ambiguous, 0);
}

/// The one case exactly-once cannot decide: the file an uncommitted write went to is taken
/// away before the retry. The records go again, and that is counted.
#[tokio::test]
async fn a_file_moved_away_after_an_uncommitted_write_is_counted_ambiguous() {
    let mem = MemFolder::new();
    let mut sim = drop_sim(mem.clone(), "permit.txt", "append");
    deliver(&mut sim, &items(1..=2), at(12, 10, 0)).await;
    sim.attempt(&items(3..=4), at(12, 10, 0), false, Stop::BeforeCommit)
        .await
        .unwrap();
    mem.rename("permit.txt", "picked-up.txt");
    // Someone else's new file under the name: kept whole.
    mem.put("permit.txt", b"THEIRS\n");
    let mut sim = restart(sim, mem.clone());
    deliver(&mut sim, &items(3..=4), at(12, 10, 1)).await;
    assert_eq!(text(&mem, "picked-up.txt"), recs(1..=4), "never touched");
    assert_eq!(text(&mem, "permit.txt"), format!("THEIRS\n{}", recs(3..=4)));
    assert_eq!(sim.n_ambiguous, 1);
    // Taken away after a *committed* delivery, in the same process: nothing to doubt.
    mem.rename("permit.txt", "picked-again.txt");
    deliver(&mut sim, &items(5..=5), at(12, 10, 2)).await;
    assert_eq!(text(&mem, "permit.txt"), recs(5..=5));
    assert_eq!(sim.n_ambiguous, 1);
}

/// Deleted and created again: the new file may get the freed inode number (the memory
/// folder reuses them like ext4); the birth time tells it is another file.
#[tokio::test]
async fn a_file_replaced_under_a_reused_inode_number_is_not_taken_for_ours() {
    let mem = MemFolder::new();
    let mut sim = drop_sim(mem.clone(), "permit.txt", "append");
    deliver(&mut sim, &items(1..=1), at(12, 10, 0)).await;
    let old = sim
        .target
        .folder_mut()
        .stat("permit.txt")
        .await
        .unwrap()
        .unwrap();
    mem.delete("permit.txt");
    mem.put("permit.txt", b"SOMEONE ELSE'S LONGER FILE\n");
    let new = sim
        .target
        .folder_mut()
        .stat("permit.txt")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        old.id.unwrap().ino,
        new.id.unwrap().ino,
        "inode number reused"
    );
    deliver(&mut sim, &items(2..=2), at(12, 10, 0)).await;
    assert_eq!(
        text(&mem, "permit.txt"),
        format!("SOMEONE ELSE'S LONGER FILE\n{}", recs(2..=2))
    );
}

/// A full disk mid-record: the partial record is cut back at once (while the disk stays
/// full), the failure is transient, and the delivery completes once space returns.
#[tokio::test]
async fn a_full_disk_mid_record_leaves_no_partial_record_and_resumes() {
    let mem = MemFolder::new();
    let faulty = FaultyFolder::new(mem.clone(), None);
    let mut sim = drop_sim(faulty.clone(), "permit.txt", "append");
    deliver(&mut sim, &items(1..=1), at(12, 10, 0)).await;
    faulty.set_free(Some(13)); // one record and a bit
    for _ in 0..3 {
        let err = sim
            .attempt(&items(2..=3), at(12, 10, 0), false, Stop::Commit)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DeliveryError::Transient { message, .. } if message.contains("No space left")),
            "{err:?}"
        );
        assert_eq!(text(&mem, "permit.txt"), recs(1..=1), "cut back while full");
        assert_eq!(faulty.free(), Some(13), "and the space is back");
    }
    faulty.set_free(None);
    deliver(&mut sim, &items(2..=3), at(12, 10, 1)).await;
    assert_eq!(text(&mem, "permit.txt"), recs(1..=3));
}

/// EIO on fsync and a write that stops halfway: transient, nothing doubled on retry.
#[tokio::test]
async fn a_failing_sync_or_a_short_write_is_transient_and_retried_exactly_once() {
    for fault in [DropFault::SyncFails, DropFault::ShortWrite] {
        let mem = MemFolder::new();
        let faulty = FaultyFolder::new(mem.clone(), None);
        let mut sim = drop_sim(faulty.clone(), "p_{{date:%d}}.txt", "append");
        deliver(&mut sim, &items(1..=1), at(12, 10, 0)).await;
        // Into a new day's file: the intent is committed, then the write fails (twice).
        sim.attempt(&items(2..=3), at(13, 0, 0), false, Stop::AfterIntent)
            .await
            .unwrap();
        faulty.inject(Some(fault));
        for _ in 0..2 {
            let err = sim
                .attempt(&items(2..=3), at(13, 0, 0), false, Stop::Commit)
                .await;
            assert!(
                matches!(err, Err(DeliveryError::Transient { .. })),
                "{err:?}"
            );
        }
        faulty.inject(None);
        deliver(&mut sim, &items(2..=3), at(14, 0, 0)).await;
        assert_eq!(text(&mem, "p_12.txt"), recs(1..=1), "{fault:?}");
        assert_eq!(text(&mem, "p_13.txt"), recs(2..=3), "{fault:?}");
        assert!(mem.get("p_14.txt").is_none());
    }
}

#[tokio::test]
async fn a_csv_column_row_opens_every_file_this_drop_starts_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("m.yml");
    std::fs::write(
        &map,
        "target: c\nformat: csv\ncsv: {header: true}\nfields:\n  ID: id\ndeliver: {kind: file, dir: out, file: x.csv}\n",
    )
    .unwrap();
    let spec = crate::connector::load_one(&map, chrono_tz::UTC).unwrap_or_else(|e| panic!("{e:?}"));
    let mem = MemFolder::new();
    mem.put("theirs_12.csv", b"a,b\n");
    let mut sim = drop_sim(mem.clone(), "{{target}}_{{date:%d}}.csv", "append");
    sim.target = sim.target.with_mapping(spec.mapping.clone());
    sim.attempt(&items(1..=1), at(11, 10, 0), false, Stop::BeforeCommit)
        .await
        .unwrap();
    let mut sim = restart(sim, mem.clone());
    sim.target = sim.target.with_mapping(spec.mapping.clone());
    deliver(&mut sim, &items(1..=1), at(11, 10, 0)).await;
    deliver(&mut sim, &items(2..=2), at(11, 10, 0)).await;
    deliver(&mut sim, &items(3..=3), at(12, 10, 0)).await;
    assert_eq!(text(&mem, "c_11.csv"), format!("ID\n{}", recs(1..=2)));
    assert_eq!(text(&mem, "c_12.csv"), format!("ID\n{}", recs(3..=3)));
    // Emptied by the legacy job: it starts again, column row first.
    mem.put("c_12.csv", b"");
    deliver(&mut sim, &items(4..=4), at(12, 10, 0)).await;
    assert_eq!(text(&mem, "c_12.csv"), format!("ID\n{}", recs(4..=4)));
}

#[tokio::test]
async fn every_crash_point_of_a_batch_leaves_the_batch_once_under_its_intent_name() {
    for stop in [Stop::AfterIntent, Stop::BeforeCommit] {
        let mem = MemFolder::new();
        let mut sim = drop_sim(mem.clone(), "p_{{date:%d}}_{{seq}}.txt", "batch");
        assert!(sim.target.pins_batches());
        sim.attempt(&items(1..=3), at(12, 23, 59), false, stop)
            .await
            .unwrap();
        // The retry after midnight (the connector re-takes the pinned range) keeps the name.
        let mut sim = restart(sim, mem.clone());
        deliver(&mut sim, &items(1..=3), at(13, 0, 1)).await;
        deliver(&mut sim, &items(4..=4), at(13, 0, 2)).await;
        assert_eq!(mem.names(), ["p_12_1.txt", "p_13_4.txt"], "{stop:?}");
        assert_eq!(text(&mem, "p_12_1.txt"), recs(1..=3));
        assert_eq!(sim.n_ambiguous, u32::from(stop == Stop::AfterIntent));
    }
}

/// Issue 10: "already there" meant "done" for file and "replace" for SFTP. Now: the same
/// bytes are this batch (done), anything else is never replaced.
#[tokio::test]
async fn a_batch_file_already_there_is_done_if_identical_and_never_replaced_otherwise() {
    let mem = MemFolder::new();
    mem.put("p_1.txt", b"SOMEONE ELSE'S BATCH\n");
    let mut sim = drop_sim(mem.clone(), "p_{{seq}}.txt", "batch");
    let err = sim
        .attempt(&items(1..=2), at(12, 10, 0), false, Stop::Commit)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeliveryError::Permanent(m) if m.contains("p_1.txt is already there with other content")),
        "{err:?}"
    );
    assert_eq!(text(&mem, "p_1.txt"), "SOMEONE ELSE'S BATCH\n");
    mem.rename("p_1.txt", "moved.txt");
    deliver(&mut sim, &items(1..=2), at(12, 10, 0)).await;
    assert_eq!(text(&mem, "p_1.txt"), recs(1..=2));
    // The same bytes under the name (an attempt renamed it, its commit was lost): done.
    let mut again = drop_sim(mem.clone(), "p_{{seq}}.txt", "batch");
    deliver(&mut again, &items(1..=2), at(12, 10, 0)).await;
    assert_eq!(mem.names(), ["moved.txt", "p_1.txt"]);
}

/// Issue 10: `ess replay` of a range on an SFTP batch target replaced the original file.
#[tokio::test]
async fn a_replayed_batch_gets_its_own_name_and_the_original_stays() {
    let mem = MemFolder::new();
    let mut sim = drop_sim(mem.clone(), "p_{{seq}}.txt", "batch");
    deliver(&mut sim, &items(1..=10), at(12, 10, 0)).await;
    sim.attempt(&items(1..=3), at(12, 11, 0), true, Stop::BeforeCommit)
        .await
        .unwrap();
    let mut sim = restart(sim, mem.clone());
    sim.attempt(&items(1..=3), at(12, 11, 5), true, Stop::Commit)
        .await
        .unwrap();
    assert_eq!(mem.names(), ["p_1.replay-3.txt", "p_1.txt"]);
    assert_eq!(text(&mem, "p_1.txt"), recs(1..=10));
    assert_eq!(text(&mem, "p_1.replay-3.txt"), recs(1..=3));
}

#[tokio::test]
async fn deliver_without_a_describing_checkpoint_refuses_instead_of_guessing() {
    let mem = MemFolder::new();
    for (mode, file) in [("append", "p.txt"), ("batch", "p_{{seq}}.txt")] {
        let mut t = DropTarget::over(
            mem.clone(),
            DropSpec::parse(file, Some(mode)).unwrap(),
            "c",
            None,
        );
        let it = items(1..=1);
        let d = Delivery {
            connector: "c",
            items: &it,
            now: at(12, 10, 0),
            replay: false,
        };
        let err = t.deliver(&d, &[]).await.unwrap_err();
        assert!(matches!(err, DeliveryError::Permanent(_)), "{mode}");
    }
    assert!(mem.names().is_empty());
}

/// Checkpoints of the release before intents: a `FileMark` (with the device number that
/// must not identify the file) and an SFTP `{file, len}` are read as committed marks.
#[tokio::test]
async fn checkpoints_of_the_previous_release_are_read_after_an_upgrade() {
    // What the previous release's `schema::encode` wrote: format byte 1, then postcard.
    fn legacy<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = vec![1u8];
        out.extend(postcard::to_stdvec(value).unwrap());
        out
    }
    #[derive(Serialize)]
    struct OldFileMark {
        path: std::path::PathBuf,
        dev: u64,
        ino: u64,
        len: u64,
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // The old release delivered 1..=2, then wrote 3 and crashed before the commit; the
    // disk came back on another device number.
    std::fs::write(out.join("permit.txt"), recs(1..=3)).unwrap();
    let ino =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(out.join("permit.txt")).unwrap());
    let old = legacy(&OldFileMark {
        path: out.join("permit.txt"),
        dev: 12345,
        ino,
        len: recs(1..=2).len() as u64,
    });
    let folder = local::LocalFolder::new(out.clone());
    let mut sim = drop_sim(folder.clone(), "permit.txt", "append");
    sim.committed = old;
    deliver(&mut sim, &items(3..=4), at(12, 10, 0)).await;
    assert_eq!(
        std::fs::read_to_string(out.join("permit.txt")).unwrap(),
        recs(1..=4)
    );
    assert!(
        sim.intent.is_none(),
        "the old mark describes the file: no intent needed"
    );

    #[derive(Serialize)]
    struct OldSftp {
        file: String,
        len: u64,
    }
    let mem = MemFolder::new();
    mem.put("permit.txt", recs(1..=3).as_bytes());
    let old = legacy(&OldSftp {
        file: "permit.txt".into(),
        len: recs(1..=2).len() as u64,
    });
    let state = decode_checkpoint(&old, &mem).unwrap();
    assert_eq!(state, None, "a memory folder has no legacy form");
    struct AsSftp(MemFolder);
    #[async_trait::async_trait]
    impl Folder for AsSftp {
        fn location(&self) -> String {
            self.0.location()
        }
        fn name_in(&self, path: &str) -> Option<String> {
            self.0.name_in(path)
        }
        fn legacy_form(&self) -> LegacyForm {
            LegacyForm::SftpFile
        }
        async fn stat(&mut self, n: &str) -> Result<Option<Stat>, FolderError> {
            self.0
                .stat(n)
                .await
                .map(|s| s.map(|s| Stat { id: None, ..s }))
        }
        async fn read(&mut self, n: &str, o: u64, l: u64) -> Result<Vec<u8>, FolderError> {
            self.0.read(n, o, l).await
        }
        async fn truncate(&mut self, n: &str, l: u64) -> Result<(), FolderError> {
            self.0.truncate(n, l).await
        }
        async fn write_at(&mut self, n: &str, o: u64, b: &[u8]) -> Result<(), FolderError> {
            self.0.write_at(n, o, b).await
        }
        async fn create_new(&mut self, n: &str) -> Result<bool, FolderError> {
            self.0.create_new(n).await
        }
        async fn write_new(&mut self, n: &str, b: &[u8]) -> Result<(), FolderError> {
            self.0.write_new(n, b).await
        }
        async fn rename_new(&mut self, f: &str, t: &str) -> Result<bool, FolderError> {
            self.0.rename_new(f, t).await
        }
        async fn remove(&mut self, n: &str) -> Result<(), FolderError> {
            self.0.remove(n).await
        }
        async fn sync_names(&mut self) -> Result<(), FolderError> {
            Ok(())
        }
    }
    let mut sim = drop_sim(AsSftp(mem.clone()), "permit.txt", "append");
    sim.committed = old;
    deliver(&mut sim, &items(3..=4), at(12, 10, 0)).await;
    assert_eq!(text(&mem, "permit.txt"), recs(1..=4));
    // A damaged checkpoint is a clear permanent error, not a guess.
    let err = decode_checkpoint(&[CHECKPOINT_FORMAT, 0xff, 0xff], &mem).unwrap_err();
    assert!(matches!(err, CheckpointError::Damaged(_)), "{err}");
    let err = decode_checkpoint(&[9], &mem).unwrap_err();
    assert!(err.to_string().contains("format 9"), "{err}");
}

#[test]
fn identities_compare_on_what_survives_a_reboot() {
    let a = FileId {
        ino: 7,
        born: Some((100, 5)),
    };
    assert!(same_file(Some(a), Some(a)));
    assert!(!same_file(
        Some(a),
        Some(FileId {
            born: Some((101, 0)),
            ..a
        })
    ));
    assert!(!same_file(Some(a), Some(FileId { ino: 8, ..a })));
    assert!(
        same_file(Some(a), Some(FileId { born: None, ..a })),
        "an upgraded mark"
    );
    assert!(same_file(None, Some(a)), "SFTP: the name is the identity");
    assert_eq!(replay_name("p_1.txt", 9), "p_1.replay-9.txt");
    assert_eq!(replay_name("p_1", 9), "p_1.replay-9");
    assert_eq!(replay_name(".p", 9), ".p.replay-9");
    assert_eq!(temp_name("p_1.txt"), ".p_1.txt.ess-tmp");
}

/// The legacy job empties the file while the intent is being committed: the write must not
/// land past the file's new end (a gap of zeros would be a forged record); the delivery
/// fails, is planned again and lands at the new end.
#[tokio::test]
async fn a_file_emptied_while_the_intent_commits_gets_no_gap_of_zeros() {
    let mem = MemFolder::new();
    mem.put("permit.txt", b"THEIRS\n");
    let mut sim = drop_sim(mem.clone(), "permit.txt", "append");
    let it = items(1..=1);
    let d = Delivery {
        connector: "c",
        items: &it,
        now: at(12, 10, 0),
        replay: false,
    };
    let intent = sim.target.prepare(&d, &[]).await.unwrap().intent.unwrap();
    mem.put("permit.txt", b"");
    let err = sim.target.deliver(&d, &intent).await.unwrap_err();
    assert!(matches!(err, DeliveryError::Transient { .. }), "{err:?}");
    assert_eq!(text(&mem, "permit.txt"), "", "nothing written");
    sim.intent = Some(intent);
    deliver(&mut sim, &items(1..=2), at(12, 10, 0)).await;
    assert_eq!(text(&mem, "permit.txt"), recs(1..=2));
}
