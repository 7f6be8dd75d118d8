//! The `http` target: each record POSTed (or PUT...) to a REST or SOAP endpoint with
//! reqwest over rustls, carrying the event's `Idempotency-Key`.
//!
//! One request per record, in `seq` order; a delivery stops at the first failure, so a
//! later record is never sent before an earlier one succeeded. Exactly once rests on the
//! receiver honouring `Idempotency-Key` (a retried record carries the same key, whether
//! the earlier attempt died before or after the receiver acted on it). HTTP has no state
//! to reconcile, so the checkpoint only records the last acknowledged `seq` (for
//! diagnosis); it never makes the target skip a record, so a replayed event is sent.
//!
//! Bodies: the record as the map made it, or the `body:` template filled with it
//! (`{{record}}`, `{{key}}`, `{{seq}}`, `{{type}}`, `{{trace_id}}`, `{{target}}`). For
//! `format: soap` the result goes inside the `soap:Body` of a 1.1 or 1.2 envelope, unless
//! the template is itself a whole `Envelope` (to add SOAP headers).
//!
//! Outcomes: 2xx is success (unless a SOAP body holds a Fault); 408, 429, 5xx (honouring
//! `Retry-After`), timeouts and connection failures are [`DeliveryError::Transient`];
//! other statuses and every SOAP Fault are [`DeliveryError::Permanent`], with the status and
//! the fault code and string (parsed with quick-xml) in the message.
//!
//! Architecture invariant: the checkpoint only ever names a record the endpoint answered
//! with success.

use std::path::Path;
use std::time::Duration;

use quick_xml::events::Event as XmlEvent;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::{Checkpoint, Delivery, DeliveryError, Target};
use crate::config::connector::HttpDeliver;
use crate::config::parse_duration;
use crate::event::{Event, Record};
use crate::feed::schema::{decode, encode};

/// Default for `timeout:` (connect and whole request).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most of a response body read: enough for any fault or error text.
const MAX_RESPONSE: usize = 1 << 20;
/// Most of an error body quoted in a message.
const QUOTE: usize = 300;
/// Placeholders a `body:` template may use.
const PLACEHOLDERS: [&str; 6] = ["record", "key", "seq", "type", "trace_id", "target"];

const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const SOAP12_NS: &str = "http://www.w3.org/2003/05/soap-envelope";

/// How records are wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wire {
    /// The record (or the body template) as is.
    Rest,
    /// A SOAP envelope, 1.1 or 1.2, with an optional action.
    Soap { v12: bool, action: Option<String> },
}

/// The last record the endpoint acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HttpCheckpoint {
    last_seq: u64,
}

/// A REST or SOAP endpoint (`deliver.kind: http`).
#[derive(Debug)]
pub struct HttpTarget {
    connector: String,
    client: reqwest::Client,
    url: Url,
    method: Method,
    headers: HeaderMap,
    wire: Wire,
    body: Option<String>,
    /// The SOAP body template is a whole envelope (with its own headers), not Body content.
    full_envelope: bool,
}

