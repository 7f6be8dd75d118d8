//! The status page (`/`): one self-refreshing HTML page an operator reads at a glance,
//! on a desktop or a phone, with no JavaScript.
//!
//! Invariant: every dynamic string goes through maud's `(...)` splice, which HTML-escapes
//! it; the only unescaped text is the static style sheet below. Nothing here can show a
//! payload, because a [`Snapshot`] holds none.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{Condition, ConnectorReport, ConnectorState, Snapshot};

/// Seconds between automatic reloads of the page.
pub(super) const REFRESH_SECS: u32 = 5;

const STYLE: &str = r#"
:root { color-scheme: light dark; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --dim: #57606a; --card: rgba(127,127,127,.08); --bad-text: #cf222e; }
@media (prefers-color-scheme: dark) { :root { --ok: #238636; --warn: #9e6a03; --bad: #da3633; --dim: #8b949e; --card: rgba(127,127,127,.16); --bad-text: #ff7b72; } }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; padding: .75rem; max-width: 72rem; margin-inline: auto; }
h1 { font-size: 1.3rem; margin: 0 0 .25rem; }
h2 { font-size: 1.05rem; margin: 0; overflow-wrap: anywhere; }
.meta { color: var(--dim); font-size: .85rem; margin: 0 0 .75rem; }
.summary { padding: .5rem .75rem; border-radius: .4rem; font-weight: 600; margin-bottom: .75rem; }
.summary.good { background: rgba(26,127,55,.15); }
.summary.attention { background: rgba(207,34,46,.15); }
.grid { display: grid; gap: .75rem; align-items: start; grid-template-columns: repeat(auto-fill, minmax(min(20rem, 100%), 1fr)); }
.card { background: var(--card); border-radius: .5rem; padding: .65rem .8rem; border-left: .35rem solid var(--dim); }
.card.ok { border-left-color: var(--ok); }
.card.retrying, .card.dead-letters { border-left-color: var(--warn); }
.card.blocked, .card.corrupted, .card.not-running { border-left-color: var(--bad); }
.card.paused { border-left-color: var(--warn); }
.card header { display: flex; justify-content: space-between; align-items: baseline; gap: .5rem; flex-wrap: wrap; margin-bottom: .35rem; }
.badge { font-size: .8rem; font-weight: 700; text-transform: uppercase; letter-spacing: .03em; padding: .1rem .45rem; border-radius: 1rem; white-space: nowrap; color: #fff; background: var(--dim); }
.badge.ok { background: var(--ok); }
.badge.retrying, .badge.dead-letters { background: var(--warn); }
.badge.blocked, .badge.corrupted, .badge.not-running { background: var(--bad); }
.badge.paused { background: var(--warn); }
.todo code, .summary code { font-size: .85em; background: rgba(127,127,127,.15); padding: 0 .2rem; border-radius: .2rem; overflow-wrap: anywhere; }
section.actions { margin-top: 1rem; overflow-x: auto; }
section.actions table { border-collapse: collapse; font-size: .85rem; width: 100%; }
section.actions th, section.actions td { text-align: left; padding: .2rem .5rem; border-bottom: 1px solid rgba(127,127,127,.25); vertical-align: top; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem .75rem; margin: 0; }
dt { color: var(--dim); }
dd { margin: 0; overflow-wrap: anywhere; }
.error { color: var(--bad-text); }
section.feed { display: grid; gap: .5rem; grid-template-columns: repeat(auto-fit, minmax(8rem, 1fr)); margin-bottom: .75rem; }
.stat { background: var(--card); border-radius: .5rem; padding: .4rem .7rem; }
.stat .label { display: block; color: var(--dim); font-size: .8rem; }
.stat .value { font-size: 1.15rem; font-weight: 600; }
.stat.low { background: rgba(207,34,46,.15); }
.stat.low .value { color: var(--bad-text); }
.badges { display: flex; gap: .3rem; flex-wrap: wrap; }
.abs { display: block; color: var(--dim); font-size: .8rem; }
footer { color: var(--dim); font-size: .8rem; margin-top: 1rem; }
"#;

/// Renders the whole page for `snapshot`, as of `now`.
pub(super) fn render(snapshot: &Snapshot, now: DateTime<Utc>) -> String {
    let n_attention = snapshot
        .connectors
        .iter()
        .filter(|c| c.condition.needs_attention())
        .count();
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content=(REFRESH_SECS);
                title {
                    @if n_attention > 0 { "(" (n_attention) ") " }
                    "ESS status"
                }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "ESS status" }
                p.meta {
                    "version " (snapshot.version)
                    @if let Some(up) = snapshot.uptime_secs { " · up " (human_duration(up as f64)) }
                    " · as of " (now.format("%Y-%m-%d %H:%M:%S UTC"))
                    @if let Some(r) = snapshot.last_reload.as_ref().filter(|r| r.ok) {
                        " · maps reloaded " (when(&r.at, now))
                    }
                }
                (banners(snapshot))
                @if snapshot.connectors.is_empty() {
                    p.summary.attention { "No connectors configured." }
                } @else {
                    (summary(n_attention, snapshot.connectors.len()))
                }
                section.feed aria-label="Feed" {
                    (stat("Feed last seq", snapshot.feed.last_seq.to_string()))
                    (stat("Events kept", snapshot.feed.events.to_string()))
                    (stat("Feed size", human_bytes(snapshot.feed.size_bytes)))
                    @if let Some(rate) = snapshot.ingest_rate_per_sec {
                        (stat("Ingest rate", format!("{rate:.1} events/s")))
                    }
                    div.stat.low[snapshot.disk_low()] {
                        span.label { "Free disk" }
                        span.value { (human_bytes(snapshot.free_disk_bytes)) }
                    }
                }
                div.grid {
                    @for c in &snapshot.connectors {
                        (connector_card(c, now))
                    }
                }
                @if !snapshot.sources.is_empty() {
                    (sources(snapshot))
                }
                @if !snapshot.recent_actions.is_empty() {
                    (actions(snapshot, now))
                }
                footer {
                    "Refreshes every " (REFRESH_SECS) " s. Also: "
                    a href="/api/status" { "/api/status" } ", "
                    a href="/metrics" { "/metrics" } ", "
                    a href="/healthz" { "/healthz" } "."
                }
            }
        }
    };
    markup.into_string()
}

