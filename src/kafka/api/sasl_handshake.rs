//! SaslHandshake (KIP-43, v1 per KIP-152): the client names a SASL
//! mechanism; SaslAuthenticate requests carry the exchange next.
//!
//! On a listener without SASL the broker answers ILLEGAL_SASL_STATE, as
//! Kafka's request handler does, and the connection stays open. A mechanism
//! the listener does not offer gets UNSUPPORTED_SASL_MECHANISM with the
//! offered list, and the connection closes (Kafka's
//! `SaslServerAuthenticator`). A second handshake is ILLEGAL_SASL_STATE.
//! Version 0, after which the client would send raw SASL tokens outside
//! Kafka's framing (clients before Kafka 1.0), is answered
//! UNSUPPORTED_VERSION and the connection closes with a log line: every
//! current client uses v1 and SaslAuthenticate.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{SaslHandshakeRequest, SaslHandshakeResponse};

use super::{decode, str_bytes};
use crate::config::SaslMechanism;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::kafka::session::AuthState;

pub fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let handshake: SaslHandshakeRequest = decode(request, body)?;
    let session = request.session;
    let offered = request.broker.config.security.mechanisms();
    let mut response = SaslHandshakeResponse::default().with_mechanisms(
        offered
            .iter()
            .map(|mechanism| str_bytes(mechanism.name()))
            .collect(),
    );
    if !session.protocol().uses_sasl() {
        // This listener offers no mechanism at all.
        return request.respond(
            response
                .with_mechanisms(Vec::new())
                .with_error_code(ResponseError::IllegalSaslState.code()),
        );
    }
    if request.version == 0 {
        crate::kafka::sasl_log::refused(
            request.peer,
            handshake.mechanism.as_str(),
            "SaslHandshake v0 (raw SASL tokens, clients before Kafka 1.0) is not supported: \
             use a client that sends SaslAuthenticate (KIP-152)",
        );
        session.close_after_response();
        return request.respond(response.with_error_code(ResponseError::UnsupportedVersion.code()));
    }
    let state = session.take_state();
    if !matches!(state, AuthState::AwaitingHandshake) {
        session.set_state(state);
        return request.respond(response.with_error_code(ResponseError::IllegalSaslState.code()));
    }
    match SaslMechanism::from_name(handshake.mechanism.as_str())
        .filter(|mechanism| offered.contains(mechanism))
    {
        Some(mechanism) => session.set_state(AuthState::Handshaken(mechanism)),
        None => {
            crate::kafka::sasl_log::refused(
                request.peer,
                "none",
                &format!(
                    "mechanism {:?} is not offered (security.sasl_enabled_mechanisms)",
                    handshake.mechanism.as_str()
                ),
            );
            session.close_after_response();
            response = response.with_error_code(ResponseError::UnsupportedSaslMechanism.code());
        }
    }
    request.respond(response)
}
