//! The ingest API: `POST /v1/events` and `GET /v1/events/{key}` over mutual TLS (SPEC §5).
//!
//! A connection goes through two rooms:
//!
//! 1. the TLS handshake, in the waiting room of [`handshakes`]: a budget of its own, per
//!    address limits, the oldest dropped first, a time-out that shrinks as the room
//!    fills — so sockets without a certificate can only crowd out each other, never an
//!    authenticated client;
//! 2. HTTP/1.1 served by hyper, once the client certificate verified ([`tls::ClientAuth`]:
//!    chained to `client_ca`, keyUsage and extendedKeyUsage, not on `client_crl`), one of
//!    [`Limits::max_connections`]; header-read time-out and size cap, bodies capped at
//!    `max_body`, read within [`Limits::body_timeout`], and reserved in the
//!    [`budget::BodyBudget`] of `max_inflight_bytes` (503 + `Retry-After` when it is
//!    spent). A client whose certificate is valid but not in `allowed_clients` gets 403
//!    for every request; one whose certificate was revoked while it was connected gets
//!    403 and is disconnected at its next request. The requests themselves: `api`.
//!
//! Architecture invariant: a 202 is written only after [`Feed::append`] returned, which
//! is after the group commit's fsync. Ingest knows nothing of connectors: receipts ask a
//! [`Receipts`] implementation supplied by the daemon.
//! Architecture invariant: memory held for requests is bounded by configuration: at most
//! `max_inflight_bytes` of bodies, [`HandshakeLimits::max`] handshakes and
//! [`Limits::max_connections`] connections with headers of at most
//! [`Limits::max_header_bytes`].

mod api;
pub mod budget;
pub mod handshakes;
pub mod tls;
pub mod validate;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::event::Event;
use crate::feed::Feed;
use crate::health::Health;
use budget::BodyBudget;
pub use handshakes::HandshakeLimits;
use handshakes::{Handshakes, Ticket};

/// Longest the request line and headers may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a request body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once after their handshake; more are closed.
pub const MAX_CONNECTIONS: usize = 1024;
/// Largest request line plus headers.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// How long shutdown waits for requests under way.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How often handshakes over their time are dropped.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// How often `client_crl` is looked at for changes.
const CRL_POLL: Duration = Duration::from_secs(1);
/// How often dropped handshakes are summed up in one log line (when there were any).
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// `Retry-After` of a request refused because `max_inflight_bytes` is spent.
const BUSY_RETRY_AFTER_SECS: u32 = 1;

/// The sizes and times a connection is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `ingest.max_body`.
    pub max_body: u64,
    /// `ingest.max_inflight_bytes`.
    pub max_inflight_bytes: u64,
    /// Connections served at once after their handshake.
    pub max_connections: usize,
    /// The TLS handshake's waiting room.
    pub handshakes: HandshakeLimits,
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub body_timeout: Duration,
}

impl Limits {
    /// The defaults, with the configured body sizes.
    pub fn new(max_body: u64, max_inflight_bytes: u64) -> Limits {
        Limits {
            max_body,
            max_inflight_bytes,
            max_connections: MAX_CONNECTIONS,
            handshakes: HandshakeLimits::default(),
            header_timeout: HEADER_TIMEOUT,
            max_header_bytes: MAX_HEADER_BYTES,
            body_timeout: BODY_TIMEOUT,
        }
    }
}

/// Per-connector delivery state of an event, for receipts.
pub trait Receipts: Send + Sync {
    /// connector name -> `delivered` | `pending` | `retrying` | `dead` | `filtered`; an
    /// error when the ledger cannot be read (the receipt then says so, never "pending").
    fn targets(&self, event: &Event) -> Result<BTreeMap<String, String>, crate::feed::Error>;
}

/// Counters the ingest reports (metrics); the default does nothing.
pub trait IngestHooks: Send + Sync {
    fn accepted(&self, _accepted: u64, _duplicates: u64, _latency: Duration) {}
    fn rejected(&self, _reason: &str) {}
}

/// What request handlers share.
pub struct IngestState {
    pub feed: Feed,
    pub limits: Limits,
    /// Whether events are taken now (shutdown, low disk, database errors).
    pub health: Arc<Health>,
    pub allowed_clients: Vec<String>,
    pub receipts: Arc<dyn Receipts>,
    pub hooks: Arc<dyn IngestHooks>,
}

