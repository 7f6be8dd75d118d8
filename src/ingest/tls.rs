//! TLS for the ingest listener: TLS 1.2/1.3 only, client certificates required, verified
//! against `client_ca` and, if `client_crl` is set, against its revocation lists; and who a
//! verified client is (CN and DNS SANs).
//!
//! What decides whether a client certificate is accepted ([`ClientAuth`]):
//! - webpki (through rustls' `WebPkiClientVerifier`): the chain to a `client_ca`
//!   certificate, validity dates, signatures, basic constraints, name constraints, the
//!   extendedKeyUsage (if the extension is present it must list clientAuth; absent means
//!   any purpose, RFC 5280 §4.2.1.12) and, with a CRL, revocation of the end-entity
//!   certificate (a certificate whose issuer has no CRL in the file is refused: its status
//!   is unknown).
//! - us, because webpki 0.103 does not look at an end-entity's keyUsage: if the extension
//!   is present it must allow digitalSignature (the client proves its key by signing the
//!   handshake); absent means unrestricted (RFC 5280 §4.2.1.3).
//!
//! Invariant: the CRL in force is only ever replaced by one that parsed and whose
//! signature verified with a `client_ca` key; a bad file on reload leaves the old one.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};

/// Why the ingest's TLS could not be set up (or a CRL not loaded).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {}: {source}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("no certificate found in {}", path.display())]
    NoCertificate { path: PathBuf },
    /// Missing, or readable by group or others (SPEC §3).
    #[error("{0}")]
    PrivateKey(String),
    #[error("bad client CA in {}: {source}", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot use client CA {} (with client_crl): {source}", path.display())]
    Verifier {
        path: PathBuf,
        #[source]
        source: VerifierBuilderError,
    },
    #[error("server certificate {} and key {} do not fit: {source}", cert.display(), key.display())]
    ServerIdentity {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("client_crl {}: {problem}", path.display())]
    Crl {
        path: PathBuf,
        #[source]
        problem: CrlProblem,
    },
}

/// What is wrong with a `client_crl` file.
#[derive(Debug, thiserror::Error)]
pub enum CrlProblem {
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error("bad PEM: {0}")]
    Pem(#[source] rustls_pki_types::pem::Error),
    #[error("it holds no certificate revocation list")]
    Empty,
    #[error("revocation list #{index} is not a valid X.509 CRL: {reason}")]
    Parse { index: usize, reason: String },
    #[error(
        "revocation list #{index} is issued by {issuer:?}, which is not a certificate in client_ca; ESS checks client certificates against CRLs of the CA that issued them, so that CA must be in client_ca"
    )]
    UnknownIssuer { index: usize, issuer: String },
    #[error(
        "revocation list #{index}: its signature does not verify with the key of {issuer:?} in client_ca ({reason})"
    )]
    BadSignature {
        index: usize,
        issuer: String,
        reason: String,
    },
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        what: "certificates",
        path: path.to_path_buf(),
        source,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<_, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        what: "private key",
        path: path.to_path_buf(),
        source,
    })
}

/// What a loaded `client_crl` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlSummary {
    /// Revocation lists in the file.
    pub n_lists: usize,
    /// Revoked certificates, over all lists.
    pub n_revoked: usize,
    /// Lists whose nextUpdate has passed (still used: see [`ClientAuth`]).
    pub n_stale: usize,
}

