//! `ess list | replay | stats | show | backup` (and `essctl ...`): clap arguments, asking
//! the daemon's socket or (no daemon) the database file, and the output (a table, or JSON
//! with `--json`).
//!
//! Invariant: a usage or validation problem (bad flags, unknown target, unreadable config,
//! existing backup file) exits 2; everything else 1 (see [`crate::cli::exit_code`]).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::backend::Admin;
use super::client::{Reply, call};
use super::server::ReplayCall;
use super::{
    AdminBackend, AdminError, BackupReport, BackupRequest, EventReport, ListKind, ListRequest,
    ListResponse, ReplayRequest, ReplayResponse, ShowRequest, Snapshot, UsageError,
};
use crate::cli::ConfigArg;
use crate::config::Config;

/// How long a command waits for the daemon (an action waits for the round under way).
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// `ess list`: pending events, retries, dead letters or delivered events per connector.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this connector (its `target:` name).
    #[arg(long)]
    pub target: Option<String>,
    /// The files of this pickup source (its `source.name`) and its bad records, instead of
    /// events.
    #[arg(long, conflicts_with_all = ["target", "pending", "dead", "delivered"])]
    pub source: Option<String>,
    /// Only events still to deliver (queued replays, the retrying head, the rest).
    #[arg(long, conflicts_with_all = ["dead", "delivered"])]
    pub pending: bool,
    /// Only dead letters.
    #[arg(long, conflicts_with = "delivered")]
    pub dead: bool,
    /// Only the newest delivered events (what `ess replay --from/--to` can send again).
    #[arg(long)]
    pub delivered: bool,
    /// Most entries per connector.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Never shorten messages (they are shortened only on a terminal).
    #[arg(long)]
    pub wide: bool,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `ess replay`: deliver a range again, or re-queue dead letters.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["from", "since", "dead"])))]
pub struct ReplayArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The connector (its `target:` name).
    #[arg(long)]
    pub target: String,
    /// First seq to deliver again.
    #[arg(long, conflicts_with_all = ["since", "dead"])]
    pub from: Option<u64>,
    /// Last seq (default: the connector's cursor).
    #[arg(long, requires = "from", conflicts_with_all = ["since", "dead"])]
    pub to: Option<u64>,
    /// Deliver again the events received at or after TIME: RFC 3339, `YYYY-MM-DD[ HH:MM[:SS]]`
    /// in the appliance timezone, or a duration ago (`2h`, `1d`).
    #[arg(long, value_name = "TIME", conflicts_with = "dead")]
    pub since: Option<String>,
    /// With --since: only events received before TIME (same forms).
    #[arg(long, value_name = "TIME", requires = "since", conflicts_with = "dead")]
    pub until: Option<String>,
    /// Re-queue the connector's dead letters.
    #[arg(long)]
    pub dead: bool,
    /// JSON instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// `ess stats`: per connector state, cursor, lag, retries, dead letters; feed size and rate.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// JSON (the same names `/api/status` uses) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `ess show`: one event, its state at every connector and the record each map makes.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["seq", "key"])))]
pub struct ShowArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The event's seq.
    #[arg(long)]
    pub seq: Option<u64>,
    /// The event's idempotency key.
    #[arg(long)]
    pub key: Option<String>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `ess backup`: a consistent copy of the database, while the daemon runs.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The new file (must not exist).
    #[arg(long)]
    pub to: PathBuf,
    /// JSON instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn admin_error(e: AdminError) -> anyhow::Error {
    if e.is_usage() {
        anyhow::Error::new(UsageError(e.to_wire().error))
    } else {
        anyhow::Error::new(e)
    }
}

/// Asks the daemon; when none answers, `offline` (given the config) answers instead.
pub(super) fn ask<Req, Resp>(
    cfg: &Config,
    route: &str,
    req: &Req,
    timeout: Duration,
    offline: impl FnOnce(&Config) -> Result<Resp, AdminError>,
) -> anyhow::Result<Resp>
where
    Req: Serialize,
    Resp: DeserializeOwned + Send + 'static,
{
    match call::<Req, Resp>(&cfg.admin_socket, route, req, timeout)? {
        Reply::Answer(r) => r.map_err(admin_error),
        Reply::NoDaemon => offline(cfg).map_err(admin_error),
    }
}

