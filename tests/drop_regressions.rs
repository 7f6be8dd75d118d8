//! Regression tests for the drop bullets of issue 10, each through the real `ess serve`
//! the way they were reproduced: the daemon is killed right after a drop file got its
//! records and before the ledger commit (strace holds the file's fsync — or, on the SFTP
//! server, its fsync or rename — so the kill lands exactly there), then restarted.
//! `faketime` moves the daemon's clock across midnight. Each test is named after what it
//! pins, and each failed on the main branch before the drop protocol (checked).

#[path = "support/sshd.rs"]
mod sshd;
mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Starts the appliance under strace stalling every sync of `watched`, sends `ids`, waits
/// until `watched` holds `until`, and kills the daemon: the records are in the file, and
/// their delivery is not committed.
fn deliver_then_kill_before_commit(
    app: &mut Appliance,
    watched: &Path,
    ids: &[&str],
    until: &str,
    env: &[(&str, String)],
) {
    app.start_wrapped(&stall_syncs_of(&[watched]), env);
    app.send_ids(ids);
    wait_until("the records in the drop file", LIMIT, || {
        std::fs::read_to_string(watched)
            .unwrap_or_default()
            .contains(until)
    });
    app.kill9();
}

/// Waits until `path` holds the last record of `want`, stops the daemon cleanly, and checks
/// that `path` holds exactly `want`.
fn wait_for_content(app: &mut Appliance, path: &Path, want: &str) {
    wait_until(
        &format!("{} to hold the last record of {want:?}", path.display()),
        LIMIT,
        || {
            let last = want.split_inclusive('\n').next_back().unwrap_or_default();
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .contains(last)
        },
    );
    assert_eq!(app.terminate().code(), Some(0));
    assert_eq!(std::fs::read_to_string(path).unwrap(), want);
}

#[test]
fn first_delivery_into_a_file_holding_someone_elses_lines_is_not_doubled_by_a_crash() {
    let mut app = Appliance::init();
    let file = app.out_path("permit.txt");
    std::fs::write(&file, "LEFT BY THE OLD CRON JOB\n").unwrap();
    deliver_then_kill_before_commit(&mut app, &file, &["BP-1"], &permit_line("BP-1"), &[]);
    app.start();
    app.send_ids(&["BP-2"]);
    let want = format!(
        "LEFT BY THE OLD CRON JOB\n{}{}",
        permit_line("BP-1"),
        permit_line("BP-2")
    );
    wait_for_content(&mut app, &file, &want);
}

/// A `{{date}}` drop file: BP-1's attempt at `first` is cut off after its record reached
/// the file of that day; the retry runs at `then`, another day (the clock moved on, or was
/// set back). BP-1 stays once in the file of its attempt, BP-2 goes to the file of `then`.
fn date_changes_between_an_attempt_and_its_retry(first: (&str, &str), then: (&str, &str)) {
    let mut app = Appliance::init();
    app.edit_map("file: permit.txt", "file: permit_{{date:%Y%m%d}}.txt");
    let day1 = app.out_path(&format!("permit_{}.txt", first.1));
    let day2 = app.out_path(&format!("permit_{}.txt", then.1));
    deliver_then_kill_before_commit(
        &mut app,
        &day1,
        &["BP-1"],
        &permit_line("BP-1"),
        &faketime(first.0),
    );
    app.start_wrapped(&[], &faketime(then.0));
    app.send_ids(&["BP-2"]);
    wait_for_content(&mut app, &day2, &permit_line("BP-2"));
    assert_eq!(std::fs::read_to_string(&day1).unwrap(), permit_line("BP-1"));
}

#[test]
fn a_date_changing_between_an_interrupted_attempt_and_its_retry_puts_the_record_in_one_file() {
    // The retry happens after midnight.
    date_changes_between_an_attempt_and_its_retry(
        ("2027-12-31 23:59:50", "20271231"),
        ("2028-01-01 00:00:10", "20280101"),
    );
}

#[test]
fn the_clock_set_back_across_midnight_before_the_retry_puts_the_record_in_one_file() {
    // NTP (or an operator) sets the clock back to the day before while the intent is open.
    date_changes_between_an_attempt_and_its_retry(
        ("2028-01-01 00:00:10", "20280101"),
        ("2027-12-31 23:59:50", "20271231"),
    );
}

