//! `sluice dlq list|replay`: a consumer group's dead letters.
//!
//! A record that group `G`'s consumers keep failing ends in `G.dlq`
//! (`broker/retry.rs`), with headers naming the record that failed and the
//! retries made. `list` reads every partition of `G.dlq` from its log start
//! and shows the dead letters; `replay` produces those not replayed yet to
//! their topics again (or to `--to TOPIC`; [`target`] says where exactly),
//! without the broker's bookkeeping headers ([`letter::is_bookkeeping`]),
//! and records how far it got as the committed offsets of the consumer
//! group `G.dlq.replay`: an ordinary group without members, which `sluice
//! groups describe` shows and `sluice groups reset-offsets` moves.
//!
//! Reads Fetch each partition of `G.dlq` from its leader (read_uncommitted,
//! at most [`FETCH_MAX_BYTES`] an answer) up to the high watermark seen
//! when the command started, so records appended meanwhile wait for the
//! next run. A replay first reads everything it is to replay and routes it
//! without producing: a dead letter it cannot route (no topic header and
//! no `--to`, or a target topic that does not exist) fails the command
//! before anything is produced. Then, one Fetch answer at a time, it
//! produces the answer's dead letters with acks=all, checks every
//! partition's answer, and only then commits the replay group's offset
//! past them. Replay is therefore at least once: a command that dies
//! between a produce and its commit produces those records again next time.

pub mod letter;
pub mod target;

use std::collections::{BTreeMap, BTreeSet, btree_map};

use anyhow::Context;
use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{FetchRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use self::letter::{DeadLetter, ReplayBatch};
use self::target::Targets;
use super::offsets::{self, EARLIEST, LATEST, PartitionKey};
use super::table::Table;
use super::{AdminResult, describe_error, groups, routing};
use crate::broker::retry::dlq_topic;
use crate::client::KafkaClient;

/// The suffix of the group whose committed offsets say how far `G.dlq` was
/// replayed: `G.dlq.replay`.
pub const REPLAY_GROUP_SUFFIX: &str = ".replay";
/// Most bytes of records one Fetch answer carries (Kafka's KIP-74: the
/// first batch comes whole even when larger).
pub const FETCH_MAX_BYTES: i32 = 1024 * 1024;
/// The last Fetch version that names topics (v13 names them by id).
const FETCH_BY_NAME_VERSION_MAX: i16 = 12;
/// The last Produce version that names topics (v13 names them by id).
const PRODUCE_BY_NAME_VERSION_MAX: i16 = 12;
/// Fetch's isolation level that reads up to the high watermark.
const READ_UNCOMMITTED: i8 = 0;
/// Produce acks: every in-sync replica.
const ACKS_ALL: i16 = -1;
/// How long the broker may take to replicate a produced batch: under the
/// client's 30 s request timeout, so a slow replication is the broker's
/// REQUEST_TIMED_OUT rather than a dropped connection.
const PRODUCE_TIMEOUT_MS: i32 = 25_000;
/// A replay batch closes once it holds this many bytes, so it stays under
/// Kafka's default `max.message.bytes` (1 MiB) unless one record is
/// larger than the rest of it.
const REPLAY_BATCH_TARGET_BYTES: usize = 256 * 1024;
/// Dead letters a failed replay names (the rest are counted).
const UNROUTABLE_SHOWN_MAX: usize = 10;
/// A shown key or value is cut after this many characters.
const PREVIEW_CHARS_MAX: usize = 60;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// Group `group`'s replay group, `G.dlq.replay`.
pub fn replay_group(group: &str) -> String {
    format!("{}{REPLAY_GROUP_SUFFIX}", dlq_topic(group))
}

/// The topic and group of one group's dead letters.
struct Names {
    group: String,
    dlq: String,
    replay_group: String,
}

impl Names {
    fn of(group: &str) -> Names {
        Names {
            group: group.to_owned(),
            dlq: dlq_topic(group),
            replay_group: replay_group(group),
        }
    }
}

/// One client per node, opened on first use: the replay group's
/// coordinator, and the leaders of `G.dlq`'s and the targets' partitions.
struct Nodes {
    coordinator: KafkaClient,
    others: BTreeMap<String, KafkaClient>,
}

impl Nodes {
    fn connect(brokers: &str, replay_group: &str) -> anyhow::Result<Nodes> {
        Ok(Nodes {
            coordinator: routing::connect_to_coordinator(brokers, replay_group, routing::GROUP)?,
            others: BTreeMap::new(),
        })
    }

    /// The client of the node at `address`; the coordinator's when the
    /// address is unknown (it answers with the reason).
    fn at(&mut self, address: Option<&str>) -> anyhow::Result<&mut KafkaClient> {
        let Some(address) = address.filter(|address| *address != self.coordinator.address()) else {
            return Ok(&mut self.coordinator);
        };
        Ok(match self.others.entry(address.to_owned()) {
            btree_map::Entry::Occupied(entry) => entry.into_mut(),
            btree_map::Entry::Vacant(entry) => entry.insert(
                KafkaClient::connect(address)
                    .with_context(|| format!("connecting to the node at {address}"))?,
            ),
        })
    }
}

/// One partition of `G.dlq` as a read sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Span {
    partition: i32,
    /// Its leader's `host:port`; `None` when Metadata names none.
    leader: Option<String>,
    log_start: i64,
    /// The high watermark when the command started: reads stop there.
    end: i64,
    /// The replay group's committed offset, if any.
    committed: Option<i64>,
}

