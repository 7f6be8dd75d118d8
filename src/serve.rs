//! `ess serve`: the daemon. Opens the database, starts one task per connector, the ingest
//! listener (and the status page), and obeys [`Control`]s: `Stop` drains and exits,
//! `Reload` reloads the maps (an invalid set is refused and the old one keeps running) and
//! `ingest.client_crl` (likewise). The signals (SIGTERM/SIGINT → `Stop`, SIGHUP → `Reload`)
//! are wired in [`crate::cli`] only, so a test drives the whole daemon in-process.
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, Diagnostics};
use crate::connector::{self, ConnectorSpec, Env, Runner};
use crate::feed::{self, Feed, Store, StoreOptions};
use crate::ingest::{self, IngestState};
use crate::ledger::Ledger;
use crate::state::{Connectors, Reader, Running};

/// How long shutdown waits for connectors to finish the delivery under way.
const CONNECTOR_DRAIN: Duration = Duration::from_secs(20);

/// The running connectors of one map generation.
struct Generation {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Addresses the daemon listens on (useful when the config says port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub ingest: SocketAddr,
    pub status: SocketAddr,
}

/// What the daemon is told to do while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Finish what is under way, close the feed, return.
    Stop,
    /// Reload the maps and the client CRL.
    Reload,
}

/// Runs the daemon until it is told [`Control::Stop`] (or every sender of `control` is
/// gone). `on_ready` is called once both listeners are bound.
pub async fn run(
    cfg: Config,
    mut control: tokio::sync::mpsc::Receiver<Control>,
    on_ready: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    let specs = connector::load_all(&cfg.maps_dir, cfg.timezone).map_err(Diagnostics)?;
    let source_specs = crate::source::load_all(&cfg.maps_dir, cfg.timezone).map_err(Diagnostics)?;
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
            ..Default::default()
        },
    )
    .with_context(|| format!("cannot open {}", cfg.db_path().display()))?;
    let feed = Feed::open(store.clone())
        .with_context(|| format!("cannot open the feed in {}", cfg.db_path().display()))?;
    let ledger = Ledger::new(store.clone());
    let tls = ingest::tls::Tls::load(
        &cfg.ingest.cert,
        &cfg.ingest.key,
        &cfg.ingest.client_ca,
        cfg.ingest.client_crl.as_deref(),
    )?;
    let client_auth = tls.client_auth.clone();
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
    let reader = Arc::new(Reader::shared(store.clone(), &cfg.db_path()));
    let connectors = Arc::new(Connectors::new(reader));
    let mut generation = start_generation(specs, &env, &connectors)?;

    let (stop_ingest, ingest_stop_rx) = watch::channel(false);
    let state = Arc::new(IngestState {
        feed: feed.clone(),
        limits: ingest::Limits::new(cfg.ingest.max_body, cfg.ingest.max_inflight_bytes),
        health: health.clone(),
        allowed_clients: cfg.ingest.allowed_clients.clone(),
        receipts: connectors.clone(),
        hooks: Arc::new(metrics.clone()),
    });
    let sources = crate::ledger::sources::Sources::new(store.clone());
    let source_lives = crate::source::running::Lives::default();
    let status_source: Arc<dyn crate::status::StatusSource> = Arc::new(
        crate::status::DaemonStatus::new(
            connectors.clone(),
            feed.clone(),
            cfg.data_dir.clone(),
            cfg.min_free_disk,
            cfg.blocked_alarm,
            health.clone(),
        )
        .with_sources(source_lives.clone()),
    );
    let status_server = crate::status::serve(cfg.status_listen, status_source.clone(), metrics)
        .with_context(|| format!("cannot listen on {} (status.listen)", cfg.status_listen))?;
    let admin_backend = crate::admin::backend::Admin::daemon(
        connectors.clone(),
        status_source.clone(),
        ledger.clone(),
        Arc::new(move |_: &str| wake.send_modify(|n| *n += 1)),
    );
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
    let mut running_sources =
        crate::source::running::Running::start(source_specs, &sources, &source_lives)
            .map_err(|e| anyhow::anyhow!(e))?;
    let ingest_task = tokio::spawn(ingest::serve(listener, tls, state, ingest_stop_rx));
    tracing::info!(ingest = %ingest_addr, connectors = generation.tasks.len(), db = %cfg.db_path().display(), "ess serving");
    // The caller installs the signal handlers before calling `run`, so a SIGTERM right
    // after READY=1 (systemctl stop just after start) drains instead of killing the process.
    on_ready(Bound {
        ingest: ingest_addr,
        status: status_server.local_addr(),
    });
    // systemd (Type=notify): the feed is open, both listeners are bound, signals handled.
    crate::notify::ready();
    crate::notify::status(&serving_status(&connectors));
    let watchdog = crate::notify::watchdog_interval().map(|every| tokio::spawn(watchdog(every)));

    while let Some(Control::Reload) = control.recv().await {
        client_auth.reload_crl_logged(true, "SIGHUP");
        crate::notify::reloading();
        generation = reload(&cfg, generation, &env, &connectors).await?;
        running_sources = reload_sources(&cfg, running_sources, &sources, &source_lives).await;
        crate::notify::ready();
        crate::notify::status(&serving_status(&connectors));
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    // Tells systemd (Type=notify) that the stop is under way; a no-op outside systemd.
    crate::notify::stopping();
    crate::notify::status("stopping: finishing requests and deliveries under way");
    tracing::info!("shutting down: finishing requests and deliveries under way");
    let _ = stop_ingest.send(true);
    let _ = ingest_task.await;
    running_sources.stop().await;
    stop_generation(generation).await;
    let _ = retention_task.await;
    admin.stop();
    status_server.stop();
    feed.close();
    tracing::info!("stopped; ess.redb closed");
    Ok(())
}

