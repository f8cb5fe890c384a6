//! Delayed delivery with a real client (issue 18; ARCHITECTURE.md,
//! "Delayed delivery, retry and dead letters"): librdkafka produces records
//! with the delay headers, a topic delay holds records without one, and a
//! consumer sees each delayed record once, at a new offset, no earlier than
//! its due time, with its origin in headers; `kill -9` with thousands
//! pending delivers each exactly once after the restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use crate::broker_process::BrokerProcess;
use crate::kafka_clients::{self, Record};

/// Short levels, so that a test waits seconds, not RocketMQ's minutes.
const LEVELS_MS: [u64; 3] = [400, 900, 1500];
/// How late after its due time a record may arrive on a loaded 2-core CI
/// machine (the timer looks every 10 ms).
const LATE_MS: i64 = 2_500;

fn start(dir: &Path) -> BrokerProcess {
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!("[delay]\nlevels_ms = {LEVELS_MS:?}\n[metrics]\nrefresh_interval_ms = 100\n"),
    )
    .unwrap();
    BrokerProcess::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub(crate) fn header<'r>(record: &'r Record, name: &str) -> Option<&'r str> {
    record
        .headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| std::str::from_utf8(value).unwrap())
}

/// Poll `topic` partition 0 from offset 0 until `expected` records came
/// or `wait` passed, then `quiet` more to catch any extra one.
pub(crate) fn consume_until(
    address: &str,
    topic: &str,
    expected: usize,
    wait: Duration,
    quiet: Duration,
) -> Vec<Record> {
    let consumer = kafka_clients::consumer(address, &[]);
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(0))
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + wait;
    let mut quiet_until = None;
    loop {
        if records.len() >= expected && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + quiet);
        }
        if quiet_until.is_some_and(|until| Instant::now() >= until) || Instant::now() >= deadline {
            return records;
        }
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(message)) => records.push(kafka_clients::to_record(&message)),
            Some(Err(error)) => panic!("consume failed: {error}"),
            None => {}
        }
    }
}

/// One produced batch mixing immediate records with every kind of delay:
/// the immediate ones are served at once at their offsets, in order; each
/// delayed one comes once, at a new offset after them, stamped no earlier
/// than its due time and not much later, with its key, value and headers
/// and its origin offset and timestamp in headers; a restart delivers
/// nothing again. (Mutation: delivery notes not finishing their entries →
/// each record delivered again after the restart.)
#[test]
fn delayed_records_come_once_at_their_due_time_and_immediate_ones_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    kafka_clients::create_topic(&broker.address, "later", 1, &[]);
    let (producer, acks) = kafka_clients::producer(&broker.address, &[("linger.ms", "100")]);
    let produced_at = now_ms();
    let at = (produced_at + 1_200).to_string();
    // (value, headers, delay in ms)
    type Produced<'a> = (&'a str, &'a [(&'a str, &'a [u8])], i64);
    let records: [Produced<'_>; 6] = [
        ("now-a", &[], 0),
        (
            "level-1",
            &[("sluice.delay.level", b"1"), ("trace", b"t1")],
            400,
        ),
        ("ms-700", &[("sluice.delay.ms", b"700")], 700),
        ("now-b", &[("sluice.other", b"x")], 0),
        ("at", &[("sluice.deliver.at.ms", at.as_bytes())], 1_200),
        ("level-3", &[("sluice.delay.level", b"3")], 1_500),
    ];
    for (value, headers, _) in &records {
        kafka_clients::send(
            &producer,
            "later",
            Some(0),
            Some(b"k"),
            value.as_bytes(),
            headers,
        );
    }
    let acked = kafka_clients::flush(&producer, &acks);
    let origin: BTreeMap<String, i64> = acked
        .iter()
        .map(|record| {
            (
                String::from_utf8(record.payload.clone()).unwrap(),
                record.offset,
            )
        })
        .collect();
    let offsets: Vec<i64> = records.iter().map(|(value, _, _)| origin[*value]).collect();
    assert_eq!(
        offsets,
        [0, 1, 2, 3, 4, 5],
        "acknowledged at their origin offsets"
    );

    let immediate = consume_until(
        &broker.address,
        "later",
        2,
        Duration::from_secs(10),
        Duration::ZERO,
    );
    let seen: Vec<(i64, &str)> = immediate
        .iter()
        .map(|record| (record.offset, std::str::from_utf8(&record.payload).unwrap()))
        .collect();
    assert_eq!(
        seen,
        [(0, "now-a"), (3, "now-b")],
        "the immediate records at once"
    );
    assert!(
        now_ms() < produced_at + 400,
        "the immediate records did not wait for the delayed ones"
    );

    let all = consume_until(
        &broker.address,
        "later",
        6,
        Duration::from_secs(20),
        Duration::from_secs(1),
    );
    assert_eq!(all.len(), 6, "each delayed record once: {all:?}");
    for record in &all[2..] {
        let value = std::str::from_utf8(&record.payload).unwrap();
        let (_, headers, delay_ms) = records.iter().find(|(name, _, _)| *name == value).unwrap();
        assert!(
            record.offset >= 6,
            "{value} at a new offset: {}",
            record.offset
        );
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(
            header(record, "sluice.origin.offset"),
            Some(origin[value].to_string().as_str()),
            "{value}"
        );
        let origin_timestamp: i64 = header(record, "sluice.origin.timestamp")
            .unwrap()
            .parse()
            .unwrap();
        assert!(origin_timestamp >= produced_at - 1_000 && origin_timestamp <= produced_at + 1_000);
        let delivered = record.timestamp.unwrap();
        let due = if value == "at" {
            produced_at + 1_200
        } else {
            origin_timestamp + delay_ms
        };
        assert!(
            delivered >= due,
            "{value}: delivered at {delivered}, due {due}"
        );
        assert!(
            delivered <= due + LATE_MS,
            "{value}: delivered {} ms after its due time",
            delivered - due
        );
        for (name, content) in headers.iter() {
            assert_eq!(
                header(record, name).map(str::as_bytes),
                Some(*content),
                "{value}"
            );
        }
        assert_eq!(
            header(record, "sluice.due.ms"),
            None,
            "internal header removed"
        );
    }
    let order: Vec<&str> = all[2..]
        .iter()
        .map(|record| std::str::from_utf8(&record.payload).unwrap())
        .collect();
    assert_eq!(
        order,
        ["level-1", "ms-700", "at", "level-3"],
        "in due order"
    );
    // Delivered is done: a restart delivers nothing again.
    assert!(broker.stop().success());
    let broker = start(dir.path());
    let again = consume_until(
        &broker.address,
        "later",
        6,
        Duration::from_secs(10),
        Duration::from_secs(1),
    );
    assert_eq!(again, all, "nothing delivered again after a restart");
    let _ = broker.stop();
}

