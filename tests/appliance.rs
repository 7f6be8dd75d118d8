//! The appliance as an operator meets it: `appliance/install.sh` and `uninstall.sh` run for
//! real (into a temporary root, so the host is never touched), and `systemd/ess.service`
//! checked by the real `systemd-analyze`.
//!
//! Invariant pinned here: installing, re-installing and upgrading never change a config,
//! map, certificate or byte of the feed; an upgrade leaves a feed the new build reads.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use sha2::{Digest, Sha256};

mod support;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn ess_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ess"))
}

/// Runs `appliance/<script>` with `args`; returns its output whatever the exit status.
fn run_script(script: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("appliance").join(script))
        .args(args)
        .env_remove("DESTDIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("bash runs")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn succeed(script: &str, args: &[&str]) -> String {
    let out = run_script(script, args, &[]);
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `install.sh --root ROOT BINARY`.
fn install(root: &Path, binary: &Path) -> String {
    succeed(
        "install.sh",
        &["--root", root.to_str().unwrap(), binary.to_str().unwrap()],
    )
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:x}", Sha256::digest(&bytes))
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// What a path under the root is: kind, permission bits (owner-independent) and content.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir(u32),
    File(u32, String),
    Link(PathBuf),
}

/// Every path below `root` (relative, with a leading `/`), for before/after comparisons.
fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = format!("/{}", path.strip_prefix(root).unwrap().display());
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(rel, Entry::Link(std::fs::read_link(&path).unwrap()));
            } else if meta.is_dir() {
                out.insert(rel, Entry::Dir(mode(&path)));
                walk(root, &path, out);
            } else {
                out.insert(rel, Entry::File(mode(&path), sha256(&path)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn fresh_install_creates_every_path_with_its_mode_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let said = install(&root, &ess_binary());
    assert!(said.contains("no user, no chown, no systemctl"), "{said}");

    let template = repo().join("appliance/ess.yml.example");
    let file = |m, src: &Path| Entry::File(m, sha256(src));
    // What the binary itself prints for `args`, as a 0644 file.
    let generated = |args: &[&str]| {
        let out = Command::new(ess_binary()).args(args).output().unwrap();
        assert!(out.status.success(), "ess {args:?}");
        assert!(!out.stdout.is_empty(), "ess {args:?} printed nothing");
        let gen_file = tmp.path().join("generated");
        std::fs::write(&gen_file, &out.stdout).unwrap();
        Entry::File(0o644, sha256(&gen_file))
    };
    let mut expected: BTreeMap<String, Entry> = [
        ("/etc", Entry::Dir(0o755)),
        ("/etc/ess", Entry::Dir(0o750)),
        ("/etc/ess/ess.yml", file(0o640, &template)),
        ("/etc/ess/ess.yml.example", file(0o640, &template)),
        ("/etc/ess/maps", Entry::Dir(0o750)),
        ("/etc/ess/tls", Entry::Dir(0o750)),
        ("/etc/systemd", Entry::Dir(0o755)),
        ("/etc/systemd/system", Entry::Dir(0o755)),
        (
            "/etc/systemd/system/ess.service",
            file(0o644, &repo().join("systemd/ess.service")),
        ),
        ("/usr", Entry::Dir(0o755)),
        ("/usr/local", Entry::Dir(0o755)),
        ("/usr/local/bin", Entry::Dir(0o755)),
        ("/usr/local/bin/ess", file(0o755, &ess_binary())),
        ("/usr/local/bin/essctl", Entry::Link(PathBuf::from("ess"))),
        ("/usr/local/share", Entry::Dir(0o755)),
        ("/usr/local/share/doc", Entry::Dir(0o755)),
        ("/usr/local/share/doc/ess", Entry::Dir(0o755)),
        (
            "/usr/local/share/doc/ess/README-operations.md",
            file(0o644, &repo().join("appliance/README-operations.md")),
        ),
        ("/usr/local/share/man", Entry::Dir(0o755)),
        ("/usr/local/share/man/man1", Entry::Dir(0o755)),
        ("/usr/local/share/man/man1/ess.1", generated(&["man"])),
        ("/usr/local/share/bash-completion", Entry::Dir(0o755)),
        (
            "/usr/local/share/bash-completion/completions",
            Entry::Dir(0o755),
        ),
        (
            "/usr/local/share/bash-completion/completions/ess",
            generated(&["completions", "bash"]),
        ),
        ("/usr/local/share/zsh", Entry::Dir(0o755)),
        ("/usr/local/share/zsh/site-functions", Entry::Dir(0o755)),
        (
            "/usr/local/share/zsh/site-functions/_ess",
            generated(&["completions", "zsh"]),
        ),
        ("/var", Entry::Dir(0o755)),
        ("/var/lib", Entry::Dir(0o755)),
        ("/var/lib/ess", Entry::Dir(0o700)),
        ("/var/spool", Entry::Dir(0o755)),
        ("/var/spool/ess", Entry::Dir(0o755)),
        ("/var/spool/ess/out", Entry::Dir(0o750)),
    ]
    .into_iter()
    .map(|(p, e)| (p.to_string(), e))
    .collect();
    let got = snapshot(&root);
    for (path, entry) in &got {
        assert_eq!(
            expected.remove(path).as_ref(),
            Some(entry),
            "unexpected or wrong: {path}"
        );
    }
    assert!(
        expected.is_empty(),
        "missing: {:?}",
        expected.keys().collect::<Vec<_>>()
    );
}

/// The installed `/etc/ess/ess.yml` with its absolute paths pointed into the temporary root.
fn installed_config_inside(root: &Path) -> String {
    let r = root.display();
    std::fs::read_to_string(root.join("etc/ess/ess.yml"))
        .unwrap()
        .replace("/etc/ess/", &format!("{r}/etc/ess/"))
        .replace("/var/lib/ess", &format!("{r}/var/lib/ess"))
        .replace("/run/ess", &format!("{r}/run/ess"))
}

#[test]
fn the_config_template_is_a_valid_config() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    install(root, &ess_binary());
    // Point the template's absolute paths into the temporary root, then validate it with the
    // real config loader (unknown keys, units, addresses, key permissions).
    let text = installed_config_inside(root);
    let key = root.join("etc/ess/tls/server.key");
    std::fs::write(&key, "not checked here").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = ess::config::Config::parse(&root.join("etc/ess/ess.yml"), &text)
        .unwrap_or_else(|e| panic!("the shipped template is not a valid ess.yml:\n{e}"));
    assert_eq!(cfg.data_dir, root.join("var/lib/ess"));
    assert_eq!(cfg.maps_dir, root.join("etc/ess/maps"));
    assert_eq!(cfg.admin_socket, root.join("run/ess/admin.sock"));
    assert_eq!(cfg.ingest.allowed_clients, ["codifyhq-prod"]);
    assert_eq!(cfg.ingest.listen.port(), 8443);
    assert_eq!(cfg.status_listen.port(), 8080);
}

#[test]
fn installing_again_changes_nothing_and_keeps_what_the_operator_did() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    install(root, &ess_binary());
    let first = snapshot(root);
    let said = install(root, &ess_binary());
    assert_eq!(snapshot(root), first, "a second install changed the tree");
    assert!(
        said.contains("kept the existing /etc/ess/ess.yml"),
        "{said}"
    );

    // The operator configures the appliance, and the feed gets data.
    let etc = root.join("etc/ess");
    std::fs::write(
        etc.join("ess.yml"),
        "# edited by the operator\ndata_dir: /var/lib/ess\n",
    )
    .unwrap();
    std::fs::write(etc.join("maps/permit_map.yml"), "target: city_hall_cobol\n").unwrap();
    std::fs::write(etc.join("tls/server.key"), "KEY").unwrap();
    std::fs::set_permissions(
        etc.join("tls/server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(root.join("var/lib/ess/ess.redb"), "feed bytes").unwrap();
    std::fs::write(
        root.join("var/spool/ess/out/permit.txt"),
        "BP-802    APPROVED\n",
    )
    .unwrap();
    // The drop folder's mode is the operator's; /var/lib/ess must stay private.
    std::fs::set_permissions(
        root.join("var/spool/ess/out"),
        std::fs::Permissions::from_mode(0o770),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("var/lib/ess"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let configured = snapshot(root);

    install(root, &ess_binary());
    let mut after = snapshot(root);
    assert_eq!(
        after.remove("/var/lib/ess"),
        Some(Entry::Dir(0o700)),
        "the data dir's mode is restored"
    );
    let mut configured_but_data_dir = configured.clone();
    configured_but_data_dir.remove("/var/lib/ess");
    assert_eq!(
        after, configured_but_data_dir,
        "an install changed what the operator made"
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("ess.yml")).unwrap(),
        "# edited by the operator\ndata_dir: /var/lib/ess\n"
    );
}

/// "The next release": the same program in a file with other bytes (data after the ELF
/// image is ignored when it runs), so install.sh sees a new binary.
fn next_release(dir: &Path) -> PathBuf {
    let next = dir.join("ess-next");
    let mut bytes = std::fs::read(ess_binary()).unwrap();
    bytes.extend_from_slice(b"\0next release\0");
    std::fs::write(&next, bytes).unwrap();
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).unwrap();
    next
}

fn new_event(id: &str) -> ess::feed::NewEvent {
    // Parsed from text so that the number keeps its exact digits, as ingest keeps them.
    let payload: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&format!(
        r#"{{"id": "{id}", "status": "APPROVED", "fee": 120.50}}"#
    ))
    .unwrap();
    ess::feed::NewEvent {
        event_type: "PERMIT_STATUS".into(),
        payload,
        key: format!("key-{id}"),
        trace_id: format!("trace-{id}"),
        ts: None,
    }
}

fn open_feed(db_path: &Path) -> ess::feed::Feed {
    let db =
        ess::feed::open_database(db_path).unwrap_or_else(|e| panic!("{}: {e}", db_path.display()));
    ess::feed::Feed::open(Arc::new(db)).unwrap()
}

#[tokio::test]
async fn an_upgrade_replaces_the_binary_and_keeps_the_feed_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    install(&root, &ess_binary());

    // The previous release wrote a feed.
    let db_path = root.join("var/lib/ess/ess.redb");
    let feed = open_feed(&db_path);
    let out = feed
        .append(vec![
            new_event("BP-801"),
            new_event("BP-802"),
            new_event("BP-803"),
        ])
        .await
        .unwrap();
    assert_eq!(out.last_seq, Some(3));
    feed.close();
    let feed_before = sha256(&db_path);

    let next = next_release(tmp.path());

    let said = install(&root, &next);
    assert!(said.contains("installed /usr/local/bin/ess"), "{said}");
    let bin_dir = root.join("usr/local/bin");
    assert_eq!(sha256(&bin_dir.join("ess")), sha256(&next));
    assert_eq!(mode(&bin_dir.join("ess")), 0o755);
    let mut names: Vec<String> = std::fs::read_dir(&bin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ess", "essctl"], "no temp file is left behind");
    assert_eq!(
        sha256(&db_path),
        feed_before,
        "the upgrade touched ess.redb"
    );

    // The upgraded install reads the feed: same events, same format version, and it goes on
    // from the last seq.
    let feed = open_feed(&db_path);
    let events = feed.read_after(0, 10).unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(events[1].payload.tree().unwrap()["id"], "BP-802");
    assert_eq!(
        events[1].payload.tree().unwrap()["fee"].to_string(),
        "120.50"
    );
    assert_eq!(events[2].trace_id, "trace-BP-803");
    {
        use redb::ReadableDatabase;
        let tx = feed.db().begin_read().unwrap();
        let meta = tx.open_table(ess::feed::schema::META).unwrap();
        let version = meta.get("format_version").unwrap().map(|v| v.value());
        assert_eq!(version, Some(ess::feed::schema::FORMAT_VERSION));
    }
    let out = feed
        .append(vec![new_event("BP-802"), new_event("BP-804")])
        .await
        .unwrap();
    assert_eq!(
        (out.accepted, out.duplicates, out.first_seq),
        (1, 1, Some(4))
    );
    feed.close();
}

#[test]
fn uninstall_keeps_config_and_data_and_purge_removes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    install(root, &ess_binary());
    std::fs::write(root.join("etc/ess/ess.yml"), "# operator's config\n").unwrap();
    std::fs::write(root.join("etc/ess/maps/permit_map.yml"), "target: t\n").unwrap();
    std::fs::write(root.join("var/lib/ess/ess.redb"), "feed").unwrap();
    std::fs::write(root.join("var/spool/ess/out/permit.txt"), "record\n").unwrap();
    let kept: Vec<(String, Entry)> = snapshot(root)
        .into_iter()
        .filter(|(p, _)| {
            p.starts_with("/etc/ess")
                || p.starts_with("/var/lib/ess")
                || p.starts_with("/var/spool/ess")
        })
        .collect();

    // DESTDIR works as well as --root.
    let out = run_script("uninstall.sh", &[], &[("DESTDIR", root)]);
    assert!(out.status.success(), "{}", text(&out));
    for gone in [
        "etc/systemd/system/ess.service",
        "usr/local/bin/ess",
        "usr/local/bin/essctl",
        "usr/local/share/doc/ess",
        "usr/local/share/man/man1/ess.1",
        "usr/local/share/bash-completion/completions/ess",
        "usr/local/share/zsh/site-functions/_ess",
    ] {
        assert!(
            std::fs::symlink_metadata(root.join(gone)).is_err(),
            "{gone} is still there"
        );
    }
    let now = snapshot(root);
    for (path, entry) in &kept {
        assert_eq!(now.get(path), Some(entry), "uninstall changed {path}");
    }
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kept /etc/ess"),
        "{}",
        text(&out)
    );

    // A reinstall carries on with the kept config.
    install(root, &ess_binary());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/ess/ess.yml")).unwrap(),
        "# operator's config\n"
    );

    let r = root.to_str().unwrap();
    succeed("uninstall.sh", &["--root", r, "--purge"]);
    for gone in [
        "etc/ess",
        "var/lib/ess",
        "var/spool/ess",
        "usr/local/bin/ess",
        "etc/systemd/system/ess.service",
    ] {
        assert!(
            std::fs::symlink_metadata(root.join(gone)).is_err(),
            "{gone} survived --purge"
        );
    }
    // Running it again is harmless.
    succeed("uninstall.sh", &["--root", r, "--purge"]);
}

