//! The action commands: `ess dead ack|discard`, `ess retry`, `ess pause`, `ess resume`,
//! `ess skip`. Each goes to the running daemon's admin socket, where the connector's own
//! task carries it out between two rounds, in one ledger transaction with its log entry.
//! They need the daemon: without one they say so (exit 1) and change nothing.

use super::cli::{ANSWER_TIMEOUT, ask, json, whoami};
use super::{ActRequest, ActResponse, ActionRequest, AdminError, SettleHow};
use crate::cli::ConfigArg;

/// `ess retry` / `ess resume`: one connector.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The connector (its `target:` name).
    #[arg(long)]
    pub target: String,
    /// JSON instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// `ess pause`: hold a connector until `ess resume` (kept across restarts).
#[derive(Debug, Clone, clap::Args)]
pub struct ActArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Why, for the log and the status page.
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `ess skip`: park the stuck head as a dead letter (reason `skipped`).
#[derive(Debug, Clone, clap::Args)]
pub struct SkipArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The head's seq (as `ess stats` or `ess list --pending` shows it): a check that the
    /// event skipped is the one you mean.
    #[arg(long)]
    pub seq: u64,
    /// Why, kept with the dead letter.
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `ess dead ack|discard`: settle dead letters that must not be replayed.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["seq", "all"])))]
pub struct DeadArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// One dead letter.
    #[arg(long)]
    pub seq: Option<u64>,
    /// All of the connector's dead letters.
    #[arg(long)]
    pub all: bool,
    /// Why, kept in the ledger with them.
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// Sends `action` for `t` and prints what the daemon did.
fn act(t: &TargetArgs, action: ActionRequest) -> anyhow::Result<String> {
    let cfg = t.config.load()?;
    let req = ActRequest {
        target: t.target.clone(),
        by: whoami(),
        action,
    };
    let resp: ActResponse = ask(&cfg, "/v1/act", &req, ANSWER_TIMEOUT, |cfg| {
        Err(AdminError::NeedsDaemon {
            what: "this action".into(),
            socket: cfg.admin_socket.clone(),
        })
    })?;
    if t.json {
        return json(&resp);
    }
    Ok(format!("{}\n", resp.done))
}

/// `ess pause`.
pub fn pause_output(a: &ActArgs) -> anyhow::Result<String> {
    act(
        &a.target,
        ActionRequest::Pause {
            reason: a.reason.clone(),
        },
    )
}

/// `ess resume`.
pub fn resume_output(t: &TargetArgs) -> anyhow::Result<String> {
    act(t, ActionRequest::Resume)
}

/// `ess retry`.
pub fn retry_output(t: &TargetArgs) -> anyhow::Result<String> {
    act(t, ActionRequest::Retry)
}

/// `ess skip`.
pub fn skip_output(a: &SkipArgs) -> anyhow::Result<String> {
    act(
        &a.target,
        ActionRequest::Skip {
            seq: a.seq,
            reason: a.reason.clone(),
        },
    )
}

/// `ess dead ack` / `ess dead discard`.
pub fn dead_output(how: SettleHow, a: &DeadArgs) -> anyhow::Result<String> {
    act(
        &a.target,
        ActionRequest::Settle {
            how,
            seq: if a.all { None } else { a.seq },
            reason: a.reason.clone(),
        },
    )
}
