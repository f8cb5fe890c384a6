//! The metrics listener against the real binary: `/health`, `/ready`, and a
//! `/metrics` exposition scraped before and after a produce/consume run,
//! parsed by the reference Prometheus text-format parser (Python's
//! `prometheus_client`, installed by `.ci/run`).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::broker_process::BrokerProcess;
use crate::kafka_bad_input::{batch, produce_code};
use crate::kafka_clients;
use crate::wire::Wire;

/// Python's `prometheus_client` parser: one JSON line per sample, with its
/// family's type. Exits non-zero if the exposition does not parse.
const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        print(json.dumps({"family": family.name, "type": family.type,
                          "name": sample.name, "labels": sample.labels,
                          "value": sample.value}))
"#;

/// The interpreter Debian's python3-prometheus-client installs into.
const PYTHON: &str = "/usr/bin/python3";

/// How long a liveness probe may take: generous, a liveness bound rather
/// than a speed target (kubelet's default probe timeout is 1 s).
const PROBE_DEADLINE: Duration = Duration::from_secs(2);
/// How long a connection that never sends a whole request head may stay
/// open: the server's header-read timeout (3 s) with room to spare.
const SILENT_CLOSE_WAIT: Duration = Duration::from_secs(8);

/// `(status line, body)` of a GET.
/// The value of the first sample on `address`'s /metrics whose line starts
/// with `line_start` (name and labels); 0 when there is none.
pub fn value(address: &str, line_start: &str) -> f64 {
    let (_, text) = get(address, "/metrics");
    text.lines()
        .find(|line| line.starts_with(line_start))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

pub fn get(address: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).expect("metrics listener accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[derive(Debug)]
struct Sample {
    family_type: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Samples by name, parsed by prometheus_client.
struct Scrape(BTreeMap<String, Vec<Sample>>);

impl Scrape {
    fn take(address: &str) -> Scrape {
        let (status, body) = get(address, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let mut parser = Command::new(PYTHON)
            .args(["-c", PARSER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs (.ci/run installs python3-prometheus-client)");
        parser
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let output = parser.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "the exposition does not parse: {}\n{body}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
        for line in String::from_utf8(output.stdout).unwrap().lines() {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            let labels = json["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(key, value)| (key.clone(), value.as_str().unwrap().to_owned()))
                .collect();
            samples
                .entry(json["name"].as_str().unwrap().to_owned())
                .or_default()
                .push(Sample {
                    family_type: json["type"].as_str().unwrap().to_owned(),
                    labels,
                    value: json["value"].as_f64().unwrap(),
                });
        }
        Scrape(samples)
    }

    fn samples(&self, name: &str) -> &[Sample] {
        self.0.get(name).map_or(&[], Vec::as_slice)
    }

    /// The samples of `name` carrying all of `labels`.
    fn samples_with(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples(name)
            .iter()
            .filter(|sample| {
                labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
            })
            .collect()
    }

    /// The sum of `name` over the samples carrying all of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples_with(name, labels)
            .iter()
            .map(|sample| sample.value)
            .sum()
    }

    fn family_type(&self, name: &str) -> &str {
        self.samples(name)
            .first()
            .map_or("missing", |sample| sample.family_type.as_str())
    }
}

fn commit(address: &str, group: &str, topic: &str, partition: i32, offset: i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    consumer.commit(&offsets, CommitMode::Sync).unwrap();
}

#[test]
fn health_and_ready_answer_and_unknown_paths_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    assert_eq!(
        get(&broker.metrics, "/health"),
        ("HTTP/1.1 200 OK".to_owned(), "ok\n".to_owned())
    );
    assert_eq!(
        get(&broker.metrics, "/ready"),
        ("HTTP/1.1 200 OK".to_owned(), "ready\n".to_owned())
    );
    assert_eq!(get(&broker.metrics, "/nope").0, "HTTP/1.1 404 Not Found");
}

/// A liveness probe as an orchestrator sends it: the status line of
/// `GET /health`, or why there was none within `deadline`.
fn probe(address: &str, deadline: Duration) -> Result<String, String> {
    let address = address.parse().unwrap();
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&address, deadline)
        .map_err(|error| format!("connect: {error}"))?;
    stream.set_read_timeout(Some(deadline)).unwrap();
    write!(stream, "GET /health HTTP/1.1\r\nHost: probe\r\n\r\n")
        .map_err(|error| format!("send: {error}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|error| format!("read: {error}"))?;
    if started.elapsed() > deadline {
        return Err(format!("answered after {:?}", started.elapsed()));
    }
    let answer = String::from_utf8_lossy(&answer);
    Ok(answer.lines().next().unwrap_or("").to_owned())
}

/// Sends a request head one byte per `pause`, until the peer closes; returns
/// how long that took, or `None` if the head went out whole and was answered.
fn slowloris(address: &str, pause: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(pause)).unwrap();
    for byte in
        b"GET /health HTTP/1.1\r\nHost: slowloris\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa\r\n\r\n"
    {
        if stream.write_all(&[*byte]).is_err() {
            return Some(started.elapsed());
        }
        let mut buf = [0u8; 256];
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => return None,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => {
                return Some(started.elapsed());
            }
            Err(_) => {} // the pause: nothing from the server yet
        }
    }
    None
}

/// Whether the server closed `stream` within `wait` (EOF or reset).
fn closed_by_server(mut stream: TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() == ErrorKind::ConnectionReset,
    }
}

/// Issue 12: one silent TCP connection made every `/health` probe time out
/// (15 of 15), because the metrics server served one connection at a time.
#[test]
fn health_answers_while_silent_and_slowloris_connections_are_open() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let silent: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&broker.metrics).unwrap())
        .collect();
    let slow = {
        let address = broker.metrics.clone();
        std::thread::spawn(move || slowloris(&address, Duration::from_millis(200)))
    };
    std::thread::sleep(Duration::from_millis(100));
    let answers: Vec<Result<String, String>> = (0..15)
        .map(|_| probe(&broker.metrics, PROBE_DEADLINE))
        .collect();
    let healthy = answers
        .iter()
        .filter(|answer| answer.as_deref() == Ok("HTTP/1.1 200 OK"))
        .count();
    assert_eq!(healthy, 15, "{answers:?}");

    // The server closes what never sends a whole request head, within its
    // header-read timeout (3 s), without waiting for the client.
    let slow = slow.join().unwrap();
    assert!(
        slow.is_some_and(|after| after < SILENT_CLOSE_WAIT),
        "the slowloris was not closed by the server: {slow:?}"
    );
    for stream in silent {
        assert!(closed_by_server(stream, SILENT_CLOSE_WAIT));
    }
}