/// Reads `crl` (PEM with one or more `X509 CRL` blocks, or one DER CRL) and checks that
/// every list is issued and signed by a certificate of `client_ca`. `ess check` and the
/// daemon (at start and at every reload) use this same check.
pub fn load_crls(
    crl: &Path,
    client_ca: &[CertificateDer<'_>],
) -> Result<(Vec<CertificateRevocationListDer<'static>>, CrlSummary), TlsError> {
    let fail = |problem| TlsError::Crl {
        path: crl.to_path_buf(),
        problem,
    };
    let bytes = std::fs::read(crl).map_err(|e| fail(CrlProblem::Read(e)))?;
    let lists: Vec<CertificateRevocationListDer<'static>> =
        if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| fail(CrlProblem::Pem(e)))?
        } else {
            vec![CertificateRevocationListDer::from(bytes)]
        };
    if lists.is_empty() {
        return Err(fail(CrlProblem::Empty));
    }
    let cas: Vec<_> = client_ca
        .iter()
        .filter_map(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
        .map(|(_, c)| c)
        .collect();
    let mut summary = CrlSummary {
        n_lists: lists.len(),
        n_revoked: 0,
        n_stale: 0,
    };
    let now = x509_parser::time::ASN1Time::now();
    for (index, der) in lists.iter().enumerate() {
        let (rest, parsed) = x509_parser::parse_x509_crl(der.as_ref()).map_err(|e| {
            fail(CrlProblem::Parse {
                index,
                reason: e.to_string(),
            })
        })?;
        if !rest.is_empty() {
            return Err(fail(CrlProblem::Parse {
                index,
                reason: format!("{} bytes after its end", rest.len()),
            }));
        }
        let issuer = parsed.issuer().to_string();
        let Some(ca) = cas
            .iter()
            .find(|c| c.subject().as_raw() == parsed.issuer().as_raw())
        else {
            return Err(fail(CrlProblem::UnknownIssuer { index, issuer }));
        };
        parsed.verify_signature(ca.public_key()).map_err(|e| {
            fail(CrlProblem::BadSignature {
                index,
                issuer: issuer.clone(),
                reason: e.to_string(),
            })
        })?;
        summary.n_revoked += parsed.iter_revoked_certificates().count();
        if parsed.next_update().is_some_and(|next| next < now) {
            summary.n_stale += 1;
        }
    }
    Ok((lists, summary))
}

/// The check `ess check` runs on `ingest.client_crl`: the same as at start and reload.
pub fn check_client_crl(client_ca: &Path, crl: &Path) -> Result<CrlSummary, TlsError> {
    load_crls(crl, &load_certs(client_ca)?).map(|(_, summary)| summary)
}

/// What identifies a version of a file on disk, to notice that it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

