//! Log output: `tracing` events to stderr, as human text (default) or JSON lines
//! (`log.format: json`), filtered by `RUST_LOG` (default `info`).
//!
//! Code that handles an event runs inside [`event_span`], which carries `seq` and
//! `trace_id`; both formats repeat the fields of every enclosing span on each line. The
//! JSON format flattens them into the top level of the object, so a log pipeline can select
//! `trace_id == "..."` directly:
//!
//! ```text
//! {"timestamp":"2026-11-27T02:00:00.123456Z","level":"INFO","target":"ess::connector",
//!  "message":"delivered","spans":"connector:event","connector":"city_hall_cobol",
//!  "seq":7,"trace_id":"4bf9..."}
//! ```
//!
//! The first keys are fixed (`timestamp`, `level`, `target` — the Rust module —, `message`,
//! `spans`); the fields follow in name order. A field named like a fixed key is written as
//! `field.NAME` rather than hiding it.
//!
//! Invariant: a line holds only what the code put in fields and messages; no payload is
//! logged at info level or above (callers keep that rule; this module adds nothing).

use std::fmt::Write as _;
use std::io::IsTerminal;

use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Installs the global subscriber: stderr, `format`, `RUST_LOG` or `info`. Returns `false`
/// (and changes nothing) if a subscriber was already installed, so calling it twice is
/// harmless. An invalid `RUST_LOG` directive is skipped, not fatal.
///
/// When stderr is the journal (systemd sets `$JOURNAL_STREAM` to its device and inode),
/// every line starts with its syslog priority (`<3>` error, `<4>` warning, `<6>` info,
/// `<7>` debug), which journald reads, so `journalctl -p warning` works; the journal
/// stamps the time itself, so the text format leaves it out.
pub(crate) fn init(format: LogFormat) -> bool {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let registry = tracing_subscriber::registry().with(filter);
    let journal = stderr_is_journal();
    let installed = match format {
        LogFormat::Text if journal => registry.with(journal_layer(std::io::stderr)).try_init(),
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal();
            registry.with(text_layer(std::io::stderr, ansi)).try_init()
        }
        LogFormat::Json => registry
            .with(json_layer(std::io::stderr, journal))
            .try_init(),
    };
    installed.is_ok()
}

/// Whether stderr is the stream systemd connected to the journal: `$JOURNAL_STREAM` is
/// `DEVICE:INODE` of it (a service whose stderr was redirected elsewhere keeps the
/// variable, hence the comparison).
pub(crate) fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    journal_stream_matches(&value.to_string_lossy(), stat.st_dev, stat.st_ino)
}

/// `JOURNAL_STREAM`'s `DEVICE:INODE` names the file with `dev` and `ino`.
pub(crate) fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let mut parts = value.trim().splitn(2, ':');
    let (Some(d), Some(i)) = (parts.next(), parts.next()) else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// The syslog priority journald reads from a `<N>` line prefix.
fn priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// The text layer for the journal: [`text_layer`]'s lines without time or colours, each
/// with its priority prefix.
pub(crate) fn journal_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .event_format(OneLine {
            inner: tracing_subscriber::fmt::format().without_time(),
            priority: true,
        })
        .with_writer(writer)
        .with_ansi(false)
}

/// Formats an event with `inner`, then keeps it on one line (a line end inside a message
/// or field is written `\n`), and, with `priority`, starts it with `<N>`.
pub(crate) struct OneLine<F> {
    inner: F,
    priority: bool,
}

impl<S, N, F> FormatEvent<S, N> for OneLine<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        if self.priority {
            write!(writer, "<{}>", priority(event.metadata().level()))?;
        }
        writeln!(writer, "{}", body.replace('\r', "\\r").replace('\n', "\\n"))
    }
}

/// The span every piece of work about one event runs in, so that each line logged inside
/// carries the event's `seq` and `trace_id` (SPEC §6):
///
/// ```text
/// let _entered = logging::event_span(&event).entered();
/// tracing::info!(connector = %name, "delivered");
/// ```
pub(crate) fn event_span(event: &crate::event::Event) -> tracing::Span {
    tracing::info_span!("event", seq = event.seq, trace_id = %event.trace_id)
}

