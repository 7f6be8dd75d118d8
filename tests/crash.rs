//! The promise under fire (issue #2, and batch mode of #4): ≥ 20,000 events pushed in
//! batches while the real daemon is SIGKILLed at random moments (during ingest and during
//! delivery) and restarted; unacknowledged batches are re-sent. At the end the output holds
//! every event's record exactly once, in seq order, with no partial record.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use support::*;

const N_EVENTS: usize = 20_000;
const BATCH: usize = 200;
const MIN_KILLS: usize = 10;

/// Sends every id in batches while a killer thread SIGKILLs and restarts the daemon at
/// random moments (every 20-250 ms), until all batches are acknowledged and at least
/// [`MIN_KILLS`] kills happened. Returns the number of kills.
fn push_under_fire(app: &Arc<Mutex<Appliance>>, ids: &[String]) -> usize {
    app.lock().unwrap().start();
    let rt = rt();
    let seed: u64 = std::env::var("ESS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (re-run with ESS_CRASH_SEED={seed})");
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (app, done, kills) = (app.clone(), done.clone(), kills.clone());
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(rng.random_range(20..250)));
                let mut a = app.lock().unwrap();
                a.kill9();
                kills.fetch_add(1, Ordering::SeqCst);
                a.start();
            }
        })
    };
    let mut resent = 0;
    for (batch_idx, chunk) in ids.chunks(BATCH).enumerate() {
        let body =
            serde_json::Value::Array(chunk.iter().map(|id| permit_event(id)).collect()).to_string();
        loop {
            let mut client = app.lock().unwrap().client();
            client.timeout = Duration::from_secs(20);
            match rt.block_on(client.post_events(body.clone(), false)) {
                Ok(a) if a.status == 202 => break,
                Ok(a) if a.status == 503 => {}
                Ok(a) => panic!("batch {batch_idx} rejected: {} {:?}", a.status, a.body),
                Err(_) => resent += 1, // no answer: the daemon died; send the same batch again
            }
        }
    }
    // Go on killing while the tail is delivered, until enough kills happened.
    wait_until("enough kills", Duration::from_secs(300), || {
        kills.load(Ordering::SeqCst) >= MIN_KILLS
    });
    done.store(true, Ordering::SeqCst);
    killer.join().unwrap();
    let kills = kills.load(Ordering::SeqCst);
    eprintln!("{kills} kills, {resent} batches re-sent");
    kills
}

fn ids() -> Vec<String> {
    (0..N_EVENTS).map(|i| format!("P{i:07}")).collect()
}

#[test]
fn kill_9_at_random_moments_loses_and_doubles_nothing() {
    let app = Arc::new(Mutex::new(Appliance::init()));
    let ids = ids();
    assert!(push_under_fire(&app, &ids) >= MIN_KILLS);
    let out = app.lock().unwrap().out_path("permit.txt");
    let expected: String = ids.iter().map(|id| permit_line(id)).collect();
    // Let the last incarnation finish delivering, then compare record by record.
    wait_until("all records delivered", Duration::from_secs(300), || {
        std::fs::metadata(&out)
            .map(|m| m.len() as usize >= expected.len())
            .unwrap_or(false)
    });
    assert_eq!(app.lock().unwrap().terminate().code(), Some(0));
    let got = std::fs::read_to_string(&out).unwrap();
    let got_lines: Vec<&str> = got.split_inclusive('\n').collect();
    let want_lines: Vec<&str> = expected.split_inclusive('\n').collect();
    for (i, (g, w)) in got_lines.iter().zip(&want_lines).enumerate() {
        assert_eq!(g, w, "record {i} differs");
    }
    assert_eq!(got_lines.len(), want_lines.len(), "record count");
    assert!(got.ends_with('\n'), "no partial record at the end");
}

#[test]
fn batch_files_through_kill_9_are_whole_and_each_batch_is_written_once() {
    let app = Appliance::init();
    let map = app.dir.join("maps/permit_map.yml");
    let text = std::fs::read_to_string(&map).unwrap();
    let text = text
        .replace("file: permit.txt", "file: permit_{{seq}}.txt")
        .replace("mode: append", "mode: batch");
    std::fs::write(&map, text).unwrap();
    let app = Arc::new(Mutex::new(app));
    let ids = ids();
    assert!(push_under_fire(&app, &ids) >= MIN_KILLS);
    let expected: String = ids.iter().map(|id| permit_line(id)).collect();
    let out_dir = app.lock().unwrap().dir.join("out");
    let batch_files = || -> Vec<(u64, std::path::PathBuf)> {
        let mut files: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.to_string();
                let seq = name
                    .strip_prefix("permit_")?
                    .strip_suffix(".txt")?
                    .parse()
                    .ok()?;
                Some((seq, p))
            })
            .collect();
        files.sort();
        files
    };
    let total = || {
        batch_files()
            .iter()
            .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum::<u64>()
    };
    wait_until("all records delivered", Duration::from_secs(300), || {
        total() as usize >= expected.len()
    });
    assert_eq!(app.lock().unwrap().terminate().code(), Some(0));
    let files = batch_files();
    let got: String = files
        .iter()
        .map(|(_, p)| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(got.len(), expected.len(), "{} batch files", files.len());
    assert!(
        got == expected,
        "the batch files, in seq order, are the events once each, in order"
    );
    let others: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !(n.starts_with("permit_") && n.ends_with(".txt")))
        .collect();
    assert!(others.is_empty(), "no temp file left behind: {others:?}");
}
