//! GnuCOBOL for the tests that use it as the judge or as the legacy job: compiles a program
//! of `tests/fixtures/cobol/` (IBM dialect, EBCDIC sign conventions).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles `tests/fixtures/cobol/NAME.cob` into `dir`; returns the executable.
pub(crate) fn cobc(dir: &Path, name: &str) -> PathBuf {
    let exe = dir.join(name);
    let src =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/cobol/{name}.cob"));
    let out = Command::new("cobc")
        .args(["-x", "-std=ibm", "-fsign=EBCDIC", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("GnuCOBOL's cobc is installed (Debian package gnucobol, in .ci/run)");
    assert!(
        out.status.success(),
        "cobc {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}
