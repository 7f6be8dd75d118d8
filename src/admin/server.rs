//! The admin socket: JSON over HTTP/1.1 on a unix socket, served by tiny_http on its own
//! thread so it answers even when the async runtime is busy.
//!
//! Routes: `POST /v1/list` ([`ListRequest`]), `POST /v1/replay` ([`ReplayCall`]),
//! `GET|POST /v1/stats`, `POST /v1/show` ([`ShowRequest`]), `POST /v1/backup`
//! ([`BackupRequest`]), `POST /v1/act` ([`ActRequest`]). 200 with the response JSON; 400
//! with `{"kind":"usage","error":..}`, 500 with `{"kind":"runtime",..}`.
//!
//! Invariant: the socket file is 0600 before anyone can connect: it is bound inside a
//! fresh 0700 folder next to its final path, chmod'ed, then renamed into place.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    ActRequest, AdminBackend, AdminError, BackupRequest, ListRequest, ReplayRequest, ShowRequest,
    WireError,
};

/// Largest request body read.
const MAX_BODY: u64 = 1 << 20;

/// A running admin socket; [`AdminServer::stop`] (or drop) ends it and removes the file.
pub struct AdminServer {
    server: Option<Arc<tiny_http::Server>>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Removes a socket file left by a daemon that died; refuses if one still answers there,
/// or if the path is not a socket.
fn clear_stale(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "another process answers on admin socket {} (is ess already running?)",
                path.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// Serves `backend` on the unix socket `path` (parent folders are created, mode 0700).
pub fn serve(path: &Path, backend: Arc<dyn AdminBackend>) -> std::io::Result<AdminServer> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| io_err(format!("admin socket {} has no folder", path.display())))?;
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    clear_stale(path)?;
    let staging = parent.join(format!(".ess-admin-{}-{}", std::process::id(), unique()));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let result = (|| {
        let temp = staging.join("s");
        let server = tiny_http::Server::http_unix(&temp).map_err(io_err)?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&temp, path)?;
        Ok::<_, std::io::Error>(server)
    })();
    let _ = std::fs::remove_dir(&staging);
    let server = Arc::new(result?);
    let srv = server.clone();
    let thread = std::thread::Builder::new()
        .name("admin-socket".into())
        .spawn(move || {
            let backup_running = Arc::new(AtomicBool::new(false));
            for request in srv.incoming_requests() {
                // A bug in one request must not take the admin socket down for the next
                // ones; the failed request's connection is simply closed.
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handle(request, &backend, &backup_running)
                }));
                if served.is_err() {
                    tracing::error!("admin request handler panicked; the socket keeps serving");
                }
            }
        })?;
    Ok(AdminServer {
        server: Some(server),
        thread: Some(thread),
        path: path.to_path_buf(),
    })
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl AdminServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving (a request being answered is finished first) and removes the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Dropping the last handle flags tiny_http's accept thread to end; it only notices
        // on its next accept, and tiny_http pokes the pre-rename path, so poke the real one.
        drop(server);
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn respond_json<T: Serialize>(request: tiny_http::Request, status: u16, body: &T) {
    let text = serde_json::to_string(body)
        .unwrap_or_else(|e| format!("{{\"kind\":\"runtime\",\"error\":\"{e}\"}}"));
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]);
    let mut response = tiny_http::Response::from_string(text).with_status_code(status);
    if let Ok(h) = header {
        response = response.with_header(h);
    }
    let _ = request.respond(response);
}

fn answer<T: Serialize>(request: tiny_http::Request, result: Result<T, AdminError>) {
    match result {
        Ok(body) => respond_json(request, 200, &body),
        Err(e) => {
            let status = if e.is_usage() { 400 } else { 500 };
            respond_json(request, status, &e.to_wire());
        }
    }
}

/// `POST /v1/replay`: the request and who asks.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReplayCall {
    pub by: String,
    #[serde(flatten)]
    pub request: ReplayRequest,
}

fn body<T: DeserializeOwned>(request: &mut tiny_http::Request) -> Result<T, AdminError> {
    let mut text = String::new();
    request
        .as_reader()
        .take(MAX_BODY)
        .read_to_string(&mut text)
        .map_err(|e| AdminError::BadRequest(format!("cannot read request: {e}")))?;
    serde_json::from_str(&text).map_err(|e| AdminError::BadRequest(format!("bad request: {e}")))
}

fn handle(
    mut request: tiny_http::Request,
    backend: &Arc<dyn AdminBackend>,
    backup_running: &Arc<AtomicBool>,
) {
    use tiny_http::Method::{Get, Post};
    let route = (request.method().clone(), request.url().to_string());
    match (route.0, route.1.as_str()) {
        (Post, "/v1/list") => {
            let r = body::<ListRequest>(&mut request).and_then(|req| backend.list(&req));
            answer(request, r);
        }
        (Post, "/v1/replay") => {
            let r = body::<ReplayCall>(&mut request)
                .and_then(|call| backend.replay(&call.request, &call.by));
            answer(request, r);
        }
        (Get | Post, "/v1/stats") => {
            let r = backend.stats();
            answer(request, r);
        }
        (Post, "/v1/show") => {
            let r = body::<ShowRequest>(&mut request).and_then(|req| backend.show(&req));
            answer(request, r);
        }
        (Post, "/v1/act") => {
            let r = body::<ActRequest>(&mut request).and_then(|req| backend.act(&req));
            answer(request, r);
        }
        (Post, "/v1/backup") => backup(request, backend, backup_running),
        (_, url) => {
            let e = WireError {
                kind: "usage".into(),
                error: format!("no such admin route {url}"),
            };
            respond_json(request, 404, &e);
        }
    }
}

/// Clears the one-backup-at-a-time flag however the backup thread ends.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A backup can take minutes: it runs on its own thread so `stats` and `list` keep
/// answering meanwhile; one at a time.
fn backup(request: tiny_http::Request, backend: &Arc<dyn AdminBackend>, running: &Arc<AtomicBool>) {
    if running.swap(true, Ordering::SeqCst) {
        let e = WireError {
            kind: "usage".into(),
            error: "a backup is already running; try again when it is done".into(),
        };
        return respond_json(request, 409, &e);
    }
    let guard = Running(running.clone());
    let backend = backend.clone();
    // The request moves into the thread; if spawning fails it comes back through the
    // closure's drop, so answer by closing the connection (the client reports the error).
    let spawned = std::thread::Builder::new()
        .name("admin-backup".into())
        .spawn(move || {
            let _guard = guard;
            let mut request = request;
            let r = body::<BackupRequest>(&mut request).and_then(|req| backend.backup(&req));
            answer(request, r);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the backup thread");
    }
}
