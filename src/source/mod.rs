//! Pickup sources (SPEC §4 "Pickup sources", issue 14): files the legacy side writes, read
//! record by record into the feed, one event per record, so that the ordinary connectors
//! (an HTTP connector with `format: json`, for CodifyHQ) deliver them upstream.
//!
//! `mod.rs` compiles a source file (`maps/*.yml` with `source:`) into a [`SourceSpec`];
//! `take.rs` is the pure part of taking one file (split, decode, trailer check, events and
//! bad records per chunk); `local.rs` is the local folder: listing, completeness, identity,
//! the commit loop through [`crate::ledger::sources::Sources::commit`] and `then:`.
//!
//! Architecture invariant: a file's records reach the feed only through
//! `Sources::commit`, in the same transaction as the file's checkpoint, so the feed holds
//! exactly the records the checkpoint says were taken (a kill -9 at any instant neither
//! loses nor doubles one), and each record's idempotency key is
//! `{source}/{file key}/{record index}`, a pure function of the source, the file's identity
//! and the record's position.

pub mod dir;
pub mod local;
pub mod running;
pub mod take;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;

use crate::config::Diagnostic;
use crate::config::connector::{self, LoadedSource, ReadySpec, ThenSpec};
use crate::config::parse_duration;
use crate::connector::schedule::Schedule;
use crate::map::{MapContext, Mapping};
use serde_saphyr::Spanned;

/// When a file is whole and may be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// Written under a temp name and renamed into the pattern: any matching file is whole.
    Rename,
    /// Its last record is the trailer and the trailer checks.
    Trailer,
    /// A trigger file named by this template (`{name}`, `{stem}`) exists.
    DoneFile(String),
    /// Size and modification time unchanged for this long.
    Stable(Duration),
}

/// What happens to a file once every record is in the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    Keep,
    Delete,
    Move(PathBuf),
}

/// `on_bad_record`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBad {
    /// The bad record becomes a dead letter, the others go on.
    Park,
    /// The whole file waits: nothing of it is taken.
    Hold,
}

/// The trailer check: the trailer record's count and hash totals against the records.
#[derive(Debug, Clone)]
pub struct Trailer {
    pub record: String,
    pub count: Option<String>,
    /// (trailer field, record field it sums).
    pub sum: Vec<(String, String)>,
}

/// A compiled pickup source.
#[derive(Debug)]
pub struct SourceSpec {
    pub name: String,
    pub path: PathBuf,
    pub kind: Kind,
    pub dir: PathBuf,
    pub pattern: glob::Pattern,
    pub ignore: Vec<glob::Pattern>,
    pub ready: Ready,
    pub trailer: Option<Trailer>,
    pub then: Then,
    pub every: Duration,
    pub chunk: usize,
    /// How long a done file's row is kept once the file is gone from the folder.
    pub remember: Duration,
    pub mapping: Mapping,
    pub event_type: String,
    /// Record types that become events (`None`: every record of a one-layout file).
    pub records: Option<Vec<String>>,
    /// (payload path, record field); `None`: every field under its own name.
    pub payload: Option<Vec<(Vec<String>, String)>>,
    pub on_bad: OnBad,
    pub schedule: Option<Schedule>,
    pub timezone: Tz,
}

/// `source.kind`.
#[derive(Debug, Clone)]
pub enum Kind {
    File,
    /// The connection, as the SFTP target takes it (`file` unused).
    Sftp(crate::config::connector::SftpDeliver),
}

/// Temp names every source ignores: a writer's file before its rename.
pub const TEMP_NAMES: [&str; 6] = [".*", "*.tmp", "*.part", "*.partial", "*.filepart", "*~"];

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.chars().count() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

impl SourceSpec {
    /// Whether `name` is one of the files this source takes (the pattern, not a temp name).
    pub fn wants(&self, name: &str) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        self.pattern.matches_with(name, opts) && !self.ignore.iter().any(|p| p.matches(name))
    }

    /// The trigger file's name for `name` (`ready: {done_file: ..}`).
    pub fn trigger_of(&self, name: &str) -> Option<String> {
        match &self.ready {
            Ready::DoneFile(t) => {
                let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
                Some(t.replace("{name}", name).replace("{stem}", stem))
            }
            _ => None,
        }
    }
}