/// SIGHUP for the pickup sources: a set that loads replaces the running one (each source
/// stops after the chunk it is committing; the new ones resume from their checkpoints); an
/// invalid set is refused and the running sources keep going.
async fn reload_sources(
    cfg: &Config,
    running: crate::source::running::Running,
    sources: &crate::ledger::sources::Sources,
    lives: &crate::source::running::Lives,
) -> crate::source::running::Running {
    match crate::source::load_all(&cfg.maps_dir, cfg.timezone) {
        Err(errs) => {
            for e in &errs {
                tracing::error!("{e}");
            }
            tracing::error!(
                n_problems = errs.len(),
                "SIGHUP: new sources refused; the running sources keep going"
            );
            running
        }
        Ok(specs) => {
            running.stop().await;
            let n = specs.len();
            match crate::source::running::Running::start(specs, sources, lives) {
                Ok(r) => {
                    tracing::info!(sources = n, "SIGHUP: sources reloaded");
                    r
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: sources could not start; none runs until the next reload");
                    crate::source::running::Running::none(lives)
                }
            }
        }
    }
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
            .running()
            .iter()
            .map(|r| r.spec.name.clone())
            .collect();
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
    let mut running = Vec::new();
    for spec in specs {
        let spec = Arc::new(spec);
        let runner = Runner::new(spec.clone(), env.clone())
            .map_err(|e| anyhow::anyhow!("{}: {e}", spec.path.display()))?;
        running.push(Running {
            spec,
            live: runner.live.clone(),
            handle: runner.handle(),
        });
        tasks.push(tokio::spawn(runner.run(stop_rx.clone())));
    }
    connectors.set(running);
    Ok(Generation { stop, tasks })
}

/// SIGHUP: loads the maps again; an invalid set is refused (logged, shown on the page) and
/// the running generation keeps going, a valid one replaces it.
async fn reload(
    cfg: &Config,
    generation: Generation,
    env: &Env,
    connectors: &Connectors,
) -> anyhow::Result<Generation> {
    match connector::load_all(&cfg.maps_dir, cfg.timezone) {
        Err(errs) => {
            for e in &errs {
                tracing::error!("{e}");
            }
            tracing::error!(
                n_problems = errs.len(),
                "SIGHUP: new maps refused; the running connectors keep going"
            );
            let problems: Vec<String> = errs.iter().map(ToString::to_string).collect();
            connectors.reloaded(false, connectors.running().len(), &problems);
            Ok(generation)
        }
        Ok(specs) => {
            stop_generation(generation).await;
            let next = start_generation(specs, env, connectors)?;
            tracing::info!(connectors = next.tasks.len(), "SIGHUP: maps reloaded");
            connectors.reloaded(true, next.tasks.len(), &[]);
            Ok(next)
        }
    }
}

/// The one line `systemctl status ess` shows while serving.
fn serving_status(connectors: &Connectors) -> String {
    let names: Vec<String> = connectors
        .running()
        .iter()
        .map(|r| r.spec.name.clone())
        .collect();
    let reload = match connectors.last_reload() {
        Some(r) if !r.ok => format!(
            "; last reload REFUSED ({} problem(s): {})",
            r.n_problems,
            r.first_problem.unwrap_or_default()
        ),
        _ => String::new(),
    };
    format!(
        "serving {} connector(s): {}{reload}",
        names.len(),
        names.join(", ")
    )
}

/// Tells systemd the daemon is alive every `every`, from the async runtime itself, so a
/// runtime that stops making progress stops the pings and systemd restarts the service.
async fn watchdog(every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        crate::notify::watchdog();
    }
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
