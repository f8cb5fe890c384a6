//! Kafka front-end metrics: requests, latency and errors per API, bytes and
//! records per topic, connections.
//!
//! Each shard thread keeps its own handles by API key and by topic, so a
//! request costs a small map lookup and an atomic add, never a registry
//! lookup by name. Handles of a deleted topic stay until restart, as its
//! counters' last values do in Prometheus.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiKey;
use metrics::{Counter, Histogram, counter, histogram};

use super::names;
use crate::kafka::response_errors::ErrorCodes;

struct ApiHandles {
    requests: Counter,
    duration: Histogram,
    thread_time: Counter,
}

/// The four per-topic counters.
pub struct TopicHandles {
    pub bytes_in: Counter,
    pub records_in: Counter,
    pub bytes_out: Counter,
    pub records_out: Counter,
}

thread_local! {
    static APIS: RefCell<HashMap<i16, ApiHandles>> = RefCell::new(HashMap::new());
    static TOPICS: RefCell<HashMap<String, Rc<TopicHandles>>> = RefCell::new(HashMap::new());
}

/// The `api` label: the API's name, or `Unknown` for a key Kafka lacks.
pub fn api_name(raw_key: i16) -> String {
    ApiKey::try_from(raw_key).map_or_else(|()| "Unknown".to_owned(), |key| format!("{key:?}"))
}

/// The `error` label: Kafka's error name (`UnknownTopicOrPartition`), or
/// `Code<n>` for a code the protocol crate does not name (and 0).
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(ResponseError::Unknown(_)) | None => format!("Code{code}"),
        Some(error) => format!("{error:?}"),
    }
}

/// Run `with` on this thread's handles of API key `raw_key`.
fn with_api(raw_key: i16, with: impl FnOnce(&ApiHandles)) {
    APIS.with(|apis| {
        let mut apis = apis.borrow_mut();
        let handles = apis.entry(raw_key).or_insert_with(|| {
            let api = api_name(raw_key);
            ApiHandles {
                requests: counter!(names::KAFKA_REQUESTS, "api" => api.clone()),
                duration: histogram!(names::KAFKA_REQUEST_DURATION, "api" => api.clone()),
                thread_time: counter!(names::KAFKA_REQUEST_THREAD_TIME, "api" => api),
            }
        });
        with(handles);
    });
}

/// A request with API key `raw_key`, read at `started`, is answered (or
/// closed its connection).
pub fn request_done(raw_key: i16, started: Instant) {
    with_api(raw_key, |handles| {
        handles.requests.increment(1);
        handles.duration.record(started.elapsed().as_secs_f64());
    });
}

/// A request of `api` kept its shard thread busy for `thread_time` (the
/// `request_percentage` quota's measure).
pub fn request_thread_time(api: ApiKey, thread_time: Duration) {
    let micros = u64::try_from(thread_time.as_micros()).unwrap_or(u64::MAX);
    with_api(api as i16, |handles| handles.thread_time.increment(micros));
}

/// Count one error of `api` under the Kafka name of `code`.
pub fn error(api: ApiKey, code: i16) {
    counter!(
        names::KAFKA_REQUEST_ERRORS,
        "api" => format!("{api:?}"),
        "error" => error_name(code)
    )
    .increment(1);
}

/// Set the counts of connections shard `shard` serves
/// ([`names::KAFKA_SHARD_CONNECTIONS`]) and of those that move data or may
/// ([`names::KAFKA_SHARD_DATA_CONNECTIONS`]).
pub fn shard_connections(shard: usize, count: u32, data: u32) {
    let id = crate::ids::ShardId(u16::try_from(shard).unwrap_or(u16::MAX));
    let label = crate::telemetry::storage::shard_label(id);
    metrics::gauge!(names::KAFKA_SHARD_CONNECTIONS, "shard" => label.clone()).set(f64::from(count));
    metrics::gauge!(names::KAFKA_SHARD_DATA_CONNECTIONS, "shard" => label).set(f64::from(data));
}

/// A connection closed for what its client sent; `reason` is one of those
/// listed in [`names::KAFKA_CONNECTIONS_CLOSED_BAD_INPUT`].
pub fn connection_closed_bad_input(reason: &'static str) {
    counter!(names::KAFKA_CONNECTIONS_CLOSED_BAD_INPUT, "reason" => reason).increment(1);
}

/// A SASL authentication on listener `listener` finished: `succeeded` or
/// `failed`.
pub fn sasl_authentication(listener: String, mechanism: &'static str, outcome: &'static str) {
    counter!(
        names::KAFKA_SASL_AUTHENTICATIONS,
        "listener" => listener,
        "mechanism" => mechanism,
        "outcome" => outcome
    )
    .increment(1);
}

pub fn quota_throttled(quota: &'static str) {
    counter!(names::KAFKA_QUOTA_THROTTLES, "quota" => quota).increment(1);
}

pub fn authorization_denied(operation: &'static str, resource_type: &'static str) {
    counter!(
        names::KAFKA_AUTHORIZATION_DENIALS,
        "operation" => operation,
        "resource_type" => resource_type
    )
    .increment(1);
}

pub fn tls_handshake(listener: String, outcome: &'static str) {
    counter!(
        names::KAFKA_TLS_HANDSHAKES,
        "listener" => listener,
        "outcome" => outcome
    )
    .increment(1);
}

/// A request that ended its connection (malformed, unsupported, failed).
pub fn connection_closed_by(raw_key: i16) {
    counter!(
        names::KAFKA_REQUEST_ERRORS,
        "api" => api_name(raw_key),
        "error" => "ConnectionClosed"
    )
    .increment(1);
}

/// Count every non-zero error code in `response`, an answer to `api`.
pub fn response_errors(api: ApiKey, response: &impl ErrorCodes) {
    response.error_codes(&mut |code| {
        if code != 0 {
            error(api, code);
        }
    });
}

/// The counters of `topic` on this shard thread.
pub fn topic(topic: &str) -> Rc<TopicHandles> {
    TOPICS.with(|topics| {
        if let Some(handles) = topics.borrow().get(topic) {
            return Rc::clone(handles);
        }
        let label = topic.to_owned();
        let handles = Rc::new(TopicHandles {
            bytes_in: counter!(names::TOPIC_BYTES_IN, "topic" => label.clone()),
            records_in: counter!(names::TOPIC_RECORDS_IN, "topic" => label.clone()),
            bytes_out: counter!(names::TOPIC_BYTES_OUT, "topic" => label.clone()),
            records_out: counter!(names::TOPIC_RECORDS_OUT, "topic" => label.clone()),
        });
        topics.borrow_mut().insert(label, Rc::clone(&handles));
        handles
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_use_kafka_names() {
        assert_eq!(api_name(0), "Produce");
        assert_eq!(api_name(1), "Fetch");
        assert_eq!(api_name(-7), "Unknown");
        assert_eq!(error_name(3), "UnknownTopicOrPartition");
        assert_eq!(error_name(i16::MAX), format!("Code{}", i16::MAX));
    }
}
