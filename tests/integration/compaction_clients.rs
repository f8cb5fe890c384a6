//! Compacted changelog topics with the stream processors users bring
//! (issue 17, log compaction item 5): a Quix Streams application with
//! `State` and a Faust application with a `Table` keep a running count and
//! sum per key, mirrored to a changelog topic that each framework creates
//! itself with `cleanup.policy=compact` (which Sluice used to refuse).
//!
//! Each test runs its application over a first set of records, stops it,
//! checks the changelog (described as compacted; once the broker's cleaner
//! ran, at most one record per key, holding that key's totals), deletes the
//! application's local state, and runs it again over more records: its state
//! can only come back from the changelog on the broker, so the totals it
//! then outputs must count every record, the first set included, while it
//! processes only the new ones (its committed offsets are kept).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kafka_protocol::messages::IncrementalAlterConfigsRequest;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminOptions, ResourceSpecifier};
use serde::Deserialize;

use crate::broker_process::BrokerProcess;
use crate::kafka_clients::{self, Record};
use crate::test_clients::{self, ClientProcess};
use crate::wire::Wire;

/// Partitions of the input and output topics, and so of the changelogs
/// (both frameworks give a changelog the partitions of its input).
const PARTITIONS: i32 = 3;
/// Keys of the input records: record `n` has key `k<n % KEYS>`.
const KEYS: usize = 10;
/// Records the first run of an application processes.
const FIRST_RECORDS: usize = 300;
/// Records produced for the restarted application.
const MORE_RECORDS: usize = 200;
/// Records per Quix checkpoint: each writes the changed keys' state to the
/// changelog, so the first run leaves about `FIRST_RECORDS / 10` records
/// per key there, and the cleaner has something to remove.
const QUIX_COMMIT_EVERY: usize = 10;
/// `min.cleanable.dirty.ratio` of the changelogs: any new record makes a
/// partition due for cleaning (Kafka's default, 0.5, waits for the head to
/// be as large as the clean section).
const CHANGELOG_DIRTY_RATIO: &str = "0.01";
/// How long an application may take to start and process what it is given.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(40);
/// How long an application may take to stop once its stdin closes.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the cleaner may take to compact a changelog to one record per
/// key.
const COMPACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A cleaner that looks every 200 ms, and a new group assigned after
/// 100 ms instead of 3 s (each application start forms its group anew).
const BROKER_CONFIG: &str = "\
[storage]
cleaner_backoff_ms = 200

[groups]
initial_rebalance_delay_ms = 100
";

/// A count and a sum.
type Totals = (u64, u64);

/// What `quix_stateful.py` and `faust_table.py` report on their last
/// stdout line.
#[derive(Debug, Deserialize)]
struct StatefulReport {
    client: String,
    error: Option<String>,
    /// Records processed in this run.
    processed: usize,
    /// The last totals this run output, per key.
    totals: BTreeMap<String, Totals>,
}

impl StatefulReport {
    /// Panics, with the application's stderr, if it stopped on an error.
    fn assert_clean(&self, application: &ClientProcess) {
        assert!(
            self.error.is_none(),
            "{}: {:?};\n{}",
            self.client,
            self.error,
            application.stderr_tail()
        );
    }
}

fn start_broker(dir: &Path) -> BrokerProcess {
    let config = dir.join("sluice.toml");
    std::fs::write(&config, BROKER_CONFIG).unwrap();
    BrokerProcess::start(
        &dir.join("data"),
        &["--config", config.to_str().expect("the temp path is UTF-8")],
    )
}

/// Produce records `first..first + count` to `topic`: key `k<n % KEYS>`,
/// value `n` in decimal.
fn produce_amounts(address: &str, topic: &str, first: usize, count: usize) {
    let (producer, acks) = kafka_clients::producer(address, &[]);
    for n in first..first + count {
        let key = format!("k{}", n % KEYS);
        kafka_clients::send(
            &producer,
            topic,
            None,
            Some(key.as_bytes()),
            n.to_string().as_bytes(),
            &[],
        );
    }
    assert_eq!(kafka_clients::flush(&producer, &acks).len(), count);
}

/// The totals of each key over records `0..records`.
fn expected_totals(records: usize) -> BTreeMap<String, Totals> {
    let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
    for n in 0..records {
        let entry = totals.entry(format!("k{}", n % KEYS)).or_default();
        entry.0 += 1;
        entry.1 += n as u64;
    }
    totals
}

