//! Consumer retries and dead letters with real clients (issue 18;
//! ARCHITECTURE.md, "Delayed delivery, retry and dead letters"): a
//! kafka-python consumer group that fails every record sends it back to
//! `G.retry` and sees it come back with a growing back-off and a growing
//! `sluice.reconsume.times`, then finds it once in `G.dlq` with its
//! provenance; librdkafka's producer gets INVALID_RECORD for a bad count.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use serde::Deserialize;

use crate::broker_process::BrokerProcess;
use crate::kafka_clients;
use crate::test_clients;

/// Short levels: attempt k (from 0) waits level k + 3, the last one past
/// the table: 300 ms, 400 ms, then 600 ms.
const LEVELS_MS: [u64; 5] = [100, 200, 300, 400, 600];
const BACK_OFF_MS: [i64; 3] = [300, 400, 600];
/// Retries before a record is dead-lettered.
const MAX_RECONSUME_TIMES: u32 = 3;
/// How late after its back-off a retried record may come back on a loaded
/// 2-core CI machine (the timer looks every 10 ms; the consumer polls).
const LATE_MS: i64 = 3_000;

fn start(dir: &Path, extra: &str) -> BrokerProcess {
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[delay]\nlevels_ms = {LEVELS_MS:?}\nmax_reconsume_times = {MAX_RECONSUME_TIMES}\n\
             [metrics]\nrefresh_interval_ms = 100\n{extra}"
        ),
    )
    .unwrap();
    BrokerProcess::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

#[derive(Debug, Deserialize)]
struct RetryReport {
    client: String,
    error: Option<String>,
    seen: Vec<Seen>,
    sent: Vec<Sent>,
    dead: Vec<Dead>,
    origin: BTreeMap<String, i64>,
}

#[derive(Debug, Deserialize)]
struct Seen {
    value: String,
    topic: String,
    times: u32,
    arrived_ms: i64,
}

#[derive(Debug, Deserialize)]
struct Sent {
    value: String,
    times: u32,
    sent_ms: i64,
}

#[derive(Debug, Deserialize)]
struct Dead {
    value: String,
    headers: BTreeMap<String, String>,
}

/// kafka-python's group fails each of 5 records 4 times: each comes back
/// from `g.retry` 3 times, with counts 1, 2, 3, each no earlier than its
/// back-off after it was sent back (300, 400, 600 ms) and not much later;
/// the 4th failure moves it to `g.dlq` at once, where it is found exactly
/// once with its original topic, partition and offset and the attempts
/// made, and nothing more comes back. (Mutations: the count not raised →
/// records retry forever and none is dead-lettered; the back-off not
/// applied → they come back early; dead letters delivered to the retry
/// partition instead of `g.dlq` → none found there.)
#[test]
fn a_consumer_failing_every_record_sees_it_back_off_then_finds_it_in_the_dead_letter_topic() {
    let test = "retry_dlq_kafka_python";
    let Some(clients) = test_clients::installed(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "");
    kafka_clients::create_topic(&broker.address, "orders", 1, &[]);
    const COUNT: usize = 5;
    let mut client = clients.python(
        "kafka_python_retry_consumer.py",
        &[
            &broker.address,
            "orders",
            "g",
            &COUNT.to_string(),
            "60",
            "2",
        ],
    );
    let report: RetryReport = client.finish_as(Duration::from_secs(120));
    assert!(
        report.error.is_none(),
        "{}: {:?}\n{}",
        report.client,
        report.error,
        client.stderr_tail()
    );
    for index in 0..COUNT {
        let value = format!("r{index}");
        let seen: Vec<&Seen> = report.seen.iter().filter(|s| s.value == value).collect();
        let topics: Vec<(&str, u32)> = seen.iter().map(|s| (s.topic.as_str(), s.times)).collect();
        assert_eq!(
            &topics[..topics.len().min(6)],
            [
                ("orders", 0),
                ("g.retry", 1),
                ("g.retry", 2),
                ("g.retry", 3)
            ],
            "{value}: consumed once from its topic, then once per retry ({} times in all)",
            topics.len()
        );
        let sent: Vec<&Sent> = report.sent.iter().filter(|s| s.value == value).collect();
        assert_eq!(sent.len(), 4, "{value}: failed 4 times");
        for attempt in 0..3 {
            assert_eq!(sent[attempt].times, attempt as u32);
            let waited = seen[attempt + 1].arrived_ms - sent[attempt].sent_ms;
            assert!(
                waited >= BACK_OFF_MS[attempt] - 5,
                "{value}: attempt {attempt} came back after {waited} ms, before its back-off of {} ms",
                BACK_OFF_MS[attempt]
            );
            assert!(
                waited <= BACK_OFF_MS[attempt] + LATE_MS,
                "{value}: attempt {attempt} came back {waited} ms after it was sent back"
            );
        }
        let dead: Vec<&Dead> = report.dead.iter().filter(|d| d.value == value).collect();
        assert_eq!(dead.len(), 1, "{value}: dead-lettered exactly once");
        let headers = &dead[0].headers;
        let origin = report.origin[&value].to_string();
        for (name, expected) in [
            ("sluice.dlq.topic", "orders"),
            ("sluice.dlq.partition", "0"),
            ("sluice.dlq.offset", origin.as_str()),
            ("sluice.reconsume.times", "3"),
        ] {
            assert_eq!(
                headers.get(name).map(String::as_str),
                Some(expected),
                "{value}: header {name} of its dead letter: {headers:?}"
            );
        }
        assert!(
            !headers.contains_key("sluice.target.partition"),
            "the broker's own header stays inside"
        );
    }
    assert_eq!(report.dead.len(), COUNT, "nothing else dead-lettered");
    replay_puts_the_dead_letters_back(&broker, &report, COUNT);
    let (_, metrics) = crate::metrics::get(&broker.metrics, "/metrics");
    assert!(
        metrics.contains("sluice_retry_records_total{group=\"g\"} 15"),
        "15 retries counted for group g:\n{}",
        grep(&metrics, "sluice_retry")
    );
    assert!(
        metrics.contains("sluice_topic_records_in_total{topic=\"g.retry\"} 20"),
        "the 20 records sent back count as produced to g.retry, held or not:\n{}",
        grep(&metrics, "records_in")
    );
    assert!(
        metrics.contains("sluice_dead_letter_records_total{group=\"g\"} 5"),
        "5 dead letters counted for group g:\n{}",
        grep(&metrics, "sluice_dead_letter")
    );
}

