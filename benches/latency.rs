//! Latency at a steady rate (issue 11, point 3): the real `ess serve` with the seed's permit
//! connector on, driven at a fixed rate (default 2,000 events/s: 16 keep-alive mTLS
//! connections, one event per request, each connection on its own schedule, open loop),
//! then Fluent Bit (`/work/shared/peers/fluent-bit`, or `$ESS_PEER_FLUENT_BIT`; the
//! configuration of `../shared/peers/README.md`) at the same rate with the same client.
//!
//!     cargo bench --bench latency
//!     cargo bench --bench latency -- --rate 2000 --connections 16 --seconds 10
//!
//! Prints, for ESS: the ack latency (request sent → 202, which comes after the feed's
//! fsync) p50/p99, and the end-to-end latency (request sent → the event's record is in
//! `out/permit.txt`) p50/p99, read by a thread that tails the file; the record becomes
//! visible when the drop's `pwrite` returns and is durable after the `fdatasync` that
//! follows, so the same run also prints the disk's fdatasync median to add for "fsynced",
//! and the disk's own flush p50/p99 and CPU per flush while ESS uses it (a probe thread,
//! one 4 KiB overwrite + fdatasync every 20 ms): the floor under the ack.
//! For both servers: CPU per event (utime + stime from `/proc`) and the ratio. `--no-peer`
//! skips Fluent Bit.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;

/// Length of one permit line (`PERMIT_ID` 10, `STATUS` 10, `TS` 14, line end).
const LINE: usize = 35;

/// When each event id was sent.
type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// Tails the permit file until `stop`: for every complete line, the time from its event's
/// send to the moment the line was seen.
fn tail(file: PathBuf, sent: Sent, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut seen = Vec::new();
    let mut buf = Vec::new();
    let mut f = None;
    let mut chunk = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        if f.is_none() {
            f = std::fs::File::open(&file).ok();
        }
        let n = f.as_mut().map_or(0, |f| f.read(&mut chunk).unwrap_or(0));
        if n == 0 {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        let now = Instant::now();
        buf.extend_from_slice(&chunk[..n]);
        let whole = buf.len() / LINE * LINE;
        let sent = sent.lock().expect("sent");
        for line in buf[..whole].chunks(LINE) {
            let id = String::from_utf8_lossy(&line[..10]).trim_end().to_string();
            if let Some(t) = sent.get(&id) {
                seen.push(now - *t);
            }
        }
        drop(sent);
        buf.drain(..whole);
    }
    seen
}

struct Figures {
    n: usize,
    ack: Vec<Duration>,
    cpu_us: f64,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
        .as_secs_f64()
        * 1e3
}

