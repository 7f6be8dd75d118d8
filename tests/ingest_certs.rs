//! Issue 15, point 6: client certificates made with `openssl` (a CA of its own, `openssl
//! ca` for issuing, revoking and CRLs) against the real `ess serve`.
//!
//! keyUsage must allow digitalSignature and extendedKeyUsage must allow clientAuth (an
//! absent extension allows everything, RFC 5280); a certificate on `ingest.client_crl` is
//! refused; the list is reloaded when the file changes and on SIGHUP, connections whose
//! certificates are fine stay up, one revoked while connected is refused at its next
//! request; a bad list is a clear error at start and is ignored (the old one stays) on
//! reload.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// A certificate authority driven through the `openssl` command line.
struct OpensslCa {
    dir: PathBuf,
}

const CA_CONFIG: &str = r#"
[ca]
default_ca = CA_default
[CA_default]
dir = DIR
database = $dir/index.txt
serial = $dir/serial
crlnumber = $dir/crlnumber
new_certs_dir = $dir/newcerts
certificate = $dir/ca.crt
private_key = $dir/ca.key
default_md = sha256
default_days = 30
default_crl_days = 30
policy = policy_any
unique_subject = no
[policy_any]
commonName = supplied
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
"#;

/// Client certificate profiles (sections of the CA config): name, keyUsage, extendedKeyUsage.
const PROFILES: [(&str, Option<&str>, Option<&str>); 5] = [
    ("good", Some("digitalSignature"), Some("clientAuth")),
    ("no_usage_extensions", None, None),
    ("cert_sign_only", Some("keyCertSign"), None),
    (
        "key_encipherment_only",
        Some("keyEncipherment"),
        Some("clientAuth"),
    ),
    (
        "server_auth_only",
        Some("digitalSignature"),
        Some("serverAuth"),
    ),
];

fn ca_config(dir: &Path) -> String {
    let mut text = CA_CONFIG.replace("DIR", dir.to_str().unwrap());
    for (name, ku, eku) in PROFILES {
        text.push_str(&format!("[{name}]\nbasicConstraints = CA:FALSE\n"));
        if let Some(ku) = ku {
            text.push_str(&format!("keyUsage = critical,{ku}\n"));
        }
        if let Some(eku) = eku {
            text.push_str(&format!("extendedKeyUsage = {eku}\n"));
        }
    }
    text
}