/// Who runs this command, for the action log: the user behind sudo, else the user.
pub(super) fn whoami() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let user = std::env::var("SUDO_USER")
        .map(|u| format!("{u} (sudo)"))
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"));
    match (user, uid) {
        (Ok(u), Some(uid)) => format!("{u}, uid {uid}"),
        (Ok(u), None) => u,
        (Err(_), Some(uid)) => format!("uid {uid}"),
        (Err(_), None) => "unknown".into(),
    }
}

pub(super) fn json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(cell);
            s.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied(), &mut out);
    for row in rows {
        line(&mut row.iter().map(String::as_str), &mut out);
    }
    out
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Shortens long messages to `n` characters (`None`: keep them whole).
fn clip(s: &str, n: Option<usize>) -> String {
    let s = crate::state::list::visible(s);
    match n {
        Some(n) if s.chars().count() > n => s.chars().take(n - 1).collect::<String>() + "…",
        _ => s,
    }
}

/// The width messages are cut to: only on a terminal, never with `--wide`.
fn message_width(wide: bool) -> Option<usize> {
    (!wide && std::io::stdout().is_terminal()).then_some(60)
}

/// The output of `ess list`.
pub fn list_output(args: &ListArgs) -> anyhow::Result<String> {
    let cfg = args.config.load()?;
    if args.limit == 0 {
        return Err(UsageError("--limit must be at least 1".into()).into());
    }
    if let Some(name) = &args.source {
        return source_output(&cfg, name, args);
    }
    let kind = match (args.pending, args.dead, args.delivered) {
        (true, _, _) => ListKind::Pending,
        (_, true, _) => ListKind::Dead,
        (_, _, true) => ListKind::Delivered,
        _ => ListKind::All,
    };
    let req = ListRequest {
        target: args.target.clone(),
        kind,
        limit: args.limit,
    };
    let resp: ListResponse = ask(&cfg, "/v1/list", &req, ANSWER_TIMEOUT, |cfg| {
        Admin::offline(cfg)?.list(&req)
    })?;
    if args.json {
        return json(&resp);
    }
    if resp.entries.is_empty() {
        return Ok(match kind {
            ListKind::Delivered => "nothing delivered yet\n".into(),
            ListKind::Dead => "no dead letters\n".into(),
            ListKind::Pending => "nothing pending\n".into(),
            ListKind::All => "nothing pending, nothing dead (see --delivered)\n".into(),
        });
    }
    let width = message_width(args.wide);
    let rows: Vec<Vec<String>> = resp
        .entries
        .iter()
        .map(|e| {
            vec![
                clip(&e.target, None),
                e.seq.to_string(),
                e.state.clone(),
                or_dash(e.event_type.as_deref().map(|t| clip(t, None))),
                or_dash(e.received_at.as_ref()),
                or_dash(e.attempts),
                or_dash(e.reason.as_ref()),
                or_dash(e.at.as_ref()),
                or_dash(e.message.as_deref().map(|m| clip(m, width))),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "TARGET", "SEQ", "STATE", "TYPE", "RECEIVED", "TRIES", "REASON", "AT", "MESSAGE",
        ],
        &rows,
    );
    if resp.truncated {
        out.push_str(&format!(
            "(more entries; showing at most {} per connector, see --limit)\n",
            args.limit
        ));
    }
    Ok(out)
}

/// `ess list --source NAME`: the source's newest files and bad records.
fn source_output(cfg: &Config, name: &str, args: &ListArgs) -> anyhow::Result<String> {
    let snap: Snapshot = ask(cfg, "/v1/stats", &(), ANSWER_TIMEOUT, |cfg| {
        Admin::offline(cfg)?.stats()
    })?;
    let Some(src) = snap.sources.iter().find(|s| s.name == name) else {
        let known: Vec<&str> = snap.sources.iter().map(|s| s.name.as_str()).collect();
        return Err(UsageError(format!(
            "no source named {name:?} ({})",
            if known.is_empty() {
                "no source has taken a file yet".to_string()
            } else {
                format!("known: {}", known.join(", "))
            }
        ))
        .into());
    };
    if args.json {
        return json(src);
    }
    let width = message_width(args.wide);
    let rows: Vec<Vec<String>> = src
        .recent_files
        .iter()
        .take(args.limit)
        .map(|f| {
            vec![
                clip(&f.file, None),
                f.state.clone(),
                f.records_taken.to_string(),
                f.events.to_string(),
                f.bad.to_string(),
                match (f.first_seq, f.last_seq) {
                    (Some(a), Some(b)) => format!("{a}-{b}"),
                    _ => "-".into(),
                },
                f.started_at.clone(),
                or_dash(f.done_at.as_ref()),
                or_dash(f.reason.as_deref().map(|m| clip(m, width))),
            ]
        })
        .collect();
    let mut out = if rows.is_empty() {
        "no files taken yet\n".to_string()
    } else {
        table(
            &[
                "FILE", "STATE", "RECORDS", "EVENTS", "BAD", "SEQS", "STARTED", "DONE", "WHY",
            ],
            &rows,
        )
    };
    if !src.recent_bad.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = src
            .recent_bad
            .iter()
            .take(args.limit)
            .map(|b| {
                vec![
                    clip(&b.file, None),
                    b.record_index.to_string(),
                    b.offset.to_string(),
                    clip(&b.field, None),
                    b.field_offset.to_string(),
                    clip(&b.message, width),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "BAD RECORD OF",
                "RECORD",
                "OFFSET",
                "FIELD",
                "AT BYTE",
                "MESSAGE",
            ],
            &rows,
        ));
    }
    Ok(out)
}

