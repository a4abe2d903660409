//! Guards of the server's doors: connection limits, the `Origin` check, per-connection
//! rate limits, and the strict-mode check that every method and channel namespace says who
//! may use it.

mod connections;
mod origin;
mod rate;
mod strict;

pub use connections::{ConnectionLimiter, ConnectionSlot, LimitRefusal};
pub use origin::{AllowedOrigin, InvalidOrigin, OriginPolicy};
pub use rate::{CallRateLimiter, InvalidRateLimit, RateLimit};
pub use strict::{StrictModeError, check_strict};