/// Compiles one parsed source file; every problem is returned.
pub fn compile(loaded: &LoadedSource, tz: Tz) -> Result<SourceSpec, Vec<Diagnostic>> {
    let path = &loaded.path;
    let s = &loaded.source.value;
    let mut errs = Vec::new();
    let name = s.name.value.clone();
    if !valid_name(&name, 64) {
        errs.push(Diagnostic::at(
            path,
            &s.name,
            format!("source name {name:?} must be 1-64 chars of [A-Za-z0-9_.-]"),
        ));
    }
    let kind = match s.kind.value.as_str() {
        "file" => Some(Kind::File),
        "sftp" => {
            let need = |v: &Option<Spanned<String>>, what: &str, errs: &mut Vec<Diagnostic>| {
                v.as_ref().map(|x| x.value.clone()).unwrap_or_else(|| {
                    errs.push(Diagnostic::at(
                        path,
                        &s.kind,
                        format!("kind: sftp needs {what}"),
                    ));
                    String::new()
                })
            };
            let d = crate::config::connector::SftpDeliver {
                host: need(&s.host, "host", &mut errs),
                port: s.port,
                user: need(&s.user, "user", &mut errs),
                key: need(&s.key, "key", &mut errs),
                known_hosts: need(
                    &s.known_hosts,
                    "known_hosts (the server's pinned host key)",
                    &mut errs,
                ),
                dir: s.dir.value.clone(),
                file: "-".into(),
                mode: None,
                timeout: s.timeout.as_ref().map(|t| t.value.clone()),
            };
            if errs.is_empty() {
                if let Err(problems) = crate::target::sftp::SftpFolder::open(&d, &loaded.base_dir())
                {
                    for p in problems {
                        errs.push(Diagnostic::at(path, &s.kind, p));
                    }
                }
            }
            Some(Kind::Sftp(d))
        }
        other => {
            errs.push(Diagnostic::at(
                path,
                &s.kind,
                format!("source kind {other:?} is not one of file, sftp"),
            ));
            None
        }
    };
    let remote = s.kind.value == "sftp";
    let dir = if remote {
        PathBuf::from(&s.dir.value)
    } else {
        crate::config::resolve_path(&loaded.base_dir(), &s.dir.value)
    };
    let glob_of = |sp: &Spanned<String>, errs: &mut Vec<Diagnostic>| {
        glob::Pattern::new(&sp.value)
            .map_err(|e| errs.push(Diagnostic::at(path, sp, format!("pattern: {e}"))))
            .ok()
    };
    let pattern = match &s.pattern {
        Some(p) => glob_of(p, &mut errs),
        None => glob::Pattern::new("*").ok(),
    };
    let mut ignore: Vec<glob::Pattern> = TEMP_NAMES
        .iter()
        .filter_map(|p| glob::Pattern::new(p).ok())
        .collect();
    for p in s.ignore.iter().flatten() {
        ignore.extend(glob_of(p, &mut errs));
    }
    let duration = |sp: &Spanned<String>, what: &str, v: &str| {
        parse_duration(v)
            .map_err(|e| Diagnostic::at(path, sp, format!("{what}: {e}")))
            .and_then(|d| {
                if d.is_zero() && what == "every" {
                    Err(Diagnostic::at(path, sp, "every: must be more than 0s"))
                } else {
                    Ok(d)
                }
            })
    };
    let ready = match s.ready.as_ref().map(|r| (r, &r.value)) {
        None | Some((_, ReadySpec::Rename)) => Some(Ready::Rename),
        Some((_, ReadySpec::Trailer)) => Some(Ready::Trailer),
        Some((sp, ReadySpec::DoneFile(t))) => {
            if !t.contains("{name}") && !t.contains("{stem}") {
                errs.push(Diagnostic::at(
                    path,
                    sp,
                    "ready: done_file must name the file with {name} or {stem} (e.g. \"{name}.done\")",
                ));
            }
            Some(Ready::DoneFile(t.clone()))
        }
        Some((sp, ReadySpec::Stable(d))) => parse_duration(d)
            .map(Ready::Stable)
            .map_err(|e| errs.push(Diagnostic::at(path, sp, format!("ready: stable: {e}"))))
            .ok(),
    };
    let every = match &s.every {
        None => Some(Duration::from_secs(10)),
        Some(e) => duration(e, "every", &e.value)
            .map_err(|d| errs.push(d))
            .ok(),
    };
    let remember = match &s.remember {
        None => Some(Duration::from_secs(90 * 86_400)),
        Some(r) => parse_duration(&r.value)
            .map_err(|e| errs.push(Diagnostic::at(path, r, format!("remember: {e}"))))
            .ok(),
    };
    let chunk = match &s.chunk {
        None => 1000,
        Some(c) if (1..=100_000).contains(&c.value) => c.value as usize,
        Some(c) => {
            errs.push(Diagnostic::at(
                path,
                c,
                "chunk: must be 1 to 100000 records",
            ));
            1000
        }
    };
    let then = match s.then.as_ref().map(|t| &t.value) {
        None | Some(ThenSpec::Keep) => Then::Keep,
        Some(ThenSpec::Delete) => Then::Delete,
        Some(ThenSpec::Move(d)) if remote => Then::Move(PathBuf::from(d)),
        Some(ThenSpec::Move(d)) => Then::Move(crate::config::resolve_path(&loaded.base_dir(), d)),
    };
    let mapping = Mapping::compile_layout(&loaded.records, &MapContext { timezone: tz })
        .map_err(|e| errs.extend(e))
        .ok();
    let field_names: Vec<String> = mapping
        .as_ref()
        .map(|m| m.fields().iter().map(|f| f.name.clone()).collect())
        .unwrap_or_default();
    let types: Vec<String> = mapping
        .as_ref()
        .map(|m| m.record_types().iter().map(|t| t.to_string()).collect())
        .unwrap_or_default();
    let trailer = s.trailer.as_ref().map(|t| {
        let v = &t.value;
        if mapping.is_some() && !types.contains(&v.record) {
            errs.push(Diagnostic::at(
                path,
                t,
                format!(
                    "trailer: record {:?} is not a record type of the layout ({})",
                    v.record,
                    if types.is_empty() {
                        "it has one; give layout_when to tell records apart".to_string()
                    } else {
                        types.join(", ")
                    }
                ),
            ));
        }
        for f in v
            .count
            .iter()
            .chain(v.sum.iter().flatten().flat_map(|(a, b)| [a, b]))
        {
            if mapping.is_some() && !field_names.contains(f) {
                errs.push(Diagnostic::at(
                    path,
                    t,
                    format!("trailer: {f:?} is not a field of the layout"),
                ));
            }
        }
        Trailer {
            record: v.record.clone(),
            count: v.count.clone(),
            sum: v.sum.clone().unwrap_or_default(),
        }
    });
    if let Some(r) = s
        .ready
        .as_ref()
        .filter(|_| ready == Some(Ready::Trailer) && trailer.is_none())
    {
        errs.push(Diagnostic::at(
            path,
            r,
            "ready: trailer needs source.trailer (the trailer record and what it checks)",
        ));
    }
    let mut event_type = String::new();
    let mut records = None;
    let mut payload = None;
    match &loaded.event {
        None => errs.push(Diagnostic::at(
            path,
            &loaded.source,
            "a source needs event: {type: ...} (what each record becomes)",
        )),
        Some(ev) => {
            match &ev.value.event_type {
                Some(t) if valid_name(&t.value, 128) => event_type = t.value.clone(),
                Some(t) => errs.push(Diagnostic::at(
                    path,
                    t,
                    format!(
                        "event type {:?} must be 1-128 chars of [A-Za-z0-9_.-]",
                        t.value
                    ),
                )),
                None => errs.push(Diagnostic::at(path, ev, "event: needs type:")),
            }
            if let Some(rs) = &ev.value.records {
                for r in rs {
                    if mapping.is_some() && !types.contains(&r.value) {
                        errs.push(Diagnostic::at(
                            path,
                            r,
                            format!(
                                "event.records: {:?} is not a record type of the layout",
                                r.value
                            ),
                        ));
                    }
                }
                records = Some(rs.iter().map(|r| r.value.clone()).collect());
            } else if !types.is_empty() {
                errs.push(Diagnostic::at(
                    path,
                    ev,
                    format!(
                        "event.records: name the record types that become events (the layout has {})",
                        types.join(", ")
                    ),
                ));
            }
            if let Some(p) = &ev.value.payload {
                let mut out = Vec::new();
                for (key, field) in p {
                    if mapping.is_some() && !field_names.contains(field) {
                        errs.push(Diagnostic::at(
                            path,
                            ev,
                            format!("event.payload: {key}: {field:?} is not a field of the layout"),
                        ));
                    }
                    let parts: Vec<String> = key.split('.').map(str::to_string).collect();
                    if parts.iter().any(String::is_empty) {
                        errs.push(Diagnostic::at(
                            path,
                            ev,
                            format!("event.payload: key {key:?} has an empty part"),
                        ));
                    }
                    out.push((parts, field.clone()));
                }
                payload = Some(out);
            }
        }
    }
    let on_bad = match loaded.on_bad_record.as_ref().map(|o| (o, o.value.as_str())) {
        None | Some((_, "park")) => OnBad::Park,
        Some((_, "hold")) => OnBad::Hold,
        Some((o, other)) => {
            errs.push(Diagnostic::at(
                path,
                o,
                format!("on_bad_record {other:?} is not one of park, hold"),
            ));
            OnBad::Park
        }
    };
    let schedule = match &loaded.schedule {
        None => None,
        Some(sc) => Schedule::parse(&sc.value)
            .map_err(|e| errs.push(Diagnostic::at(path, sc, format!("schedule: {e}"))))
            .ok(),
    };
    match (kind, pattern, ready, every, mapping, remember) {
        (Some(kind), Some(pattern), Some(ready), Some(every), Some(mapping), Some(remember))
            if errs.is_empty() =>
        {
            Ok(SourceSpec {
                name,
                path: path.clone(),
                kind,
                dir,
                pattern,
                ignore,
                ready,
                trailer,
                then,
                every,
                chunk,
                remember,
                mapping,
                event_type,
                records,
                payload,
                on_bad,
                schedule,
                timezone: tz,
            })
        }
        _ => Err(errs),
    }
}

