//! Backlog drain: how fast a connector empties a feed that already holds a backlog, side by
//! side with the machine's limits measured in the same run.
//!
//!     cargo bench --bench drain                                  # permit 1M, payroll 300k
//!     cargo bench --bench drain -- --map permit --events 1000000
//!     cargo bench --bench drain -- --map payroll --events 300000
//!
//! For each map it fills a fresh feed through the library (the daemon stopped; the map's
//! events with unique keys), then starts the real `ess serve` with the map in place
//! (deliver: append to one file) and watches the output file grow: rows/s is the records
//! written between the first byte and the last, over that time (the daemon's start is not
//! counted). The same run measures
//! - the disk: the same bytes written in the same batches with one `pwrite` + `fdatasync`
//!   per batch (what an append drop cannot beat);
//! - the feed read alone: every stored event visited and verified (`feed::visit_after`,
//!   checksums, no payload parse), one thread (what a connector cannot beat either);
//!
//! and prints the daemon's CPU per row and peak RSS. `--perf FILE` records a
//! `perf record -e cpu-clock -g` profile of the daemon during the drain.
//!
//! The permit map is the seed's (`ess init`); the payroll map is `ess map from-copybook`'s
//! skeleton of `tests/fixtures/copybooks/PAYROLL.cpy` (40 fields: zoned, packed, binary,
//! two dates; EBCDIC-037, 238-byte records without line ends).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ess::feed::{Batch, Feed, Store, StoreOptions};

mod support;

/// One map under test.
struct Case {
    name: &'static str,
    event_type: &'static str,
    /// Bytes of one record, framing included.
    record_len: usize,
    /// The payload of event `i`, as JSON text.
    payload: Box<dyn Fn(u64) -> String>,
    /// Writes the map (and what it needs) into `maps/`; returns the output file.
    install: Box<dyn Fn(&Path) -> PathBuf>,
}

fn permit() -> Case {
    Case {
        name: "permit map (fixed width, ASCII, 35-byte lines)",
        event_type: "PERMIT_STATUS",
        record_len: 35,
        payload: Box::new(|i| {
            format!(
                r#"{{"id":"BP-{:06}","status":"APPROVED","updated_at":"2025-04-12T10:03:00Z"}}"#,
                i % 1_000_000
            )
        }),
        // `ess init` wrote it: appends to out/permit.txt.
        install: Box::new(|dir| dir.join("out/permit.txt")),
    }
}

fn payroll() -> Case {
    let payload = serde_json::to_string(&support::payroll::payload()).expect("payload");
    Case {
        name: "payroll copybook (40 fields, EBCDIC, 238-byte records)",
        event_type: "PAYROLL_REC",
        record_len: support::payroll::record_len(),
        payload: Box::new(move |_| payload.clone()),
        install: Box::new(|dir| {
            let maps = dir.join("maps");
            std::fs::remove_file(maps.join("permit_map.yml")).expect("remove permit map");
            std::fs::write(maps.join("PAYROLL.cpy"), support::payroll::copybook_text())
                .expect("copybook");
            let skeleton = support::payroll::skeleton();
            let head = skeleton
                .split("\ndeliver:")
                .next()
                .expect("skeleton has fields");
            std::fs::write(
                maps.join("payroll.yml"),
                format!("{head}\ndeliver:\n  kind: file\n  dir: ../out\n  file: payroll.dat\n  mode: append\n"),
            )
            .expect("map");
            dir.join("out/payroll.dat")
        }),
    }
}