/// What stops or threatens the whole appliance, each with what to do.
fn banners(snapshot: &Snapshot) -> Markup {
    html! {
        @if !snapshot.running {
            p.summary.attention {
                "ess is not running: this is what the database holds. Start it: "
                code { "systemctl start ess" }
            }
        }
        @if let Some(reason) = snapshot.health.refusal.as_ref().filter(|_| snapshot.running) {
            p.summary.attention {
                "The ingest refuses events (503): " (reason) "."
                @if snapshot.disk_low() { " Free disk space in the data folder, or lower retention.feed." }
            }
        } @else if snapshot.disk_low() {
            p.summary.attention {
                "Free disk " (human_bytes(snapshot.free_disk_bytes)) " is below the minimum of "
                (human_bytes(snapshot.min_free_disk_bytes)) ": the ingest refuses events (503)."
            }
        }
        @for d in &snapshot.health.degraded {
            p.summary.attention { "Degraded: " (d) "." }
        }
        @if let Some(r) = snapshot.last_reload.as_ref().filter(|r| !r.ok) {
            p.summary.attention {
                "The last reload (" (utc(&r.at)) ") was refused with "
                (r.n_problems) " problem(s); the previous maps keep running."
                @if let Some(first) = &r.first_problem { " First: " code { (first) } }
                " Run " code { "ess check" } "."
            }
        }
    }
}