/// The client certificate verifier of the ingest: webpki's, plus the keyUsage check, with
/// a CRL that can be replaced while the listener runs ([`ClientAuth::reload_crl`]).
///
/// Each successful reload bumps [`ClientAuth::generation`]; a connection verified under
/// an older generation has its chain checked again before its next request
/// ([`ClientAuth::recheck`]), so a certificate revoked while it was connected is refused
/// from then on, and connections whose certificates are fine are left alone.
pub struct ClientAuth {
    client_ca: PathBuf,
    roots: Arc<RootCertStore>,
    ca_certs: Vec<CertificateDer<'static>>,
    crl: Option<PathBuf>,
    hints: Vec<DistinguishedName>,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
    generation: AtomicU64,
    /// The file version last looked at (loaded or refused), so a bad file is reported
    /// once, not at every poll.
    seen: Mutex<Option<FileStamp>>,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuth")
            .field("client_ca", &self.client_ca)
            .field("crl", &self.crl)
            .field("generation", &self.generation.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlReload {
    /// No `client_crl` configured.
    NotConfigured,
    /// The file did not change since it was last looked at.
    Unchanged,
    /// The new lists are in force.
    Reloaded(CrlSummary),
}

impl ClientAuth {
    /// Loads `client_ca` and, if given, the CRL file; refuses a CRL that does not check out.
    pub fn new(client_ca: &Path, crl: Option<&Path>) -> Result<Arc<ClientAuth>, TlsError> {
        let ca_certs = load_certs(client_ca)?;
        let mut roots = RootCertStore::empty();
        for ca in &ca_certs {
            roots.add(ca.clone()).map_err(|source| TlsError::ClientCa {
                path: client_ca.to_path_buf(),
                source,
            })?;
        }
        let roots = Arc::new(roots);
        let stamp = crl.and_then(FileStamp::of);
        let (lists, summary) = crl
            .map(|path| load_crls(path, &ca_certs))
            .transpose()?
            .unzip();
        let verifier = build_verifier(&roots, client_ca, lists)?;
        if let (Some(path), Some(s)) = (crl, summary) {
            log_loaded(path, s, "at start");
        }
        Ok(Arc::new(ClientAuth {
            client_ca: client_ca.to_path_buf(),
            hints: verifier.root_hint_subjects().to_vec(),
            roots,
            ca_certs,
            crl: crl.map(Path::to_path_buf),
            current: RwLock::new(verifier),
            generation: AtomicU64::new(0),
            seen: Mutex::new(stamp),
        }))
    }

    /// Reads the CRL file again and puts it in force if it checks out; on error the lists
    /// in force stay. `force`: reload even if the file looks unchanged (SIGHUP).
    pub fn reload_crl(&self, force: bool) -> Result<CrlReload, TlsError> {
        let Some(path) = &self.crl else {
            return Ok(CrlReload::NotConfigured);
        };
        let stamp = FileStamp::of(path);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *seen == stamp {
                return Ok(CrlReload::Unchanged);
            }
            *seen = stamp;
        }
        let (lists, summary) = load_crls(path, &self.ca_certs)?;
        let verifier = build_verifier(&self.roots, &self.client_ca, Some(lists))?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = verifier;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(CrlReload::Reloaded(summary))
    }

    /// [`ClientAuth::reload_crl`] with its outcome logged; `why` says what asked for it.
    pub fn reload_crl_logged(&self, force: bool, why: &str) {
        match self.reload_crl(force) {
            Ok(CrlReload::Reloaded(s)) => {
                if let Some(path) = &self.crl {
                    log_loaded(path, s, why);
                }
            }
            Ok(CrlReload::Unchanged | CrlReload::NotConfigured) => {}
            Err(e) => {
                tracing::error!("{e}; the revocation lists loaded before stay in force ({why})")
            }
        }
    }

    /// Whether a `client_crl` is configured.
    pub fn has_crl(&self) -> bool {
        self.crl.is_some()
    }

    /// Bumped by every reload that put new lists in force.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Checks an already connected client's chain (end entity first) again, against the
    /// lists in force now.
    pub fn recheck(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Err(rustls::Error::NoCertificatesPresented);
        };
        self.verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map(|_| ())
    }

    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A webpki verifier over `roots`, checking revocation against `crls` if given.
fn build_verifier(
    roots: &Arc<RootCertStore>,
    client_ca: &Path,
    crls: Option<Vec<CertificateRevocationListDer<'static>>>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut builder = WebPkiClientVerifier::builder(roots.clone());
    if let Some(lists) = crls {
        builder = builder.with_crls(lists).only_check_end_entity_revocation();
    }
    builder.build().map_err(|source| TlsError::Verifier {
        path: client_ca.to_path_buf(),
        source,
    })
}

fn log_loaded(path: &Path, s: CrlSummary, why: &str) {
    tracing::info!(
        crl = %path.display(),
        lists = s.n_lists,
        revoked = s.n_revoked,
        "client_crl loaded ({why})"
    );
    if s.n_stale > 0 {
        tracing::warn!(
            crl = %path.display(),
            stale = s.n_stale,
            "client_crl: some revocation lists are past their nextUpdate; they are still used: publish a fresh CRL"
        );
    }
}

/// The client certificate's keyUsage does not allow what a TLS client does with its key.
#[derive(thiserror::Error)]
#[error("client certificate keyUsage does not allow digitalSignature")]
struct NoDigitalSignature;

/// rustls shows an `OtherError` by its `Debug`: make that the sentence.
impl fmt::Debug for NoDigitalSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The keyUsage rule webpki leaves to us (module doc).
fn check_key_usage(end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity.as_ref()) else {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ));
    };
    match cert.key_usage() {
        Ok(None) => Ok(()),
        Ok(Some(ku)) if ku.value.digital_signature() => Ok(()),
        Ok(Some(_)) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(NoDigitalSignature)),
        ))),
        Err(_) => Err(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        )),
    }
}

