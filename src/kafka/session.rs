//! A connection's authentication (issue 20): who the client is, and which
//! requests it may send yet.
//!
//! On a `PLAINTEXT` listener every client is `User:ANONYMOUS` from its first
//! byte, as in Kafka. On a `SASL_PLAINTEXT` listener a connection starts
//! unauthenticated: it may send ApiVersions, then SaslHandshake (v1, KIP-152)
//! naming a mechanism, then SaslAuthenticate until the mechanism is done.
//! Any other request before that closes the connection with a log line
//! (Kafka: "Unexpected Kafka request of type ... during SASL handshake").
//! Until it is authenticated the connection reads one request at a time
//! (`connection.rs`), so the exchange's steps never overlap.
//!
//! A failed authentication is answered with SASL_AUTHENTICATION_FAILED and
//! then the connection closes ([`Session::close_after_response`]), as Kafka
//! does.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiKey;

use crate::config::{SaslMechanism, SecurityProtocol};
use crate::security::scram::ScramServerFirst;

/// Kafka's principal for clients of a listener without authentication.
pub const ANONYMOUS: &str = "ANONYMOUS";

/// Where a connection's authentication stands.
#[derive(Debug)]
pub enum AuthState {
    /// A listener without SASL: `User:ANONYMOUS`, everything allowed.
    Anonymous,
    /// A SASL listener before SaslHandshake.
    AwaitingHandshake,
    /// SaslHandshake chose this mechanism; SaslAuthenticate comes next.
    Handshaken(SaslMechanism),
    /// SCRAM's server-first was sent; the client-final comes next.
    ScramFirstSent(ScramServerFirst),
    /// Authenticated as this user.
    Authenticated(String),
    /// The exchange failed; the connection is closing.
    Failed,
}

/// One connection's authentication.
#[derive(Debug)]
pub struct Session {
    protocol: SecurityProtocol,
    /// The listener the connection came in on (`Broker::listener`).
    listener: usize,
    state: RefCell<AuthState>,
    close_after_response: Cell<bool>,
    /// Until when the connection reads no request: a quota's throttle
    /// (KIP-219 muting).
    muted_until: Cell<Option<Instant>>,
}

impl Session {
    pub fn new(protocol: SecurityProtocol, listener: usize) -> Session {
        let state = if protocol.uses_sasl() {
            AuthState::AwaitingHandshake
        } else {
            AuthState::Anonymous
        };
        Session {
            protocol,
            listener,
            state: RefCell::new(state),
            close_after_response: Cell::new(false),
            muted_until: Cell::new(None),
        }
    }

    pub fn protocol(&self) -> SecurityProtocol {
        self.protocol
    }

    /// The listener the connection came in on: its advertised addresses
    /// are the ones this client is told.
    pub fn listener(&self) -> usize {
        self.listener
    }

    /// Whether requests other than the handshake's may be served.
    pub fn is_authenticated(&self) -> bool {
        matches!(
            *self.state.borrow(),
            AuthState::Anonymous | AuthState::Authenticated(_)
        )
    }

    /// The authenticated user (`None` for `User:ANONYMOUS` and before
    /// authentication).
    pub fn user(&self) -> Option<String> {
        match &*self.state.borrow() {
            AuthState::Authenticated(user) => Some(user.clone()),
            _ => None,
        }
    }

    /// The principal's user name: the authenticated user, or `ANONYMOUS`
    /// on a listener without authentication (and, never served, before
    /// authentication).
    pub fn principal_user(&self) -> String {
        self.user().unwrap_or_else(|| ANONYMOUS.to_owned())
    }

    /// The principal's name as Kafka prints it (`User:alice`).
    pub fn principal(&self) -> String {
        format!("User:{}", self.user().as_deref().unwrap_or(ANONYMOUS))
    }

    /// Whether a request with API `key` may be served now.
    pub fn admits(&self, key: ApiKey) -> bool {
        self.is_authenticated()
            || matches!(
                key,
                ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
            )
    }

    /// Take the state to act on it (the handshake's handlers); leaves
    /// [`AuthState::Failed`] until [`Session::set_state`] puts one back.
    pub fn take_state(&self) -> AuthState {
        self.state.replace(AuthState::Failed)
    }

    pub fn set_state(&self, state: AuthState) {
        *self.state.borrow_mut() = state;
    }

    /// Close the connection once this request's response is written.
    pub fn close_after_response(&self) {
        self.close_after_response.set(true);
    }

    pub fn closes_after_response(&self) -> bool {
        self.close_after_response.get()
    }

    /// Read no more requests for `throttle` from now (a quota's throttle;
    /// a later end wins over an earlier one).
    pub fn mute_for(&self, throttle: Duration) {
        let until = Instant::now() + throttle;
        if self.muted_until.get().is_none_or(|muted| muted < until) {
            self.muted_until.set(Some(until));
        }
    }

    /// Until when the connection is muted, if it is.
    pub fn muted_until(&self) -> Option<Instant> {
        self.muted_until
            .get()
            .filter(|until| *until > Instant::now())
    }
}
