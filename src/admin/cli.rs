//! `ess list | replay | stats | backup` (and `essctl ...`): clap arguments, the choice
//! between the daemon's socket and the database file, and the output (a table, or JSON
//! with `--json`).
//!
//! Invariant: a usage or validation problem (bad flags, unknown target, unreadable config,
//! existing backup file) is returned as [`UsageError`] (exit code 2); everything else is a
//! runtime error (exit code 1).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::client::{Reply, call};
use super::direct::DirectBackend;
use super::{
    AdminBackend, AdminError, BackupRequest, BackupResponse, ListKind, ListRequest, ListResponse,
    ReplayRequest, ReplayResponse, StatsResponse, UsageError,
};
use crate::config::Config;

/// How long a command waits for the daemon (a backup of a large feed takes a while).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
const BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);

/// `ess list`: pending events, retries and dead letters per connector.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// The appliance config.
    #[arg(long, default_value = "/etc/ess/ess.yml")]
    pub config: PathBuf,
    /// Only this connector (its `target:` name).
    #[arg(long)]
    pub target: Option<String>,
    /// Only events still to deliver (queued replays, the retrying head, the rest).
    #[arg(long, conflicts_with = "dead")]
    pub pending: bool,
    /// Only dead letters.
    #[arg(long)]
    pub dead: bool,
    /// Most entries per connector.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `ess replay`: deliver a range again, or re-queue dead letters.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["from", "dead"])))]
pub struct ReplayArgs {
    #[arg(long, default_value = "/etc/ess/ess.yml")]
    pub config: PathBuf,
    /// The connector.
    #[arg(long)]
    pub target: String,
    /// First seq to deliver again.
    #[arg(long)]
    pub from: Option<u64>,
    /// Last seq (default: the connector's cursor).
    #[arg(long, requires = "from", conflicts_with = "dead")]
    pub to: Option<u64>,
    /// Re-queue the connector's dead letters.
    #[arg(long, conflicts_with = "from")]
    pub dead: bool,
    #[arg(long)]
    pub json: bool,
}

/// `ess stats`: per connector cursor, lag, retries, dead letters; feed size and rate.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    #[arg(long, default_value = "/etc/ess/ess.yml")]
    pub config: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// `ess backup`: a consistent copy of the database, while the daemon runs.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    #[arg(long, default_value = "/etc/ess/ess.yml")]
    pub config: PathBuf,
    /// The new file (must not exist).
    #[arg(long)]
    pub to: PathBuf,
    #[arg(long)]
    pub json: bool,
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|d| anyhow::Error::new(UsageError(d.to_string())))
}

fn admin_error(e: AdminError) -> anyhow::Error {
    match e {
        AdminError::Usage(m) => anyhow::Error::new(UsageError(m)),
        AdminError::Runtime(m) => anyhow::anyhow!(m),
    }
}

/// Asks the daemon; when none answers, `direct` on the database file.
fn ask<Req, Resp>(
    cfg: &Config,
    route: &str,
    req: &Req,
    timeout: Duration,
    direct: impl FnOnce() -> Result<Resp, AdminError>,
) -> anyhow::Result<Resp>
where
    Req: Serialize,
    Resp: DeserializeOwned + Send + 'static,
{
    match call::<Req, Resp>(&cfg.admin_socket, route, req, timeout)? {
        Reply::Answer(r) => r.map_err(admin_error),
        Reply::NoDaemon => direct().map_err(admin_error),
    }
}

fn read_only(cfg: &Config) -> Result<DirectBackend, AdminError> {
    DirectBackend::read_only(&cfg.maps_dir, &cfg.db_path())
}

