//! The HTTP side of the status page: a tiny_http server on threads of its own.
//!
//! Routes: `/` (HTML), `/metrics` (Prometheus text), `/healthz` (200 `ok` or `degraded: ...`,
//! 503 `unavailable: REASON`),
//! `/api/status` (JSON). Only GET and HEAD; any other method is 405, any other path 404.
//!
//! Invariant: read-only. A request reads one [`Snapshot`] from the [`StatusSource`] and
//! renders it; nothing here writes to the feed, the ledger or the disk. A panic while
//! answering one request (a bug in a source) becomes a 500 for that request only; the
//! worker threads keep serving.

use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Request, Response, Server};

use super::{Metrics, StatusSource, metrics, page};

/// Requests are answered by this many threads, so one slow client does not stall the page.
const N_WORKERS: usize = 2;

/// A running status server. Dropping it without [`StatusServer::stop`] leaves the worker
/// threads serving until the process exits.
pub struct StatusServer {
    server: Arc<Server>,
    workers: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for StatusServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Binds `addr` and serves the status routes on background threads.
pub fn serve(
    addr: SocketAddr,
    source: Arc<dyn StatusSource>,
    metrics: Metrics,
) -> io::Result<StatusServer> {
    let server = Server::http(addr).map_err(|e| {
        // Keep the kind (AddrInUse, PermissionDenied...) when tiny_http passes an io::Error.
        let kind = e
            .downcast_ref::<io::Error>()
            .map_or(io::ErrorKind::Other, io::Error::kind);
        io::Error::new(kind, format!("status server on {addr}: {e}"))
    })?;
    let local_addr = server.server_addr().to_ip().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("status server on {addr}: not an IP socket"),
        )
    })?;
    let server = Arc::new(server);
    let stopping = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::with_capacity(N_WORKERS);
    for worker_idx in 0..N_WORKERS {
        let (srv, stop) = (Arc::clone(&server), Arc::clone(&stopping));
        let (source, metrics) = (Arc::clone(&source), metrics.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("ess-status-{worker_idx}"))
            .spawn(move || worker(&srv, &stop, &*source, &metrics));
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(e) => {
                // Stop the workers already started before giving up.
                StatusServer {
                    server,
                    workers,
                    stopping,
                    local_addr,
                }
                .stop();
                return Err(e);
            }
        }
    }
    tracing::info!(addr = %local_addr, "status page listening");
    Ok(StatusServer {
        server,
        workers,
        stopping,
        local_addr,
    })
}

impl StatusServer {
    /// The address actually bound (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting requests and waits for the worker threads to finish the request
    /// each may be answering (a short blocking wait: from async code, call it where
    /// blocking is allowed, e.g. at the end of shutdown or in `spawn_blocking`).
    pub fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Each unblock wakes exactly one thread waiting in recv().
        for _ in &self.workers {
            self.server.unblock();
        }
        for handle in self.workers {
            if handle.join().is_err() {
                tracing::error!("a status worker thread panicked");
            }
        }
    }
}

fn worker(server: &Server, stopping: &AtomicBool, source: &dyn StatusSource, metrics: &Metrics) {
    loop {
        match server.recv() {
            Ok(request) => answer(request, source, metrics),
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            // An accept error for one connection; the listener itself is fine.
            Err(e) => tracing::warn!(error = %e, "status server: accepting a connection failed"),
        }
    }
}

fn answer(request: Request, source: &dyn StatusSource, metrics: &Metrics) {
    let method = request.method().clone();
    let path = request
        .url()
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .to_owned();
    let reply = match catch_unwind(AssertUnwindSafe(|| route(&method, &path, source, metrics))) {
        Ok(reply) => reply,
        Err(_) => {
            tracing::error!(%path, "status page: answering panicked");
            Reply::text(500, "internal error\n")
        }
    };
    let mut response = Response::from_data(reply.body).with_status_code(reply.status);
    let fixed = [
        ("Content-Type", reply.content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ];
    let headers = reply
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .chain(fixed);
    for h in headers.filter_map(|(name, value)| header(name, value)) {
        response.add_header(h);
    }
    // A client that hung up is not our problem; there is nothing to retry.
    if let Err(e) = request.respond(response) {
        tracing::debug!(error = %e, %path, "status page: client went away");
    }
}

struct Reply {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }
}

fn route(method: &Method, path: &str, source: &dyn StatusSource, metrics: &Metrics) -> Reply {
    const ROUTES: [&str; 4] = ["/", "/metrics", "/healthz", "/api/status"];
    if !ROUTES.contains(&path) {
        return Reply::text(404, "not found\n");
    }
    if !matches!(method, Method::Get | Method::Head) {
        let mut reply = Reply::text(405, "method not allowed: the status page is read-only\n");
        reply.headers.push(("Allow", "GET, HEAD".to_owned()));
        return reply;
    }
    if path == "/healthz" {
        return healthz(&source.health());
    }
    let snapshot = match source.snapshot() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, %path, "status page: cannot read the stored state");
            return Reply::text(500, &format!("cannot read the stored state: {e}\n"));
        }
    };
    match path {
        "/" => Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            // No script, no external resource: only the inline style sheet may apply.
            headers: vec![(
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
                    .to_owned(),
            )],
            body: page::render(&snapshot, chrono::Utc::now()).into_bytes(),
        },
        "/metrics" => Reply {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            headers: Vec::new(),
            body: metrics.render(&snapshot).into_bytes(),
        },
        _ => match serde_json::to_vec_pretty(&snapshot) {
            Ok(body) => Reply {
                status: 200,
                content_type: "application/json",
                headers: Vec::new(),
                body,
            },
            Err(e) => {
                tracing::error!(error = %e, "status page: serialising the snapshot failed");
                Reply::text(500, "internal error\n")
            }
        },
    }
}

/// `/healthz`: 503 with the reason while the ingest refuses events; else 200, `ok` or
/// `degraded: ...` (one line per connector blocked too long).
fn healthz(health: &super::HealthStatus) -> Reply {
    if let Some(reason) = &health.refusal {
        let mut reply = Reply::text(503, &format!("unavailable: {reason}\n"));
        reply.headers.push(("Retry-After", "5".to_owned()));
        return reply;
    }
    if health.degraded.is_empty() {
        return Reply::text(200, "ok\n");
    }
    let lines: String = health
        .degraded
        .iter()
        .map(|d| format!("degraded: {d}\n"))
        .collect();
    Reply::text(200, &lines)
}

/// Every name and value passed here is an ASCII literal or a Content-Type constant, which
/// tiny_http accepts; should one ever be refused, the answer goes out without it.
fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}
