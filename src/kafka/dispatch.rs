//! From a request frame to a response: header, version check, handler.
//!
//! An unknown API key, an unsupported version, or a header or body that does
//! not decode ends the connection with a log line; the stream cannot be
//! trusted after that. The exception is ApiVersions, which answers any
//! version with the v0-compatible UNSUPPORTED_VERSION reply (KIP-511), so an
//! old or new client can learn what this broker speaks.
//!
//! Every request first waits for its [`Turn`]. Requests that only read pass
//! it on at once; Produce passes it once its batches are appended (before
//! waiting for durability); requests that change topics or configs (Metadata
//! may auto-create) hold it until they finish.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::pin::pin;

use bytes::{Buf, Bytes};
use futures_util::future::select;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;

use super::api;
use super::authorize::Authorizer;
use super::hangup::Hangup;
use super::request_error::RequestError;
use super::response::Response;
use super::response_errors::ErrorCodes;
use super::response_throttle::ThrottleTime;
use super::session::Session;
use super::turn::Turn;
use super::versions;
use crate::broker::Broker;
use crate::broker::quota::{self, Account, QuotaKind};
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::shard::ShardContext;
use crate::shard::request_clock::RequestClock;
use crate::telemetry;

/// Throttled responses, logged at most 5 times per 10 s.
static QUOTA_THROTTLES: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 5);

/// Everything a handler needs about the request it serves.
pub struct Request<'a> {
    pub shard: &'a Rc<ShardContext>,
    pub broker: &'a Arc<Broker>,
    pub header: RequestHeader,
    pub key: ApiKey,
    pub version: i16,
    /// The client's address (JoinGroup records it as the member's host).
    pub peer: SocketAddr,
    /// Set once the client will send no more requests: a request that only
    /// waits (a long-poll Fetch) should answer at once.
    pub hangup: &'a Hangup,
    /// The connection's authentication: its principal, the SASL exchange.
    pub session: &'a Session,
    /// The request's size in bytes, header included (what a produce quota
    /// counts, as Kafka's request size).
    pub size: usize,
    turn: &'a Turn,
    /// The thread time the request has taken (`request_percentage`).
    clock: &'a RequestClock,
    /// Whether a client quota applies to the connection: then its requests
    /// are served one at a time (the turn passes only once the request is
    /// done and its cost counted), so a throttle holds the next request
    /// and pipelining cannot carry a client past its quota, as Kafka's
    /// muted channel reads nothing until a response is sent.
    under_quota: bool,
}

