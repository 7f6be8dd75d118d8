//! Load generator for the whole appliance, side by side with a peer: starts the real
//! `ess serve` (release build) on loopback with fresh certificates, and then Fluent Bit
//! (`/work/shared/peers/fluent-bit`, or `$ESS_PEER_FLUENT_BIT`; mTLS `http` input with a
//! filesystem buffer, `file` output, the configuration of `../shared/peers/README.md`) with
//! the same certificates. The same mutual-TLS client opens N keep-alive connections to each
//! in turn and sends batches of B permit events with unique idempotency keys for a fixed
//! time. Prints events/s, request latency percentiles, the server's CPU per event (utime +
//! stime of its process, from `/proc`), the load generator's own CPU per event (it runs on
//! the same cores), what the rest of the machine used meanwhile, and the ratio ESS / Fluent
//! Bit of each round.
//!
//! Every ESS 202 comes after the group commit's fsync; Fluent Bit answers before its chunk
//! is synced (see the peers README).
//!
//!     cargo bench --bench load -- --connections 64 --batch 1 --seconds 10 --with-connector
//!     cargo bench --bench load -- --connections 16 --batch 100 --seconds 10 --with-connector
//!
//! `--with-connector` runs the seed's permit connector (file append) at the same time;
//! `--encrypt` seals payloads at rest (`feed.encryption_key_file`); `--no-peer` skips
//! Fluent Bit; `--rounds R` repeats the whole comparison R times; `--baseline PATH` runs
//! another `ess` binary (an older build) in every round as well, between this one and the
//! peer, so old and new are measured in the same minutes on a shared machine.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod support;

