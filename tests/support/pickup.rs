//! Shared parts of the pickup tests: a private CA with a server certificate for 127.0.0.1
//! and a client certificate (the CodifyHQ endpoint's mutual TLS), the source's file rows
//! read from a stopped daemon's feed, and a file dropped by rename.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ess::ledger::sources::SourceFile;
use redb::ReadableDatabase;

use super::http::{Answer, Endpoint, Handler};
use super::support::Appliance;

/// Writes `bytes` under a temp name and renames it to `name`, as a careful writer does.
pub(crate) fn drop_file(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!("{name}.part"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

pub(crate) use super::http::{Pki, pki};

/// The source's file rows, read from the feed file of a stopped daemon.
pub(crate) fn rows_of(app: &Appliance, source: &str) -> Vec<SourceFile> {
    // A copy: a file left by a kill needs redb's repair, which is ESS's to do on its own.
    let copy = app.tmp.path().join("copy.redb");
    std::fs::copy(app.dir.join("data/ess.redb"), &copy).unwrap();
    let db = redb::Database::open(&copy).unwrap();
    let tx = db.begin_read().unwrap();
    ess::ledger::sources::files_at(&tx, source)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

/// Every event of a stopped daemon's feed, in order.
pub(crate) fn events(app: &Appliance) -> Vec<ess::event::Event> {
    let copy = app.tmp.path().join("copy-events.redb");
    std::fs::copy(app.dir.join("data/ess.redb"), &copy).unwrap();
    let db = redb::Database::open(&copy).unwrap();
    ess::feed::read_after(&db, 0, 1_000_000).unwrap()
}

/// The rows of the source named `results`.
pub(crate) fn rows(app: &Appliance) -> Vec<SourceFile> {
    rows_of(app, "results")
}

/// The CodifyHQ endpoint over mutual TLS, deduping by Idempotency-Key. It answers 503
/// (acting on nothing) until the returned gate is opened: so a test can have the whole
/// pickup in the feed while the delivery is still to come.
pub(crate) fn gated_codifyhq(
    runtime: &tokio::runtime::Runtime,
    pki: &Pki,
) -> (Endpoint, Arc<AtomicBool>) {
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    let handler: Handler = Arc::new(move |_| {
        if gate.load(Ordering::SeqCst) {
            // A moment per request, so that a kill comes while records are still to go.
            std::thread::sleep(Duration::from_millis(3));
            Answer::new(200, "{}")
        } else {
            Answer::new(503, "maintenance")
        }
    });
    let endpoint = runtime.block_on(Endpoint::start_with(handler, Some(pki.server.clone())));
    (endpoint, open)
}

/// `maps/codifyhq.yml`: the PERMIT_RESULT events as JSON (`fields`, a flow mapping) to
/// the endpoint on `port`, with the client certificate of `pki`.
pub(crate) fn write_codifyhq(maps: &Path, pki: &Pki, port: u16, fields: &str) {
    let p = |n: &str| pki.dir.path().join(n).display().to_string();
    std::fs::write(
        maps.join("codifyhq.yml"),
        format!(
            "target: codifyhq\nevents: [PERMIT_RESULT]\nformat: json\nfields: {fields}\ndeliver:\n  kind: http\n  url: https://127.0.0.1:{port}/v1/results\n  ca: {}\n  client_cert: {}\n  client_key: {}\nretry: {{base: 100ms, max_delay: 1s}}\n",
            p("ca.pem"),
            p("client.pem"),
            p("client.key")
        ),
    )
    .unwrap();
}

/// The first source of the running daemon's `/api/status`.
pub(crate) fn source_status(app: &Appliance) -> serde_json::Value {
    let (_, body) = super::support::status_get(app, "/api/status");
    let body = body.split_once("\r\n\r\n").map_or(body.as_str(), |b| b.1);
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["sources"][0].clone()
}
