//! Why a request ends its connection.
//!
//! A request whose frame, header or body cannot be trusted leaves the rest of
//! the stream untrustworthy too, so the connection closes after the answers
//! to the requests before it (`connection::write_responses` logs the whole
//! [`crate::error_chain::error_chain`] and counts the close). Every variant
//! names the API and version; a decoder or encoder failure keeps
//! kafka-protocol's error as its source. Errors a client can act on (unknown
//! topic, bad offset) are not here: they are error codes in a response.

use kafka_protocol::messages::ApiKey;
use thiserror::Error;

use super::versions;

/// Why a request closes its connection instead of getting a response.
#[derive(Debug, Error)]
pub enum RequestError {
    /// The frame cannot hold the fixed part of a request header (api key,
    /// version, correlation id).
    #[error("request of {len} bytes is shorter than a request header")]
    ShorterThanHeader { len: usize },
    #[error("unknown API key {key}")]
    UnknownApiKey { key: i16 },
    /// A version outside `versions::SUPPORTED` (ApiVersions excepted: it
    /// answers UNSUPPORTED_VERSION instead, KIP-511).
    #[error("{key:?} v{version} is not supported ({})", supported_range(*.key))]
    UnsupportedVersion { key: ApiKey, version: i16 },
    /// A key kafka-protocol knows and `versions::SUPPORTED` lists but no
    /// handler serves (a bug: the two lists disagree).
    #[error("{key:?} is not implemented")]
    NotImplemented { key: ApiKey },
    #[error("malformed {key:?} v{version} request header: {source}")]
    MalformedHeader {
        key: ApiKey,
        version: i16,
        #[source]
        source: anyhow::Error,
    },
    #[error("malformed {key:?} v{version} request: {source}")]
    MalformedBody {
        key: ApiKey,
        version: i16,
        #[source]
        source: anyhow::Error,
    },
    /// A request listing more partitions than any real client sends in one
    /// (its answer would cost the broker many times the request's size).
    #[error("{key:?} names {count} partitions, more than {limit} in one request")]
    TooManyPartitions {
        key: ApiKey,
        count: usize,
        limit: usize,
    },
    /// A request other than ApiVersions, SaslHandshake and SaslAuthenticate
    /// before a SASL listener's client authenticated (Kafka closes the
    /// connection too).
    #[error(
        "{key:?} before SASL authentication: this listener needs SaslHandshake and SaslAuthenticate first (security.security_protocol)"
    )]
    Unauthenticated { key: ApiKey },
    /// An acks=0 Produce failed on some partition: no answer can say so,
    /// so the connection closes, as Kafka closes it.
    #[error(
        "an acks=0 Produce failed ({error} on {partition}); the connection closes so that the \
         client notices, as Kafka does"
    )]
    AcksZeroProduceFailed { partition: String, error: String },
    /// The response does not fit its own version (a field this version
    /// cannot carry was set): a bug in the handler, not in the client.
    #[error("cannot encode the {key:?} v{version} response: {source}")]
    Encode {
        key: ApiKey,
        version: i16,
        #[source]
        source: anyhow::Error,
    },
}

impl RequestError {
    /// The `reason` label of `sluice_kafka_connections_closed_bad_input_total`.
    pub fn close_reason(&self) -> &'static str {
        match self {
            RequestError::AcksZeroProduceFailed { .. } => "acks0_produce_failed",
            _ => "bad_request",
        }
    }

    /// Whether the client caused this (a request this broker cannot read
    /// or does not speak), rather than a bug in the broker.
    pub fn is_client_fault(&self) -> bool {
        !matches!(
            self,
            RequestError::NotImplemented { .. } | RequestError::Encode { .. }
        )
    }
}

/// The versions of `key` this broker speaks, for the close log line.
fn supported_range(key: ApiKey) -> String {
    versions::supported(key).map_or("not implemented".to_owned(), |entry| {
        format!("supported: {}..={}", entry.min, entry.max)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_chain::error_chain;

    #[test]
    fn a_malformed_body_names_the_api_and_keeps_the_decoder_error_as_source() {
        let decoder = anyhow::anyhow!("tried to read 4 bytes but only 0 bytes remaining");
        let error = RequestError::MalformedBody {
            key: ApiKey::Metadata,
            version: 1,
            source: decoder,
        };
        let source = std::error::Error::source(&error).expect("a source");
        assert_eq!(
            source.to_string(),
            "tried to read 4 bytes but only 0 bytes remaining"
        );
        assert_eq!(
            error_chain(&error),
            "malformed Metadata v1 request: tried to read 4 bytes but only 0 bytes remaining"
        );
    }

    #[test]
    fn an_unsupported_version_says_which_versions_are() {
        let error = RequestError::UnsupportedVersion {
            key: ApiKey::Produce,
            version: 1,
        };
        assert_eq!(
            error.to_string(),
            "Produce v1 is not supported (supported: 3..=13)"
        );
    }
}
