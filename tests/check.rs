//! `ess check` catches what `ess serve` would refuse (issue 12): certificates and keys
//! (unreadable, not matching, expired, about to expire, chain out of order, a client CA that
//! is no CA), folders it cannot write, failing golden cases; and `--probe` connects to each
//! target (a real sshd: host key and login; a closed HTTP port) without sending.

#[path = "support/sshd.rs"]
mod sshd;
mod support;

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};
use support::*;

fn check(app: &Appliance, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["check", "--config", app.config.to_str().unwrap()];
    args.extend(extra);
    let (code, out, err) = ess(&args, None);
    (code, out + &err)
}

/// Writes a fresh CA, and a server certificate it signed valid until `not_after`, as the
/// appliance's server.crt (CA first if `ca_first`) and server.key.
fn server_cert(app: &Appliance, not_after: time::OffsetDateTime, ca_first: bool) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Check CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "ess");
    params.not_before = date_time_ymd(2019, 1, 1);
    params.not_after = not_after;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let chain = if ca_first {
        format!("{}{}", ca.pem(), cert.pem())
    } else {
        format!("{}{}", cert.pem(), ca.pem())
    };
    ess::init::write_file(&app.tls("server.crt"), &chain, 0o644).unwrap();
    ess::init::write_file(&app.tls("server.key"), &key.serialize_pem(), 0o600).unwrap();
}

fn in_days(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

#[test]
fn a_good_appliance_passes_and_says_what_it_checked() {
    let app = Appliance::init();
    let (code, out) = check(&app, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: ") && out.contains("city_hall_cobol"),
        "{out}"
    );
    assert!(out.contains("fits its key"), "{out}");
}

#[test]
fn certificate_problems_are_found_before_serve_meets_them() {
    let app = Appliance::init();
    // A wrong path.
    app.edit_config("cert: tls/server.crt", "cert: tls/nope.crt");
    let (code, out) = check(&app, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("nope.crt:1:1:") && out.contains("cannot read"),
        "{out}"
    );
    app.edit_config("cert: tls/nope.crt", "cert: tls/server.crt");

    // A key that is not the certificate's.
    let other = KeyPair::generate().unwrap();
    let original_key = std::fs::read_to_string(app.tls("server.key")).unwrap();
    ess::init::write_file(&app.tls("server.key"), &other.serialize_pem(), 0o600).unwrap();
    let (code, out) = check(&app, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("do not fit"), "{out}");
    // serve refuses the same (check runs serve's own code).
    let (code, _, err) = ess(&["serve", "--config", app.config.to_str().unwrap()], None);
    assert_ne!(code, 0, "{err}");
    ess::init::write_file(&app.tls("server.key"), &original_key, 0o600).unwrap();

    // Expired; about to expire (a warning, not a failure); chain out of order.
    server_cert(&app, date_time_ymd(2020, 1, 1), false);
    let (code, out) = check(&app, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("expired on 2020-01-01"), "{out}");
    server_cert(&app, in_days(10), false);
    let (code, out) = check(&app, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: ") && out.contains("renew it"),
        "{out}"
    );
    server_cert(&app, in_days(400), true);
    let (code, out) = check(&app, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("put the chain in order"), "{out}");
    server_cert(&app, in_days(400), false);
    assert_eq!(check(&app, &[]).0, 0);

    // A client CA that is a server certificate.
    app.edit_config("client_ca: tls/ca.crt", "client_ca: tls/client.crt");
    let (code, out) = check(&app, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("is not a CA certificate"), "{out}");
}

#[test]
fn folders_it_cannot_write_and_failing_golden_cases_fail_the_check() {
    let app = Appliance::init();
    std::fs::remove_dir_all(app.dir.join("data")).unwrap();
    std::fs::write(
        app.dir.join("data"),
        "a file where the data folder should be",
    )
    .unwrap();
    let (code, out) = check(&app, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("data_dir:") && out.contains("is not a folder"),
        "{out}"
    );
    std::fs::remove_file(app.dir.join("data")).unwrap();
    // A folder that does not exist yet is fine: serve creates it.
    assert_eq!(check(&app, &[]).0, 0);

    std::fs::write(
        app.dir.join("maps/permit_map.test.yml"),
        "cases:\n  - name: seed\n    event: '{\"type\":\"PERMIT_STATUS\",\"payload\":{\"id\":\"BP-802\",\"status\":\"APPROVED\",\"updated_at\":\"2025-04-12T10:03:00Z\"}}'\n    record: \"BP-802    REJECTED  20250412100300\\n\"\n",
    )
    .unwrap();
    let (code, out) = check(&app, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("permit_map.test.yml:2:5: case \"seed\": record differs at byte 10"),
        "{out}"
    );
}

fn sftp_map(sshd: &sshd::Sshd, user: &str) -> String {
    format!(
        "target: sftp_drop\nfields:\n  ID: id | width:10\ndeliver:\n  kind: sftp\n  host: 127.0.0.1\n  port: {}\n  user: {user}\n  key: {}\n  known_hosts: {}\n  dir: {}\n  file: x.txt\n  timeout: 5s\n",
        sshd.port,
        sshd.path("user_ed25519").display(),
        sshd.path("known_hosts").display(),
        sshd.drop_dir().display()
    )
}

fn whoami() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn probe_connects_to_each_target_and_sends_nothing() {
    let app = Appliance::init();
    let sshd = sshd::Sshd::start();
    let map = app.dir.join("maps/sftp_drop.yml");
    std::fs::write(&map, sftp_map(&sshd, &whoami())).unwrap();
    let (code, out) = check(&app, &["--probe"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("sftp_drop: sftp 127.0.0.1: host key pinned, login and SFTP ok"),
        "{out}"
    );
    assert!(is_empty(&sshd.drop_dir()), "the probe wrote nothing");

    // A changed host key is caught by the probe (plain check cannot know).
    sshd.new_host_key();
    assert_eq!(check(&app, &[]).0, 0);
    let (code, out) = check(&app, &["--probe"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("sftp_drop.yml:1:1: probe of sftp_drop") && out.contains("DIFFERENT key"),
        "{out}"
    );
    std::fs::remove_file(&map).unwrap();

    // An HTTP target nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        app.dir.join("maps/docket.yml"),
        format!("target: docket\nformat: json\nfields:\n  ID: id\ndeliver: {{kind: http, url: \"http://127.0.0.1:{port}/x\"}}\n"),
    )
    .unwrap();
    let (code, out) = check(&app, &["--probe"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("connect 127.0.0.1:{port}")), "{out}");
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}
