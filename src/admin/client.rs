//! The CLI side of the admin socket: one JSON request over HTTP/1.1 (hyper's client) on a
//! tokio `UnixStream`.
//!
//! Invariant: "no daemon" (socket missing, or nothing listening) is told apart from every
//! other failure, because only then may the CLI open the database itself.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{AdminError, WireError};

/// What asking the daemon gave.
#[derive(Debug)]
pub enum Reply<T> {
    /// Nobody listens on the socket: the caller may use the database directly.
    NoDaemon,
    /// The daemon's answer.
    Answer(Result<T, AdminError>),
}

/// Sends `req` as JSON to `route` (e.g. `/v1/list`) on the admin socket, waiting at most
/// `timeout`. Runs on its own thread with its own runtime, so it may be called from inside
/// or outside a tokio runtime.
pub fn call<Req, Resp>(
    socket: &Path,
    route: &str,
    req: &Req,
    timeout: Duration,
) -> anyhow::Result<Reply<Resp>>
where
    Req: Serialize,
    Resp: DeserializeOwned + Send + 'static,
{
    let body = serde_json::to_vec(req).context("encoding admin request")?;
    let socket = socket.to_path_buf();
    let route = route.to_string();
    let worker = std::thread::Builder::new()
        .name("admin-client".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                tokio::time::timeout(timeout, exchange::<Resp>(&socket, &route, body)).await
            })
            .map_err(|_| {
                anyhow::anyhow!(
                    "the daemon did not answer on {} within {timeout:?}",
                    socket.display()
                )
            })?
        })?;
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("admin client thread panicked"))?
}

async fn exchange<Resp: DeserializeOwned>(
    socket: &Path,
    route: &str,
    body: Vec<u8>,
) -> anyhow::Result<Reply<Resp>> {
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(Reply::NoDaemon);
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot connect to admin socket {}", socket.display()));
        }
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("admin socket handshake")?;
    let conn_task = tokio::spawn(conn);
    let request = hyper::Request::post(route)
        .header(hyper::header::HOST, "ess-admin")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .context("building admin request")?;
    let response = sender
        .send_request(request)
        .await
        .context("admin request")?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("reading admin answer")?
        .to_bytes();
    conn_task.abort();
    if status.is_success() {
        let value = serde_json::from_slice(&bytes)
            .with_context(|| format!("bad answer from the daemon on {route}"))?;
        return Ok(Reply::Answer(Ok(value)));
    }
    match serde_json::from_slice::<WireError>(&bytes) {
        Ok(e) => Ok(Reply::Answer(Err(e.into()))),
        Err(_) => Ok(Reply::Answer(Err(AdminError::Remote {
            usage: false,
            message: format!(
                "daemon answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ),
        }))),
    }
}
