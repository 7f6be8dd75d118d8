//! The command line (SPEC §2): `demo`, `init`, `serve`, `send`, `check`, `map …`.
//! Exit codes: 0 success, 1 runtime failure, 2 usage or validation error ([`exit_code`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, Diagnostics};

#[derive(Debug, Parser)]
#[command(
    name = "ess",
    version,
    about = "External System Sync: a durable, exactly-once courier from CodifyHQ to legacy systems"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
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
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Push events (JSON object, JSON array or NDJSON files; `-` = stdin) to the ingest API.
    Send(SendArgs),
    /// Validate the config and every map; print each problem as file:line:col: message.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Work with map files.
    #[command(subcommand)]
    Map(MapCommand),
    /// List events per connector: pending (not yet delivered) or dead letters.
    List(crate::admin::ListArgs),
    /// Re-deliver a range of events to one connector, or re-queue its dead letters.
    Replay(crate::admin::ReplayArgs),
    /// Per connector: cursor, lag, delivered, retrying, dead, last success and error; feed size and rate.
    Stats(crate::admin::StatsArgs),
    /// Write a consistent copy of the database while the daemon runs.
    Backup(crate::admin::BackupArgs),
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The appliance config: gives the ingest address and the dev client certificate in its tls/ folder.
    #[arg(long)]
    pub config: Option<PathBuf>,
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
    /// Files of events; `-` reads standard input.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum MapCommand {
    /// Print the record(s) a map makes from an event, with a column ruler for fixed-width.
    Preview {
        #[arg(long)]
        map: PathBuf,
        /// The appliance config, for its timezone (default UTC).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A JSON file with one event (`-` = stdin).
        event: PathBuf,
    },
    /// Print a map skeleton whose fields, widths and types come from a COBOL copybook.
    FromCopybook { copybook: PathBuf },
    /// Print the JSON event of each record of a legacy file, as a pickup source would read it.
    Decode {
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
    if err.downcast_ref::<Diagnostics>().is_some() || err.downcast_ref::<UsageError>().is_some() {
        2
    } else {
        1
    }
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

fn init_logging(format: crate::config::LogFormat) {
    crate::logging::init(format);
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
            println!(
                "wrote a working appliance into {}; start it with: ess serve --config {}",
                dir.display(),
                dir.join("ess.yml").display()
            );
            Ok(())
        }
        Command::Demo { dir } => demo(&dir),
        Command::Serve { config } => {
            let cfg = Config::load(&config)?;
            init_logging(cfg.log_format);
            runtime()?.block_on(crate::serve::run(cfg, |b| {
                println!(
                    "ess listening: ingest=https://{} status=http://{}",
                    b.ingest, b.status
                );
                // systemd (Type=notify): the feed is open and the listeners are bound.
                crate::notify::ready();
            }))
        }
        Command::Send(args) => send(args),
        Command::List(a) => crate::admin::run_list(&a),
        Command::Replay(a) => crate::admin::run_replay(&a),
        Command::Stats(a) => crate::admin::run_stats(&a),
        Command::Backup(a) => crate::admin::run_backup(&a),
        Command::Check { config } => check(&config),
        Command::Map(MapCommand::Preview { map, config, event }) => {
            let tz = match config {
                Some(c) => Config::load(&c)?.timezone,
                None => chrono_tz::UTC,
            };
            let text = read_input(&event)?;
            print!("{}", crate::map::cli::preview(&map, &text, tz)?);
            Ok(())
        }
        Command::Map(MapCommand::Decode {
            map,
            config,
            fields,
            file,
        }) => map_decode(&map, config.as_deref(), fields, &file),
        Command::Map(MapCommand::FromCopybook { copybook }) => {
            let text = read_input(&copybook)?;
            // The file's real name becomes `layout:` (PERMIT.CPY stays PERMIT.CPY).
            let name = copybook
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or("record.cpy");
            print!("{}", crate::map::cli::from_copybook(&text, name)?);
            Ok(())
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
    print!("{}", d.lines);
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
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

fn check(config: &Path) -> anyhow::Result<()> {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(d) => {
            for e in &d.0 {
                println!("{e}");
            }
            return Err(
                UsageError(format!("{} problem(s) in {}", d.0.len(), config.display())).into(),
            );
        }
    };
    match crate::connector::load_all(&cfg.maps_dir, cfg.timezone) {
        Ok(specs) => {
            println!(
                "ok: {} and {} connector(s): {}",
                config.display(),
                specs.len(),
                specs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        Err(errs) => {
            for e in &errs {
                println!("{e}");
            }
            Err(UsageError(format!(
                "{} problem(s) in the maps of {}",
                errs.len(),
                cfg.maps_dir.display()
            ))
            .into())
        }
    }
}

fn send(args: SendArgs) -> anyhow::Result<()> {
    init_logging(crate::config::LogFormat::Text);
    let cfg = args.config.as_deref().map(Config::load).transpose()?;
    let tls_dir = cfg
        .as_ref()
        .and_then(|c| c.ingest.cert.parent().map(Path::to_path_buf));
    let pick = |given: Option<PathBuf>, file: &str, flag: &str| -> anyhow::Result<PathBuf> {
        given
            .or_else(|| tls_dir.as_ref().map(|d| d.join(file)))
            .ok_or_else(|| UsageError(format!("give --config, or {flag}")).into())
    };
    let url = match (args.url, &cfg) {
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
        ca: pick(args.ca, "ca.crt", "--ca")?,
        cert: pick(args.cert, "client.crt", "--cert")?,
        key: pick(args.key, "client.key", "--key")?,
    };
    let mut events = Vec::new();
    for f in &args.files {
        events.extend(crate::send::read_events(f)?);
    }
    let totals = runtime()?.block_on(crate::send::send(&target, &events, true))?;
    println!(
        "accepted: {}, duplicates: {}",
        totals.accepted, totals.duplicates
    );
    Ok(())
}

fn demo(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        crate::init::init(&crate::init::InitOptions {
            dir: dir.to_path_buf(),
            ingest: "127.0.0.1:8443".into(),
            status: "127.0.0.1:8080".into(),
            force: false,
        })?;
        println!("wrote a demo appliance into {}", dir.display());
    }
    let config = dir.join("ess.yml");
    let cfg = Config::load(&config)?;
    init_logging(cfg.log_format);
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
    runtime()?.block_on(crate::serve::run(cfg, move |b| {
        println!();
        println!("ESS demo is running (Ctrl-C stops it).");
        println!(
            "  ingest   https://{}  (mutual TLS; client certificate {})",
            b.ingest,
            dir.join("tls/client.crt").display()
        );
        println!("  status   http://{}/", b.status);
        println!();
        println!("Push the seed event (in another terminal):");
        println!(
            "  {send_cmd} --config {} {}",
            config.display(),
            dir.join("seed-event.json").display()
        );
        println!();
        println!("Then look at {}:", out_file.display());
        println!("  BP-802    APPROVED  20250412100300");
        println!();
    }))
}
