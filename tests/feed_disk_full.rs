//! The feed's disk fills up (issue 10.5, the feed's side), through the real binary with
//! `data_dir` on a small tmpfs: redb fails its commit with ENOSPC and then refuses every
//! transaction until the database is reopened. Ingest answers 503 with Retry-After and
//! `/healthz` 503 with the reason while the disk is full; when space returns the daemon
//! reopens the database by itself (no restart), takes events again, and every event that
//! got a 202 is delivered exactly once.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

fn free_bytes(dir: &Path) -> u64 {
    ess::feed::retention::free_disk_bytes(dir).unwrap()
}

fn batch(from: usize, n: usize) -> (Vec<String>, String) {
    let ids: Vec<String> = (from..from + n).map(|i| format!("D{i:06}")).collect();
    let body = serde_json::Value::Array(ids.iter().map(|id| permit_event(id)).collect());
    (ids, body.to_string())
}

#[test]
fn a_full_feed_disk_answers_503_and_the_daemon_recovers_by_itself_when_space_returns() {
    let mut app = Appliance::init();
    let data = app.dir.join("data");
    let _fs = Tmpfs::mount(&data, "8m");
    // The low-disk threshold would refuse first; this test is about redb's own ENOSPC.
    app.edit_config("min_free_disk: 512MiB", "min_free_disk: 0");
    app.start();
    let pid = app.child.as_ref().unwrap().id();
    let rt = rt();
    let mut client = app.client();
    let mut acked: Vec<String> = Vec::new();
    let (ids, body) = batch(0, 50);
    assert_eq!(
        rt.block_on(client.post_events(body, false)).unwrap().status,
        202
    );
    acked.extend(ids);

    // Leave a little room, then write until the disk is full.
    let filler = data.join("filler");
    let room = free_bytes(&data).saturating_sub(256 << 10);
    std::fs::write(&filler, vec![0u8; room as usize]).unwrap();
    let mut next = 50;
    let mut refused = None;
    for _ in 0..2000 {
        let (ids, body) = batch(next, 100);
        next += 100;
        let a = rt.block_on(client.post_events(body, false)).unwrap();
        match a.status.as_u16() {
            202 => acked.extend(ids),
            503 => {
                refused = Some((a, ids));
                break;
            }
            other => panic!("unexpected {other}: {:?}", a.body),
        }
    }
    let (answer, unacked) = refused.expect("the disk filled up");
    assert!(answer.retry_after.is_some(), "503 carries Retry-After");
    // While the disk stays full: /healthz says 503, and ingest refuses at once, saying why.
    let (code, health) = status_get(&app, "/healthz");
    assert_eq!(code, 503, "{health}");
    let (_, body) = batch(next, 10);
    let a = rt.block_on(client.post_events(body, false)).unwrap();
    assert_eq!(a.status, 503);
    assert!(a.retry_after.is_some());
    let why = a.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("No space left on device"), "{why}");

    // Space returns: the daemon reopens the database by itself.
    std::fs::remove_file(&filler).unwrap();
    let (_, body) = batch(next - 100, 100);
    let mut again = None;
    wait_until("ingest takes events again", Duration::from_secs(60), || {
        let a = rt
            .block_on(client.post_events(body.clone(), false))
            .unwrap();
        let ok = a.status == 202;
        again = Some(a);
        ok
    });
    acked.extend(unacked);
    let (code, health) = status_get(&app, "/healthz");
    assert_eq!(code, 200, "{health}");
    assert_eq!(app.child.as_ref().unwrap().id(), pid, "no restart");
    assert!(app.stderr().contains("reopened; writes work again"));

    // Everything that got a 202 is delivered once, in order (the batch refused while full was
    // re-sent until it got its 202, and counts once).
    let want: String = acked.iter().map(|id| permit_line(id)).collect();
    wait_until("all delivered", Duration::from_secs(120), || {
        app.read_out("permit.txt").len() >= want.len()
    });
    assert_eq!(app.terminate().code(), Some(0));
    assert_eq!(app.read_out("permit.txt"), want);
}
