//! Consumer groups with real clients: librdkafka consumers that `subscribe()`
//! share a topic's partitions, rebalance when members leave or die, and
//! resume from offsets committed on the broker, across a broker kill -9.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;

use crate::broker_process::BrokerProcess;
use crate::kafka_clients;

/// Short timeouts so rebalances and evictions happen within a test.
pub const GROUPS_CONFIG: &str = "[groups]\ninitial_rebalance_delay_ms = 300\n";
pub const SESSION_TIMEOUT_MS: &str = "6000";

/// Start a broker whose groups settle quickly.
pub fn start_broker(dir: &Path) -> BrokerProcess {
    let config = dir.join("groups-test.toml");
    if !config.exists() {
        std::fs::write(&config, GROUPS_CONFIG).unwrap();
    }
    let data = dir.join("data");
    BrokerProcess::start(&data, &["--config", config.to_str().unwrap()])
}

/// (member name, partition, offset, payload).
pub type Received = Arc<Mutex<Vec<(String, i32, i64, Vec<u8>)>>>;

pub fn group_consumer(
    address: &str,
    group: &str,
    name: &str,
    settings: &[(&str, &str)],
) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", address)
        .set("group.id", group)
        .set("client.id", name)
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        .set("heartbeat.interval.ms", "300")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "100")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    config.create().expect("consumer config is valid")
}

/// Anything holding part of a group's assignment.
pub trait Assigned {
    fn assignment(&self) -> Vec<i32>;
}

impl Assigned for Member {
    fn assignment(&self) -> Vec<i32> {
        let mut partitions = self.assignment.lock().unwrap().clone();
        partitions.sort_unstable();
        partitions
    }
}

impl Assigned for ChildMember {
    fn assignment(&self) -> Vec<i32> {
        self.assignment.lock().unwrap().clone()
    }
}

/// A subscribed consumer polling on its own thread.
pub struct Member {
    stop: Arc<AtomicBool>,
    assignment: Arc<Mutex<Vec<i32>>>,
    thread: Option<JoinHandle<()>>,
}

impl Member {
    pub fn start(
        address: &str,
        group: &str,
        topic: &str,
        name: &str,
        received: &Received,
        settings: &[(&str, &str)],
    ) -> Member {
        let consumer = group_consumer(address, group, name, settings);
        Member::start_consumer(consumer, topic, name, received)
    }

