//! The one [`AdminBackend`]: in the daemon, over its running generation of connectors (the
//! maps that run, with their tasks' live state and command handles); offline, over the
//! database file and the map files (read-only commands and `replay` only).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::{
    ActRequest, ActResponse, ActionRequest, AdminBackend, AdminError, BackupReport, BackupRequest,
    EventReport, ListRequest, ListResponse, ReplayRequest, ReplayResponse, ShowRequest, Snapshot,
};
use crate::config::Config;
use crate::connector::command::Action;
use crate::event::Seq;
use crate::ledger::Ledger;
use crate::ledger::actions::Actor;
use crate::state::{ConnectorInfo, Connectors, HealthStatus, Reader};
use crate::status::StatusSource;

/// How long an action waits for its connector to finish the round under way.
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(50);

/// Called with a connector's name after a replay queued something for it.
pub type Wake = Arc<dyn Fn(&str) + Send + Sync>;

enum Mode {
    Daemon {
        connectors: Arc<Connectors>,
        status: Arc<dyn StatusSource>,
        ledger: Ledger,
        wake: Wake,
    },
    Offline {
        infos: Vec<ConnectorInfo>,
        cfg: Box<Config>,
        socket: PathBuf,
    },
}

/// Answers admin requests from the state module.
pub struct Admin {
    store: Arc<Reader>,
    mode: Mode,
}

impl Admin {
    /// The daemon's: `status` is the page's own source (so `ess stats` shows exactly what
    /// the page shows), `wake` nudges connectors after a replay.
    pub fn daemon(
        connectors: Arc<Connectors>,
        status: Arc<dyn StatusSource>,
        ledger: Ledger,
        wake: Wake,
    ) -> Admin {
        Admin {
            store: connectors.store().clone(),
            mode: Mode::Daemon {
                connectors,
                status,
                ledger,
                wake,
            },
        }
    }

    /// The CLI's when no daemon answers: the database read-only, connectors from the map
    /// files (a file that does not load is left out with a warning; `ess check` shows why)
    /// and from the ledger.
    pub fn offline(cfg: &Config) -> Result<Admin, AdminError> {
        Admin::offline_with(cfg, Reader::open_read_only(&cfg.db_path())?)
    }

    /// [`Admin::offline`] on the file opened for writing (`ess replay` without a daemon):
    /// one handle reads and writes, since only one may hold the file.
    pub fn offline_writable(cfg: &Config) -> Result<Admin, AdminError> {
        let reader = Reader::open_writable(&cfg.db_path()).map_err(|e| {
            AdminError::BadRequest(format!(
                "{e} (a daemon holds it but its admin socket does not answer?)"
            ))
        })?;
        Admin::offline_with(cfg, reader)
    }

    fn offline_with(cfg: &Config, store: Reader) -> Result<Admin, AdminError> {
        let mut infos = Vec::new();
        let files = crate::config::connector::map_files(&cfg.maps_dir).map_err(|e| {
            AdminError::BadRequest(format!(
                "cannot read maps_dir {}: {e}",
                cfg.maps_dir.display()
            ))
        })?;
        for path in files
            .into_iter()
            .filter(|p| !crate::source::is_source_file(p))
        {
            match crate::connector::load_one(&path, cfg.timezone) {
                Ok(spec) => infos.push(ConnectorInfo::of_spec(&spec, None)),
                Err(d) => {
                    tracing::warn!(file = %path.display(), n_problems = d.len(), "map file left out (see ess check)")
                }
            }
        }
        for name in store.view()?.connectors()? {
            if !infos.iter().any(|i| i.name == name) {
                infos.push(ConnectorInfo::ledger_only(&name));
            }
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Admin {
            store: Arc::new(store),
            mode: Mode::Offline {
                infos,
                socket: cfg.admin_socket.clone(),
                cfg: Box::new(cfg.clone()),
            },
        })
    }

    fn infos(&self) -> Result<Vec<ConnectorInfo>, AdminError> {
        Ok(match &self.mode {
            Mode::Daemon { connectors, .. } => connectors.infos_with_ledger()?,
            Mode::Offline { infos, .. } => infos.clone(),
        })
    }

    /// `target`'s info, or every one when `None`.
    fn select(&self, target: Option<&str>) -> Result<Vec<ConnectorInfo>, AdminError> {
        let all = self.infos()?;
        let Some(t) = target else {
            return Ok(all);
        };
        match all.iter().find(|i| i.name == t) {
            Some(i) => Ok(vec![i.clone()]),
            None => Err(AdminError::UnknownTarget {
                name: t.to_owned(),
                known: all.into_iter().map(|i| i.name).collect(),
            }),
        }
    }