impl HttpTarget {
    /// Validates `spec` and builds the client (TLS roots, client identity); `base_dir`
    /// resolves relative `ca` / `client_cert` / `client_key` paths, `format` is the map's
    /// `format:` (`soap` wraps records in an envelope; others choose the content type).
    pub fn new(
        spec: &HttpDeliver,
        base_dir: &Path,
        connector: &str,
        format: &str,
    ) -> Result<HttpTarget, String> {
        let mut errs = Vec::new();
        let url = match Url::parse(&spec.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            Ok(u) => {
                errs.push(format!(
                    "http: url {u} must be http:// or https:// with a host"
                ));
                None
            }
            Err(e) => {
                errs.push(format!("http: url {:?}: {e}", spec.url));
                None
            }
        };
        let method = match spec
            .method
            .as_deref()
            .unwrap_or("POST")
            .to_ascii_uppercase()
            .as_str()
        {
            m @ ("POST" | "PUT" | "PATCH") => {
                Method::from_bytes(m.as_bytes()).unwrap_or(Method::POST)
            }
            m => {
                errs.push(format!(
                    "http: method {m:?} cannot carry a record (use POST, PUT or PATCH)"
                ));
                Method::POST
            }
        };
        let soap = format == "soap";
        let v12 = match spec.soap_version.as_deref() {
            None | Some("1.1") => false,
            Some("1.2") => true,
            Some(v) => {
                errs.push(format!("http: soap_version {v:?} is not 1.1 or 1.2"));
                false
            }
        };
        if !soap && (spec.soap_action.is_some() || spec.soap_version.is_some()) {
            errs.push(format!(
                "http: soap_action / soap_version need `format: soap` (this map is {format})"
            ));
        }
        let wire = if soap {
            Wire::Soap {
                v12,
                action: spec.soap_action.clone(),
            }
        } else {
            Wire::Rest
        };

        let mut headers = HeaderMap::new();
        let content_type = match &wire {
            Wire::Soap { v12: false, .. } => "text/xml; charset=utf-8".to_string(),
            Wire::Soap {
                v12: true,
                action: Some(a),
            } => format!("application/soap+xml; charset=utf-8; action=\"{a}\""),
            Wire::Soap {
                v12: true,
                action: None,
            } => "application/soap+xml; charset=utf-8".to_string(),
            Wire::Rest if format == "json" => "application/json".to_string(),
            Wire::Rest if format == "csv" => "text/csv".to_string(),
            Wire::Rest => "text/plain".to_string(),
        };
        match HeaderValue::from_str(&content_type) {
            Ok(v) => {
                headers.insert(CONTENT_TYPE, v);
            }
            Err(_) => errs.push(format!(
                "http: soap_action {:?} is not a valid header value",
                spec.soap_action
            )),
        }
        if let Wire::Soap {
            v12: false,
            action: Some(a),
        } = &wire
        {
            match HeaderValue::from_str(&format!("\"{a}\"")) {
                Ok(v) => {
                    headers.insert("soapaction", v);
                }
                Err(_) => errs.push(format!(
                    "http: soap_action {a:?} is not a valid header value"
                )),
            }
        }
        for (name, value) in &spec.headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(n), _) if n == "idempotency-key" || n == "traceparent" => errs.push(format!(
                    "http: header {name} is set by ESS for every record; remove it"
                )),
                (Ok(n), Ok(v)) => {
                    headers.insert(n, v);
                }
                _ => errs.push(format!(
                    "http: header {name}: {value:?} is not a valid HTTP header"
                )),
            }
        }
        if let Some(body) = &spec.body
            && let Err(e) = check_template(body)
        {
            errs.push(format!("http: body: {e}"));
        }

        let timeout = match spec.timeout.as_deref().map(parse_duration) {
            None => DEFAULT_TIMEOUT,
            Some(Ok(d)) if d >= Duration::from_millis(100) => d,
            Some(Ok(_)) => {
                errs.push("http: timeout must be at least 100ms".to_string());
                DEFAULT_TIMEOUT
            }
            Some(Err(e)) => {
                errs.push(format!("http: timeout: {e}"));
                DEFAULT_TIMEOUT
            }
        };
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ess/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &spec.ca {
            let path = base_dir.join(ca);
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|pem| {
                    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string())
                }) {
                Ok(certs) if !certs.is_empty() => builder = builder.tls_certs_only(certs),
                Ok(_) => errs.push(format!(
                    "http: ca {} holds no PEM certificate",
                    path.display()
                )),
                Err(e) => errs.push(format!("http: ca {}: {e}", path.display())),
            }
        }
        match (&spec.client_cert, &spec.client_key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = (base_dir.join(cert), base_dir.join(key));
                let pem = std::fs::read(&cert)
                    .map_err(|e| format!("http: client_cert {}: {e}", cert.display()))
                    .and_then(|mut pem| {
                        let k = std::fs::read(&key)
                            .map_err(|e| format!("http: client_key {}: {e}", key.display()))?;
                        pem.push(b'\n');
                        pem.extend(k);
                        Ok(pem)
                    });
                match pem.and_then(|pem| {
                    reqwest::Identity::from_pem(&pem)
                        .map_err(|e| format!("http: client_cert/client_key: {}", chain(&e)))
                }) {
                    Ok(id) => builder = builder.identity(id),
                    Err(e) => errs.push(e),
                }
            }
            (None, None) => {}
            _ => errs.push("http: client_cert and client_key go together".to_string()),
        }
        let client = match builder.build() {
            Ok(c) => Some(c),
            Err(e) => {
                errs.push(format!("http: cannot build the HTTP client: {}", chain(&e)));
                None
            }
        };
        match (url, client) {
            (Some(url), Some(client)) if errs.is_empty() => Ok(HttpTarget {
                connector: connector.to_string(),
                client,
                url,
                method,
                headers,
                full_envelope: soap && spec.body.as_deref().is_some_and(is_envelope),
                wire,
                body: spec.body.clone(),
            }),
            _ => Err(errs.join("; ")),
        }
    }

    /// The request body for one record.
    fn body_of(&self, event: &Event, record: &Record) -> Vec<u8> {
        let soap = matches!(self.wire, Wire::Soap { .. });
        let inner = match &self.body {
            Some(template) => fill(template, event, record, &self.connector, soap),
            None => record.bytes.clone(),
        };
        match &self.wire {
            Wire::Soap { v12, .. } if !self.full_envelope => envelope(*v12, &inner),
            _ => inner,
        }
    }

    /// Sends one record; `Ok` once the endpoint acknowledged it.
    async fn send(&self, event: &Event, record: &Record) -> Result<(), DeliveryError> {
        let key = key_header(&event.key);
        let mut req = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .header("idempotency-key", key);
        if let Some(tp) = traceparent(&event.trace_id, event.seq) {
            req = req.header("traceparent", tp);
        }
        let what = format!(
            "http {} {}: seq {}",
            self.method,
            shown(&self.url),
            event.seq
        );
        let resp = req
            .body(self.body_of(event, record))
            .send()
            .await
            .map_err(|e| request_error(&what, &e))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // Redirects are not followed (a POST must not silently land elsewhere): say where.
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok());
        let what = match location {
            Some(l) if status.is_redirection() => {
                format!("{what}: redirected to {l} (fix the url)")
            }
            _ => what,
        };
        let body = read_capped(resp)
            .await
            .map_err(|e| request_error(&what, &e))?;
        if let Wire::Soap { .. } = self.wire
            && let Some(fault) = soap_fault(&body)
        {
            return Err(DeliveryError::Permanent(format!(
                "{what}: HTTP {status}: SOAP Fault {fault}"
            )));
        }
        classify(status, retry_after, &body).map_err(|e| match e {
            DeliveryError::Permanent(m) => DeliveryError::Permanent(format!("{what}: {m}")),
            DeliveryError::Transient {
                message,
                retry_after,
            } => DeliveryError::Transient {
                message: format!("{what}: {message}"),
                retry_after,
            },
        })
    }
}