    /// [`Member::start`] with a consumer configured by the caller.
    pub fn start_consumer(
        consumer: BaseConsumer,
        topic: &str,
        name: &str,
        received: &Received,
    ) -> Member {
        consumer.subscribe(&[topic]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let assignment = Arc::new(Mutex::new(Vec::new()));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            let assignment = Arc::clone(&assignment);
            let received = Arc::clone(received);
            let name = name.to_owned();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match consumer.poll(Duration::from_millis(50)) {
                        Some(Ok(message)) => received.lock().unwrap().push((
                            name.clone(),
                            message.partition(),
                            message.offset(),
                            message.payload().unwrap_or_default().to_vec(),
                        )),
                        Some(Err(error)) => eprintln!("{name}: {error}"),
                        None => {}
                    }
                    let current = consumer
                        .assignment()
                        .map(|list| {
                            list.elements()
                                .iter()
                                .map(|element| element.partition())
                                .collect()
                        })
                        .unwrap_or_default();
                    *assignment.lock().unwrap() = current;
                }
                // Commit what was consumed, then leave the group (LeaveGroup).
                // A failed commit means records consumed again by whoever
                // takes the partitions: say why, for the test that counts.
                if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                    eprintln!("{name}: the final commit failed: {error}");
                }
                drop(consumer);
            }
        });
        Member {
            stop,
            assignment,
            thread: Some(thread),
        }
    }

    /// Commit, leave the group and stop.
    pub fn leave(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Wait until the members' assignments are disjoint, cover `partitions`
/// and have these sizes (in any order).
pub fn wait_for_assignments(
    members: &[&dyn Assigned],
    partitions: i32,
    sizes: &[usize],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    let mut wanted: Vec<usize> = sizes.to_vec();
    wanted.sort_unstable();
    loop {
        let assignments: Vec<Vec<i32>> = members.iter().map(|member| member.assignment()).collect();
        let mut got: Vec<usize> = assignments.iter().map(Vec::len).collect();
        got.sort_unstable();
        let union: BTreeSet<i32> = assignments.iter().flatten().copied().collect();
        let total: usize = assignments.iter().map(Vec::len).sum();
        if got == wanted && total == union.len() && union == (0..partitions).collect() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "assignments never settled to {wanted:?}: {:?}",
            members
                .iter()
                .map(|member| member.assignment())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Produce `count` records named `<prefix>-<n>` over the topic's partitions.
pub fn produce(
    address: &str,
    topic: &str,
    partitions: i32,
    prefix: &str,
    count: usize,
) -> BTreeSet<Vec<u8>> {
    let (producer, acks) = kafka_clients::producer(address, &[]);
    let mut sent = BTreeSet::new();
    for n in 0..count {
        let payload = format!("{prefix}-{n}").into_bytes();
        kafka_clients::send(
            &producer,
            topic,
            Some((n % partitions as usize) as i32),
            None,
            &payload,
            &[],
        );
        sent.insert(payload);
    }
    kafka_clients::flush(&producer, &acks);
    sent
}

/// Wait until every payload in `expected` was received by someone.
pub fn wait_for_all(received: &Received, expected: &BTreeSet<Vec<u8>>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got: BTreeSet<Vec<u8>> = received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, _, payload)| payload.clone())
            .collect();
        let missing = expected.difference(&got).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} records never arrived",
            expected.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A consumer in another process, for kill -9 (see `group_member_child`).
struct ChildMember {
    child: Child,
    assignment: Arc<Mutex<Vec<i32>>>,
}

const CHILD_ADDRESS_ENV: &str = "SLUICE_GROUP_CHILD_ADDRESS";

impl ChildMember {
    fn start(address: &str) -> ChildMember {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "consumer_groups::group_member_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ADDRESS_ENV, address)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let assignment = Arc::new(Mutex::new(Vec::new()));
        std::thread::spawn({
            let assignment = Arc::clone(&assignment);
            move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    // The first line follows the harness's "test ... " prefix.
                    if let Some((_, list)) = line.split_once("assigned:") {
                        *assignment.lock().unwrap() = list
                            .split(',')
                            .filter_map(|part| part.parse().ok())
                            .collect();
                    }
                }
            }
        });
        ChildMember { child, assignment }
    }
}

/// The child: a member of group "workers" on topic "work" until killed.
#[test]
#[ignore = "spawned by members_share_partitions_and_take_over_when_one_leaves_or_is_killed"]
fn group_member_child() {
    let Ok(address) = std::env::var(CHILD_ADDRESS_ENV) else {
        return;
    };
    let consumer = group_consumer(&address, "workers", "child", &[]);
    consumer.subscribe(&["work"]).unwrap();
    let mut last = String::new();
    loop {
        let _ = consumer.poll(Duration::from_millis(50));
        let mut partitions: Vec<i32> = consumer
            .assignment()
            .map(|list| {
                list.elements()
                    .iter()
                    .map(|element| element.partition())
                    .collect()
            })
            .unwrap_or_default();
        partitions.sort_unstable();
        let line = partitions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if line != last {
            println!("assigned:{line}");
            last = line;
        }
    }
}

