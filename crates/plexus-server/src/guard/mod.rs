//! Guards of the server's doors: connection limits, the `Origin` check, and per-connection
//! rate limits. (Strict mode, which needs the router and the namespaces, is the endpoint's.)

mod connections;
mod origin;
mod rate;

pub use connections::{ConnectionLimiter, ConnectionSlot, LimitRefusal};
pub use origin::{AllowedOrigin, InvalidOrigin, OriginPolicy};
pub use rate::{CallRateLimiter, InvalidRateLimit, RateLimit};
