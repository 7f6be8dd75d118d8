//! The status page in a real headless Chromium: the rendered DOM names every connector with
//! its state, and a small-screen screenshot is saved for people to look at
//! (`target/tmp/status_page_412x900.png`, a 320 px one and a desktop one beside it).
//!
//! Needs Debian's `chromium` (`apt-get install -y chromium`; CI's `.ci/run` installs it).
//! Without it this test fails: it does not skip. `ESS_CHROMIUM` overrides the binary path.

#[path = "support/status_fixture.rs"]
mod status_fixture;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ess::status::Metrics;

/// Generous: a cold Chromium start on a busy 2-core machine takes several seconds.
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(120);

fn chromium() -> PathBuf {
    let path =
        PathBuf::from(std::env::var_os("ESS_CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    assert!(
        path.is_file(),
        "Chromium not found at {}: install it with `apt-get install -y chromium` \
         (CI's .ci/run does), or point ESS_CHROMIUM at the binary",
        path.display()
    );
    path
}

/// Runs headless Chromium with `args` then `url`, stdout into `stdout_to`, bounded in time.
fn run_chromium(args: &[&str], url: &str, stdout_to: &Path) {
    let profile = tempfile::tempdir().expect("temp profile dir");
    let stderr_path = profile.path().join("chromium.stderr");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .args(args)
        .arg(url)
        // Keep Chromium's caches and crash dumps out of the real home directory.
        .env("HOME", profile.path())
        .env("XDG_CONFIG_HOME", profile.path().join("config"))
        .env("XDG_CACHE_HOME", profile.path().join("cache"))
        .stdin(Stdio::null())
        .stdout(File::create(stdout_to).expect("stdout file"))
        .stderr(File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + CHROMIUM_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {CHROMIUM_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(status.success(), "chromium failed ({status}):\n{stderr}");
}

/// The HTML of the connector card labelled `name` (up to the next card).
fn card<'a>(dom: &'a str, name: &str) -> &'a str {
    let marker = format!(r#"aria-label="Connector {name}""#);
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no card for {name}:\n{dom}"));
    let rest = &dom[start..];
    let end = rest[marker.len()..]
        .find("<section")
        .map_or(rest.len(), |i| i + marker.len());
    &rest[..end]
}

#[test]
fn status_page_renders_in_headless_chromium() {
    let (server, _source) = status_fixture::start(Metrics::new());
    let url = format!("http://{}/", server.local_addr());
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&out_dir).expect("target/tmp");

    let dom_path = out_dir.join("status_page_dom.html");
    run_chromium(&["--dump-dom"], &url, &dom_path);
    let dom = std::fs::read_to_string(&dom_path).expect("dumped DOM");
    assert!(dom.contains("<h1>ESS status</h1>"), "{dom}");
    let expected = [
        ("city_hall_cobol", "ok"),
        ("court_docket_sftp", "retrying"),
        ("payroll_&lt;soap&gt;", "blocked"),
        ("nightly_batch", "outside schedule"),
        ("permits_csv", "dead letters"),
        ("budget_feed", "paused"),
        ("old_feed", "not running"),
    ];
    for (name, state) in expected {
        let card = card(&dom, name);
        assert!(
            card.contains(&format!(">{state}</span>")),
            "{name} is not shown as {state}:\n{card}"
        );
    }
    assert!(card(&dom, "court_docket_sftp").contains("connection refused"));
    assert!(card(&dom, "nightly_batch").contains("2026-11-28 06:00:00 UTC"));
    assert!(dom.contains("3 of 7 connectors need attention"));
    // What to do, where it delivers, why the reload was refused, who did what.
    assert!(
        card(&dom, "payroll_&lt;soap&gt;")
            .contains("ess skip --target payroll_&lt;soap&gt; --seq 1190")
    );
    assert!(card(&dom, "budget_feed").contains("ess resume --target budget_feed"));
    assert!(card(&dom, "city_hall_cobol").contains("city_hall_cobol.txt (append)"));
    assert!(card(&dom, "permits_csv").contains("5 (compliance 1, skipped 4)"));
    assert!(dom.contains("was refused with 2 problem(s)"), "{dom}");
    assert!(dom.contains("Operator actions") && dom.contains("legacy maintenance window"));
    // The escaped strings stayed text: Chromium built no <soap> or <b> element from them.
    assert!(!dom.contains("<soap>") && !dom.contains("<b>"), "{dom}");

    for (width, height) in [(320, 640), (412, 900), (1280, 800)] {
        let png = out_dir.join(format!("status_page_{width}x{height}.png"));
        let _ = std::fs::remove_file(&png);
        let log = out_dir.join("status_page_screenshot.log");
        run_chromium(
            &[
                &format!("--screenshot={}", png.display()),
                &format!("--window-size={width},{height}"),
            ],
            &url,
            &log,
        );
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        // IHDR: width and height, big-endian, at bytes 16..24.
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((w, h), (width, height));
        // A blank page of that size compresses to a few kB; text and colour make far more.
        assert!(
            bytes.len() > 20_000,
            "{} is only {} bytes",
            png.display(),
            bytes.len()
        );
    }
    server.stop();
}