#[test]
fn members_share_partitions_and_take_over_when_one_leaves_or_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    kafka_clients::create_topic(&broker.address, "work", 6, &[]);
    let received: Received = Arc::default();
    let a = Member::start(&broker.address, "workers", "work", "a", &received, &[]);
    let b = Member::start(&broker.address, "workers", "work", "b", &received, &[]);
    let c = Member::start(&broker.address, "workers", "work", "c", &received, &[]);
    wait_for_assignments(&[&a, &b, &c], 6, &[2, 2, 2], Duration::from_secs(30));
    let mut expected = produce(&broker.address, "work", 6, "first", 600);
    wait_for_all(&received, &expected, Duration::from_secs(30));

    // One leaves: the other two take over its partitions.
    c.leave();
    wait_for_assignments(&[&a, &b], 6, &[3, 3], Duration::from_secs(30));
    expected.extend(produce(&broker.address, "work", 6, "second", 600));
    wait_for_all(&received, &expected, Duration::from_secs(30));

    // A member in another process joins, then dies without leaving: after
    // its session times out it is evicted and its partitions move back.
    let mut child = ChildMember::start(&broker.address);
    wait_for_assignments(&[&a, &b, &child], 6, &[2, 2, 2], Duration::from_secs(30));
    child.child.kill().unwrap();
    child.child.wait().unwrap();
    expected.extend(produce(&broker.address, "work", 6, "third", 600));
    wait_for_assignments(&[&a, &b], 6, &[3, 3], Duration::from_secs(30));
    assert!(
        broker.wait_for_log("member evicted: session timed out"),
        "the broker logs the eviction"
    );
    // At least once: every record reached a member of the group, even the
    // ones the killed member was assigned (its uncommitted work is redone).
    wait_for_all(&received, &expected, Duration::from_secs(30));
    a.leave();
    b.leave();
}

#[test]
fn committed_offsets_survive_kill_9_and_a_second_group_sees_everything() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    kafka_clients::create_topic(&broker.address, "events", 3, &[]);
    let first = produce(&broker.address, "events", 3, "first", 300);

    let received: Received = Arc::default();
    let member = Member::start(&broker.address, "billing", "events", "m1", &received, &[]);
    wait_for_all(&received, &first, Duration::from_secs(30));
    member.leave();
    let committed = committed_offsets(&broker.address, "billing", "events", 3);
    assert_eq!(
        committed,
        vec![100, 100, 100],
        "everything consumed was committed"
    );

    broker.kill9();
    let broker = start_broker(dir.path());
    assert_eq!(
        committed_offsets(&broker.address, "billing", "events", 3),
        committed,
        "committed offsets survive kill -9"
    );

    // The group resumes where it left off: only new records arrive.
    let second = produce(&broker.address, "events", 3, "second", 300);
    let resumed: Received = Arc::default();
    let member = Member::start(&broker.address, "billing", "events", "m2", &resumed, &[]);
    wait_for_all(&resumed, &second, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    member.leave();
    let again: BTreeSet<Vec<u8>> = resumed
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, _, payload)| payload.clone())
        .collect();
    assert!(
        again.is_disjoint(&first),
        "records before the committed offsets were redelivered"
    );

    // Broadcast: another group gets every record, independently.
    let everything: BTreeSet<Vec<u8>> = first.union(&second).cloned().collect();
    let audit: Received = Arc::default();
    let auditor = Member::start(&broker.address, "audit", "events", "x", &audit, &[]);
    wait_for_all(&audit, &everything, Duration::from_secs(30));
    auditor.leave();
}

#[test]
fn every_client_assignor_balances_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    kafka_clients::create_topic(&broker.address, "spread", 4, &[]);
    for strategy in ["range", "roundrobin", "cooperative-sticky"] {
        let received: Received = Arc::default();
        let group = format!("assignor-{strategy}");
        let settings = [("partition.assignment.strategy", strategy)];
        let a = Member::start(&broker.address, &group, "spread", "a", &received, &settings);
        let b = Member::start(&broker.address, &group, "spread", "b", &received, &settings);
        wait_for_assignments(&[&a, &b], 4, &[2, 2], Duration::from_secs(30));
        a.leave();
        wait_for_assignments(&[&b], 4, &[4], Duration::from_secs(30));
        b.leave();
    }
}

