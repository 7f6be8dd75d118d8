//! Load generator for the whole appliance: starts the real `ess serve` (release build) on
//! loopback with fresh certificates, opens N mutual-TLS keep-alive connections, and has
//! each send batches of B events with unique idempotency keys for a fixed time. Reports
//! events/s and request latency percentiles (every 202 is after the group commit's fsync).
//!
//!     cargo bench --bench load -- --connections 64 --batch 1 --seconds 10
//!     cargo bench --bench load -- --connections 16 --batch 100 --seconds 10
//!
//! Add `--with-connector` to run the seed's permit connector (file append) at the same time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod support;

fn main() {
    let Some(args) = support::args() else {
        return;
    };
    let connections: usize = support::arg(&args, "--connections", 16);
    let batch: usize = support::arg(&args, "--batch", 100);
    let seconds: u64 = support::arg(&args, "--seconds", 10);
    let with_connector = args.iter().any(|a| a == "--with-connector");

    ess::cli::install_crypto_provider();
    let daemon = support::Daemon::start(with_connector, "warn", |t| t);
    let (dir, url) = (daemon.dir.clone(), daemon.url.clone());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let latencies = rt.block_on(async {
        let mut tasks = Vec::new();
        for conn in 0..connections {
            let (url, dir, stop, events) = (url.clone(), dir.clone(), stop.clone(), events.clone());
            tasks.push(tokio::spawn(async move {
                let tls = dir.join("tls");
                let mut client = ess::client::Client::new(&url, &tls.join("ca.crt"), Some((&tls.join("client.crt"), &tls.join("client.key")))).expect("client");
                let mut lat = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let body: Vec<String> = (0..batch)
                        .map(|_| {
                            n += 1;
                            format!(r#"{{"type":"PERMIT_STATUS","idempotency_key":"c{conn}-{n}","payload":{{"id":"BP-{n}","status":"APPROVED","updated_at":"2025-04-12T10:03:00Z"}}}}"#)
                        })
                        .collect();
                    let t = Instant::now();
                    let a = client.post_events(format!("[{}]", body.join(",")), false).await.expect("answer");
                    assert_eq!(a.status, 202, "{:?}", a.body);
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
    let mut lat = latencies;
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let n = events.load(Ordering::Relaxed);
    println!(
        "connections {connections} x batch {batch}{}: {n} events in {elapsed:.1}s = {:.0} events/s, {} requests, latency p50 {:.2} ms, p99 {:.2} ms",
        if with_connector {
            " (with the permit connector)"
        } else {
            ""
        },
        n as f64 / elapsed,
        lat.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
    daemon.stop();
}