/// Wait until `application` wrote `count` "processed" lines.
fn wait_processed(application: &mut ClientProcess, count: usize, what: &str) {
    assert!(
        application.wait_for_stderr_lines("processed ", count, PROGRESS_TIMEOUT),
        "{what}: {} of {count} records processed when the application exited or \
         {PROGRESS_TIMEOUT:?} passed;\n{}",
        application.stderr_lines("processed "),
        application.stderr_tail()
    );
}

/// The last totals per key in the output topic (JSON `{"key", "count",
/// "sum"}`; one key stays on one partition, so its last record is its
/// latest).
fn output_totals(address: &str, output: &str) -> BTreeMap<String, Totals> {
    #[derive(Deserialize)]
    struct Output {
        key: String,
        count: u64,
        sum: u64,
    }
    let mut totals = BTreeMap::new();
    for record in kafka_clients::consume_all(address, output, PARTITIONS, Duration::from_secs(1)) {
        let output: Output = serde_json::from_slice(&record.payload).unwrap_or_else(|error| {
            panic!(
                "{output}: {:?} at {}@{} is not a total: {error}",
                String::from_utf8_lossy(&record.payload),
                record.partition,
                record.offset
            )
        });
        totals.insert(output.key, (output.count, output.sum));
    }
    totals
}

/// `name`'s configs as librdkafka's admin client describes them.
fn topic_configs(address: &str, name: &str) -> BTreeMap<String, Option<String>> {
    let admin = kafka_clients::admin(address);
    let described = futures_executor::block_on(
        admin.describe_configs([&ResourceSpecifier::Topic(name)], &AdminOptions::new()),
    )
    .expect("DescribeConfigs answered");
    let resource = described[0]
        .as_ref()
        .unwrap_or_else(|error| panic!("DescribeConfigs {name}: {error}"));
    resource
        .entries
        .iter()
        .map(|entry| (entry.name.clone(), entry.value.clone()))
        .collect()
}

/// Set `min.cleanable.dirty.ratio` of `topic` to [`CHANGELOG_DIRTY_RATIO`]
/// with IncrementalAlterConfigs (librdkafka's admin has only the legacy
/// AlterConfigs, which would drop the configs the framework set).
fn make_eagerly_cleanable(address: &str, topic: &str) {
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.to_owned()))
            .with_configs(vec![
                AlterableConfig::default()
                    .with_name(StrBytes::from_static_str("min.cleanable.dirty.ratio"))
                    .with_config_operation(0)
                    .with_value(Some(StrBytes::from_static_str(CHANGELOG_DIRTY_RATIO))),
            ]),
    ]);
    let response = Wire::connect(address).call(1, &request);
    assert_eq!(
        response.responses[0].error_code, 0,
        "IncrementalAlterConfigs {topic}: {:?}",
        response.responses[0].error_message
    );
}