#[async_trait::async_trait]
impl Target for HttpTarget {
    async fn deliver(
        &mut self,
        delivery: &Delivery<'_>,
        checkpoint: &[u8],
    ) -> Result<Checkpoint, DeliveryError> {
        let mut ck: HttpCheckpoint = if checkpoint.is_empty() {
            HttpCheckpoint { last_seq: 0 }
        } else {
            decode(checkpoint)
                .map_err(|e| DeliveryError::Permanent(format!("http checkpoint: {e}")))?
        };
        for (event, record) in delivery.items {
            self.send(event, record).await?;
            ck.last_seq = event.seq;
        }
        Ok(encode(&ck))
    }

    /// One request per record: each carries its own `Idempotency-Key`.
    fn max_batch(&self) -> usize {
        1
    }
}

/// `url` for messages and logs: without a password it may carry.
fn shown(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// Refuses unknown placeholders in a body template.
fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            return Err("unclosed {{".to_string());
        };
        let name = rest[start + 2..start + len].trim();
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{{{name}}}}} (known: {})",
                PLACEHOLDERS.map(|p| format!("{{{{{p}}}}}")).join(", ")
            ));
        }
        rest = &rest[start + len + 2..];
    }
    Ok(())
}

/// Fills a body template; metadata values are XML-escaped in SOAP bodies, the record is
/// inserted as the map made it.
fn fill(template: &str, event: &Event, record: &Record, connector: &str, xml: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(template.len() + record.bytes.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.extend_from_slice(&rest.as_bytes()[..start]);
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        let value = match rest[start + 2..start + len].trim() {
            "record" => {
                out.extend_from_slice(&record.bytes);
                rest = &rest[start + len + 2..];
                continue;
            }
            "key" => event.key.clone(),
            "seq" => event.seq.to_string(),
            "type" => event.event_type.clone(),
            "trace_id" => event.trace_id.to_string(),
            "target" => connector.to_string(),
            _ => rest[start..start + len + 2].to_string(),
        };
        if xml {
            out.extend_from_slice(quick_xml::escape::escape(value.as_str()).as_bytes());
        } else {
            out.extend_from_slice(value.as_bytes());
        }
        rest = &rest[start + len + 2..];
    }
    out.extend_from_slice(rest.as_bytes());
    out
}

