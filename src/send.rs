//! `ess send`: read events (JSON object, array or NDJSON; `-` = stdin), push them in batches
//! over mTLS, re-send a batch whose answer never came (safe: idempotency keys), and count.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::UsageError;
use crate::client::Client;

/// Most events per request.
pub(crate) const BATCH_EVENTS: usize = 500;
/// Most body bytes per request (well under the default max_body).
pub(crate) const BATCH_BYTES: usize = 1 << 20;

/// One event read from an input, with where it came from (for error messages).
pub(crate) struct InputEvent {
    pub origin: String,
    pub json: String,
}

/// Reads events from `path` (`-` = stdin).
pub(crate) fn read_events(path: &Path) -> anyhow::Result<Vec<InputEvent>> {
    let name = path.display().to_string();
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read stdin")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?
    };
    let mut out = Vec::new();
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(items)) => {
            for (i, v) in items.into_iter().enumerate() {
                out.push(InputEvent {
                    origin: format!("{name}: event {i}"),
                    json: v.to_string(),
                });
            }
        }
        Ok(v @ Value::Object(_)) => out.push(InputEvent {
            origin: name.clone(),
            json: v.to_string(),
        }),
        Ok(_) => {
            return Err(UsageError(format!(
                "{name}: expected a JSON object, an array of objects, or NDJSON"
            ))
            .into());
        }
        Err(_) => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(line)
                    .map_err(|e| UsageError(format!("{name}:{}: not JSON: {e}", i + 1)))?;
                out.push(InputEvent {
                    origin: format!("{name}:{}", i + 1),
                    json: v.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Totals of a send.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    pub accepted: u64,
    pub duplicates: u64,
}

/// Where to send and as whom.
pub(crate) struct Target {
    pub url: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Sends `events` in batches; stops at the first rejected batch with its reason (a 4xx is
/// a [`UsageError`]: the events are wrong, not the network), and gives up on a batch that
/// has had no answer (or only 503s) for `timeout`.
pub(crate) async fn send(
    target: &Target,
    events: &[InputEvent],
    show_progress: bool,
    timeout: Duration,
) -> anyhow::Result<Totals> {
    let mut client = Client::new(&target.url, &target.ca, Some((&target.cert, &target.key)))?;
    let bar = if show_progress && events.len() >= 2 * BATCH_EVENTS {
        let bar = indicatif::ProgressBar::new(events.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} events ({rate}, eta {eta})",
            )
            .map(|s| {
                s.with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0} events/s", state.per_sec());
                    },
                )
            })
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let mut totals = Totals::default();
    let mut start = 0;
    while start < events.len() {
        let mut end = start;
        let mut size = 2;
        while end < events.len()
            && end - start < BATCH_EVENTS
            && (end == start || size + events[end].json.len() < BATCH_BYTES)
        {
            size += events[end].json.len() + 1;
            end += 1;
        }
        let batch = &events[start..end];
        let body = format!(
            "[{}]",
            batch
                .iter()
                .map(|e| e.json.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let answer = send_batch(&mut client, body, timeout).await?;
        let v = answer.json();
        if answer.status != hyper::StatusCode::ACCEPTED {
            let origin = v["index"]
                .as_u64()
                .and_then(|i| batch.get(i as usize))
                .map(|e| e.origin.clone());
            let field = v["field"]
                .as_str()
                .map(|f| format!(" (field {f})"))
                .unwrap_or_default();
            let error = v["error"].as_str().unwrap_or("rejected");
            let at = origin.map(|o| format!("{o}: ")).unwrap_or_default();
            let message = format!(
                "{at}{error}{field} [HTTP {}]; {} events before this batch were accepted ({} duplicates)",
                answer.status.as_u16(),
                totals.accepted,
                totals.duplicates
            );
            if answer.status.is_client_error() {
                return Err(UsageError(message).into());
            }
            bail!(message);
        }
        totals.accepted += v["accepted"].as_u64().unwrap_or(0);
        totals.duplicates += v["duplicates"].as_u64().unwrap_or(0);
        if let Some(b) = &bar {
            b.inc(batch.len() as u64);
        }
        start = end;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(totals)
}

/// Sends one batch until it gets a final answer: re-sent when the answer never came or the
/// server said 503 (both safe: the same idempotency keys are sent again).
async fn send_batch(
    client: &mut Client,
    body: String,
    timeout: Duration,
) -> anyhow::Result<crate::client::Answer> {
    let mut delay = Duration::from_millis(250);
    let mut last_problem = String::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempt = 0u32;
    while tokio::time::Instant::now() < deadline {
        attempt += 1;
        match client.post_events(body.clone(), false).await {
            Ok(a) if a.status == hyper::StatusCode::SERVICE_UNAVAILABLE => {
                last_problem = format!(
                    "server busy: {}",
                    a.json()["error"].as_str().unwrap_or("503")
                );
                let wait = a
                    .retry_after
                    .map_or(delay, |s| Duration::from_secs(s.min(30)));
                tracing::warn!(
                    attempt,
                    wait_secs = wait.as_secs_f32(),
                    "{last_problem}; retrying"
                );
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + wait)).await;
            }
            Ok(a) => return Ok(a),
            Err(e @ crate::client::ClientError::Setup(_)) => return Err(e.into()),
            Err(e) => {
                last_problem = e.to_string();
                tracing::warn!(attempt, error = %e, "batch not acknowledged; re-sending");
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + delay)).await;
            }
        }
        delay = (delay * 2).min(Duration::from_secs(8));
    }
    bail!("gave up after {attempt} attempt(s) in {timeout:?} (see --timeout): {last_problem}")
}