/// A server under load: its process and where it listens.
struct Server {
    name: String,
    child: Child,
    url: String,
    /// Its folder (configuration, data, output), removed after it stopped.
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

struct Options {
    connections: usize,
    batch: usize,
    seconds: u64,
    with_connector: bool,
    encrypt: bool,
}

/// Starts `ess serve` from binary `ess` in a fresh appliance folder; its certificates are
/// in `tls` afterwards (copied there the first time, reused after).
fn start_ess(ess: &str, label: &str, tls: &Path, o: &Options) -> Server {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("app");
    support::init_with(ess, &dir);
    let made = dir.join("tls");
    if tls.join("ca.crt").exists() {
        for f in [
            "ca.crt",
            "server.crt",
            "server.key",
            "client.crt",
            "client.key",
        ] {
            std::fs::copy(tls.join(f), made.join(f)).expect("certificates");
        }
    } else {
        std::fs::create_dir_all(tls).expect("tls folder");
        for f in [
            "ca.crt",
            "server.crt",
            "server.key",
            "client.crt",
            "client.key",
        ] {
            std::fs::copy(made.join(f), tls.join(f)).expect("certificates");
        }
    }
    if !o.with_connector {
        std::fs::remove_file(dir.join("maps/permit_map.yml")).expect("remove map");
    }
    if o.encrypt {
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
    let (child, url) = support::serve_with(ess, &dir, "warn", None);
    Server {
        name: format!(
            "{label}{}{}",
            if o.with_connector {
                " (permit connector on)"
            } else {
                " (no map)"
            },
            if o.encrypt { " (encrypted)" } else { "" }
        ),
        child,
        url,
        _dir: tmp,
    }
}

fn start_fluent_bit(bin: &Path, tls: &Path) -> Server {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (child, url) = support::start_fluent_bit(bin, tls, tmp.path());
    Server {
        name: "fluent-bit 5.1 (replies before fsync)".into(),
        child,
        url,
        _dir: tmp,
    }
}

/// One server's figures in one round.
#[derive(Clone, Copy)]
struct Figures {
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_event: f64,
    client_us_per_event: f64,
    /// Cores the rest of the machine (other processes) kept busy meanwhile.
    others_cores: f64,
    /// Cores left idle.
    idle_cores: f64,
}

fn drive(rt: &tokio::runtime::Runtime, server: &Server, tls: &Path, o: &Options) -> Figures {
    let (connections, batch) = (o.connections, o.batch);
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let pid = server.child.id().to_string();
    let prefix: String = server
        .name
        .split_whitespace()
        .next()
        .unwrap_or("s")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    // Every connection handshakes before the clock starts.
    let clients: Vec<ess::client::Client> = rt.block_on(async {
        let mut out = Vec::new();
        for _ in 0..connections {
            let mut c = ess::client::Client::new(
                &server.url,
                &tls.join("ca.crt"),
                Some((&tls.join("client.crt"), &tls.join("client.key"))),
            )
            .expect("client");
            let _ = c.receipt("warm-up").await;
            out.push(c);
        }
        out
    });
    let cpu_before = support::cpu_seconds(&pid);
    let client_before = support::cpu_seconds("self");
    let (busy_before, idle_before) = support::machine_cpu_seconds();
    let started = Instant::now();
    let latencies = rt.block_on(async {
        let mut tasks = Vec::new();
        for (conn, mut client) in clients.into_iter().enumerate() {
            let (stop, events) = (stop.clone(), events.clone());
            let prefix = prefix.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut n = 0u64;
                let mut body = String::new();
                while !stop.load(Ordering::Relaxed) {
                    body.clear();
                    body.push('[');
                    for i in 0..batch {
                        n += 1;
                        if i > 0 {
                            body.push(',');
                        }
                        body.push_str(&format!(r#"{{"type":"PERMIT_STATUS","idempotency_key":"{prefix}-c{conn}-{n}","payload":{{"id":"BP-{n}","status":"APPROVED","updated_at":"2025-04-12T10:03:00Z"}}}}"#));
                    }
                    body.push(']');
                    let t = Instant::now();
                    let a = client.post_events(body.clone(), false).await.expect("answer");
                    assert!(a.status.is_success(), "{} {:?}", a.status, a.body);
                    lat.push(t.elapsed());
                    events.fetch_add(batch as u64, Ordering::Relaxed);
                }
                lat
            }));
        }
        tokio::time::sleep(Duration::from_secs(o.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = support::cpu_seconds(&pid) - cpu_before;
    let client = support::cpu_seconds("self") - client_before;
    let (busy_after, idle_after) = support::machine_cpu_seconds();
    let busy = busy_after - busy_before;
    let idle = idle_after - idle_before;
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
        client_us_per_event: client * 1e6 / n.max(1) as f64,
        others_cores: ((busy - cpu - client) / elapsed).max(0.0),
        idle_cores: idle / elapsed,
    };
    println!(
        "{:<44} {connections} x {batch}: {n} events in {elapsed:.1}s = {:.0} events/s, latency p50 {:.2} ms, p99 {:.2} ms, server CPU {:.1} µs/event, load generator {:.1} µs/event, other processes {:.2} cores, idle {:.2} cores",
        server.name,
        f.events_per_sec,
        f.p50_ms,
        f.p99_ms,
        f.cpu_us_per_event,
        f.client_us_per_event,
        f.others_cores,
        f.idle_cores,
    );
    f
}

/// `min–max (median)` of one figure over the rounds.
fn spread(values: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.as_slice() {
        [] => "-".into(),
        [one] => fmt(*one),
        _ => format!(
            "{}–{} (median {})",
            fmt(v[0]),
            fmt(v[v.len() - 1]),
            fmt(v[v.len() / 2])
        ),
    }
}

fn main() {
    let Some(args) = support::args() else {
        return;
    };
    let o = Options {
        connections: support::arg(&args, "--connections", 16),
        batch: support::arg(&args, "--batch", 100),
        seconds: support::arg(&args, "--seconds", 10),
        with_connector: args.iter().any(|a| a == "--with-connector"),
        encrypt: args.iter().any(|a| a == "--encrypt"),
    };
    let rounds: usize = support::arg(&args, "--rounds", 1);
    let baseline: Option<String> = args
        .iter()
        .position(|a| a == "--baseline")
        .and_then(|i| args.get(i + 1))
        .cloned();
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
    let tls = tmp.path().join("tls");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let this = support::bin();

    let (mut new, mut old, mut fb) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let flush = support::fdatasync_median(tmp.path());
        println!(
            "round {round}/{rounds}: disk: fdatasync of 4 KiB takes {:.2} ms (median): acknowledging after fsync, one commit at a time, caps {} x {} at {:.0} events/s",
            flush.as_secs_f64() * 1e3,
            o.connections,
            o.batch,
            (o.connections * o.batch) as f64 / flush.as_secs_f64()
        );
        let ess = start_ess(&this, "ess", &tls, &o);
        new.push(drive(&rt, &ess, &tls, &o));
        drop(ess);
        if let Some(b) = &baseline {
            let ess = start_ess(b, "ess-baseline", &tls, &o);
            old.push(drive(&rt, &ess, &tls, &o));
            drop(ess);
        }
        if let Some(peer) = &peer {
            let server = start_fluent_bit(peer, &tls);
            fb.push(drive(&rt, &server, &tls, &o));
            drop(server);
        }
        let last = |v: &Vec<Figures>| v.last().map(|f| f.events_per_sec);
        if let (Some(e), Some(p)) = (last(&new), last(&fb)) {
            println!("round {round}: ess / fluent-bit {:.2} x events/s", e / p);
        }
        if let (Some(e), Some(b)) = (last(&new), last(&old)) {
            println!("round {round}: ess / baseline {:.2} x events/s", e / b);
        }
    }

    let (c, b) = (o.connections, o.batch);
    println!("\nsummary at {c} x {b}, {rounds} round(s):");
    for (name, figs) in [("ess", &new), ("baseline", &old), ("fluent-bit", &fb)] {
        if figs.is_empty() {
            continue;
        }
        let col = |g: fn(&Figures) -> f64| figs.iter().map(g).collect::<Vec<f64>>();
        println!(
            "  {name:<10} {} events/s; server {} µs CPU/event; load generator {} µs/event; p99 {} ms",
            spread(&col(|f| f.events_per_sec), |v| format!("{v:.0}")),
            spread(&col(|f| f.cpu_us_per_event), |v| format!("{v:.1}")),
            spread(&col(|f| f.client_us_per_event), |v| format!("{v:.1}")),
            spread(&col(|f| f.p99_ms), |v| format!("{v:.1}")),
        );
    }
    let ratios = |a: &[Figures], b: &[Figures]| -> Vec<f64> {
        a.iter()
            .zip(b)
            .map(|(x, y)| x.events_per_sec / y.events_per_sec)
            .collect()
    };
    if !fb.is_empty() {
        println!(
            "  ratio ess / fluent-bit, per round: {}",
            spread(&ratios(&new, &fb), |v| format!("{v:.2}"))
        );
    }
    if !old.is_empty() {
        println!(
            "  ratio ess / baseline, per round: {}",
            spread(&ratios(&new, &old), |v| format!("{v:.2}"))
        );
    }
}
