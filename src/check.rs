//! `ess check`: everything `ess serve` would refuse, found before it is started — the
//! config and every map (file:line:col), the TLS certificates and key (readable,
//! parseable, matching, not expired, a chain in order, client CAs that are CAs), the
//! folders the daemon writes (existing and writable, or creatable), the golden tests next
//! to the maps (`ess test`), and with `--probe` a connection to each target (TCP, TLS, the
//! SSH host key and login) that sends nothing.
//!
//! Architecture invariant: `check` changes nothing on disk and runs the same validation
//! code `serve` runs (`Config::load`, `connector::load_all`, `ingest::tls::server_config`),
//! so "check says ok" means "serve starts".

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::config::connector::DeliverSpec;
use crate::connector::ConnectorSpec;

/// A certificate that expires within this is a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);
/// How long a probe waits for one target.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What `ess check` found.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Each `file:line:col: message`; any makes `check` fail (exit 2).
    pub problems: Vec<String>,
    /// Worth knowing, not fatal (a certificate about to expire).
    pub warnings: Vec<String>,
    /// What was checked and found fine, one line each.
    pub ok: Vec<String>,
}

/// Checks the appliance of `config` as of `now`; `probe` also connects to every target.
pub(crate) fn check(config: &Path, probe: bool, now: DateTime<Utc>) -> Findings {
    let mut f = Findings::default();
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(d) => {
            f.problems.extend(d.0.iter().map(ToString::to_string));
            return f;
        }
    };
    tls(&cfg, now, &mut f);
    folders(&cfg, &mut f);
    feed_keys(&cfg, &mut f);
    let specs = match crate::connector::load_all(&cfg.maps_dir, cfg.timezone) {
        Ok(specs) => specs,
        Err(errs) => {
            f.problems.extend(errs.iter().map(ToString::to_string));
            Vec::new()
        }
    };
    for spec in &specs {
        target_folder(spec, &mut f);
    }
    match crate::source::load_all(&cfg.maps_dir, cfg.timezone) {
        Ok(sources) => {
            for s in &sources {
                if s.dir.is_dir() {
                    f.ok.push(format!("source {}: folder {}", s.name, s.dir.display()));
                } else {
                    f.problems.push(format!(
                        "{}: source {}: folder {} does not exist",
                        s.path.display(),
                        s.name,
                        s.dir.display()
                    ));
                }
            }
        }
        Err(errs) => f.problems.extend(errs.iter().map(ToString::to_string)),
    }
    // Golden cases only judge maps that load: a broken map's own problems say it all.
    if f.problems.is_empty() {
        let tests = crate::maptest::run_dir(&cfg.maps_dir, cfg.timezone);
        f.problems
            .extend(tests.failures.iter().map(ToString::to_string));
        if tests.cases > 0 {
            f.ok.push(format!("{} golden case(s) pass", tests.passed));
        }
    }
    if probe {
        probe_all(&specs, &mut f);
    }
    if f.problems.is_empty() {
        f.ok.insert(
            0,
            format!(
                "{} and {} connector(s): {}",
                config.display(),
                specs.len(),
                specs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    f
}

/// The configured encryption keys load, and open what `ess.redb` was sealed with (skipped
/// while a running daemon holds the file: it checked them when it opened it).
fn feed_keys(cfg: &Config, f: &mut Findings) {
    let current = match crate::feed::seal::load_configured(
        cfg.feed.encryption_key_file.as_deref(),
        &cfg.feed.encryption_previous_key_files,
    ) {
        Ok(k) => k,
        Err(e) => {
            f.problems.push(at(&cfg.file, e));
            return;
        }
    };
    match crate::feed::check_seal_keys(&cfg.db_path(), current.as_deref()) {
        Ok(()) if current.is_some() => f.ok.push(format!(
            "the encryption key opens {}",
            cfg.db_path().display()
        )),
        Ok(()) => {}
        Err(e) => f.problems.push(at(
            &cfg.file,
            format!(
                "the feed's encryption keys do not fit {}: {e}",
                cfg.db_path().display()
            ),
        )),
    }
}

fn at(file: &Path, message: impl std::fmt::Display) -> String {
    format!("{}:1:1: {message}", file.display())
}

/// The server certificate and key as `serve` loads them, their dates and chain order, and
/// the client CAs.
fn tls(cfg: &Config, now: DateTime<Utc>, f: &mut Findings) {
    let ing = &cfg.ingest;
    match crate::ingest::tls::Tls::load(&ing.cert, &ing.key, &ing.client_ca, None) {
        Ok(_) => f.ok.push(format!(
            "server certificate {} fits its key {}",
            ing.cert.display(),
            ing.key.display()
        )),
        Err(e) => f.problems.push(at(&ing.cert, e)),
    }
    if let Some(crl) = &ing.client_crl {
        match crate::ingest::tls::check_client_crl(&ing.client_ca, crl) {
            Ok(_) => f.ok.push(format!(
                "client_crl {} is signed by a CA in {}",
                crl.display(),
                ing.client_ca.display()
            )),
            Err(e) => f.problems.push(at(crl, e)),
        }
    }
    let chain = certificates(&ing.cert, f);
    for (i, cert) in chain.iter().enumerate() {
        dates(&ing.cert, cert, now, f);
        if let Some(issuer) = chain.get(i + 1) {
            if cert.issuer != issuer.subject {
                f.problems.push(at(
                    &ing.cert,
                    format!(
                        "certificate {} ({}) is not issued by the next one in the file ({}): put the chain in order, server certificate first",
                        i + 1,
                        cert.subject,
                        issuer.subject
                    ),
                ));
            }
        }
    }
    for ca in certificates(&ing.client_ca, f) {
        dates(&ing.client_ca, &ca, now, f);
        if !ca.is_ca {
            f.problems.push(at(
                &ing.client_ca,
                format!("{} is not a CA certificate (no basicConstraints CA:TRUE), so no client can chain to it", ca.subject),
            ));
        }
    }
}

/// What `check` needs of one certificate.
struct Cert {
    subject: String,
    issuer: String,
    not_before: i64,
    not_after: i64,
    is_ca: bool,
}

fn certificates(path: &Path, f: &mut Findings) -> Vec<Cert> {
    let ders = match crate::ingest::tls::load_certs(path) {
        Ok(d) => d,
        Err(e) => {
            f.problems.push(at(path, e));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, der) in ders.iter().enumerate() {
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, c)) => out.push(Cert {
                subject: c.subject().to_string(),
                issuer: c.issuer().to_string(),
                not_before: c.validity().not_before.timestamp(),
                not_after: c.validity().not_after.timestamp(),
                is_ca: c.is_ca(),
            }),
            Err(e) => f.problems.push(at(
                path,
                format!("certificate {} does not parse: {e}", i + 1),
            )),
        }
    }
    out
}