/// Whether an XML template's root element is a SOAP `Envelope`.
fn is_envelope(template: &str) -> bool {
    let mut reader = quick_xml::Reader::from_str(template);
    loop {
        match reader.read_event() {
            Ok(XmlEvent::Start(e) | XmlEvent::Empty(e)) => {
                return e.local_name().as_ref() == "Envelope";
            }
            Ok(XmlEvent::Eof) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// The SOAP envelope around a record (the map's `format: soap` body content).
fn envelope(v12: bool, record: &[u8]) -> Vec<u8> {
    let ns = if v12 { SOAP12_NS } else { SOAP11_NS };
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:soap=\"{ns}\"><soap:Body>"
    )
    .into_bytes();
    out.extend_from_slice(record);
    out.extend_from_slice(b"</soap:Body></soap:Envelope>");
    out
}

/// The `Idempotency-Key` header for `key`: as is when it is visible ASCII, else with every
/// byte outside `!`..`~` (and `%`) percent-encoded, so every event can be sent and a key
/// always maps to the same header.
fn key_header(key: &str) -> HeaderValue {
    if let Ok(v) = HeaderValue::from_str(key)
        && key.bytes().all(|b| b.is_ascii_graphic())
    {
        return v;
    }
    let mut out = String::with_capacity(key.len() * 3);
    for b in key.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // Only visible ASCII is left, which is always a valid header value.
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static("invalid-key"))
}

/// A W3C `traceparent` when the trace id is one (32 hex digits, not all zero); the parent
/// id is derived from the seq so a retry of the same record carries the same header.
fn traceparent(trace_id: &str, seq: u64) -> Option<String> {
    let valid = trace_id.len() == 32
        && trace_id.bytes().all(|b| b.is_ascii_hexdigit())
        && trace_id.bytes().any(|b| b != b'0');
    valid.then(|| {
        format!(
            "00-{}-{:016x}-01",
            trace_id.to_ascii_lowercase(),
            seq.max(1)
        )
    })
}

/// Success, or the kind of failure, from a status.
fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<(), DeliveryError> {
    if status.is_success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(QUOTE)]);
    let message = format!("HTTP {status}: {}", text.trim());
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Err(DeliveryError::Transient {
            message,
            retry_after,
        })
    } else {
        Err(DeliveryError::Permanent(message))
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// The response body, at most [`MAX_RESPONSE`] bytes of it.
async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_RESPONSE - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_RESPONSE {
            break;
        }
    }
    Ok(body)
}

/// A transport failure: always worth retrying, with the cause chain in the message.
fn request_error(what: &str, e: &reqwest::Error) -> DeliveryError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "failed"
    };
    DeliveryError::transient(format!("{what}: {kind}: {}", chain(e)))
}

