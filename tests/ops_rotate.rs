//! `rotate:` deletes only the connector's own old files: never other files, other
//! connectors' files, directories, symlinks or look-alike names.

use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime};

use ess::target::rotate::{NameMatcher, rotate};

const DAY: Duration = Duration::from_secs(86_400);

fn touch(dir: &Path, name: &str, age: Duration, now: SystemTime) {
    let f = File::create(dir.join(name)).unwrap();
    f.set_modified(now - age).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn deletes_only_its_own_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let now = SystemTime::now();
    let old = 10 * DAY;
    // Ours, old: go.
    touch(d, "permit_20250101_12.txt", old, now);
    touch(d, "permit_20250102_4000.txt", old, now);
    touch(d, ".permit_20250103_77.txt.ess-tmp", old, now);
    // Ours, fresh: stay.
    touch(d, "permit_20250110_99.txt", DAY, now);
    // Not ours (all old): stay.
    for name in [
        "notes.txt",
        "permit_20250101_12.txt.bak",
        "permit_2025_12.txt",
        "permit_202501011_12.txt",
        "permit_20250101_.txt",
        "permit_20250101_12.csv",
        "xpermit_20250101_12.txt",
        "permit_2025010a_12.txt",
        ".permit_20250101_12.txt",
        ".notes.ess-tmp",
        "permit_20250101_12.txt.ess-tmp",
        "other_20250101_12.txt",
    ] {
        touch(d, name, old, now);
    }
    // A directory and a symlink with our kind of name: stay, and so does the link target.
    fs::create_dir(d.join("permit_20250104_1.txt")).unwrap();
    touch(
        d.join("permit_20250104_1.txt").as_path(),
        "permit_20250101_5.txt",
        old,
        now,
    );
    touch(d, "target-of-link", old, now);
    std::os::unix::fs::symlink(d.join("target-of-link"), d.join("permit_20250105_2.txt")).unwrap();

    let before = names(d);
    let deleted = rotate(
        d,
        "permit_{{date:%Y%m%d}}_{{seq}}.txt",
        "city_hall",
        7 * DAY,
        now,
    )
    .unwrap();
    let deleted: Vec<String> = deleted
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        deleted,
        [
            ".permit_20250103_77.txt.ess-tmp",
            "permit_20250101_12.txt",
            "permit_20250102_4000.txt"
        ]
    );
    let expected: Vec<String> = before
        .into_iter()
        .filter(|n| !deleted.contains(n))
        .collect();
    assert_eq!(names(d), expected);
    assert!(
        d.join("permit_20250104_1.txt/permit_20250101_5.txt")
            .exists()
    );

    // Running again deletes nothing more.
    assert!(
        rotate(
            d,
            "permit_{{date:%Y%m%d}}_{{seq}}.txt",
            "city_hall",
            7 * DAY,
            now
        )
        .unwrap()
        .is_empty()
    );
}

#[test]
fn other_connectors_sharing_a_folder_keep_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let now = SystemTime::now();
    for name in [
        "city_7.csv",
        "city_hall_7.csv",
        "cityx_7.csv",
        "county_7.csv",
        ".city_hall_8.csv.ess-tmp",
    ] {
        touch(d, name, 30 * DAY, now);
    }
    let deleted = rotate(d, "{{target}}_{{seq}}.csv", "city", 7 * DAY, now).unwrap();
    assert_eq!(deleted, [d.join("city_7.csv")]);
    assert_eq!(
        names(d),
        [
            ".city_hall_8.csv.ess-tmp",
            "city_hall_7.csv",
            "cityx_7.csv",
            "county_7.csv"
        ]
    );
}

#[test]
fn templates_compile_to_exact_matchers() {
    let m = NameMatcher::new("p_{{date}}.txt", "c").unwrap();
    assert!(m.matches("p_2025-01-31.txt"));
    assert!(!m.matches("p_2025-1-31.txt"));
    assert!(!m.matches("p_2025-01-31.txt.1"));
    let m = NameMatcher::new("{{target}}-{{date:%d%b%Y}}.dat", "hr").unwrap();
    assert!(m.matches("hr-07Mar2026.dat"));
    assert!(!m.matches("hr-07032026.dat"));
    assert!(!m.matches("pay-07Mar2026.dat"));
    let m = NameMatcher::new("permit.txt", "c").unwrap();
    assert!(m.matches("permit.txt"));
    assert!(m.matches_own(".permit.txt.ess-tmp"));
    assert!(!m.matches("permit.txt2"));
    assert!(NameMatcher::new("p_{{when}}.txt", "c").is_err());
    assert!(NameMatcher::new("../p.txt", "c").is_err());
}

#[test]
fn a_template_error_is_an_error_not_a_deletion() {
    let dir = tempfile::tempdir().unwrap();
    touch(dir.path(), "a.txt", 30 * DAY, SystemTime::now());
    let err = rotate(dir.path(), "{{nope}}", "c", DAY, SystemTime::now()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(names(dir.path()), ["a.txt"]);
}

mod properties {
    use chrono::TimeZone;
    use ess::target::file_name;
    use ess::target::rotate::NameMatcher;
    use proptest::prelude::*;

    const TEMPLATES: &[&str] = &[
        "permit.txt",
        "p_{{date}}.txt",
        "p_{{date:%Y%m%d}}_{{seq}}.txt",
        "{{target}}-{{date:%d%b%Y-%H%M%S}}.dat",
        "{{seq}}{{seq}}.{{target}}",
        "{{date:%e %B %Y}} {{target}}",
        "x{{date:%s}}",
    ];

    proptest! {
        /// Every name the file target would write is recognised as the connector's own.
        #[test]
        fn names_the_target_writes_are_matched(
            t in 0..TEMPLATES.len(),
            seq in 1u64..u64::MAX,
            secs in 0i64..4_102_444_800,
            connector in "[a-z][a-z0-9_]{0,12}",
        ) {
            let tz = chrono_tz::America::New_York;
            let now = tz.timestamp_opt(secs, 0).unwrap();
            let name = file_name(TEMPLATES[t], &connector, seq, &now);
            let m = NameMatcher::new(TEMPLATES[t], &connector).unwrap();
            prop_assert!(m.matches(&name), "{} from {}", name, TEMPLATES[t]);
            let temp = format!(".{name}.ess-tmp");
            prop_assert!(m.matches_own(&temp));
            let other = format!("{name}~");
            prop_assert!(!m.matches(&other));
        }

        /// Arbitrary templates and names never panic.
        #[test]
        fn arbitrary_input_never_panics(template in "\\PC{0,40}", name in "\\PC{0,80}") {
            if let Ok(m) = NameMatcher::new(&template, "c") {
                let _ = m.matches_own(&name);
            }
        }
    }

    #[test]
    fn adjacent_runs_stay_cheap_on_long_names() {
        let m = NameMatcher::new("{{seq}}{{seq}}{{seq}}{{seq}}{{seq}}{{seq}}x", "c").unwrap();
        let name = "1".repeat(250);
        assert!(!m.matches(&name));
        assert!(m.matches(&format!("{name}x")));
    }
}
