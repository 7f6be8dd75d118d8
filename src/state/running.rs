//! The running generation of connectors (the maps the daemon loaded last, each with its
//! task's live state and command handle), and the last reload's outcome. Shared by
//! receipts, the status page and the admin socket, so they all answer from the maps that
//! actually run, never by re-reading files.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use chrono::Utc;

use super::{ConnectorInfo, Error, Reader, ReloadReport};
use crate::connector::command::Handle;
use crate::connector::{ConnectorSpec, Live};
use crate::event::Event;

/// One connector of the running generation.
#[derive(Clone)]
pub struct Running {
    pub spec: Arc<ConnectorSpec>,
    pub live: Arc<Mutex<Live>>,
    pub handle: Handle,
}

/// What the daemon runs, as everyone who answers questions about it sees it.
pub struct Connectors {
    running: RwLock<Vec<Running>>,
    last_reload: Mutex<Option<ReloadReport>>,
    store: Arc<Reader>,
}

impl Connectors {
    pub fn new(store: Arc<Reader>) -> Connectors {
        Connectors {
            running: RwLock::new(Vec::new()),
            last_reload: Mutex::new(None),
            store,
        }
    }

    /// The state module's reads, on the daemon's database.
    pub fn store(&self) -> &Arc<Reader> {
        &self.store
    }

    /// Replaces the running generation.
    pub fn set(&self, running: Vec<Running>) {
        *self.running.write().unwrap_or_else(|p| p.into_inner()) = running;
    }

    /// The running generation (a copy of the handles).
    pub fn running(&self) -> Vec<Running> {
        self.running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The running connector named `target`.
    pub fn get(&self, target: &str) -> Option<Running> {
        self.running().into_iter().find(|r| r.spec.name == target)
    }

    /// The running connectors with a copy of their live state.
    pub fn infos(&self) -> Vec<ConnectorInfo> {
        self.running()
            .iter()
            .map(|r| {
                let live = r.live.lock().unwrap_or_else(|p| p.into_inner()).clone();
                ConnectorInfo::of_spec(&r.spec, Some(live))
            })
            .collect()
    }

    /// The running connectors, then those only the ledger knows (their map was removed),
    /// by name.
    pub fn infos_with_ledger(&self) -> Result<Vec<ConnectorInfo>, Error> {
        let mut infos = self.infos();
        let known = crate::feed::guarded("cursors", || self.store.view()?.connectors());
        let names = match known {
            Ok(names) => names,
            // The cursors table itself is damaged: the running connectors still show (each
            // row then says what it cannot read).
            Err(e) if e.is_corrupt() => {
                tracing::error!(error = %e, "cannot list the ledger's connectors");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        for name in names {
            if !infos.iter().any(|i| i.name == name) {
                infos.push(ConnectorInfo::ledger_only(&name));
            }
        }
        Ok(infos)
    }

    /// Records how the last reload went.
    pub fn reloaded(&self, ok: bool, connectors: usize, problems: &[String]) {
        let report = ReloadReport {
            at: super::rfc3339(Utc::now()),
            ok,
            connectors,
            n_problems: problems.len(),
            first_problem: problems.first().cloned(),
        };
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }

    pub fn last_reload(&self) -> Option<ReloadReport> {
        self.last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl crate::ingest::Receipts for Connectors {
    fn targets(&self, event: &Event) -> Result<BTreeMap<String, String>, crate::feed::Error> {
        let states = crate::feed::guarded("ledger", || {
            super::receipt(&self.store, &self.infos(), event)
        })?;
        Ok(states
            .into_iter()
            .map(|(name, s)| (name, s.as_str().to_owned()))
            .collect())
    }
}
