//! SaslAuthenticate (KIP-152): the steps of the SASL exchange chosen by
//! SaslHandshake, each in one request.
//!
//! - PLAIN: one step; the password is checked against the user's SCRAM
//!   credential on the blocking pool (PBKDF2 takes milliseconds), at most
//!   [`PASSWORD_CHECKS_MAX`] at once in the whole broker, so a flood of
//!   PLAIN attempts queues behind itself instead of taking the CPU from the
//!   shards; and at most [`PASSWORD_CHECKS_PER_ADDRESS_MAX`] of one client
//!   address's checks are in that queue at once (the others wait behind
//!   them), so a flood from a few addresses cannot queue every other
//!   client's login behind it. An unknown user's password is checked against a stand-in
//!   credential, so the answer takes as long as for a known user.
//! - SCRAM-SHA-256/512: two steps (client-first → server-first,
//!   client-final → server-final), `security/scram.rs`.
//!
//! Success sets the connection's principal; `session_lifetime_ms` is 0
//! (no re-authentication, KIP-368). Failure answers
//! SASL_AUTHENTICATION_FAILED with a message that does not say whether the
//! user exists, counts `sluice_kafka_sasl_authentications_total`, logs a
//! rate-limited line with the reason, and closes the connection. Outside
//! an exchange (a listener without SASL, before the handshake, after
//! success) the answer is ILLEGAL_SASL_STATE, as in Kafka; before the
//! handshake the connection also closes.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslAuthenticateResponse};

use super::{decode, str_bytes};
use crate::config::SaslMechanism;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::kafka::sasl_log;
use crate::kafka::session::AuthState;
use crate::security::plain;
use crate::security::scram::{ScramCredential, ScramMechanism, ScramServerFirst};
use crate::telemetry;

/// What every failed authentication tells the client (Kafka's wording).
const FAILED: &str = "Authentication failed: Invalid username or password";

/// PLAIN password checks (PBKDF2) running at once, broker-wide.
pub const PASSWORD_CHECKS_MAX: usize = 1;
static PASSWORD_CHECKS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(PASSWORD_CHECKS_MAX);

/// PLAIN password checks one client address may have in the broker-wide
/// queue at once; its other logins wait their turn behind them, so a login
/// from elsewhere waits behind at most this many checks per flooding
/// address (PBKDF2 takes about 0.2 s in a debug build, 10–30 ms in a
/// release one), and clients on one host that start together all get in,
/// one after another.
pub const PASSWORD_CHECKS_PER_ADDRESS_MAX: usize = 2;

/// One address's share of the queue, and how many logins hold or wait
/// for it.
type Share = (Arc<tokio::sync::Semaphore>, usize);

/// Each client address with PLAIN checks waiting or running.
static CHECKS_BY_ADDRESS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Share>>,
> = std::sync::LazyLock::new(Default::default);

/// One login's claim on its address's share, given back on drop.
struct AddressShare(std::net::IpAddr);

impl AddressShare {
    /// Join `address`'s logins; its share of the queue, to wait on.
    fn join(address: std::net::IpAddr) -> (AddressShare, Arc<tokio::sync::Semaphore>) {
        let mut shares = CHECKS_BY_ADDRESS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (share, logins) = shares.entry(address).or_insert_with(|| {
            (
                Arc::new(tokio::sync::Semaphore::new(PASSWORD_CHECKS_PER_ADDRESS_MAX)),
                0,
            )
        });
        *logins += 1;
        (AddressShare(address), Arc::clone(share))
    }
}

impl Drop for AddressShare {
    fn drop(&mut self) {
        let mut shares = CHECKS_BY_ADDRESS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, logins)) = shares.get_mut(&self.0) {
            *logins -= 1;
            if *logins == 0 {
                shares.remove(&self.0);
            }
        }
    }
}

/// The credential an unknown user's PLAIN password is checked against
/// (made once; matches no password anyone knows).
fn stand_in() -> &'static (ScramMechanism, ScramCredential) {
    static STAND_IN: std::sync::OnceLock<(ScramMechanism, ScramCredential)> =
        std::sync::OnceLock::new();
    STAND_IN.get_or_init(|| {
        let mut secret = [0u8; 32];
        crate::security::fill_random(&mut secret);
        let password: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();
        let mechanism = ScramMechanism::Sha512;
        let credential = ScramCredential::from_password(
            mechanism,
            &password,
            crate::security::scram::ITERATIONS_DEFAULT,
        );
        (mechanism, credential)
    })
}

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let authenticate: SaslAuthenticateRequest = decode(request, body)?;
    let session = request.session;
    let state = session.take_state();
    let step = match state {
        AuthState::Handshaken(SaslMechanism::Plain) => plain_step(request, &authenticate).await,
        AuthState::Handshaken(SaslMechanism::Scram(mechanism)) => {
            scram_first(request, mechanism, &authenticate)
        }
        AuthState::ScramFirstSent(server) => scram_final(server, &authenticate),
        other => {
            if matches!(other, AuthState::AwaitingHandshake) {
                session.close_after_response();
            }
            session.set_state(other);
            let response = SaslAuthenticateResponse::default()
                .with_error_code(ResponseError::IllegalSaslState.code())
                .with_error_message(Some(str_bytes(
                    "SaslAuthenticate is not expected now: send SaslHandshake first, once per connection, on a SASL listener",
                )));
            return request.respond(response);
        }
    };
    let response = match step {
        Ok(Step::Continue { state, bytes }) => {
            session.set_state(state);
            SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(bytes))
        }
        Ok(Step::Done {
            mechanism,
            user,
            bytes,
        }) => {
            telemetry::kafka::sasl_authentication(
                listener_name(request),
                mechanism.name(),
                "succeeded",
            );
            tracing::debug!(peer = %request.peer, user, mechanism = mechanism.name(), "authenticated");
            session.set_state(AuthState::Authenticated(user));
            SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(bytes))
        }
        Err((mechanism, reason)) => {
            telemetry::kafka::sasl_authentication(
                listener_name(request),
                mechanism.name(),
                "failed",
            );
            sasl_log::refused(request.peer, mechanism.name(), &reason);
            session.set_state(AuthState::Failed);
            session.close_after_response();
            SaslAuthenticateResponse::default()
                .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                .with_error_message(Some(str_bytes(FAILED)))
        }
    };
    request.respond(response)
}

