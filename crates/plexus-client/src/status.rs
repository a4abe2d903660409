//! [`Status`]: the state of a client's connection.

/// The state of the client's connection, as seen through [`Client::status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Opening the first session.
    Connecting,
    /// A session is open: calls go out at once.
    Connected,
    /// The session dropped; reconnecting with backoff. Notifications and retryable calls
    /// wait in the offline queue. Set the moment the session drops, so a session that ends
    /// for good passes through it on its way to `Closed`.
    Reconnecting,
    /// Done: closed by [`Client::close`], by a close code that forbids reconnecting
    /// (1008, 4000, 4003), by a fatal connection error (HTTP 403, `reject` `FORBIDDEN`), or
    /// after `max_attempts` failed attempts; [`Client::close_reason`] says which. Final.
    Closed,
}
