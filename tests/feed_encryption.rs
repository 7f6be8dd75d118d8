//! Encryption at rest (issue 15.5): with `feed.encryption_key_file`, payloads never lie in
//! `ess.redb` in clear text; keys rotate (the old key, listed as previous, still opens what
//! it sealed); a wrong key is refused clearly by `ess check` and by `ess serve`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, [byte; 32]).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn set_feed_section(app: &Appliance, section: &str) {
    let text = std::fs::read_to_string(&app.config).unwrap();
    let base = text
        .split("\nfeed:\n")
        .next()
        .unwrap()
        .trim_end()
        .to_string();
    std::fs::write(&app.config, format!("{base}\nfeed:\n{section}")).unwrap();
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A permit event whose payload holds `id`; its idempotency key does not (keys are stored
/// in clear: they are identifiers, not payload).
fn send(app: &Appliance, id: &str, key: &str) {
    let mut ev = permit_event(id);
    ev["idempotency_key"] = serde_json::json!(key);
    let rt = rt();
    let a = rt
        .block_on(app.client().post_events(ev.to_string(), false))
        .unwrap();
    assert_eq!(a.status, 202, "{:?}", a.body);
}

#[test]
fn payloads_are_sealed_at_rest_keys_rotate_and_a_wrong_key_is_refused() {
    let mut app = Appliance::init();
    let a = key_file(app.tmp.path(), "a.key", 0xa1);
    let b = key_file(app.tmp.path(), "b.key", 0xb2);
    let db = app.dir.join("data/ess.redb");
    let config = app.config.to_str().unwrap().to_string();
    set_feed_section(&app, &format!("  encryption_key_file: {}\n", a.display()));
    app.start();
    send(&app, "SECRET-1", "k1");
    wait_until("delivered", Duration::from_secs(60), || {
        app.read_out("permit.txt") == permit_line("SECRET-1")
    });
    assert_eq!(app.terminate().code(), Some(0));
    assert!(
        !contains(&std::fs::read(&db).unwrap(), "SECRET-1"),
        "the payload is not in ess.redb in clear text"
    );

    // Another key alone: refused by check and by serve, naming both key ids.
    set_feed_section(&app, &format!("  encryption_key_file: {}\n", b.display()));
    let (code, out, err) = ess(&["check", "--config", &config], None);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("wrong key"), "{out}");
    let (code, _, err) = ess(&["serve", "--config", &config], None);
    assert_ne!(code, 0);
    assert!(err.contains("wrong key"), "{err}");

    // Rotation: B seals from now on, A still opens what it sealed.
    set_feed_section(
        &app,
        &format!(
            "  encryption_key_file: {}\n  encryption_previous_key_files: [{}]\n",
            b.display(),
            a.display()
        ),
    );
    let (code, out, err) = ess(&["check", "--config", &config], None);
    assert_eq!(code, 0, "{out}{err}");
    app.start();
    send(&app, "SECRET-2", "k2");
    wait_until("delivered", Duration::from_secs(60), || {
        app.read_out("permit.txt") == [permit_line("SECRET-1"), permit_line("SECRET-2")].concat()
    });
    let rt = rt();
    let receipt = rt.block_on(app.client().receipt("k1")).unwrap();
    assert_eq!(
        receipt.status, 200,
        "an event sealed with the old key reads"
    );
    assert_eq!(app.terminate().code(), Some(0));
    let bytes = std::fs::read(&db).unwrap();
    assert!(!contains(&bytes, "SECRET-1") && !contains(&bytes, "SECRET-2"));
    let (code, out, err) = ess(&["verify", "--config", &config], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("damaged values: none"), "{out}");

    // A key file others can read is refused where the config names it.
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, _) = ess(&["check", "--config", &config], None);
    assert_eq!(code, 2);
    assert!(out.contains("readable by group or others"), "{out}");
}

#[test]
fn a_systemd_credential_can_hold_the_key() {
    let mut app = Appliance::init();
    let creds = app.tmp.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    key_file(&creds, "feed.key", 0x33);
    set_feed_section(&app, "  encryption_key_file: credential:feed.key\n");
    // What `LoadCredential=feed.key:/etc/ess/feed.key` gives the service.
    let log = std::fs::File::create(&app.stderr_log).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&app.config)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("ess listening"), "{line}{}", app.stderr());
    app.ingest = line
        .trim()
        .trim_start_matches("ess listening: ingest=https://")
        .split_whitespace()
        .next()
        .and_then(|a| a.parse().ok());
    app.child = Some(child);
    send(&app, "CRED-1", "c1");
    wait_until("delivered", Duration::from_secs(60), || {
        app.read_out("permit.txt") == permit_line("CRED-1")
    });
    assert_eq!(app.terminate().code(), Some(0));
    assert!(!contains(
        &std::fs::read(app.dir.join("data/ess.redb")).unwrap(),
        "CRED-1"
    ));
    // Without the credentials folder the key cannot be found, and serve says why.
    let (code, _, err) = ess(&["serve", "--config", app.config.to_str().unwrap()], None);
    assert_ne!(code, 0);
    assert!(err.contains("CREDENTIALS_DIRECTORY"), "{err}");
}
