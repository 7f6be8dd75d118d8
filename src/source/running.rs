//! The running sources of the daemon: one task per source, started together, stopped
//! together (shutdown, or a SIGHUP that loaded a new set), and what the status reads of
//! them.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::SourceSpec;
use super::local::{Live, Pickup, run};
use crate::ledger::sources::Sources;

/// The live state of every running source, by name (shared with the status).
pub type Lives = Arc<Mutex<Vec<(String, Arc<Live>)>>>;

/// One set of running sources.
pub struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Opens each source's folder and starts its task; `lives` then shows these sources.
    /// Fails (starting none) if a folder cannot be opened.
    pub fn start(
        specs: Vec<SourceSpec>,
        sources: &Sources,
        lives: &Lives,
    ) -> Result<Running, String> {
        let mut pickups = Vec::new();
        for spec in specs {
            let dir = spec
                .open_dir(tokio::runtime::Handle::current())
                .map_err(|e| format!("{}: {e}", spec.path.display()))?;
            pickups.push(Pickup::new(Arc::new(spec), sources.clone(), dir));
        }
        *lives.lock().unwrap_or_else(|e| e.into_inner()) = pickups
            .iter()
            .map(|p| (p.spec.name.clone(), p.live.clone()))
            .collect();
        let (stop, stop_rx) = watch::channel(false);
        let tasks = pickups
            .into_iter()
            .map(|p| tokio::spawn(run(p, stop_rx.clone())))
            .collect();
        Ok(Running { stop, tasks })
    }

    /// No source running (and `lives` shows none).
    pub fn none(lives: &Lives) -> Running {
        lives.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Running {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stops every task after the chunk it is committing, and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