/// A bad delay header refuses its batch with INVALID_RECORD, and nothing of
/// it is stored (mutation: errors ignored as no delay → stored).
#[test]
fn a_bad_delay_header_refuses_the_record_with_invalid_record() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    kafka_clients::create_topic(&broker.address, "strict", 1, &[]);
    for headers in [
        &[("sluice.delay.ms", &b"soon"[..])][..],
        &[("sluice.delay.level", b"4")],
        &[("sluice.delay.ms", b"1"), ("sluice.delay.level", b"1")],
        &[("sluice.deliver.at.ms", b"99999999999999999")],
        // The broker's own header (a client's would have been read as the
        // due time of every delayed record of its batch).
        &[("sluice.due.ms", b"abc"), ("sluice.delay.ms", b"100")],
    ] {
        let (producer, acks) =
            kafka_clients::producer(&broker.address, &[("message.timeout.ms", "5000")]);
        kafka_clients::send(&producer, "strict", Some(0), None, b"bad", headers);
        let _ = producer.flush(Duration::from_secs(10));
        let failed = acks.failed.lock().unwrap().clone();
        assert_eq!(failed.len(), 1, "{headers:?}: {failed:?}");
        assert!(
            failed[0].contains("InvalidRecord") || failed[0].contains("invalid record"),
            "{headers:?}: {}",
            failed[0]
        );
    }
    assert_eq!(
        kafka_clients::high_watermarks(&broker.address, "strict", 1),
        [0]
    );
    let _ = broker.stop();
}