/// An error and its sources, `: `-separated (reqwest's own message is terse).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The code and reason of a SOAP 1.1 or 1.2 Fault (the child of Body) in `body`, if any:
/// `"soap:Client: Case 42 is closed"`.
fn soap_fault(body: &[u8]) -> Option<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Part {
        Code,
        Reason,
    }
    let text = String::from_utf8_lossy(body);
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut path: Vec<String> = Vec::new();
    let mut in_fault = false;
    let (mut code, mut reason) = (String::new(), String::new());
    let mut done: Vec<Part> = Vec::new();
    // Which fault part the innermost open element is, if it is one not yet read.
    let part_of = |path: &[String], done: &[Part]| -> Option<Part> {
        let last = path.last().map(String::as_str);
        let parent = path.len().checked_sub(2).map(|i| path[i].as_str());
        let part = match (parent, last) {
            (_, Some("faultcode")) | (Some("Code"), Some("Value")) => Part::Code,
            (_, Some("faultstring")) | (Some("Reason"), Some("Text")) => Part::Reason,
            _ => return None,
        };
        (!done.contains(&part)).then_some(part)
    };
    loop {
        let piece = match reader.read_event() {
            Ok(XmlEvent::Start(e)) => {
                let name = e.local_name().as_ref().to_string();
                in_fault |= name == "Fault" && path.last().is_some_and(|p| p == "Body");
                path.push(name);
                continue;
            }
            Ok(XmlEvent::Empty(e)) => {
                in_fault |=
                    e.local_name().as_ref() == "Fault" && path.last().is_some_and(|p| p == "Body");
                continue;
            }
            Ok(XmlEvent::End(_)) => {
                if in_fault && let Some(part) = part_of(&path, &done) {
                    done.push(part);
                }
                path.pop();
                continue;
            }
            Ok(XmlEvent::Text(t)) => t.xml10_content().into_owned(),
            Ok(XmlEvent::CData(t)) => t.into_inner().into_owned(),
            // An entity (`&amp;`, `&#233;`) inside text.
            Ok(XmlEvent::GeneralRef(r)) => match r.resolve_char_ref() {
                Ok(Some(c)) => c.to_string(),
                _ => match r.as_ref() {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                }
                .to_string(),
            },
            Ok(XmlEvent::Eof) | Err(_) => break,
            Ok(_) => continue,
        };
        match part_of(&path, &done) {
            Some(Part::Code) if in_fault => code.push_str(&piece),
            Some(Part::Reason) if in_fault => reason.push_str(&piece),
            _ => {}
        }
    }
    let (code, reason) = (code.trim(), reason.trim());
    in_fault.then(|| match (code.is_empty(), reason.is_empty()) {
        (false, false) => format!("{code}: {reason}"),
        (false, true) => code.to_string(),
        (true, false) => reason.to_string(),
        (true, true) => "(no faultstring)".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soap_11_and_12_faults_are_read() {
        let f11 = br#"<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode>soap:Client</faultcode><faultstring>Case 42 is closed</faultstring></soap:Fault></soap:Body></soap:Envelope>"#;
        assert_eq!(
            soap_fault(f11).as_deref(),
            Some("soap:Client: Case 42 is closed")
        );
        let f12 = br#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault><env:Code><env:Value>env:Sender</env:Value></env:Code><env:Reason><env:Text xml:lang="en">bad case id</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>"#;
        assert_eq!(soap_fault(f12).as_deref(), Some("env:Sender: bad case id"));
        let ok = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><UpdateCaseResponse><Fault>no</Fault></UpdateCaseResponse></s:Body></s:Envelope>"#;
        assert_eq!(
            soap_fault(ok),
            None,
            "only a Fault right inside Body is one"
        );
        assert_eq!(soap_fault(b"<a><b>not soap</b></a>"), None);
        let amp = br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Server</faultcode><faultstring>A &amp; B &#233;</faultstring></s:Fault></s:Body></s:Envelope>"#;
        assert_eq!(soap_fault(amp).as_deref(), Some("s:Server: A & B \u{e9}"));
        assert_eq!(soap_fault(b"not xml at all <<<"), None);
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn statuses_are_classified() {
        assert!(classify(StatusCode::CREATED, None, b"").is_ok());
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, None, b""),
            Err(DeliveryError::Transient { .. })
        ));
        let e = classify(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            b"",
        )
        .unwrap_err();
        assert_eq!(
            e,
            DeliveryError::Transient {
                message: "HTTP 429 Too Many Requests: ".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
        let e = classify(
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            b"field ssn not allowed",
        )
        .unwrap_err();
        assert_eq!(
            e,
            DeliveryError::Permanent("HTTP 422 Unprocessable Entity: field ssn not allowed".into())
        );
    }

    #[test]
    fn templates_fill_and_refuse_unknown_placeholders() {
        assert!(check_template("<a>{{record}}</a>{{key}}").is_ok());
        assert!(
            check_template("{{field:NAME}}")
                .unwrap_err()
                .contains("unknown placeholder {{field:NAME}}")
        );
        let event = Event {
            seq: 5,
            event_type: "T".into(),
            payload: Default::default(),
            key: "a&b".into(),
            trace_id: "t".into(),
            ts: None,
            received_at: chrono::Utc::now(),
        };
        let record = Record {
            seq: 5,
            bytes: b"<r/>".to_vec(),
        };
        assert_eq!(
            fill(
                "<k>{{key}}</k>{{record}}{{seq}}",
                &event,
                &record,
                "c",
                true
            ),
            b"<k>a&amp;b</k><r/>5"
        );
        assert_eq!(
            traceparent("4bf92f3577b34da6a3ce929d0e0e4736", 5).unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000005-01"
        );
        assert_eq!(traceparent("t", 5), None);
        assert_eq!(key_header("k-1_A.b"), "k-1_A.b");
        assert_eq!(
            shown(&Url::parse("https://u:secret@h/p").unwrap()),
            "https://u:***@h/p"
        );
        assert_eq!(key_header("caf\u{e9} 1"), "caf%C3%A9%201");
        assert!(is_envelope(
            "<?xml version='1.0'?>\n<s:Envelope xmlns:s='x'><s:Body>{{record}}</s:Body></s:Envelope>"
        ));
        assert!(!is_envelope(
            "<UpdateCase xmlns='urn:c'>{{record}}</UpdateCase>"
        ));
    }
}
