//! The API behind the TLS door: `POST /v1/events` and `GET /v1/events/{key}` (SPEC §5),
//! for a connection whose client certificate verified.
//!
//! A request body is reserved in the [`BodyBudget`] before it is buffered and parsed, and
//! answered 202 only after [`Feed::append`](crate::feed::Feed::append) returned (after the
//! group commit's fsync); every refusal (400, 403, 408, 413, 415, 503) commits nothing.

use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::budget::{BodyBudget, Reservation};
use super::{BUSY_RETRY_AFTER_SECS, Door, IngestState, Limits, Peer, validate};
use crate::health::Refusal;

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

/// The 202 answer, serialized straight from the outcome (no JSON tree in between).
fn accepted(out: &crate::feed::AppendOutcome) -> Resp {
    let mut body = Vec::with_capacity(96);
    // Counts and optional seqs under fixed names: serializing them cannot fail.
    let _ = serde_json::to_writer(&mut body, out);
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::ACCEPTED;
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

pub(super) async fn handle(req: Request<Incoming>, door: &Door, peer: &Peer) -> Resp {
    let state = &door.state;
    if let Err(e) = peer.still_trusted(&door.client_auth) {
        tracing::warn!(peer = %peer.addr, error = %e, "client certificate no longer accepted (client_crl changed); closing its connection");
        state.hooks.rejected("tls");
        let mut r = json_response(
            StatusCode::FORBIDDEN,
            json!({"error": format!("client certificate is no longer accepted: {e}")}),
        );
        r.headers_mut()
            .insert(CONNECTION, hyper::header::HeaderValue::from_static("close"));
        return r;
    }
    if !peer.allowed {
        state.hooks.rejected("forbidden");
        return json_response(
            StatusCode::FORBIDDEN,
            json!({"error": "client certificate is not in allowed_clients"}),
        );
    }
    let uri = req.uri().clone();
    match (req.method(), uri.path()) {
        (&Method::POST, "/v1/events") => post_events(req, door).await,
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

/// Why a body was not read whole.
enum BodyRefusal {
    TooLarge,
    /// `max_inflight_bytes` is spent; `unread`: the body was left unread (the client
    /// waits for `100 Continue` before it sends it), so the connection must close.
    Busy {
        unread: bool,
    },
    Timeout,
    Read(hyper::Error),
}

/// Reads a body into one buffer whose every byte of capacity is reserved in the budget
/// first: all of a declared length at once, a chunked body as it grows. A body that does
/// not fit is still read to its end, but thrown away as it comes (no memory held), so the
/// client gets its 503 on a connection it can go on using — unless the client asked
/// `Expect: 100-continue` and does not fit from the start: then it is refused before it
/// sends anything (hyper sends `100 Continue` only once the body is read).
async fn read_body(
    body: Incoming,
    declared: Option<u64>,
    expects_continue: bool,
    limits: &Limits,
    budget: &Arc<BodyBudget>,
) -> Result<(Vec<u8>, Reservation), BodyRefusal> {
    let mut reservation = budget.reserve(declared.unwrap_or(0));
    if reservation.is_none() && expects_continue {
        return Err(BodyRefusal::Busy { unread: true });
    }
    // Set once the body passed `max_body`: a time-out while the rest is thrown away is
    // still "too large".
    let too_large = std::sync::atomic::AtomicBool::new(false);
    let read = async {
        // Within max_body (checked by the caller), which fits in memory.
        let first = reservation.as_ref().map_or(0, Reservation::bytes);
        let mut buf = Vec::with_capacity(usize::try_from(first).unwrap_or(0));
        let mut body = body;
        let mut seen: u64 = 0;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(BodyRefusal::Read)?.into_data() else {
                continue; // trailers
            };
            seen += data.len() as u64;
            if seen > limits.max_body {
                too_large.store(true, std::sync::atomic::Ordering::Relaxed);
                // Nothing of it is kept while the rest is thrown away.
                reservation = None;
                drop(std::mem::take(&mut buf));
                discard_rest(&mut body, limits, seen).await;
                return Err(BodyRefusal::TooLarge);
            }
            let Some(held) = reservation.as_mut() else {
                continue; // refused: drained, not kept
            };
            let needed = buf.len() + data.len();
            if needed > buf.capacity() {
                let cap = needed
                    .max(buf.capacity() * 2)
                    .min(usize::try_from(limits.max_body).unwrap_or(usize::MAX));
                if !held.grow_to(cap as u64) {
                    reservation = None;
                    buf = Vec::new();
                    continue;
                }
                buf.reserve_exact(cap - buf.len());
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf)
    };
    match tokio::time::timeout(limits.body_timeout, read).await {
        Err(_) if too_large.load(std::sync::atomic::Ordering::Relaxed) => {
            Err(BodyRefusal::TooLarge)
        }
        Err(_) => Err(BodyRefusal::Timeout),
        Ok(Err(e)) => Err(e),
        Ok(Ok(buf)) => match reservation {
            Some(r) => Ok((buf, r)),
            None => Err(BodyRefusal::Busy { unread: false }),
        },
    }
}

/// Reads and throws away the rest of a body refused as too large, one frame at a time, up
/// to four times `max_body` in all: a client still sending then gets to read its 413,
/// where closing on it would leave it a connection reset and no reason. (A client that
/// asked `Expect: 100-continue` is refused before it sends the body.)
async fn discard_rest(body: &mut Incoming, limits: &Limits, mut seen: u64) {
    let most = limits.max_body.saturating_mul(4);
    while seen <= most {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len() as u64),
            Some(Err(_)) | None => return,
        }
    }
}

/// The answer to a body that was not read whole (other than too large).
fn body_refused(refusal: BodyRefusal, door: &Door) -> Resp {
    let state = &door.state;
    match refusal {
        BodyRefusal::Busy { unread } => {
            state.hooks.rejected("busy");
            tracing::debug!(
                in_flight = door.budget.in_use(),
                "request refused: max_inflight_bytes is spent"
            );
            let mut r = unavailable(
                BUSY_RETRY_AFTER_SECS,
                &format!(
                    "too many request bodies in flight (ingest.max_inflight_bytes = {} bytes); nothing of this request was committed; retry",
                    door.budget.total()
                ),
            );
            if unread {
                // The client holds its body back: this connection cannot carry another
                // request, say so.
                r.headers_mut()
                    .insert(CONNECTION, hyper::header::HeaderValue::from_static("close"));
            }
            r
        }
        BodyRefusal::Timeout => {
            state.hooks.rejected("timeout");
            json_response(
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "body did not arrive in time"}),
            )
        }
        BodyRefusal::Read(e) => {
            state.hooks.rejected("bad_request");
            json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("cannot read body: {e}")}),
            )
        }
        BodyRefusal::TooLarge => {
            state.hooks.rejected("too_large");
            json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("body is larger than max_body ({} bytes)", state.limits.max_body)}),
            )
        }
    }
}

