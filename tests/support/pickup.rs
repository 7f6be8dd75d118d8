//! Shared parts of the pickup tests: a private CA with a server certificate for 127.0.0.1
//! and a client certificate (the CodifyHQ endpoint's mutual TLS), the source's file rows
//! read from a stopped daemon's feed, and a file dropped by rename.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use ess::ledger::sources::SourceFile;
use redb::ReadableDatabase;

use super::support::Appliance;

/// Writes `bytes` under a temp name and renames it to `name`, as a careful writer does.
pub(crate) fn drop_file(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!("{name}.part"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) server: rustls::ServerConfig,
}

pub(crate) fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "CodifyHQ Test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        (p.signed_by(&key, &issuer).unwrap(), key)
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()], "codifyhq");
    let (client_cert, client_key) = leaf(vec![], "ess-city-hall");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.pem"), client_cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let server = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server_cert.der().clone()], key)
        .unwrap();
    Pki { dir, server }
}

/// The source's file rows, read from the feed file of a stopped daemon.
pub(crate) fn rows_of(app: &Appliance, source: &str) -> Vec<SourceFile> {
    // A copy: a file left by a kill needs redb's repair, which is ESS's to do on its own.
    let copy = app.tmp.path().join("copy.redb");
    std::fs::copy(app.dir.join("data/ess.redb"), &copy).unwrap();
    let db = redb::Database::open(&copy).unwrap();
    let tx = db.begin_read().unwrap();
    ess::ledger::sources::files_at(&tx, source)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

/// The rows of the source named `results`.
pub(crate) fn rows(app: &Appliance) -> Vec<SourceFile> {
    rows_of(app, "results")
}
