//! Listeners other hosts can reach without authentication.
//!
//! The Kafka listener authenticates its clients only with
//! `security.security_protocol = "SASL_PLAINTEXT"`; otherwise whoever
//! reaches the port can produce, consume and delete topics. The metrics
//! listener never does: whoever reaches it reads topic and group names
//! from the labels. At start `sluice serve` warns, one line per
//! listener naming its key and the risk, when it is bound to anything but a
//! loopback address: the unspecified address (`0.0.0.0`, `::`) listens on
//! every interface, and any other address is reachable from its network.

use std::net::SocketAddr;

use crate::config::{AuthorizerKind, ClientAuth, SecurityConfig, SecurityProtocol};

/// Whether a listener bound to `address` accepts connections from other
/// hosts: anything but a loopback address (IPv4-mapped ones included).
pub fn reachable_from_other_hosts(address: SocketAddr) -> bool {
    !address.ip().to_canonical().is_loopback()
}

/// Log the warning for the Kafka listener `key` (`kafka.listen`, or
/// `security.listeners` with its name) bound to `address` with `protocol`,
/// if exposed: without authentication, anyone can do anything (or what the
/// ACLs give `User:ANONYMOUS`); with SASL over plain TCP, records travel
/// unencrypted.
pub fn warn_kafka(
    key: &str,
    address: SocketAddr,
    protocol: SecurityProtocol,
    security: &SecurityConfig,
) {
    if !reachable_from_other_hosts(address) {
        return;
    }
    match protocol {
        SecurityProtocol::SaslSsl => {}
        SecurityProtocol::Ssl if security.tls.client_auth == ClientAuth::Required => {}
        SecurityProtocol::Ssl => tracing::warn!(
            listen = %address,
            "{key} is not a loopback address and its security_protocol is SSL without required \
             client certificates: records are encrypted, but clients that send no certificate \
             are User:ANONYMOUS. Set security.tls.client_auth = \"required\", or use SASL_SSL"
        ),
        SecurityProtocol::SaslPlaintext => tracing::warn!(
            listen = %address,
            "{key} is not a loopback address and its security_protocol is SASL_PLAINTEXT: \
             clients authenticate, but records and PLAIN passwords travel unencrypted. Use \
             SASL_SSL ([security.tls]), or keep it on a private network"
        ),
        SecurityProtocol::Plaintext if security.authorizer == AuthorizerKind::Acl => {
            tracing::warn!(
                listen = %address,
                "{key} is not a loopback address and its clients do not authenticate: any host \
                 that reaches it is User:ANONYMOUS, allowed what the ACLs give User:ANONYMOUS \
                 or User:*, and its records travel unencrypted. Set its security_protocol to \
                 \"SASL_SSL\" or \"SASL_PLAINTEXT\", or bind it to a private interface"
            );
        }
        SecurityProtocol::Plaintext => {
            tracing::warn!(
                listen = %address,
                "{key} is not a loopback address and its clients do not authenticate: any host \
                 that reaches it can produce, consume, and create or delete topics. Set its \
                 security_protocol to \"SASL_PLAINTEXT\" (with security.sasl_bootstrap_user) or \
                 bind it to a private interface behind a firewall that admits only your clients"
            );
        }
    }
}

/// Log the warning for the cluster listener bound to `address`, if
/// exposed (a cluster across hosts needs it to be; it must still be
/// private).
pub fn warn_cluster(address: SocketAddr) {
    if reachable_from_other_hosts(address) {
        tracing::warn!(
            cluster.listen = %address,
            "cluster.listen is not a loopback address and the cluster's internal RPC has no \
             authentication yet: a host that reaches it and names a configured node id can take \
             part in elections and write to the metadata. Keep it on a private network that \
             only the cluster's nodes reach"
        );
    }
}

/// Log the warning for the metrics listener bound to `address`, if exposed.
pub fn warn_metrics(address: SocketAddr) {
    if reachable_from_other_hosts(address) {
        tracing::warn!(
            metrics.listen = %address,
            "metrics.listen is not a loopback address and has no authentication: any host that \
             reaches it can read topic and consumer-group names and load the broker with \
             scrapes. Bind it to a management interface that only Prometheus and the \
             orchestrator reach"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_loopback_addresses_are_private_to_this_host() {
        for private in [
            "127.0.0.1:9092",
            "127.1.2.3:0",
            "[::1]:9644",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(!reachable_from_other_hosts(address(private)), "{private}");
        }
        for exposed in [
            "0.0.0.0:9092",
            "[::]:9092",
            "10.0.0.5:9092",
            "[fd00::5]:9644",
        ] {
            assert!(reachable_from_other_hosts(address(exposed)), "{exposed}");
        }
    }
}