/// `sluice dlq list g` shows the dead letters and where each failed;
/// `sluice dlq replay g` is a dry run, then with `--execute` produces each
/// once back to `orders` partition 0, without the broker's headers, and a
/// second replay finds nothing left. (Mutation: replay not committing its
/// offsets → the second replay produces them again.)
fn replay_puts_the_dead_letters_back(broker: &BrokerProcess, report: &RetryReport, count: usize) {
    let admin = |args: &[&str]| crate::consumer_groups::sluice_admin(&broker.address, args);
    let (ok, listed) = admin(&["dlq", "list", "g"]);
    assert!(ok, "{listed}");
    assert!(
        listed.contains(&format!("{count} dead letters in g.dlq")),
        "{listed}"
    );
    for (value, origin) in &report.origin {
        assert!(
            listed.contains(&format!("orders-0@{origin}")),
            "{value}: {listed}"
        );
    }
    let (ok, planned) = admin(&["dlq", "replay", "g"]);
    assert!(ok && planned.contains("dry run"), "{planned}");
    assert_eq!(
        kafka_clients::high_watermarks(&broker.address, "orders", 1),
        [count as i64],
        "a dry run produces nothing"
    );
    let (ok, replayed) = admin(&["dlq", "replay", "g", "--execute"]);
    assert!(ok, "{replayed}");
    assert!(
        replayed.contains(&format!("replayed {count} dead letters")),
        "{replayed}"
    );
    let (ok, again) = admin(&["dlq", "replay", "g", "--execute"]);
    assert!(ok && again.contains("nothing to replay"), "{again}");
    let back = crate::delayed_delivery::consume_until(
        &broker.address,
        "orders",
        2 * count,
        Duration::from_secs(30),
        Duration::from_millis(500),
    );
    let back: Vec<_> = back.iter().skip(count).collect();
    let mut values: Vec<String> = back
        .iter()
        .map(|record| String::from_utf8(record.payload.clone()).unwrap())
        .collect();
    values.sort();
    let expected: Vec<String> = report.origin.keys().cloned().collect();
    assert_eq!(values, expected, "each dead letter back once");
    for record in back {
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        let broker_headers: Vec<&String> = record
            .headers
            .iter()
            .map(|(key, _)| key)
            .filter(|key| key.starts_with("sluice."))
            .collect();
        assert!(broker_headers.is_empty(), "{broker_headers:?}");
    }
}

