//! `ess list | replay | stats | backup` through the admin socket of a running daemon and,
//! with no daemon, straight on the database; the socket's mode; clap usage rules.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::Utc;
use clap::Parser;
use ess::admin::backend::Admin;
use ess::admin::cli::{backup_output, list_output, replay_output, stats_output};
use ess::admin::server::serve;
use ess::admin::*;
use ess::cli::ConfigArg;
use ess::config::Config;
use ess::feed::{Feed, NewEvent, open_database};
use ess::ledger::{DeadLetter, Ledger, RetryState};
use redb::{ReadableDatabase, ReadableTableMetadata};

struct Appliance {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    cfg: Config,
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A config, two connectors, and a database: `city` takes PERMIT_STATUS (seqs 1, 2, 4, 6),
/// has its cursor at 3 and seq 2 dead; `county` takes everything, is at 1 and retrying 2.
async fn appliance() -> Appliance {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let config = root.join("ess.yml");
    write(
        &config,
        "data_dir: data\nmaps_dir: maps\nadmin:\n  socket: run/admin.sock\ningest:\n  listen: 127.0.0.1:8443\n  cert: tls/server.crt\n  key: tls/server.key\n  client_ca: tls/ca.crt\n",
    );
    write(&root.join("tls/server.key"), "k");
    std::fs::set_permissions(
        root.join("tls/server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    write(
        &root.join("maps/city.yml"),
        "target: city\nevents: [PERMIT_STATUS]\nfields:\n  ID: id | width:10\ndeliver: {kind: file, dir: ../out, file: city.txt}\n",
    );
    write(
        &root.join("maps/county.yml"),
        "target: county\nfields:\n  ID: id | width:10\ndeliver: {kind: file, dir: ../out, file: county.txt}\n",
    );
    std::fs::create_dir_all(root.join("data")).unwrap();
    let cfg = Config::load(&config).unwrap();

    let feed = Feed::open(Arc::new(open_database(&cfg.db_path()).unwrap())).unwrap();
    let types = [
        "PERMIT_STATUS",
        "PERMIT_STATUS",
        "OTHER",
        "PERMIT_STATUS",
        "OTHER",
        "PERMIT_STATUS",
    ];
    let events = types
        .iter()
        .enumerate()
        .map(|(i, t)| NewEvent {
            event_type: t.to_string(),
            payload: serde_json::json!({"id": i + 1})
                .as_object()
                .unwrap()
                .clone(),
            key: format!("k{}", i + 1),
            trace_id: "t".into(),
            ts: None,
        })
        .collect();
    feed.append(events).await.unwrap();
    let ledger = Ledger::new(feed.db().clone());
    let letter = DeadLetter {
        reason: "map".into(),
        message: "field ID: too wide".into(),
        at_micros: 1_700_000_000_000_000,
        attempts: 1,
    };
    ledger
        .commit_progress("city", 3, vec![], 1, &[(2, letter)], Utc::now())
        .unwrap();
    ledger
        .commit_progress("county", 1, vec![], 1, &[], Utc::now())
        .unwrap();
    let retry = RetryState {
        seq: 2,
        attempts: 3,
        next_at_micros: 1_900_000_000_000_000,
        last_error: "connection refused".into(),
    };
    ledger.record_failure("county", &retry).unwrap();
    drop(ledger);
    feed.close();
    Appliance {
        _dir: dir,
        root,
        config,
        cfg,
    }
}

fn list_args(a: &Appliance, extra: &[&str]) -> ListArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ListArgs,
    }
    let mut argv = vec!["ess", "--config", a.config.to_str().unwrap()];
    argv.extend(extra);
    Cli::try_parse_from(argv).unwrap().args
}

fn list_json(a: &Appliance, extra: &[&str]) -> ListResponse {
    let mut extra = extra.to_vec();
    extra.push("--json");
    serde_json::from_str(&list_output(&list_args(a, &extra)).unwrap()).unwrap()
}

fn seqs(resp: &ListResponse, target: &str, state: &str) -> Vec<u64> {
    resp.entries
        .iter()
        .filter(|e| e.target == target && e.state == state)
        .map(|e| e.seq)
        .collect()
}

fn stats_json(a: &Appliance) -> Snapshot {
    let out = stats_output(&StatsArgs {
        config: ConfigArg::new(&a.config),
        json: true,
    })
    .unwrap();
    serde_json::from_str(&out).unwrap()
}

