//! `ess send`: read events (JSON object, array or NDJSON; `-` = stdin), push them in batches
//! over mTLS, re-send a batch whose answer never came (safe: idempotency keys), and count.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::client::Client;

/// Most events per request.
pub const BATCH_EVENTS: usize = 500;
/// Most body bytes per request (well under the default max_body).
pub const BATCH_BYTES: usize = 1 << 20;
/// Attempts per batch before giving up (no answer, or 503).
const MAX_ATTEMPTS: u32 = 12;

/// One event read from an input, with where it came from (for error messages).
pub struct InputEvent {
    pub origin: String,
    pub json: String,
}

/// Reads events from `path` (`-` = stdin).
pub fn read_events(path: &Path) -> anyhow::Result<Vec<InputEvent>> {
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
        Ok(_) => bail!("{name}: expected a JSON object, an array of objects, or NDJSON"),
        Err(_) => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(line)
                    .with_context(|| format!("{name}:{}: not JSON", i + 1))?;
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
pub struct Totals {
    pub accepted: u64,
    pub duplicates: u64,
}

/// Where to send and as whom.
pub struct Target {
    pub url: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Sends `events` in batches; stops at the first rejected batch with its reason.
pub async fn send(
    target: &Target,
    events: &[InputEvent],
    show_progress: bool,
) -> anyhow::Result<Totals> {
    let mut client = Client::new(&target.url, &target.ca, Some((&target.cert, &target.key)))?;
    let bar = if show_progress && events.len() >= 2 * BATCH_EVENTS {
        let bar = indicatif::ProgressBar::new(events.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} events ({per_sec}, eta {eta})",
            )
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
        let answer = send_batch(&mut client, body).await?;
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
            bail!(
                "{at}{error}{field} [HTTP {}]; {} events before this batch were accepted ({} duplicates)",
                answer.status.as_u16(),
                totals.accepted,
                totals.duplicates
            );
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
async fn send_batch(client: &mut Client, body: String) -> anyhow::Result<crate::client::Answer> {
    let mut delay = Duration::from_millis(250);
    let mut last_problem = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
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
                tokio::time::sleep(wait).await;
            }
            Ok(a) => return Ok(a),
            Err(e @ crate::client::ClientError::Setup(_)) => return Err(e.into()),
            Err(e) => {
                last_problem = e.to_string();
                tracing::warn!(attempt, error = %e, "batch not acknowledged; re-sending");
                tokio::time::sleep(delay).await;
            }
        }
        delay = (delay * 2).min(Duration::from_secs(8));
    }
    bail!("gave up after {MAX_ATTEMPTS} attempts: {last_problem}")
}