/// The sum of every series of metric `name` (`sluice_…`), scraped.
pub(crate) fn metric_sum(metrics: &str, name: &str) -> f64 {
    let (_, body) = crate::metrics::get(metrics, "/metrics");
    body.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Produce `records` records to `topic` partition 0, delayed from
/// `from_ms` to `from_ms` + 4 s in every order; how many were acknowledged.
pub(crate) fn produce_spread(address: &str, topic: &str, records: usize, from_ms: usize) -> usize {
    let (producer, acks) = kafka_clients::producer(address, &[("linger.ms", "20")]);
    for index in 0..records {
        let delay = (from_ms + (index * 7_919) % 4_000).to_string();
        kafka_clients::send(
            &producer,
            topic,
            Some(0),
            None,
            format!("r{index}").as_bytes(),
            &[("sluice.delay.ms", delay.as_bytes())],
        );
    }
    kafka_clients::flush(&producer, &acks).len()
}

/// `delivered` holds one delivery of each of `expected` delayed records
/// (told apart by their `sluice.origin.offset`), none twice.
pub(crate) fn assert_each_delivered_once(delivered: &[Record], expected: usize) {
    let mut origins: BTreeMap<i64, usize> = BTreeMap::new();
    for record in delivered {
        let origin: i64 = header(record, "sluice.origin.offset")
            .expect("a delivered record names its origin")
            .parse()
            .unwrap();
        *origins.entry(origin).or_default() += 1;
    }
    let twice: Vec<_> = origins.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        twice.is_empty(),
        "{} records delivered more than once, first: {:?}",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    assert_eq!(origins.len(), expected, "every delayed record delivered");
}

/// Wait (up to 10 s) until `check` holds.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A topic's `sluice.delivery.delay.ms` holds every record without a delay
/// header of its own; a record may ask for none with `sluice.delay.ms: 0`.
/// The gauges show the record pending, then delivered.
#[test]
fn a_topic_delay_holds_records_without_a_header_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    kafka_clients::create_topic(
        &broker.address,
        "slow",
        1,
        &[("sluice.delivery.delay.ms", "4000")],
    );
    let (producer, acks) = kafka_clients::producer(&broker.address, &[]);
    kafka_clients::send(&producer, "slow", Some(0), None, b"held", &[]);
    let zero: &[(&str, &[u8])] = &[("sluice.delay.ms", b"0")];
    kafka_clients::send(&producer, "slow", Some(0), None, b"now", zero);
    kafka_clients::flush(&producer, &acks);
    let first = consume_until(
        &broker.address,
        "slow",
        1,
        Duration::from_secs(10),
        Duration::ZERO,
    );
    assert_eq!(first[0].payload, b"now");
    eventually("the held record in the gauges", || {
        metric_sum(&broker.metrics, "sluice_delay_pending_records") == 1.0
            && metric_sum(&broker.metrics, "sluice_delay_pending_bytes") > 4.0
    });
    let all = consume_until(
        &broker.address,
        "slow",
        2,
        Duration::from_secs(10),
        Duration::from_millis(500),
    );
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].payload, b"held");
    assert_eq!(header(&all[1], "sluice.origin.offset"), Some("0"));
    eventually("the delivery in the gauges", || {
        metric_sum(&broker.metrics, "sluice_delay_pending_records") == 0.0
            && metric_sum(&broker.metrics, "sluice_delay_pending_bytes") == 0.0
            && metric_sum(&broker.metrics, "sluice_delay_delivered_records_total") == 1.0
    });
    assert_eq!(
        metric_sum(&broker.metrics, "sluice_delay_due_lag_seconds"),
        0.0
    );
    let _ = broker.stop();
}

/// `kill -9` while 10 000 acknowledged delayed records are pending, some
/// delivered already, due over the next seconds: after the restart each is
/// delivered exactly once (mutation: recovery not replaying delivery notes
/// → the records delivered before the kill come again).
#[test]
fn pending_delayed_records_survive_kill_9_and_each_is_delivered_exactly_once() {
    const RECORDS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    kafka_clients::create_topic(&broker.address, "timed", 1, &[]);
    assert_eq!(
        produce_spread(&broker.address, "timed", RECORDS, 1_000),
        RECORDS
    );
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(2_500));
    broker.kill9();
    let broker = start(dir.path());
    let wait = Duration::from_secs(5).saturating_sub(killed_at.elapsed()) + Duration::from_secs(30);
    let all = consume_until(
        &broker.address,
        "timed",
        RECORDS,
        wait,
        Duration::from_secs(2),
    );
    for record in &all {
        assert!(
            record.offset >= RECORDS as i64,
            "only deliveries: {record:?}"
        );
    }
    assert_each_delivered_once(&all, RECORDS);
    let _ = broker.stop();
}

/// [`start`] with the delayed-delivery clock moved by the offset (ms) in
/// `clock`, a file the test rewrites (debug builds' `SLUICE_TEST_CLOCK_FILE`).
fn start_with_clock(dir: &Path, clock: &Path) -> BrokerProcess {
    let config = dir.join("sluice.toml");
    std::fs::write(&config, "[metrics]\nrefresh_interval_ms = 100\n").unwrap();
    let mut command =
        BrokerProcess::command(&dir.join("data"), &["--config", config.to_str().unwrap()]);
    command.env("SLUICE_TEST_CLOCK_FILE", clock);
    BrokerProcess::start_command(command)
}

