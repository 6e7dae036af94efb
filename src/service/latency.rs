//! How long a server takes to establish sessions and to write what devices send, reported to
//! whoever watches (the command line's metrics). Durations only: no device, no address.

use std::time::Duration;

/// Receives a server's timings. Called from session tasks and from the intake after every
/// batch, so each call must be cheap and must not block.
pub trait Latency: Send + Sync + std::fmt::Debug {
    /// A session was established `took` after its connection's first frame arrived:
    /// `resumed` with a ticket, else by a full handshake.
    fn handshake(&self, resumed: bool, took: Duration);
    /// A message was written to the sink and acknowledged `took` after it reached the
    /// intake.
    fn written(&self, took: Duration);
}