/// Whether the body is NDJSON (`Ok(true)`) or JSON, by `Content-Type`; the media type
/// given if it is neither.
fn ndjson_by_content_type(req: &Request<Incoming>) -> Result<bool, String> {
    let media = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = media.split(';').next().unwrap_or("").trim();
    let is = |name: &str| media.eq_ignore_ascii_case(name);
    if is("application/json") {
        Ok(false)
    } else if is("application/x-ndjson") || is("application/ndjson") {
        Ok(true)
    } else {
        Err(media.to_ascii_lowercase())
    }
}

async fn post_events(req: Request<Incoming>, door: &Door) -> Resp {
    let state = &door.state;
    let started = Instant::now();
    if let Some(refusal) = state.health.refusal() {
        if !matches!(refusal, Refusal::ShuttingDown) {
            tracing::warn!(reason = %refusal.reason(), "refusing events");
        }
        state.hooks.rejected("unavailable");
        return unavailable(refusal.retry_after_secs(), &refusal.reason());
    }
    let ndjson = match ndjson_by_content_type(&req) {
        Ok(nd) => nd,
        Err(media) => {
            state.hooks.rejected("unsupported_media_type");
            return json_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({"error": format!("Content-Type must be application/json or application/x-ndjson, not {media:?}")}),
            );
        }
    };
    let limits = &state.limits;
    // hyper has already refused a request whose Content-Length is not one number.
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = req
        .headers()
        .get(hyper::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if declared.is_some_and(|n| n > limits.max_body) {
        if !expects_continue {
            let mut body = req.into_body();
            let rest = discard_rest(&mut body, limits, 0);
            let _ = tokio::time::timeout(limits.body_timeout, rest).await;
        }
        return body_refused(BodyRefusal::TooLarge, door);
    }
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(validate::trace_id_from_traceparent);
    // Held until the answer: the parsed events take memory too, until they are committed.
    let read = read_body(
        req.into_body(),
        declared,
        expects_continue,
        limits,
        &door.budget,
    );
    let (body, _reservation) = match read.await {
        Ok(read) => read,
        Err(refusal) => return body_refused(refusal, door),
    };
    let parsed = validate::parse_body(&body, ndjson, traceparent.as_deref());
    drop(body);
    let events = match parsed {
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
            accepted(&out)
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
    let found = state.feed.get_by_key(&key).and_then(|e| {
        e.map(|e| state.receipts.targets(&e).map(|t| (e, t)))
            .transpose()
    });
    match found {
        Ok(Some((event, targets))) => json_response(
            StatusCode::OK,
            json!({
                "seq": event.seq,
                "received_at": event.received_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "trace_id": event.trace_id,
                "targets": targets,
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
