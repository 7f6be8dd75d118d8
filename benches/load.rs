//! Load generator for the whole appliance, side by side with a peer: starts the real
//! `ess serve` (release build) on loopback with fresh certificates, and then Fluent Bit
//! (`/work/shared/peers/fluent-bit`, or `$ESS_PEER_FLUENT_BIT`; mTLS `http` input with a
//! filesystem buffer, `file` output, the configuration of `../shared/peers/README.md`) with
//! the same certificates. The same mutual-TLS client opens N keep-alive connections to each
//! in turn and sends batches of B permit events with unique idempotency keys for a fixed
//! time. Prints events/s, request latency percentiles and the server's CPU per event
//! (utime + stime of its process, from `/proc`), then the ratio ESS / Fluent Bit.
//!
//! Every ESS 202 comes after the group commit's fsync; Fluent Bit answers before its chunk
//! is synced (see the peers README).
//!
//!     cargo bench --bench load -- --connections 64 --batch 1 --seconds 10 --with-connector
//!     cargo bench --bench load -- --connections 16 --batch 100 --seconds 10 --with-connector
//!
//! `--with-connector` runs the seed's permit connector (file append) at the same time;
//! `--encrypt` seals payloads at rest (`feed.encryption_key_file`); `--no-peer` skips
//! Fluent Bit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod support;

/// A server under load: its process and where it listens.
struct Server {
    name: String,
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) the process has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn start_ess(dir: &Path, with_connector: bool, encrypt: bool) -> Server {
    support::init(dir);
    if !with_connector {
        std::fs::remove_file(dir.join("maps/permit_map.yml")).expect("remove map");
    }
    if encrypt {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.join("feed.key");
        std::fs::write(&key, rand::random::<[u8; 32]>()).expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let cfg = dir.join("ess.yml");
        let text = std::fs::read_to_string(&cfg).expect("config");
        std::fs::write(
            &cfg,
            format!("{text}feed:\n  encryption_key_file: feed.key\n"),
        )
        .expect("config");
    }
    let (child, url) = support::serve(dir, "warn", None);
    Server {
        name: format!(
            "ess{}{}",
            if with_connector {
                " (permit connector on)"
            } else {
                " (no map)"
            },
            if encrypt { " (encrypted)" } else { "" }
        ),
        child,
        url,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_fluent_bit(bin: &Path, tls: &Path, work: &Path) -> Server {
    let port = free_port();
    let (store, out) = (work.join("store"), work.join("out"));
    std::fs::create_dir_all(&store).expect("fluent-bit store");
    let conf = work.join("fluent-bit.conf");
    std::fs::write(
        &conf,
        format!(
            "[SERVICE]\n    flush 1\n    log_level error\n    storage.path {store}\n    storage.sync full\n\
             [INPUT]\n    name http\n    listen 127.0.0.1\n    port {port}\n    tls on\n    tls.verify on\n    tls.verify_client_cert on\n    tls.ca_file {ca}\n    tls.crt_file {crt}\n    tls.key_file {key}\n    storage.type filesystem\n    successful_response_code 201\n\
             [OUTPUT]\n    name file\n    match *\n    path {out}\n    file events.log\n    mkdir true\n",
            store = store.display(),
            out = out.display(),
            ca = tls.join("ca.crt").display(),
            crt = tls.join("server.crt").display(),
            key = tls.join("server.key").display(),
        ),
    )
    .expect("fluent-bit.conf");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fluent-bit");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "fluent-bit did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        name: "fluent-bit 5.1 (replies before fsync)".into(),
        child,
        url: format!("https://127.0.0.1:{port}"),
    }
}

/// One server's figures.
struct Figures {
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_event: f64,
}

fn drive(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    tls: &Path,
    connections: usize,
    batch: usize,
    seconds: u64,
) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds(server.child.id());
    let started = Instant::now();
    let prefix = server
        .name
        .split_whitespace()
        .next()
        .unwrap_or("s")
        .to_string();
    let latencies = rt.block_on(async {
        let mut tasks = Vec::new();
        for conn in 0..connections {
            let (url, tls, stop, events) = (server.url.clone(), tls.to_path_buf(), stop.clone(), events.clone());
            let prefix = prefix.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = ess::client::Client::new(&url, &tls.join("ca.crt"), Some((&tls.join("client.crt"), &tls.join("client.key")))).expect("client");
                let mut lat = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let body: Vec<String> = (0..batch)
                        .map(|_| {
                            n += 1;
                            format!(r#"{{"type":"PERMIT_STATUS","idempotency_key":"{prefix}-c{conn}-{n}","payload":{{"id":"BP-{n}","status":"APPROVED","updated_at":"2025-04-12T10:03:00Z"}}}}"#)
                        })
                        .collect();
                    let t = Instant::now();
                    let a = client.post_events(format!("[{}]", body.join(",")), false).await.expect("answer");
                    assert!(a.status.is_success(), "{} {:?}", a.status, a.body);
                    lat.push(t.elapsed());
                    events.fetch_add(batch as u64, Ordering::Relaxed);
                }
                lat
            }));
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.child.id()) - cpu_before;
    let mut lat = latencies;
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    };
    let n = events.load(Ordering::Relaxed);
    let f = Figures {
        events_per_sec: n as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        cpu_us_per_event: cpu * 1e6 / n.max(1) as f64,
    };
    println!(
        "{:<40} {connections} x {batch}: {n} events in {elapsed:.1}s = {:.0} events/s, latency p50 {:.2} ms, p99 {:.2} ms, server CPU {:.1} µs/event",
        server.name, f.events_per_sec, f.p50_ms, f.p99_ms, f.cpu_us_per_event
    );
    f
}

