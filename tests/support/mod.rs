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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", &self.log_filter)
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

    /// SIGKILL, as a power cut would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
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
        let c = self.child.as_ref().expect("running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, sig) };
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
    use rustls_pki_types::pem::PemObject;
    ess::cli::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(app.tls("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(app.tls("client.crt"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(app.tls("client.key")).unwrap();
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