#[test]
fn counters_move_with_a_produce_consume_run_and_the_exposition_parses() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("metrics-test.toml");
    std::fs::write(
        &config,
        "[metrics]\nrefresh_interval_ms = 100\n[storage]\ncleaner_backoff_ms = 200\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &["--config", config.to_str().unwrap()]);
    let address = broker.address.clone();
    let before = Scrape::take(&broker.metrics);
    assert_eq!(before.sum("sluice_up", &[]), 1.0);
    assert_eq!(before.sum("sluice_ready", &[]), 1.0);
    assert_eq!(
        before.sum("sluice_topic_records_in_total", &[("topic", "metered")]),
        0.0
    );

    kafka_clients::create_topic(&address, "metered", 2, &[]);
    let (producer, acks) = kafka_clients::producer(&address, &[]);
    let payload = vec![b'm'; 100];
    for i in 0..400 {
        kafka_clients::send(&producer, "metered", Some(i % 2), None, &payload, &[]);
    }
    assert_eq!(kafka_clients::flush(&producer, &acks).len(), 400);
    drop(producer);
    kafka_clients::consume(&address, "metered", 2, 0, 400);
    let watermarks = kafka_clients::high_watermarks(&address, "metered", 2);
    commit(&address, "lagging", "metered", 0, 50);
    let mut wire = Wire::connect(&address);
    let mut corrupt = batch(3, 10);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x40;
    assert_eq!(
        produce_code(&mut wire, "metered", 0, corrupt),
        ResponseError::CorruptMessage.code()
    );
    let mut closing = Wire::connect(&address);
    closing.send_raw(&[0x00, 0x77, 0, 0, 0, 0, 0, 1, 0xff, 0xff]);
    assert!(closing.closed_by_broker(), "an unknown API key closes");
    // A compacted topic: 200 updates of 10 keys, cleaned by a pass.
    kafka_clients::create_topic(
        &address,
        "compacted",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ],
    );
    let (producer, acks) = kafka_clients::producer(&address, &[]);
    for n in 0..200 {
        let key = format!("key-{}", n % 10);
        kafka_clients::send(
            &producer,
            "compacted",
            Some(0),
            Some(key.as_bytes()),
            b"v",
            &[],
        );
    }
    assert_eq!(kafka_clients::flush(&producer, &acks).len(), 200);
    drop(producer);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while Scrape::take(&broker.metrics).sum("sluice_compaction_removed_records_total", &[]) == 0.0 {
        assert!(std::time::Instant::now() < deadline, "no compaction pass");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Two refresh intervals: the gauges include everything above.
    std::thread::sleep(Duration::from_millis(400));
    let after = Scrape::take(&broker.metrics);

    // Per topic: exactly the records produced in, at least as many out.
    let topic = [("topic", "metered")];
    assert_eq!(after.sum("sluice_topic_records_in_total", &topic), 400.0);
    assert!(after.sum("sluice_topic_bytes_in_total", &topic) > 400.0 * 100.0);
    assert!(after.sum("sluice_topic_records_out_total", &topic) >= 400.0);
    assert!(after.sum("sluice_topic_bytes_out_total", &topic) > 400.0 * 100.0);

    // Per API: every Produce counted once in the counter and the histogram.
    let produce = [("api", "Produce")];
    let produced = after.sum("sluice_kafka_requests_total", &produce);
    assert!(produced > before.sum("sluice_kafka_requests_total", &produce));
    assert_eq!(
        after.sum("sluice_kafka_request_duration_seconds_count", &produce),
        produced
    );
    assert!(after.sum("sluice_kafka_requests_total", &[("api", "Fetch")]) >= 1.0);
    assert_eq!(
        after.family_type("sluice_kafka_request_duration_seconds_bucket"),
        "histogram"
    );
    let errors = "sluice_kafka_request_errors_total";
    assert_eq!(
        after.sum(errors, &[("api", "Produce"), ("error", "CorruptMessage")]),
        1.0
    );
    assert_eq!(
        after.sum(errors, &[("api", "Unknown"), ("error", "ConnectionClosed")]),
        1.0
    );
    assert!(after.sum("sluice_kafka_connections_accepted_total", &[]) >= 4.0);
    assert!(after.sum("sluice_kafka_connections", &[]) >= 1.0);

    // Group commit: acks=all produce went through fdatasyncs with waiters.
    assert!(after.sum("sluice_log_fsync_duration_seconds_count", &[]) >= 1.0);
    assert!(after.sum("sluice_log_fsync_size_bytes_sum", &[]) > 400.0 * 100.0);
    assert!(after.sum("sluice_log_fsync_waiters_sum", &[]) >= 1.0);
    assert!(after.sum("sluice_log_fsyncs_total", &[]) >= 1.0);
    assert!(after.sum("sluice_log_written_bytes_total", &[]) > 400.0 * 100.0);
    if broker.log_contains("io_backend=io_uring") {
        let submitted = after.sum("sluice_io_uring_submissions_total", &[]);
        assert!(submitted >= 2.0);
        assert!(after.sum("sluice_io_uring_completions_total", &[]) >= submitted - 8.0);
    }

    // Compaction: the pass read, wrote and removed (at most 190 records:
    // 10 keys survive), and the cleaner reports the partition's state.
    let removed = after.sum("sluice_compaction_removed_records_total", &[]);
    assert!((1.0..=190.0).contains(&removed), "removed {removed}");
    assert!(after.sum("sluice_compaction_read_bytes_total", &[]) > 0.0);
    assert!(after.sum("sluice_compaction_written_bytes_total", &[]) > 0.0);
    assert!(after.sum("sluice_compaction_pass_duration_seconds_count", &[]) >= 1.0);
    let compacted = [("topic", "compacted"), ("partition", "0")];
    assert_eq!(
        after
            .samples_with("sluice_compaction_dirty_ratio", &compacted)
            .len(),
        1
    );
    let ratio = after.sum("sluice_compaction_dirty_ratio", &compacted);
    assert!((0.0..=1.0).contains(&ratio), "dirty ratio {ratio}");
    assert_eq!(
        after
            .samples_with("sluice_compaction_delay_seconds", &compacted)
            .len(),
        1
    );

    // Shard gauges: 3 topic partitions plus the 50 of __consumer_offsets,
    // the one of __producer_ids and the 50 of __transaction_state.
    assert_eq!(after.sum("sluice_shard_partitions", &[]), 104.0);
    assert_eq!(after.samples("sluice_shard_segments").len(), 2);
    assert!(after.sum("sluice_shard_log_bytes", &[]) > 400.0 * 100.0);
    for sample in after.samples("sluice_shard_busy_ratio") {
        assert!((0.0..=1.5).contains(&sample.value), "{sample:?}");
    }
    let disk = after.sum("sluice_disk_usage_ratio", &[]);
    assert!(disk > 0.0 && disk < 1.0, "disk usage ratio {disk}");
    assert_eq!(after.samples("sluice_recovery_duration_seconds").len(), 2);
    assert_eq!(after.sum("sluice_recovery_truncated_bytes", &[]), 0.0);

    // Consumer lag: the high watermark minus the committed offset.
    let lag = after.sum(
        "sluice_consumer_group_lag",
        &[
            ("group", "lagging"),
            ("topic", "metered"),
            ("partition", "0"),
        ],
    );
    assert_eq!(lag, (watermarks[0] - 50) as f64);
    assert_eq!(after.family_type("sluice_consumer_group_lag"), "gauge");

    // The Grafana dashboard queries only series a real broker exposes.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("packaging/grafana/sluice-dashboard.json"),
    )
    .unwrap();
    let queried = metric_names(&dashboard);
    assert!(queried.len() >= 25, "{queried:?}");
    for name in &queried {
        assert!(
            !after.samples(name).is_empty(),
            "the dashboard queries {name}, which the broker does not expose"
        );
    }
}

