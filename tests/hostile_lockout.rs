//! Issue 15, point 2: nobody without a certificate can lock out somebody with one.
//!
//! The real `ess serve` on 127.0.0.1 with real certificates; an attacker holds 3,000 idle
//! TCP connections (that never send a byte) and 300 slow TLS handshakes (a real
//! ClientHello trickled a byte at a time, or sent whole and then never followed up), from
//! other loopback addresses (127.0.0.2 …), and opens a new one each time the server drops
//! one. Throughout, the real client — from 127.0.0.1, with the dev certificate — gets 202
//! for every request, on fresh connections (a new handshake each time) and on a kept-alive
//! one.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IDLE: usize = 3000;
const SLOW: usize = 300;
/// Idle sockets per attacking address (over the server's per-address limit of 64).
const IDLE_PER_ADDRESS: usize = 100;
const SLOW_PER_ADDRESS: usize = 30;
/// How soon a dropped attacker socket comes back, on average.
const RECONNECT_AFTER: Duration = Duration::from_millis(250);
/// Requests the real client makes during the attack, each on a fresh connection.
const ROUNDS: usize = 30;

/// Raises this process's open-files limit for the 3,300 sockets: the soft limit to the
/// hard one, and the hard one too if it is low (root may; CI runs as root).
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_max = lim.rlim_max.max(16_384);
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
            lim.rlim_cur = lim.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    lim.rlim_cur
}

struct Attack {
    stop: tokio::sync::watch::Sender<bool>,
    /// Connections the attacker has open now (from its side).
    open: AtomicUsize,
    /// Connections it has opened in all.
    opened: AtomicUsize,
    /// Times the server closed one of them.
    dropped: AtomicUsize,
}

fn attacker_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, (n / 250) as u8, (2 + n % 250) as u8))
}

async fn connect_from(ip: IpAddr, server: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(ip, 0))?;
    sock.connect(server).await
}

/// One attacking socket: connect, do `behave` until the server closes, connect again.
async fn attacker<F, Fut>(attack: Arc<Attack>, ip: IpAddr, server: SocketAddr, behave: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut stop = attack.stop.subscribe();
    while !*stop.borrow() {
        let Ok(tcp) = connect_from(ip, server).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        attack.opened.fetch_add(1, Ordering::SeqCst);
        attack.open.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            () = behave(tcp) => {}
            _ = stop.changed() => {}
        }
        attack.open.fetch_sub(1, Ordering::SeqCst);
        attack.dropped.fetch_add(1, Ordering::SeqCst);
        // Back soon: the flood keeps the waiting room full all along (while 3,300 sockets
        // take turns at its 512 places), without burning the test machine's two cores.
        // Jittered, so the sockets come back spread out rather than in waves.
        let jitter = rand::random_range(0..RECONNECT_AFTER.as_millis() as u64 * 2);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
}

/// Never sends a byte; returns when the server closed the socket.
async fn idle(mut tcp: tokio::net::TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// A real ClientHello (with our CA trusted), trickled or sent whole, then silence.
async fn slow_handshake(mut tcp: tokio::net::TcpStream, hello: Arc<Vec<u8>>, trickle: bool) {
    let (mut rd, mut wr) = tcp.split();
    let write = async {
        if trickle {
            for b in hello.iter() {
                if wr.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        } else if wr.write_all(&hello).await.is_err() {
            return;
        }
        std::future::pending::<()>().await;
    };
    let read = async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    };
    tokio::select! {
        () = write => {}
        () = read => {}
    }
}

fn client_hello(app: &Appliance) -> Vec<u8> {
    let mut tls = raw_tls_unconnected(app);
    let mut out = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut out).unwrap();
    }
    out
}

