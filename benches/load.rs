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

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes every bench target
    }
    let connections: usize = arg(&args, "--connections", 16);
    let batch: usize = arg(&args, "--batch", 100);
    let seconds: u64 = arg(&args, "--seconds", 10);
    let with_connector = args.iter().any(|a| a == "--with-connector");

    ess::cli::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("app");
    let bin = env!("CARGO_BIN_EXE_ess");
    let st = std::process::Command::new(bin)
        .args(["init", "--dir"])
        .arg(&dir)
        .args(["--ingest", "127.0.0.1:0", "--status", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("ess init");
    assert!(st.success());
    if !with_connector {
        std::fs::remove_file(dir.join("maps/permit_map.yml")).expect("remove map");
    }
    let mut child = std::process::Command::new(bin)
        .args(["serve", "--config"])
        .arg(dir.join("ess.yml"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ess serve");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("listening line");
    // "ess listening: ingest=https://ADDR status=http://ADDR"
    let ingest = line
        .trim()
        .trim_start_matches("ess listening: ingest=https://")
        .split_whitespace()
        .next()
        .unwrap_or_default();
    let url = format!("https://{ingest}");

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
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}