/// The name of the listener `request` came in on (the metric's label).
fn listener_name(request: &Request<'_>) -> String {
    request.broker.listener(request.session.listener()).name
}

/// One step of an exchange.
enum Step {
    /// Send `bytes`; the exchange goes on in `state`.
    Continue { state: AuthState, bytes: Vec<u8> },
    /// Authenticated as `user`; send `bytes` (possibly empty).
    Done {
        mechanism: SaslMechanism,
        user: String,
        bytes: Vec<u8>,
    },
}

/// A failed step: the mechanism and why (for the log, not the client).
type Failure = (SaslMechanism, String);

async fn plain_step(
    request: &Request<'_>,
    authenticate: &SaslAuthenticateRequest,
) -> Result<Step, Failure> {
    let failed = |reason: String| (SaslMechanism::Plain, reason);
    let offered =
        plain::parse(&authenticate.auth_bytes).map_err(|error| failed(error.to_string()))?;
    let snapshot = request.broker.metadata.snapshot();
    // Any of the user's SCRAM credentials was made from its password.
    let stored = snapshot
        .scram_credentials
        .get(&offered.user)
        .and_then(|credentials| {
            [ScramMechanism::Sha512, ScramMechanism::Sha256]
                .into_iter()
                .find_map(|mechanism| Some((mechanism, credentials.get(&mechanism)?.clone())))
        });
    let known = stored.is_some();
    let (mechanism, credential) = stored.unwrap_or_else(|| stand_in().clone());
    let password = offered.password;
    // First a place in this address's share, then in the broker-wide
    // queue (the permits drop before the share: reverse declaration order).
    let (_share, address_share) = AddressShare::join(request.peer.ip().to_canonical());
    let _address_permit = address_share
        .acquire()
        .await
        .map_err(|_| failed("the password checks are closed".to_owned()))?;
    let _permit = PASSWORD_CHECKS
        .acquire()
        .await
        .map_err(|_| failed("the password checks are closed".to_owned()))?;
    let matches =
        compio::runtime::spawn_blocking(move || credential.matches_password(mechanism, &password))
            .await
            .map_err(|_| failed("the password check was cancelled".to_owned()))?;
    if !known {
        return Err(failed(format!("unknown user {:?}", offered.user)));
    }
    if !matches {
        return Err(failed(format!(
            "wrong password for user {:?}",
            offered.user
        )));
    }
    Ok(Step::Done {
        mechanism: SaslMechanism::Plain,
        user: offered.user,
        bytes: Vec::new(),
    })
}

fn scram_first(
    request: &Request<'_>,
    mechanism: ScramMechanism,
    authenticate: &SaslAuthenticateRequest,
) -> Result<Step, Failure> {
    let snapshot = request.broker.metadata.snapshot();
    let lookup = |user: &str| -> Option<ScramCredential> {
        snapshot
            .scram_credentials
            .get(user)?
            .get(&mechanism)
            .cloned()
    };
    let server = ScramServerFirst::start(mechanism, &authenticate.auth_bytes, lookup)
        .map_err(|error| (SaslMechanism::Scram(mechanism), error.to_string()))?;
    let bytes = server.message().as_bytes().to_vec();
    Ok(Step::Continue {
        state: AuthState::ScramFirstSent(server),
        bytes,
    })
}

fn scram_final(
    server: ScramServerFirst,
    authenticate: &SaslAuthenticateRequest,
) -> Result<Step, Failure> {
    let mechanism = SaslMechanism::Scram(server.mechanism());
    let user = server.user().to_owned();
    let (server_final, user) = server
        .finish(&authenticate.auth_bytes)
        .map_err(|error| (mechanism, format!("user {user:?}: {error}")))?;
    Ok(Step::Done {
        mechanism,
        user,
        bytes: server_final.into_bytes(),
    })
}
