//! Readiness and shutdown notices to systemd (the `sd_notify` protocol), for `Type=notify`.
//!
//! systemd puts the path of a datagram socket in `$NOTIFY_SOCKET`; a service reports its
//! state by sending newline-separated `KEY=VALUE` lines to it (`READY=1`, `STOPPING=1`,
//! `RELOADING=1`, `STATUS=...`, `WATCHDOG=1`). A path starting with `@` names a socket in
//! the abstract namespace. Outside systemd the variable is unset and every call here does
//! nothing. (Written here rather than with the `sd-notify` crate: its 0.5 connects to the
//! socket as a path only, and systemd in a container hands out `@abstract` names.)
//!
//! Invariant: `READY=1` means both listeners (ingest and status) are bound and the feed is
//! open, so `systemctl start ess` returns only when the appliance can take events; the
//! caller (`serve`) sends it after binding, never before. A failure to notify is logged,
//! never fatal: systemd then reports a start timeout, which says more than a crash would.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Tells systemd the service is up. Call once, after both listeners are bound.
pub(crate) fn ready() {
    send_logged("READY=1");
}

/// Tells systemd the service is shutting down (SIGTERM received, draining).
pub(crate) fn stopping() {
    send_logged("STOPPING=1");
}

/// Tells systemd a reload (SIGHUP) is in progress; follow it with [`ready`] when done.
/// `MONOTONIC_USEC` comes with it, as systemd 253+ requires for `Type=notify-reload` (older
/// ones ignore it).
pub(crate) fn reloading() {
    send_logged(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
}

/// CLOCK_MONOTONIC in microseconds, as systemd wants it for `MONOTONIC_USEC`.
fn monotonic_usec() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u128::try_from(t.tv_sec).unwrap_or(0) * 1_000_000
        + u128::try_from(t.tv_nsec).unwrap_or(0) / 1000
}

/// Tells systemd the service is alive (`WatchdogSec=` in the unit).
pub(crate) fn watchdog() {
    send_logged("WATCHDOG=1");
}

/// How often to send [`watchdog`]: half the interval systemd asked for in `WATCHDOG_USEC`
/// (only when `WATCHDOG_PID` is unset or names this process); `None` without a watchdog.
pub(crate) fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec / 2))
}

/// Sets the one-line status `systemctl status ess` shows.
pub(crate) fn status(text: &str) {
    // A newline would start a new KEY=VALUE assignment; keep the status on one line.
    let line = text.replace('\n', " ");
    send_logged(&format!("STATUS={line}"));
}

fn send_logged(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}

/// Sends `state` to `$NOTIFY_SOCKET`. `Ok(false)` when the variable is unset (not run by
/// systemd as `Type=notify`), `Ok(true)` when the datagram was sent.
pub(crate) fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        None => Ok(false),
        Some(path) if path.is_empty() => Ok(false),
        Some(path) => notify_to(&path, state).map(|()| true),
    }
}

/// Sends `state` as one datagram to the socket named `path` (a file path, or `@name` for
/// the abstract namespace).
pub(crate) fn notify_to(path: &OsStr, state: &str) -> io::Result<()> {
    let addr = socket_addr(path)?;
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("notify socket took {sent} of {} bytes", state.len()),
        ));
    }
    Ok(())
}

fn socket_addr(path: &OsStr) -> io::Result<SocketAddr> {
    let bytes = path.as_bytes();
    match bytes.split_first() {
        Some((b'@', name)) => abstract_addr(name),
        Some((b'/', _)) => SocketAddr::from_pathname(path),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET {path:?} is neither an absolute path nor an @abstract name"),
        )),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        assert_eq!(receive(&listener), "READY=1");
        notify_to(path.as_os_str(), "STOPPING=1").unwrap();
        assert_eq!(receive(&listener), "STOPPING=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ess-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        assert_eq!(receive(&listener), "READY=1");
    }

    #[test]
    fn a_relative_or_missing_socket_is_an_error_not_a_panic() {
        assert_eq!(
            notify_to(OsStr::new("relative.sock"), "READY=1")
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(notify_to(dir.path().join("absent.sock").as_os_str(), "READY=1").is_err());
    }
}
