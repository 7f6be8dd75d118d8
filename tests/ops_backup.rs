//! `ess backup` at the edges, through the real binary: a damaged database (bits flipped in
//! a copy of a real `ess.redb`, as `feed_integrity` does, here in the table of tables that
//! redb's `list_tables` walks) is a clear error, never a panic nor a panic's message on stderr; a destination on a full
//! file system (a small tmpfs) fails naming the path, exits 1 and leaves no file that looks
//! like a backup, and the same command works once there is room again.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// An appliance that delivered `n` permit events.
fn appliance_with_events(n: usize) -> Appliance {
    let mut app = Appliance::init();
    app.start();
    let ids: Vec<String> = (0..n).map(|i| format!("B{i:05}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    app.send_ids(&refs);
    let want: String = ids.iter().map(|id| permit_line(id)).collect();
    wait_until("the events delivered", LIMIT, || {
        app.read_out("permit.txt") == want
    });
    app
}

/// `ess backup --to to` for the appliance: (exit code, stdout, stderr).
fn backup(app: &Appliance, to: &Path) -> (i32, String, String) {
    ess(
        &[
            "backup",
            "--config",
            app.config.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ],
        None,
    )
}

fn partial_of(to: &Path) -> std::path::PathBuf {
    let name = to.file_name().unwrap().to_str().unwrap();
    to.with_file_name(format!(".{name}.partial"))
}

fn n_events(backup: &Path) -> usize {
    let db = ess::feed::open_database_read_only(backup).unwrap();
    ess::feed::read_after(&db, 0, 10_000).unwrap().len()
}

#[test]
fn a_backup_of_a_database_damaged_in_its_table_of_tables_is_an_error_never_a_panic() {
    let mut app = appliance_with_events(20);
    assert_eq!(app.terminate().code(), Some(0));
    let db = app.dir.join("data/ess.redb");
    let base = std::fs::read(&db).unwrap();
    // The table of tables is a leaf page: the names side by side, then each table's
    // definition (and an older copy of the page may still be in the file). Every 7th byte
    // from a little before the names to the end of the definitions is a place to flip.
    let spots: Vec<usize> = base
        .windows(b"key_index".len())
        .enumerate()
        .filter(|(_, w)| *w == b"key_index")
        .flat_map(|(at, _)| (at.saturating_sub(64)..(at + 256).min(base.len())).step_by(7))
        .collect();
    assert!(!spots.is_empty(), "the table of tables names key_index");
    let (mut ok, mut refused, mut contained) = (0, 0, 0);
    for (trial, &at) in spots.iter().enumerate() {
        let bit = trial % 8;
        let mut bytes = base.clone();
        bytes[at] ^= 1 << bit;
        std::fs::write(&db, &bytes).unwrap();
        let to = app.tmp.path().join(format!("b{trial}.redb"));
        let (code, out, err) = backup(&app, &to);
        match code {
            0 => {
                assert!(to.exists(), "byte {at} bit {bit}: {out}");
                ok += 1;
            }
            1 => {
                assert!(
                    err.contains("error: "),
                    "byte {at} bit {bit}: a clear error: {err}"
                );
                assert!(
                    !to.exists(),
                    "byte {at} bit {bit}: a failed backup left {to:?}"
                );
                assert!(
                    !err.contains("panicked at"),
                    "byte {at} bit {bit}: a contained panic is not printed: {err}"
                );
                refused += 1;
                contained += usize::from(err.contains("redb panicked on a damaged page"));
            }
            _ => panic!("byte {at} bit {bit}: ess backup crashed (exit {code}): {err}"),
        }
        assert!(
            !partial_of(&to).exists(),
            "byte {at} bit {bit}: .partial left"
        );
    }
    eprintln!("{ok} backups written, {refused} refused, {contained} redb panics contained");
    assert!(
        contained > 0,
        "no flip reached a redb panic: the guard is untested"
    );
}

#[test]
fn a_backup_to_a_full_file_system_fails_naming_the_path_and_leaves_no_backup() {
    let mut app = appliance_with_events(200);
    // How big a backup is, written where there is room.
    let roomy = app.tmp.path().join("roomy.redb");
    let (code, out, err) = backup(&app, &roomy);
    assert_eq!(code, 0, "{out}{err}");
    let size = std::fs::metadata(&roomy).unwrap().len();

    let disk = Tmpfs::mount(&app.tmp.path().join("full"), "8m");
    let filler = disk.fill(size / 2);
    let to = disk.0.join("ess-backup.redb");
    let (code, out, err) = backup(&app, &to);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(to.to_str().unwrap()) && err.contains("No space left on device"),
        "the error names the path and the cause: {err}"
    );
    assert!(!to.exists(), "no file that looks like a backup");
    assert!(!partial_of(&to).exists(), "the partial copy is removed");
    assert!(
        app.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the daemon stays up"
    );

    // Room again: the same command writes a whole backup.
    std::fs::remove_file(&filler).unwrap();
    let (code, out, err) = backup(&app, &to);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(n_events(&to), 200);
}
