//! The waiting room of the ingest: connections that have not finished the TLS handshake,
//! that is, whose peer has not yet shown a certificate we trust.
//!
//! They get a budget of their own ([`HandshakeLimits::max`]), far below the connections
//! served after the handshake, so that any number of silent or slow sockets can only ever
//! crowd each other out:
//!
//! - a new connection is always let in; when its source (an IPv4 address, an IPv6 /64,
//!   which is what one IPv6 host is usually given) already holds
//!   [`HandshakeLimits::per_address`] handshakes, that address's oldest one is dropped;
//!   when the room is full, the oldest handshake of the address holding the most is
//!   dropped (a client that connects from an address of its own is the last to go);
//! - a handshake may take [`HandshakeLimits::timeout`] while the room is at most half
//!   full, and less and less as it fills, down to [`HandshakeLimits::min_timeout`] when
//!   it is full ([`Handshakes::expire`] drops the ones over their time).
//!
//! Invariant: every connection in the room holds a [`Ticket`]; a ticket leaves the room
//! exactly once: completed ([`Ticket::complete`] returns true), dropped, or evicted (its
//! [`Ticket::evicted`] fires and `complete` returns false).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Sizes and times of the waiting room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Connections in the TLS handshake at once, over all addresses.
    pub max: usize,
    /// Connections in the TLS handshake at once from one source: an IPv4 address or an
    /// IPv6 /64.
    pub per_address: usize,
    /// Longest a handshake may take while the room is at most half full.
    pub timeout: Duration,
    /// Longest a handshake may take when the room is full.
    pub min_timeout: Duration,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            max: 512,
            per_address: 64,
            timeout: Duration::from_secs(5),
            min_timeout: Duration::from_secs(2),
        }
    }
}

impl HandshakeLimits {
    /// The time a handshake may take while `n` are under way: `timeout` up to half the
    /// room, then falling linearly to `min_timeout` at a full room.
    pub fn timeout_at(&self, n: usize) -> Duration {
        let half = self.max / 2;
        if n <= half || self.max <= half {
            return self.timeout;
        }
        let over = (n - half).min(self.max - half) as f64 / (self.max - half) as f64;
        let span = self.timeout.saturating_sub(self.min_timeout).as_secs_f64();
        self.timeout
            .saturating_sub(Duration::from_secs_f64(span * over))
            .max(self.min_timeout)
    }
}

/// What per-address limits count by: an IPv4 address (also when it comes mapped into
/// IPv6), or the /64 of an IPv6 one.
fn source(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

struct Entry {
    addr: IpAddr,
    started: Instant,
    /// Dropping it tells the connection it was evicted.
    _evict: oneshot::Sender<()>,
}

#[derive(Default)]
struct Room {
    next_id: u64,
    /// By id, which is by age: the first is the oldest.
    entries: BTreeMap<u64, Entry>,
    by_addr: HashMap<IpAddr, BTreeSet<u64>>,
}

impl Room {
    fn remove(&mut self, id: u64) -> bool {
        let Some(entry) = self.entries.remove(&id) else {
            return false;
        };
        if let Some(ids) = self.by_addr.get_mut(&entry.addr) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_addr.remove(&entry.addr);
            }
        }
        true
    }

    /// The oldest handshake of the address holding the most (ties: the oldest overall).
    fn victim(&self) -> Option<u64> {
        self.by_addr
            .values()
            .filter_map(|ids| Some((ids.len(), *ids.first()?)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, id)| id)
    }
}

/// The connections in the TLS handshake (module doc).
pub struct Handshakes {
    limits: HandshakeLimits,
    room: Mutex<Room>,
}

/// What [`Handshakes::admit`] did to make room.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Handshakes dropped because the address was at its limit.
    pub evicted_same_address: usize,
    /// Handshakes dropped because the room was full.
    pub evicted_full: usize,
}

