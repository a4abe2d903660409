//! Per-connection rate limits: a token bucket (GCRA) per connection and kind of frame.

use std::fmt;
use std::num::NonZeroU32;

use governor::clock::DefaultClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

/// A rate: `per_second` on average, with bursts of up to `burst` at once. Both are at least
/// 1, which [`RateLimit::new`] and deserialization check.
///
/// From configuration: `{ per_second = 50, burst = 100 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRateLimit", into = "RawRateLimit")]
pub struct RateLimit {
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_second: u32,
    burst: u32,
}

impl TryFrom<RawRateLimit> for RateLimit {
    type Error = InvalidRateLimit;

    fn try_from(raw: RawRateLimit) -> Result<Self, Self::Error> {
        RateLimit::new(raw.per_second, raw.burst)
    }
}

impl From<RateLimit> for RawRateLimit {
    fn from(limit: RateLimit) -> Self {
        RawRateLimit {
            per_second: limit.per_second(),
            burst: limit.burst(),
        }
    }
}

impl RateLimit {
    /// `per_second` on average, bursts of up to `burst`. Both must be at least 1.
    pub fn new(per_second: u32, burst: u32) -> Result<Self, InvalidRateLimit> {
        match (NonZeroU32::new(per_second), NonZeroU32::new(burst)) {
            (Some(per_second), Some(burst)) => Ok(Self { per_second, burst }),
            (None, _) => Err(InvalidRateLimit("per_second")),
            (_, None) => Err(InvalidRateLimit("burst")),
        }
    }

    /// The average rate per second.
    pub fn per_second(&self) -> u32 {
        self.per_second.get()
    }

    /// The most allowed at once.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }
}

/// A [`RateLimit`] with a zero field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` must be at least 1")]
pub struct InvalidRateLimit(&'static str);

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock, NoOpMiddleware>;

/// The limiter of one connection for one kind of frame (a connection has two: calls —
/// requests, notifications and streams — and publications).
///
/// A GCRA token bucket (governor's direct limiter): [`check`](Self::check) takes one
/// token, never waits, and is a compare-and-swap on an atomic (about 30 ns with the clock
/// read). 40 bytes inline and no heap allocation.
///
/// governor is built without its default `quanta` feature, so its clock is
/// `std::time::Instant` (zero-sized; `Instant::now` is a vDSO call) rather than a
/// `quanta::Clock`, which is copied into every limiter (72 bytes a limiter instead of 40),
/// costs about 17 µs per limiter to create (600 µs for the first, which calibrates the
/// TSC), and reads a TSC that is not reliable on every VM. Neither clock follows tokio's
/// paused test clock: tests of rate limiting need real time.
pub struct CallRateLimiter {
    limiter: Direct,
}

impl CallRateLimiter {
    /// A full bucket for `limit`.
    pub fn new(limit: RateLimit) -> Self {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Self {
            limiter: RateLimiter::direct(quota),
        }
    }

    /// Takes one token: `true` if the frame may proceed, `false` if it is over the rate.
    pub fn check(&self) -> bool {
        self.limiter.check().is_ok()
    }
}

impl fmt::Debug for CallRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallRateLimiter").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn zero_is_refused() {
        assert_eq!(
            RateLimit::new(0, 5).unwrap_err().to_string(),
            "`per_second` must be at least 1"
        );
        assert_eq!(
            RateLimit::new(5, 0).unwrap_err().to_string(),
            "`burst` must be at least 1"
        );
        let limit = RateLimit::new(5, 10).unwrap();
        assert_eq!((limit.per_second(), limit.burst()), (5, 10));
    }

    #[test]
    fn deserializes_and_validates() {
        let limit: RateLimit = serde_json::from_str(r#"{"per_second":20,"burst":40}"#).unwrap();
        assert_eq!(limit, RateLimit::new(20, 40).unwrap());
        assert_eq!(
            serde_json::to_string(&limit).unwrap(),
            r#"{"per_second":20,"burst":40}"#
        );
        let err = serde_json::from_str::<RateLimit>(r#"{"per_second":0,"burst":40}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`per_second` must be at least 1"), "{err}");
        assert!(serde_json::from_str::<RateLimit>(r#"{"per_second":1}"#).is_err());
        assert!(serde_json::from_str::<RateLimit>(r#"{"per_second":1,"burst":1,"x":1}"#).is_err());
        assert!(serde_json::from_str::<RateLimit>(r#"{"per_second":-1,"burst":1}"#).is_err());
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        // One token a second: nothing refills during the test.
        let limiter = CallRateLimiter::new(RateLimit::new(1, 5).unwrap());
        assert!((0..5).all(|_| limiter.check()));
        assert!(!limiter.check());
        assert!(!limiter.check());
    }

    #[test]
    fn tokens_come_back_over_time() {
        // 10 a second: a token every 100 ms.
        let limiter = CallRateLimiter::new(RateLimit::new(10, 2).unwrap());
        assert!(limiter.check() && limiter.check());
        assert!(!limiter.check());
        std::thread::sleep(Duration::from_millis(250));
        assert!(limiter.check());
        assert!(limiter.check());
    }

    #[test]
    fn the_limiter_is_small_and_allocation_free() {
        // The per-connection cost: twice this (calls and publications), no heap. The
        // governor state is an AtomicU64, its GCRA two u64s, the clock's start an Instant.
        let size = std::mem::size_of::<CallRateLimiter>();
        assert!(size <= 40, "CallRateLimiter is {size} bytes");
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<CallRateLimiter>();
    }
}
