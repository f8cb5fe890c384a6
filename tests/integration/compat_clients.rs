//! The compatibility suite (issue 14, items 5 and 6): each client users
//! bring — kafkajs, @platformatic/kafka, kafka-python, aiokafka and
//! confluent-kafka — runs the same checks against its own real broker: admin
//! (topics with configs, describe and alter configs both ways, partitions,
//! delete records, delete topics, log dirs, groups and their offsets), a
//! produce-and-read-back with every codec carrying keys and headers, a
//! classic consumer group resuming from its commit, the KIP-848 consumer
//! protocol where the client has it, and offsets for times.
//!
//! Each client script (`tests/clients/{python,node}/compat_*`) prints one
//! JSON line per check: pass, fail, or not exposed by that client (see
//! `tests/clients/python/compat_report.py`). A check that fails must be
//! listed in [`PENDING`] with the branch that implements what it needs; a
//! listed check that passes fails the test, so the list stays true as those
//! branches land. Every run writes `target/compat/<client>.json`, from which
//! `scripts/compat-table.sh` renders the README's compatibility table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::broker_process::BrokerProcess;
use crate::test_clients::{self, ClientProcess, Clients};

/// Every check a script reports, in report order (the scripts list the same
/// names).
const CHECKS: &[&str] = &[
    "admin.create_topic",
    "admin.create_topic_kafka_configs",
    "admin.describe_configs",
    "admin.alter_configs_incremental",
    "admin.alter_configs_legacy",
    "admin.create_partitions",
    "admin.delete_records",
    "admin.delete_topics",
    "admin.describe_log_dirs",
    "admin.describe_topic_partitions",
    "produce.none",
    "produce.gzip",
    "produce.snappy",
    "produce.lz4",
    "produce.zstd",
    "group.classic",
    "admin.list_groups",
    "admin.describe_groups",
    "admin.list_group_offsets",
    "admin.alter_group_offsets",
    "admin.delete_group_offsets",
    "admin.delete_groups",
    "group.consumer_protocol",
    "offsets_for_times",
];

/// Expected failures: `(client, check, why)` for each check that fails today
/// only because a branch that implements what it needs has not landed. Delete
/// an entry when its branch lands; a listed check that passes fails its test.
const PENDING: &[(&str, &str, &str)] = &[];

/// How long one client's whole script may run (its checks bound their own
/// waits; a check that waits for records gives up after 20 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// The broker every client runs against: no initial rebalance delay (the
/// group checks join one member at a time), and small segments (each shard
/// preallocates one).
const BROKER_CONFIG: &str = "[groups]\ninitial_rebalance_delay_ms = 0\n\n\
                             [storage]\nsegment_bytes = 16777216\n";

/// Where each run's results go, for `scripts/compat-table.sh`.
const RESULTS_DIR: &str = "target/compat";

/// One line of a script's report.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Line {
    Check(CheckLine),
    Done { client: String, done: bool },
}

#[derive(Debug, Deserialize)]
struct CheckLine {
    check: String,
    outcome: Outcome,
    detail: String,
    seconds: f64,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Pass,
    Fail,
    NotExposed,
}

/// What `target/compat/<client>.json` holds.
#[derive(Debug, Serialize)]
struct Results<'a> {
    /// The PENDING name of the client (`kafkajs`, `kafka-python`, ...).
    name: &'a str,
    /// Library and version, as the script reports them.
    client: String,
    checks: Vec<CheckResult<'a>>,
}

#[derive(Debug, Serialize)]
struct CheckResult<'a> {
    check: &'a str,
    outcome: Outcome,
    detail: String,
    seconds: f64,
    /// The PENDING reason, when the check is listed there.
    pending: Option<&'a str>,
}

fn pending(client: &str, check: &str) -> Option<&'static str> {
    PENDING
        .iter()
        .find(|(name, listed, _)| *name == client && *listed == check)
        .map(|(_, _, why)| *why)
}

/// Parse a script's stdout into its client string and one line per check;
/// panics if a line is malformed, a check is unknown or repeated, one is
/// missing, or the final `done` line is absent.
fn parse_report(stdout: &str, context: &dyn Fn() -> String) -> (String, Vec<CheckLine>) {
    let mut checks: Vec<CheckLine> = Vec::new();
    let mut client = None;
    for text in stdout.lines().filter(|line| line.starts_with('{')) {
        let line: Line = serde_json::from_str(text)
            .unwrap_or_else(|error| panic!("bad report line {text:?} ({error});\n{}", context()));
        match line {
            Line::Check(line) => {
                assert!(
                    CHECKS.contains(&line.check.as_str()),
                    "unknown check {:?};\n{}",
                    line.check,
                    context()
                );
                assert!(
                    !checks.iter().any(|seen| seen.check == line.check),
                    "check {:?} reported twice;\n{}",
                    line.check,
                    context()
                );
                checks.push(line);
            }
            Line::Done { client: name, done } => {
                assert!(done, "a done line with done = false;\n{}", context());
                client = Some(name);
            }
        }
    }
    let client = client.unwrap_or_else(|| panic!("the script never finished;\n{}", context()));
    let missing: Vec<&&str> = CHECKS
        .iter()
        .filter(|name| !checks.iter().any(|line| line.check == **name))
        .collect();
    assert!(
        missing.is_empty(),
        "{client}: checks never reported: {missing:?};\n{}",
        context()
    );
    (client, checks)
}