impl Handshakes {
    pub fn new(limits: HandshakeLimits) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            limits,
            room: Mutex::new(Room::default()),
        })
    }

    pub fn limits(&self) -> HandshakeLimits {
        self.limits
    }

    fn room(&self) -> std::sync::MutexGuard<'_, Room> {
        // The room's data stays consistent at every await-free step, so a panic elsewhere
        // while holding the lock leaves nothing half-done: take it over.
        self.room.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handshakes under way.
    pub fn len(&self) -> usize {
        self.room().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lets a new connection from `addr` in, dropping others first if its source or the
    /// room is at its limit.
    pub fn admit(self: &Arc<Self>, addr: IpAddr, now: Instant) -> (Ticket, Admission) {
        let addr = source(addr);
        let mut room = self.room();
        let mut done = Admission::default();
        let per_address = self.limits.per_address.max(1);
        while room
            .by_addr
            .get(&addr)
            .is_some_and(|ids| ids.len() >= per_address)
        {
            let oldest = room.by_addr.get(&addr).and_then(|ids| ids.first().copied());
            match oldest {
                Some(id) if room.remove(id) => done.evicted_same_address += 1,
                _ => break,
            }
        }
        while room.entries.len() >= self.limits.max.max(1) {
            match room.victim() {
                Some(id) if room.remove(id) => done.evicted_full += 1,
                _ => break,
            }
        }
        let id = room.next_id;
        room.next_id += 1;
        let (tx, rx) = oneshot::channel();
        room.entries.insert(
            id,
            Entry {
                addr,
                started: now,
                _evict: tx,
            },
        );
        room.by_addr.entry(addr).or_default().insert(id);
        let ticket = Ticket {
            room: self.clone(),
            id,
            evicted: Some(rx),
        };
        (ticket, done)
    }

    /// Drops every handshake that has taken longer than the room's fill allows now;
    /// returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut room = self.room();
        let mut n = 0;
        while let Some((&id, entry)) = room.entries.first_key_value() {
            let allowed = self.limits.timeout_at(room.entries.len());
            if now.saturating_duration_since(entry.started) < allowed {
                break;
            }
            room.remove(id);
            n += 1;
        }
        n
    }

    /// Drops the handshake [`Handshakes::admit`] would drop first to make room (to free a
    /// file descriptor when accept fails for want of one); false if the room is empty.
    pub fn evict_one(&self) -> bool {
        let mut room = self.room();
        match room.victim() {
            Some(id) => room.remove(id),
            None => false,
        }
    }
}

/// A connection's place in the waiting room.
pub struct Ticket {
    room: Arc<Handshakes>,
    id: u64,
    evicted: Option<oneshot::Receiver<()>>,
}

impl Ticket {
    /// Resolves when the connection has been evicted (room full, address at its limit,
    /// time over).
    pub async fn evicted(&mut self) {
        if let Some(rx) = self.evicted.as_mut() {
            // Only the sender's drop ends it (nothing is ever sent): either way, evicted.
            let _ = rx.await;
        }
        self.evicted = None;
    }

    /// Leaves the room after a finished handshake: true if the connection was still in
    /// it, false if it had been evicted meanwhile (then it must be closed).
    pub fn complete(self) -> bool {
        self.room.room().remove(self.id)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.room.room().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_address: usize) -> HandshakeLimits {
        HandshakeLimits {
            max,
            per_address,
            timeout: Duration::from_secs(10),
            min_timeout: Duration::from_secs(2),
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn is_evicted(t: &mut Ticket) -> bool {
        t.evicted
            .as_mut()
            .is_some_and(|rx| !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)))
    }

    #[test]
    fn an_address_at_its_limit_loses_its_own_oldest() {
        let room = Handshakes::new(limits(100, 3));
        let now = Instant::now();
        let mut a: Vec<Ticket> = (0..3).map(|_| room.admit(ip(2), now).0).collect();
        let mut other = room.admit(ip(3), now).0;
        let (mut newest, done) = room.admit(ip(2), now);
        assert_eq!(done.evicted_same_address, 1);
        assert!(is_evicted(&mut a[0]));
        assert!(!is_evicted(&mut a[1]) && !is_evicted(&mut newest) && !is_evicted(&mut other));
        assert_eq!(room.len(), 4);
        assert!(
            !a.remove(0).complete(),
            "an evicted ticket does not complete"
        );
        assert!(newest.complete());
        assert_eq!(room.len(), 3);
    }