fn dates(path: &Path, c: &Cert, now: DateTime<Utc>, f: &mut Findings) {
    let day = |t: i64| {
        DateTime::from_timestamp(t, 0)
            .map_or_else(|| t.to_string(), |d| d.format("%Y-%m-%d").to_string())
    };
    let now_s = now.timestamp();
    if c.not_after < now_s {
        f.problems.push(at(
            path,
            format!("certificate {} expired on {}", c.subject, day(c.not_after)),
        ));
    } else if c.not_before > now_s {
        f.problems.push(at(
            path,
            format!(
                "certificate {} is not valid before {}",
                c.subject,
                day(c.not_before)
            ),
        ));
    } else if c.not_after - now_s < EXPIRY_WARNING.as_secs() as i64 {
        f.warnings.push(format!(
            "{}: certificate {} expires on {} (in {} days): renew it",
            path.display(),
            c.subject,
            day(c.not_after),
            (c.not_after - now_s) / 86_400
        ));
    }
}

/// Why a folder the daemon needs could not be used or created.
#[derive(Debug, thiserror::Error)]
enum FolderProblem {
    #[error("{} is not a folder", .0.display())]
    NotAFolder(PathBuf),
    #[error("{} is not writable by this user: {source}", .path.display())]
    NotWritable {
        path: PathBuf,
        source: rustix::io::Errno,
    },
    #[error("no folder of {} exists", .0.display())]
    NoAncestor(PathBuf),
}

/// `path` exists and is writable, or could be created (its nearest existing folder is).
fn writable_or_creatable(path: &Path) -> Result<(), FolderProblem> {
    let mut p: PathBuf = path.to_path_buf();
    loop {
        if p.exists() {
            if !p.is_dir() {
                return Err(FolderProblem::NotAFolder(p));
            }
            return rustix::fs::access(&p, rustix::fs::Access::WRITE_OK)
                .map_err(|source| FolderProblem::NotWritable { path: p, source });
        }
        match p.parent() {
            Some(parent) => p = parent.to_path_buf(),
            None => return Err(FolderProblem::NoAncestor(path.to_path_buf())),
        }
    }
}

