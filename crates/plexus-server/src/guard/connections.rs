//! Connection counting: a cap on all connections and one per client address.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use http::StatusCode;

/// Why a connection was refused by a [`ConnectionLimiter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitRefusal {
    /// The server holds its maximum number of connections.
    #[error("too many connections")]
    Total,
    /// The client's address (or IPv6 prefix) holds its maximum number of connections.
    #[error("too many connections from this address")]
    PerIp,
}

impl LimitRefusal {
    /// The HTTP status to refuse the upgrade with: 503 (Service Unavailable) when the server
    /// is full, 429 (Too Many Requests) when the client's address is.
    pub fn http_status(&self) -> StatusCode {
        match self {
            LimitRefusal::Total => StatusCode::SERVICE_UNAVAILABLE,
            LimitRefusal::PerIp => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// What connections from one client are counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum IpKey {
    V4(u32),
    /// The address with everything after the prefix cleared.
    V6(u128),
}

struct Inner {
    max_total: usize,
    max_per_ip: usize,
    /// Connections held. Reserved before the per-address map is touched, so a full server
    /// refuses without taking the lock.
    total: AtomicUsize,
    /// Connections held per key. Keys are removed when their count drops to zero, and every
    /// count is backed by a reservation in `total`, so there are at most `max_total` entries.
    per_ip: Mutex<HashMap<IpKey, usize>>,
}

impl Inner {
    fn per_ip(&self) -> MutexGuard<'_, HashMap<IpKey, usize>> {
        // The map is consistent after every statement that can panic, so a poisoned lock
        // is still usable.
        self.per_ip.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, key: IpKey) {
        let mut map = self.per_ip();
        if let Some(count) = map.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&key);
            }
        }
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Caps the connections of a server: in total, and per client address.
///
/// [`try_acquire`](Self::try_acquire) is called once per connection attempt and returns a
/// [`ConnectionSlot`] that gives the place back when dropped; hold it for the life of the
/// connection. Both counts change under one mutex, taken once on connect and once on
/// disconnect; the total is also an atomic, so that reading it takes no lock. The map only holds addresses with open connections, so it never has more
/// than `max_total` entries.
///
/// IPv4 clients are counted per address. IPv6 clients are counted per /64 prefix by
/// default, because a /64 is what one host (one home, one VM) is normally given: counting
/// single IPv6 addresses would let one client open connections from 2^64 addresses of its
/// own. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack socket reports for
/// IPv4 clients) are counted as the IPv4 address they carry.
///
/// Cloning gives another handle to the same counts.
///
/// ```
/// use std::net::IpAddr;
/// use plexus_server::{ConnectionLimiter, LimitRefusal};
///
/// let limiter = ConnectionLimiter::new(10_000, 2);
/// let ip: IpAddr = "203.0.113.7".parse().unwrap();
/// let a = limiter.try_acquire(ip).unwrap();
/// let _b = limiter.try_acquire(ip).unwrap();
/// assert_eq!(limiter.try_acquire(ip).unwrap_err(), LimitRefusal::PerIp);
/// drop(a); // the connection ended
/// assert!(limiter.try_acquire(ip).is_ok());
/// ```
#[derive(Clone)]
pub struct ConnectionLimiter {
    inner: Arc<Inner>,
    /// Mask applied to IPv6 addresses (the top `ipv6_prefix_len` bits set).
    ipv6_mask: u128,
}

impl fmt::Debug for ConnectionLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLimiter")
            .field("max_total", &self.inner.max_total)
            .field("max_per_ip", &self.inner.max_per_ip)
            .field("ipv6_prefix_len", &self.ipv6_mask.count_ones())
            .field("total", &self.total())
            .finish()
    }
}

impl ConnectionLimiter {
    /// At most `max_total` connections, and at most `max_per_ip` from one IPv4 address or
    /// IPv6 /64 prefix. `usize::MAX` means no limit; 0 refuses every connection.
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_total,
                max_per_ip,
                total: AtomicUsize::new(0),
                per_ip: Mutex::new(HashMap::new()),
            }),
            ipv6_mask: prefix_mask(64),
        }
    }

    /// Counts IPv6 clients per `/len` prefix instead of /64 (128: per address; 48: per
    /// site). Panics if `len` is more than 128.
    pub fn ipv6_prefix_len(mut self, len: u8) -> Self {
        assert!(
            len <= 128,
            "an IPv6 prefix is at most 128 bits long, not {len}"
        );
        self.ipv6_mask = prefix_mask(len);
        self
    }

    fn key(&self, ip: IpAddr) -> IpKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey::V4(v4.to_bits()),
            IpAddr::V6(v6) => IpKey::V6(v6.to_bits() & self.ipv6_mask),
        }
    }

    /// Takes a place for a connection from `ip`, or says which limit is reached. The place is
    /// given back when the returned slot is dropped.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<ConnectionSlot, LimitRefusal> {
        let inner = &self.inner;
        let key = self.key(ip);
        // Both counts change under the map's lock, so a refusal never rests on a place that
        // another attempt took for a moment and gave back.
        let mut map = inner.per_ip();
        if inner.total.load(Ordering::Acquire) >= inner.max_total {
            return Err(LimitRefusal::Total);
        }
        if map.get(&key).copied().unwrap_or(0) >= inner.max_per_ip {
            return Err(LimitRefusal::PerIp);
        }
        inner.total.fetch_add(1, Ordering::AcqRel);
        *map.entry(key).or_insert(0) += 1;
        Ok(ConnectionSlot {
            inner: inner.clone(),
            key,
        })
    }

    /// Connections held now.
    pub fn total(&self) -> usize {
        self.inner.total.load(Ordering::Acquire)
    }

    /// Connections held now by `ip`'s address (IPv4) or prefix (IPv6).
    pub fn count(&self, ip: IpAddr) -> usize {
        let key = self.key(ip);
        self.inner.per_ip().get(&key).copied().unwrap_or(0)
    }

    /// Addresses (IPv4) and prefixes (IPv6) with connections now: the size of the map.
    pub fn addresses(&self) -> usize {
        self.inner.per_ip().len()
    }
}

