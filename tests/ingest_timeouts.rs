//! The ingest's time-outs and connection limits, on the real server (`ingest::serve` on
//! 127.0.0.1:0 with real certificates and a real feed) with short limits, so slow clients
//! are shown to be cut off without the test waiting out the production times: a silent
//! socket and a trickled handshake (handshake time-out), trickled headers (header
//! time-out), a trickled body (408), and a third authenticated connection over
//! `max_connections` while sockets without a certificate fill the waiting room.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ess::ingest::{self, HandshakeLimits, IngestHooks, IngestState, Limits, Receipts};
use support::*;

struct NoReceipts;
impl Receipts for NoReceipts {
    fn targets(&self, _: &ess::event::Event) -> Result<BTreeMap<String, String>, ess::feed::Error> {
        Ok(BTreeMap::new())
    }
}
struct NoHooks;
impl IngestHooks for NoHooks {}

struct Server {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    stop: tokio::sync::watch::Sender<bool>,
    rt: tokio::runtime::Runtime,
    task: Option<tokio::task::JoinHandle<()>>,
    feed: ess::feed::Feed,
}

impl Server {
    fn start(limits: Limits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = ess::init::Ca::new("Test CA").unwrap();
        let server = ca.issue_server(&[]).unwrap();
        let client = ca.issue_client("codifyhq-dev").unwrap();
        ess::init::write_file(&d.join("ca.crt"), &ca.cert_pem(), 0o644).unwrap();
        write_identity(d, "server", &server);
        write_identity(d, "client", &client);
        let rt = rt();
        let db = Arc::new(ess::feed::open_database(&d.join("ess.redb")).unwrap());
        let feed = ess::feed::Feed::open(db).unwrap();
        let tls = ingest::tls::Tls::load(
            &d.join("server.crt"),
            &d.join("server.key"),
            &d.join("ca.crt"),
            None,
        )
        .unwrap();
        let state = Arc::new(IngestState {
            feed: feed.clone(),
            limits,
            health: Arc::new(ess::health::Health::new(d.to_path_buf(), 0)),
            allowed_clients: vec![],
            receipts: Arc::new(NoReceipts),
            hooks: Arc::new(NoHooks),
        });
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let task = rt.spawn(ingest::serve(listener, tls, state, stop_rx));
        Server {
            addr,
            dir,
            stop,
            rt,
            task: Some(task),
            feed,
        }
    }

    fn client(&self) -> ess::client::Client {
        let d = self.dir.path();
        ess::client::Client::new(
            &format!("https://{}", self.addr),
            &d.join("ca.crt"),
            Some((&d.join("client.crt"), &d.join("client.key"))),
        )
        .unwrap()
    }

    /// A blocking TLS connection with the client certificate, handshake done.
    fn tls(&self) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
        let d = self.dir.path();
        let cfg = client_config(
            &d.join("ca.crt"),
            Some((&d.join("client.crt"), &d.join("client.key"))),
        );
        let conn = rustls::ClientConnection::new(cfg, "127.0.0.1".try_into().unwrap()).unwrap();
        let mut s = rustls::StreamOwned::new(conn, self.tcp());
        s.conn.complete_io(&mut s.sock).unwrap();
        s
    }

    fn tcp(&self) -> std::net::TcpStream {
        let tcp = std::net::TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        tcp
    }

    fn post(&self, id: &str) -> u16 {
        self.rt
            .block_on(
                self.client()
                    .post_events(permit_event(id).to_string(), false),
            )
            .unwrap()
            .status
            .as_u16()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = self.rt.block_on(t);
        }
        self.feed.clone().close();
    }
}

fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    ess::cli::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    Arc::new(match identity {
        Some((c, k)) => b
            .with_client_auth_cert(
                rustls_pki_types::CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect(),
                rustls_pki_types::PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    })
}

/// Reads until the server closes; the bytes it sent meanwhile. Panics if it never does
/// (the read time-out of 60 s is far above every limit here).
fn until_closed(s: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("the server left a slow client connected")
            }
            Err(_) => return out,
        }
    }
}