#[test]
fn auto_offset_reset_latest_skips_and_none_fails_without_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    kafka_clients::create_topic(&broker.address, "old-news", 1, &[]);
    let old = produce(&broker.address, "old-news", 1, "old", 50);

    let received: Received = Arc::default();
    let latest = Member::start(
        &broker.address,
        "late",
        "old-news",
        "l",
        &received,
        &[("auto.offset.reset", "latest")],
    );
    wait_for_assignments(&[&latest], 1, &[1], Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let new = produce(&broker.address, "old-news", 1, "new", 10);
    wait_for_all(&received, &new, Duration::from_secs(30));
    latest.leave();
    let got: BTreeSet<Vec<u8>> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, _, payload)| payload.clone())
        .collect();
    assert!(got.is_disjoint(&old), "latest started at the end");

    let strict = group_consumer(
        &broker.address,
        "strict",
        "s",
        &[("auto.offset.reset", "error")],
    );
    strict.subscribe(&["old-news"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match strict.poll(Duration::from_millis(100)) {
            Some(Err(error)) => {
                assert!(error.to_string().contains("offset"), "{error}");
                break;
            }
            Some(Ok(message)) => panic!(
                "consumed offset {} without a committed offset",
                message.offset()
            ),
            None => assert!(
                Instant::now() < deadline,
                "no error without a committed offset"
            ),
        }
    }
}

/// The group's committed offsets for partitions 0..partitions (-1 = none).
pub fn committed_offsets(address: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer = group_consumer(address, group, "reader", &[]);
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("OffsetFetch answers");
    let by_partition: BTreeMap<i32, i64> = committed
        .elements()
        .iter()
        .map(|element| (element.partition(), element.offset().to_raw().unwrap_or(-1)))
        .collect();
    (0..partitions)
        .map(|partition| by_partition[&partition])
        .collect()
}

/// Run the `sluice` admin command; returns (success, stdout + stderr).
pub fn sluice_admin(address: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .args(["--brokers", address])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn reset_offsets_to_a_time_redelivers_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let (ok, out) = sluice_admin(&broker.address, &["topics", "create", "replay", "-p", "2"]);
    assert!(ok, "{out}");
    let before = produce(&broker.address, "replay", 2, "before", 100);
    std::thread::sleep(Duration::from_millis(100));
    let boundary_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    std::thread::sleep(Duration::from_millis(100));
    let after = produce(&broker.address, "replay", 2, "after", 100);

    let received: Received = Arc::default();
    let member = Member::start(&broker.address, "replayers", "replay", "r1", &received, &[]);
    let everything: BTreeSet<Vec<u8>> = before.union(&after).cloned().collect();
    wait_for_all(&received, &everything, Duration::from_secs(30));
    let reset = [
        "groups",
        "reset-offsets",
        "replayers",
        "--topic",
        "replay",
        "--to-datetime",
        &boundary_ms,
        "--execute",
    ];
    let (ok, out) = sluice_admin(&broker.address, &reset);
    assert!(!ok && out.contains("stop its consumers first"), "{out}");
    member.leave();

    let (ok, out) = sluice_admin(&broker.address, &["groups", "describe", "replayers"]);
    assert!(ok && out.contains("TOTAL-LAG 0"), "{out}");
    let (ok, out) = sluice_admin(&broker.address, &reset);
    assert!(ok && out.contains("committed new offsets"), "{out}");
    let (ok, out) = sluice_admin(&broker.address, &["groups", "describe", "replayers"]);
    assert!(ok && out.contains("TOTAL-LAG 100"), "{out}");

    // The group now starts from the first record at or after the time.
    let replayed: Received = Arc::default();
    let member = Member::start(&broker.address, "replayers", "replay", "r2", &replayed, &[]);
    wait_for_all(&replayed, &after, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    member.leave();
    let got: BTreeSet<Vec<u8>> = replayed
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, _, payload)| payload.clone())
        .collect();
    assert_eq!(
        got, after,
        "exactly the records after the time were redelivered"
    );

    let (ok, out) = sluice_admin(&broker.address, &["groups", "list"]);
    assert!(ok && out.contains("replayers"), "{out}");
    let (ok, out) = sluice_admin(&broker.address, &["topics", "describe", "replay"]);
    assert!(ok && out.contains("PARTITIONS  2"), "{out}");
    // The topic id in Kafka's printed form (22 characters), as
    // `kafka-topics.sh --describe` shows it (issue 14).
    let id = out
        .lines()
        .find_map(|line| line.strip_prefix("ID "))
        .map(str::trim);
    assert!(id.is_some_and(|id| id.len() == 22), "{out}");
    let (ok, out) = sluice_admin(&broker.address, &["groups", "delete", "replayers"]);
    assert!(ok, "{out}");
    let (ok, out) = sluice_admin(&broker.address, &["topics", "delete", "replay"]);
    assert!(ok, "{out}");
    let (ok, out) = sluice_admin(&broker.address, &["topics", "list"]);
    assert!(ok && !out.contains("replay"), "{out}");
}