/// Reads a time as `--since` / `--until` take it, in `tz`, relative to `now`.
pub fn parse_time(
    text: &str,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(t) {
        return Ok(at.with_timezone(&Utc));
    }
    let local = [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(t, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    });
    if let Some(naive) = local {
        // A time that the clock skipped (DST gap) is taken at the jump; a repeated one at
        // its first occurrence.
        return tz
            .from_local_datetime(&naive)
            .earliest()
            .or_else(|| {
                tz.from_local_datetime(&(naive + chrono::Duration::hours(1)))
                    .earliest()
            })
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| format!("{t:?} does not exist in {tz}"));
    }
    if let Ok(ago) = crate::config::parse_duration(t) {
        let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
        return Ok(now - ago);
    }
    Err(format!(
        "{t:?} is not a time: give RFC 3339 (2026-11-27T02:00:00Z), a local time \
         (2026-11-27 02:00, in {tz}) or a duration ago (2h, 1d)"
    ))
}

/// The output of `ess replay`.
pub fn replay_output(args: &ReplayArgs) -> anyhow::Result<String> {
    let cfg = args.config.load()?;
    let target = args.target.clone();
    let time = |t: &str| parse_time(t, cfg.timezone, Utc::now()).map_err(UsageError);
    let request = match (args.dead, args.from, &args.since) {
        (true, None, None) => ReplayRequest::Dead { target },
        (false, Some(from), None) => ReplayRequest::Range {
            target,
            from,
            to: args.to,
        },
        (false, None, Some(since)) => ReplayRequest::Since {
            target,
            since: time(since)?,
            until: args.until.as_deref().map(time).transpose()?,
        },
        _ => {
            return Err(UsageError(
                "give one of --from SEQ [--to SEQ], --since TIME [--until TIME], --dead".into(),
            )
            .into());
        }
    };
    let call_body = ReplayCall {
        by: whoami(),
        request,
    };
    let resp: ReplayResponse = ask(&cfg, "/v1/replay", &call_body, ANSWER_TIMEOUT, |cfg| {
        Admin::offline_writable(cfg)?.replay(&call_body.request, &call_body.by)
    })?;
    if args.json {
        return json(&resp);
    }
    let mut out = format!(
        "{}: {} event(s) queued for delivery\n",
        resp.target, resp.requeued
    );
    if let Some(note) = &resp.note {
        out.push_str(&format!("note: {note}\n"));
    }
    Ok(out)
}