#[test]
fn the_legacy_job_emptying_the_file_then_an_interrupted_delivery_writes_the_record_once() {
    let mut app = Appliance::init();
    let file = app.out_path("permit.txt");
    app.start();
    app.send_ids(&["BP-1"]);
    wait_for_content(&mut app, &file, &permit_line("BP-1"));
    // The COBOL job reads the file and clears it (OPEN OUTPUT): same file, now empty.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&file)
        .unwrap();
    deliver_then_kill_before_commit(&mut app, &file, &["BP-2"], &permit_line("BP-2"), &[]);
    app.start();
    app.send_ids(&["BP-3"]);
    wait_for_content(
        &mut app,
        &file,
        &format!("{}{}", permit_line("BP-2"), permit_line("BP-3")),
    );
}

const PERMIT_FIELDS: &str = "events: [PERMIT_STATUS]\nfields:\n  PERMIT_ID: id | width:10\n  STATUS   : status | width:10\n  TS       : updated_at | format:%Y%m%d%H%M%S | width:14\n";

/// Adds the connector `remote`, an SFTP drop into `sshd`'s folder: `head` (format and
/// fields) and `deliver` (file, mode and what follows the deliver block).
fn add_sftp_connector(app: &Appliance, sshd: &sshd::Sshd, head: &str, deliver: &str) {
    let user = sshd::user();
    std::fs::write(
        app.dir.join("maps/sftp.yml"),
        format!(
            "target: remote\n{head}retry: {{base: 100ms, max_delay: 500ms}}\ndeliver:\n  kind: sftp\n  host: 127.0.0.1\n  port: {port}\n  user: {user}\n  key: {key}\n  known_hosts: {kh}\n  dir: {dir}\n{deliver}",
            port = sshd.port,
            key = sshd.path("user_ed25519").display(),
            kh = sshd.path("known_hosts").display(),
            dir = sshd.drop_dir().display(),
        ),
    )
    .unwrap();
}

/// The appliance with its seed map replaced by the SFTP connector `remote`.
fn sftp_appliance(sshd: &sshd::Sshd, deliver: &str) -> Appliance {
    let app = Appliance::init();
    std::fs::remove_file(app.dir.join("maps/permit_map.yml")).unwrap();
    add_sftp_connector(&app, sshd, PERMIT_FIELDS, deliver);
    app
}

#[test]
fn sftp_append_retried_after_midnight_puts_the_record_in_the_file_of_its_attempt() {
    let mut sshd = sshd::Sshd::start();
    let mut app = sftp_appliance(
        &sshd,
        "  file: permit_{{date:%Y%m%d}}.txt\n  mode: append\n",
    );
    let day1 = sshd.drop_dir().join("permit_20271231.txt");
    let day2 = sshd.drop_dir().join("permit_20280101.txt");
    // The server holds the fsync (or the rename into place) of the day's file: the kill
    // lands after the records reached it and before the ledger commit.
    sshd.kill();
    sshd.spawn_wrapped(stall_syncs_of(&[&day1]));
    app.start_wrapped(&[], &faketime("2027-12-31 23:59:50"));
    app.send_ids(&["BP-1"]);
    wait_until("the record on the server", LIMIT, || {
        std::fs::read_to_string(&day1)
            .unwrap_or_default()
            .contains(&permit_line("BP-1"))
    });
    app.kill9();
    sshd.kill();
    sshd.spawn();
    app.start_wrapped(&[], &faketime("2028-01-01 00:00:10"));
    app.send_ids(&["BP-2"]);
    wait_for_content(&mut app, &day2, &permit_line("BP-2"));
    assert_eq!(std::fs::read_to_string(&day1).unwrap(), permit_line("BP-1"));
}

/// Waits until the connector reports an error containing `what`.
fn wait_for_error(app: &Appliance, connector: &str, what: &str) {
    wait_until(&format!("{connector} to report {what:?}"), LIMIT, || {
        app.connector_status(connector)["last_error"]["message"]
            .as_str()
            .is_some_and(|e| e.contains(what))
    });
}