impl Span {
    /// Where a replay starts: the committed offset (else the log start),
    /// within the log: records below its start are gone, and a committed
    /// offset past its end (the topic was recreated) replays nothing.
    fn replay_from(&self) -> i64 {
        self.committed
            .unwrap_or(self.log_start)
            .max(self.log_start)
            .min(self.end)
    }
}

/// Every partition of `G.dlq`, with its offsets and the replay group's.
fn spans(client: &mut KafkaClient, names: &Names) -> anyhow::Result<Vec<Span>> {
    let response = routing::metadata_of(client, &[&names.dlq])?;
    let topic = response.topics.first().context("empty Metadata response")?;
    if topic.error_code == ResponseError::UnknownTopicOrPartition.code() {
        anyhow::bail!(
            "topic {} does not exist: group {} has no dead letters (the broker creates it \
             with the first)",
            names.dlq,
            names.group
        );
    }
    if topic.error_code != 0 {
        anyhow::bail!(
            "topic {}: {}",
            names.dlq,
            describe_error(topic.error_code, None)
        );
    }
    let mut keys: Vec<PartitionKey> = topic
        .partitions
        .iter()
        .map(|partition| (names.dlq.clone(), partition.partition_index))
        .collect();
    keys.sort();
    let starts = offsets::list_offsets(client, &keys, EARLIEST)?;
    let ends = offsets::list_offsets(client, &keys, LATEST)?;
    let committed = groups::committed(client, &names.replay_group)?;
    let leaders = routing::leaders(client, &[&names.dlq])?;
    Ok(keys
        .into_iter()
        .map(|key| Span {
            partition: key.1,
            leader: leaders.get(&key).cloned(),
            log_start: starts.get(&key).copied().unwrap_or(0),
            end: ends.get(&key).copied().unwrap_or(0),
            committed: committed.get(&key).copied().filter(|offset| *offset >= 0),
        })
        .collect())
}

/// A Fetch of `topic`-`partition` at `offset` that answers at once.
fn fetch_request(topic: &str, partition: i32, offset: i64) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_MAX_BYTES)
        .with_isolation_level(READ_UNCOMMITTED)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(text(topic)))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(FETCH_MAX_BYTES),
                ]),
        ])
}

/// The records of one Fetch of `topic`-`partition` at `offset`.
fn fetch(
    client: &mut KafkaClient,
    topic: &str,
    partition: i32,
    offset: i64,
) -> anyhow::Result<Bytes> {
    let version = client
        .version_of::<FetchRequest>()?
        .min(FETCH_BY_NAME_VERSION_MAX);
    let request = fetch_request(topic, partition, offset);
    let response = client.call_at(&request, version)?;
    let failed = |code| {
        anyhow::anyhow!(
            "Fetch {topic}-{partition} at offset {offset}: {}",
            describe_error(code, None)
        )
    };
    if response.error_code != 0 {
        return Err(failed(response.error_code));
    }
    let answer = response
        .responses
        .iter()
        .flat_map(|topic| &topic.partitions)
        .find(|answer| answer.partition_index == partition)
        .with_context(|| format!("Fetch answered without {topic}-{partition}"))?;
    if answer.error_code != 0 {
        return Err(failed(answer.error_code));
    }
    Ok(answer.records.clone().unwrap_or_default())
}