/// `All 3 connectors OK.`, `1 of 1 connector needs attention.`, `2 of 5 connectors need
/// attention.`
fn summary(n_attention: usize, n_connectors: usize) -> Markup {
    let noun = if n_connectors == 1 {
        "connector"
    } else {
        "connectors"
    };
    html! {
        @if n_attention == 0 {
            p.summary.good {
                @if n_connectors == 1 { "The connector is OK." }
                @else { "All " (n_connectors) " " (noun) " OK." }
            }
        } @else {
            p.summary.attention {
                (n_attention) " of " (n_connectors) " " (noun)
                @if n_attention == 1 { " needs" } @else { " need" }
                " attention."
            }
        }
    }
}

fn stat(label: &str, value: String) -> Markup {
    html! { div.stat { span.label { (label) } span.value { (value) } } }
}

/// `3 (map 2, skipped 1)`.
fn dead_counts(c: &ConnectorReport) -> String {
    if c.dead_by_reason.is_empty() {
        return c.dead_letters.to_string();
    }
    let parts: Vec<String> = c
        .dead_by_reason
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    format!("{} ({})", c.dead_letters, parts.join(", "))
}

/// The state line, and what the operator can do about it.
fn state_rows(c: &ConnectorReport, now: DateTime<Utc>) -> Markup {
    let since = html! { @if let Some(s) = &c.since { " since " (when(s, now)) } };
    html! {
        dt { "State" }
        @match &c.state {
            ConnectorState::Ok => dd { "ok" (since) },
            ConnectorState::Retrying => dd { "retrying, later events wait;" (since) },
            ConnectorState::Blocked => dd.error { "blocked, later events are held;" (since) },
            ConnectorState::OutsideSchedule { next_open } => dd {
                "outside schedule"
                @if let Some(t) = next_open { "; opens " (due(t, now)) }
            },
            ConnectorState::Paused => dd.error { "paused" (since) },
            ConnectorState::Corrupted { corrupted_seq } => dd.error {
                @if let Some(seq) = corrupted_seq { "stopped at seq " (seq) }
                @else { "stopped" }
                ": a stored value failed its checksum (run ess verify)"
            },
            ConnectorState::NotRunning => dd.error {
                @if c.destination.is_none() { "not running: no map file names it any more" }
                @else { "not running" }
            },
        }
        @let hint = hint(c);
        @if let Some(hint) = hint {
            dt { "To do" } dd.todo { (hint) }
        }
        @if let Some(p) = &c.paused {
            dt { "Paused" } dd { "by " (p.by) @if !p.reason.is_empty() { ": " (p.reason) } " — " (when(&p.at, now)) }
        }
        @if c.state == ConnectorState::Blocked || c.state == ConnectorState::Retrying {
            @if let Some(r) = &c.retry {
                dt { "Head" } dd { "seq " (r.seq) }
            }
        }
    }
}

/// The command that deals with the connector's condition, if one does.
fn hint(c: &ConnectorReport) -> Option<Markup> {
    let t = &c.name;
    let head = c.retry.as_ref().map_or(0, |r| r.seq);
    Some(match (&c.state, c.condition) {
        (ConnectorState::Blocked, _) => html! {
            "fix the target, then " code { "ess retry --target " (t) }
            "; or, if this one event can never go, " code { "ess skip --target " (t) " --seq " (head) }
        },
        (ConnectorState::Retrying, _) => html! {
            "fix the target, then " code { "ess retry --target " (t) } " to try now"
        },
        (ConnectorState::Paused, _) => html! { code { "ess resume --target " (t) } },
        (ConnectorState::Corrupted { .. }, _) => {
            html! { code { "ess verify" } " lists every damaged seq" }
        }
        (_, Condition::DeadLetters) => html! {
            code { "ess list --dead --target " (t) } ", fix the cause, then "
            code { "ess replay --dead --target " (t) } "; or settle them with "
            code { "ess dead ack|discard --target " (t) }
        },
        _ => return None,
    })
}