fn replay(
    a: &Appliance,
    target: &str,
    from: Option<u64>,
    to: Option<u64>,
    dead: bool,
) -> anyhow::Result<ReplayResponse> {
    let args = ReplayArgs {
        config: ConfigArg::new(&a.config),
        target: target.into(),
        from,
        to,
        since: None,
        until: None,
        dead,
        json: true,
    };
    Ok(serde_json::from_str(&replay_output(&args)?)?)
}

fn is_usage(e: &anyhow::Error) -> bool {
    ess::cli::exit_code(e) == 2
}

/// The whole command set against whatever answers (daemon or database): same outcomes.
fn exercise(a: &Appliance) {
    // list: pending per the `events:` filter, the retrying head, dead letters.
    let all = list_json(a, &[]);
    assert_eq!(seqs(&all, "city", "pending"), [4, 6]);
    assert_eq!(seqs(&all, "city", "dead"), [2]);
    assert_eq!(seqs(&all, "county", "retrying"), [2]);
    assert_eq!(seqs(&all, "county", "pending"), [3, 4, 5, 6]);
    let dead = &all.entries.iter().find(|e| e.state == "dead").unwrap();
    assert_eq!(
        (dead.reason.as_deref(), dead.event_type.as_deref()),
        (Some("map"), Some("PERMIT_STATUS"))
    );
    let only_dead = list_json(a, &["--dead"]);
    assert!(only_dead.entries.iter().all(|e| e.state == "dead"));
    let limited = list_json(a, &["--pending", "--target", "county", "--limit", "2"]);
    assert_eq!(
        limited.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(limited.truncated);
    let table = list_output(&list_args(a, &["--target", "county"])).unwrap();
    assert!(table.starts_with("TARGET"), "{table}");
    assert!(
        table.contains("retrying") && table.contains("connection refused"),
        "{table}"
    );
    let err = list_output(&list_args(a, &["--target", "nope"])).unwrap_err();
    assert!(
        is_usage(&err) && err.to_string().contains("known: city, county"),
        "{err}"
    );

    // stats.
    let stats = stats_json(a);
    assert_eq!(stats.feed.last_seq, 6);
    assert_eq!(stats.feed.events, 6);
    let city = stats.connectors.iter().find(|c| c.name == "city").unwrap();
    // city takes PERMIT_STATUS only: of seqs 4, 5, 6 after its cursor, 4 and 6.
    assert_eq!(
        (
            city.cursor,
            city.lag_events,
            city.dead_letters,
            city.delivered
        ),
        (3, 2, 1, 1)
    );
    assert_eq!(city.dead_by_reason["map"], 1);
    let county = stats
        .connectors
        .iter()
        .find(|c| c.name == "county")
        .unwrap();
    assert_eq!(county.retry.as_ref().map(|r| r.attempts), Some(3));
    assert_eq!(county.lag_events, 5);
    let text = stats_output(&StatsArgs {
        config: ConfigArg::new(&a.config),
        json: false,
    })
    .unwrap();
    assert!(
        text.contains("feed: last seq 6") && text.contains("county"),
        "{text}"
    );

    // replay: a range up to the cursor, then the dead letters.
    let r = replay(a, "city", Some(1), Some(5), false).unwrap();
    assert_eq!(r.requeued, 3);
    assert!(r.note.unwrap().contains("cursor 3"));
    let pending = list_json(a, &["--pending", "--target", "city"]);
    assert_eq!(seqs(&pending, "city", "requeued"), [1, 2, 3]);
    assert_eq!(replay(a, "city", None, None, true).unwrap().requeued, 1);
    assert!(list_json(a, &["--dead"]).entries.is_empty());
    assert!(is_usage(
        &replay(a, "city", Some(0), None, false).unwrap_err()
    ));
    assert!(is_usage(
        &replay(a, "city", Some(3), Some(2), false).unwrap_err()
    ));
    assert!(is_usage(
        &replay(a, "city", Some(99), Some(100), false).unwrap_err()
    ));
    assert!(is_usage(&replay(a, "nope", None, None, true).unwrap_err()));

    // backup: a complete copy, never over an existing file.
    let to = a.root.join("backup.redb");
    let out = backup_output(&BackupArgs {
        config: ConfigArg::new(&a.config),
        to: to.clone(),
        json: true,
    })
    .unwrap();
    let resp: BackupReport = serde_json::from_str(&out).unwrap();
    assert_eq!(resp.tables["events"], 6);
    assert_eq!(resp.tables["dead"], 0);
    assert_eq!(resp.tables["requeue"], 3);
    let copy = redb::Database::open(&to).unwrap();
    let tx = copy.begin_read().unwrap();
    assert_eq!(
        tx.open_table(ess::feed::schema::EVENTS)
            .unwrap()
            .len()
            .unwrap(),
        6
    );
    assert_eq!(
        tx.open_table(ess::feed::schema::CURSORS)
            .unwrap()
            .len()
            .unwrap(),
        2
    );
    drop(tx);
    drop(copy);
    let err = backup_output(&BackupArgs {
        config: ConfigArg::new(&a.config),
        to: to.clone(),
        json: false,
    })
    .unwrap_err();
    assert!(
        is_usage(&err) && err.to_string().contains("refusing to overwrite"),
        "{err}"
    );
}

#[tokio::test]
async fn commands_work_without_a_daemon() {
    let a = appliance().await;
    assert!(!a.cfg.admin_socket.exists());
    exercise(&a);
}

/// Counts requests so a test can tell the socket answered, not the database file.
struct Counting {
    inner: Admin,
    calls: AtomicUsize,
}

impl AdminBackend for Counting {
    fn list(&self, req: &ListRequest) -> Result<ListResponse, AdminError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.list(req)
    }
    fn replay(&self, req: &ReplayRequest, by: &str) -> Result<ReplayResponse, AdminError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.replay(req, by)
    }
    fn stats(&self) -> Result<Snapshot, AdminError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.stats()
    }
    fn show(&self, req: &ShowRequest) -> Result<EventReport, AdminError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.show(req)
    }
    fn backup(&self, req: &BackupRequest) -> Result<BackupReport, AdminError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.backup(req)
    }
    fn act(&self, req: &ActRequest) -> Result<ActResponse, AdminError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.act(req)
    }
}

