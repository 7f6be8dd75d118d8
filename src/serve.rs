//! `ess serve`: the daemon. Opens the database, starts one task per connector, the ingest
//! listener (and the status page), and handles signals: SIGTERM/SIGINT drain and exit,
//! SIGHUP reloads the maps (an invalid set is refused and the old one keeps running).
//!
//! Shutdown order keeps the promise: the ingest stops accepting first and answers the
//! requests under way (their commits finish), connectors finish the delivery under way and
//! commit it, the status page, admin socket and retention stop, and only then is the feed's
//! committer stopped and `ess.redb` closed explicitly ([`crate::feed::Store::close`]), so
//! the next start needs no repair.
//!
//! Everything that reads or writes the database holds the one [`Store`]: when a full disk
//! makes redb refuse writes, the store reopens the file by itself once space returns (ingest
//! answers 503 meanwhile), and nobody holds an old handle.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, Diagnostics};
use crate::connector::{self, ConnectorSpec, Env, Live, Runner};
use crate::event::Event;
use crate::feed::{self, Feed, Store, StoreOptions};
use crate::ingest::{self, IngestState, Receipts};
use crate::ledger::Ledger;

/// How long shutdown waits for connectors to finish the delivery under way.
const CONNECTOR_DRAIN: Duration = Duration::from_secs(20);

/// The running connectors of one map generation.
struct Generation {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A running connector's spec and its live state.
pub type RunningConnector = (Arc<ConnectorSpec>, Arc<Mutex<Live>>);

/// What the daemon knows about its connectors, shared with receipts and status.
pub struct Connectors {
    pub specs: RwLock<Vec<RunningConnector>>,
    pub ledger: Ledger,
}

impl Receipts for Connectors {
    fn targets(&self, event: &Event) -> BTreeMap<String, String> {
        let specs = self.specs.read().map(|s| s.clone()).unwrap_or_default();
        specs
            .iter()
            .map(|(spec, _)| (spec.name.clone(), self.state_of(spec, event).to_string()))
            .collect()
    }
}

impl Connectors {
    /// `delivered` | `pending` | `retrying` | `dead` | `filtered` for one event.
    pub fn state_of(&self, spec: &ConnectorSpec, event: &Event) -> &'static str {
        if !spec.mapping.selects(&event.event_type) {
            return "filtered";
        }
        let dead = self
            .ledger
            .dead_letters(&spec.name)
            .map(|d| d.iter().any(|(s, _)| *s == event.seq))
            .unwrap_or(false);
        if dead {
            return "dead";
        }
        let cursor = self
            .ledger
            .cursor(&spec.name)
            .ok()
            .flatten()
            .map_or(0, |c| c.seq);
        if event.seq <= cursor {
            return "delivered";
        }
        match self.ledger.retry_state(&spec.name) {
            Ok(Some(r)) if r.seq == event.seq => "retrying",
            _ => "pending",
        }
    }
}

/// Addresses the daemon listens on (useful when the config says port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub ingest: SocketAddr,
    pub status: SocketAddr,
}

