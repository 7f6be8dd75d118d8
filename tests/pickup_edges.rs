//! Pickup at the edges of the folder, with the real parts (the source compiled from its
//! map file, `LocalDir` / the SFTP folder on a real sshd, the ledger on redb): a name that
//! is not UTF-8, symbolic links to a file inside the folder and to one outside, and a file
//! deleted, truncated or grown between the commits of its chunks (or while the daemon was
//! down with part of it taken). Each time: nothing is taken twice, what was taken stays,
//! the operator gets one clear log line, and nothing panics.

#[path = "support/source.rs"]
mod source;
#[path = "support/sshd.rs"]
mod sshd;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ess::feed::Store;
use ess::ledger::sources::{FileState, SourceFile, Sources};
use ess::source::SourceSpec;
use ess::source::dir::{Listing, LocalDir, SourceDir, Stat};
use ess::source::local::{Pickup, SourceError};

/// Six records, so three chunks of two.
const SIX: &str = "ID0001\nID0002\nID0003\nID0004\nID0005\nID0006\n";

/// The source `results` over `dir` (`kind` and connection keys, and any other source keys,
/// in `kind`; `then:` moves to `done` unless `kind` has one), chunks of two.
fn spec(work: &Path, kind: &str, dir: &Path) -> SourceSpec {
    let path = work.join("results.yml");
    let then = if kind.contains("then:") {
        String::new()
    } else {
        format!(
            "  then: {{move: {}}}\n",
            dir.with_file_name("done").display()
        )
    };
    std::fs::write(
        &path,
        format!(
            "source:\n  name: results\n{kind}  dir: {}\n  pattern: \"RES_*.DAT\"\n  chunk: 2\n{then}format: fixed\nrecord: {{encoding: ascii, framing: lines}}\nfields:\n  ID: id | width:6\nevent:\n  type: PERMIT_RESULT\n",
            dir.display(),
        ),
    )
    .unwrap();
    source::compile(&path)
}

/// A local source over `work/in` and its ledger.
struct World {
    work: tempfile::TempDir,
    spec: Arc<SourceSpec>,
    store: Store,
}

impl World {
    fn new() -> World {
        World::with_keys("")
    }

    /// A world whose source has `keys` (source lines, indented) as well.
    fn with_keys(keys: &str) -> World {
        let work = tempfile::tempdir().unwrap();
        let inbox = work.path().join("in");
        std::fs::create_dir(&inbox).unwrap();
        let kind = format!("  kind: file\n{keys}");
        let spec = Arc::new(spec(work.path(), &kind, &inbox));
        World {
            work,
            spec,
            store: source::memory_store(),
        }
    }

    fn inbox(&self) -> PathBuf {
        self.work.path().join("in")
    }

    fn pickup(&self, dir: Box<dyn SourceDir>) -> Pickup {
        Pickup::new(self.spec.clone(), Sources::new(self.store.clone()), dir)
    }

    fn local(&self) -> Box<dyn SourceDir> {
        Box::new(LocalDir { dir: self.inbox() })
    }

    /// Writes `text` under a temp name and renames it to `name`.
    fn put(&self, name: &str, text: &str) {
        let tmp = self.inbox().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.inbox().join(name)).unwrap();
    }
}