/// The daemon's admin backend over `db`: the maps of `a` as its running generation (their
/// tasks not started: the admin socket answers from their specs and the ledger).
fn daemon_admin(
    a: &Appliance,
    db: ess::feed::Store,
    wake: impl Fn(&str) + Send + Sync + 'static,
) -> Admin {
    let feed = Feed::open(db.clone()).unwrap();
    let ledger = Ledger::new(db.clone());
    let env = ess::connector::Env {
        feed: feed.clone(),
        ledger: ledger.clone(),
        timezone: chrono_tz::UTC,
        hooks: Arc::new(ess::status::Metrics::new()),
        wake: tokio::sync::watch::channel(0).1,
    };
    let store = Arc::new(ess::state::Reader::shared(db, &a.cfg.db_path()));
    let connectors = Arc::new(ess::state::Connectors::new(store));
    let running = ess::connector::load_all(&a.cfg.maps_dir, chrono_tz::UTC)
        .unwrap()
        .into_iter()
        .map(|spec| {
            let spec = Arc::new(spec);
            let runner = ess::connector::Runner::new(spec.clone(), env.clone()).unwrap();
            ess::state::Running {
                spec,
                live: runner.live.clone(),
                handle: runner.handle(),
            }
        })
        .collect();
    connectors.set(running);
    let status = Arc::new(ess::status::DaemonStatus::new(
        connectors.clone(),
        feed,
        a.cfg.data_dir.clone(),
        0,
        std::time::Duration::from_secs(900),
        Arc::new(ess::health::Health::new(a.cfg.data_dir.clone(), 0)),
    ));
    Admin::daemon(connectors, status, ledger, Arc::new(wake))
}

/// A backend that answers nothing (for socket-file tests).
struct Nothing;

impl AdminBackend for Nothing {
    fn list(&self, _: &ListRequest) -> Result<ListResponse, AdminError> {
        Err(AdminError::BadRequest("nothing".into()))
    }
    fn replay(&self, _: &ReplayRequest, _: &str) -> Result<ReplayResponse, AdminError> {
        Err(AdminError::BadRequest("nothing".into()))
    }
    fn stats(&self) -> Result<Snapshot, AdminError> {
        Err(AdminError::BadRequest("nothing".into()))
    }
    fn show(&self, _: &ShowRequest) -> Result<EventReport, AdminError> {
        Err(AdminError::BadRequest("nothing".into()))
    }
    fn backup(&self, _: &BackupRequest) -> Result<BackupReport, AdminError> {
        Err(AdminError::BadRequest("nothing".into()))
    }
    fn act(&self, _: &ActRequest) -> Result<ActResponse, AdminError> {
        Err(AdminError::BadRequest("nothing".into()))
    }
}