/// Why a probe of a target failed; the message is shown as one finding.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    #[error("{}", .0.join("; "))]
    Spec(Vec<String>),
    #[error("{0}")]
    Sftp(#[from] crate::target::drop::FolderError),
    #[error("url {url}: {source}")]
    Url {
        url: String,
        source: <reqwest::Url as std::str::FromStr>::Err,
    },
    #[error("url {0} has no host")]
    NoHost(String),
    #[error("connect {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Certificates(#[from] crate::ingest::tls::TlsError),
    #[error("ca {}: {source}", .path.display())]
    Ca {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("client certificate: {0}")]
    ClientAuth(rustls::Error),
    #[error("{host}: {source}")]
    ServerName {
        host: String,
        source: rustls_pki_types::InvalidDnsNameError,
    },
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
}

fn folders(cfg: &Config, f: &mut Findings) {
    let socket_dir = cfg
        .admin_socket
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for (what, dir) in [
        ("data_dir", &cfg.data_dir),
        ("admin.socket's folder", &socket_dir),
    ] {
        if let Err(e) = writable_or_creatable(dir) {
            f.problems.push(at(&cfg.file, format!("{what}: {e}")));
        }
    }
}

fn target_folder(spec: &ConnectorSpec, f: &mut Findings) {
    if let DeliverSpec::File(d) = &spec.deliver {
        let dir = crate::config::resolve_path(&spec.base_dir, &d.dir);
        if let Err(e) = writable_or_creatable(&dir) {
            f.problems.push(at(&spec.path, format!("deliver.dir: {e}")));
        }
    }
}

/// Connects to every SFTP and HTTP target, sending nothing.
fn probe_all(specs: &[ConnectorSpec], f: &mut Findings) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            f.problems
                .push(format!("cannot start the probe runtime: {e}"));
            return;
        }
    };
    for spec in specs {
        let result = rt.block_on(async {
            tokio::time::timeout(PROBE_TIMEOUT, probe_one(spec))
                .await
                .unwrap_or(Err(ProbeError::NoAnswer(PROBE_TIMEOUT)))
        });
        match result {
            Ok(Some(what)) => f.ok.push(format!("{}: {what}", spec.name)),
            Ok(None) => {}
            Err(e) => f
                .problems
                .push(at(&spec.path, format!("probe of {}: {e}", spec.name))),
        }
    }
}

async fn probe_one(spec: &ConnectorSpec) -> Result<Option<String>, ProbeError> {
    match &spec.deliver {
        DeliverSpec::File(_) => Ok(None),
        DeliverSpec::Sftp(s) => {
            let folder = crate::target::sftp::SftpFolder::open(s, &spec.base_dir)
                .map_err(ProbeError::Spec)?;
            folder.probe().await?;
            Ok(Some(format!(
                "sftp {}: host key pinned, login and SFTP ok",
                s.host
            )))
        }
        DeliverSpec::Http(h) => probe_http(spec, h).await.map(Some),
    }
}

/// TCP, and for `https` a TLS handshake verified as the target verifies it (its `ca:` or
/// the system roots, its client certificate if any); no request is sent.
async fn probe_http(
    spec: &ConnectorSpec,
    h: &crate::config::connector::HttpDeliver,
) -> Result<String, ProbeError> {
    use rustls_pki_types::ServerName;
    let url = reqwest::Url::parse(&h.url).map_err(|source| ProbeError::Url {
        url: h.url.clone(),
        source,
    })?;
    let host = url
        .host_str()
        .ok_or_else(|| ProbeError::NoHost(h.url.clone()))?
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let addr = format!("{host}:{port}");
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|source| ProbeError::Connect {
            addr: addr.clone(),
            source,
        })?;
    if url.scheme() != "https" {
        return Ok(format!("{host}:{port} accepts connections"));
    }
    let mut roots = rustls::RootCertStore::empty();
    match &h.ca {
        Some(ca) => {
            let path = crate::config::resolve_path(&spec.base_dir, ca);
            for c in crate::ingest::tls::load_certs(&path)? {
                roots.add(c).map_err(|source| ProbeError::Ca {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match (&h.client_cert, &h.client_key) {
        (Some(c), Some(k)) => {
            let certs =
                crate::ingest::tls::load_certs(&crate::config::resolve_path(&spec.base_dir, c))?;
            let key =
                crate::ingest::tls::load_key(&crate::config::resolve_path(&spec.base_dir, k))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(ProbeError::ClientAuth)?
        }
        _ => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(host.clone())
        .map_err(|source| ProbeError::ServerName { host, source })?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|source| ProbeError::Tls {
            addr: addr.clone(),
            source,
        })?;
    Ok(format!("TLS with {addr} verified"))
}