/// The ids of the feed's events, in order.
fn ids(store: &Store) -> Vec<String> {
    ess::feed::read_after(store, 0, 1000)
        .unwrap()
        .into_iter()
        .map(|e| {
            e.payload.tree().unwrap()["ID"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

fn rows(store: &Store) -> Vec<SourceFile> {
    Sources::new(store.clone())
        .files("results")
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

/// Runs `f` with ESS's log lines captured; returns its result and the lines.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
    (out, text)
}

fn lines_with<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(what)).collect()
}

fn scan(p: &mut Pickup) -> (ess::source::local::Scan, String) {
    let (r, log) = logged(|| p.scan());
    (r.unwrap_or_else(|e: SourceError| panic!("{e}")), log)
}

fn six_ids() -> Vec<String> {
    (1..=6).map(|i| format!("ID{i:04}")).collect()
}

#[test]
fn a_name_that_is_not_utf8_is_skipped_with_one_log_line_and_the_others_are_taken() {
    let w = World::new();
    let raw = w.inbox().join(OsStr::from_bytes(b"RES_\xff.DAT"));
    std::fs::write(&raw, SIX).unwrap();
    w.put("RES_1.DAT", SIX);
    let mut p = w.pickup(w.local());
    let (first, log1) = scan(&mut p);
    let (second, log2) = scan(&mut p);
    assert_eq!((first.files_done, first.events), (1, 6));
    assert_eq!((second.files_done, second.events), (0, 0));
    assert_eq!(ids(&w.store), six_ids());
    let said = lines_with(&log1, "the name is not UTF-8");
    assert_eq!(said.len(), 1, "{log1}");
    assert!(said[0].contains("RES_\u{FFFD}.DAT"), "{}", said[0]);
    assert!(
        lines_with(&log2, "not UTF-8").is_empty(),
        "said once: {log2}"
    );
    assert!(raw.exists(), "left where it is");
}

#[test]
fn symlinks_to_a_file_inside_and_to_one_outside_are_not_followed_nor_taken_twice() {
    let w = World::new();
    w.put("RES_1.DAT", SIX);
    std::os::unix::fs::symlink("RES_1.DAT", w.inbox().join("RES_2.DAT")).unwrap();
    let outside = w.work.path().join("elsewhere.dat");
    std::fs::write(&outside, "ID0099\n").unwrap();
    std::os::unix::fs::symlink(&outside, w.inbox().join("RES_3.DAT")).unwrap();
    let mut p = w.pickup(w.local());
    let (first, log) = scan(&mut p);
    let (second, log2) = scan(&mut p);
    assert_eq!((first.files_done, first.events), (1, 6));
    assert_eq!((second.files_done, second.events), (0, 0));
    assert_eq!(
        ids(&w.store),
        six_ids(),
        "the file once, the outside one never"
    );
    for link in ["RES_2.DAT", "RES_3.DAT"] {
        let said: Vec<&str> = lines_with(&log, "a symbolic link: not followed")
            .into_iter()
            .filter(|l| l.contains(link))
            .collect();
        assert_eq!(said.len(), 1, "{link}: {log}");
        assert!(
            std::fs::symlink_metadata(w.inbox().join(link)).is_ok(),
            "{link} left alone"
        );
    }
    assert!(lines_with(&log2, "symbolic link").is_empty(), "{log2}");
    // `then: move` moved the file itself, never a link or what a link points at.
    assert_eq!(
        std::fs::read_to_string(w.work.path().join("done/RES_1.DAT")).unwrap(),
        SIX
    );
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "ID0099\n");
    assert_eq!(rows(&w.store).len(), 1);
}

#[test]
fn a_trigger_file_that_is_a_symlink_is_not_followed_and_its_file_waits_with_one_log_line() {
    let w = World::with_keys("  ready: {done_file: \"{name}.done\"}\n");
    w.put("RES_1.DAT", SIX);
    let elsewhere = w.work.path().join("RES_1.DAT.done");
    std::fs::write(&elsewhere, "").unwrap();
    std::os::unix::fs::symlink(&elsewhere, w.inbox().join("RES_1.DAT.done")).unwrap();
    let mut p = w.pickup(w.local());
    let (first, log1) = scan(&mut p);
    let (second, log2) = scan(&mut p);
    assert_eq!((first.files_done, first.events), (0, 0), "{log1}");
    assert_eq!((second.files_done, second.events), (0, 0));
    assert_eq!((first.waiting, second.waiting), (1, 1));
    let said = lines_with(&log1, "the trigger file is skipped");
    assert_eq!(said.len(), 1, "{log1}");
    assert!(
        said[0].contains("RES_1.DAT.done") && said[0].contains("a symbolic link"),
        "{}",
        said[0]
    );
    assert!(
        lines_with(&log2, "symbolic link").is_empty(),
        "said once: {log2}"
    );
    assert!(ids(&w.store).is_empty(), "nothing taken through the link");
    // A real trigger in its place: the file is taken, once.
    std::fs::remove_file(w.inbox().join("RES_1.DAT.done")).unwrap();
    std::fs::write(w.inbox().join("RES_1.DAT.done"), "").unwrap();
    let (third, _) = scan(&mut p);
    assert_eq!((third.files_done, third.events), (1, 6));
    assert_eq!(ids(&w.store), six_ids());
}

/// The local folder, with `change` done to the file `name` just before its `nth` stat
/// (the first is before the first commit: the second comes between two chunks).
struct Meddling {
    inner: LocalDir,
    name: String,
    nth: usize,
    n: usize,
    change: Box<dyn FnMut(&Path) + Send>,
}

impl SourceDir for Meddling {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn list(&mut self) -> Result<Listing, SourceError> {
        self.inner.list()
    }
    fn stat(&mut self, name: &str) -> Result<Option<Stat>, SourceError> {
        if name == self.name {
            self.n += 1;
            if self.n == self.nth {
                (self.change)(&self.inner.dir.join(name));
            }
        }
        self.inner.stat(name)
    }
    fn read(&mut self, name: &str) -> Result<Option<(Stat, Vec<u8>, Stat)>, SourceError> {
        self.inner.read(name)
    }
    fn remove(&mut self, name: &str) -> Result<(), SourceError> {
        self.inner.remove(name)
    }
    fn move_out(&mut self, name: &str, to: &Path, alt: &str) -> Result<(), SourceError> {
        self.inner.move_out(name, to, alt)
    }
}

/// `RES_1.DAT` with six records, in a folder that runs `change` on it just before the scan
/// checks it again after its first chunk.
fn six_changed_before_the_second_chunk(
    w: &World,
    change: Box<dyn FnMut(&Path) + Send>,
) -> Box<dyn SourceDir> {
    w.put("RES_1.DAT", SIX);
    Box::new(Meddling {
        inner: LocalDir { dir: w.inbox() },
        name: "RES_1.DAT".into(),
        nth: 2,
        n: 0,
        change,
    })
}

#[test]
fn a_file_deleted_truncated_or_grown_between_chunks_is_refused_keeping_what_was_taken() {
    type Change = Box<dyn FnMut(&Path) + Send>;
    let changes: Vec<(&str, Change)> = vec![
        (
            "deleted",
            Box::new(|p: &Path| std::fs::remove_file(p).unwrap()),
        ),
        (
            "truncated",
            Box::new(|p: &Path| {
                let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                f.set_len(3 * 7).unwrap();
            }),
        ),
        (
            "grown",
            Box::new(|p: &Path| {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
                f.write_all(b"ID0007\n").unwrap();
            }),
        ),
    ];
    for (what, change) in changes {
        let w = World::new();
        let mut p = w.pickup(six_changed_before_the_second_chunk(&w, change));
        let (first, mut log) = scan(&mut p);
        assert_eq!((first.files_done, first.events), (0, 2), "{what}");
        assert_eq!(
            ids(&w.store),
            six_ids()[..2],
            "{what}: the first chunk stays"
        );
        // Gone from its name, it may have been renamed: the next scan looks for it and, not
        // finding it, refuses it as gone.
        let why = if what == "deleted" {
            assert_eq!(rows(&w.store)[0].state, FileState::Reading);
            log = scan(&mut p).1;
            "RES_1.DAT went away after its first 2 records were taken"
        } else {
            "changed (or was replaced) while being read, after 2 records"
        };
        let rows = rows(&w.store);
        assert!(
            matches!(&rows[0].state, FileState::Refused { reason } if reason.contains(why)),
            "{what}: {:?}",
            rows[0].state
        );
        assert_eq!(
            lines_with(&log, "refused; what was taken stays").len(),
            1,
            "{what}: {log}"
        );
        // Never taken again, whatever is in the folder now.
        let (again, _) = scan(&mut p);
        assert_eq!((again.files_done, again.events), (0, 0), "{what}");
        assert_eq!(ids(&w.store).len(), 2, "{what}");
    }
}

/// `RES_1.DAT` with its first chunk of two records taken, as a daemon stopped mid-file
/// leaves it.
fn first_chunk_taken(w: &World) {
    w.put("RES_1.DAT", SIX);
    let mut p = w.pickup(w.local());
    p.chunk_limit = Some(1);
    let (first, _) = scan(&mut p);
    assert_eq!(first.events, 2);
    assert_eq!(rows(&w.store)[0].state, FileState::Reading);
}

#[test]
fn a_file_deleted_while_the_daemon_was_down_mid_file_is_refused_not_waited_for_forever() {
    let w = World::new();
    first_chunk_taken(&w);
    std::fs::remove_file(w.inbox().join("RES_1.DAT")).unwrap();
    // The restart: a new scan over the same ledger.
    let mut p = w.pickup(w.local());
    let (after, log) = scan(&mut p);
    assert_eq!((after.files_done, after.events), (0, 0));
    let rows = rows(&w.store);
    assert!(
        matches!(&rows[0].state, FileState::Refused { reason }
            if reason.contains("RES_1.DAT went away after its first 2 records were taken")),
        "{:?}",
        rows[0].state
    );
    assert_eq!(lines_with(&log, "went away").len(), 1, "{log}");
    let (_, log) = scan(&mut p);
    assert!(lines_with(&log, "went away").is_empty(), "said once: {log}");
    assert_eq!(ids(&w.store), six_ids()[..2]);
}

#[test]
fn over_sftp_a_name_that_is_not_utf8_and_a_symlink_are_skipped_and_the_file_taken_once() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sshd = sshd::Sshd::start();
    let drop = sshd.drop_dir();
    let work = tempfile::tempdir().unwrap();
    let kind = format!(
        "  kind: sftp\n  host: 127.0.0.1\n  port: {}\n  user: {}\n  key: {}\n  known_hosts: {}\n  timeout: 10s\n",
        sshd.port,
        sshd::user(),
        sshd.path("user_ed25519").display(),
        sshd.path("known_hosts").display(),
    );
    let spec = Arc::new(spec(work.path(), &kind, &drop));
    std::fs::create_dir_all(drop.with_file_name("done")).unwrap();
    std::fs::write(drop.join("RES_1.DAT"), SIX).unwrap();
    std::fs::write(drop.join(OsStr::from_bytes(b"RES_\xff.DAT")), SIX).unwrap();
    std::os::unix::fs::symlink("RES_1.DAT", drop.join("RES_2.DAT")).unwrap();
    let store = source::memory_store();
    let dir = spec.open_dir(runtime.handle().clone()).unwrap();
    let mut p = Pickup::new(spec.clone(), Sources::new(store.clone()), dir);
    let (first, log) = scan(&mut p);
    let (second, _) = scan(&mut p);
    assert_eq!((first.files_done, first.events), (1, 6), "{log}");
    assert_eq!((second.files_done, second.events), (0, 0));
    assert_eq!(ids(&store), six_ids());
    assert_eq!(lines_with(&log, "the name is not UTF-8").len(), 1, "{log}");
    let link = lines_with(&log, "a symbolic link: not followed");
    assert!(link.len() == 1 && link[0].contains("RES_2.DAT"), "{log}");
    assert!(drop.join(OsStr::from_bytes(b"RES_\xff.DAT")).exists());
    assert!(std::fs::symlink_metadata(drop.join("RES_2.DAT")).is_ok());
    assert_eq!(rows(&store).len(), 1);
}