    /// The ledger to write a replay through: the daemon's, or the file opened for writing
    /// (which fails while a daemon holds it).
    fn writable_ledger(&self) -> Result<Ledger, AdminError> {
        match &self.mode {
            Mode::Daemon { ledger, .. } => Ok(ledger.clone()),
            Mode::Offline { cfg, .. } => match self.store.writable() {
                Some(store) => Ok(Ledger::new(store.clone())),
                None => Err(AdminError::BadRequest(format!(
                    "{} was opened read-only; nothing can be written through it",
                    cfg.db_path().display()
                ))),
            },
        }
    }
}

impl AdminBackend for Admin {
    fn list(&self, req: &ListRequest) -> Result<ListResponse, AdminError> {
        if req.limit == 0 {
            return Err(AdminError::BadRequest("--limit must be at least 1".into()));
        }
        let infos = self.select(req.target.as_deref())?;
        let (entries, truncated) = self.store.list(&infos, req.kind, req.limit)?;
        Ok(ListResponse { entries, truncated })
    }

    fn replay(&self, req: &ReplayRequest, by: &str) -> Result<ReplayResponse, AdminError> {
        let by = &one_line(by, MAX_BY);
        let target = req.target();
        self.select(Some(target))?;
        let view = self.store.view()?;
        let cursor = view.cursor(target)?.map_or(0, |c| c.seq);
        drop(view);
        let last = self.store.last_seq()?;
        let who = Actor { by, at: Utc::now() };
        let ledger = self.writable_ledger()?;
        let resp = match req {
            ReplayRequest::Dead { target } => {
                let n = ledger.replay_dead(target, &who)?;
                ReplayResponse {
                    target: target.clone(),
                    requeued: n,
                    note: (n == 0).then(|| format!("{target} has no dead letters")),
                }
            }
            ReplayRequest::Range { target, from, to } => {
                let asked = match to {
                    Some(to) => format!("--from {from} --to {to}"),
                    None => format!("--from {from}"),
                };
                range(
                    &ledger,
                    target,
                    *from,
                    to.unwrap_or(cursor),
                    cursor,
                    last,
                    &asked,
                    &who,
                )?
            }
            ReplayRequest::Since {
                target,
                since,
                until,
            } => {
                let asked = match until {
                    Some(u) => format!(
                        "--since {} --until {}",
                        crate::state::rfc3339(*since),
                        crate::state::rfc3339(*u)
                    ),
                    None => format!("--since {}", crate::state::rfc3339(*since)),
                };
                let Some(from) = self.store.first_received_at_or_after(*since)? else {
                    return Err(AdminError::BadRequest(format!(
                        "no event in the feed was received at or after {}",
                        crate::state::rfc3339(*since)
                    )));
                };
                let to = match until {
                    None => cursor,
                    Some(u) => match self.store.first_received_at_or_after(*u)? {
                        Some(s) => s.saturating_sub(1),
                        None => last,
                    },
                };
                range(&ledger, target, from, to, cursor, last, &asked, &who)?
            }
        };
        if resp.requeued > 0 {
            if let Mode::Daemon { wake, .. } = &self.mode {
                wake(&resp.target);
            }
        }
        Ok(resp)
    }

    fn stats(&self) -> Result<Snapshot, AdminError> {
        match &self.mode {
            Mode::Daemon { status, .. } => Ok(status.snapshot()?),
            Mode::Offline { infos, cfg, .. } => {
                let now = Utc::now();
                let feed = crate::state::feed_status(&self.store, None, now)?;
                Ok(Snapshot {
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    running: false,
                    uptime_secs: None,
                    connectors: self.store.reports(infos, &feed, now)?,
                    feed,
                    ingest_rate_per_sec: None,
                    free_disk_bytes: crate::feed::retention::free_disk_bytes(&cfg.data_dir)
                        .unwrap_or(0),
                    min_free_disk_bytes: cfg.min_free_disk,
                    health: HealthStatus {
                        refusal: Some("ess is not running".into()),
                        degraded: Vec::new(),
                    },
                    last_reload: None,
                    recent_actions: self.store.recent_actions(8)?,
                    sources: self.store.view()?.sources()?,
                })
            }
        }
    }