/// The output of `ess stats`.
pub fn stats_output(args: &StatsArgs) -> anyhow::Result<String> {
    let cfg = args.config.load()?;
    let resp: Snapshot = ask(&cfg, "/v1/stats", &(), ANSWER_TIMEOUT, |cfg| {
        Admin::offline(cfg)?.stats()
    })?;
    if args.json {
        return json(&resp);
    }
    Ok(crate::status::render_text(&resp))
}

/// The output of `ess show`.
pub fn show_output(args: &ShowArgs) -> anyhow::Result<String> {
    let cfg = args.config.load()?;
    let req = ShowRequest {
        seq: args.seq,
        key: args.key.clone(),
    };
    let r: EventReport = ask(&cfg, "/v1/show", &req, ANSWER_TIMEOUT, |cfg| {
        Admin::offline(cfg)?.show(&req)
    })?;
    if args.json {
        return json(&r);
    }
    let v = crate::state::list::visible;
    let mut out = format!(
        "seq {}  type {}  key {}\ntrace_id {}  received {}{}\n",
        r.seq,
        v(&r.event_type),
        v(&r.key),
        v(&r.trace_id),
        r.received_at,
        r.ts.as_deref()
            .map_or_else(String::new, |t| format!("  ts {t}"))
    );
    for t in &r.targets {
        out.push_str(&format!("\n{}: {}\n", v(&t.target), t.state.as_str()));
        if let Some(d) = &t.detail {
            out.push_str(&format!("  {}\n", v(d)));
        }
        if let Some(rec) = &t.record {
            out.push_str(&format!("  record ({} bytes): {}\n", rec.bytes, rec.text));
            if let Some(hex) = &rec.hex {
                out.push_str(&format!("  hex: {hex}\n"));
            }
        }
        if let Some(e) = &t.record_error {
            out.push_str(&format!("  no record: {}\n", v(e)));
        }
    }
    Ok(out)
}

/// Bytes for people.
fn human_bytes(bytes: u64) -> String {
    crate::status::human_bytes(bytes)
}

/// The output of `ess backup`.
pub fn backup_output(args: &BackupArgs) -> anyhow::Result<String> {
    let cfg = args.config.load()?;
    let to = if args.to.is_absolute() {
        args.to.clone()
    } else {
        std::env::current_dir()
            .map_err(|e| anyhow::anyhow!("current folder: {e}"))?
            .join(&args.to)
    };
    let req = BackupRequest { to };
    let resp: BackupReport = ask(&cfg, "/v1/backup", &req, BACKUP_TIMEOUT, |cfg| {
        Admin::offline(cfg)?.backup(&req)
    })?;
    if args.json {
        return json(&resp);
    }
    let counts: Vec<String> = resp
        .tables
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    Ok(format!(
        "backup written to {} ({}): {}\n",
        resp.path.display(),
        human_bytes(resp.bytes),
        counts.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_form() {
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap();
        let ny = chrono_tz::America::New_York;
        let t = |s: &str| parse_time(s, ny, now).map(|t| t.to_rfc3339());
        assert_eq!(
            t("2026-11-27T02:00:00Z").unwrap(),
            "2026-11-27T02:00:00+00:00"
        );
        assert_eq!(t("2026-11-27 02:00").unwrap(), "2026-11-27T07:00:00+00:00");
        assert_eq!(t("2026-11-27").unwrap(), "2026-11-27T05:00:00+00:00");
        assert_eq!(t("2h").unwrap(), "2026-11-27T10:00:00+00:00");
        // 02:30 on the spring-forward day does not exist in New York: taken at the jump.
        assert_eq!(t("2026-03-08 02:30").unwrap(), "2026-03-08T07:30:00+00:00");
        assert!(t("yesterday").unwrap_err().contains("not a time"));
    }

    #[test]
    fn messages_are_cut_only_when_asked() {
        let long = "x".repeat(100);
        assert_eq!(clip(&long, None).len(), 100);
        assert_eq!(clip(&long, Some(60)).chars().count(), 60);
        assert_eq!(clip("a\nb", None), "a\\nb", "one line per entry");
    }
}