/// Read `span` of `topic` from `from` to its end, one Fetch at a time,
/// handing `visit` each answer's dead letters below the end and the offset
/// reading goes on from.
fn read(
    nodes: &mut Nodes,
    topic: &str,
    span: &Span,
    from: i64,
    mut visit: impl FnMut(&mut Nodes, Vec<DeadLetter>, i64) -> AdminResult,
) -> AdminResult {
    let partition = span.partition;
    let mut position = from;
    while position < span.end {
        let records = fetch(
            nodes.at(span.leader.as_deref())?,
            topic,
            partition,
            position,
        )?;
        let fetched = letter::decode_fetched(partition, &records, position).map_err(|reason| {
            anyhow::anyhow!("{topic}-{partition}, Fetch at offset {position}: {reason}")
        })?;
        if fetched.next_offset <= position {
            anyhow::bail!(
                "{topic}-{partition}: a Fetch at offset {position} returned no whole record \
                 batch, below the high watermark {}; run the command again",
                span.end
            );
        }
        let next = fetched.next_offset.min(span.end);
        let letters = fetched
            .letters
            .into_iter()
            .filter(|letter| letter.offset < span.end)
            .collect();
        visit(nodes, letters, next)?;
        position = next;
    }
    Ok(())
}

/// `sluice dlq list G`: the first `limit` dead letters of `G.dlq` in
/// partition and offset order, then how many there are and how many were
/// replayed.
pub fn list(brokers: &str, group: &str, limit: usize) -> AdminResult {
    let names = Names::of(group);
    let mut nodes = Nodes::connect(brokers, &names.replay_group)?;
    let spans = spans(&mut nodes.coordinator, &names)?;
    let mut shown = Vec::new();
    let mut counts = ListCounts {
        any_committed: spans.iter().any(|span| span.committed.is_some()),
        ..ListCounts::default()
    };
    for span in &spans {
        read(
            &mut nodes,
            &names.dlq,
            span,
            span.log_start,
            |_, letters, _| {
                for letter in letters {
                    counts.total += 1;
                    if span
                        .committed
                        .is_some_and(|committed| letter.offset < committed)
                    {
                        counts.replayed += 1;
                    }
                    if shown.len() < limit {
                        shown.push(letter);
                    }
                }
                Ok(())
            },
        )?;
    }
    counts.shown = shown.len() as u64;
    if !shown.is_empty() {
        print!("{}", list_table(&shown));
    }
    for line in list_summary(&names, &counts) {
        println!("{line}");
    }
    Ok(())
}

/// What `list` counted.
#[derive(Clone, Copy, Debug, Default)]
struct ListCounts {
    total: u64,
    shown: u64,
    /// Dead letters below the replay group's committed offsets.
    replayed: u64,
    /// Whether the replay group committed any offset of `G.dlq`.
    any_committed: bool,
}

/// The dead letters as `list` shows them.
fn list_table(letters: &[DeadLetter]) -> String {
    let mut table = Table::new(&[
        "PARTITION",
        "OFFSET",
        "TIMESTAMP",
        "ATTEMPTS",
        "FROM",
        "KEY",
        "VALUE",
    ]);
    for letter in letters {
        let from = letter.provenance().map_or("-".to_owned(), |provenance| {
            let number =
                |value: Option<i64>| value.map_or("?".to_owned(), |value| value.to_string());
            format!(
                "{}-{}@{}",
                provenance.topic,
                number(provenance.partition.map(i64::from)),
                number(provenance.offset)
            )
        });
        table.row(vec![
            letter.partition.to_string(),
            letter.offset.to_string(),
            letter.timestamp_ms.to_string(),
            letter
                .attempts()
                .map_or("-".to_owned(), |attempts| attempts.to_string()),
            from,
            preview(letter.key.as_deref()),
            preview(letter.value.as_deref()),
        ]);
    }
    table.render()
}

