//! `ess.yml`: raw serde structs (unknown keys refused) turned into a validated [`Config`].
//!
//! Every problem is collected as a [`Diagnostic`] (`file:line:col: message`) instead of
//! stopping at the first one, so `ess check` can show an operator all of them at once.
//! Relative paths are resolved against the config file's folder here, once, so the rest of
//! the program only ever sees absolute paths.

pub mod connector;
mod units;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

pub use units::{UnitError, parse_duration, parse_size};

/// One problem in a config or map file, pointing at the place to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub col: u64,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &Path, line: u64, col: u64, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }

    /// A problem located at a parsed value.
    pub fn at<T>(file: &Path, spanned: &Spanned<T>, message: impl Into<String>) -> Self {
        Diagnostic::new(
            file,
            spanned.referenced.line(),
            spanned.referenced.column(),
            message,
        )
    }

    /// A YAML syntax or shape error from serde-saphyr.
    pub fn from_yaml(file: &Path, err: &serde_saphyr::Error) -> Self {
        let (line, col) = err
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let message = err.without_snippet().to_string();
        // The rendered message repeats the position; keep the first line, which names the problem.
        let mut message = message.lines().next().unwrap_or("invalid YAML").to_string();
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        Diagnostic::new(file, line, col, message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Several diagnostics, as one error for `anyhow` callers.
#[derive(Debug, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Spanned<String>,
    maps_dir: Spanned<String>,
    #[serde(default)]
    timezone: Option<Spanned<String>>,
    ingest: RawIngest,
    #[serde(default)]
    status: Option<RawStatus>,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    retention: Option<RawRetention>,
    #[serde(default)]
    feed: Option<RawFeed>,
    #[serde(default)]
    log: Option<RawLog>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    #[serde(default)]
    cache: Option<Spanned<String>>,
    #[serde(default)]
    encryption_key_file: Option<Spanned<String>>,
    #[serde(default)]
    encryption_previous_key_files: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngest {
    listen: Spanned<String>,
    cert: Spanned<String>,
    key: Spanned<String>,
    client_ca: Spanned<String>,
    #[serde(default)]
    allowed_clients: Vec<String>,
    #[serde(default)]
    max_body: Option<Spanned<String>>,
    #[serde(default)]
    max_inflight_bytes: Option<Spanned<String>>,
    #[serde(default)]
    client_crl: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    #[serde(default)]
    listen: Option<Spanned<String>>,
    /// A connector blocked longer than this makes `/healthz` say `degraded`.
    #[serde(default)]
    blocked_alarm: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    #[serde(default)]
    feed: Option<Spanned<String>>,
    #[serde(default)]
    min_free_disk: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Spanned<String>,
}

/// Log line format (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated appliance config. All paths are absolute.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub file: PathBuf,
    pub data_dir: PathBuf,
    pub maps_dir: PathBuf,
    pub timezone: chrono_tz::Tz,
    pub ingest: IngestConfig,
    pub status_listen: SocketAddr,
    /// `status.blocked_alarm` (default 15 min).
    pub blocked_alarm: std::time::Duration,
    pub admin_socket: PathBuf,
    pub retention_feed: std::time::Duration,
    pub min_free_disk: u64,
    pub feed: FeedConfig,
    pub log_format: LogFormat,
}

/// `feed:` — the redb page cache and encryption at rest.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// redb page cache in bytes.
    pub cache: usize,
    /// The key new payloads are sealed with: a path, or `credential:NAME` (a systemd
    /// credential). `None`: payloads are stored in clear.
    pub encryption_key_file: Option<PathBuf>,
    /// Keys of earlier rotations, still needed to open what they sealed.
    pub encryption_previous_key_files: Vec<PathBuf>,
}

impl Default for FeedConfig {
    fn default() -> FeedConfig {
        FeedConfig {
            cache: crate::feed::store::DEFAULT_CACHE,
            encryption_key_file: None,
            encryption_previous_key_files: Vec::new(),
        }
    }
}

/// Smallest `feed.cache` accepted: redb needs room for a few pages per table.
const MIN_FEED_CACHE: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    /// Client certificate CNs or DNS SANs let in; empty: any certificate from `client_ca`.
    pub allowed_clients: Vec<String>,
    pub max_body: u64,
    /// All request bodies in flight together; a request that would go above gets 503.
    pub max_inflight_bytes: u64,
    /// Revoked client certificates (PEM or DER CRLs), if set.
    pub client_crl: Option<PathBuf>,
}