fn grep(text: &str, needle: &str) -> String {
    text.lines()
        .filter(|line| line.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A retry with a count that is not a number, or with only part of its
/// provenance, is refused with INVALID_RECORD and nothing is stored; a
/// retry topic's `sluice.max.reconsume.times` of 0 sends the first failure
/// straight to the dead-letter topic, named by its place in `G.retry`
/// when the consumer did not name it. (Mutation: bad counts read as 0 →
/// the first send is acknowledged.)
#[test]
fn bad_retry_headers_are_refused_and_a_group_setting_of_0_dead_letters_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "");
    // librdkafka's consumers ask for no auto-creation; a group's retry and
    // dead-letter topics are created anyway when named, so subscribing to
    // them is enough (the dead-letter topic with a partition per shard).
    // (Mutation: Metadata honouring the flag for them → unknown topic.)
    let consumer =
        kafka_clients::consumer(&broker.address, &[("allow.auto.create.topics", "false")]);
    for (topic, partitions) in [("sub.retry", Some(1)), ("sub.dlq", Some(2)), ("sub", None)] {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let found = &metadata.topics()[0];
        match partitions {
            Some(count) => {
                assert_eq!(found.error(), None, "{topic}");
                assert_eq!(found.partitions().len(), count, "{topic}");
            }
            None => assert!(found.error().is_some(), "{topic} is not created"),
        }
    }
    for headers in [
        &[("sluice.reconsume.times", &b"two"[..])][..],
        &[("sluice.retry.topic", &b"orders"[..])][..],
    ] {
        let (producer, acks) = kafka_clients::producer(&broker.address, &[("retries", "0")]);
        kafka_clients::send(&producer, "bad.retry", Some(0), None, b"x", headers);
        producer.flush(Duration::from_secs(30)).unwrap();
        let failed = acks.failed.lock().unwrap().clone();
        assert_eq!(failed.len(), 1, "{headers:?} refused: {failed:?}");
        assert!(
            failed[0].contains("validate record") || failed[0].contains("InvalidRecord"),
            "{failed:?}"
        );
    }
    assert_eq!(
        kafka_clients::high_watermarks(&broker.address, "bad.retry", 1),
        [0],
        "nothing stored"
    );

    kafka_clients::create_topic(
        &broker.address,
        "now.retry",
        1,
        &[("sluice.max.reconsume.times", "0")],
    );
    let (producer, acks) = kafka_clients::producer(&broker.address, &[]);
    kafka_clients::send(&producer, "now.retry", Some(0), Some(b"k"), b"v", &[]);
    let acked = kafka_clients::flush(&producer, &acks);
    let dlq_partitions = 2; // the broker's 2 shards, one partition each
    let dead = kafka_clients::consume(&broker.address, "now.dlq", dlq_partitions, 0, 1);
    assert_eq!(dead.len(), 1);
    let header = |name: &str| crate::delayed_delivery::header(&dead[0], name);
    assert_eq!(header("sluice.dlq.topic"), Some("now.retry"));
    assert_eq!(header("sluice.dlq.partition"), Some("0"));
    let origin = acked[0].offset.to_string();
    assert_eq!(header("sluice.dlq.offset"), Some(origin.as_str()));
    assert_eq!(header("sluice.reconsume.times"), Some("0"));
    assert_eq!(dead[0].payload, b"v");
    assert_eq!(
        kafka_clients::high_watermarks(&broker.address, "now.retry", 1),
        [1],
        "the retry partition only kept its offset"
    );

    // A compacted G.dlq would keep one dead letter per key: it is not
    // used, and the record keeps retrying, counted as such.
    // (Mutation: a compacted G.dlq used → the dead letter lands there.)
    kafka_clients::create_topic(
        &broker.address,
        "kept.retry",
        1,
        &[("sluice.max.reconsume.times", "0")],
    );
    kafka_clients::create_topic(
        &broker.address,
        "kept.dlq",
        2,
        &[("cleanup.policy", "compact")],
    );
    kafka_clients::send(&producer, "kept.retry", Some(0), Some(b"k"), b"v", &[]);
    kafka_clients::flush(&producer, &acks);
    let (_, metrics) = crate::metrics::get(&broker.metrics, "/metrics");
    assert!(
        metrics
            .contains("sluice_retry_without_dead_letter_partition_records_total{group=\"kept\"} 1"),
        "{}",
        grep(&metrics, "sluice_retry")
    );
    assert_eq!(
        kafka_clients::high_watermarks(&broker.address, "kept.dlq", 2),
        [0, 0]
    );
}