/// Every `sluice_...` identifier in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("sluice_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names.remove("sluice_");
    names
}

/// A broker with two shards whose gauges refresh every 100 ms.
fn two_shard_broker(dir: &std::path::Path) -> BrokerProcess {
    let config = dir.join("refresh.toml");
    std::fs::write(&config, "[metrics]\nrefresh_interval_ms = 100\n").unwrap();
    BrokerProcess::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

/// Gauge `name`'s values for shards 0 and 1, once both shards' refreshers
/// show `want` in all.
fn shard_gauges_once(broker: &BrokerProcess, name: &str, want: usize) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = get(&broker.metrics, "/metrics");
        let shard = |shard: u32| {
            let line = format!("{name}{{shard=\"{shard}\"}} ");
            text.lines()
                .find_map(|found| found.strip_prefix(line.as_str()))
                .and_then(|value| value.parse::<f64>().ok())
        };
        if let (Some(first), Some(second)) = (shard(0), shard(1))
            && first + second == want as f64
        {
            return (first, second);
        }
        assert!(
            Instant::now() < deadline,
            "{name} never showed {want} in all: {:?}",
            (shard(0), shard(1))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connection that has sent ApiVersions.
fn versions_wire(broker: &BrokerProcess) -> Wire {
    use kafka_protocol::messages::ApiVersionsRequest;
    use kafka_protocol::protocol::StrBytes;

    let mut wire = Wire::connect(&broker.address);
    let request = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("sluice-tests"))
        .with_client_software_version(StrBytes::from_static_str("1.0"));
    let answer = wire.call(3, &request);
    assert_eq!(answer.error_code, 0, "a connection is served");
    wire
}

/// New connections go to the shard serving the fewest, whatever shard the
/// kernel's `SO_REUSEPORT` hash hands them to (`kafka/balance.rs`): with
/// two shards, each serves half of the connections open (one more on
/// one side when their number is odd). Every connection, handed over or not, answers a request, and the
/// counts fall back to zero once they close.
#[test]
fn connections_are_spread_evenly_over_the_shards_and_each_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let broker = two_shard_broker(dir.path());
    let counts_once =
        |want: usize| shard_gauges_once(&broker, "sluice_kafka_shard_connections", want);
    let mut wires = Vec::new();
    // Three times nine: the kernel alone split nine as 8 and 1 in a trial.
    for _ in 0..3 {
        for _ in 0..9 {
            wires.push(versions_wire(&broker));
        }
        let counts = counts_once(wires.len());
        assert!(
            (counts.0 - counts.1).abs() <= 1.0,
            "{} connections over two shards: {counts:?}",
            wires.len()
        );
    }
    drop(wires);
    counts_once(0);
}