/// `ingest.max_inflight_bytes` when the config does not say: this many maximum-size
/// bodies at once.
pub const DEFAULT_INFLIGHT_BODIES: u64 = 4;

impl Config {
    /// The redb file holding feed and ledger.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("ess.redb")
    }

    /// Reads and validates `path`; every problem found is returned, not just the first.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![Diagnostic::new(
                path,
                1,
                1,
                format!("cannot read config: {e}"),
            )])
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (relative paths resolve against its folder).
    pub fn parse(path: &Path, text: &str) -> Result<Config, Diagnostics> {
        let raw: RawConfig = serde_saphyr::from_str(text)
            .map_err(|e| Diagnostics(vec![Diagnostic::from_yaml(path, &e)]))?;
        let base = absolute_dir_of(path);
        let mut errs = Vec::new();
        let resolve = |s: &Spanned<String>| resolve_path(&base, &s.value);

        let timezone = match &raw.timezone {
            None => chrono_tz::UTC,
            Some(tz) => tz.value.parse::<chrono_tz::Tz>().unwrap_or_else(|_| {
                errs.push(Diagnostic::at(
                    path,
                    tz,
                    format!(
                        "unknown timezone {:?} (use an IANA name such as America/New_York)",
                        tz.value
                    ),
                ));
                chrono_tz::UTC
            }),
        };
        let ingest = ingest_config(&raw.ingest, path, &base, &mut errs);
        let status_listen = match raw.status.as_ref().and_then(|s| s.listen.as_ref()) {
            Some(l) => address(path, &mut errs, "status.listen", l),
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let fifteen_minutes = Duration::from_secs(15 * 60);
        let blocked_alarm = raw
            .status
            .as_ref()
            .and_then(|s| s.blocked_alarm.as_ref())
            .map_or(fifteen_minutes, |s| {
                unit_or(path, &mut errs, "status.blocked_alarm", s, parse_duration)
                    .unwrap_or(fifteen_minutes)
            });
        let retention = raw.retention.as_ref();
        let retention_feed =
            retention
                .and_then(|r| r.feed.as_ref())
                .map_or(Duration::from_secs(30 * 86_400), |s| {
                    unit_or(path, &mut errs, "retention.feed", s, parse_duration)
                        .unwrap_or(Duration::ZERO)
                });
        let min_free_disk = retention
            .and_then(|r| r.min_free_disk.as_ref())
            .map_or(512 << 20, |s| {
                unit_or(path, &mut errs, "retention.min_free_disk", s, parse_size).unwrap_or(0)
            });
        let feed = raw
            .feed
            .as_ref()
            .map(|f| feed_config(f, path, &base, &mut errs))
            .unwrap_or_default();
        let log_format = match raw.log.as_ref().map(|l| &l.format) {
            None => LogFormat::Text,
            Some(f) if f.value == "text" => LogFormat::Text,
            Some(f) if f.value == "json" => LogFormat::Json,
            Some(f) => {
                errs.push(Diagnostic::at(
                    path,
                    f,
                    format!("log.format must be text or json, not {:?}", f.value),
                ));
                LogFormat::Text
            }
        };
        let admin_socket = match &raw.admin {
            Some(a) => resolve(&a.socket),
            None => resolve_path(&base, &raw.data_dir.value).join("admin.sock"),
        };
        if !errs.is_empty() {
            return Err(Diagnostics(errs));
        }
        Ok(Config {
            file: base.join(path.file_name().unwrap_or_default()),
            data_dir: resolve(&raw.data_dir),
            maps_dir: resolve(&raw.maps_dir),
            timezone,
            ingest,
            status_listen,
            blocked_alarm,
            admin_socket,
            retention_feed,
            min_free_disk,
            feed,
            log_format,
        })
    }
}