/// The disk's flush latency where the feed lives: median of 100 × (overwrite 4 KiB in place,
/// fdatasync), as a commit rewrites pages of a file that already has them. Any server that
/// answers after fsync, one group commit at a time, does at most
/// `connections × batch / latency` events/s.
fn fdatasync_latency(dir: &Path) -> Duration {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fsync-probe");
    let f = std::fs::File::create(&path).expect("probe file");
    f.write_all_at(&[1u8; 4096], 0).expect("write");
    f.sync_all().expect("fsync");
    let mut lat: Vec<Duration> = (0..100u8)
        .map(|i| {
            let t = Instant::now();
            f.write_all_at(&[i; 4096], 0).expect("write");
            f.sync_data().expect("fdatasync");
            t.elapsed()
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    lat.sort();
    lat[lat.len() / 2]
}

fn main() {
    let Some(args) = support::args() else {
        return;
    };
    let connections: usize = support::arg(&args, "--connections", 16);
    let batch: usize = support::arg(&args, "--batch", 100);
    let seconds: u64 = support::arg(&args, "--seconds", 10);
    let with_connector = args.iter().any(|a| a == "--with-connector");
    let encrypt = args.iter().any(|a| a == "--encrypt");
    let peer: Option<PathBuf> = if args.iter().any(|a| a == "--no-peer") {
        None
    } else {
        let p = std::env::var_os("ESS_PEER_FLUENT_BIT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/work/shared/peers/fluent-bit"));
        p.exists().then_some(p)
    };

    ess::cli::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("app");
    let tls = dir.join("tls");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let flush = fdatasync_latency(tmp.path());
    println!(
        "disk: fdatasync of 4 KiB takes {:.2} ms (median): acknowledging after fsync, one commit at a time, caps {connections} x {batch} at {:.0} events/s",
        flush.as_secs_f64() * 1e3,
        (connections * batch) as f64 / flush.as_secs_f64()
    );
    let ess = start_ess(&dir, with_connector, encrypt);
    let ess_figures = drive(&rt, &ess, &tls, connections, batch, seconds);
    drop(ess);
    let Some(peer) = peer else {
        return;
    };
    let fb = start_fluent_bit(&peer, &tls, &tmp.path().join("fluent-bit"));
    let fb_figures = drive(&rt, &fb, &tls, connections, batch, seconds);
    drop(fb);
    println!(
        "ratio ess / fluent-bit at {connections} x {batch}: {:.2} x events/s, {:.2} x CPU per event",
        ess_figures.events_per_sec / fb_figures.events_per_sec,
        ess_figures.cpu_us_per_event / fb_figures.cpu_us_per_event,
    );
}
