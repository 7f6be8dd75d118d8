//! The command line (SPEC §2). Every command finds its config the same way ([`ConfigArg`]:
//! `--config`, else `$ESS_CONFIG`, else `/etc/ess/ess.yml`), every option has help, output
//! goes through [`out`] (a closed pipe ends the output quietly), and exit codes are 0
//! success, 1 runtime failure, 2 usage or validation error ([`exit_code`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use crate::admin::{self, SettleHow};
use crate::config::{Config, Diagnostics};

/// Where every command looks for the config when not told.
pub const DEFAULT_CONFIG: &str = "/etc/ess/ess.yml";

#[derive(Debug, Parser)]
#[command(
    name = "ess",
    version,
    about = "External System Sync: a durable, exactly-once courier from CodifyHQ to legacy systems",
    after_help = "Every command reads its config from --config, else $ESS_CONFIG, else /etc/ess/ess.yml.\nExit codes: 0 ok, 1 runtime failure, 2 usage or validation error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `--config F`, else `$ESS_CONFIG`, else `/etc/ess/ess.yml`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// The appliance config (else $ESS_CONFIG, else /etc/ess/ess.yml).
    #[arg(long = "config", env = "ESS_CONFIG", default_value = DEFAULT_CONFIG, value_name = "FILE")]
    pub path: PathBuf,
}

impl ConfigArg {
    pub fn new(path: impl Into<PathBuf>) -> ConfigArg {
        ConfigArg { path: path.into() }
    }

    /// Reads and validates the config; its problems are a validation error (exit 2).
    pub fn load(&self) -> anyhow::Result<Config> {
        Ok(Config::load(&self.path)?)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Zero-setup start: `init` into DIR unless it exists, then serve it and show how to push a test event.
    Demo {
        /// Folder of the demo appliance.
        #[arg(long, default_value = "ess-demo")]
        dir: PathBuf,
    },
    /// Write a working appliance (config, dev certificates, permit map, folders) into DIR.
    Init {
        /// The folder to write (refused if it exists, unless --force).
        #[arg(long)]
        dir: PathBuf,
        /// Ingest listen address.
        #[arg(long, default_value = "127.0.0.1:8443")]
        ingest: String,
        /// Status page listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        status: String,
        /// Overwrite config, certificates and map in an existing DIR (data is kept).
        #[arg(long)]
        force: bool,
    },
    /// Run the appliance in the foreground (SIGTERM drains and exits, SIGHUP reloads maps).
    Serve(ConfigArg),
    /// Push events (JSON object, JSON array or NDJSON files; `-` = stdin) to the ingest API.
    Send(SendArgs),
    /// Validate the config, certificates, folders, every map and its golden tests; print each problem as file:line:col: message.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Also connect to every target (TCP, TLS, SSH host key and login), sending nothing.
        #[arg(long)]
        probe: bool,
    },
    /// Run the golden cases next to the maps (NAME.test.yml beside NAME.yml).
    Test {
        /// The maps folder (default: maps_dir of the config).
        maps_dir: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Work with map files.
    #[command(subcommand)]
    Map(MapCommand),
    /// List events per connector: pending, dead letters or delivered.
    List(admin::ListArgs),
    /// Deliver a range of events to one connector again (by seq or by time), or re-queue its dead letters.
    Replay(admin::ReplayArgs),
    /// Per connector: state, cursor, lag, retries, dead letters, last success and error; feed size and rate.
    Stats(admin::StatsArgs),
    /// One event: metadata, its state at every connector, the record each map makes.
    Show(admin::ShowArgs),
    /// Write a consistent copy of the database while the daemon runs.
    Backup(admin::BackupArgs),
    /// Settle dead letters that must not be replayed (kept in the ledger with the reason).
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Retry the connector's head now instead of waiting out the back-off.
    Retry(admin::TargetArgs),
    /// Hold a connector (kept across restarts) until `ess resume`.
    Pause(admin::ActArgs),
    /// Release a paused connector.
    Resume(admin::TargetArgs),
    /// Move the stuck head to the dead letters on purpose (reason `skipped`).
    Skip(admin::SkipArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Check the whole database (redb's pages and every value's checksum); list damaged seqs.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the manual page (roff).
    Man,
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// The dead letters were handled outside ESS.
    Ack(admin::DeadArgs),
    /// The dead letters must never be delivered.
    Discard(admin::DeadArgs),
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Ingest URL, e.g. https://127.0.0.1:8443 (default: from the config).
    #[arg(long)]
    pub url: Option<String>,
    /// CA certificate that signed the server certificate (default: tls/ca.crt next to ingest.cert).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate (default: tls/client.crt).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client private key (default: tls/client.key).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Give up on a batch that has had no answer (or only 503s) for this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration_arg)]
    pub timeout: Duration,
    /// Files of events; `-` reads standard input.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

fn parse_duration_arg(s: &str) -> Result<Duration, crate::config::UnitError> {
    crate::config::parse_duration(s)
}

#[derive(Debug, Subcommand)]
pub enum MapCommand {
    /// Print the record(s) a map makes from an event, with a column ruler for fixed-width.
    Preview {
        /// The map file.
        #[arg(long)]
        map: PathBuf,
        /// The appliance config, for its timezone (default UTC).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A JSON file with one event (`-` = stdin).
        event: PathBuf,
    },
    /// Print a map skeleton whose fields, widths and types come from a COBOL copybook.
    FromCopybook {
        /// The copybook (`-` = stdin).
        copybook: PathBuf,
    },
    /// Print the JSON event of each record of a legacy file, as a pickup source would read it.
    Decode {
        /// The map file whose layout (copybook, framing, encoding) reads the records.
        #[arg(long)]
        map: PathBuf,
        /// The appliance config, for its timezone (default UTC).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print each record's index, offset, record type and fields by copybook name
        /// instead of the event.
        #[arg(long)]
        fields: bool,
        /// The file of records (`-` = stdin).
        file: PathBuf,
    },
}

/// A usage or validation problem: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code for an error returned by [`run`].
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let usage = err.downcast_ref::<Diagnostics>().is_some()
        || err.downcast_ref::<UsageError>().is_some()
        || err
            .downcast_ref::<admin::AdminError>()
            .is_some_and(|e| e.is_usage());
    if usage { 2 } else { 1 }
}

/// Writes `text` to stdout. A reader that went away (`ess list | head -1`) ends the output
/// quietly: that is not a failure of the command.
pub fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to standard output"),
    }
}