impl Request<'_> {
    /// Let the connection's next request start (see [`Turn`]); under a
    /// quota, only once this one is done.
    pub fn pass_turn(&self) {
        if !self.under_quota {
            self.turn.pass();
        }
    }

    /// The connection's `kind` quota (its user and client id,
    /// `broker/quota.rs`): its account and its rate per second, if one
    /// applies.
    fn quota(&self, kind: QuotaKind) -> Option<(Account, u64)> {
        // Decided once per request: no quota, nothing to resolve.
        if !self.under_quota {
            return None;
        }
        let snapshot = self.broker.metadata.snapshot();
        let user = self.session.principal_user();
        let client_id = self.header.client_id.as_deref().unwrap_or("");
        quota::resolve(&snapshot.client_quotas, kind, &user, client_id)
    }

    /// Mute the connection for a `kind` quota's `throttle`, if any, and
    /// say who was throttled (a few lines per 10 s, broker-wide).
    fn throttled(&self, kind: QuotaKind, throttle: Duration) -> Duration {
        if !throttle.is_zero() {
            self.session.mute_for(throttle);
            telemetry::kafka::quota_throttled(kind.key());
            if let Some(throttles) = QUOTA_THROTTLES.record(monotonic_ms()) {
                tracing::info!(
                    principal = %self.session.principal(),
                    client_id = self.header.client_id.as_deref().unwrap_or(""),
                    peer = %self.peer,
                    quota = kind.key(),
                    throttle_ms = quota::throttle_ms(throttle),
                    throttles,
                    "a client quota throttles this client (`throttles` counts throttled \
                     responses of every client since the last such line)"
                );
            }
        }
        throttle
    }

    /// Count `amount` (bytes, or microseconds for [`QuotaKind::Request`])
    /// against the connection's `kind` quota and mute the connection for
    /// the throttle this earns; the throttle (zero without a quota).
    pub fn record_quota(&self, kind: QuotaKind, amount: u64) -> Duration {
        let Some((account, quota)) = self.quota(kind) else {
            return Duration::ZERO;
        };
        let throttle = self
            .broker
            .quota_accounts
            .record(&account, quota, amount, Instant::now());
        self.throttled(kind, throttle)
    }

    /// The throttle the connection's `kind` quota is under already, before
    /// this request counts (zero without a quota); muted for it if any.
    pub fn quota_throttle_now(&self, kind: QuotaKind) -> Duration {
        let Some((account, quota)) = self.quota(kind) else {
            return Duration::ZERO;
        };
        let throttle = self
            .broker
            .quota_accounts
            .throttle_now(&account, quota, Instant::now());
        self.throttled(kind, throttle)
    }

    /// Count the thread time the request has taken since last counted
    /// against the connection's `request_percentage` quota (KIP-124); the
    /// throttle this earns, the connection muted for it. ApiVersions and
    /// the SASL exchange are exempt (their answers carry no throttle, or
    /// come before the principal is known).
    pub fn record_request_time(&self) -> Duration {
        let micros = self.clock.take_uncounted_micros();
        if matches!(
            self.key,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        ) {
            return Duration::ZERO;
        }
        self.record_quota(QuotaKind::Request, micros)
    }

    /// What the connection's principal may do (`authorize.rs`).
    pub fn authorizer(&self) -> Authorizer {
        Authorizer::for_request(self)
    }

    pub fn correlation_id(&self) -> i32 {
        self.header.correlation_id
    }

    pub fn response_header_version(&self) -> i16 {
        self.key.response_header_version(self.version)
    }

    /// Encode `body` as this request's response, counting its error codes
    /// and its thread time; its `throttle_time_ms` becomes the larger of
    /// what it holds (a byte-rate throttle) and the request-time throttle.
    pub fn respond<M: kafka_protocol::protocol::Encodable + ErrorCodes + ThrottleTime>(
        &self,
        mut body: M,
    ) -> Result<Response, RequestError> {
        let throttle = quota::throttle_ms(self.record_request_time());
        if let Some(field) = body.throttle_time_ms() {
            *field = (*field).max(throttle);
        }
        telemetry::kafka::response_errors(self.key, &body);
        Response::encode(
            self.correlation_id(),
            self.response_header_version(),
            &body,
            self.version,
        )
        .map_err(|source| RequestError::Encode {
            key: self.key,
            version: self.version,
            source,
        })
    }
}

pub enum Outcome {
    Respond(Response),
    /// Answer, then close the connection (a failed SASL authentication).
    RespondAndClose(Response),
    /// acks=0 produce: the client expects nothing.
    Silent,
    /// The connection closes after the responses before this one.
    Close(RequestError),
}

pub async fn handle(
    shard: Rc<ShardContext>,
    broker: Arc<Broker>,
    peer: SocketAddr,
    frame: Bytes,
    turn: Turn,
    hangup: Rc<Hangup>,
    session: Rc<Session>,
) -> Outcome {
    turn.wait().await;
    if let Some(until) = session.muted_until() {
        // A quota's throttle (KIP-219): requests read ahead wait for it in
        // turn, as if they had not been read. Under a quota the turn passes
        // only once a request's cost is counted (`Request::under_quota`), so
        // each request sees the throttle its predecessors earned.
        let wait = until.saturating_duration_since(Instant::now());
        let _ = select(pin!(compio::time::sleep(wait)), pin!(hangup.wait())).await;
    }
    let connection = Connection {
        peer,
        hangup: &hangup,
        session: &session,
        turn: &turn,
    };
    let outcome = decode_and_serve(&shard, &broker, connection, frame).await;
    if let Outcome::Close(_) | Outcome::RespondAndClose(_) = outcome {
        turn.stop();
    }
    outcome
}