/// What every connection of one listener shares.
struct Door {
    state: Arc<IngestState>,
    client_auth: Arc<tls::ClientAuth>,
    budget: Arc<BodyBudget>,
    acceptor: TlsAcceptor,
    served: Arc<Semaphore>,
    /// Refused handshakes are logged one by one only up to a rate (a flood of garbage
    /// must not flood the journal); the rest are summed up.
    handshake_log: LogBudget,
}

/// Lets through at most [`LINES_PER_REPORT`] log lines per [`REPORT_EVERY`] and counts
/// the others.
#[derive(Debug)]
struct LogBudget {
    window: std::sync::Mutex<(Instant, u32)>,
    suppressed: AtomicU64,
}

/// Per-connection log lines of one kind allowed per [`REPORT_EVERY`].
const LINES_PER_REPORT: u32 = 20;

impl LogBudget {
    fn new() -> LogBudget {
        LogBudget {
            window: std::sync::Mutex::new((Instant::now(), 0)),
            suppressed: AtomicU64::new(0),
        }
    }

    fn allow(&self) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.0.elapsed() >= REPORT_EVERY {
            *w = (Instant::now(), 0);
        }
        if w.1 < LINES_PER_REPORT {
            w.1 += 1;
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Lines not logged since the last call.
    fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }
}

/// Accepts connections until `shutdown` turns true, then lets requests under way finish
/// (up to [`DRAIN_TIMEOUT`]). Watches `client_crl` for changes meanwhile.
pub async fn serve(
    listener: TcpListener,
    tls: tls::Tls,
    state: Arc<IngestState>,
    mut shutdown: watch::Receiver<bool>,
) {
    raise_fd_limit();
    let limits = state.limits;
    let door = Arc::new(Door {
        budget: BodyBudget::new(limits.max_inflight_bytes),
        client_auth: tls.client_auth.clone(),
        acceptor: TlsAcceptor::from(tls.config),
        served: Arc::new(Semaphore::new(limits.max_connections)),
        handshake_log: LogBudget::new(),
        state: state.clone(),
    });
    let handshakes = Handshakes::new(limits.handshakes);
    let crl_watch = tls
        .client_auth
        .has_crl()
        .then(|| tokio::spawn(watch_crl(tls.client_auth.clone(), shutdown.clone())));
    let mut conns = JoinSet::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut dropped = DroppedHandshakes::default();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        accept_failed(&e, &handshakes).await;
                        continue;
                    }
                };
                let (ticket, made_room) = handshakes.admit(peer.ip(), Instant::now());
                dropped.add(&state, made_room.evicted_same_address, made_room.evicted_full, 0);
                let (door, shutdown) = (door.clone(), shutdown.clone());
                conns.spawn(connection(tcp, peer, ticket, door, shutdown));
            }
            _ = sweep.tick() => {
                let timed_out = handshakes.expire(Instant::now());
                dropped.add(&state, 0, 0, timed_out);
                dropped.report(handshakes.len(), &door.handshake_log);
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    state.health.set_shutting_down();
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("shutdown: some ingest connections did not finish in time");
    }
    if let Some(task) = crl_watch {
        let _ = task.await;
    }
}

/// Handshakes dropped since the last log line, by why.
#[derive(Debug, Default)]
struct DroppedHandshakes {
    same_address: usize,
    room_full: usize,
    timed_out: usize,
    last_report: Option<Instant>,
}

impl DroppedHandshakes {
    /// Counts drops in the metrics at once; the log gets one line per [`REPORT_EVERY`] at
    /// most, instead of a line per socket under a flood.
    fn add(
        &mut self,
        state: &IngestState,
        same_address: usize,
        room_full: usize,
        timed_out: usize,
    ) {
        for _ in 0..same_address + room_full + timed_out {
            state.hooks.rejected("handshake_dropped");
        }
        self.same_address += same_address;
        self.room_full += room_full;
        self.timed_out += timed_out;
    }