fn prefix_mask(len: u8) -> u128 {
    match len {
        0 => 0,
        len => u128::MAX << (128 - u32::from(len.min(128))),
    }
}

/// A connection's place in a [`ConnectionLimiter`], given back when dropped.
#[must_use = "the place is given back as soon as the slot is dropped"]
pub struct ConnectionSlot {
    inner: Arc<Inner>,
    key: IpKey,
}

impl fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSlot")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.inner.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Barrier;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn slots_are_send_static_and_limiter_is_shareable() {
        fn send_static<T: Send + 'static>() {}
        fn send_sync<T: Send + Sync + 'static>() {}
        send_static::<ConnectionSlot>();
        send_sync::<ConnectionSlot>();
        send_sync::<ConnectionLimiter>();
    }

    #[test]
    fn refusals_have_their_status() {
        assert_eq!(LimitRefusal::Total.http_status(), 503);
        assert_eq!(LimitRefusal::PerIp.http_status(), 429);
    }

    #[test]
    fn total_limit_refuses_then_frees_on_drop() {
        let limiter = ConnectionLimiter::new(2, 10);
        let a = limiter.try_acquire(ip("10.0.0.1")).unwrap();
        let _b = limiter.try_acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(
            limiter.try_acquire(ip("10.0.0.3")).unwrap_err(),
            LimitRefusal::Total
        );
        assert_eq!(limiter.total(), 2);
        drop(a);
        assert_eq!(limiter.total(), 1);
        assert_eq!(limiter.count(ip("10.0.0.1")), 0);
        let _c = limiter.try_acquire(ip("10.0.0.3")).unwrap();
    }

    #[test]
    fn per_ip_refusal_gives_back_the_total() {
        let limiter = ConnectionLimiter::new(3, 1);
        let _a = limiter.try_acquire(ip("10.0.0.1")).unwrap();
        for _ in 0..5 {
            assert_eq!(
                limiter.try_acquire(ip("10.0.0.1")).unwrap_err(),
                LimitRefusal::PerIp
            );
        }
        assert_eq!(limiter.total(), 1);
        let _b = limiter.try_acquire(ip("10.0.0.2")).unwrap();
        let _c = limiter.try_acquire(ip("10.0.0.3")).unwrap();
    }

    #[test]
    fn the_map_holds_only_addresses_with_connections() {
        let limiter = ConnectionLimiter::new(100, 5);
        let slots: Vec<_> = (0..50u32)
            .map(|i| {
                limiter
                    .try_acquire(IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + i)))
                    .unwrap()
            })
            .collect();
        assert_eq!(limiter.addresses(), 50);
        drop(slots);
        assert_eq!(limiter.addresses(), 0);
        assert_eq!(limiter.total(), 0);
        // Refused attempts leave nothing behind either.
        let zero = ConnectionLimiter::new(100, 0);
        assert_eq!(
            zero.try_acquire(ip("10.0.0.1")).unwrap_err(),
            LimitRefusal::PerIp
        );
        assert_eq!(zero.addresses(), 0);
        assert_eq!(zero.total(), 0);
    }

    #[test]
    fn ipv6_counts_per_64_by_default() {
        let limiter = ConnectionLimiter::new(100, 2);
        let _a = limiter.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        let _b = limiter
            .try_acquire(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
            .unwrap();
        assert_eq!(
            limiter.try_acquire(ip("2001:db8:1:2:abcd::9")).unwrap_err(),
            LimitRefusal::PerIp
        );
        // The next /64 is another client.
        let _c = limiter.try_acquire(ip("2001:db8:1:3::1")).unwrap();
        assert_eq!(limiter.count(ip("2001:db8:1:2::42")), 2);
        assert_eq!(limiter.addresses(), 2);
    }

    #[test]
    fn ipv6_prefix_is_configurable() {
        let per_address = ConnectionLimiter::new(100, 1).ipv6_prefix_len(128);
        let _a = per_address.try_acquire(ip("2001:db8::1")).unwrap();
        let _b = per_address.try_acquire(ip("2001:db8::2")).unwrap();
        let per_48 = ConnectionLimiter::new(100, 1).ipv6_prefix_len(48);
        let _c = per_48.try_acquire(ip("2001:db8:1:1::1")).unwrap();
        assert!(per_48.try_acquire(ip("2001:db8:1:2::1")).is_err());
        let everyone = ConnectionLimiter::new(100, 1).ipv6_prefix_len(0);
        let _d = everyone.try_acquire(ip("2001:db8::1")).unwrap();
        assert!(everyone.try_acquire(ip("fe80::1")).is_err());
        // IPv4 is still per address.
        let _e = everyone.try_acquire(ip("10.0.0.1")).unwrap();
    }

    #[test]
    #[should_panic(expected = "at most 128 bits")]
    fn an_impossible_prefix_panics() {
        let _ = ConnectionLimiter::new(1, 1).ipv6_prefix_len(129);
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        let limiter = ConnectionLimiter::new(100, 1);
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        let _a = limiter.try_acquire(mapped).unwrap();
        assert_eq!(
            limiter.try_acquire(ip("192.0.2.1")).unwrap_err(),
            LimitRefusal::PerIp
        );
        // Another IPv4 address in the same "::ffff:0:0/64" is another client.
        let _b = limiter
            .try_acquire(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 2).to_ipv6_mapped()))
            .unwrap();
        assert_eq!(limiter.count(ip("192.0.2.1")), 1);
        assert_eq!(limiter.count(IpAddr::V6(Ipv6Addr::LOCALHOST)), 0);
    }

    #[test]
    fn concurrent_acquire_and_release_never_exceed_the_limits() {
        const THREADS: usize = 16;
        const ROUNDS: usize = 2_000;
        const MAX_TOTAL: usize = 12;
        const MAX_PER_IP: usize = 3;
        let limiter = ConnectionLimiter::new(MAX_TOTAL, MAX_PER_IP);
        // Each slot held bumps these; a check after each acquire sees every holder.
        let held_total = Arc::new(AtomicUsize::new(0));
        let held_per_ip: Arc<Vec<AtomicUsize>> =
            Arc::new((0..4).map(|_| AtomicUsize::new(0)).collect());
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let limiter = limiter.clone();
                let held_total = held_total.clone();
                let held_per_ip = held_per_ip.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let (mut granted, mut refused) = (0, 0);
                    for round in 0..ROUNDS {
                        let which = (t + round) % 4;
                        // Two IPv4 clients and two IPv6 /64s (different hosts inside each).
                        let addr = match which {
                            0 => ip("198.51.100.1"),
                            1 => IpAddr::V6(Ipv4Addr::new(198, 51, 100, 2).to_ipv6_mapped()),
                            2 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, t as u16)),
                            _ => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, t as u16, 0, 0, 1)),
                        };
                        match limiter.try_acquire(addr) {
                            Ok(slot) => {
                                granted += 1;
                                let total = held_total.fetch_add(1, Ordering::SeqCst) + 1;
                                let mine = held_per_ip[which].fetch_add(1, Ordering::SeqCst) + 1;
                                assert!(total <= MAX_TOTAL, "total {total} over {MAX_TOTAL}");
                                assert!(mine <= MAX_PER_IP, "per ip {mine} over {MAX_PER_IP}");
                                assert!(limiter.total() <= MAX_TOTAL);
                                if round % 3 == 0 {
                                    std::thread::yield_now();
                                }
                                held_per_ip[which].fetch_sub(1, Ordering::SeqCst);
                                held_total.fetch_sub(1, Ordering::SeqCst);
                                drop(slot);
                            }
                            Err(_) => refused += 1,
                        }
                    }
                    (granted, refused)
                })
            })
            .collect();
        let mut granted = 0;
        for handle in handles {
            let (g, r) = handle.join().unwrap();
            assert_eq!(g + r, ROUNDS);
            granted += g;
        }
        assert!(granted > 0);
        assert_eq!(limiter.total(), 0);
        assert_eq!(limiter.addresses(), 0);
    }

    #[test]
    fn concurrent_holders_fill_exactly_to_the_limit() {
        // Many threads each try to hold as many slots as they can from one address: exactly
        // max_per_ip succeed in all, and exactly max_total over several addresses.
        let limiter = ConnectionLimiter::new(10, 4);
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8u32)
            .map(|t| {
                let limiter = limiter.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let addr = IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + t % 4));
                    (0..10)
                        .filter_map(|_| limiter.try_acquire(addr).ok())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let slots: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(slots.len(), 10);
        assert_eq!(limiter.total(), 10);
        for i in 0..4 {
            assert!(limiter.count(IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + i))) <= 4);
        }
        drop(slots);
        assert_eq!(limiter.total(), 0);
        assert_eq!(limiter.addresses(), 0);
    }
}