fn connector_card(c: &ConnectorReport, now: DateTime<Utc>) -> Markup {
    let condition = c.condition;
    let class = condition.label().replace(' ', "-");
    html! {
        section class={ "card " (class) } aria-label={ "Connector " (c.name) } {
            header {
                h2 { (c.name) }
                span.badges {
                    span class={ "badge " (class) } { (condition.label()) }
                    @if c.dead_letters > 0 && condition != Condition::DeadLetters {
                        " " span.badge.dead-letters { (c.dead_letters) " dead" }
                    }
                }
            }
            dl {
                @if let Some(d) = &c.destination { dt { "Delivers to" } dd { (d) } }
                (state_rows(c, now))
                dt { "Cursor" } dd { "seq " (c.cursor) }
                dt { "Waiting" }
                dd {
                    (c.lag_events) " events"
                    @if c.requeued > 0 { " + " (c.requeued) " replayed" }
                    @if let Some(secs) = c.oldest_pending_secs { ", oldest " (human_duration(secs)) " old" }
                }
                dt { "Delivered" } dd { (c.delivered) }
                @if let Some(r) = &c.retry {
                    dt { "Retry" }
                    dd {
                        "attempt " (r.attempts)
                        @if r.max_tries != u32::MAX { " of " (r.max_tries) }
                        "; next " (due(&r.next_at, now))
                    }
                }
                dt { "Last success" }
                dd {
                    @match &c.last_success { Some(t) => (when(t, now)), None => "never" }
                }
                @if let Some(e) = &c.last_error {
                    dt { "Last error" }
                    dd.error {
                        (e.message)
                        @if let Some(at) = &e.at { " — " (when(at, now)) }
                    }
                }
                dt { "Dead letters" }
                dd class=[(c.dead_letters > 0).then_some("error")] { (dead_counts(c)) }
            }
        }
    }
}

/// Pickup sources: legacy files into the feed, and the files and records held back.
fn sources(snapshot: &Snapshot) -> Markup {
    html! {
        section.sources aria-label="Pickup sources" {
            h2 { "Pickup sources" }
            table {
                thead { tr { th { "Source" } th { "Files taken" } th { "Records" } th { "Bad records" } th { "Being read" } th { "Waiting" } th { "Oldest unread" } } }
                tbody {
                    @for src in &snapshot.sources {
                        tr {
                            td { (src.name) }
                            td { (src.files_taken) }
                            td { (src.records) }
                            td class=[(src.bad_records > 0).then_some("error")] { (src.bad_records) }
                            td { (src.files_reading) }
                            td { (src.files_waiting.map_or_else(|| "-".to_owned(), |w| w.to_string())) }
                            td { (src.oldest_unread_age_secs.filter(|a| *a > 0).map_or_else(|| "-".to_owned(), |a| human_duration(a as f64))) }
                        }
                        @for h in &src.files_held {
                            tr.error { td colspan="7" { (h.state) " " (h.file) ": " (h.reason) } }
                        }
                        @for b in &src.recent_bad {
                            tr.error { td colspan="7" { "bad record " (b.file) " #" (b.record_index) " (byte " (b.offset) "), field " (b.field) " at byte " (b.field_offset) ": " (b.message) } }
                        }
                        @if let Some(e) = &src.last_error {
                            tr.error { td colspan="7" { "last error: " (e) } }
                        }
                    }
                }
            }
        }
    }
}

/// The newest operator actions.
fn actions(snapshot: &Snapshot, now: DateTime<Utc>) -> Markup {
    html! {
        section.actions aria-label="Operator actions" {
            h2 { "Operator actions" }
            table {
                thead { tr { th { "When" } th { "Who" } th { "Connector" } th { "Action" } th { "What" } } }
                tbody {
                    @for a in &snapshot.recent_actions {
                        tr {
                            td { (when(&a.at, now)) }
                            td { (a.by) }
                            td { (a.target) }
                            td { (a.action) }
                            td { (a.detail) }
                        }
                    }
                }
            }
        }
    }
}