#[test]
fn bad_arguments_and_a_missing_binary_are_clear_errors_that_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let r = root.to_str().unwrap();

    let out = run_script("install.sh", &["--root", r, "--frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown option --frobnicate"),
        "{}",
        text(&out)
    );

    let missing = tmp.path().join("no-such-ess");
    let out = run_script("install.sh", &["--root", r, missing.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-ess does not exist"),
        "{}",
        text(&out)
    );
    assert!(!root.exists(), "a failed install left {}", root.display());

    let out = run_script("uninstall.sh", &["--root", r, "--keep-everything"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn scripts_are_shellcheck_clean() {
    let scripts = [
        repo().join("appliance/install.sh"),
        repo().join("appliance/uninstall.sh"),
    ];
    let out = match Command::new("shellcheck").args(&scripts).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run shellcheck ({e}): install it (apt-get install -y shellcheck); CI does"
        ),
    };
    assert!(
        out.status.success(),
        "shellcheck found problems:\n{}",
        text(&out)
    );
}

fn systemd_analyze(args: &[&str]) -> Output {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run systemd-analyze ({e}): it ships with systemd (Debian/Ubuntu: package systemd)"
        ),
    }
}

/// `systemd-analyze verify` on the unit as installed. verify insists that `ExecStart`'s
/// program exists, and the test must not write `/usr/local/bin`, so the installed unit is
/// checked with its `ExecStart` pointed at the binary installed under the temporary root;
/// every other line is the shipped one.
fn verify_unit(unit_text: &str, dir: &Path) -> Output {
    let unit = dir.join("ess.service");
    std::fs::write(&unit, unit_text).unwrap();
    systemd_analyze(&["verify", unit.to_str().unwrap()])
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    install(&root, &ess_binary());
    let installed = std::fs::read_to_string(root.join("etc/systemd/system/ess.service")).unwrap();
    let exec = "ExecStart=/usr/local/bin/ess serve --config /etc/ess/ess.yml";
    assert!(installed.contains(exec), "the unit must run: {exec}");
    let staged_bin = root.join("usr/local/bin/ess");
    let unit_text = installed.replace(
        exec,
        &format!(
            "ExecStart={} serve --config /etc/ess/ess.yml",
            staged_bin.display()
        ),
    );

    let check_dir = tmp.path().join("verify");
    std::fs::create_dir(&check_dir).unwrap();
    let out = verify_unit(&unit_text, &check_dir);
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "verify is not clean:\n{}",
        text(&out)
    );

    // The check has teeth: a misspelt directive is reported.
    let out = verify_unit(
        &unit_text.replace("Restart=on-failure", "Restrat=on-failure"),
        &check_dir,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Restrat"),
        "verify missed a typo:\n{}",
        text(&out)
    );
}