/// The human text layer, writing to `writer`: time, level, the enclosing spans with their
/// fields (`connector{target_name=...}:deliver{seq=7 trace_id=...}:`), target, message,
/// fields. With `ansi` (a terminal) in colour; else exactly one line per message.
pub(crate) fn text_layer<S, W>(writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    if ansi {
        // A person at a terminal: colours, and a message's own line breaks.
        return Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(true),
        );
    }
    // A file, a pipe, a log collector: one line per message.
    Box::new(
        tracing_subscriber::fmt::layer()
            .event_format(OneLine {
                inner: tracing_subscriber::fmt::format(),
                priority: false,
            })
            .with_writer(writer)
            .with_ansi(false),
    )
}

/// The JSON-lines layer, writing to `writer`: one object per event with `timestamp`,
/// `level`, `target`, `spans` (names, root first, `:`-separated), the fields of every
/// enclosing span, then the event's own fields (`message` among them); with `priority`
/// (stderr is the journal) each line starts with its syslog priority.
pub(crate) fn json_layer<S, W>(writer: W, priority: bool) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(OneLine {
            inner: FlatJson,
            priority,
        })
        .with_writer(writer)
}

/// Formats one event as a flat JSON object (see [`json_layer`]).
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut spans = None;
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            let mut names = Vec::new();
            for span in scope.from_root() {
                names.push(span.name());
                let extensions = span.extensions();
                // The layer stored the span's fields as a JSON object (JsonFields); inner
                // spans come later and win on a name clash.
                let span_fields = extensions
                    .get::<FormattedFields<N>>()
                    .and_then(|f| serde_json::from_str::<Map<String, Value>>(&f.fields).ok());
                fields.extend(span_fields.into_iter().flatten());
            }
            spans = Some(names.join(":"));
        }
        event.record(&mut FieldVisitor(&mut fields));
        // Fixed keys first, in a fixed order, so lines read alike; then the fields, sorted.
        let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut line = vec![
            ("timestamp", Value::from(timestamp)),
            ("level", meta.level().as_str().into()),
            ("target", meta.target().into()),
        ];
        if let Some(message) = fields.remove("message") {
            line.push(("message", message));
        }
        if let Some(spans) = spans {
            line.push(("spans", spans.into()));
        }
        let mut text = String::from("{");
        let mut push = |key: &str, value: &Value| -> std::fmt::Result {
            let key = serde_json::to_string(key).map_err(|_| std::fmt::Error)?;
            let value = serde_json::to_string(value).map_err(|_| std::fmt::Error)?;
            if text.len() > 1 {
                text.push(',');
            }
            write!(text, "{key}:{value}")
        };
        for (key, value) in &line {
            push(key, value)?;
        }
        for (key, value) in &fields {
            // A field named like a fixed key (`target = %name`) must not hide it.
            if RESERVED.contains(&key.as_str()) {
                push(&format!("field.{key}"), value)?;
            } else {
                push(key, value)?;
            }
        }
        text.push('}');
        writeln!(writer, "{text}")
    }
}

/// The keys every JSON line starts with; fields of the same name get a `field.` prefix.
const RESERVED: [&str; 5] = ["timestamp", "level", "target", "message", "spans"];