/// `s` as a socket address, or a placeholder with a diagnostic at `s`.
fn address(path: &Path, errs: &mut Vec<Diagnostic>, what: &str, s: &Spanned<String>) -> SocketAddr {
    s.value.parse().unwrap_or_else(|_| {
        errs.push(Diagnostic::at(
            path,
            s,
            format!(
                "{what}: {:?} is not an address such as 127.0.0.1:8443",
                s.value
            ),
        ));
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

/// The `ingest:` section: listener, TLS files (the key's permissions checked now), limits.
fn ingest_config(
    raw: &RawIngest,
    path: &Path,
    base: &Path,
    errs: &mut Vec<Diagnostic>,
) -> IngestConfig {
    let listen = address(path, errs, "ingest.listen", &raw.listen);
    let max_body = raw.max_body.as_ref().map_or(8 << 20, |s| {
        unit_or(path, errs, "ingest.max_body", s, parse_size).unwrap_or(0)
    });
    let max_inflight_bytes = match &raw.max_inflight_bytes {
        None => max_body.saturating_mul(DEFAULT_INFLIGHT_BODIES),
        Some(s) => match unit_or(path, errs, "ingest.max_inflight_bytes", s, parse_size) {
            Some(n) if n < max_body => {
                errs.push(Diagnostic::at(
                    path,
                    s,
                    format!(
                        "ingest.max_inflight_bytes ({n} bytes) must be at least max_body ({max_body} bytes), or no request of the largest size could ever be taken"
                    ),
                ));
                0
            }
            Some(n) => n,
            None => 0,
        },
    };
    let resolve = |s: &Spanned<String>| resolve_path(base, &s.value);
    let key = resolve(&raw.key);
    if let Some(problem) = private_key_problem(&key) {
        errs.push(Diagnostic::at(path, &raw.key, problem));
    }
    IngestConfig {
        listen,
        cert: resolve(&raw.cert),
        key,
        client_ca: resolve(&raw.client_ca),
        allowed_clients: raw.allowed_clients.clone(),
        max_body,
        max_inflight_bytes,
        client_crl: raw.client_crl.as_ref().map(resolve),
    }
}

/// `s` parsed by `parse` (a size or a duration), or `None` with a diagnostic at `s`.
fn unit_or<T>(
    path: &Path,
    errs: &mut Vec<Diagnostic>,
    what: &str,
    s: &Spanned<String>,
    parse: fn(&str) -> Result<T, UnitError>,
) -> Option<T> {
    parse(&s.value)
        .map_err(|e| errs.push(Diagnostic::at(path, s, format!("{what}: {e}"))))
        .ok()
}

/// The `feed:` section: page cache and encryption keys (each key file read now, so a bad
/// key is a config error with its line, not a failure at start).
fn feed_config(f: &RawFeed, path: &Path, base: &Path, errs: &mut Vec<Diagnostic>) -> FeedConfig {
    let mut feed = FeedConfig::default();
    if let Some(c) = &f.cache {
        match unit_or(path, errs, "feed.cache", c, parse_size) {
            Some(n) if n >= MIN_FEED_CACHE => {
                feed.cache = usize::try_from(n).unwrap_or(usize::MAX);
            }
            Some(_) => errs.push(Diagnostic::at(path, c, "feed.cache must be at least 1MiB")),
            None => {}
        }
    }
    // `credential:NAME` is a systemd credential, found at run time.
    let key_path = |s: &Spanned<String>| {
        if s.value.starts_with("credential:") {
            PathBuf::from(&s.value)
        } else {
            resolve_path(base, &s.value)
        }
    };
    feed.encryption_key_file = f.encryption_key_file.as_ref().map(key_path);
    feed.encryption_previous_key_files = f
        .encryption_previous_key_files
        .iter()
        .map(key_path)
        .collect();
    let all = f
        .encryption_key_file
        .iter()
        .chain(&f.encryption_previous_key_files);
    for spec in all {
        if spec.value.starts_with("credential:") {
            continue;
        }
        if let Err(e) = crate::feed::seal::load_key_file(&key_path(spec)) {
            errs.push(Diagnostic::at(path, spec, e.to_string()));
        }
    }
    if f.encryption_key_file.is_none() && !f.encryption_previous_key_files.is_empty() {
        errs.push(Diagnostic::at(
            path,
            &f.encryption_previous_key_files[0],
            "feed.encryption_previous_key_files needs feed.encryption_key_file (the key new values are sealed with)",
        ));
    }
    feed
}

/// The absolute folder holding `file`.
pub fn absolute_dir_of(file: &Path) -> PathBuf {
    let abs = if file.is_absolute() {
        file.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(file)
    };
    abs.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// `p` if absolute, else `base/p`.
pub fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Why a private key file must not be used, if it must not: missing, or readable by group
/// or others (SPEC §3). `None` when it is fine.
pub fn private_key_problem(key: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(key) {
        Err(e) => Some(format!("cannot read private key {}: {e}", key.display())),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Some(format!(
            "private key {} is readable by group or others (mode {:o}); run: chmod 600 {}",
            key.display(),
            m.permissions().mode() & 0o777,
            key.display()
        )),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_key(dir: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.join("server.key");
        std::fs::write(&key, "k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    const MINIMAL: &str = "data_dir: data\nmaps_dir: maps\ningest:\n  listen: 127.0.0.1:8443\n  cert: server.crt\n  key: server.key\n  client_ca: ca.crt\n";

    #[test]
    fn minimal_config_gets_defaults_and_absolute_paths() {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), 0o600);
        let cfg = Config::parse(&dir.path().join("ess.yml"), MINIMAL).unwrap();
        assert_eq!(cfg.data_dir, dir.path().join("data"));
        assert_eq!(cfg.ingest.max_body, 8 << 20);
        assert_eq!(cfg.status_listen.port(), 8080);
        assert_eq!(cfg.timezone, chrono_tz::UTC);
        assert_eq!(cfg.min_free_disk, 512 << 20);
    }

    #[test]
    fn max_inflight_bytes_defaults_to_four_bodies_and_client_crl_resolves() {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), 0o600);
        let path = dir.path().join("ess.yml");
        let cfg = Config::parse(
            &path,
            &MINIMAL.replace("8443\n", "8443\n  max_body: 1MiB\n"),
        )
        .unwrap();
        assert_eq!(cfg.ingest.max_inflight_bytes, 4 << 20);
        assert_eq!(cfg.ingest.client_crl, None);
        let text = format!("{MINIMAL}  max_inflight_bytes: 64MiB\n  client_crl: tls/clients.crl\n");
        let cfg = Config::parse(&path, &text).unwrap();
        assert_eq!(cfg.ingest.max_inflight_bytes, 64 << 20);
        assert_eq!(
            cfg.ingest.client_crl,
            Some(dir.path().join("tls/clients.crl"))
        );
        let text = format!("{MINIMAL}  max_inflight_bytes: lots\n");
        let err = Config::parse(&path, &text).unwrap_err().to_string();
        assert!(
            err.contains("ess.yml:8:23: ingest.max_inflight_bytes"),
            "{err}"
        );
    }

    #[test]
    fn feed_cache_and_encryption_keys_are_checked_where_they_are_written() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), 0o600);
        let cfg = Config::parse(&dir.path().join("ess.yml"), MINIMAL).unwrap();
        assert_eq!(cfg.feed.cache, crate::feed::store::DEFAULT_CACHE);
        assert!(cfg.feed.encryption_key_file.is_none());
        let key = dir.path().join("feed.key");
        std::fs::write(&key, [5u8; 32]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!("{MINIMAL}feed:\n  cache: 16MiB\n  encryption_key_file: feed.key\n");
        let cfg = Config::parse(&dir.path().join("ess.yml"), &text).unwrap();
        assert_eq!(cfg.feed.cache, 16 << 20);
        assert_eq!(cfg.feed.encryption_key_file.as_deref(), Some(key.as_path()));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Config::parse(&dir.path().join("ess.yml"), &text).unwrap_err();
        assert!(
            err.to_string().contains("ess.yml:10:24: encryption key"),
            "{err}"
        );
        let text = format!("{MINIMAL}feed:\n  cache: 10KiB\n  colour: 1\n");
        let err = Config::parse(&dir.path().join("ess.yml"), &text).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let text = format!("{MINIMAL}feed:\n  cache: 10KiB\n");
        let err = Config::parse(&dir.path().join("ess.yml"), &text).unwrap_err();
        assert!(err.to_string().contains("at least 1MiB"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), 0o600);
        let text = format!("{MINIMAL}colour: blue\n");
        let err = Config::parse(&dir.path().join("ess.yml"), &text).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains("ess.yml:8:1: unknown field `colour`"),
            "{shown}"
        );
        assert!(!shown.contains("at line"), "position said twice: {shown}");
        assert!(shown.contains("colour"), "{shown}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), 0o644);
        let text = MINIMAL.replace("127.0.0.1:8443", "nowhere") + "timezone: Mars/Olympus\n";
        let err = Config::parse(&dir.path().join("ess.yml"), &text).unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
        let shown = err.to_string();
        assert!(shown.contains("Mars/Olympus"), "{shown}");
        assert!(shown.contains("readable by group or others"), "{shown}");
        assert!(shown.contains("ess.yml:4:11: ingest.listen"), "{shown}");
    }
}
