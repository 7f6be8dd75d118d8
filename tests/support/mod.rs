//! Shared test harness: a real appliance (`ess init` + `ess serve`, the real binary) in a
//! temp folder on loopback ports, with helpers to talk to it, kill it and read its output.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ess::client::Client;

pub const BIN: &str = env!("CARGO_BIN_EXE_ess");

/// The exact line the seed event becomes (SPEC §4).
pub const SEED_LINE: &str = "BP-802    APPROVED  20250412100300\n";

/// Polls `cond` until it holds or `limit` passes; panics with `what` on time-out.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A permit event with its own id and idempotency key.
pub fn permit_event(id: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "PERMIT_STATUS",
        "idempotency_key": format!("key-{id}"),
        "payload": {"id": id, "status": "APPROVED", "updated_at": "2025-04-12T10:03:00Z"}
    })
}

/// The record `permit_event(id)` becomes.
pub fn permit_line(id: &str) -> String {
    format!("{id:<10}APPROVED  20250412100300\n")
}

pub struct Appliance {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
    pub ingest: Option<SocketAddr>,
    pub status: Option<SocketAddr>,
    pub stderr_log: PathBuf,
    /// RUST_LOG for the daemon (default: `ESS_TEST_LOG`, else info).
    pub log_filter: String,
}

impl Appliance {
    /// `ess init` into a temp folder with loopback port 0 listeners; not started.
    pub fn init() -> Appliance {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("app");
        let st = Command::new(BIN)
            .args(["init", "--dir"])
            .arg(&dir)
            .args(["--ingest", "127.0.0.1:0", "--status", "127.0.0.1:0"])
            .status()
            .unwrap();
        assert!(st.success(), "ess init failed");
        let config = dir.join("ess.yml");
        let stderr_log = tmp.path().join("stderr.log");
        Appliance {
            tmp,
            dir,
            config,
            child: None,
            ingest: None,
            status: None,
            stderr_log,
            log_filter: std::env::var("ESS_TEST_LOG").unwrap_or_else(|_| "info".into()),
        }
    }

    /// Rewrites a line of ess.yml (simple text replacement).
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "config has no {from:?}");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
    }

    /// Starts `ess serve` and waits until it reports its listening address.
    pub fn start(&mut self) -> &mut Self {
        self.start_wrapped(&[], &[])
    }

    /// Starts `ess serve` under `wrapper` (e.g. `strace ... --`, empty for none) with the
    /// extra environment `env` (e.g. libfaketime's), and waits until it listens.
    pub fn start_wrapped(&mut self, wrapper: &[String], env: &[(&str, String)]) -> &mut Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", &self.log_filter)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("ess listening: ingest=https://") {
                    let (ingest, status) = rest.split_once(" status=http://").unwrap_or((rest, ""));
                    let _ = tx.send((ingest.trim().to_string(), status.trim().to_string()));
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "ess serve did not start: {}",
                    std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
                );
            }
        };
        self.ingest = Some(addr.0.parse().unwrap());
        self.status = addr.1.parse().ok();
        self.child = Some(child);
        self
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.ingest.expect("started"))
    }

    pub fn tls(&self, name: &str) -> PathBuf {
        self.dir.join("tls").join(name)
    }

    /// A client with the dev client certificate (CN codifyhq-dev).
    pub fn client(&self) -> Client {
        Client::new(
            &self.url(),
            &self.tls("ca.crt"),
            Some((&self.tls("client.crt"), &self.tls("client.key"))),
        )
        .unwrap()
    }

    /// SIGKILL, as a power cut would (the `ess` process itself when it runs under a
    /// wrapper such as strace, which would otherwise let it go on detached).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let below = descendants(c.id());
            for &pid in &below {
                // SAFETY: plain kill(2) on processes this test started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            let _ = c.kill();
            let _ = c.wait();
            // Gone for good (no open file left), not just signalled.
            wait_until(
                "the killed processes to exit",
                Duration::from_secs(30),
                || {
                    below.iter().all(|p| {
                        std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |st| {
                            st.rsplit_once(')')
                                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                        })
                    })
                },
            );
        }
    }

    /// The pid of the `ess` process itself (below a wrapper such as strace, if any).
    pub fn ess_pid(&self) -> u32 {
        let c = self.child.as_ref().expect("running");
        let bin = std::fs::canonicalize(BIN).unwrap();
        std::iter::once(c.id())
            .chain(descendants(c.id()))
            .find(|p| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == bin))
            .unwrap_or(c.id())
    }

    /// SIGTERM to `ess` and the exit status (of its wrapper, if any, which exits with it).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.ess_pid();
        let mut c = self.child.take().expect("running");
        // SAFETY: plain kill(2) on a process this test started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "ess did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on a process this test started.
        unsafe { libc::kill(self.ess_pid() as i32, sig) };
    }

    /// Rewrites text in the seed map `maps/permit_map.yml`.
    pub fn edit_map(&self, from: &str, to: &str) {
        let map = self.dir.join("maps/permit_map.yml");
        let text = std::fs::read_to_string(&map).unwrap();
        assert!(text.contains(from), "map has no {from:?}");
        std::fs::write(&map, text.replace(from, to)).unwrap();
    }

    /// Sends permit events with these ids in one request; panics unless it is accepted.
    pub fn send_ids(&self, ids: &[&str]) {
        let body =
            serde_json::Value::Array(ids.iter().map(|id| permit_event(id)).collect()).to_string();
        let rt = rt();
        let answer = rt.block_on(self.client().post_events(body, false)).unwrap();
        assert_eq!(answer.status, 202, "{:?}", answer.body);
    }

    /// The connector's entry in `/api/status`.
    pub fn connector_status(&self, name: &str) -> serde_json::Value {
        let body = http_get(self.status.expect("started"), "/api/status");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        status["connectors"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_default()
    }

    pub fn out_path(&self, name: &str) -> PathBuf {
        self.dir.join("out").join(name)
    }

    pub fn read_out(&self, name: &str) -> String {
        std::fs::read_to_string(self.out_path(name)).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- ess stderr ---\n{}", self.stderr());
        }
    }
}