/// A rustls client connection (dev certificate) that has not touched a socket.
fn raw_tls_unconnected(app: &Appliance) -> rustls::ClientConnection {
    use rustls_pki_types::pem::PemObject;
    ess::cli::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(app.tls("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    rustls::ClientConnection::new(Arc::new(cfg), "127.0.0.1".try_into().unwrap()).unwrap()
}

fn metric(app: &Appliance, series: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(app.status.unwrap()).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn idle_sockets_and_slow_handshakes_never_lock_out_the_real_client() {
    let limit = raise_nofile();
    assert!(
        limit as usize > IDLE + SLOW + 500,
        "RLIMIT_NOFILE hard limit {limit} is too low for this test"
    );
    let mut app = Appliance::init();
    app.start();
    let server = app.ingest.unwrap();
    let hello = Arc::new(client_hello(&app));
    let attack = Arc::new(Attack {
        stop: tokio::sync::watch::channel(false).0,
        open: AtomicUsize::new(0),
        opened: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
    });

    let attack_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    for i in 0..IDLE {
        let ip = attacker_ip(i / IDLE_PER_ADDRESS);
        attack_rt.spawn(attacker(attack.clone(), ip, server, idle));
    }
    let first_slow_address = IDLE.div_ceil(IDLE_PER_ADDRESS);
    for i in 0..SLOW {
        let ip = attacker_ip(first_slow_address + i / SLOW_PER_ADDRESS);
        let hello = hello.clone();
        attack_rt.spawn(attacker(attack.clone(), ip, server, move |tcp| {
            slow_handshake(tcp, hello.clone(), i % 2 == 0)
        }));
    }
    wait_until(
        "every attacker socket to have connected",
        Duration::from_secs(120),
        || attack.opened.load(Ordering::SeqCst) >= IDLE + SLOW,
    );

    let rt = rt();
    let mut kept_alive = app.client();
    let mut lowest_open = usize::MAX;
    let dropped_before = attack.dropped.load(Ordering::SeqCst);
    for round in 0..ROUNDS {
        lowest_open = lowest_open.min(attack.open.load(Ordering::SeqCst));
        let id = format!("REAL-{round}");
        let fresh = rt
            .block_on(
                app.client()
                    .post_events(permit_event(&id).to_string(), false),
            )
            .unwrap_or_else(|e| panic!("round {round}: the real client got no answer: {e}"));
        assert_eq!(fresh.status, 202, "round {round}: {:?}", fresh.body);
        let again = rt
            .block_on(
                kept_alive.post_events(permit_event(&format!("KEPT-{round}")).to_string(), false),
            )
            .unwrap_or_else(|e| panic!("round {round}: the kept-alive client got no answer: {e}"));
        assert_eq!(again.status, 202, "round {round}: {:?}", again.body);
        // Pacing, so the rounds spread over the attack (and over slow-handshake time-outs).
        std::thread::sleep(Duration::from_millis(200));
    }
    let (opened, dropped) = (
        attack.opened.load(Ordering::SeqCst),
        attack.dropped.load(Ordering::SeqCst),
    );
    attack.stop.send_replace(true);
    attack_rt.shutdown_timeout(Duration::from_secs(10));
    eprintln!(
        "attack: {opened} connections opened, {dropped} dropped by the server, at least {lowest_open} open at each round"
    );
    // The pressure was on all along: at every round the attacker held the waiting room
    // (512 places) about full, and the server kept dropping its sockets meanwhile. (Not
    // necessarily in every round: when the accept queue overflows, the kernel drops the
    // flood's SYNs and they come back a second later.)
    assert!(
        dropped > dropped_before + ROUNDS,
        "the server hardly dropped anything during the rounds"
    );
    assert!(
        lowest_open >= 500,
        "only {lowest_open} attacker sockets open at one round"
    );
    let counted = metric(
        &app,
        "ess_ingest_rejected_total{reason=\"handshake_dropped\"}",
    );
    assert!(counted > 0.0, "handshake drops are not in the metrics");
    // Every event of the real client is in the feed, once.
    let mut c = app.client();
    for round in 0..ROUNDS {
        for id in [format!("REAL-{round}"), format!("KEPT-{round}")] {
            let r = rt.block_on(c.receipt(&format!("key-{id}"))).unwrap();
            assert_eq!(r.status, 200, "{id}");
        }
    }
}