/// A file renamed within the folder while the daemon was down with part of it taken (a
/// legacy job renaming its output, to a name the pattern still wants) is the same file: the
/// rest of its records is taken under the keys the first part had, nothing twice, and its
/// `then:` goes to the new name. A new file written under the old name meanwhile is a new
/// file, taken whole.
#[test]
fn a_file_renamed_within_the_folder_mid_file_is_resumed_not_taken_again() {
    let w = World::new();
    first_chunk_taken(&w);
    std::fs::rename(w.inbox().join("RES_1.DAT"), w.inbox().join("RES_9.DAT")).unwrap();
    w.put("RES_1.DAT", "ID0101\n");
    // The restart: a new scan over the same ledger.
    let mut p = w.pickup(w.local());
    let (after, log) = scan(&mut p);
    assert!(lines_with(&log, "refused").is_empty(), "{log}");
    assert_eq!((after.files_done, after.events), (2, 5), "{log}");
    let mut want = six_ids();
    want.insert(0, "ID0101".into());
    let mut got = ids(&w.store);
    got.sort();
    want.sort();
    assert_eq!(got, want, "each record once");
    let keys: Vec<String> = ess::feed::read_after(&w.store, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    let prefix = |k: &String| k.rsplit_once('/').unwrap().0.to_string();
    assert_eq!(
        keys.iter()
            .filter(|k| prefix(k) == prefix(&keys[0]))
            .count(),
        6,
        "the renamed file's records share the key its first chunk was taken under: {keys:?}"
    );
    let rows = rows(&w.store);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.state == FileState::Done && r.then_done)
    );
    let done = w.work.path().join("done");
    assert!(done.join("RES_9.DAT").exists() && done.join("RES_1.DAT").exists());
    assert!(std::fs::read_dir(w.inbox()).unwrap().next().is_none());
}