    fn show(&self, req: &ShowRequest) -> Result<EventReport, AdminError> {
        let event = match (req.seq, &req.key) {
            (Some(seq), None) => self
                .store
                .get(seq)?
                .ok_or_else(|| AdminError::NoEvent(format!("with seq {seq}")))?,
            (None, Some(key)) => self
                .store
                .get_by_key(key)?
                .ok_or_else(|| AdminError::NoEvent(format!("with idempotency key {key:?}")))?,
            _ => return Err(AdminError::BadRequest("give --seq N or --key K".into())),
        };
        Ok(self.store.show(&self.infos()?, &event)?)
    }

    fn backup(&self, req: &BackupRequest) -> Result<BackupReport, AdminError> {
        Ok(self.store.backup(&req.to)?)
    }

    fn act(&self, req: &ActRequest) -> Result<ActResponse, AdminError> {
        let reason = match &req.action {
            ActionRequest::Pause { reason }
            | ActionRequest::Skip { reason, .. }
            | ActionRequest::Settle { reason, .. } => reason.as_str(),
            ActionRequest::Resume | ActionRequest::Retry => "",
        };
        check_reason(reason)?;
        let by = one_line(&req.by, MAX_BY);
        let Mode::Daemon { connectors, .. } = &self.mode else {
            let socket = match &self.mode {
                Mode::Offline { socket, .. } => socket.clone(),
                Mode::Daemon { .. } => PathBuf::new(),
            };
            return Err(AdminError::NeedsDaemon {
                what: "an action".into(),
                socket,
            });
        };
        let Some(running) = connectors.get(&req.target) else {
            let known = connectors
                .running()
                .iter()
                .map(|r| r.spec.name.clone())
                .collect();
            return Err(AdminError::UnknownTarget {
                name: req.target.clone(),
                known,
            });
        };
        let action = match &req.action {
            ActionRequest::Pause { reason } => Action::Pause {
                reason: reason.clone(),
            },
            ActionRequest::Resume => Action::Resume,
            ActionRequest::Retry => Action::RetryNow,
            ActionRequest::Skip { seq, reason } => Action::Skip {
                seq: *seq,
                reason: reason.clone(),
            },
            ActionRequest::Settle { how, seq, reason } => Action::Settle {
                seq: *seq,
                how: (*how).into(),
                reason: reason.clone(),
            },
        };
        let done = running.handle.act(action, &by, ACTION_TIMEOUT)?;
        Ok(ActResponse {
            target: req.target.clone(),
            done,
        })
    }
}

/// Longest `--reason` kept with an action.
pub const MAX_REASON: usize = 500;
/// Longest "who" kept with an action (it comes from the client's environment).
const MAX_BY: usize = 120;

/// A reason goes into the ledger, the page and log lines: one line of sane length.
fn check_reason(reason: &str) -> Result<(), AdminError> {
    if reason.chars().count() > MAX_REASON {
        return Err(AdminError::BadRequest(format!(
            "--reason is {} characters; at most {MAX_REASON}",
            reason.chars().count()
        )));
    }
    if reason.chars().any(char::is_control) {
        return Err(AdminError::BadRequest(
            "--reason must be one line without control characters".into(),
        ));
    }
    Ok(())
}

/// `text` on one line (control characters replaced), at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(max)
        .collect()
}

/// Queues `from..=to` (checked against the cursor and the feed) and says what it did.
#[allow(clippy::too_many_arguments)]
fn range(
    ledger: &Ledger,
    target: &str,
    from: Seq,
    to: Seq,
    cursor: Seq,
    last: Seq,
    asked: &str,
    who: &Actor<'_>,
) -> Result<ReplayResponse, AdminError> {
    if from == 0 {
        return Err(AdminError::BadRequest(
            "--from must be at least 1 (seqs start at 1)".into(),
        ));
    }
    if to < from {
        let why = if cursor < from {
            format!(" ({target}'s cursor is at {cursor})")
        } else {
            String::new()
        };
        return Err(AdminError::BadRequest(format!(
            "empty range: seqs {from}..={to}{why}"
        )));
    }
    if from > last {
        return Err(AdminError::BadRequest(format!(
            "--from {from} is beyond the feed's last seq {last}"
        )));
    }
    let n = ledger.replay_range(target, from, to, asked, who)?;
    let mut notes = Vec::new();
    if to > cursor {
        notes.push(format!(
            "seqs above {target}'s cursor {cursor} are still pending and will be delivered anyway"
        ));
    }
    let asked_n = to.min(cursor).saturating_sub(from).saturating_add(1);
    if to.min(cursor) >= from && n < asked_n {
        notes.push(format!(
            "{} of the {asked_n} seqs were already queued or are no longer in the feed",
            asked_n - n
        ));
    }
    Ok(ReplayResponse {
        target: target.to_owned(),
        requeued: n,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    })
}