#[tokio::test]
async fn commands_go_through_the_socket_of_a_running_daemon() {
    let a = appliance().await;
    // The "daemon" holds the database open for writing, as `ess serve` does.
    let db = ess::feed::Store::from(open_database(&a.cfg.db_path()).unwrap());
    let woken = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let w = woken.clone();
    let backend = Arc::new(Counting {
        inner: daemon_admin(&a, db.clone(), move |target| {
            w.lock().unwrap().push(target.to_string())
        }),
        calls: AtomicUsize::new(0),
    });
    let server = serve(&a.cfg.admin_socket, backend.clone()).unwrap();

    let meta = std::fs::symlink_metadata(&a.cfg.admin_socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Nothing left of the staging folder.
    let leftovers: Vec<_> = std::fs::read_dir(a.cfg.admin_socket.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["admin.sock"]);

    exercise(&a);
    // Every one of exercise()'s 17 requests was answered by the daemon (replay could not
    // have opened the file anyway: the daemon holds it).
    assert_eq!(backend.calls.load(Ordering::SeqCst), 17);
    // The two replays that queued something woke the connector.
    assert_eq!(*woken.lock().unwrap(), ["city", "city"]);

    server.stop();
    assert!(!a.cfg.admin_socket.exists());
    drop(backend);
    drop(db);
    // With the daemon gone, the CLI reads the file itself.
    assert_eq!(stats_json(&a).feed.last_seq, 6);
}

#[test]
fn a_missing_socket_folder_is_created_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/ess/admin.sock");
    let server = serve(&path, Arc::new(Nothing)).unwrap();
    let mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    drop(server);
    assert!(!path.exists());
}

#[test]
fn stale_sockets_are_replaced_live_ones_and_other_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let backend = || Arc::new(Nothing);

    // A socket file nobody listens on (a daemon that died).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = serve(&path, backend()).unwrap();

    // A second daemon on the same socket is refused, and the first keeps its socket.
    let err = serve(&path, backend()).err().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    server.stop();

    // A regular file is never removed.
    std::fs::write(&path, "not a socket").unwrap();
    let err = serve(&path, backend()).err().unwrap();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
}

#[test]
fn flags_follow_the_usage_rules() {
    #[derive(Parser, Debug)]
    enum Cmd {
        List(ListArgs),
        Replay(ReplayArgs),
        Stats(StatsArgs),
        Backup(BackupArgs),
    }
    let ok = |argv: &[&str]| {
        Cmd::try_parse_from(std::iter::once("ess").chain(argv.iter().copied())).is_ok()
    };
    assert!(ok(&["replay", "--target", "t", "--from", "5"]));
    assert!(ok(&["replay", "--target", "t", "--from", "5", "--to", "9"]));
    assert!(ok(&["replay", "--target", "t", "--dead"]));
    assert!(!ok(&["replay", "--target", "t"]));
    assert!(!ok(&["replay", "--target", "t", "--from", "5", "--dead"]));
    assert!(!ok(&["replay", "--target", "t", "--to", "9", "--dead"]));
    assert!(!ok(&["replay", "--from", "5"]));
    assert!(ok(&["list", "--pending", "--limit", "5", "--json"]));
    assert!(!ok(&["list", "--pending", "--dead"]));
    assert!(ok(&["stats", "--config", "x.yml"]));
    assert!(!ok(&["backup"]));
    assert!(ok(&["backup", "--to", "b.redb"]));
}

#[tokio::test]
async fn a_bad_config_is_a_usage_error() {
    let a = appliance().await;
    std::fs::write(&a.config, "data_dir: data\ncolour: blue\n").unwrap();
    let err = stats_output(&StatsArgs {
        config: ConfigArg::new(&a.config),
        json: false,
    })
    .unwrap_err();
    assert!(is_usage(&err), "{err}");
    let err = stats_output(&StatsArgs {
        config: ConfigArg::new(a.root.join("missing.yml")),
        json: false,
    })
    .unwrap_err();
    assert!(is_usage(&err), "{err}");
}