/// With `then: keep`, a file taken whole and then renamed within the folder, or given a
/// second name (a hard link), is not taken again; a copy under a new name is another file
/// (another inode) and is taken, as the legacy side sending it again.
#[test]
fn a_kept_file_renamed_or_linked_within_the_folder_is_not_taken_again_but_a_copy_is() {
    let w = World::with_keys("  then: keep\n");
    w.put("RES_1.DAT", SIX);
    let mut p = w.pickup(w.local());
    assert_eq!(scan(&mut p).0.events, 6);
    std::fs::rename(w.inbox().join("RES_1.DAT"), w.inbox().join("RES_2.DAT")).unwrap();
    let (renamed, log) = scan(&mut p);
    assert_eq!((renamed.files_done, renamed.events), (0, 0), "{log}");
    std::fs::hard_link(w.inbox().join("RES_2.DAT"), w.inbox().join("RES_0.DAT")).unwrap();
    let (linked, log) = scan(&mut p);
    assert_eq!((linked.files_done, linked.events), (0, 0), "{log}");
    assert_eq!(
        lines_with(&log, "the same file as RES_2.DAT").len(),
        1,
        "said once: {log}"
    );
    let (_, log) = scan(&mut p);
    assert!(lines_with(&log, "the same file as").is_empty(), "{log}");
    assert_eq!(ids(&w.store), six_ids());
    assert_eq!(rows(&w.store).len(), 1);

    std::fs::copy(w.inbox().join("RES_2.DAT"), w.inbox().join("RES_3.DAT")).unwrap();
    let (copied, _) = scan(&mut p);
    assert_eq!((copied.files_done, copied.events), (1, 6));
    assert_eq!(rows(&w.store).len(), 2);
}

/// A legacy job renames the file within the folder while it is being taken (between two
/// chunks): nothing of the chunk in hand is committed, and the next scan finds the file
/// under its new name by its identity and takes the rest, each record once, under the keys
/// the first chunk had.
#[test]
fn a_file_renamed_within_the_folder_between_chunks_is_taken_on_from_where_it_was() {
    let w = World::new();
    let rename = |p: &Path| std::fs::rename(p, p.with_file_name("RES_2.DAT")).unwrap();
    let mut p = w.pickup(six_changed_before_the_second_chunk(&w, Box::new(rename)));
    let (first, log) = scan(&mut p);
    assert_eq!((first.files_done, first.events), (0, 2), "{log}");
    let (rest, log) = scan(&mut p);
    assert!(lines_with(&log, "refused").is_empty(), "{log}");
    assert_eq!((rest.files_done, rest.events), (1, 4), "{log}");
    assert_eq!(ids(&w.store), six_ids());
    let rows = rows(&w.store);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].state.clone(), rows[0].name.as_str()),
        (FileState::Done, "RES_2.DAT")
    );
    assert!(w.work.path().join("done/RES_2.DAT").exists());
}