/// Whether a request changes state later requests may depend on, and so
/// keeps its turn until it is done (Produce passes it itself).
fn holds_turn(key: ApiKey) -> bool {
    matches!(
        key,
        ApiKey::Produce
            | ApiKey::Metadata
            | ApiKey::CreateTopics
            | ApiKey::DeleteTopics
            | ApiKey::CreatePartitions
            | ApiKey::IncrementalAlterConfigs
            | ApiKey::OffsetCommit
            | ApiKey::OffsetDelete
            | ApiKey::DeleteGroups
            | ApiKey::LeaveGroup
            | ApiKey::ConsumerGroupHeartbeat
            | ApiKey::AlterUserScramCredentials
            | ApiKey::CreateAcls
            | ApiKey::DeleteAcls
            | ApiKey::AlterClientQuotas
    )
}

/// What a request knows of its connection.
struct Connection<'a> {
    peer: SocketAddr,
    hangup: &'a Hangup,
    session: &'a Session,
    turn: &'a Turn,
}

/// What the first bytes of a frame say, before any handler runs.
#[derive(Debug)]
pub enum Head {
    /// A supported API and version with its decoded header; the frame now
    /// holds only the body.
    Request {
        key: ApiKey,
        version: i16,
        header: RequestHeader,
    },
    /// ApiVersions at a version this broker does not speak: answered with
    /// the v0-shaped UNSUPPORTED_VERSION reply (KIP-511).
    UnsupportedApiVersions { correlation_id: i32 },
    /// Not a request this broker serves: close the connection, saying why.
    Refused(RequestError),
}

/// Read the API key, version and request header at the front of `frame`
/// (Kafka protocol guide, "Request Header"), leaving the body.
pub fn read_head(frame: &mut Bytes) -> Head {
    if frame.len() < 8 {
        return Head::Refused(RequestError::ShorterThanHeader { len: frame.len() });
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(key) = ApiKey::try_from(raw_key) else {
        return Head::Refused(RequestError::UnknownApiKey { key: raw_key });
    };
    if !versions::is_supported(key, version) {
        if key == ApiKey::ApiVersions {
            return Head::UnsupportedApiVersions { correlation_id };
        }
        return Head::Refused(RequestError::UnsupportedVersion { key, version });
    }
    match RequestHeader::decode(frame, key.request_header_version(version)) {
        Ok(header) => Head::Request {
            key,
            version,
            header,
        },
        Err(source) => Head::Refused(RequestError::MalformedHeader {
            key,
            version,
            source,
        }),
    }
}

async fn decode_and_serve(
    shard: &Rc<ShardContext>,
    broker: &Arc<Broker>,
    connection: Connection<'_>,
    mut frame: Bytes,
) -> Outcome {
    let size = frame.len();
    let (key, version, header) = match read_head(&mut frame) {
        Head::Request {
            key,
            version,
            header,
        } => (key, version, header),
        Head::UnsupportedApiVersions { correlation_id } => {
            return respond(api::api_versions::unsupported_version(correlation_id));
        }
        Head::Refused(reason) => return Outcome::Close(reason),
    };
    if !connection.session.admits(key) {
        return Outcome::Close(RequestError::Unauthenticated { key });
    }
    let clock = RequestClock::default();
    let under_quota = {
        let snapshot = broker.metadata.snapshot();
        !snapshot.client_quotas.is_empty()
            && quota::any_applies(
                &snapshot.client_quotas,
                &connection.session.principal_user(),
                header.client_id.as_deref().unwrap_or(""),
            )
    };
    let request = Request {
        shard,
        broker,
        header,
        key,
        version,
        peer: connection.peer,
        hangup: connection.hangup,
        session: connection.session,
        size,
        turn: connection.turn,
        clock: &clock,
        under_quota,
    };
    if !holds_turn(key) {
        request.pass_turn();
    }
    let body = frame.copy_to_bytes(frame.remaining());
    let handled = clock.time(pin!(api::handle(&request, body))).await;
    // Time after the response was made, or of a request that sends none
    // (acks=0), still counts; its throttle mutes the connection.
    request.record_request_time();
    telemetry::kafka::request_thread_time(key, clock.total());
    match handled {
        Ok(Some(response)) if connection.session.closes_after_response() => {
            Outcome::RespondAndClose(response)
        }
        Ok(Some(response)) => Outcome::Respond(response),
        Ok(None) => Outcome::Silent,
        Err(error) => Outcome::Close(error),
    }
}

fn respond(response: Result<Response, RequestError>) -> Outcome {
    match response {
        Ok(response) => Outcome::Respond(response),
        Err(error) => Outcome::Close(error),
    }
}