#[tokio::test]
async fn commands_work_on_a_database_left_by_a_crashed_daemon() {
    let a = appliance().await;
    // A copy taken while a writer has the file open looks exactly like a daemon killed -9:
    // committed data, but not shut down cleanly.
    let db = open_database(&a.cfg.db_path()).unwrap();
    let crashed = a.root.join("crashed.redb");
    std::fs::copy(a.cfg.db_path(), &crashed).unwrap();
    drop(db);
    std::fs::rename(&crashed, a.cfg.db_path()).unwrap();

    assert_eq!(stats_json(&a).feed.last_seq, 6);
    assert_eq!(seqs(&list_json(&a, &["--dead"]), "city", "dead"), [2]);
}

/// A backend whose backup waits until the test lets it go.
struct SlowBackup {
    inner: Admin,
    started: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl AdminBackend for SlowBackup {
    fn list(&self, req: &ListRequest) -> Result<ListResponse, AdminError> {
        self.inner.list(req)
    }
    fn replay(&self, req: &ReplayRequest, by: &str) -> Result<ReplayResponse, AdminError> {
        self.inner.replay(req, by)
    }
    fn stats(&self) -> Result<Snapshot, AdminError> {
        self.inner.stats()
    }
    fn show(&self, req: &ShowRequest) -> Result<EventReport, AdminError> {
        self.inner.show(req)
    }
    fn backup(&self, req: &BackupRequest) -> Result<BackupReport, AdminError> {
        self.started.lock().unwrap().send(()).unwrap();
        self.release.lock().unwrap().recv().unwrap();
        self.inner.backup(req)
    }
    fn act(&self, req: &ActRequest) -> Result<ActResponse, AdminError> {
        self.inner.act(req)
    }
}

#[tokio::test]
async fn a_running_backup_does_not_block_other_commands_and_runs_alone() {
    let a = appliance().await;
    let db = ess::feed::Store::from(open_database(&a.cfg.db_path()).unwrap());
    let (started_tx, started) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let backend = Arc::new(SlowBackup {
        inner: daemon_admin(&a, db.clone(), |_| {}),
        started: std::sync::Mutex::new(started_tx),
        release: std::sync::Mutex::new(release_rx),
    });
    let server = serve(&a.cfg.admin_socket, backend).unwrap();
    let to = a.root.join("b1.redb");
    let args = BackupArgs {
        config: ConfigArg::new(&a.config),
        to: to.clone(),
        json: false,
    };
    let first = std::thread::spawn(move || backup_output(&args));
    started.recv().unwrap();

    // While it runs: stats answers, and a second backup is refused as a usage error.
    assert_eq!(stats_json(&a).feed.last_seq, 6);
    let err = backup_output(&BackupArgs {
        config: ConfigArg::new(&a.config),
        to: a.root.join("b2.redb"),
        json: false,
    })
    .unwrap_err();
    assert!(
        is_usage(&err) && err.to_string().contains("already running"),
        "{err}"
    );

    release.send(()).unwrap();
    let out = first.join().unwrap().unwrap();
    assert!(out.contains("events 6"), "{out}");
    assert!(to.exists());
    server.stop();
}

#[tokio::test]
async fn a_failed_or_colliding_backup_leaves_nothing_that_looks_like_one() {
    let a = appliance().await;
    let backup = |to: PathBuf| {
        backup_output(&BackupArgs {
            config: ConfigArg::new(&a.config),
            to,
            json: false,
        })
    };
    // Into a folder that does not exist: a runtime error, nothing written.
    let err = backup(a.root.join("nowhere/b.redb")).unwrap_err();
    assert!(!is_usage(&err), "{err}");
    assert!(!a.root.join("nowhere").exists());
    // A leftover partial file of a cut-short backup is reported, not overwritten.
    std::fs::write(a.root.join(".b.redb.partial"), "half").unwrap();
    let err = backup(a.root.join("b.redb")).unwrap_err();
    assert!(
        is_usage(&err) && err.to_string().contains("cut short"),
        "{err}"
    );
    assert!(!a.root.join("b.redb").exists());
    std::fs::remove_file(a.root.join(".b.redb.partial")).unwrap();
    // Then it works, and leaves no partial file behind.
    backup(a.root.join("b.redb")).unwrap();
    assert!(a.root.join("b.redb").exists());
    assert!(!a.root.join(".b.redb.partial").exists());
}