impl ClientCertVerifier for ClientAuth {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier()
            .verify_client_cert(end_entity, intermediates, now)?;
        check_key_usage(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

/// The listener's TLS: the rustls config and its reloadable client verifier.
#[derive(Debug, Clone)]
pub struct Tls {
    pub config: Arc<ServerConfig>,
    pub client_auth: Arc<ClientAuth>,
}

impl Tls {
    /// Our certificate chain and key; client certificates required and verified by a
    /// [`ClientAuth`] over `client_ca` (and `client_crl`).
    pub fn load(
        cert: &Path,
        key: &Path,
        client_ca: &Path,
        client_crl: Option<&Path>,
    ) -> Result<Tls, TlsError> {
        if let Some(problem) = crate::config::private_key_problem(key) {
            return Err(TlsError::PrivateKey(problem));
        }
        let client_auth = ClientAuth::new(client_ca, client_crl)?;
        let mut config = ServerConfig::builder_with_protocol_versions(&[
            &rustls::version::TLS13,
            &rustls::version::TLS12,
        ])
        .with_client_cert_verifier(client_auth.clone())
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|source| TlsError::ServerIdentity {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
            client_auth,
        })
    }
}

/// The names a client certificate carries: its subject CNs and DNS SANs.
pub fn client_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_string());
            }
        }
    }
    names
}