/// What is wrong with one check's outcome, if anything.
fn problem(name: &str, line: &CheckLine) -> Option<String> {
    let check = line.check.as_str();
    match (line.outcome, pending(name, check)) {
        (Outcome::Pass, Some(why)) => Some(format!(
            "{check} passes but is listed in PENDING ({why}): delete its entry"
        )),
        (Outcome::Fail, None) => Some(format!("{check} fails: {}", line.detail)),
        (Outcome::NotExposed, Some(why)) => Some(format!(
            "{check} is not exposed by {name} ({}) but listed in PENDING ({why}): delete its \
             entry",
            line.detail
        )),
        _ => None,
    }
}

fn write_results(name: &str, client: String, checks: &[CheckLine]) -> PathBuf {
    let results = Results {
        name,
        client,
        checks: CHECKS
            .iter()
            .map(|check| {
                let line = checks
                    .iter()
                    .find(|line| line.check == *check)
                    .expect("every check was reported");
                CheckResult {
                    check,
                    outcome: line.outcome,
                    detail: line.detail.clone(),
                    seconds: line.seconds,
                    pending: pending(name, check),
                }
            })
            .collect(),
    };
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join(RESULTS_DIR);
    std::fs::create_dir_all(&directory).expect("create target/compat");
    let path = directory.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(&results).expect("results serialize");
    std::fs::write(&path, text + "\n").expect("write the results");
    path
}

/// Run one client's compatibility script against a fresh broker and check
/// every outcome against [`PENDING`].
fn client_passes_its_checks(name: &str, start: impl FnOnce(&Clients, &[&str]) -> ClientProcess) {
    let test = format!("compat_{name}");
    let Some(clients) = test_clients::installed(&test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, BROKER_CONFIG).unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &["--config", config.to_str().unwrap()]);
    let mut script = start(clients, &[&broker.address]);
    let (status, stdout) = script.finish_stdout(SCRIPT_TIMEOUT);
    let context = || {
        format!(
            "{name} ({status}) stdout:\n{stdout}\n{}",
            script.stderr_tail()
        )
    };
    let (client, checks) = parse_report(&stdout, &context);
    let problems: Vec<String> = checks
        .iter()
        .filter_map(|line| problem(name, line))
        .collect();
    let results = write_results(name, client.clone(), &checks);
    let passed = checks
        .iter()
        .filter(|line| line.outcome == Outcome::Pass)
        .count();
    eprintln!(
        "{client}: {passed} of {} checks pass; results in {}",
        checks.len(),
        results.display()
    );
    assert!(
        problems.is_empty(),
        "{client} against sluice (issue 14):\n  {}\n{}",
        problems.join("\n  "),
        script.stderr_tail()
    );
}

/// Issue 14: kafkajs 2.2's admin, codecs (snappy, LZ4 and zstd as the
/// plug-ins a user registers), groups and offsets for times.
#[test]
fn kafkajs_passes_the_compatibility_checks() {
    client_passes_its_checks("kafkajs", |clients, args| {
        clients.node("compat_kafkajs.js", args)
    });
}

/// Issue 14: @platformatic/kafka 1.x, which speaks Kafka ≥ 3.5's versions
/// (Fetch by topic id, DeleteTopics v6, DescribeLogDirs, KIP-848).
#[test]
fn platformatic_kafka_passes_the_compatibility_checks() {
    client_passes_its_checks("platformatic", |clients, args| {
        clients.node("compat_platformatic.js", args)
    });
}

/// Issue 14: kafka-python 3's admin (incremental and legacy configs,
/// DescribeLogDirs, DescribeTopicPartitions, group offsets), codecs, groups
/// and offsets for times.
#[test]
fn kafka_python_passes_the_compatibility_checks() {
    client_passes_its_checks("kafka-python", |clients, args| {
        clients.python("compat_kafka_python.py", args)
    });
}

/// Issue 14: aiokafka's admin, codecs, groups and offsets for times.
#[test]
fn aiokafka_passes_the_compatibility_checks() {
    client_passes_its_checks("aiokafka", |clients, args| {
        clients.python("compat_aiokafka.py", args)
    });
}

/// Issue 14: confluent-kafka (librdkafka 2.16)'s admin, codecs, classic and
/// KIP-848 groups and offsets for times.
#[test]
fn confluent_kafka_passes_the_compatibility_checks() {
    client_passes_its_checks("confluent-kafka", |clients, args| {
        clients.python("compat_confluent.py", args)
    });
}

/// The PENDING list names only known clients and checks, each pair once.
#[test]
fn pending_entries_name_known_clients_and_checks_once() {
    const CLIENTS: [&str; 5] = [
        "kafkajs",
        "platformatic",
        "kafka-python",
        "aiokafka",
        "confluent-kafka",
    ];
    for (index, (client, check, _)) in PENDING.iter().enumerate() {
        assert!(
            CLIENTS.contains(client),
            "PENDING names unknown client {client}"
        );
        assert!(
            CHECKS.contains(check),
            "PENDING names unknown check {check}"
        );
        assert!(
            !PENDING[..index]
                .iter()
                .any(|(other, listed, _)| other == client && listed == check),
            "PENDING lists ({client}, {check}) twice"
        );
    }
}