/// Collects an event's fields into the JSON object, keeping numbers and booleans typed.
struct FieldVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for FieldVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // NaN and infinities have no JSON number; keep them readable as strings.
        let v = serde_json::Number::from_f64(value)
            .map_or_else(|| value.to_string().into(), Value::Number);
        self.0.insert(field.name().into(), v);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber =
            tracing_subscriber::registry().with(json_layer(move || sink.clone(), false));
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    fn json_lines(f: impl FnOnce()) -> Vec<Value> {
        let text = capture(f);
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn text_line_carries_span_fields() {
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber =
            tracing_subscriber::registry().with(text_layer(move || sink.clone(), false));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("deliver", seq = 7u64, trace_id = %"4bf92f35");
            let _g = span.enter();
            tracing::info!("delivered");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(" INFO deliver{seq=7 trace_id=4bf92f35}:"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("delivered"), "{text}");
        assert!(
            !text.contains('\x1b'),
            "no colours when ansi is off: {text}"
        );
    }

    /// What `init` installs for `log.format: json` when stderr is the journal: the same
    /// object, after the syslog priority journald reads.
    #[test]
    fn json_line_under_the_journal_starts_with_its_priority() {
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber =
            tracing_subscriber::registry().with(json_layer(move || sink.clone(), true));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(seq = 3u64, "retrying");
            tracing::info!("delivered");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for (line, priority, message) in [
            (lines[0], "<4>", "retrying"),
            (lines[1], "<6>", "delivered"),
        ] {
            let json = line
                .strip_prefix(priority)
                .unwrap_or_else(|| panic!("{line}"));
            let value: Value = serde_json::from_str(json).unwrap();
            assert_eq!(value["message"], message, "{line}");
        }
    }

    #[test]
    fn json_line_carries_seq_and_trace_id_of_enclosing_spans() {
        let lines = json_lines(|| {
            let connector = tracing::info_span!("connector", target_name = "city_hall_cobol");
            let _c = connector.enter();
            let deliver = tracing::info_span!("deliver", seq = 7u64, trace_id = "4bf92f35");
            let _d = deliver.enter();
            tracing::info!(bytes = 35u64, ok = true, "delivered");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line["seq"], 7);
        assert_eq!(line["trace_id"], "4bf92f35");
        assert_eq!(line["target_name"], "city_hall_cobol");
        assert_eq!(line["message"], "delivered");
        assert_eq!(line["bytes"], 35);
        assert_eq!(line["ok"], true);
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["spans"], "connector:deliver");
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn event_span_puts_seq_and_trace_id_on_every_line() {
        let event = crate::event::Event {
            seq: 41,
            event_type: "PERMIT_STATUS".to_owned(),
            payload: Default::default(),
            key: "k".to_owned(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            ts: None,
            received_at: Utc::now(),
        };
        let lines = json_lines(|| {
            let _entered = event_span(&event).entered();
            tracing::info!("mapped");
            tracing::warn!(error = "refused", "delivery failed");
        });
        assert_eq!(lines.len(), 2);
        for line in &lines {
            assert_eq!(line["seq"], 41, "{line}");
            assert_eq!(
                line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
                "{line}"
            );
            assert_eq!(line["spans"], "event", "{line}");
        }
    }

    #[test]
    fn fields_recorded_later_on_a_span_appear_too() {
        let lines = json_lines(|| {
            let span = tracing::info_span!("ingest", seq = tracing::field::Empty, trace_id = "t-1");
            let _g = span.enter();
            span.record("seq", 42u64);
            tracing::warn!("committed");
        });
        assert_eq!(lines[0]["seq"], 42);
        assert_eq!(lines[0]["trace_id"], "t-1");
        assert_eq!(lines[0]["level"], "WARN");
    }

    #[test]
    fn fixed_keys_come_first_and_are_not_hidden_by_fields() {
        let text = capture(|| {
            let span = tracing::info_span!("deliver", seq = 3u64, level = "span-level");
            let _g = span.enter();
            tracing::info!(zeta = 1u64, alpha = "a", "m");
        });
        let after_timestamp = text.split_once("Z\",").map(|(_, rest)| rest);
        assert!(text.starts_with(r#"{"timestamp":""#), "{text}");
        assert_eq!(
            after_timestamp,
            Some(concat!(
                r#""level":"INFO","target":"ess::logging::tests","message":"m","spans":"deliver","#,
                r#""alpha":"a","field.level":"span-level","seq":3,"zeta":1}"#,
                "\n"
            )),
            "{text}"
        );
    }

    #[test]
    fn line_outside_any_span_is_plain() {
        let lines = json_lines(|| tracing::info!(addr = "127.0.0.1:8080", "listening"));
        assert_eq!(lines[0]["addr"], "127.0.0.1:8080");
        assert!(lines[0].get("spans").is_none());
    }

    #[test]
    fn journal_lines_carry_their_priority_and_stay_on_one_line() {
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::registry().with(journal_layer(move || sink.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("maps/x.yml:3:1: missing deliver: add\n  deliver:\n    kind: file");
            tracing::warn!(error = "a\nb", "delivery failed");
            tracing::info!("delivered");
            tracing::debug!("detail");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "one line per message: {text}");
        assert_eq!(
            lines[0],
            r"<3>ERROR ess::logging::tests: maps/x.yml:3:1: missing deliver: add\n  deliver:\n    kind: file"
        );
        assert!(
            lines[1].starts_with("<4> WARN ") && lines[1].contains(r#"error="a\nb""#),
            "{text}"
        );
        assert!(lines[2].starts_with("<6> INFO "), "{text}");
        assert!(lines[3].starts_with("<7>DEBUG "), "{text}");
    }

    #[test]
    fn journal_stream_is_compared_with_stderr() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("garbage", 8, 1234));
        assert!(!journal_stream_matches("", 0, 0));
    }

    #[test]
    fn init_twice_is_harmless() {
        // The first call may lose to another test's subscriber; the second must not panic
        // and must report that nothing was installed.
        let _ = init(LogFormat::Json);
        assert!(!init(LogFormat::Text));
    }
}
