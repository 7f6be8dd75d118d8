//! `ess map preview` and `ess map from-copybook` (first cut; the full versions come with #3).

use std::path::Path;

use anyhow::Context;

use crate::config::Diagnostics;
use crate::config::connector;
use crate::event::Event;

/// The record a map makes from one event (JSON as on the wire), with a column ruler.
pub fn preview(
    map_path: &Path,
    event_json: &str,
    timezone: chrono_tz::Tz,
) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(map_path)
        .with_context(|| format!("cannot read {}", map_path.display()))?;
    let loaded = connector::parse(map_path, &text).map_err(|d| Diagnostics(vec![d]))?;
    let mapping =
        super::Mapping::compile(&loaded, &super::MapContext { timezone }).map_err(Diagnostics)?;
    let v: serde_json::Value = serde_json::from_str(event_json).context("event is not JSON")?;
    let event = Event {
        seq: 1,
        event_type: v["type"].as_str().unwrap_or_default().to_string(),
        payload: v["payload"].as_object().cloned().unwrap_or_default(),
        key: "preview".into(),
        trace_id: "preview".into(),
        ts: None,
        received_at: chrono::Utc::now(),
    };
    let rec = mapping.render(&event)?;
    let line = String::from_utf8_lossy(&rec.bytes)
        .trim_end_matches('\n')
        .to_string();
    let ruler: String = (1..=line.len())
        .map(|i| {
            if i % 10 == 0 {
                char::from(b'0' + ((i / 10) % 10) as u8)
            } else {
                '.'
            }
        })
        .collect();
    Ok(format!("{ruler}\n{line}\n"))
}

/// A map skeleton from a copybook (not yet available in this first cut).
pub fn from_copybook(_copybook: &str, _name: &str) -> anyhow::Result<String> {
    anyhow::bail!("from-copybook is not available in this build yet")
}