#[test]
fn the_unit_is_hardened_to_an_exposure_of_at_most_2() {
    let unit = repo().join("systemd/ess.service");
    let text_of_unit = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=ess",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/ess",
        "RuntimeDirectory=ess",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "LimitNOFILE=",
    ] {
        assert!(text_of_unit.contains(line), "the unit lacks {line:?}");
    }

    // --offline=yes rates the file itself, without a running systemd (systemd >= 250).
    let out = systemd_analyze(&["security", "--offline=yes", unit.to_str().unwrap()]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let marker = "Overall exposure level for ess.service:";
    let score: f64 = stdout
        .lines()
        .find_map(|l| l.split_once(marker))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{shown}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{shown}");
}

/// `ess serve` run from the installed binary, killed if the test fails.
struct Daemon {
    child: std::process::Child,
    ingest: std::net::SocketAddr,
    log: PathBuf,
}

impl Daemon {
    /// Starts `binary serve --config config` and waits until it reports its ingest address.
    fn start(binary: &Path, config: &Path, log: &Path) -> Daemon {
        let mut cmd = Command::new(binary);
        cmd.args(["serve", "--config"]).arg(config);
        Daemon::start_with(cmd, log)
    }

    /// Starts `cmd` (an `ess serve`) and waits until it reports its ingest address.
    fn start_with(mut cmd: Command, log: &Path) -> Daemon {
        use std::io::BufRead;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(addr) = line.strip_prefix("ess listening: ingest=https://") {
                    let ingest = addr.split_whitespace().next().unwrap_or(addr);
                    let _ = tx.send(ingest.to_string());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(std::time::Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ess serve did not start:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        };
        Daemon {
            child,
            ingest: addr.parse().unwrap(),
            log: log.to_path_buf(),
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM (what `systemctl stop/restart` sends); returns once it has exited.
    fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ess did not exit after SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- ess stderr ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Configures an installed root as the runbook tells an operator to: certificates (here
/// the dev ones `ess init` makes) in /etc/ess/tls, the permit map writing to the drop
/// folder, and the installed ess.yml with its paths pointed into the root.
fn configure_like_an_operator(tmp: &Path, root: &Path) -> PathBuf {
    let init = tmp.join("init");
    let out = Command::new(ess_binary())
        .args(["init", "--dir"])
        .arg(&init)
        .args(["--ingest", "127.0.0.1:0", "--status", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ess init: {}", text(&out));
    let tls = root.join("etc/ess/tls");
    std::fs::copy(init.join("tls/server.crt"), tls.join("server.crt")).unwrap();
    std::fs::copy(init.join("tls/server.key"), tls.join("server.key")).unwrap();
    std::fs::set_permissions(
        tls.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // `ess init` signs the server and the client certificate with one CA.
    std::fs::copy(init.join("tls/ca.crt"), tls.join("clients-ca.crt")).unwrap();
    for name in ["client.crt", "client.key", "ca.crt"] {
        std::fs::copy(init.join("tls").join(name), tmp.join(name)).unwrap();
    }

    let map = std::fs::read_to_string(init.join("maps/permit_map.yml")).unwrap();
    let out_dir = root.join("var/spool/ess/out");
    let map = map.replace("dir: ../out", &format!("dir: {}", out_dir.display()));
    std::fs::write(root.join("etc/ess/maps/permit_map.yml"), map).unwrap();

    let config = root.join("etc/ess/ess.yml");
    let text = installed_config_inside(root)
        .replace("0.0.0.0:8443", "127.0.0.1:0")
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("[codifyhq-prod]", "[codifyhq-dev]")
        .replace("min_free_disk: 512MiB", "min_free_disk: 1MiB")
        .replace("America/New_York", "UTC");
    std::fs::write(&config, text).unwrap();
    std::fs::create_dir_all(root.join("run/ess")).unwrap();
    config
}

fn post(
    rt: &tokio::runtime::Runtime,
    daemon: &Daemon,
    tmp: &Path,
    ids: &[&str],
) -> serde_json::Value {
    let mut client = ess::client::Client::new(
        &format!("https://{}", daemon.ingest),
        &tmp.join("ca.crt"),
        Some((&tmp.join("client.crt"), &tmp.join("client.key"))),
    )
    .unwrap();
    let batch = serde_json::Value::Array(ids.iter().map(|id| support::permit_event(id)).collect());
    let answer = rt
        .block_on(client.post_events(batch.to_string(), false))
        .unwrap();
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    answer.json()
}

#[test]
fn the_upgraded_binary_serves_the_feed_the_installed_one_wrote_and_delivers_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    install(&root, &ess_binary());
    let config = configure_like_an_operator(tmp.path(), &root);
    let installed = root.join("usr/local/bin/ess");
    let log = tmp.path().join("ess.log");
    let out_file = root.join("var/spool/ess/out/permit.txt");
    let lines = |ids: &[&str]| {
        ids.iter()
            .map(|id| support::permit_line(id))
            .collect::<String>()
    };

    // `essctl` is the same program.
    let out = Command::new(root.join("usr/local/bin/essctl"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "essctl check on the configured install:\n{}",
        text(&out)
    );

    let rt = support::rt();
    let daemon = Daemon::start(&installed, &config, &log);
    let answer = post(&rt, &daemon, tmp.path(), &["BP-1", "BP-2", "BP-3"]);
    assert_eq!(answer["first_seq"], 1);
    support::wait_until("three records", std::time::Duration::from_secs(30), || {
        std::fs::read_to_string(&out_file).unwrap_or_default() == lines(&["BP-1", "BP-2", "BP-3"])
    });
    assert_eq!(daemon.terminate().code(), Some(0), "SIGTERM exits 0");

    // The upgrade, as `systemctl restart` would do it around the binary swap.
    let next = next_release(tmp.path());
    install(&root, &next);
    assert_eq!(sha256(&installed), sha256(&next));

    let daemon = Daemon::start(&installed, &config, &log);
    // A resent event stays a duplicate across the upgrade; new events continue the seqs.
    let answer = post(&rt, &daemon, tmp.path(), &["BP-2", "BP-4", "BP-5"]);
    assert_eq!(
        (answer["accepted"].as_u64(), answer["duplicates"].as_u64()),
        (Some(2), Some(1)),
        "{answer}"
    );
    assert_eq!(answer["first_seq"], 4);
    support::wait_until("five records", std::time::Duration::from_secs(30), || {
        std::fs::read_to_string(&out_file).unwrap_or_default()
            == lines(&["BP-1", "BP-2", "BP-3", "BP-4", "BP-5"])
    });
    assert_eq!(daemon.terminate().code(), Some(0), "SIGTERM exits 0");
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        lines(&["BP-1", "BP-2", "BP-3", "BP-4", "BP-5"]),
        "nothing delivered twice, nothing lost"
    );
}

#[test]
fn a_private_key_readable_by_the_group_is_refused_at_start_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    install(&root, &ess_binary());
    let config = configure_like_an_operator(tmp.path(), &root);
    let key = root.join("etc/ess/tls/server.key");
    // The usual slip: the key copied with the folder's group-readable mode.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();

    let out = Command::new(root.join("usr/local/bin/ess"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("readable by group or others")
            && said.contains(&format!("chmod 600 {}", key.display())),
        "{}",
        text(&out)
    );
    assert!(
        !root.join("var/lib/ess/ess.redb").exists(),
        "nothing started"
    );
}

#[test]
fn serve_tells_systemd_it_is_ready_reloading_alive_and_stopping() {
    use std::os::linux::net::SocketAddrExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    install(&root, &ess_binary());
    let config = configure_like_an_operator(tmp.path(), &root);
    // systemd's notify socket, in the abstract namespace as systemd makes it.
    let name = format!("ess-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let notify = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    // The next notice that is not a watchdog ping; counts the pings seen meanwhile.
    let pings = std::cell::Cell::new(0);
    let receive = || loop {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a notice from ess");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg == "WATCHDOG=1" {
            pings.set(pings.get() + 1);
            continue;
        }
        return msg;
    };

    let log = tmp.path().join("ess.log");
    let mut cmd = Command::new(root.join("usr/local/bin/ess"));
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", format!("@{name}"))
        // WatchdogSec=0.2s as systemd passes it; WATCHDOG_PID unset means "this process".
        .env("WATCHDOG_USEC", "200000");
    let daemon = Daemon::start_with(cmd, &log);
    assert_eq!(receive(), "READY=1");
    assert_eq!(receive(), "STATUS=serving 1 connector(s): city_hall_cobol");
    // Ready means it takes events now, and SIGTERM right after readiness is still graceful.
    let rt = support::rt();
    post(&rt, &daemon, tmp.path(), &["BP-1"]);

    // SIGHUP with a broken map: RELOADING=1 (with MONOTONIC_USEC), then READY=1 again, and
    // the status line says the reload was refused.
    let broken = root.join("etc/ess/maps/broken.yml");
    std::fs::write(&broken, "target: broken\n").unwrap();
    daemon.signal(libc::SIGHUP);
    let reloading = receive();
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading}");
    let usec = lines.next().and_then(|l| l.strip_prefix("MONOTONIC_USEC="));
    assert!(
        usec.is_some_and(|u| u.parse::<u64>().is_ok()),
        "{reloading}"
    );
    assert_eq!(receive(), "READY=1");
    let status = receive();
    assert!(
        status.starts_with("STATUS=serving 1 connector(s): city_hall_cobol; last reload REFUSED (")
            && status.contains("broken.yml"),
        "{status}"
    );
    std::fs::remove_file(&broken).unwrap();
    // The watchdog pings come every 0.1 s; wait for a few more (bounded by the read timeout).
    let seen = pings.get();
    while pings.get() < seen + 3 {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("watchdog pings");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        pings.set(pings.get() + 1);
    }
    assert_eq!(daemon.terminate().code(), Some(0));
    assert_eq!(receive(), "STOPPING=1");
    assert!(receive().starts_with("STATUS=stopping"));

    // SIGTERM the moment it is ready (systemctl stop right after start) is still graceful.
    let mut cmd = Command::new(root.join("usr/local/bin/ess"));
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", format!("@{name}"));
    let daemon = Daemon::start_with(cmd, &log);
    assert_eq!(receive(), "READY=1");
    assert_eq!(
        daemon.terminate().code(),
        Some(0),
        "SIGTERM right after READY=1"
    );
    assert!(receive().starts_with("STATUS=serving"));
    assert_eq!(receive(), "STOPPING=1");
}

/// A stand-in for `systemctl` (install.sh's `ESS_SYSTEMCTL`): logs its arguments, and says
/// the service is active while the file `active` exists next to it.
fn fake_systemctl(dir: &Path) -> (PathBuf, PathBuf) {
    let script = dir.join("systemctl");
    let log = dir.join("systemctl.log");
    let active = dir.join("active");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$1\" in is-active) [ -e '{}' ] ;; *) exit 0 ;; esac\n",
            log.display(),
            active.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, active)
}

#[test]
fn an_upgrade_of_a_running_service_checks_the_config_with_the_new_binary_then_swaps_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let r = root.to_str().unwrap();
    install(&root, &ess_binary());
    let (systemctl, active) = fake_systemctl(tmp.path());
    std::fs::write(&active, "").unwrap();
    let calls = || std::fs::read_to_string(tmp.path().join("systemctl.log")).unwrap_or_default();
    let installed = root.join("usr/local/bin/ess");
    let next = next_release(tmp.path());
    let upgrade = |binary: &Path| {
        run_script(
            "install.sh",
            &["--root", r, binary.to_str().unwrap()],
            &[("ESS_SYSTEMCTL", &systemctl)],
        )
    };

    // The config as installed names a key that is not there: the new binary rejects it, so
    // the running service keeps its binary and is not restarted.
    let out = upgrade(&next);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the new binary rejects"),
        "{}",
        text(&out)
    );
    assert_eq!(
        sha256(&installed),
        sha256(&ess_binary()),
        "the old binary stays"
    );
    assert!(!calls().contains("restart"), "{}", calls());

    // Configured properly: checked, swapped, restarted; the unit did not change, so no
    // daemon-reload.
    configure_like_an_operator(tmp.path(), &root);
    let out = upgrade(&next);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sha256(&installed), sha256(&next));
    assert!(calls().contains("restart ess.service"), "{}", calls());
    assert!(!calls().contains("daemon-reload"), "{}", calls());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("upgrade done; ess.service is running"),
        "{}",
        text(&out)
    );

    // Same binary again: nothing to do, no second restart.
    let out = upgrade(&next);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing changed"),
        "{}",
        text(&out)
    );
    assert_eq!(calls().matches("restart").count(), 1, "{}", calls());

    // A stopped service is not started by an upgrade.
    std::fs::remove_file(&active).unwrap();
    let out = upgrade(&ess_binary());
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sha256(&installed), sha256(&ess_binary()));
    assert_eq!(calls().matches("restart").count(), 1, "{}", calls());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is not running"),
        "{}",
        text(&out)
    );
}
