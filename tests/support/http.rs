//! A real HTTP(S) endpoint for tests (hyper on 127.0.0.1:0), idempotent by
//! `Idempotency-Key` like a well-behaved receiver, with scripted faults: error statuses,
//! connections dropped without an answer, and requests applied but never answered.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the server received it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) headers: hyper::HeaderMap,
    pub(crate) body: Vec<u8>,
    /// The client certificate's DER, over TLS with client auth.
    pub(crate) client_cert: Option<Vec<u8>>,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub(crate) fn key(&self) -> &str {
        self.header("idempotency-key").unwrap_or("")
    }
}

/// What the endpoint answers to a request it accepts.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn new(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }
}

/// A scripted behaviour for the next request.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// Answer this without acting on the request.
    Answer(Answer),
    /// Close the connection without an answer, without acting.
    Drop,
    /// Act on the request, then never answer (the client times out).
    ApplyThenHang,
}

/// (idempotency key, body) of each request acted on, in order.
pub(crate) type Applied = Vec<(String, Vec<u8>)>;

/// Decides the answer to an accepted request (for instance a SOAP response or Fault).
pub(crate) type Handler = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    /// Every request, in arrival order (retries included).
    pub(crate) seen: Arc<Mutex<Vec<Seen>>>,
    /// Request bodies acted on, once per idempotency key, in order.
    pub(crate) applied: Arc<Mutex<Applied>>,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    seen: Arc<Mutex<Vec<Seen>>>,
    applied: Arc<Mutex<Applied>>,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    handler: Handler,
}

impl State {
    fn apply(&self, seen: &Seen) {
        let mut applied = self.applied.lock().unwrap();
        if !applied.iter().any(|(k, _)| k == seen.key()) {
            applied.push((seen.key().to_string(), seen.body.clone()));
        }
    }
}

fn respond(a: Answer) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(a.status);
    for (n, v) in a.headers {
        r = r.header(n, v);
    }
    r.body(Full::new(Bytes::from(a.body))).unwrap()
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    client_cert: Option<Vec<u8>>,
) -> Result<Response<Full<Bytes>>, String> {
    let method = req.method().to_string();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    let seen = Seen {
        method,
        headers,
        body,
        client_cert,
    };
    state.seen.lock().unwrap().push(seen.clone());
    let fault = state.faults.lock().unwrap().pop_front();
    match fault {
        Some(Fault::Answer(a)) => Ok(respond(a)),
        Some(Fault::Drop) => Err("dropped by the test".into()),
        Some(Fault::ApplyThenHang) => {
            state.apply(&seen);
            std::future::pending::<()>().await;
            Err("unreachable".into())
        }
        None => {
            let answer = (state.handler)(&seen);
            if (200..300).contains(&answer.status) {
                state.apply(&seen);
            }
            Ok(respond(answer))
        }
    }
}

impl Endpoint {
    /// Plain HTTP; accepted requests are answered by `handler`.
    pub(crate) async fn start(handler: Handler) -> Endpoint {
        Self::start_with(handler, None).await
    }

    /// HTTPS with `tls` (which may require client certificates).
    pub(crate) async fn start_with(
        handler: Handler,
        tls: Option<rustls::ServerConfig>,
    ) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let applied = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Mutex::new(VecDeque::new()));
        let state = Arc::new(State {
            seen: seen.clone(),
            applied: applied.clone(),
            faults: faults.clone(),
            handler,
        });
        let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => {
                            let svc = service_fn(move |req| handle(state.clone(), req, None));
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(tcp), svc)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| c.to_vec());
                            let svc =
                                service_fn(move |req| handle(state.clone(), req, cert.clone()));
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), svc)
                                .await;
                        }
                    }
                });
            }
        });
        Endpoint {
            addr,
            seen,
            applied,
            faults,
            task,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Queues faults for the next requests, in order.
    pub(crate) fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.faults.lock().unwrap().extend(faults);
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub(crate) fn applied(&self) -> Vec<(String, Vec<u8>)> {
        self.applied.lock().unwrap().clone()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Always 200 with a small JSON body.
pub(crate) fn ok_json() -> Handler {
    Arc::new(|_| Answer::new(200, r#"{"ok":true}"#).header("content-type", "application/json"))
}

/// A private CA, a server certificate for 127.0.0.1 and localhost, and a client certificate
/// (`ess-client`) as PEM files in `dir`: the endpoint's mutual TLS.
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) server: rustls::ServerConfig,
}

pub(crate) fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Endpoint Test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        (p.signed_by(&key, &issuer).unwrap(), key)
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()], "endpoint");
    let (client_cert, client_key) = leaf(vec![], "ess-client");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.pem"), client_cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
    let server = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server_cert.der().clone()], key)
        .unwrap();
    Pki { dir, server }
}
