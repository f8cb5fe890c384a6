//! The log line of a refused SASL authentication: at most 20 per 10 s per
//! process, since anyone who reaches the port can cause one per connection.

use std::net::SocketAddr;
use std::time::Duration;

use crate::log_throttle::{LogThrottle, monotonic_ms};

static REFUSED: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 20);

/// Log a refused authentication from `peer` with `mechanism`, saying why
/// (the client is told only that it failed). `refused` in the line counts
/// refusals since the previous line.
pub fn refused(peer: SocketAddr, mechanism: &str, reason: &str) {
    if let Some(refused) = REFUSED.record(monotonic_ms()) {
        tracing::warn!(
            %peer,
            mechanism,
            reason,
            refused,
            "refused a SASL authentication and closed the connection (`refused` counts refusals since the last such line; sluice_kafka_sasl_authentications_total has them by mechanism)"
        );
    }
}