/// Sends `rate` events/s over `connections` connections for `seconds`, each connection one
/// event every `connections / rate` s on a fixed schedule (a late answer does not move the
/// next send). Records each event's send time in `sent` under its id.
#[allow(clippy::too_many_arguments)]
fn drive(
    rt: &tokio::runtime::Runtime,
    pid: u32,
    url: &str,
    tls: &Path,
    rate: u64,
    connections: usize,
    seconds: u64,
    sent: &Sent,
    prefix: char,
) -> Figures {
    let cpu_before = support::cpu_seconds(pid);
    let period = Duration::from_secs_f64(connections as f64 / rate as f64);
    let per_conn = (seconds as f64 / period.as_secs_f64()) as u64;
    let ack = rt.block_on(async {
        let start = tokio::time::Instant::now() + Duration::from_millis(200);
        let mut tasks = Vec::new();
        for conn in 0..connections {
            let (url, tls, sent) = (url.to_string(), tls.to_path_buf(), sent.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = ess::client::Client::new(
                    &url,
                    &tls.join("ca.crt"),
                    Some((&tls.join("client.crt"), &tls.join("client.key"))),
                )
                .expect("client");
                let offset = period.mul_f64(conn as f64 / connections as f64);
                let mut lat = Vec::with_capacity(per_conn as usize);
                for k in 0..per_conn {
                    tokio::time::sleep_until(start + offset + period.mul_f64(k as f64)).await;
                    let id = format!("{prefix}{conn:02}{k:06}");
                    let body = format!(
                        r#"{{"type":"PERMIT_STATUS","idempotency_key":"{id}","payload":{{"id":"{id}","status":"APPROVED","updated_at":"2025-04-12T10:03:00Z"}}}}"#
                    );
                    let t = Instant::now();
                    sent.lock().expect("sent").insert(id, t);
                    let a = client.post_events(body, false).await.expect("answer");
                    assert!(a.status.is_success(), "{} {:?}", a.status, a.body);
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    let n = ack.len();
    let cpu_us = (support::cpu_seconds(pid) - cpu_before) * 1e6 / n.max(1) as f64;
    let mut ack = ack;
    ack.sort();
    Figures { n, ack, cpu_us }
}

fn main() {
    let Some(args) = support::args() else {
        return;
    };
    let rate: u64 = support::arg(&args, "--rate", 2000);
    let connections: usize = support::arg(&args, "--connections", 16);
    let seconds: u64 = support::arg(&args, "--seconds", 10);
    let peer: Option<PathBuf> = if args.iter().any(|a| a == "--no-peer") {
        None
    } else {
        let p = std::env::var_os("ESS_PEER_FLUENT_BIT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/work/shared/peers/fluent-bit"));
        p.exists().then_some(p)
    };
    ess::cli::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let ess = support::Daemon::start(true, "warn", |c| c);
    let flush = support::fdatasync_median(&ess.dir);
    let tls = ess.dir.join("tls");
    let sent: Sent = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // The disk's own flush time while ESS uses it: an ack waits for at least one fsync, and
    // a request that arrives while a group commits waits for that one and then its own.
    let disk_during =
        support::FsyncProbe::during(&ess.dir, Duration::from_millis(20), stop.clone());
    let tailer = {
        let (file, sent, stop) = (ess.dir.join("out/permit.txt"), sent.clone(), stop.clone());
        std::thread::spawn(move || tail(file, sent, stop))
    };
    let f = drive(
        &rt,
        ess.child.id(),
        &ess.url,
        &tls,
        rate,
        connections,
        seconds,
        &sent,
        'L',
    );
    // Bounded wait for the last records to reach the file.
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = (f.n * LINE) as u64;
    while Instant::now() < deadline
        && std::fs::metadata(ess.dir.join("out/permit.txt")).map_or(0, |m| m.len()) < want
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let mut e2e = tailer.join().expect("tailer");
    e2e.sort();
    let (disk, sync_cpu) = disk_during.join().expect("fsync probe");
    println!(
        "ess (permit connector on)  {rate} events/s over {connections} x 1 for {seconds} s: {} events; ack p50 {:.2} ms, p99 {:.2} ms; send -> record in the file p50 {:.2} ms, p99 {:.2} ms ({} of {} records seen); server CPU {:.1} µs/event",
        f.n,
        pct(&f.ack, 0.5),
        pct(&f.ack, 0.99),
        pct(&e2e, 0.5),
        pct(&e2e, 0.99),
        e2e.len(),
        f.n,
        f.cpu_us
    );
    println!(
        "  disk, same run: fdatasync of 4 KiB {:.2} ms (median), which the drop's fdatasync adds after the record is visible",
        flush.as_secs_f64() * 1e3
    );
    println!(
        "  disk during the run: fdatasync of 4 KiB p50 {:.2} ms, p99 {:.2} ms, {:.0} µs CPU each ({} probes, one every 20 ms); an ack waits for one or two of these",
        pct(&disk, 0.5),
        pct(&disk, 0.99),
        sync_cpu.as_secs_f64() * 1e6,
        disk.len()
    );
    // The daemon's folder goes with it: keep the certificates for the peer.
    let tmp = tempfile::tempdir().expect("temp dir");
    let tls_copy = tmp.path().join("tls");
    std::fs::create_dir_all(&tls_copy).expect("tls copy");
    for f in [
        "ca.crt",
        "server.crt",
        "server.key",
        "client.crt",
        "client.key",
    ] {
        std::fs::copy(tls.join(f), tls_copy.join(f)).expect("copy certificate");
    }
    let tls = tls_copy;
    ess.stop();
    let Some(peer) = peer else {
        return;
    };
    let (mut fb, url) = support::start_fluent_bit(&peer, &tls, tmp.path());
    let g = drive(
        &rt,
        fb.id(),
        &url,
        &tls,
        rate,
        connections,
        seconds,
        &Arc::default(),
        'F',
    );
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(fb.id() as i32, libc::SIGTERM) };
    let _ = fb.wait();
    println!(
        "fluent-bit 5.1 (replies before fsync) {rate} events/s: {} events; ack p50 {:.2} ms, p99 {:.2} ms; server CPU {:.1} µs/event",
        g.n,
        pct(&g.ack, 0.5),
        pct(&g.ack, 0.99),
        g.cpu_us
    );
    println!(
        "ratio ess / fluent-bit at {rate} events/s: {:.2} x CPU per event",
        f.cpu_us / g.cpu_us
    );
}
