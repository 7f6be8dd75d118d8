//! One connector file (`maps/*.yml`): the raw, serde-level shape of SPEC §4.
//!
//! This module only parses; meaning is given elsewhere: the mapping keys are compiled by
//! [`crate::map`], `deliver` by [`crate::target`], `retry`/`schedule`/`start` by
//! [`crate::connector`]. Unknown keys are refused with their line and column.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

use super::Diagnostic;

/// A connector file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorFile {
    /// The connector's name (used in the ledger, metrics, `--target`).
    pub target: Spanned<String>,
    /// Event types taken from the feed; `None`: all.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// `fixed` (default) | `csv` | `json` | `soap`.
    #[serde(default)]
    pub format: Option<Spanned<String>>,
    /// Record fields, in record order.
    #[serde(default)]
    pub fields: Option<Fields>,
    #[serde(default)]
    pub record: Option<Spanned<RecordSpec>>,
    /// A COBOL copybook (relative to the map file) giving widths and types.
    #[serde(default)]
    pub layout: Option<Spanned<String>>,
    /// Which REDEFINES alternative (or 01 record) of the copybook a record is: alternative
    /// name -> a level-88 condition name, or `{FIELD: value}` (all must hold).
    #[serde(default)]
    pub layout_when: Option<Spanned<LayoutWhen>>,
    #[serde(default)]
    pub csv: Option<Spanned<CsvSpec>>,
    #[serde(default)]
    pub header: Option<Fields>,
    #[serde(default)]
    pub trailer: Option<Fields>,
    /// `error` (default) | `truncate`, for every field of this map.
    #[serde(default)]
    pub overflow: Option<Spanned<String>>,
    #[serde(default)]
    pub transform: Option<Spanned<TransformSpec>>,
    #[serde(default)]
    pub compliance: Option<Spanned<ComplianceSpec>>,
    /// Where records go; required (its absence is reported with the map's other problems).
    #[serde(default)]
    pub deliver: Option<Spanned<DeliverSpec>>,
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    #[serde(default)]
    pub batch: Option<BatchSpec>,
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
    #[serde(default)]
    pub rotate: Option<Spanned<String>>,
    /// `earliest` (default) | `latest`.
    #[serde(default)]
    pub start: Option<Spanned<String>>,
}

/// `fields:` (and `header:` / `trailer:`): record field name -> definition, order kept.
#[derive(Debug, Default)]
pub struct Fields(pub Vec<(Spanned<String>, Spanned<FieldSpec>)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ordered_entries(d, "a mapping of record field names to sources").map(Fields)
    }
}