/// Read `changelog` from offset 0 until the cleaner has left exactly one
/// record per key and each holds `expected` (at most
/// [`COMPACTION_TIMEOUT`]); `key_of` turns a changelog key into the input
/// key it belongs to. Returns how many records the changelog was written
/// with (the sum of its high watermarks), to show what the cleaner removed.
fn assert_compacted_to_totals(
    address: &str,
    changelog: &str,
    expected: &BTreeMap<String, Totals>,
    key_of: impl Fn(&[u8]) -> String,
) -> i64 {
    let deadline = Instant::now() + COMPACTION_TIMEOUT;
    let by_key = loop {
        let records =
            kafka_clients::consume_all(address, changelog, PARTITIONS, Duration::from_secs(1));
        let by_key = changelog_by_key(changelog, &records, &key_of);
        if records.len() == expected.len() || Instant::now() > deadline {
            break by_key;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let copies: BTreeMap<&String, usize> = by_key
        .iter()
        .map(|(key, values)| (key, values.len()))
        .collect();
    assert!(
        copies.values().all(|copies| *copies == 1),
        "{changelog}: records per key after {COMPACTION_TIMEOUT:?} of cleaning: {copies:?}"
    );
    let latest: BTreeMap<String, Totals> = by_key
        .into_iter()
        .map(|(key, mut values)| (key, values.remove(0)))
        .collect();
    assert_eq!(
        &latest, expected,
        "{changelog}: the compacted changelog holds each key's totals"
    );
    kafka_clients::high_watermarks(address, changelog, PARTITIONS)
        .iter()
        .sum()
}

/// The totals each changelog record holds, per input key.
fn changelog_by_key(
    changelog: &str,
    records: &[Record],
    key_of: &impl Fn(&[u8]) -> String,
) -> BTreeMap<String, Vec<Totals>> {
    let mut by_key: BTreeMap<String, Vec<Totals>> = BTreeMap::new();
    for record in records {
        let key = record
            .key
            .as_deref()
            .unwrap_or_else(|| panic!("{changelog}: a record without a key at {}", record.offset));
        let totals: Totals = serde_json::from_slice(&record.payload).unwrap_or_else(|error| {
            panic!(
                "{changelog}: {:?} at {}@{} is not [count, sum]: {error}",
                String::from_utf8_lossy(&record.payload),
                record.partition,
                record.offset
            )
        });
        by_key.entry(key_of(key)).or_default().push(totals);
    }
    by_key
}

/// The restarted application's report and output: it processed only the
/// new records, and its totals count all of them, the first run's
/// included (its state came back from the changelog).
fn assert_totals_continue(report: &StatefulReport, address: &str, output: &str) {
    let all = expected_totals(FIRST_RECORDS + MORE_RECORDS);
    assert_eq!(
        report.processed, MORE_RECORDS,
        "{}: the restarted application processes the new records only",
        report.client
    );
    assert_eq!(
        report.totals, all,
        "{}: the totals after the restart count every record (first: the restored state)",
        report.client
    );
    assert_eq!(
        output_totals(address, output),
        all,
        "{}: the last totals in {output}",
        report.client
    );
}

/// Issue 17, log compaction item 5: a Quix Streams 3 application with a
/// per-key count and sum in `State` (`sdf.apply(..., stateful=True)`, a
/// checkpoint every 10 records) processes 300 records of 10 keys, then
/// stops. Quix created its changelog `changelog__<group>--<input>--default`
/// with cleanup.policy=compact; with its min.cleanable.dirty.ratio at 0.01,
/// the cleaner leaves one record per key, the key's totals. With its state
/// directory deleted, the application restores from that changelog ("Recovery
/// successful" for every partition), processes 200 new records, and outputs
/// totals over all 500.
#[test]
fn quix_streams_state_is_restored_from_its_compacted_changelog() {
    let test = "quix_streams_state_restored_from_changelog";
    let Some(clients) = test_clients::installed(test) else {
        return;
    };
    let (input, output, group) = ("quix-amounts", "quix-totals", "quix-stateful");
    let changelog = format!("changelog__{group}--{input}--default");
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let address = broker.address.clone();
    for topic in [input, output] {
        kafka_clients::create_topic(&address, topic, PARTITIONS, &[]);
    }
    let state_dir = dir.path().join("quix-state");
    let state_dir_text = state_dir.to_str().expect("the temp path is UTF-8");
    let commit_every = QUIX_COMMIT_EVERY.to_string();
    let args = [
        address.as_str(),
        input,
        output,
        group,
        state_dir_text,
        &commit_every,
    ];

    produce_amounts(&address, input, 0, FIRST_RECORDS);
    let mut first = clients.quix("quix_stateful.py", &args);
    wait_processed(&mut first, FIRST_RECORDS, "first run");
    let report: StatefulReport = first.finish_as(STOP_TIMEOUT);
    report.assert_clean(&first);
    assert_eq!(report.totals, expected_totals(FIRST_RECORDS));

    let configs = topic_configs(&address, &changelog);
    assert_eq!(
        configs.get("cleanup.policy"),
        Some(&Some("compact".to_owned())),
        "{changelog} as Quix created it"
    );
    make_eagerly_cleanable(&address, &changelog);
    // Quix's changelog key is the message key, "|", and the state key.
    let key_of = |key: &[u8]| {
        let key = String::from_utf8_lossy(key);
        key.strip_suffix("|\"totals\"")
            .unwrap_or_else(|| panic!("{changelog}: unexpected key {key:?}"))
            .to_owned()
    };
    let written = assert_compacted_to_totals(
        &address,
        &changelog,
        &expected_totals(FIRST_RECORDS),
        key_of,
    );
    assert!(
        written > 2 * KEYS as i64,
        "{changelog}: {written} records written, for {KEYS} keys: nothing to compact"
    );

    assert!(state_dir.is_dir(), "Quix kept its state in {state_dir:?}");
    std::fs::remove_dir_all(&state_dir).unwrap();
    produce_amounts(&address, input, FIRST_RECORDS, MORE_RECORDS);
    let mut second = clients.quix("quix_stateful.py", &args);
    wait_processed(&mut second, MORE_RECORDS, "restarted run");
    let report: StatefulReport = second.finish_as(STOP_TIMEOUT);
    report.assert_clean(&second);
    assert_eq!(
        second.stderr_lines("Recovery successful for"),
        PARTITIONS as usize,
        "{}: every changelog partition restored;\n{}",
        report.client,
        second.stderr_tail()
    );
    assert_totals_continue(&report, &address, output);
    eprintln!(
        "{test}: {}: {written} changelog records compacted to {KEYS}; restored and continued",
        report.client
    );
}

/// Issue 17, log compaction item 5: a Faust application (faust-streaming,
/// RocksDB store, web server off) counts and sums per key in a `Table`,
/// whose changelog `<app>-totals-changelog` Faust creates with
/// cleanup.policy=compact and min.cleanable.dirty.ratio=0.01 (the Table's
/// `extra_topic_configs`). Every Table update is a changelog record: 300
/// records of 10 keys, compacted by the cleaner to one per key, the key's
/// totals. With its data directory deleted, the application restores the
/// Table from the changelog, then processes 200 new records and outputs
/// totals over all 500.
///
/// The new records are produced once the restarted worker is ready: in
/// faust-streaming 0.15.3, `Recovery.on_recovery_completed` resumes the
/// stream partitions before it seeks them to the committed offsets, so
/// records that wait in the input while the Table is restored are raced by
/// that seek: records fetched while it is under way are processed, the
/// ones queued when it lands are dropped (`flow_control.resume()` clears the
/// stream queues), and the refetch from the committed offsets passes only
/// the last record of each partition, a second time. faust-streaming issue
/// 216 (fixed by pull request 217) was the same race in `_resume_streams`.
/// That is Faust's bug, not the broker's: it answers the OffsetFetch and the
/// fetches as asked.
#[test]
fn faust_table_is_restored_from_its_compacted_changelog() {
    let test = "faust_table_restored_from_changelog";
    let Some(clients) = test_clients::installed(test) else {
        return;
    };
    let (input, output, app_id) = ("faust-amounts", "faust-totals", "faust-table");
    let changelog = format!("{app_id}-totals-changelog");
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let address = broker.address.clone();
    for topic in [input, output] {
        kafka_clients::create_topic(&address, topic, PARTITIONS, &[]);
    }
    let data_dir = dir.path().join("faust-data");
    let data_dir_text = data_dir.to_str().expect("the temp path is UTF-8");
    let partitions = PARTITIONS.to_string();
    let args = [
        address.as_str(),
        input,
        output,
        app_id,
        data_dir_text,
        &partitions,
        CHANGELOG_DIRTY_RATIO,
    ];

    produce_amounts(&address, input, 0, FIRST_RECORDS);
    let mut first = clients.faust("faust_table.py", &args);
    wait_processed(&mut first, FIRST_RECORDS, "first run");
    let report: StatefulReport = first.finish_as(STOP_TIMEOUT);
    report.assert_clean(&first);
    assert_eq!(report.totals, expected_totals(FIRST_RECORDS));

    let configs = topic_configs(&address, &changelog);
    for (name, value) in [
        ("cleanup.policy", "compact"),
        ("min.cleanable.dirty.ratio", CHANGELOG_DIRTY_RATIO),
    ] {
        assert_eq!(
            configs.get(name),
            Some(&Some(value.to_owned())),
            "{changelog} as Faust created it: {name}"
        );
    }
    // Faust's changelog key is the Table's key, JSON-encoded.
    let key_of = |key: &[u8]| {
        serde_json::from_slice::<String>(key).unwrap_or_else(|error| {
            panic!(
                "{changelog}: unexpected key {:?}: {error}",
                String::from_utf8_lossy(key)
            )
        })
    };
    let written = assert_compacted_to_totals(
        &address,
        &changelog,
        &expected_totals(FIRST_RECORDS),
        key_of,
    );
    assert_eq!(
        written, FIRST_RECORDS as i64,
        "{changelog}: one record per Table update"
    );

    assert!(data_dir.is_dir(), "Faust kept its Table in {data_dir:?}");
    std::fs::remove_dir_all(&data_dir).unwrap();
    let mut second = clients.faust("faust_table.py", &args);
    assert!(
        second.wait_for_stderr("Worker ready", PROGRESS_TIMEOUT),
        "the restarted worker never became ready;\n{}",
        second.stderr_tail()
    );
    assert_eq!(
        second.stderr_lines("Restoring state from changelog topics"),
        1,
        "the restarted worker restores its Table from {changelog};\n{}",
        second.stderr_tail()
    );
    produce_amounts(&address, input, FIRST_RECORDS, MORE_RECORDS);
    wait_processed(&mut second, MORE_RECORDS, "restarted run");
    let report: StatefulReport = second.finish_as(STOP_TIMEOUT);
    report.assert_clean(&second);
    assert_totals_continue(&report, &address, output);
    eprintln!(
        "{test}: {}: {written} changelog records compacted to {KEYS}; restored and continued",
        report.client
    );
}