/// Appends `n` events of `case` to the feed in `db`, 20,000 per commit.
fn fill(db: &Path, case: &Case, n: u64) {
    let feed = Feed::open(Store::open(db, StoreOptions::default()).expect("open")).expect("feed");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let mut next = 0;
    while next < n {
        let k = (n - next).min(20_000);
        let mut batch = Batch::with_capacity(k as usize, k as usize * 200);
        for i in next..next + k {
            let trace = format!("{:032x}", u128::from(i) * 0x9E37_79B9_7F4A_7C15);
            batch.push(
                case.event_type,
                &format!("drain-{i:09}"),
                &trace,
                None,
                (case.payload)(i).as_bytes(),
            );
        }
        rt.block_on(feed.append_batch(batch)).expect("append");
        next += k;
    }
    println!(
        "  filled the feed with {n} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    feed.close();
}

/// Every stored event visited and verified, one thread: events/s.
fn read_limit(db: &Path) -> f64 {
    let store = Store::open(db, StoreOptions::default()).expect("open");
    let started = Instant::now();
    let mut after = 0;
    let mut n = 0u64;
    loop {
        let mut last = after;
        let k = ess::feed::visit_after(&*store.db().expect("db"), after, 10_000, |v| {
            last = v.seq;
            std::hint::black_box(v.payload().map(|p| p.len()).unwrap_or(0));
            Ok(std::ops::ControlFlow::Continue(()))
        })
        .expect("visit");
        if k == 0 {
            break;
        }
        n += k as u64;
        after = last;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(store);
    rate
}

/// `n` records of `len` bytes written in batches of `batch` with one pwrite + fdatasync each:
/// rows/s.
fn disk_limit(dir: &Path, len: usize, n: u64, batch: usize) -> f64 {
    let path = dir.join("disk-probe");
    let f = std::fs::File::create(&path).expect("probe");
    let buf = vec![b'x'; len * batch];
    let started = Instant::now();
    let (mut off, mut done) = (0u64, 0u64);
    while done < n {
        let k = (n - done).min(batch as u64) as usize;
        f.write_all_at(&buf[..k * len], off).expect("write");
        f.sync_data().expect("fdatasync");
        off += (k * len) as u64;
        done += k as u64;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    rate
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

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn run(case: &Case, n: u64, disk_batch: usize, perf: Option<&str>) {
    println!("{}: {n} events waiting", case.name);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("app");
    support::init(&dir);
    let out = (case.install)(&dir);
    std::fs::create_dir_all(dir.join("data")).expect("data");
    let db = dir.join("data/ess.redb");
    fill(&db, case, n);
    let read = read_limit(&db);
    let disk = disk_limit(tmp.path(), case.record_len, n.min(1_000_000), disk_batch);

    let (mut child, _url) = support::serve(&dir, "warn", Some(&dir.join("serve.log")));
    let pid = child.id();
    let want = n * case.record_len as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    // The first byte: the drain has started (the daemon's start is not counted).
    while size(&out) == 0 {
        assert!(Instant::now() < deadline, "nothing delivered");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (t0, rows0, cpu0) = (
        Instant::now(),
        size(&out) / case.record_len as u64,
        support::cpu_seconds(pid),
    );
    let mut profiler = perf.map(|file| {
        Command::new("perf")
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "999",
                "-g",
                "-o",
                file,
                "-p",
            ])
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf record")
    });
    let mut peak_rss = 0;
    while size(&out) < want {
        assert!(Instant::now() < deadline, "drain did not finish");
        peak_rss = peak_rss.max(status_kib(pid, "VmRSS:"));
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = support::cpu_seconds(pid) - cpu0;
    if let Some(p) = profiler.as_mut() {
        // SAFETY: plain kill(2) on our own child; perf writes its file on SIGINT.
        unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
        let _ = p.wait();
    }
    let hwm = status_kib(pid, "VmHWM:");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    assert_eq!(size(&out), want, "every record exactly once");
    let rows = (n - rows0) as f64;
    let rate = rows / elapsed;
    println!(
        "  drain: {rows:.0} rows in {elapsed:.2} s = {rate:.0} rows/s, daemon CPU {:.2} µs/row, RSS during the drain ≤ {} MiB (peak {} MiB)",
        cpu * 1e6 / rows,
        peak_rss / 1024,
        hwm / 1024
    );
    println!(
        "  machine, same run: disk {disk:.0} rows/s ({} × {}-byte records per pwrite + fdatasync) = {:.2} × the drain; feed read alone (visit + verify, one thread) {read:.0} events/s = {:.2} × the drain",
        disk_batch,
        case.record_len,
        disk / rate,
        read / rate
    );
}

fn main() {
    let Some(args) = support::args() else {
        return;
    };
    let which: String = support::arg(&args, "--map", "both".to_string());
    let disk_batch: usize = support::arg(&args, "--disk-batch", 1000);
    let perf: Option<String> = args
        .iter()
        .position(|a| a == "--perf")
        .and_then(|i| args.get(i + 1).cloned());
    ess::cli::install_crypto_provider();
    if which == "permit" || which == "both" {
        let n = support::arg(&args, "--events", 1_000_000);
        run(&permit(), n, disk_batch, perf.as_deref());
    }
    if which == "payroll" || which == "both" {
        let n = support::arg(&args, "--events", 300_000);
        run(&payroll(), n, disk_batch, perf.as_deref());
    }
}