impl SourceSpec {
    /// The folder this source reads (SFTP: not connected until the first scan).
    pub fn open_dir(
        &self,
        runtime: tokio::runtime::Handle,
    ) -> Result<Box<dyn dir::SourceDir>, String> {
        match &self.kind {
            Kind::File => Ok(Box::new(dir::LocalDir {
                dir: self.dir.clone(),
            })),
            Kind::Sftp(d) => {
                let base = crate::config::absolute_dir_of(&self.path);
                let folder =
                    crate::target::sftp::SftpFolder::open(d, &base).map_err(|e| e.join("; "))?;
                Ok(Box::new(dir::SftpDir {
                    folder,
                    runtime,
                    read_size: 256 * 1024,
                }))
            }
        }
    }
}

/// Loads and compiles one source file.
pub fn load_one(path: &Path, tz: Tz) -> Result<SourceSpec, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![Diagnostic::new(path, 1, 1, format!("cannot read: {e}"))])?;
    let loaded = connector::parse_source(path, &text).map_err(|e| vec![e])?;
    compile(&loaded, tz)
}

/// Whether the map file at `path` is a source file (it has a top-level `source:`).
pub fn is_source_file(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| connector::is_source_map(&t))
}

/// Every source of `maps_dir`; every problem of every file is returned.
pub fn load_all(maps_dir: &Path, tz: Tz) -> Result<Vec<SourceSpec>, Vec<Diagnostic>> {
    connector::load_map_files(
        maps_dir,
        is_source_file,
        |p| load_one(p, tz),
        |s: &SourceSpec| (s.name.as_str(), s.path.as_path()),
        ("source", "source"),
    )
}