/// `list`'s closing lines.
fn list_summary(names: &Names, counts: &ListCounts) -> Vec<String> {
    let replayed = if counts.any_committed {
        format!("{} replayed", counts.replayed)
    } else {
        "none replayed".to_owned()
    };
    let mut lines = vec![format!(
        "{} in {}, {replayed} (group {})",
        dead_letters(counts.total),
        names.dlq,
        names.replay_group
    )];
    if counts.shown < counts.total {
        lines.push(format!(
            "(the first {} shown; --limit N shows more)",
            counts.shown
        ));
    }
    lines
}

/// "1 dead letter", "2 dead letters".
fn dead_letters(count: u64) -> String {
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} dead letter{plural}")
}

/// A key or value for a table cell: lossy UTF-8, control characters
/// escaped, cut after [`PREVIEW_CHARS_MAX`] characters with "…"; "-" for
/// null.
fn preview(bytes: Option<&[u8]>) -> String {
    let Some(bytes) = bytes else {
        return "-".to_owned();
    };
    let mut out = String::new();
    for (index, character) in String::from_utf8_lossy(bytes).chars().enumerate() {
        if index == PREVIEW_CHARS_MAX {
            out.push('…');
            break;
        }
        if character.is_control() {
            out.extend(character.escape_default());
        } else {
            out.push(character);
        }
    }
    out
}

/// What `sluice dlq replay` is asked.
pub struct ReplayRequest<'a> {
    pub group: &'a str,
    /// Produce every dead letter to this topic instead of its own.
    pub to: Option<&'a str>,
    /// Produce and commit (without it, only print what would be produced).
    pub execute: bool,
}

/// Records replayed, or to be, per target partition.
type Counts = BTreeMap<PartitionKey, u64>;

/// `sluice dlq replay G`: see the module doc.
pub fn replay(brokers: &str, request: &ReplayRequest<'_>) -> AdminResult {
    let names = Names::of(request.group);
    let mut nodes = Nodes::connect(brokers, &names.replay_group)?;
    let spans = spans(&mut nodes.coordinator, &names)?;
    note_committed_past_end(&names, &spans);
    let mut targets = Targets::new(request.to);
    if let Some(to) = request.to {
        learn_targets(&mut nodes.coordinator, &mut targets, &[to.to_owned()])?;
        if let Err(error_code) = targets.partitions_of(to) {
            anyhow::bail!(
                "cannot replay to {to}: {}",
                describe_error(error_code, None)
            );
        }
    }
    let planned = plan(&mut nodes, &names, &spans, &mut targets)?;
    refuse_unroutable(&names, &planned)?;
    let total: u64 = planned.counts.values().sum();
    if total == 0 {
        println!(
            "nothing to replay: {} has no dead letters past the offsets group {} committed",
            names.dlq, names.replay_group
        );
        return Ok(());
    }
    if !request.execute {
        print!("{}", counts_table(&planned.counts));
        println!("{} of {} to replay", dead_letters(total), names.dlq);
        println!(
            "(dry run: nothing produced; add --execute to produce them and commit group {})",
            names.replay_group
        );
        return Ok(());
    }
    targets.restart();
    let replayed = execute(&mut nodes, &names, &spans, &mut targets)?;
    print!("{}", counts_table(&replayed));
    println!(
        "replayed {} of {}; committed group {} past them",
        dead_letters(replayed.values().sum()),
        names.dlq,
        names.replay_group
    );
    Ok(())
}

/// Tell the operator of a partition whose committed replay offset is past
/// its end: nothing is replayed from it until the offset is reset.
fn note_committed_past_end(names: &Names, spans: &[Span]) {
    for span in spans {
        if let Some(committed) = span.committed.filter(|committed| *committed > span.end) {
            eprintln!(
                "note: {}-{}: group {} committed offset {committed}, past the end {} (was the \
                 topic recreated?): nothing is replayed from it; `sluice groups reset-offsets \
                 {} --topic {} --to-earliest --execute` starts it over",
                names.dlq,
                span.partition,
                names.replay_group,
                span.end,
                names.replay_group,
                names.dlq
            );
        }
    }
}