#[test]
fn a_replayed_sftp_batch_never_replaces_the_original_batch_file() {
    let sshd = sshd::Sshd::start();
    let mut app = sftp_appliance(
        &sshd,
        "  file: permit_{{seq}}.txt\n  mode: batch\nbatch: {max_events: 10, linger: 30s}\n",
    );
    let original = sshd.drop_dir().join("permit_1.txt");
    let replayed = sshd.drop_dir().join("permit_1.replay-3.txt");
    let ids: Vec<String> = (1..=10).map(|i| format!("BP-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let all: String = ids.iter().map(|id| permit_line(id)).collect();
    app.start();
    app.send_ids(&ids);
    wait_until("the batch file", LIMIT, || {
        std::fs::read_to_string(&original).unwrap_or_default() == all
    });
    // The file is renamed into place a moment before the ledger commit; a replay asked in
    // between finds nothing behind the cursor to queue.
    wait_until("the batch's commit", LIMIT, || {
        app.connector_status("remote")["cursor"] == 10
    });
    let (code, out, err) = ess(
        &[
            "replay",
            "--config",
            app.config.to_str().unwrap(),
            "--target",
            "remote",
            "--from",
            "1",
            "--to",
            "3",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    wait_until("the replay written somewhere", LIMIT, || {
        replayed.exists() || std::fs::read_to_string(&original).unwrap_or_default() != all
    });
    assert_eq!(
        std::fs::read_to_string(&original).unwrap(),
        all,
        "original intact"
    );
    let first3: String = ids[..3].iter().map(|id| permit_line(id)).collect();
    wait_until("the whole replay file", LIMIT, || {
        std::fs::read_to_string(&replayed).unwrap_or_default() == first3
    });
    assert_eq!(app.terminate().code(), Some(0));
}

#[test]
fn a_new_csv_file_gets_its_column_row_on_sftp_as_on_file() {
    let sshd = sshd::Sshd::start();
    let mut app = Appliance::init();
    std::fs::remove_file(app.dir.join("maps/permit_map.yml")).unwrap();
    let head = "events: [PERMIT_STATUS]\nformat: csv\ncsv: {header: true}\nfields:\n  PERMIT_ID: id\n  STATUS: status\n";
    add_sftp_connector(&app, &sshd, head, "  file: permit.csv\n  mode: append\n");
    app.start();
    app.send_ids(&["BP-1"]);
    let file = sshd.drop_dir().join("permit.csv");
    wait_for_content(&mut app, &file, "PERMIT_ID,STATUS\nBP-1,APPROVED\n");
}

#[test]
fn a_batch_file_already_there_is_never_replaced_nor_taken_for_delivered_on_file_and_sftp() {
    let sshd = sshd::Sshd::start();
    let mut app = Appliance::init();
    add_sftp_connector(
        &app,
        &sshd,
        PERMIT_FIELDS,
        "  file: permit_{{seq}}.txt\n  mode: batch\n",
    );
    app.edit_map("file: permit.txt", "file: permit_{{seq}}.txt");
    app.edit_map("mode: append", "mode: batch");
    std::fs::write(
        app.dir.join("maps/permit_map.yml"),
        std::fs::read_to_string(app.dir.join("maps/permit_map.yml")).unwrap()
            + "retry: {base: 100ms, max_delay: 500ms}\n",
    )
    .unwrap();
    let local = app.out_path("permit_1.txt");
    let remote = sshd.drop_dir().join("permit_1.txt");
    for f in [&local, &remote] {
        std::fs::write(f, "SOMEONE ELSE'S FILE\n").unwrap();
    }
    app.start();
    app.send_ids(&["BP-1"]);
    for connector in ["city_hall_cobol", "remote"] {
        wait_for_error(&app, connector, "already there");
    }
    for f in [&local, &remote] {
        assert_eq!(std::fs::read_to_string(f).unwrap(), "SOMEONE ELSE'S FILE\n");
        std::fs::rename(f, f.with_extension("moved")).unwrap();
    }
    // The operator moved them away: the batch comes, nothing was lost.
    for f in [&local, &remote] {
        wait_until("the batch after the move", LIMIT, || {
            std::fs::read_to_string(f).unwrap_or_default() == permit_line("BP-1")
        });
    }
    assert_eq!(app.terminate().code(), Some(0));
}