/// The daemon's signals as [`crate::serve::Control`]s: SIGTERM and SIGINT stop it, SIGHUP
/// reloads. Installed before the daemon starts, so no signal finds the default action.
async fn signals() -> anyhow::Result<tokio::sync::mpsc::Receiver<crate::serve::Control>> {
    use crate::serve::Control;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let control = tokio::select! {
                _ = term.recv() => Control::Stop,
                _ = int.recv() => Control::Stop,
                _ = hup.recv() => Control::Reload,
            };
            if tx.send(control).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Installs the one crypto provider every TLS config in the process uses.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    install_crypto_provider();
    match cli.command {
        Command::Init {
            dir,
            ingest,
            status,
            force,
        } => {
            crate::init::init(&crate::init::InitOptions {
                dir: dir.clone(),
                ingest,
                status,
                force,
            })?;
            out(&format!(
                "wrote a working appliance into {}; start it with: ess serve --config {}\n",
                dir.display(),
                dir.join("ess.yml").display()
            ))
        }
        Command::Demo { dir } => demo(&dir),
        Command::Serve(config) => serve(&config),
        Command::Send(args) => send(args),
        Command::Check { config, probe } => check(&config.path, probe),
        Command::Test { maps_dir, config } => test(maps_dir, &config),
        Command::Map(m) => map(m),
        Command::List(a) => out(&admin::cli::list_output(&a)?),
        Command::Replay(a) => out(&admin::cli::replay_output(&a)?),
        Command::Stats(a) => out(&admin::cli::stats_output(&a)?),
        Command::Show(a) => out(&admin::cli::show_output(&a)?),
        Command::Backup(a) => out(&admin::cli::backup_output(&a)?),
        Command::Dead(DeadCommand::Ack(a)) => out(&admin::act::dead_output(SettleHow::Ack, &a)?),
        Command::Dead(DeadCommand::Discard(a)) => {
            out(&admin::act::dead_output(SettleHow::Discard, &a)?)
        }
        Command::Retry(a) => out(&admin::act::retry_output(&a)?),
        Command::Pause(a) => out(&admin::act::pause_output(&a)?),
        Command::Resume(a) => out(&admin::act::resume_output(&a)?),
        Command::Skip(a) => out(&admin::act::skip_output(&a)?),
        Command::Verify { config } => verify(&config),
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ess", &mut buf);
            out(&String::from_utf8_lossy(&buf))
        }
        Command::Man => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut buf)
                .context("cannot render the manual page")?;
            out(&String::from_utf8_lossy(&buf))
        }
    }
}