    fn report(&mut self, in_handshake: usize, refused: &LogBudget) {
        if self.last_report.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            return;
        }
        let not_logged = refused.take_suppressed();
        if not_logged > 0 {
            tracing::warn!(
                not_logged,
                "more TLS handshakes were refused than are logged one by one"
            );
        }
        let total = self.same_address + self.room_full + self.timed_out;
        if total == 0 {
            if not_logged > 0 {
                self.last_report = Some(Instant::now());
            }
            return;
        }
        tracing::warn!(
            address_limit = self.same_address,
            room_full = self.room_full,
            timed_out = self.timed_out,
            in_handshake,
            "dropped connections that had not finished the TLS handshake"
        );
        *self = DroppedHandshakes {
            last_report: Some(Instant::now()),
            ..DroppedHandshakes::default()
        };
    }
}

/// Out of file descriptors: drop a handshake to free one (instead of leaving the real
/// client in the accept queue); other errors: back off instead of spinning.
async fn accept_failed(e: &std::io::Error, handshakes: &Handshakes) {
    let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    if out_of_fds && handshakes.evict_one() {
        tracing::debug!(error = %e, "accept failed; dropped the oldest handshake to free a descriptor");
        // The evicted connection's task closes its socket when it next runs.
        tokio::time::sleep(Duration::from_millis(5)).await;
    } else {
        tracing::warn!(error = %e, "accept failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lifts the soft limit on open files to the hard one (systemd's `LimitNOFILE=` sets both;
/// a shell's default soft limit of 1,024 would otherwise cap connections).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct we pass by pointer,
    // which lives for the whole call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::debug!("could not raise the open files limit");
            }
        }
    }
}

/// Polls `client_crl` and puts a changed file in force (a bad one is logged and ignored).
async fn watch_crl(auth: Arc<tls::ClientAuth>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(CRL_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                let auth = auth.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    auth.reload_crl_logged(false, "the file changed");
                })
                .await;
            }
        }
    }
}

/// Who is at the other end of a connection, once its handshake is done.
struct Peer {
    addr: SocketAddr,
    allowed: bool,
    /// The certificate chain it presented, end entity first.
    chain: Vec<CertificateDer<'static>>,
    /// The [`tls::ClientAuth::generation`] its chain was last verified under.
    verified: AtomicU64,
}

impl Peer {
    /// Verifies the chain again if the revocation lists changed since it last was.
    fn still_trusted(&self, auth: &tls::ClientAuth) -> Result<(), rustls::Error> {
        let now = auth.generation();
        if self.verified.load(Ordering::SeqCst) == now {
            return Ok(());
        }
        auth.recheck(&self.chain)?;
        self.verified.store(now, Ordering::SeqCst);
        Ok(())
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    mut ticket: Ticket,
    door: Arc<Door>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    // Read before the handshake: a reload during it makes the first request check again.
    let generation = door.client_auth.generation();
    let tls = tokio::select! {
        r = door.acceptor.accept(tcp) => match r {
            Ok(s) => s,
            Err(e) => {
                door.state.hooks.rejected("tls");
                if door.handshake_log.allow() {
                    tracing::info!(peer = %addr, error = %e, "TLS handshake refused");
                }
                return;
            }
        },
        () = ticket.evicted() => {
            tracing::debug!(peer = %addr, "TLS handshake dropped (too slow, or to make room)");
            return;
        }
        _ = shutdown.changed() => return,
    };
    if !ticket.complete() {
        return; // evicted as it finished
    }
    let Ok(_slot) = door.served.clone().try_acquire_owned() else {
        tracing::warn!(peer = %addr, "too many connections; closing this one");
        door.state.hooks.rejected("unavailable");
        return;
    };
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let names = chain.first().map(tls::client_names).unwrap_or_default();
    let allowed = tls::is_allowed(&names, &door.state.allowed_clients);
    if !allowed {
        tracing::warn!(peer = %addr, client = ?names, "client certificate is valid but not in allowed_clients");
    }
    let peer = Arc::new(Peer {
        addr,
        allowed,
        chain,
        verified: AtomicU64::new(generation),
    });
    let svc_door = door.clone();
    let service = service_fn(move |req| {
        let (door, peer) = (svc_door.clone(), peer.clone());
        async move { Ok::<_, Infallible>(api::handle(req, &door, &peer).await) }
    });
    let limits = &door.state.limits;
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        // A client that shuts its write side after the request still gets its answer.
        .half_close(true)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        }
    }
}