/// Writes `bytes` one at a time, a little apart, then stops (and the caller waits); stops
/// early if the server has already cut us off.
fn trickle_then_wait(s: &mut impl Write, bytes: &[u8]) {
    for b in bytes {
        if s.write_all(&[*b]).and_then(|()| s.flush()).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn short_limits() -> Limits {
    Limits {
        handshakes: HandshakeLimits {
            max: 8,
            per_address: 8,
            timeout: Duration::from_millis(500),
            min_timeout: Duration::from_millis(200),
        },
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        max_connections: 2,
        ..Limits::new(64 << 10, 256 << 10)
    }
}

#[test]
fn slow_clients_are_cut_off_at_each_stage() {
    let server = Server::start(short_limits());

    // A socket that never starts TLS, and a ClientHello trickled a byte at a time.
    let mut silent = server.tcp();
    assert!(until_closed(&mut silent).is_empty());
    let mut trickle = server.tcp();
    let mut hello = Vec::new();
    let mut c = rustls::ClientConnection::new(
        client_config(&server.dir.path().join("ca.crt"), None),
        "127.0.0.1".try_into().unwrap(),
    )
    .unwrap();
    c.write_tls(&mut hello).unwrap();
    let feeder = {
        let mut w = trickle.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in hello {
                if w.write_all(&[b]).is_err() {
                    return; // cut off: what we want
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    until_closed(&mut trickle);
    feeder.join().unwrap();

    // Headers trickled after the handshake, then nothing more: closed (a write after the
    // server's close would make it reset the connection, so we only trickle a little).
    let mut slow_headers = server.tls();
    trickle_then_wait(
        &mut slow_headers,
        b"POST /v1/events HTTP/1.1\r\nHost: ess\r\nX-Slow: ",
    );
    let answer = String::from_utf8_lossy(&until_closed(&mut slow_headers)).into_owned();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // A body trickled after its headers, never finished: 408, nothing committed.
    let mut slow_body = server.tls();
    let body = serde_json::json!([permit_event("SLOW-BODY")]).to_string();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: ess\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow_body.write_all(head.as_bytes()).unwrap();
    trickle_then_wait(&mut slow_body, &body.as_bytes()[..5]);
    let answer = String::from_utf8_lossy(&until_closed(&mut slow_body)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let receipt = server
        .rt
        .block_on(server.client().receipt("key-SLOW-BODY"))
        .unwrap();
    assert_eq!(receipt.status, 404);

    // And the server serves.
    assert_eq!(server.post("AFTER"), 202);
}

#[test]
fn authenticated_connections_have_their_own_cap_and_the_waiting_room_does_not_count() {
    let mut limits = short_limits();
    limits.handshakes.timeout = Duration::from_secs(30);
    limits.handshakes.min_timeout = Duration::from_secs(30);
    limits.header_timeout = Duration::from_secs(30);
    let server = Server::start(limits);
    // The waiting room full of silent sockets (8), and more coming.
    let silent: Vec<_> = (0..20).map(|_| server.tcp()).collect();
    // Two authenticated clients (the cap) are served, kept alive.
    let mut a = server.tls();
    let mut b = server.tls();
    let ev = |id: &str| serde_json::json!([permit_event(id)]).to_string();
    assert_eq!(post_raw(&mut a, &ev("A1")).unwrap().0, 202);
    assert_eq!(post_raw(&mut b, &ev("B1")).unwrap().0, 202);
    // A third finishes its handshake but is closed: the served connections are full.
    let mut c = server.tls();
    assert!(
        post_raw(&mut c, &ev("C1")).is_none(),
        "over max_connections"
    );
    assert_eq!(post_raw(&mut a, &ev("A2")).unwrap().0, 202);
    drop(b);
    // Once one leaves, a new one is served (the server notices the close first).
    wait_until("a place to come free", Duration::from_secs(30), || {
        let mut d = server.tls();
        post_raw(&mut d, &ev("D1")).is_some_and(|r| r.0 == 202)
    });
    drop(silent);
}
