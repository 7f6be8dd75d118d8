//! What the whole-appliance benches share: an appliance made by `ess init`, and `ess serve`
//! started on it.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_ess");

/// `ess init` into `dir` with loopback port 0 listeners.
pub fn init(dir: &Path) {
    let st = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir)
        .args(["--ingest", "127.0.0.1:0", "--status", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .status()
        .expect("ess init");
    assert!(st.success());
}

/// Starts `ess serve` on the appliance in `dir` (stderr to `log`, if given) and waits for
/// its listening line; the child and the ingest URL.
pub fn serve(dir: &Path, log: Option<&Path>) -> (Child, String) {
    let stderr = match log {
        Some(p) => Stdio::from(std::fs::File::create(p).expect("log")),
        None => Stdio::inherit(),
    };
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.join("ess.yml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("ess serve");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("listening line");
    // "ess listening: ingest=https://ADDR status=http://ADDR"
    let ingest = line
        .trim()
        .trim_start_matches("ess listening: ingest=https://")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    (child, format!("https://{ingest}"))
}