/// Fail, naming the first few, if any dead letter cannot be routed.
fn refuse_unroutable(names: &Names, planned: &Plan) -> AdminResult {
    if planned.unroutable_count > 0 {
        for line in &planned.unroutable {
            println!("{line}");
        }
        let more = planned.unroutable_count - planned.unroutable.len() as u64;
        if more > 0 {
            println!("… and {more} more");
        }
        anyhow::bail!(
            "{} of {} cannot be replayed; nothing was produced",
            dead_letters(planned.unroutable_count),
            names.dlq
        );
    }
    Ok(())
}

/// Learn the partition counts of `topics` (Metadata, never creating one);
/// a topic Metadata does not answer for does not exist.
fn learn_targets(
    client: &mut KafkaClient,
    targets: &mut Targets,
    topics: &[String],
) -> AdminResult {
    if topics.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let response = routing::metadata_of(client, &names)?;
    let mut answered = BTreeSet::new();
    for topic in &response.topics {
        let name = routing::topic_name(topic);
        let answer = match topic.error_code {
            0 => Ok(topic.partitions.len() as i32),
            code => Err(code),
        };
        targets.learn(&name, answer);
        answered.insert(name);
    }
    for topic in topics.iter().filter(|topic| !answered.contains(*topic)) {
        targets.learn(topic, Err(ResponseError::UnknownTopicOrPartition.code()));
    }
    Ok(())
}

/// What a replay would produce, and what it cannot route.
#[derive(Debug, Default)]
struct Plan {
    counts: Counts,
    /// The first [`UNROUTABLE_SHOWN_MAX`] dead letters without a target,
    /// and why.
    unroutable: Vec<String>,
    unroutable_count: u64,
}

/// Read what a replay would, routing every dead letter, producing nothing.
fn plan(
    nodes: &mut Nodes,
    names: &Names,
    spans: &[Span],
    targets: &mut Targets,
) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    for span in spans {
        read(
            nodes,
            &names.dlq,
            span,
            span.replay_from(),
            |nodes, letters, _| {
                let unknown = targets.unknown(&letters);
                learn_targets(&mut nodes.coordinator, targets, &unknown)?;
                for letter in &letters {
                    match targets.route(letter) {
                        Ok(key) => *plan.counts.entry(key).or_default() += 1,
                        Err(why) => {
                            plan.unroutable_count += 1;
                            if plan.unroutable.len() < UNROUTABLE_SHOWN_MAX {
                                plan.unroutable.push(format!(
                                    "{}-{} offset {}: {why}",
                                    names.dlq, letter.partition, letter.offset
                                ));
                            }
                        }
                    }
                }
                Ok(())
            },
        )?;
    }
    Ok(plan)
}

/// Replay every span: produce each Fetch answer's dead letters, then
/// commit the replay group past them.
fn execute(
    nodes: &mut Nodes,
    names: &Names,
    spans: &[Span],
    targets: &mut Targets,
) -> anyhow::Result<Counts> {
    let leaders = routing::leaders(&mut nodes.coordinator, &targets.known_topics())?;
    let mut replayed = Counts::new();
    for span in spans {
        read(
            nodes,
            &names.dlq,
            span,
            span.replay_from(),
            |nodes, letters, next| {
                let unknown = targets.unknown(&letters);
                learn_targets(&mut nodes.coordinator, targets, &unknown)?;
                // Routed when planned; only a target deleted since fails here,
                // before this answer's dead letters are produced.
                let batches = replay_batches(targets, &letters).map_err(|why| {
                    anyhow::anyhow!(
                        "{why} (was the topic deleted during the replay?); the dead letters \
                         before this Fetch answer were replayed and committed"
                    )
                })?;
                let now_ms = now_ms();
                for (key, batch) in &batches {
                    let leader = leaders.get(key).map(String::as_str);
                    produce(nodes.at(leader)?, key, batch.build(now_ms))?;
                    *replayed.entry(key.clone()).or_default() += batch.records_count() as u64;
                }
                let commit = [((names.dlq.clone(), span.partition), None, next)];
                groups::commit_plan(&mut nodes.coordinator, &names.replay_group, &commit)
            },
        )?;
    }
    Ok(replayed)
}