fn serve(config: &ConfigArg) -> anyhow::Result<()> {
    let cfg = config.load()?;
    crate::logging::init(cfg.log_format);
    let rt = runtime()?;
    let control = rt.block_on(signals())?;
    rt.block_on(crate::serve::run(cfg, control, |b| {
        let _ = out(&format!(
            "ess listening: ingest=https://{} status=http://{}\n",
            b.ingest, b.status
        ));
    }))
}

/// `ess verify`: prints the report; damage found is a runtime failure (exit 1).
fn verify(config: &ConfigArg) -> anyhow::Result<()> {
    let cfg = config.load()?;
    // The keys let verify open sealed payloads too (their tags are checksums of their own).
    crate::feed::seal::load_configured(
        cfg.feed.encryption_key_file.as_deref(),
        &cfg.feed.encryption_previous_key_files,
    )?;
    let db = cfg.db_path();
    if !db.exists() {
        return Err(UsageError(format!(
            "no database at {} (has `ess serve` run with this config?)",
            db.display()
        ))
        .into());
    }
    let report = crate::feed::verify::verify(&db)
        .with_context(|| format!("cannot verify {}", db.display()))?;
    out(&report.to_string())?;
    if report.is_clean() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "{} is damaged: {} value(s)",
            db.display(),
            report.damaged.len().max(1)
        ))
    }
}

fn map(m: MapCommand) -> anyhow::Result<()> {
    match m {
        MapCommand::Preview { map, config, event } => {
            let tz = match config {
                Some(c) => Config::load(&c)?.timezone,
                None => chrono_tz::UTC,
            };
            let text = read_input(&event)?;
            let shown = crate::map::cli::preview(&map, &text, tz)
                .map_err(|e| UsageError(format!("{e:#}")))?;
            out(&shown)
        }
        MapCommand::Decode {
            map,
            config,
            fields,
            file,
        } => map_decode(&map, config.as_deref(), fields, &file),
        MapCommand::FromCopybook { copybook } => {
            let text = read_input(&copybook)?;
            // The file's real name becomes `layout:` (PERMIT.CPY stays PERMIT.CPY).
            let name = copybook
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("record.cpy");
            // A copybook it cannot lay out is a validation error of the input (exit 2).
            let skeleton = crate::map::cli::from_copybook(&text, name)
                .map_err(|e| UsageError(format!("{e:#}")))?;
            out(&skeleton)
        }
    }
}

/// `ess map decode`: records as JSON lines on stdout, bad records on stderr (exit 2).
fn map_decode(map: &Path, config: Option<&Path>, fields: bool, file: &Path) -> anyhow::Result<()> {
    let tz = match config {
        Some(c) => Config::load(c)?.timezone,
        None => chrono_tz::UTC,
    };
    let bytes = if file == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).context("cannot read stdin")?;
        b
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let view = if fields {
        crate::map::View::Fields
    } else {
        crate::map::View::Event
    };
    let d = crate::map::cli::decode(map, &bytes, tz, view)?;
    out(&d.lines)?;
    for e in &d.errors {
        eprintln!("{}: {e}", file.display());
    }
    if !d.errors.is_empty() {
        return Err(UsageError(format!(
            "{} record(s) of {} could not be decoded",
            d.errors.len(),
            file.display()
        ))
        .into());
    }
    Ok(())
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())).into())
    }
}

fn check(config: &Path, probe: bool) -> anyhow::Result<()> {
    let found = crate::check::check(config, probe, chrono::Utc::now());
    let mut text = String::new();
    for p in &found.problems {
        text.push_str(&format!("{p}\n"));
    }
    for w in &found.warnings {
        text.push_str(&format!("warning: {w}\n"));
    }
    if found.problems.is_empty() {
        for ok in &found.ok {
            text.push_str(&format!("ok: {ok}\n"));
        }
    }
    out(&text)?;
    if found.problems.is_empty() {
        Ok(())
    } else {
        Err(UsageError(format!(
            "{} problem(s) in {} and its maps",
            found.problems.len(),
            config.display()
        ))
        .into())
    }
}