/// Found by a new user: `sluice topics describe t | head -3` panicked on
/// the broken pipe ("failed printing to stdout"). The admin commands now
/// end as other command-line tools do, quietly, by SIGPIPE.
#[test]
fn admin_output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let (ok, out) = sluice_admin(&broker.address, &["topics", "create", "wide", "-p", "8"]);
    assert!(ok, "{out}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["topics", "describe", "wide", "--brokers", &broker.address])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before the command writes anything.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "{stderr}");
}

/// `sluice topics create` without `-p` takes the broker's default partition
/// count, as `kafka-topics --create` takes `num.partitions` (found by the
/// issue-14 new-user trial: it always asked for 1).
#[test]
fn topics_create_takes_the_broker_default_partition_count() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("partitions.toml");
    std::fs::write(&config, "[kafka]\ndefault_partitions = 3\n").unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let address = &broker.address;
    let (ok, out) = sluice_admin(address, &["topics", "create", "defaulted"]);
    assert!(
        ok && out.contains("created topic defaulted with 3 partitions"),
        "{out}"
    );
    let (ok, out) = sluice_admin(address, &["topics", "create", "one", "-p", "1", "-r", "1"]);
    assert!(
        ok && out.contains("created topic one with 1 partition\n"),
        "{out}"
    );
    let (ok, out) = sluice_admin(address, &["topics", "create", "three", "-r", "3"]);
    assert!(!ok && out.contains("replication factor 3"), "{out}");
}

/// `sluice topics alter` sets and removes topic configs (found by a new
/// user: the shipped tools had no way to change one, such as
/// `sluice.disk.pressure.delete`, after creation).
#[test]
fn topic_configs_are_altered_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let address = &broker.address;
    let (ok, out) = sluice_admin(address, &["topics", "create", "tuned"]);
    assert!(ok, "{out}");
    let (ok, out) = sluice_admin(
        address,
        &[
            "topics",
            "alter",
            "tuned",
            "--config",
            "sluice.disk.pressure.delete=true",
            "--config",
            "retention.ms=60000",
        ],
    );
    assert!(ok && out.contains("altered topic tuned"), "{out}");
    let (ok, out) = sluice_admin(address, &["topics", "describe", "tuned"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("sluice.disk.pressure.delete") && out.contains("60000"),
        "{out}"
    );
    let (ok, out) = sluice_admin(
        address,
        &[
            "topics",
            "alter",
            "tuned",
            "--delete-config",
            "retention.ms",
        ],
    );
    assert!(ok, "{out}");
    let (_, out) = sluice_admin(address, &["topics", "describe", "tuned"]);
    assert!(!out.contains("60000"), "{out}");
    let (ok, out) = sluice_admin(
        address,
        &["topics", "alter", "tuned", "--config", "retention.ms=soon"],
    );
    assert!(!ok && out.contains("cannot alter tuned"), "{out}");
    let (ok, out) = sluice_admin(address, &["topics", "alter", "tuned"]);
    assert!(!ok, "a change is required: {out}");
}