/// Runs `ess` with `args`, returning (exit code, stdout, stderr).
pub fn ess(args: &[&str], cwd: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A tokio runtime for driving the async client from a plain #[test].
pub fn rt() -> tokio::runtime::Runtime {
    ess::cli::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Replaces the appliance's dev certificates with ones from a CA the test holds, so the
/// test can issue more client certificates. Returns the CA.
pub fn install_pki(app: &Appliance) -> ess::init::Ca {
    let ca = ess::init::Ca::new("Test CA").unwrap();
    let server = ca.issue_server(&[]).unwrap();
    let client = ca.issue_client("codifyhq-dev").unwrap();
    ess::init::write_file(&app.tls("ca.crt"), &ca.cert_pem(), 0o644).unwrap();
    ess::init::write_file(&app.tls("server.crt"), &server.cert_pem, 0o644).unwrap();
    ess::init::write_file(&app.tls("server.key"), &server.key_pem, 0o600).unwrap();
    ess::init::write_file(&app.tls("client.crt"), &client.cert_pem, 0o644).unwrap();
    ess::init::write_file(&app.tls("client.key"), &client.key_pem, 0o600).unwrap();
    ca
}

/// Writes an issued identity as NAME.crt / NAME.key in `dir`.
pub fn write_identity(dir: &Path, name: &str, id: &ess::init::Issued) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    ess::init::write_file(&c, &id.cert_pem, 0o644).unwrap();
    ess::init::write_file(&k, &id.key_pem, 0o600).unwrap();
    (c, k)
}

/// A blocking TLS stream to the appliance with the dev client certificate, for raw bytes.
pub fn raw_tls(
    app: &Appliance,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    raw_tls_as(app, &app.tls("client.crt"), &app.tls("client.key"))
}

/// A blocking TLS stream to the appliance presenting the certificate `cert` (key `key`).
pub fn raw_tls_as(
    app: &Appliance,
    cert: &Path,
    key: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    ess::cli::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(app.tls("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(cfg), "127.0.0.1".try_into().unwrap())
            .unwrap();
    let tcp = std::net::TcpStream::connect(app.ingest.unwrap()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Reads one HTTP/1.1 response: (status, status line and headers, body by Content-Length).
/// `None` if the connection ends before a whole response.
pub fn read_response(s: &mut impl std::io::Read) -> Option<(u16, String, String)> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let status = head.get(9..12)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((status, head, String::from_utf8_lossy(&body).into_owned()))
}

/// `POST /v1/events` with a JSON body on a raw (kept-alive) stream, and its response.
pub fn post_raw(
    s: &mut (impl std::io::Read + std::io::Write),
    body: &str,
) -> Option<(u16, String, String)> {
    let req = format!(
        "POST /v1/events HTTP/1.1\r\nHost: ess\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    s.flush().ok()?;
    read_response(s)
}

/// The body of `GET path` on a plain HTTP server (the status page).
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut tcp) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(tcp, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Every process below `pid` (children, grandchildren...), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = vec![pid];
    let mut idx = 0;
    while idx < found.len() {
        let parent = found[idx];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if ppid == Some(parent) && !found.contains(&p) {
                found.push(p);
            }
        }
        idx += 1;
    }
    found.split_off(1)
}

/// `strace` arguments that make every `fdatasync`/`fsync` of `paths` block for a minute
/// (after the bytes were written, before they are synced): a test then kills the process
/// at exactly "written, not committed". Ends with `--`, ready for the program.
pub fn stall_syncs_of(paths: &[&Path]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "strace".into(),
        "-f".into(),
        "-o".into(),
        "/dev/null".into(),
    ];
    for p in paths {
        args.push("-P".into());
        args.push(p.display().to_string());
    }
    for a in [
        "-e",
        "trace=fdatasync,fsync,link,linkat",
        "-e",
        "inject=fdatasync,fsync:delay_enter=60000000",
        "-e",
        "inject=link,linkat:delay_exit=60000000",
        "--",
    ] {
        args.push(a.into());
    }
    args
}

/// libfaketime's environment: the clock starts at `at` (`YYYY-MM-DD HH:MM:SS`, UTC) and
/// runs from there; monotonic time (timers) is left alone.
pub fn faketime(at: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "LD_PRELOAD",
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1".to_string(),
        ),
        ("FAKETIME", format!("@{at}")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
        ("TZ", "UTC".to_string()),
    ]
}

/// A plain HTTP/1.0 GET on the appliance's status listener: (status code, whole response).
pub fn status_get(app: &Appliance, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(app.status.expect("started")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: ess\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

/// A tmpfs mounted on a folder for the test's life (the tests run as root, as CI does);
/// lazily unmounted on drop, so a daemon still inside it cannot keep it busy.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mount tmpfs (the tests run as root, as CI does)"
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Fills the file system up to `room` bytes free with the file `filler`.
    pub fn fill(&self, room: u64) -> PathBuf {
        let filler = self.0.join("filler");
        let free = ess::feed::retention::free_disk_bytes(&self.0).unwrap();
        std::fs::write(&filler, vec![0u8; free.saturating_sub(room) as usize]).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