/// Runs the daemon until SIGTERM/SIGINT. `on_ready` is called once both listeners are bound.
pub async fn run(cfg: Config, on_ready: impl FnOnce(Bound)) -> anyhow::Result<()> {
    let specs = connector::load_all(&cfg.maps_dir, cfg.timezone).map_err(Diagnostics)?;
    create_data_dir(&cfg.data_dir)?;
    let seal = feed::seal::load_configured(
        cfg.feed.encryption_key_file.as_deref(),
        &cfg.feed.encryption_previous_key_files,
    )
    .context("feed.encryption_key_file")?;
    let health = Arc::new(crate::health::Health::new(
        cfg.data_dir.clone(),
        cfg.min_free_disk,
    ));
    let store = Store::open(
        &cfg.db_path(),
        StoreOptions {
            cache_size: cfg.feed.cache,
            health: Some(health.clone()),
            seal,
        },
    )
    .with_context(|| format!("cannot open {}", cfg.db_path().display()))?;
    let feed = Feed::open(store.clone())
        .with_context(|| format!("cannot open the feed in {}", cfg.db_path().display()))?;
    let ledger = Ledger::new(store.clone());
    let tls = ingest::tls::server_config(&cfg.ingest.cert, &cfg.ingest.key, &cfg.ingest.client_ca)
        .map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(cfg.ingest.listen)
        .await
        .with_context(|| format!("cannot listen on {} (ingest.listen)", cfg.ingest.listen))?;
    let ingest_addr = listener.local_addr()?;

    let metrics = crate::status::Metrics::new();
    let (wake, wake_rx) = watch::channel(0u64);
    let env = Env {
        feed: feed.clone(),
        ledger: ledger.clone(),
        timezone: cfg.timezone,
        hooks: Arc::new(metrics.clone()),
        wake: wake_rx,
    };
    let connectors = Arc::new(Connectors {
        specs: RwLock::new(Vec::new()),
        ledger: ledger.clone(),
    });
    let mut generation = start_generation(specs, &env, &connectors)?;

    let (stop_ingest, ingest_stop_rx) = watch::channel(false);
    let state = Arc::new(IngestState {
        feed: feed.clone(),
        max_body: cfg.ingest.max_body,
        health: health.clone(),
        allowed_clients: cfg.ingest.allowed_clients.clone(),
        receipts: connectors.clone(),
        hooks: Arc::new(metrics.clone()),
    });
    let status_source = crate::status::DaemonStatus::new(
        connectors.clone(),
        feed.clone(),
        cfg.data_dir.clone(),
        cfg.db_path(),
        cfg.min_free_disk,
        health.clone(),
    );
    let status_server =
        crate::status::serve(cfg.status_listen, Arc::new(status_source), metrics)
            .with_context(|| format!("cannot listen on {} (status.listen)", cfg.status_listen))?;
    let admin_backend =
        crate::admin::direct::DirectBackend::new(&cfg.maps_dir, &cfg.db_path(), store.clone())
            .on_replay(move |_| {
                wake.send_modify(|n| *n += 1);
            });
    let admin = crate::admin::server::serve(&cfg.admin_socket, Arc::new(admin_backend))
        .with_context(|| {
            format!(
                "cannot serve the admin socket {}",
                cfg.admin_socket.display()
            )
        })?;
    let retention_task = tokio::spawn(retention(
        store.clone(),
        connectors.clone(),
        cfg.retention_feed,
        ingest_stop_rx.clone(),
    ));
    let ingest_task = tokio::spawn(ingest::serve(listener, tls, state, ingest_stop_rx));
    tracing::info!(ingest = %ingest_addr, connectors = generation.tasks.len(), db = %cfg.db_path().display(), "ess serving");
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // Ready only once the signal handlers exist: a SIGTERM right after READY=1 (systemctl
    // stop just after start) must drain, not kill the process with the default action.
    on_ready(Bound {
        ingest: ingest_addr,
        status: status_server.local_addr(),
    });

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                match connector::load_all(&cfg.maps_dir, cfg.timezone) {
                    Err(errs) => {
                        for e in &errs {
                            tracing::error!("{e}");
                        }
                        tracing::error!(n_problems = errs.len(), "SIGHUP: new maps refused; the running connectors keep going");
                    }
                    Ok(specs) => {
                        stop_generation(generation).await;
                        generation = start_generation(specs, &env, &connectors)?;
                        tracing::info!(connectors = generation.tasks.len(), "SIGHUP: maps reloaded");
                    }
                }
            }
        }
    }
    // Tells systemd (Type=notify) that the stop is under way; a no-op outside systemd.
    crate::notify::stopping();
    tracing::info!("shutting down: finishing requests and deliveries under way");
    let _ = stop_ingest.send(true);
    let _ = ingest_task.await;
    stop_generation(generation).await;
    let _ = retention_task.await;
    admin.stop();
    status_server.stop();
    feed.close();
    tracing::info!("stopped; ess.redb closed");
    Ok(())
}

/// How often retention compacts the feed.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// Compacts events every connector has passed and older than `retention.feed`, at start and
/// then every [`RETENTION_EVERY`], until shutdown.
async fn retention(
    db: Store,
    connectors: Arc<Connectors>,
    keep: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let names: Vec<String> = connectors
            .specs
            .read()
            .map(|s| s.iter().map(|(c, _)| c.name.clone()).collect())
            .unwrap_or_default();
        let db2 = db.clone();
        let pass = tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            feed::retention::compact_passed(&db2, &names, keep, chrono::Utc::now())
        })
        .await;
        match pass {
            Ok(Ok(stats)) => tracing::debug!(?stats, "retention pass"),
            Ok(Err(e)) => tracing::warn!(error = %e, "retention pass failed"),
            Err(e) => tracing::warn!(error = %e, "retention pass panicked"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
        }
    }
}

/// Creates `data_dir` if needed; a new folder's parent is fsynced, so its name survives a
/// power loss (the file inside is fsynced into it when created).
fn create_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data_dir {}", dir.display()))?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot fsync {}", parent.display()))?;
    }
    Ok(())
}

fn start_generation(
    specs: Vec<ConnectorSpec>,
    env: &Env,
    connectors: &Connectors,
) -> anyhow::Result<Generation> {
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut shared = Vec::new();
    for spec in specs {
        let spec = Arc::new(spec);
        let runner = Runner::new(spec.clone(), env.clone())
            .map_err(|e| anyhow::anyhow!("{}: {e}", spec.path.display()))?;
        shared.push((spec, runner.live.clone()));
        tasks.push(tokio::spawn(runner.run(stop_rx.clone())));
    }
    if let Ok(mut s) = connectors.specs.write() {
        *s = shared;
    }
    Ok(Generation { stop, tasks })
}

async fn stop_generation(g: Generation) {
    let _ = g.stop.send(true);
    for mut t in g.tasks {
        if tokio::time::timeout(CONNECTOR_DRAIN, &mut t).await.is_err() {
            // Abandoning a delivery is safe: it is not committed, and is redone next start.
            t.abort();
            tracing::warn!(
                "a connector did not finish its delivery in time; it resumes from the ledger next start"
            );
        }
    }
}
