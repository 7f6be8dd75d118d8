//! The ingest API: `POST /v1/events` and `GET /v1/events/{key}` over mutual TLS (SPEC §5).
//!
//! A connection is: TLS handshake (bounded by [`HANDSHAKE_TIMEOUT`]; client certificate
//! required and chained to `client_ca`), then HTTP/1.1 served by hyper with a header-read
//! timeout, bodies capped at `max_body` and read within [`BODY_TIMEOUT`]. A client whose
//! certificate is valid but not in `allowed_clients` gets 403 for every request.
//!
//! Architecture invariant: a 202 is written only after [`Feed::append`] returned, which
//! is after the group commit's fsync. Ingest knows nothing of connectors: receipts ask a
//! [`Receipts`] implementation supplied by the daemon.

pub mod tls;
pub mod validate;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::event::Event;
use crate::feed::Feed;
use crate::health::{Health, Refusal};

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the request line and headers may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a request body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long shutdown waits for requests under way.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Per-connector delivery state of an event, for receipts.
pub trait Receipts: Send + Sync {
    /// connector name -> `delivered` | `pending` | `retrying` | `dead` | `filtered`.
    fn targets(&self, event: &Event) -> BTreeMap<String, String>;
}

/// Counters the ingest reports (metrics); the default does nothing.
pub trait IngestHooks: Send + Sync {
    fn accepted(&self, _accepted: u64, _duplicates: u64, _latency: Duration) {}
    fn rejected(&self, _reason: &str) {}
}

/// What request handlers share.
pub struct IngestState {
    pub feed: Feed,
    pub max_body: u64,
    /// Whether events are taken now (shutdown, low disk, database errors).
    pub health: Arc<Health>,
    pub allowed_clients: Vec<String>,
    pub receipts: Arc<dyn Receipts>,
    pub hooks: Arc<dyn IngestHooks>,
}

/// Accepts connections until `shutdown` turns true, then lets requests under way finish
/// (up to [`DRAIN_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<IngestState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many connections; closing this one");
                    continue;
                };
                let (acceptor, state, shutdown) = (acceptor.clone(), state.clone(), shutdown.clone());
                conns.spawn(async move {
                    connection(tcp, peer, acceptor, state, shutdown).await;
                    drop(slot);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    state.health.set_shutting_down();
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("shutdown: some ingest connections did not finish in time");
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    acceptor: TlsAcceptor,
    state: Arc<IngestState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "TLS handshake refused");
            state.hooks.rejected("tls");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let names = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(tls::client_names)
        .unwrap_or_default();
    let allowed = tls::is_allowed(&names, &state.allowed_clients);
    if !allowed {
        tracing::warn!(%peer, client = ?names, "client certificate is valid but not in allowed_clients");
    }
    let svc_state = state.clone();
    let service = service_fn(move |req| {
        let state = svc_state.clone();
        async move { Ok::<_, Infallible>(handle(req, &state, allowed).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        }
    }
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn unavailable(retry_after_secs: u32, why: &str) -> Resp {
    let mut r = json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"error": why}));
    r.headers_mut().insert(RETRY_AFTER, retry_after_secs.into());
    r
}

async fn handle(req: Request<Incoming>, state: &IngestState, allowed: bool) -> Resp {
    if !allowed {
        state.hooks.rejected("forbidden");
        return json_response(
            StatusCode::FORBIDDEN,
            json!({"error": "client certificate is not in allowed_clients"}),
        );
    }
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::POST, "/v1/events") => post_events(req, state).await,
        (&Method::GET, p) if p.starts_with("/v1/events/") => {
            receipt(&p["/v1/events/".len()..], state)
        }
        (_, "/v1/events") => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "use POST /v1/events"}),
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "not found; the API is POST /v1/events and GET /v1/events/{key}"}),
        ),
    }
}

async fn post_events(req: Request<Incoming>, state: &IngestState) -> Resp {
    let started = Instant::now();
    if let Some(refusal) = state.health.refusal() {
        if !matches!(refusal, Refusal::ShuttingDown) {
            tracing::warn!(reason = %refusal.reason(), "refusing events");
        }
        state.hooks.rejected("unavailable");
        return unavailable(refusal.retry_after_secs(), &refusal.reason());
    }
    let media = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ndjson = match media.as_str() {
        "application/json" => false,
        "application/x-ndjson" | "application/ndjson" => true,
        _ => {
            state.hooks.rejected("unsupported_media_type");
            return json_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({"error": format!("Content-Type must be application/json or application/x-ndjson, not {media:?}")}),
            );
        }
    };
    let too_large = || {
        json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!("body is larger than max_body ({} bytes)", state.max_body)}),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body) {
        state.hooks.rejected("too_large");
        return too_large();
    }
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(validate::trace_id_from_traceparent);
    let limit = usize::try_from(state.max_body).unwrap_or(usize::MAX);
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), limit).collect())
            .await
        {
            Err(_) => {
                state.hooks.rejected("timeout");
                return json_response(
                    StatusCode::REQUEST_TIMEOUT,
                    json!({"error": "body did not arrive in time"}),
                );
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                state.hooks.rejected("too_large");
                return too_large();
            }
            Ok(Err(e)) => {
                state.hooks.rejected("bad_request");
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("cannot read body: {e}")}),
                );
            }
            Ok(Ok(b)) => b.to_bytes(),
        };
    let events = match validate::parse_body(&body, ndjson, traceparent.as_deref()) {
        Ok(ev) => ev,
        Err(rejection) => {
            state.hooks.rejected("bad_request");
            return json_response(
                StatusCode::BAD_REQUEST,
                serde_json::to_value(&rejection).unwrap_or_default(),
            );
        }
    };
    let n_events = events.len();
    match state.feed.append_batch(events).await {
        Ok(out) => {
            state.hooks.accepted(
                out.accepted as u64,
                out.duplicates as u64,
                started.elapsed(),
            );
            tracing::debug!(n_events, accepted = out.accepted, duplicates = out.duplicates, first_seq = ?out.first_seq, last_seq = ?out.last_seq, "events committed");
            json_response(
                StatusCode::ACCEPTED,
                serde_json::to_value(&out).unwrap_or_default(),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, n_events, "events not committed");
            state.hooks.rejected("internal");
            unavailable(
                5,
                "events could not be stored; nothing of this request was committed; retry",
            )
        }
    }
}

fn receipt(raw_key: &str, state: &IngestState) -> Resp {
    let key = percent_encoding::percent_decode_str(raw_key).decode_utf8_lossy();
    match state.feed.get_by_key(&key) {
        Ok(Some(event)) => json_response(
            StatusCode::OK,
            json!({
                "seq": event.seq,
                "received_at": event.received_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "trace_id": event.trace_id,
                "targets": state.receipts.targets(&event),
            }),
        ),
        Ok(None) => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "no event with this idempotency key"}),
        ),
        Err(e) => {
            tracing::error!(error = %e, "receipt lookup failed");
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "lookup failed"}),
            )
        }
    }
}