    #[test]
    fn a_full_room_drops_the_oldest_of_the_busiest_address() {
        let room = Handshakes::new(limits(6, 10));
        let now = Instant::now();
        let mut lone = room.admit(ip(1), now).0; // the oldest of all, alone on its address
        let mut flood: Vec<Ticket> = (0..5).map(|_| room.admit(ip(9), now).0).collect();
        let (mut late, done) = room.admit(ip(1), now);
        assert_eq!(done.evicted_full, 1);
        assert!(is_evicted(&mut flood[0]), "the flood's oldest goes");
        assert!(!is_evicted(&mut lone) && !is_evicted(&mut late));
        assert_eq!(room.len(), 6);
        // Equal counts: the oldest overall goes.
        let room = Handshakes::new(limits(2, 10));
        let mut first = room.admit(ip(1), now).0;
        let mut second = room.admit(ip(2), now).0;
        let _third = room.admit(ip(3), now).0;
        assert!(is_evicted(&mut first) && !is_evicted(&mut second));
    }

    #[test]
    fn handshakes_time_out_sooner_as_the_room_fills() {
        let l = limits(100, 100);
        assert_eq!(l.timeout_at(0), Duration::from_secs(10));
        assert_eq!(l.timeout_at(50), Duration::from_secs(10));
        assert_eq!(l.timeout_at(75), Duration::from_secs(6));
        assert_eq!(l.timeout_at(100), Duration::from_secs(2));
        assert_eq!(l.timeout_at(1000), Duration::from_secs(2));
        let room = Handshakes::new(l);
        let t0 = Instant::now();
        let tickets: Vec<Ticket> = (0..100u8).map(|i| room.admit(ip(i), t0).0).collect();
        assert_eq!(room.expire(t0 + Duration::from_secs(1)), 0);
        // Full, 2 s are allowed, but each expiry empties the room a little and gives the
        // others more time: at 3 s, handshakes go until 93 are left (10 s - 8 s * 43/50).
        assert_eq!(room.expire(t0 + Duration::from_secs(3)), 7);
        assert!(l.timeout_at(room.len()) > Duration::from_secs(3));
        assert_eq!(room.expire(t0 + Duration::from_secs(11)), 93);
        assert!(room.is_empty());
        drop(tickets);
    }

    #[test]
    fn an_ipv6_64_is_one_source_and_a_mapped_ipv4_is_its_address() {
        let room = Handshakes::new(limits(100, 2));
        let now = Instant::now();
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        let mut a = room.admit(v6("2001:db8::1"), now).0;
        let _b = room.admit(v6("2001:db8::ffff:2"), now).0;
        let (_c, done) = room.admit(v6("2001:db8:0:0:1234::3"), now);
        assert_eq!(done.evicted_same_address, 1, "one /64, one source");
        assert!(is_evicted(&mut a));
        let (_d, done) = room.admit(v6("2001:db8:0:1::1"), now);
        assert_eq!(done, Admission::default(), "another /64");
        let mut v4 = room.admit(ip(7), now).0;
        let _e = room.admit(v6("::ffff:127.0.0.7"), now).0;
        let (_f, done) = room.admit(ip(7), now);
        assert_eq!(done.evicted_same_address, 1);
        assert!(is_evicted(&mut v4));
    }

    #[test]
    fn a_dropped_ticket_leaves_and_evict_one_frees_a_place() {
        let room = Handshakes::new(limits(10, 10));
        let now = Instant::now();
        let t = room.admit(ip(1), now).0;
        let mut u = room.admit(ip(2), now).0;
        drop(t);
        assert_eq!(room.len(), 1);
        assert!(room.evict_one());
        assert!(is_evicted(&mut u));
        assert!(!room.evict_one());
    }
}
