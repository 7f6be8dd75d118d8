//! The ingest client: HTTPS with a client certificate over one kept-alive connection, used
//! by `ess send`, the tests and the load generator.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::ingest::tls::{load_certs, load_key};

/// Why a request got no answer (a rejection is an answer: see [`Answer`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {msg}")]
    Connect { addr: String, msg: String },
    #[error("no answer: {0}")]
    NoAnswer(String),
    #[error("{0}")]
    Setup(String),
}

/// A response: status, `Retry-After` seconds if any, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<u64>,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One client connection (re-established on demand).
pub struct Client {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    addr: String,
    authority: String,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Longest wait for an answer before the request counts as lost.
    pub timeout: Duration,
}

impl Client {
    /// A client for `url` (`https://host:port`) trusting `ca`, presenting `identity`
    /// (certificate chain file, key file) if given.
    pub fn new(
        url: &str,
        ca: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Client, ClientError> {
        let mut roots = RootCertStore::empty();
        for c in load_certs(ca).map_err(|e| ClientError::Setup(e.to_string()))? {
            roots.add(c).map_err(|e| {
                ClientError::Setup(format!("bad CA certificate in {}: {e}", ca.display()))
            })?;
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    load_certs(cert).map_err(|e| ClientError::Setup(e.to_string()))?,
                    load_key(key).map_err(|e| ClientError::Setup(e.to_string()))?,
                )
                .map_err(|e| {
                    ClientError::Setup(format!(
                        "client certificate {} and key {} do not fit: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client::with_config(url, Arc::new(config))
    }

    /// A client for `url` with a ready rustls config.
    pub fn with_config(
        url: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Client, ClientError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| ClientError::Setup(format!("bad URL {url:?}: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(ClientError::Setup(format!(
                "URL {url:?} must start with https://"
            )));
        }
        let host = uri
            .host()
            .ok_or_else(|| ClientError::Setup(format!("URL {url:?} has no host")))?;
        let port = uri.port_u16().unwrap_or(443);
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let server_name = ServerName::try_from(bare.clone())
            .map_err(|e| ClientError::Setup(format!("bad host {host:?}: {e}")))?;
        let addr = if bare.contains(':') {
            format!("[{bare}]:{port}")
        } else {
            format!("{bare}:{port}")
        };
        Ok(Client {
            connector: TlsConnector::from(config),
            server_name,
            authority: addr.clone(),
            addr,
            sender: None,
            timeout: Duration::from_secs(30),
        })
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ClientError> {
        if self.sender.as_ref().is_some_and(|s| !s.is_closed()) {
            // Checked just above: the sender exists.
            return Ok(self.sender.as_mut().expect("sender present"));
        }
        let err = |msg: String| ClientError::Connect {
            addr: self.addr.clone(),
            msg,
        };
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(
            self.timeout,
            self.connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| err("TLS handshake timed out".into()))?
        .map_err(|e| err(format!("TLS: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| err(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(self.sender.insert(sender))
    }

    /// Sends one request; on any transport failure the connection is dropped (the next
    /// call reconnects) and the error says the answer never came.
    pub async fn request(
        &mut self,
        method: hyper::Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Answer, ClientError> {
        let timeout = self.timeout;
        let authority = self.authority.clone();
        let sender = self.connect().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority);
        if let Some(ct) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let result = tokio::time::timeout(timeout, async {
            // A kept-alive connection may still be finishing the previous exchange.
            sender
                .ready()
                .await
                .map_err(|e| ClientError::NoAnswer(format!("connection closed: {e}")))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| ClientError::NoAnswer(e.to_string()))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::NoAnswer(e.to_string()))?
                .to_bytes();
            Ok(Answer {
                status,
                retry_after,
                body,
            })
        })
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::NoAnswer(format!(
                "no answer within {}s",
                timeout.as_secs()
            )))
        });
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    /// `POST /v1/events` with a JSON (or NDJSON) body.
    pub async fn post_events(
        &mut self,
        body: impl Into<Bytes>,
        ndjson: bool,
    ) -> Result<Answer, ClientError> {
        let ct = if ndjson {
            "application/x-ndjson"
        } else {
            "application/json"
        };
        self.request(hyper::Method::POST, "/v1/events", Some(ct), body.into())
            .await
    }

    /// `GET /v1/events/{key}`.
    pub async fn receipt(&mut self, key: &str) -> Result<Answer, ClientError> {
        let path = format!(
            "/v1/events/{}",
            percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC)
        );
        self.request(hyper::Method::GET, &path, None, Bytes::new())
            .await
    }
}