/// An RFC 3339 time as `2026-11-27 01:50:00 UTC` (as given if it does not parse).
fn utc(rfc3339: &str) -> String {
    DateTime::parse_from_rfc3339(rfc3339).map_or_else(
        |_| rfc3339.to_owned(),
        |t| {
            t.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        },
    )
}

/// A past time: how long ago first, then the time itself in UTC, smaller. A string that
/// is not RFC 3339 is shown as given.
fn when(rfc3339: &str, now: DateTime<Utc>) -> Markup {
    relative(rfc3339, now, false)
}

/// A time something is due: "in 2 min" while ahead, "due 10 s ago" once passed (the page
/// may be a refresh behind the connector).
fn due(rfc3339: &str, now: DateTime<Utc>) -> Markup {
    relative(rfc3339, now, true)
}

fn relative(rfc3339: &str, now: DateTime<Utc>, is_due: bool) -> Markup {
    let Ok(t) = DateTime::parse_from_rfc3339(rfc3339) else {
        return html! { (rfc3339) };
    };
    let t = t.with_timezone(&Utc);
    let secs = (now - t).num_milliseconds() as f64 / 1000.0;
    html! {
        @if secs < 0.0 { "in " (human_duration(-secs)) }
        @else if is_due { "due " (human_duration(secs)) " ago" }
        @else { (human_duration(secs)) " ago" }
        " " time.abs datetime=(rfc3339) { (t.format("%Y-%m-%d %H:%M:%S UTC")) }
    }
}

/// `42 s`, `5 min 3 s`, `2 h 5 min`, `3 d 4 h`.
pub fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".to_owned();
    }
    if secs < 10.0 {
        return format!("{secs:.1} s");
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// `512 B`, `1.5 KiB`, `20.0 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(1.5), "1.5 s");
        assert_eq!(human_duration(42.0), "42 s");
        assert_eq!(human_duration(303.0), "5 min 3 s");
        assert_eq!(human_duration(7500.0), "2 h 5 min");
        assert_eq!(human_duration(273600.0), "3 d 4 h");
        assert_eq!(human_duration(f64::NAN), "?");
    }

    #[test]
    fn summary_agrees_in_number() {
        let text = |a, n| summary(a, n).into_string();
        assert!(text(0, 1).contains(">The connector is OK.<"));
        assert!(text(0, 3).contains(">All 3 connectors OK.<"));
        assert!(text(1, 1).contains(">1 of 1 connector needs attention.<"));
        assert!(text(1, 4).contains(">1 of 4 connectors needs attention.<"));
        assert!(text(2, 5).contains(">2 of 5 connectors need attention.<"));
    }

    #[test]
    fn times_read_relative_to_now() {
        let now = DateTime::parse_from_rfc3339("2026-11-27T02:00:00Z")
            .unwrap()
            .to_utc();
        let text = |m: Markup| m.into_string();
        let abs =
            r#" <time class="abs" datetime="2026-11-27T01:55:00Z">2026-11-27 01:55:00 UTC</time>"#;
        assert_eq!(
            text(when("2026-11-27T01:55:00Z", now)),
            format!("5 min 0 s ago{abs}")
        );
        assert_eq!(
            text(due("2026-11-27T01:55:00Z", now)),
            format!("due 5 min 0 s ago{abs}")
        );
        assert!(text(due("2026-11-27T02:00:30Z", now)).starts_with("in 30 s <time"));
        assert_eq!(text(when("yesterday <b>", now)), "yesterday &lt;b&gt;");
    }

    #[test]
    fn bytes_read_naturally() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 * 1024 * 1024 * 1024), "20.0 GiB");
    }
}
