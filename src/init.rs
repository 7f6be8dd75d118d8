//! `ess init` and `ess demo`: a working appliance in a folder, with a fresh dev CA, server
//! and client certificates (rcgen), the seed's permit map, and folders for data and output.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority that can issue server and client certificates (PEM).
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// A new self-signed CA named `cn`.
    pub fn new(cn: &str) -> Result<Ca, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate valid for `localhost`, 127.0.0.1 and ::1 (plus `extra` names).
    pub fn issue_server(&self, extra: &[&str]) -> Result<Issued, rcgen::Error> {
        let mut names: Vec<String> = vec!["localhost".into()];
        names.extend(extra.iter().map(|s| s.to_string()));
        let mut params = CertificateParams::new(names)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        params.distinguished_name.push(DnType::CommonName, "ess");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate with common name `cn`.
    pub fn issue_client(&self, cn: &str) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Options of `ess init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub ingest: String,
    pub status: String,
    pub force: bool,
}

/// The seed event of the demo (SPEC §4).
pub const SEED_EVENT: &str = r#"{"type":"PERMIT_STATUS","payload":{"id":"BP-802","status":"APPROVED","updated_at":"2025-04-12T10:03:00Z"}}"#;

/// The permit map as `ess init` writes it (SPEC §4): the commented example of `maps/`.
pub const PERMIT_MAP: &str = include_str!("../maps/permit_map.yml");

/// Its golden cases (`ess test`), as shipped in `maps/`.
pub const PERMIT_MAP_TESTS: &str = include_str!("../maps/permit_map.test.yml");

fn config_text(o: &InitOptions) -> String {
    format!(
        r#"# ess.yml — written by `ess init`. Relative paths are relative to this file's folder.
data_dir: data                  # ess.redb (feed + ledger) lives here
maps_dir: maps                  # every *.yml / *.yaml in it is one connector
timezone: UTC                   # schedules, {{{{date}}}}, date formatting (IANA name)
ingest:
  listen: {ingest}
  cert: tls/server.crt
  key: tls/server.key
  client_ca: tls/ca.crt
  allowed_clients: [codifyhq-dev]   # client cert CN or DNS SAN; empty: any cert from client_ca
  max_body: 8MiB
status:
  listen: {status}
admin:
  socket: data/admin.sock
retention:
  feed: 30d
  min_free_disk: 512MiB
log:
  format: text                  # text | json
"#,
        ingest = o.ingest,
        status = o.status
    )
}

/// Writes a working appliance into `o.dir`. Refuses an existing folder unless `force`.
pub fn init(o: &InitOptions) -> anyhow::Result<()> {
    use anyhow::Context;
    if o.dir.exists() && !o.force {
        return Err(crate::cli::UsageError(format!(
            "{} already exists; use --force to overwrite its config, certificates and map (data is kept)",
            o.dir.display()
        ))
        .into());
    }
    for sub in ["tls", "maps", "data", "out"] {
        std::fs::create_dir_all(o.dir.join(sub))
            .with_context(|| format!("cannot create {}", o.dir.join(sub).display()))?;
    }
    let ca = Ca::new("ESS dev CA").context("cannot make the dev CA")?;
    let server = ca
        .issue_server(&[])
        .context("cannot make the server certificate")?;
    let client = ca
        .issue_client("codifyhq-dev")
        .context("cannot make the client certificate")?;
    let tls = o.dir.join("tls");
    write_file(&tls.join("ca.crt"), &ca.cert_pem(), 0o644)?;
    write_file(&tls.join("server.crt"), &server.cert_pem, 0o644)?;
    write_file(&tls.join("server.key"), &server.key_pem, 0o600)?;
    write_file(&tls.join("client.crt"), &client.cert_pem, 0o644)?;
    write_file(&tls.join("client.key"), &client.key_pem, 0o600)?;
    write_file(&o.dir.join("ess.yml"), &config_text(o), 0o644)?;
    write_file(&o.dir.join("maps/permit_map.yml"), PERMIT_MAP, 0o644)?;
    write_file(
        &o.dir.join("maps/permit_map.test.yml"),
        PERMIT_MAP_TESTS,
        0o644,
    )?;
    write_file(
        &o.dir.join("seed-event.json"),
        &format!("{SEED_EVENT}\n"),
        0o644,
    )?;
    Ok(())
}

/// Writes `text` to `path` with `mode` (replacing any file there), fsynced.
pub fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use anyhow::Context;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot fsync {}", path.display()))?;
    Ok(())
}