/// A YAML mapping's entries in the order written (a `BTreeMap` or `HashMap` would lose it,
/// and the order is the record's, or the order rules are tried in).
fn ordered_entries<'de, D, K, V>(d: D, expecting: &'static str) -> Result<Vec<(K, V)>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de>,
    V: Deserialize<'de>,
{
    struct Entries<K, V>(&'static str, std::marker::PhantomData<(K, V)>);
    impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for Entries<K, V> {
        type Value = Vec<(K, V)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = m.next_entry()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Entries(expecting, std::marker::PhantomData))
}

/// One field: the short form `src | mod | mod:arg`, or the long form.
#[derive(Debug, Clone)]
pub enum FieldSpec {
    Short(String),
    Long(Box<LongField>),
}

impl<'de> Deserialize<'de> for FieldSpec {
    // Hand-written rather than `#[serde(untagged)]`: untagged buffers the value, which loses
    // both the long form's "unknown key" message and its location.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field definition: `source | modifier | modifier:arg` or {from: source, width: N, ...}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Short(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Short(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Short(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<FieldSpec, E> {
                Err(E::custom(format!(
                    "YAML reads `n`, `y`, `no`, `yes`, `off`, `on` as a boolean ({v}); quote the source, e.g. 'n'"
                )))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<FieldSpec, A::Error> {
                LongField::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(|l| FieldSpec::Long(Box::new(l)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A YAML mapping of scalars read into a list of pairs, written order kept.
fn ordered_pairs<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<(String, String)>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of values to replacements, e.g. {A: APPROVED, R: REJECTED}")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(pair) = m.next_entry()? {
                out.push(pair);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V).map(Some)
}

/// The long form of a field: `{from: src, width: 10, align: right, ...}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongField {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub width: Option<usize>,
    #[serde(default)]
    pub align: Option<String>,
    #[serde(default)]
    pub pad: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub number: Option<String>,
    #[serde(default)]
    pub upper: Option<bool>,
    #[serde(default)]
    pub lower: Option<bool>,
    #[serde(default)]
    pub trim: Option<bool>,
    #[serde(default)]
    pub default: Option<String>,
    /// Value translation table; kept in the written order.
    #[serde(default, deserialize_with = "ordered_pairs")]
    pub map: Option<Vec<(String, String)>>,
    /// `error` (default) | `truncate`
    #[serde(default)]
    pub overflow: Option<String>,
    /// The number of elements of the list at `from` (an OCCURS DEPENDING ON count).
    #[serde(default)]
    pub count: Option<bool>,
    /// `allow` | `refuse` (default) | `replace:C`: control characters in the value.
    #[serde(default)]
    pub control: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSpec {
    #[serde(default)]
    pub line_end: Option<String>,
    #[serde(default)]
    pub encoding: Option<Spanned<String>>,
    /// `fixed` (RECFM=F/FB) | `rdw` (RECFM=V/VB: a 4-byte record descriptor word before
    /// each record) | `lines` (a line end after each record).
    #[serde(default)]
    pub framing: Option<Spanned<String>>,
    /// With `framing: rdw`: records sit in blocks, each behind a 4-byte block descriptor word.
    #[serde(default)]
    pub bdw: Option<bool>,
    /// COMP-1/COMP-2: `hfp` (IBM hexadecimal floating point, the z/OS default) | `ieee`.
    #[serde(default)]
    pub floats: Option<Spanned<String>>,
    /// Byte order of the machine-native usages COMP-5, COMP-1 and COMP-2: `big` (z/OS,
    /// default) | `little` (files written by a COBOL program on x86).
    #[serde(default)]
    pub byte_order: Option<Spanned<String>>,
}

/// `layout_when:`: REDEFINES alternative (or 01 record) name -> the rule that picks it, in
/// the order written (the first rule that holds wins).
#[derive(Debug, Default)]
pub struct LayoutWhen(pub Vec<(Spanned<String>, Spanned<WhenRule>)>);

/// One `layout_when` rule.
#[derive(Debug, Clone)]
pub enum WhenRule {
    /// A level-88 condition name of the copybook.
    Condition(String),
    /// `{FIELD: value}` or `{FIELD: [v1, v2]}`; every field must hold one of its values.
    Fields(Vec<(String, Vec<String>)>),
}

impl<'de> Deserialize<'de> for LayoutWhen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ordered_entries(
            d,
            "a mapping of REDEFINES alternatives to rules, e.g. {HEADER-DATA: {REC-TYPE: \"H\"}}",
        )
        .map(LayoutWhen)
    }
}

/// A scalar written as YAML text, a number or a list of them.
struct WhenValues(Vec<String>);

impl<'de> Deserialize<'de> for WhenValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WhenValues;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value (quote decimals: \"1.50\") or a list of values")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<WhenValues, E> {
                Ok(WhenValues(vec![v.to_string()]))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<WhenValues, E> {
                Ok(WhenValues(vec![v.to_string()]))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<WhenValues, E> {
                Ok(WhenValues(vec![v.to_string()]))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<WhenValues, E> {
                Err(E::custom(format!(
                    "YAML reads `n`, `y`, `no`, `yes`, `off`, `on` as a boolean ({v}); quote the value, e.g. 'N'"
                )))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<WhenValues, A::Error> {
                let mut out = Vec::new();
                while let Some(WhenValues(v)) = s.next_element()? {
                    out.extend(v);
                }
                Ok(WhenValues(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for WhenRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WhenRule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a level-88 condition name, or {FIELD: value}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<WhenRule, E> {
                Ok(WhenRule::Condition(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<WhenRule, A::Error> {
                let mut out = Vec::new();
                while let Some((k, WhenValues(v))) = m.next_entry::<String, WhenValues>()? {
                    out.push((k, v));
                }
                Ok(WhenRule::Fields(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSpec {
    #[serde(default)]
    pub delimiter: Option<String>,
    #[serde(default)]
    pub header: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    #[serde(default)]
    pub drop_fields: Vec<String>,
    /// payload path -> `last4` | `redact` | `sha256`
    #[serde(default)]
    pub mask: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplianceSpec {
    #[serde(default)]
    pub deny_fields: Vec<String>,
}

/// `retry:` — back-off and what to do past `max_tries`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    #[serde(default)]
    pub base: Option<Spanned<String>>,
    #[serde(default)]
    pub max_delay: Option<Spanned<String>>,
    #[serde(default)]
    pub max_tries: Option<u32>,
    /// `block` (default) | `park`
    #[serde(default)]
    pub on_failure: Option<Spanned<String>>,
}

/// `batch:` — how many records go to the target at once, and how long to wait for more.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    #[serde(default)]
    pub max_events: Option<usize>,
    #[serde(default)]
    pub linger: Option<Spanned<String>>,
}

/// `deliver:`, by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DeliverSpec {
    File(FileDeliver),
    Sftp(SftpDeliver),
    Http(HttpDeliver),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDeliver {
    /// Folder, relative to the map file.
    pub dir: String,
    /// File name template: `{{date}}`, `{{date:%Y%m%d}}`, `{{target}}`, `{{seq}}`.
    pub file: String,
    /// `append` (default) | `batch`
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpDeliver {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    pub user: String,
    /// Private key file, relative to the map file.
    pub key: String,
    /// known_hosts file pinning the server's host key.
    pub known_hosts: String,
    pub dir: String,
    pub file: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDeliver {
    pub url: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub soap_action: Option<String>,
    /// `1.1` (default) | `1.2`
    #[serde(default)]
    pub soap_version: Option<String>,
    /// Body template: `{{record}}` (the mapped record), `{{key}}`, `{{seq}}`, `{{type}}`,
    /// `{{trace_id}}`, `{{target}}`. For SOAP: the content of `soap:Body`, or a whole envelope.
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
}

/// A pickup source file (`maps/*.yml` with a top-level `source:`): legacy files read into
/// the feed, one event per record (SPEC §4 "Pickup sources"). The record keys (`format`,
/// `layout`, `record`, `layout_when`, `csv`, `fields`) mean what they mean in a connector
/// file, read backwards; `event` says what each record becomes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceMapFile {
    pub source: Spanned<SourceSection>,
    /// `fixed` (default) | `csv`.
    #[serde(default)]
    pub format: Option<Spanned<String>>,
    /// The record's fields without a copybook, as a connector file writes them (fixed:
    /// `NAME: src | width:N`; CSV: the columns in order). A record decodes into these
    /// names; `event.payload` maps them (default: every field under its own name).
    #[serde(default)]
    pub fields: Option<Fields>,
    #[serde(default)]
    pub record: Option<Spanned<RecordSpec>>,
    #[serde(default)]
    pub layout: Option<Spanned<String>>,
    #[serde(default)]
    pub layout_when: Option<Spanned<LayoutWhen>>,
    #[serde(default)]
    pub csv: Option<Spanned<CsvSpec>>,
    #[serde(default)]
    pub event: Option<Spanned<EventSpec>>,
    /// `park` (default: the bad record becomes a dead letter, the others go on) | `hold`
    /// (the whole file waits, nothing of it is taken).
    #[serde(default)]
    pub on_bad_record: Option<Spanned<String>>,
    /// Pick up only inside this window (same form as a connector's `schedule:`).
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
}

/// `source:` of a pickup source file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    /// The source's name (ledger, metrics, `ess list --source`). Part of every record's
    /// idempotency key: renaming a source makes its files new.
    pub name: Spanned<String>,
    /// `file` | `sftp`.
    pub kind: Spanned<String>,
    /// The folder files appear in: local (relative to the map file) or on the SFTP server.
    pub dir: Spanned<String>,
    /// File name pattern (`*`, `?`, `[...]`); default `*`.
    #[serde(default)]
    pub pattern: Option<Spanned<String>>,
    /// More temp-name patterns to ignore (besides `.*`, `*.tmp`, `*.part`, `*.partial`,
    /// `*.filepart`, `*~`).
    #[serde(default)]
    pub ignore: Option<Vec<Spanned<String>>>,
    /// When a file is whole: `rename` (default), `trailer`, `{done_file: "{name}.done"}`,
    /// `{stable: 30s}`.
    #[serde(default)]
    pub ready: Option<Spanned<ReadySpec>>,
    /// The trailer record checked against the file's records before anything is taken.
    #[serde(default)]
    pub trailer: Option<Spanned<TrailerSpec>>,
    /// After every record of a file is in the feed: `keep` (default), `delete`,
    /// `{move: DIR}`.
    #[serde(default)]
    pub then: Option<Spanned<ThenSpec>>,
    /// How often the folder is looked at (default 10s).
    #[serde(default)]
    pub every: Option<Spanned<String>>,
    /// Records committed per transaction, with the file's checkpoint (default 1000).
    #[serde(default)]
    pub chunk: Option<Spanned<u64>>,
    /// How long a file's identity is remembered once the file is done and gone from the
    /// folder (moved, deleted): within it, the same file put back is not taken again
    /// (default 90d).
    #[serde(default)]
    pub remember: Option<Spanned<String>>,
    // kind: sftp
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub user: Option<Spanned<String>>,
    /// Private key file, relative to the map file.
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    /// known_hosts file pinning the server's host key, relative to the map file.
    #[serde(default)]
    pub known_hosts: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
}

/// `source.ready`: how a file shows it is whole. In YAML a word (`rename`, `trailer`) or a
/// one-key map (`{done_file: "{name}.done"}`, `{stable: 30s}`): serde's external tagging.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadySpec {
    /// The writer renames the file into the pattern when done; temp names are ignored.
    Rename,
    /// The file's last record is the trailer (`source.trailer`), and it checks.
    Trailer,
    /// A trigger file: `{name}` is the file's name, `{stem}` the name without extension.
    DoneFile(String),
    /// Size and modification time unchanged for this long (a duration).
    Stable(String),
}

/// `source.then`: what happens to a file once all its records are in the feed: `keep`,
/// `delete` or `{move: DIR}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThenSpec {
    Keep,
    Delete,
    /// Into this folder (local: relative to the map file; SFTP: a folder on the server).
    Move(String),
}

/// `source.trailer`: the control record closing a file, checked before anything is taken.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrailerSpec {
    /// The trailer's record type (a REDEFINES alternative or 01 record of the copybook).
    pub record: String,
    /// The trailer field holding the number of records the file carries (the records
    /// that become events, bad ones included).
    #[serde(default)]
    pub count: Option<String>,
    /// Hash totals: trailer field -> the record field it sums.
    #[serde(default, deserialize_with = "ordered_pairs")]
    pub sum: Option<Vec<(String, String)>>,
}

/// `event:` of a pickup source: what each record becomes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// The event type (1-128 of `[A-Za-z0-9_.-]`), required.
    #[serde(default, rename = "type")]
    pub event_type: Option<Spanned<String>>,
    /// Record types (REDEFINES alternatives or 01 records) that become events;
    /// required when the layout has several (header, detail, trailer).
    #[serde(default)]
    pub records: Option<Vec<Spanned<String>>>,
    /// Payload key -> record field (`a.b` nests); default: every field by its name.
    #[serde(default, deserialize_with = "ordered_pairs")]
    pub payload: Option<Vec<(String, String)>>,
}

/// A parsed pickup source file: its own keys, and its record keys as a connector file for
/// [`crate::map::Mapping::compile_layout`].
#[derive(Debug)]
pub struct LoadedSource {
    pub path: PathBuf,
    pub source: Spanned<SourceSection>,
    pub event: Option<Spanned<EventSpec>>,
    pub on_bad_record: Option<Spanned<String>>,
    pub schedule: Option<Spanned<String>>,
    /// The record keys, named after the source.
    pub records: LoadedConnector,
}

impl LoadedSource {
    /// The folder relative paths in this file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        super::absolute_dir_of(&self.path)
    }
}

/// Whether `text` is a pickup source file (a mapping with a top-level `source:`). A file
/// that is not YAML at all is not: the connector parser then reports its error.
pub fn is_source_map(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        source: Option<serde::de::IgnoredAny>,
    }
    serde_saphyr::from_str::<Probe>(text).is_ok_and(|p| p.source.is_some())
}

/// Parses one pickup source file.
pub fn parse_source(path: &Path, text: &str) -> Result<LoadedSource, Diagnostic> {
    let f: SourceMapFile =
        serde_saphyr::from_str(text).map_err(|e| Diagnostic::from_yaml(path, &e))?;
    let name = &f.source.value.name;
    let file = ConnectorFile {
        target: Spanned::new(name.value.clone(), name.referenced, name.defined),
        events: None,
        format: f.format,
        fields: f.fields,
        record: f.record,
        layout: f.layout,
        layout_when: f.layout_when,
        csv: f.csv,
        header: None,
        trailer: None,
        overflow: None,
        transform: None,
        compliance: None,
        deliver: None,
        retry: None,
        batch: None,
        schedule: None,
        rotate: None,
        start: None,
    };
    Ok(LoadedSource {
        path: path.to_path_buf(),
        source: f.source,
        event: f.event,
        on_bad_record: f.on_bad_record,
        schedule: f.schedule,
        records: LoadedConnector {
            path: path.to_path_buf(),
            file,
        },
    })
}

/// A parsed connector file and where it came from.
#[derive(Debug)]
pub struct LoadedConnector {
    pub path: PathBuf,
    pub file: ConnectorFile,
}

impl LoadedConnector {
    /// The folder relative paths in this file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        super::absolute_dir_of(&self.path)
    }
}

/// Parses one connector file.
pub fn parse(path: &Path, text: &str) -> Result<LoadedConnector, Diagnostic> {
    let file: ConnectorFile =
        serde_saphyr::from_str(text).map_err(|e| Diagnostic::from_yaml(path, &e))?;
    Ok(LoadedConnector {
        path: path.to_path_buf(),
        file,
    })
}

/// The map files of `maps_dir` that `wanted` keeps, each loaded by `load`, with every
/// problem of every file returned, not just the first. A name (`name_of`: the name and the
/// file it came from) given in two files is refused, naming both: `kind` is what the name
/// is called in the file (`target`, `source`), `what` what needs its own (`connector`).
pub fn load_map_files<T>(
    maps_dir: &Path,
    wanted: impl Fn(&Path) -> bool,
    load: impl Fn(&Path) -> Result<T, Vec<Diagnostic>>,
    name_of: impl Fn(&T) -> (&str, &Path),
    (kind, what): (&str, &str),
) -> Result<Vec<T>, Vec<Diagnostic>> {
    let files = map_files(maps_dir).map_err(|e| {
        vec![Diagnostic::new(
            maps_dir,
            1,
            1,
            format!("cannot list maps folder: {e}"),
        )]
    })?;
    let mut specs: Vec<T> = Vec::new();
    let mut errs = Vec::new();
    for path in files.into_iter().filter(|p| wanted(p)) {
        match load(&path) {
            Ok(spec) => {
                let (name, _) = name_of(&spec);
                if let Some((_, other)) = specs.iter().map(&name_of).find(|(n, _)| *n == name) {
                    errs.push(Diagnostic::new(
                        &path,
                        1,
                        1,
                        format!(
                            "{kind} {name:?} is also defined in {}; each {what} needs its own name",
                            other.display()
                        ),
                    ));
                }
                specs.push(spec);
            }
            Err(mut e) => errs.append(&mut e),
        }
    }
    if errs.is_empty() {
        Ok(specs)
    } else {
        Err(errs)
    }
}

/// Every `*.yml` / `*.yaml` file of `maps_dir`, sorted by name, except golden test files
/// (`*.test.yml`, see `ess test`).
pub fn map_files(maps_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(maps_dir)? {
        let p = entry?.path();
        let is_yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"));
        if is_yaml && p.is_file() && !crate::maptest::is_test_file(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
target: city_hall_cobol
events: [PERMIT_STATUS]
format: fixed
fields:
  PERMIT_ID: id | width:10
  STATUS   : status | width:10
  TS       : updated_at | format:%Y%m%d%H%M%S | width:14
deliver:
  kind: file
  dir: ../out
  file: permit.txt
  mode: append
"#;

    /// `ready:` and `then:` are a word or a one-key map (serde's external tagging).
    #[test]
    fn ready_and_then_read_as_a_word_or_a_one_key_map() {
        let ready = |y: &str| serde_saphyr::from_str::<ReadySpec>(y).map_err(|e| e.to_string());
        assert_eq!(ready("rename"), Ok(ReadySpec::Rename));
        assert_eq!(ready("trailer"), Ok(ReadySpec::Trailer));
        assert_eq!(
            ready("{done_file: \"{name}.done\"}"),
            Ok(ReadySpec::DoneFile("{name}.done".into()))
        );
        assert_eq!(ready("{stable: 30s}"), Ok(ReadySpec::Stable("30s".into())));
        for bad in ["soon", "{stable: 30s, done_file: x}", "{later: 1s}", "{}"] {
            assert!(ready(bad).is_err(), "{bad} was taken");
        }
        let then = |y: &str| serde_saphyr::from_str::<ThenSpec>(y).map_err(|e| e.to_string());
        assert_eq!(then("keep"), Ok(ThenSpec::Keep));
        assert_eq!(then("delete"), Ok(ThenSpec::Delete));
        assert_eq!(then("{move: DONE}"), Ok(ThenSpec::Move("DONE".into())));
        let err = then("archive").unwrap_err();
        assert!(err.contains("expected one of keep, delete, move"), "{err}");
        assert!(then("move").is_err(), "move needs its folder");
    }

    #[test]
    fn seed_map_parses_with_fields_in_order() {
        let c = parse(Path::new("permit_map.yml"), SEED).unwrap();
        let names: Vec<_> = c
            .file
            .fields
            .as_ref()
            .unwrap()
            .0
            .iter()
            .map(|(k, _)| k.value.clone())
            .collect();
        assert_eq!(names, ["PERMIT_ID", "STATUS", "TS"]);
        let (_, ts) = &c.file.fields.as_ref().unwrap().0[2];
        assert_eq!(ts.referenced.line(), 8);
        assert!(matches!(&ts.value, FieldSpec::Short(s) if s.starts_with("updated_at")));
        assert!(
            matches!(&c.file.deliver.as_ref().unwrap().value, DeliverSpec::File(f) if f.file == "permit.txt")
        );
    }

    #[test]
    fn unknown_key_names_its_line() {
        let text = SEED.replace("format: fixed", "format: fixed\nformt: csv");
        let err = parse(Path::new("m.yml"), &text).unwrap_err();
        assert_eq!(err.line, 5, "{err}");
        assert!(err.message.contains("formt"), "{err}");
    }

    /// Two map files giving one name: both loaders refuse it, naming the other file.
    #[test]
    fn a_name_given_in_two_map_files_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let maps = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("maps");
        for (from, to) in [
            ("permit_map.yml", "a_permit.yml"),
            ("permit_map.yml", "b_permit.yml"),
            ("permit_results_in.yml", "c_results.yml"),
            ("permit_results_in.yml", "d_results.yml"),
            ("RESULTS.cpy", "RESULTS.cpy"),
            ("PERMIT.cpy", "PERMIT.cpy"),
        ] {
            std::fs::copy(maps.join(from), dir.path().join(to)).unwrap();
        }
        let one = |errs: Vec<super::Diagnostic>| {
            assert_eq!(errs.len(), 1, "{errs:?}");
            errs[0].to_string()
        };
        let Err(errs) = crate::connector::load_all(dir.path(), chrono_tz::UTC) else {
            panic!("two connectors of one name were loaded");
        };
        let targets = one(errs);
        assert!(targets.contains("b_permit.yml"), "{targets}");
        assert!(targets.contains("is also defined in"), "{targets}");
        assert!(targets.contains("a_permit.yml"), "{targets}");
        let Err(errs) = crate::source::load_all(dir.path(), chrono_tz::UTC) else {
            panic!("two sources of one name were loaded");
        };
        let sources = one(errs);
        assert!(
            sources.contains("source \"cobol_results\" is also defined in"),
            "{sources}"
        );
        assert!(
            sources.contains("c_results.yml") && sources.contains("d_results.yml"),
            "{sources}"
        );
    }
}