/// The replay batches of `letters`, routed by `targets`, in the order to
/// produce them: per target partition, the dead letters' order; a batch
/// closes once it holds [`REPLAY_BATCH_TARGET_BYTES`].
fn replay_batches(
    targets: &mut Targets,
    letters: &[DeadLetter],
) -> Result<Vec<(PartitionKey, ReplayBatch)>, String> {
    let mut batches: Vec<(PartitionKey, ReplayBatch)> = Vec::new();
    let mut open: BTreeMap<PartitionKey, usize> = BTreeMap::new();
    for letter in letters {
        let key = targets.route(letter).map_err(|why| {
            format!(
                "dead letter at {}-{}: {why}",
                letter.partition, letter.offset
            )
        })?;
        let index = *open.entry(key.clone()).or_insert_with(|| {
            batches.push((key.clone(), ReplayBatch::default()));
            batches.len() - 1
        });
        let batch = &mut batches[index].1;
        batch.push(letter);
        if batch.encoded_len() >= REPLAY_BATCH_TARGET_BYTES {
            open.remove(&key);
        }
    }
    Ok(batches)
}

/// A Produce of `batch` to `topic`-`partition` with acks=all.
fn produce_request(topic: &str, partition: i32, batch: Vec<u8>) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(ACKS_ALL)
        .with_timeout_ms(PRODUCE_TIMEOUT_MS)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(text(topic)))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(Bytes::from(batch))),
                ]),
        ])
}

/// Produce `batch` to partition `key` with acks=all; a refusal names the
/// partition and the broker's reason (KIP-467's record error if any).
fn produce(client: &mut KafkaClient, key: &PartitionKey, batch: Vec<u8>) -> AdminResult {
    let (topic, partition) = (key.0.as_str(), key.1);
    let version = client
        .version_of::<ProduceRequest>()?
        .min(PRODUCE_BY_NAME_VERSION_MAX);
    let request = produce_request(topic, partition, batch);
    let response = client.call_at(&request, version)?;
    let answer = response
        .responses
        .iter()
        .flat_map(|topic| &topic.partition_responses)
        .find(|answer| answer.index == partition)
        .with_context(|| format!("Produce answered without {topic}-{partition}"))?;
    if answer.error_code != 0 {
        let reason = answer
            .record_errors
            .iter()
            .find_map(|record| record.batch_index_error_message.as_deref())
            .or(answer.error_message.as_deref());
        anyhow::bail!(
            "producing to {topic}-{partition} failed: {}",
            describe_error(answer.error_code, reason)
        );
    }
    Ok(())
}

/// Records per target partition, as a table.
fn counts_table(counts: &Counts) -> String {
    let mut table = Table::new(&["TOPIC", "PARTITION", "RECORDS"]);
    for ((topic, partition), records) in counts {
        table.row(vec![
            topic.clone(),
            partition.to_string(),
            records.to_string(),
        ]);
    }
    table.render()
}