fn test(maps_dir: Option<PathBuf>, config: &ConfigArg) -> anyhow::Result<()> {
    let (dir, tz) = match maps_dir {
        // A folder given: its maps alone, in the config's timezone when one is found.
        Some(d) => (
            d,
            Config::load(&config.path).map_or(chrono_tz::UTC, |c| c.timezone),
        ),
        None => {
            let cfg = config.load()?;
            (cfg.maps_dir.clone(), cfg.timezone)
        }
    };
    let outcome = crate::maptest::run_dir(&dir, tz);
    out(&crate::maptest::report(&outcome))?;
    if !outcome.failures.is_empty() {
        return Err(UsageError(format!(
            "{} golden case(s) failed in {}",
            outcome.failures.len(),
            dir.display()
        ))
        .into());
    }
    if outcome.files == 0 {
        return Err(UsageError(format!(
            "no golden files (NAME.test.yml) in {}",
            dir.display()
        ))
        .into());
    }
    Ok(())
}

fn send(args: SendArgs) -> anyhow::Result<()> {
    crate::logging::init(crate::config::LogFormat::Text);
    let explicit =
        args.url.is_some() && args.ca.is_some() && args.cert.is_some() && args.key.is_some();
    let cfg = if explicit {
        None
    } else {
        Some(args.config.load()?)
    };
    let tls_dir = cfg
        .as_ref()
        .and_then(|c| c.ingest.cert.parent().map(Path::to_path_buf));
    let pick = |given: Option<PathBuf>, file: &str| -> PathBuf {
        given.unwrap_or_else(|| tls_dir.clone().unwrap_or_default().join(file))
    };
    let url = match (args.url.clone(), &cfg) {
        (Some(u), _) => u,
        (None, Some(c)) => {
            let mut addr = c.ingest.listen;
            if addr.port() == 0 {
                return Err(UsageError(format!(
                    "{} listens on port 0 (chosen at start); give --url https://HOST:PORT",
                    c.file.display()
                ))
                .into());
            }
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("https://{addr}")
        }
        (None, None) => return Err(UsageError("give --config, or --url".into()).into()),
    };
    let target = crate::send::Target {
        url,
        ca: pick(args.ca, "ca.crt"),
        cert: pick(args.cert, "client.crt"),
        key: pick(args.key, "client.key"),
    };
    let mut events = Vec::new();
    for f in &args.files {
        events.extend(crate::send::read_events(f)?);
    }
    let totals = runtime()?.block_on(crate::send::send(&target, &events, true, args.timeout))?;
    out(&format!(
        "accepted: {}, duplicates: {}\n",
        totals.accepted, totals.duplicates
    ))
}

fn demo(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        crate::init::init(&crate::init::InitOptions {
            dir: dir.to_path_buf(),
            ingest: "127.0.0.1:8443".into(),
            status: "127.0.0.1:8080".into(),
            force: false,
        })?;
        out(&format!("wrote a demo appliance into {}\n", dir.display()))?;
    }
    let config = dir.join("ess.yml");
    let cfg = Config::load(&config)?;
    crate::logging::init(cfg.log_format);
    let me = std::env::current_exe().ok();
    let under_cargo = me
        .as_ref()
        .is_some_and(|p| p.components().any(|c| c.as_os_str() == "target"));
    let send_cmd = if under_cargo {
        "cargo run --release -- send".to_string()
    } else {
        format!(
            "{} send",
            me.map_or("ess".into(), |p| p.display().to_string())
        )
    };
    let out_file = dir.join("out/permit.txt");
    let rt = runtime()?;
    let control = rt.block_on(signals())?;
    rt.block_on(crate::serve::run(cfg, control, move |b| {
        let _ = out(&format!(
            "\nESS demo is running (Ctrl-C stops it).\n  ingest   https://{}  (mutual TLS; client certificate {})\n  status   http://{}/\n\nPush the seed event (in another terminal):\n  {send_cmd} --config {} {}\n\nThen look at {}:\n  BP-802    APPROVED  20250412100300\n\n",
            b.ingest,
            dir.join("tls/client.crt").display(),
            b.status,
            config.display(),
            dir.join("seed-event.json").display(),
            out_file.display()
        ));
    }))
}