fn json<T: Serialize>(value: &T) -> anyhow::Result<String> {
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

/// Shortens long messages for the table (JSON keeps them whole).
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

/// The output of `ess list` (what [`run_list`] prints).
pub fn list_output(args: &ListArgs) -> anyhow::Result<String> {
    let cfg = load_config(&args.config)?;
    if args.limit == 0 {
        return Err(UsageError("--limit must be at least 1".into()).into());
    }
    let kind = match (args.pending, args.dead) {
        (true, _) => ListKind::Pending,
        (_, true) => ListKind::Dead,
        _ => ListKind::All,
    };
    let req = ListRequest {
        target: args.target.clone(),
        kind,
        limit: args.limit,
    };
    let resp: ListResponse = ask(&cfg, "/v1/list", &req, ANSWER_TIMEOUT, || {
        read_only(&cfg)?.list(&req)
    })?;
    if args.json {
        return json(&resp);
    }
    if resp.entries.is_empty() {
        return Ok("nothing pending, nothing dead\n".into());
    }
    let rows: Vec<Vec<String>> = resp
        .entries
        .iter()
        .map(|e| {
            vec![
                e.target.clone(),
                e.seq.to_string(),
                e.state.clone(),
                or_dash(e.event_type.as_ref()),
                or_dash(e.received_at.as_ref()),
                or_dash(e.attempts),
                or_dash(e.reason.as_ref()),
                or_dash(e.at.as_ref()),
                or_dash(e.message.as_deref().map(|m| clip(m, 60))),
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

/// The output of `ess replay`.
pub fn replay_output(args: &ReplayArgs) -> anyhow::Result<String> {
    let cfg = load_config(&args.config)?;
    let req = match (args.dead, args.from) {
        (true, None) => ReplayRequest::Dead {
            target: args.target.clone(),
        },
        (false, Some(from)) => ReplayRequest::Range {
            target: args.target.clone(),
            from,
            to: args.to,
        },
        _ => return Err(UsageError("give either --from SEQ [--to SEQ] or --dead".into()).into()),
    };
    let resp: ReplayResponse = ask(&cfg, "/v1/replay", &req, ANSWER_TIMEOUT, || {
        DirectBackend::writable(&cfg.maps_dir, &cfg.db_path())?.replay(&req)
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

/// Bytes for people: KiB, MiB or GiB with one decimal.
fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_048_576 => format!("{:.1} KiB", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", b / 1_048_576.0),
        _ => format!("{:.1} GiB", b / 1_073_741_824.0),
    }
}

/// The output of `ess stats`.
pub fn stats_output(args: &StatsArgs) -> anyhow::Result<String> {
    let cfg = load_config(&args.config)?;
    let resp: StatsResponse = ask(&cfg, "/v1/stats", &(), ANSWER_TIMEOUT, || {
        read_only(&cfg)?.stats()
    })?;
    if args.json {
        return json(&resp);
    }
    let f = &resp.feed;
    let mut out = format!(
        "feed: last seq {}, {} event(s) kept (from seq {}), file {}, free disk {}, received {} in the last minute, {} in the last hour\n\n",
        f.last_seq,
        f.events,
        or_dash(f.first_seq),
        human_bytes(f.file_bytes),
        f.free_disk_bytes.map_or_else(|| "-".into(), human_bytes),
        f.received_last_minute,
        f.received_last_hour,
    );
    if resp.connectors.is_empty() {
        out.push_str("no connectors\n");
        return Ok(out);
    }
    let rows: Vec<Vec<String>> = resp
        .connectors
        .iter()
        .map(|c| {
            let target = if c.has_map {
                c.target.clone()
            } else {
                format!("{} (no map)", c.target)
            };
            let retrying = c
                .retrying
                .as_ref()
                .map(|r| format!("seq {} x{}, next {}", r.seq, r.attempts, r.next_at));
            vec![
                target,
                or_dash(c.cursor),
                c.lag.to_string(),
                c.delivered.to_string(),
                or_dash(retrying),
                c.dead.to_string(),
                c.requeued.to_string(),
                or_dash(c.last_success.as_ref()),
                or_dash(c.retrying.as_ref().map(|r| clip(&r.last_error, 60))),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "TARGET",
            "CURSOR",
            "LAG",
            "DELIVERED",
            "RETRYING",
            "DEAD",
            "REQUEUED",
            "LAST SUCCESS",
            "LAST ERROR",
        ],
        &rows,
    ));
    Ok(out)
}

/// The output of `ess backup`.
pub fn backup_output(args: &BackupArgs) -> anyhow::Result<String> {
    let cfg = load_config(&args.config)?;
    let to = if args.to.is_absolute() {
        args.to.clone()
    } else {
        std::env::current_dir()
            .map_err(|e| anyhow::anyhow!("current folder: {e}"))?
            .join(&args.to)
    };
    let req = BackupRequest { to };
    let resp: BackupResponse = ask(&cfg, "/v1/backup", &req, BACKUP_TIMEOUT, || {
        read_only(&cfg)?.backup(&req)
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

/// `ess list`.
pub fn run_list(args: &ListArgs) -> anyhow::Result<()> {
    print!("{}", list_output(args)?);
    Ok(())
}

/// `ess replay`.
pub fn run_replay(args: &ReplayArgs) -> anyhow::Result<()> {
    print!("{}", replay_output(args)?);
    Ok(())
}

/// `ess stats`.
pub fn run_stats(args: &StatsArgs) -> anyhow::Result<()> {
    print!("{}", stats_output(args)?);
    Ok(())
}

/// `ess backup`.
pub fn run_backup(args: &BackupArgs) -> anyhow::Result<()> {
    print!("{}", backup_output(args)?);
    Ok(())
}