/// The wall clock, epoch milliseconds: a replayed record's timestamp.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::dlq::letter::Header;
    use crate::broker::retry::{DLQ_OFFSET, DLQ_PARTITION, DLQ_TOPIC, RECONSUME_TIMES};

    fn letter(offset: i64, key: Option<&str>, value: &str) -> DeadLetter {
        let header = |key: &str, value: &str| Header {
            key: key.as_bytes().to_vec(),
            value: Some(value.as_bytes().to_vec()),
        };
        DeadLetter {
            partition: 1,
            offset,
            timestamp_ms: 1_700_000_000_000,
            key: key.map(|key| key.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: vec![
                header(RECONSUME_TIMES, "16"),
                header(DLQ_TOPIC, "orders"),
                header(DLQ_PARTITION, "3"),
                header(DLQ_OFFSET, "41"),
            ],
        }
    }

    #[test]
    fn a_long_value_is_cut_with_an_ellipsis_in_the_list() {
        let long = "x".repeat(PREVIEW_CHARS_MAX + 5);
        let mut bare = letter(8, None, "tab\there");
        bare.headers.clear();
        let rendered = list_table(&[letter(7, Some("k1"), &long), bare]);
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "PARTITION",
                "OFFSET",
                "TIMESTAMP",
                "ATTEMPTS",
                "FROM",
                "KEY",
                "VALUE"
            ]
        );
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        let cut = format!("{}…", "x".repeat(PREVIEW_CHARS_MAX));
        assert_eq!(
            cells,
            [
                "1",
                "7",
                "1700000000000",
                "16",
                "orders-3@41",
                "k1",
                cut.as_str()
            ]
        );
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            cells,
            ["1", "8", "1700000000000", "-", "-", "-", "tab\\there"]
        );
        assert_eq!(preview(Some(&[0xff, b'a'])), "\u{fffd}a");
        assert_eq!(
            preview(Some(&b"x".repeat(PREVIEW_CHARS_MAX))),
            "x".repeat(60)
        );
    }

    #[test]
    fn the_summary_counts_every_dead_letter_and_the_replayed_ones() {
        let names = Names::of("orders");
        let counts = ListCounts {
            total: 250,
            shown: 100,
            replayed: 40,
            any_committed: true,
        };
        assert_eq!(
            list_summary(&names, &counts),
            [
                "250 dead letters in orders.dlq, 40 replayed (group orders.dlq.replay)",
                "(the first 100 shown; --limit N shows more)",
            ]
        );
        let fresh = ListCounts {
            total: 1,
            shown: 1,
            ..ListCounts::default()
        };
        assert_eq!(
            list_summary(&names, &fresh),
            ["1 dead letter in orders.dlq, none replayed (group orders.dlq.replay)"]
        );
    }

    #[test]
    fn a_replay_starts_at_the_committed_offset_within_the_log() {
        let span = |committed| Span {
            partition: 0,
            leader: None,
            log_start: 10,
            end: 20,
            committed,
        };
        assert_eq!(span(None).replay_from(), 10);
        assert_eq!(span(Some(15)).replay_from(), 15);
        assert_eq!(span(Some(3)).replay_from(), 10);
        assert_eq!(span(Some(25)).replay_from(), 20);
        assert_eq!(replay_group("orders"), "orders.dlq.replay");
    }

    #[test]
    fn fetch_and_produce_encode_at_every_version_used() {
        use kafka_protocol::protocol::{Encodable, Message};
        let mut batch = ReplayBatch::default();
        batch.push(&letter(1, Some("k"), "v"));
        let versions = |range: kafka_protocol::protocol::VersionRange, max| range.min..=max;
        for version in versions(FetchRequest::VERSIONS, FETCH_BY_NAME_VERSION_MAX) {
            let mut out = bytes::BytesMut::new();
            fetch_request("orders.dlq", 1, 40)
                .encode(&mut out, version)
                .unwrap_or_else(|error| panic!("Fetch v{version}: {error}"));
        }
        for version in versions(ProduceRequest::VERSIONS, PRODUCE_BY_NAME_VERSION_MAX) {
            let mut out = bytes::BytesMut::new();
            produce_request("orders", 3, batch.build(0))
                .encode(&mut out, version)
                .unwrap_or_else(|error| panic!("Produce v{version}: {error}"));
        }
    }

    #[test]
    fn replay_batches_keep_each_partitions_order_and_close_when_full() {
        let mut targets = Targets::new(Some("audit"));
        targets.learn("audit", Ok(1));
        let big = "v".repeat(REPLAY_BATCH_TARGET_BYTES / 2);
        let letters = [
            letter(1, Some("a"), &big),
            letter(2, Some("b"), &big),
            letter(3, Some("c"), "small"),
        ];
        let batches = replay_batches(&mut targets, &letters).unwrap();
        let sizes: Vec<(PartitionKey, i32)> = batches
            .iter()
            .map(|(key, batch)| (key.clone(), batch.records_count()))
            .collect();
        let audit = ("audit".to_owned(), 0);
        assert_eq!(sizes, [(audit.clone(), 2), (audit, 1)]);
        let mut nowhere = Targets::new(None);
        let mut bare = letter(9, None, "v");
        bare.headers.clear();
        let error = replay_batches(&mut nowhere, &[bare]).unwrap_err();
        assert!(error.starts_with("dead letter at 1-9: "), "{error}");
    }
}
