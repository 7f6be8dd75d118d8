//! The daemon with a large backlog: memory, restart time, repair time and feed size as the
//! feed grows to 1M, 5M and 10M undelivered permit events.
//!
//!     cargo bench --bench backlog                      # 0, 1M, 5M, 10M
//!     cargo bench --bench backlog -- --levels 0,1000000
//!
//! At each level (events appended through the library while the daemon is stopped, the
//! permit connector's cursor still at 0) it:
//! - starts `ess serve` after a clean stop and times the first 202 (restart to serving);
//! - reads the daemon's RSS idle, then its peak RSS (`VmHWM`) over 5 s of 16 × 100 ingest
//!   (which adds about a million events) while the permit connector drains the backlog into
//!   its file;
//! - stops it with SIGTERM, then once more with SIGKILL, and times the unclean restart and
//!   the repair redb logs;
//! - prints `ess.redb`'s size on disk per event.
//!
//! Needs about 250 bytes of disk per event in the temp folder (`TMPDIR`).

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ess::feed::{Feed, NewEvent, Store, StoreOptions};

mod support;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn permit(i: u64) -> NewEvent {
    NewEvent {
        event_type: "PERMIT_STATUS".into(),
        payload: serde_json::json!({"id": format!("BP-{i}"), "status": "APPROVED", "updated_at": "2025-04-12T10:03:00Z"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        key: format!("load-{i}"),
        trace_id: format!("{:032x}", rand::random::<u128>()),
        ts: None,
    }
}

/// Appends events until the feed holds `target`.
fn grow(db: &Path, target: u64) {
    let store = Store::open(db, StoreOptions::default()).expect("open");
    let feed = Feed::open(store).expect("feed");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let from = feed.last_seq();
    let mut next = from;
    while next < target {
        let n = (target - next).min(20_000);
        let batch: Vec<NewEvent> = (next..next + n).map(permit).collect();
        rt.block_on(feed.append(batch)).expect("append");
        next += n;
    }
    if target > from {
        println!(
            "  appended {} events in {:.1}s",
            target - from,
            started.elapsed().as_secs_f64()
        );
    }
    feed.close();
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Daemon {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(dir: &Path) -> (Daemon, Duration) {
        let log = dir.join("serve.log");
        let started = Instant::now();
        let (child, url) = support::serve(dir, "warn", Some(&log));
        let d = Daemon { child, url, log };
        // Serving = the first 202.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let tls = dir.join("tls");
        rt.block_on(async {
            let mut c = ess::client::Client::new(
                &d.url,
                &tls.join("ca.crt"),
                Some((&tls.join("client.crt"), &tls.join("client.key"))),
            )
            .expect("client");
            let body = format!(
                r#"{{"type":"PERMIT_STATUS","idempotency_key":"probe-{}","payload":{{"id":"P","status":"APPROVED"}}}}"#,
                rand::random::<u64>()
            );
            loop {
                if let Ok(a) = c.post_events(body.clone(), false).await {
                    if a.status == 202 {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let took = started.elapsed();
        (d, took)
    }

    fn stop(mut self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let _ = self.child.wait();
    }

    fn repair_ms(&self) -> Option<u64> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("repaired it"))
            .and_then(|l| l.split("duration_ms=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }
}

/// 16 connections × 100 events with unique keys for `seconds`; how many were sent.
fn load(dir: &Path, url: &str, seconds: u64) -> u64 {
    let tls = dir.join("tls");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for conn in 0..16 {
            let (url, tls, stop, sent) = (url.to_string(), tls.clone(), stop.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = ess::client::Client::new(&url, &tls.join("ca.crt"), Some((&tls.join("client.crt"), &tls.join("client.key")))).expect("client");
                let salt: u64 = rand::random();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let body: Vec<String> = (0..100).map(|_| { n += 1; format!(r#"{{"type":"PERMIT_STATUS","idempotency_key":"r{salt}-{conn}-{n}","payload":{{"id":"BP-{n}","status":"APPROVED","updated_at":"2025-04-12T10:03:00Z"}}}}"#) }).collect();
                    let a = c.post_events(format!("[{}]", body.join(",")), false).await.expect("answer");
                    assert_eq!(a.status, 202);
                    sent.fetch_add(100, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("task");
        }
    });
    sent.load(Ordering::Relaxed)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let levels: Vec<u64> = arg(&args, "--levels")
        .unwrap_or_else(|| "0,1000000,5000000,10000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    ess::cli::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("app");
    support::init(&dir);
    if let Some(cache) = arg(&args, "--cache") {
        let cfg = dir.join("ess.yml");
        let text = std::fs::read_to_string(&cfg).expect("config");
        std::fs::write(&cfg, format!("{text}feed:\n  cache: {cache}\n")).expect("config");
    }
    std::fs::create_dir_all(dir.join("data")).expect("data");
    let db = dir.join("data/ess.redb");
    println!(
        "events in feed | bytes/event on disk | restart after clean stop | RSS idle | peak RSS, 16x100 ingest + drain | backlog then | restart after kill -9 | repair"
    );
    for level in levels {
        grow(&db, level);
        let (feed_events, _) = counts(&db);
        // Blocks the file holds on the disk (redb reserves its growth as a sparse tail).
        let bytes = std::fs::metadata(&db)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0);
        let (d, clean) = Daemon::start(&dir);
        let pid = d.child.id();
        let idle = status_kib(pid, "VmRSS:");
        load(&dir, &d.url, 5);
        let peak = status_kib(pid, "VmHWM:");
        d.stop(libc::SIGTERM);
        let (total, backlog) = counts(&db);
        // And an unclean stop: kill -9, then time the next start.
        let (d, _) = Daemon::start(&dir);
        d.stop(libc::SIGKILL);
        let (d, unclean) = Daemon::start(&dir);
        let repair = d.repair_ms();
        d.stop(libc::SIGTERM);
        println!(
            "{feed_events:>14} | {:>19} | {:>21.0} ms | {:>4} MiB | {:>27} MiB | {backlog:>9} of {total} | {:>17.0} ms | {}",
            if feed_events > 0 {
                format!("{:.0}", bytes as f64 / feed_events as f64)
            } else {
                "-".into()
            },
            clean.as_secs_f64() * 1e3,
            idle / 1024,
            peak / 1024,
            unclean.as_secs_f64() * 1e3,
            repair.map_or("-".into(), |r| format!("{r} ms")),
        );
    }
}

/// (events in the feed, of them not yet delivered by the permit connector).
fn counts(db: &Path) -> (u64, u64) {
    let d = ess::feed::open_database_read_only(db).expect("open");
    let last = ess::feed::read_last_seq(&d).expect("last seq");
    let cursor = ess::ledger::read_cursor(&d, "city_hall_cobol")
        .expect("cursor")
        .map_or(0, |c| c.seq);
    (last, last - cursor.min(last))
}