/// A client's idle metadata connection does not weigh like the two
/// consumers it opens next (`kafka/balance.rs`): they land on different
/// shards every time. Counting every connection alike, the second consumer
/// tied (one connection each side) and stayed on the shard that accepted
/// it, the first consumer's in about half the trials.
#[test]
fn a_clients_metadata_connection_does_not_put_its_two_consumers_on_one_shard() {
    use kafka_protocol::messages::{FetchRequest, MetadataRequest};

    let dir = tempfile::tempdir().unwrap();
    let broker = two_shard_broker(dir.path());
    let data_once =
        |want: usize| shard_gauges_once(&broker, "sluice_kafka_shard_data_connections", want);
    for trial in 0..8 {
        let mut metadata = versions_wire(&broker);
        let answer = metadata.call(12, &MetadataRequest::default());
        assert!(!answer.brokers.is_empty(), "the broker lists itself");
        assert_eq!(
            data_once(0),
            (0.0, 0.0),
            "metadata only: no data connection"
        );
        let mut consumers: Vec<Wire> = (0..2).map(|_| versions_wire(&broker)).collect();
        for consumer in &mut consumers {
            let answer = consumer.call(12, &FetchRequest::default().with_max_wait_ms(0));
            assert_eq!(answer.error_code, 0, "an empty fetch is answered");
        }
        assert_eq!(
            data_once(2),
            (1.0, 1.0),
            "trial {trial}: one consumer on each shard"
        );
        drop((metadata, consumers));
        data_once(0);
        shard_gauges_once(&broker, "sluice_kafka_shard_connections", 0);
    }
}