/// Whether a client with `names` may send events: `allowed` empty means any verified client.
pub fn is_allowed(names: &[String], allowed: &[String]) -> bool {
    allowed.is_empty() || names.iter().any(|n| allowed.iter().any(|a| a == n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
        DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
        RevokedCertParams, SerialNumber, date_time_ymd,
    };

    struct Pki {
        dir: tempfile::TempDir,
        ca: CertifiedIssuer<'static, KeyPair>,
    }

    impl Pki {
        fn new(name: &str) -> Pki {
            crate::cli::install_crypto_provider();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
            Pki { dir, ca }
        }

        fn leaf(&self, serial: u64, usages: Vec<KeyUsagePurpose>) -> CertificateDer<'static> {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, "client");
            params.serial_number = Some(SerialNumber::from(serial));
            params.key_usages = usages;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate().unwrap();
            params.signed_by(&key, &self.ca).unwrap().der().clone()
        }

        /// Writes a CRL revoking `serials` (PEM, or DER if `der`), valid until 2099.
        fn write_crl(&self, serials: &[u64], der: bool) {
            self.write_crl_until(serials, der, 2099);
        }

        /// Writes a CRL whose nextUpdate is in `next_year`.
        fn write_crl_until(&self, serials: &[u64], der: bool, next_year: i32) {
            let params = CertificateRevocationListParams {
                this_update: date_time_ymd(2020, 1, 1),
                next_update: date_time_ymd(next_year, 1, 1),
                crl_number: SerialNumber::from(serials.len() as u64 + 1),
                issuing_distribution_point: None,
                revoked_certs: serials
                    .iter()
                    .map(|s| RevokedCertParams {
                        serial_number: SerialNumber::from(*s),
                        revocation_time: date_time_ymd(2024, 1, 1),
                        reason_code: None,
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: KeyIdMethod::Sha256,
            };
            let crl = params.signed_by(&self.ca).unwrap();
            let path = self.crl();
            if der {
                std::fs::write(path, crl.der().as_ref()).unwrap();
            } else {
                std::fs::write(path, crl.pem().unwrap()).unwrap();
            }
        }

        fn crl(&self) -> PathBuf {
            self.dir.path().join("clients.crl")
        }

        fn auth(&self) -> Result<Arc<ClientAuth>, TlsError> {
            ClientAuth::new(&self.dir.path().join("ca.crt"), Some(&self.crl()))
        }
    }

    fn signing() -> Vec<KeyUsagePurpose> {
        vec![KeyUsagePurpose::DigitalSignature]
    }

    #[test]
    fn a_reload_puts_a_good_list_in_force_and_keeps_the_old_one_for_a_bad_file() {
        let pki = Pki::new("Unit CA");
        let (seven, eight) = (pki.leaf(7, signing()), pki.leaf(8, signing()));
        pki.write_crl(&[7], false);
        let auth = pki.auth().unwrap();
        assert!(
            auth.recheck(std::slice::from_ref(&seven)).is_err(),
            "revoked"
        );
        assert!(auth.recheck(std::slice::from_ref(&eight)).is_ok());
        assert_eq!(auth.reload_crl(false).unwrap(), CrlReload::Unchanged);
        assert_eq!(auth.generation(), 0);

        pki.write_crl(&[8], true); // DER this time
        let summary = match auth.reload_crl(false).unwrap() {
            CrlReload::Reloaded(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (summary.n_lists, summary.n_revoked, summary.n_stale),
            (1, 1, 0)
        );
        assert_eq!(auth.generation(), 1);
        assert!(
            auth.recheck(std::slice::from_ref(&seven)).is_ok(),
            "taken back"
        );
        assert!(auth.recheck(std::slice::from_ref(&eight)).is_err());

        std::fs::write(pki.crl(), b"garbage").unwrap();
        let err = auth.reload_crl(false).unwrap_err().to_string();
        assert!(err.contains("not a valid X.509 CRL"), "{err}");
        assert_eq!(auth.generation(), 1, "a bad file is not put in force");
        assert!(
            auth.recheck(std::slice::from_ref(&eight)).is_err(),
            "the old list stays"
        );
        assert_eq!(
            auth.reload_crl(false).unwrap(),
            CrlReload::Unchanged,
            "a bad file is reported once, not at every poll"
        );
        assert!(auth.reload_crl(true).is_err(), "SIGHUP tries again");
        std::fs::remove_file(pki.crl()).unwrap();
        assert!(
            auth.reload_crl(false).is_err(),
            "a removed file is an error"
        );
        assert!(
            auth.recheck(std::slice::from_ref(&eight)).is_err(),
            "the old list stays"
        );
    }

    #[test]
    fn a_list_past_its_next_update_is_still_used_and_counted_stale() {
        let pki = Pki::new("Unit CA");
        let revoked = pki.leaf(9, signing());
        pki.write_crl_until(&[9], false, 2021);
        let summary = check_client_crl(&pki.dir.path().join("ca.crt"), &pki.crl()).unwrap();
        assert_eq!(summary.n_stale, 1);
        let auth = pki.auth().unwrap();
        assert!(
            auth.recheck(std::slice::from_ref(&revoked)).is_err(),
            "a list past its nextUpdate is still used (with a warning), not dropped"
        );
        assert!(auth.recheck(&[pki.leaf(10, signing())]).is_ok());
    }

    #[test]
    fn with_a_list_a_certificate_whose_issuer_has_none_is_refused() {
        let a = Pki::new("CA A");
        let b = Pki::new("CA B");
        let both = format!("{}{}", a.ca.pem(), b.ca.pem());
        std::fs::write(a.dir.path().join("ca.crt"), both).unwrap();
        a.write_crl(&[], false);
        let auth = a.auth().unwrap();
        assert!(auth.recheck(&[a.leaf(1, signing())]).is_ok());
        let err = auth.recheck(&[b.leaf(1, signing())]).unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains("revocation"),
            "unknown status, refused: {err}"
        );
    }

    #[test]
    fn key_usage_must_allow_digital_signature_if_present() {
        let pki = Pki::new("Unit CA");
        pki.write_crl(&[], false);
        let auth = pki.auth().unwrap();
        let now = UnixTime::now();
        let verify = |cert: &CertificateDer<'_>| auth.verify_client_cert(cert, &[], now);
        assert!(verify(&pki.leaf(1, signing())).is_ok());
        assert!(
            verify(&pki.leaf(2, Vec::new())).is_ok(),
            "no keyUsage: unrestricted"
        );
        let err = verify(&pki.leaf(3, vec![KeyUsagePurpose::KeyCertSign]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("keyUsage does not allow digitalSignature"),
            "{err}"
        );
        assert!(verify(&pki.leaf(4, vec![KeyUsagePurpose::KeyEncipherment])).is_err());
    }

    #[test]
    fn a_list_not_signed_by_a_client_ca_certificate_is_refused() {
        let pki = Pki::new("Unit CA");
        for (other, want) in [
            ("Other CA", "not a certificate in client_ca"),
            ("Unit CA", "its signature does not verify"), // same name, another key
        ] {
            let other = Pki::new(other);
            other.write_crl(&[1], false);
            std::fs::copy(other.crl(), pki.crl()).unwrap();
            let err = pki.auth().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert!(err.contains("clients.crl"), "{err}");
        }
    }
}