/// Runs `openssl` with the words of `line`, then `extra` (arguments holding spaces).
fn openssl(line: &str, extra: &[&str], cwd: &Path) {
    let args: Vec<&str> = line
        .split_whitespace()
        .chain(extra.iter().copied())
        .collect();
    let out = Command::new("openssl")
        .args(&args)
        .current_dir(cwd)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh P-256 key, unencrypted.
const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

impl OpensslCa {
    /// A new CA named `cn` in `dir`.
    fn new(dir: &Path, cn: &str) -> OpensslCa {
        std::fs::create_dir_all(dir.join("newcerts")).unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("serial"), "1000\n").unwrap();
        std::fs::write(dir.join("crlnumber"), "1000\n").unwrap();
        std::fs::write(dir.join("ca.cnf"), ca_config(dir)).unwrap();
        openssl(
            &format!(
                "req -x509 {NEW_KEY} -keyout ca.key -out ca.crt -days 30 -config ca.cnf -extensions v3_ca"
            ),
            &["-subj", &format!("/CN={cn}")],
            dir,
        );
        OpensslCa {
            dir: dir.to_path_buf(),
        }
    }

    /// A client certificate NAME.crt / NAME.key, CN codifyhq-dev (allowed), with the
    /// extensions of section `ext` of the CA config.
    fn issue(&self, name: &str, ext: &str) -> (PathBuf, PathBuf) {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        openssl(
            &format!(
                "req -new {NEW_KEY} -keyout {key} -out {csr} -subj /CN=codifyhq-dev -config ca.cnf"
            ),
            &[],
            &self.dir,
        );
        openssl(
            &format!("ca -batch -config ca.cnf -extensions {ext} -in {csr} -out {crt} -notext"),
            &[],
            &self.dir,
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.join(&key), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        (self.dir.join(crt), self.dir.join(key))
    }

    fn revoke(&self, name: &str) {
        openssl(
            &format!("ca -config ca.cnf -revoke {name}.crt"),
            &[],
            &self.dir,
        );
    }

    /// Takes a revocation back (openssl has no command for it: the database line goes back
    /// to valid), as a CA does when a certificate was revoked by mistake.
    fn unrevoke(&self, name: &str) {
        let serial = String::from_utf8(
            Command::new("openssl")
                .args(["x509", "-noout", "-serial", "-in"])
                .arg(self.dir.join(format!("{name}.crt")))
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let serial = serial.trim().trim_start_matches("serial=").to_string();
        let index = std::fs::read_to_string(self.dir.join("index.txt")).unwrap();
        let index: String = index
            .lines()
            .map(|line| {
                let mut cols: Vec<&str> = line.split('\t').collect();
                if cols.len() > 3 && cols[0] == "R" && cols[3] == serial {
                    cols[0] = "V";
                    cols[2] = "";
                }
                cols.join("\t") + "\n"
            })
            .collect();
        std::fs::write(self.dir.join("index.txt"), index).unwrap();
    }

    /// Writes the CA's current CRL (PEM) to `to`, atomically (temp file + rename).
    fn publish_crl(&self, to: &Path) {
        let tmp = to.with_extension("tmp");
        openssl(
            "ca -config ca.cnf -gencrl -out",
            &[tmp.to_str().unwrap()],
            &self.dir,
        );
        std::fs::rename(&tmp, to).unwrap();
    }
}

/// The appliance with its clients' CA replaced by an openssl one (the server keeps its
/// dev certificate), and `client_crl` set if `crl` is.
fn appliance_with_openssl_clients(crl: bool) -> (Appliance, OpensslCa) {
    let app = Appliance::init();
    let ca = OpensslCa::new(&app.dir.join("clients"), "Clients CA");
    let with_crl = if crl {
        "client_ca: clients/ca.crt\n  client_crl: clients/crl.pem"
    } else {
        "client_ca: clients/ca.crt"
    };
    app.edit_config("client_ca: tls/ca.crt", with_crl);
    if crl {
        ca.publish_crl(&app.dir.join("clients/crl.pem"));
    }
    (app, ca)
}

/// Whether a new connection with this identity gets its event taken (202). A refused
/// certificate shows as no answer (TLS 1.3: the refusal comes on the first read), or as
/// 403 "no longer accepted" when the list changed between the handshake and the request
/// (the chain is checked again before every request after a swap).
fn accepted(app: &Appliance, (crt, key): &(PathBuf, PathBuf), id: &str) -> bool {
    let rt = rt();
    let mut c = ess::client::Client::new(&app.url(), &app.tls("ca.crt"), Some((crt, key))).unwrap();
    c.timeout = Duration::from_secs(20);
    match rt.block_on(c.post_events(permit_event(id).to_string(), false)) {
        Ok(a) if a.status == 202 => true,
        Ok(a)
            if a.status == 403
                && String::from_utf8_lossy(&a.body).contains("no longer accepted") =>
        {
            false
        }
        Ok(a) => panic!("{id}: unexpected answer {}: {:?}", a.status, a.body),
        Err(_) => false,
    }
}

/// Polls until the appliance's answer to this identity is `want` (the CRL file is looked
/// at once a second).
fn until_accepted(app: &Appliance, id: &(PathBuf, PathBuf), want: bool, what: &str) {
    let mut n = 0;
    wait_until(what, Duration::from_secs(30), || {
        n += 1;
        accepted(app, id, &format!("{what}-{n}").replace(' ', "_")) == want
    });
}

#[test]
fn key_usage_and_extended_key_usage_are_enforced() {
    let (mut app, ca) = appliance_with_openssl_clients(false);
    app.start();
    let good = ca.issue("good", "good");
    let bare = ca.issue("bare", "no_usage_extensions");
    let cert_sign = ca.issue("certsign", "cert_sign_only");
    let key_enc = ca.issue("keyenc", "key_encipherment_only");
    let server = ca.issue("server", "server_auth_only");

    assert!(
        accepted(&app, &good, "GOOD"),
        "digitalSignature + clientAuth"
    );
    assert!(
        accepted(&app, &bare, "BARE"),
        "no keyUsage and no extendedKeyUsage: unrestricted (RFC 5280)"
    );
    assert!(!accepted(&app, &cert_sign, "CERTSIGN"), "keyCertSign only");
    assert!(!accepted(&app, &key_enc, "KEYENC"), "keyEncipherment only");
    assert!(!accepted(&app, &server, "SERVER"), "serverAuth-only EKU");

    let log = app.stderr();
    assert!(
        log.contains("keyUsage does not allow digitalSignature"),
        "the refusal names the reason: {log}"
    );
    // Nothing of the refused ones was taken.
    let rt = rt();
    let mut ok =
        ess::client::Client::new(&app.url(), &app.tls("ca.crt"), Some((&good.0, &good.1))).unwrap();
    for (id, want) in [
        ("GOOD", 200),
        ("BARE", 200),
        ("CERTSIGN", 404),
        ("KEYENC", 404),
        ("SERVER", 404),
    ] {
        let r = rt.block_on(ok.receipt(&format!("key-{id}"))).unwrap();
        assert_eq!(r.status, want, "{id}");
    }
}

#[test]
fn revoked_certificates_are_refused_and_the_list_follows_the_file_and_sighup() {
    let (mut app, ca) = appliance_with_openssl_clients(true);
    let crl = app.dir.join("clients/crl.pem");
    let alice = ca.issue("alice", "good");
    let bob = ca.issue("bob", "good");
    let carol = ca.issue("carol", "good");
    ca.revoke("carol");
    ca.publish_crl(&crl);
    app.start();
    assert!(app.stderr().contains("client_crl loaded (at start)"));

    assert!(accepted(&app, &alice, "A1"));
    assert!(!accepted(&app, &carol, "C1"), "revoked before the start");

    // Alice and Bob hold kept-alive connections.
    let mut alice_conn = raw_tls_as(&app, &alice.0, &alice.1);
    let mut bob_conn = raw_tls_as(&app, &bob.0, &bob.1);
    let ev = |id: &str| serde_json::json!([permit_event(id)]).to_string();
    assert_eq!(post_raw(&mut alice_conn, &ev("A2")).unwrap().0, 202);
    assert_eq!(post_raw(&mut bob_conn, &ev("B2")).unwrap().0, 202);

    // Bob is revoked while the daemon runs: the changed file is picked up by itself.
    ca.revoke("bob");
    ca.publish_crl(&crl);
    until_accepted(&app, &bob, false, "bob refused");
    assert!(accepted(&app, &alice, "A3"));
    let (status, head, body) = post_raw(&mut bob_conn, &ev("B3")).expect("an answer");
    assert_eq!(status, 403, "{head}{body}");
    assert!(body.contains("no longer accepted"), "{body}");
    assert!(
        post_raw(&mut bob_conn, &ev("B4")).is_none(),
        "the revoked client's connection is closed after its 403"
    );
    // Alice's connection was not dropped by the reload.
    assert_eq!(post_raw(&mut alice_conn, &ev("A4")).unwrap().0, 202);

    // Carol's revocation is taken back: she is let in again.
    ca.unrevoke("carol");
    ca.publish_crl(&crl);
    until_accepted(&app, &carol, true, "carol accepted again");

    // A damaged list is refused on reload; the one in force stays (Bob still out).
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n",
    )
    .unwrap();
    wait_until(
        "the bad list to be reported",
        Duration::from_secs(30),
        || {
            app.stderr()
                .contains("the revocation lists loaded before stay in force")
        },
    );
    assert!(!accepted(&app, &bob, "B5"), "the old list stays in force");
    assert!(accepted(&app, &alice, "A5"));
    assert!(accepted(&app, &carol, "C5"));
    assert_eq!(post_raw(&mut alice_conn, &ev("A6")).unwrap().0, 202);

    // SIGHUP reloads the file (Bob taken back too).
    ca.unrevoke("bob");
    ca.publish_crl(&crl);
    app.signal(libc::SIGHUP);
    wait_until("the SIGHUP reload", Duration::from_secs(30), || {
        app.stderr().contains("client_crl loaded (SIGHUP)")
    });
    until_accepted(&app, &bob, true, "bob accepted again");
    assert_eq!(post_raw(&mut alice_conn, &ev("A7")).unwrap().0, 202);
    assert_eq!(app.terminate().code(), Some(0));
}

/// Runs `ess serve` expecting it to refuse to start; its exit code and stderr.
fn serve_refuses(app: &Appliance) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&app.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (st.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ess serve started with a bad client_crl");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_bad_crl_is_a_clear_error_at_start() {
    let (app, ca) = appliance_with_openssl_clients(true);
    let crl = app.dir.join("clients/crl.pem");

    let refused_with = |want: &str| {
        let (code, err) = serve_refuses(&app);
        assert_eq!(code, 1, "{want}: {err}");
        assert!(
            err.contains("client_crl") && err.contains(crl.to_str().unwrap()),
            "{want}: {err}"
        );
        assert!(err.contains(want), "{want}: {err}");
    };
    std::fs::remove_file(&crl).unwrap();
    refused_with("cannot read it");
    // A certificate where the list should be.
    std::fs::copy(app.dir.join("clients/ca.crt"), &crl).unwrap();
    refused_with("holds no certificate revocation list");
    std::fs::write(&crl, [0x30, 0x03, 0x02, 0x01, 0x00]).unwrap();
    refused_with("is not a valid X.509 CRL");
    OpensslCa::new(&app.tmp.path().join("other"), "Other CA").publish_crl(&crl);
    refused_with("which is not a certificate in client_ca");
    // Same name as the real CA, another key.
    OpensslCa::new(&app.tmp.path().join("twin"), "Clients CA").publish_crl(&crl);
    refused_with("its signature does not verify");
    // Control: the CA's own list lets it start.
    ca.publish_crl(&crl);
    let mut app = app;
    app.start();
}