/// A record due 20 days ahead, past the timer wheel's 7-day window, is
/// held through a restart and through the clock passing the window (where
/// it waits in the window's last slot and is listed again through a roll
/// note), then delivered once when the clock reaches it. The clock is moved
/// (debug builds' `SLUICE_TEST_CLOCK_FILE`), not waited for. (Mutation:
/// the checkpoint recording no timer entries → the record is lost at the
/// restart. The wheel holds an entry in its slot whatever the loaded set
/// does, so two mutations of the index's own checks are needed to deliver
/// it early; its unit tests cover those.)
#[test]
fn a_record_due_weeks_ahead_is_held_until_then_across_a_restart() {
    const DAY_MS: i64 = 24 * 3_600_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock-offset-ms");
    std::fs::write(&clock, "0").unwrap();
    let broker = start_with_clock(dir.path(), &clock);
    kafka_clients::create_topic(&broker.address, "far", 1, &[]);
    let (producer, acks) = kafka_clients::producer(&broker.address, &[]);
    let at = (now_ms() + 20 * DAY_MS).to_string();
    let headers: &[(&str, &[u8])] = &[("sluice.deliver.at.ms", at.as_bytes())];
    kafka_clients::send(&producer, "far", Some(0), Some(b"k"), b"weeks", headers);
    kafka_clients::flush(&producer, &acks);
    let quiet = |address: &str| {
        consume_until(
            address,
            "far",
            1,
            Duration::from_millis(1_500),
            Duration::ZERO,
        )
    };
    assert!(quiet(&broker.address).is_empty(), "held at first");
    std::fs::write(&clock, (10 * DAY_MS).to_string()).unwrap();
    assert!(quiet(&broker.address).is_empty(), "held 10 days on");
    assert!(broker.stop().success());
    let broker = start_with_clock(dir.path(), &clock);
    assert!(quiet(&broker.address).is_empty(), "held after a restart");
    std::fs::write(&clock, (20 * DAY_MS + 1_000).to_string()).unwrap();
    let delivered = consume_until(
        &broker.address,
        "far",
        1,
        Duration::from_secs(10),
        Duration::from_millis(1_500),
    );
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].payload, b"weeks");
    assert_eq!(header(&delivered[0], "sluice.origin.offset"), Some("0"));
    let _ = broker.stop();
}

/// `sluice delays count` shows the pending delayed records per topic and
/// `sluice delays list` by due time; a topic whose records were delivered
/// leaves them. (Mutation: the per-minute counts not lowered at delivery →
/// `soon` stays listed.)
#[test]
fn sluice_delays_shows_the_pending_records_per_topic_and_due_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let (producer, acks) = kafka_clients::producer(&broker.address, &[]);
    for (topic, delay_ms, count) in [
        ("soon", &b"1500"[..], 2),
        ("much.later", &b"120000"[..], 2),
        ("much.later", &b"1800000"[..], 3),
    ] {
        for _ in 0..count {
            kafka_clients::send(
                &producer,
                topic,
                Some(0),
                None,
                b"v",
                &[("sluice.delay.ms", delay_ms)],
            );
        }
    }
    kafka_clients::flush(&producer, &acks);
    let delays = |command: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["delays", command, "--metrics", &broker.metrics])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let row = |text: &str, topic: &str| -> Vec<String> {
        text.lines()
            .map(|line| {
                line.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .find(|cells| cells.first().is_some_and(|cell| cell == topic))
            .unwrap_or_default()
    };
    eventually("7 pending records counted", || {
        delays("count").contains("7 delayed record(s) pending in 2 topic(s)")
    });
    let counted = delays("count");
    assert_eq!(row(&counted, "much.later")[1], "5", "{counted}");
    let next_due = row(&counted, "much.later")[2..].join(" ");
    assert!(
        next_due == "in 1m" || next_due == "in 2m",
        "due in 2 minutes, counted by minute: {counted}"
    );
    let listed = delays("list");
    assert_eq!(
        row(&listed, "much.later"),
        ["much.later", "0", "0", "2", "3", "0", "0", "0"],
        "due within 10 minutes and within an hour:\n{listed}"
    );
    eventually("soon's records delivered and gone from the count", || {
        let counted = delays("count");
        counted.contains("5 delayed record(s) pending in 1 topic(s)")
            && row(&counted, "soon").is_empty()
    });
}
