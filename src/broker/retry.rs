//! Consumer retries and dead letters (issue 18; ARCHITECTURE.md, "Delayed
//! delivery, retry and dead letters"): RocketMQ's `sendMessageBack` for
//! unmodified Kafka clients, through topic names and record headers.
//!
//! - A consumer of group `G` that fails a record produces it, with the
//!   headers it received, to [`retry_topic`] `G.retry` (created on first use
//!   like any auto-created topic). Every record produced there is held by
//!   the broker's timer for the back-off of its attempt
//!   ([`crate::broker::delay::retry_delay_ms`] of its [`RECONSUME_TIMES`],
//!   missing = 0: 10 s, 30 s, 1 m, 2 m … 2 h), then appended to the same
//!   partition of `G.retry` with the count plus one. Delay headers are not
//!   read on a retry topic: the back-off decides.
//! - Provenance: the record a retry is about is named by [`RETRY_TOPIC`],
//!   [`RETRY_PARTITION`] and [`RETRY_OFFSET`]. A consumer may set them on
//!   its first retry (its record's topic, partition and offset: all three or
//!   none); records consumed from `G.retry` carry them, so later retries
//!   that copy the headers received keep them. A first retry without them
//!   gets them from the broker, naming the record's place in `G.retry`
//!   (topic and partition at Produce, the offset at delivery).
//! - When the count reached the group's `max_reconsume_times` (the topic
//!   config [`MAX_RECONSUME_TIMES`] of `G.retry`, else the broker's
//!   `delay.max_reconsume_times`, 16), the record goes at once to
//!   [`dlq_topic`] `G.dlq` instead, with [`DLQ_TOPIC`], [`DLQ_PARTITION`],
//!   [`DLQ_OFFSET`] (the provenance above) and [`RECONSUME_TIMES`] (the
//!   retries made). It goes to the partition of `G.dlq` kept by the same
//!   shard (shard group, in a cluster) as its `G.retry` partition, so the
//!   move is an ordinary timer delivery within one commit log; the broker
//!   creates `G.dlq` with a partition for every shard.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;
pub use crate::broker::delay::RECONSUME_TIMES;
use crate::broker::metadata::TopicMeta;
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::shard::ShardContext;
use crate::storage::timer::held::Hold;

/// The suffix of a group's retry topic: `G.retry`.
pub const RETRY_SUFFIX: &str = ".retry";
/// The suffix of a group's dead-letter topic: `G.dlq`.
pub const DLQ_SUFFIX: &str = ".dlq";

/// Header: the topic of the record a retry is about.
pub const RETRY_TOPIC: &str = "sluice.retry.topic";
/// Header: its partition, decimal.
pub const RETRY_PARTITION: &str = "sluice.retry.partition";
/// Header: its offset, decimal.
pub const RETRY_OFFSET: &str = "sluice.retry.offset";
/// Header of a dead letter: the topic of the record that failed.
pub const DLQ_TOPIC: &str = "sluice.dlq.topic";
/// Header of a dead letter: its partition, decimal.
pub const DLQ_PARTITION: &str = "sluice.dlq.partition";
/// Header of a dead letter: its offset, decimal.
pub const DLQ_OFFSET: &str = "sluice.dlq.offset";

/// Topic config of a retry topic: how many retries its group gets before a
/// record is dead-lettered; -1 (the default) = the broker's
/// `delay.max_reconsume_times`.
pub const MAX_RECONSUME_TIMES: &str = "sluice.max.reconsume.times";

/// The group whose retry topic `topic` is (`G` of `G.retry`), if it is one.
pub fn retry_group(topic: &str) -> Option<&str> {
    topic
        .strip_suffix(RETRY_SUFFIX)
        .filter(|group| !group.is_empty())
}

/// Whether `topic` is a group's retry (`G.retry`) or dead-letter (`G.dlq`)
/// topic, which Metadata creates on first use even when the client asks for
/// no auto-creation (the broker's `kafka.auto_create_topics` still rules).
pub fn is_retry_or_dlq(topic: &str) -> bool {
    retry_group(topic).is_some()
        || topic
            .strip_suffix(DLQ_SUFFIX)
            .is_some_and(|group| !group.is_empty())
}

/// Group `group`'s retry topic.
pub fn retry_topic(group: &str) -> String {
    format!("{group}{RETRY_SUFFIX}")
}

/// Group `group`'s dead-letter topic.
pub fn dlq_topic(group: &str) -> String {
    format!("{group}{DLQ_SUFFIX}")
}

/// What decides how a record produced to a retry topic is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryRules {
    /// The retry topic (`G.retry`) and the partition produced to.
    pub topic: String,
    pub partition: u32,
    /// Level `n` waits `levels_ms[n - 1]` milliseconds (`delay.levels_ms`).
    pub levels_ms: Vec<u64>,
    /// Retries before a record is dead-lettered.
    pub max_reconsume_times: u32,
    /// The partition of `G.dlq` in the same commit log (its
    /// [`crate::ids::PartitionId`]); `None` when there is none, and a
    /// record past its retries keeps retrying at the last back-off.
    pub dlq_target: Option<u32>,
}

/// What becomes of a record produced to a retry topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Held for its back-off, then appended to the retry topic again.
    Again(Hold),
    /// Moved at once to the group's dead-letter topic.
    DeadLetter(Hold),
    /// Past its retries, but with no dead-letter partition to go to: held
    /// for the last back-off, as [`Retry::Again`].
    NoDeadLetterPartition(Hold),
}

/// How a record with `headers` (key, value; `None`: a null value),
/// produced to a retry topic at the broker's `now_ms`, is held (see the
/// module docs). Errors name the header: a broker-only header, a count or
/// provenance partition or offset that is not a decimal number, a header
/// given twice, provenance headers not all three given.
pub fn retry<'h>(
    headers: impl IntoIterator<Item = (&'h [u8], Option<&'h [u8]>)>,
    now_ms: i64,
    rules: &RetryRules,
) -> Result<Retry, String> {
    let mut times: Option<u64> = None;
    // Topic, partition, offset of the record the retry is about.
    let mut provenance: [Option<String>; 3] = [None, None, None];
    for (key, value) in headers {
        crate::broker::delay::reserved(key)?;
        if key == RECONSUME_TIMES.as_bytes() {
            if times.is_some() {
                return Err(format!("header {RECONSUME_TIMES} is given twice"));
            }
            times = Some(crate::broker::delay::decimal(RECONSUME_TIMES, value)?);
            continue;
        }
        let Some(slot) = [RETRY_TOPIC, RETRY_PARTITION, RETRY_OFFSET]
            .iter()
            .position(|name| name.as_bytes() == key)
        else {
            continue;
        };
        let name = [RETRY_TOPIC, RETRY_PARTITION, RETRY_OFFSET][slot];
        if provenance[slot].is_some() {
            return Err(format!("header {name} is given twice"));
        }
        provenance[slot] = Some(if slot == 0 {
            value
                .and_then(|value| std::str::from_utf8(value).ok())
                .filter(|topic| !topic.is_empty())
                .ok_or_else(|| format!("header {name} is not a topic name"))?
                .to_owned()
        } else {
            crate::broker::delay::decimal(name, value)?.to_string()
        });
    }
    let given = provenance.iter().filter(|part| part.is_some()).count();
    if given != 0 && given != 3 {
        return Err(format!(
            "headers {RETRY_TOPIC}, {RETRY_PARTITION} and {RETRY_OFFSET} name the failed record \
             together: give all three or none"
        ));
    }
    let times = times.unwrap_or(0);
    let [topic, partition, offset] = provenance;
    let past_retries = times >= u64::from(rules.max_reconsume_times);
    if past_retries && let Some(target) = rules.dlq_target {
        // Named by the consumer, or, the record's place in this topic (the
        // offset is added at delivery: `storage/timer/notes.rs`).
        let mut headers = vec![
            (DLQ_TOPIC, topic.unwrap_or_else(|| rules.topic.clone())),
            (
                DLQ_PARTITION,
                partition.unwrap_or_else(|| rules.partition.to_string()),
            ),
            (RECONSUME_TIMES, times.to_string()),
            (
                crate::storage::timer::held::TARGET_HEADER,
                target.to_string(),
            ),
        ];
        let mut removed = Vec::new();
        match offset {
            Some(offset) => headers.push((DLQ_OFFSET, offset)),
            None => removed.push(DLQ_OFFSET),
        }
        return Ok(Retry::DeadLetter(Hold {
            due_ms: now_ms,
            headers,
            removed,
        }));
    }
    let attempt = u32::try_from(times).unwrap_or(u32::MAX);
    let wait = crate::broker::delay::retry_delay_ms(attempt, &rules.levels_ms);
    let mut headers = vec![(RECONSUME_TIMES, times.saturating_add(1).to_string())];
    if topic.is_none() {
        headers.push((RETRY_TOPIC, rules.topic.clone()));
        headers.push((RETRY_PARTITION, rules.partition.to_string()));
    }
    let hold = Hold {
        due_ms: now_ms.saturating_add(i64::try_from(wait).unwrap_or(i64::MAX)),
        headers,
        removed: Vec::new(),
    };
    Ok(if past_retries {
        Retry::NoDeadLetterPartition(hold)
    } else {
        Retry::Again(hold)
    })
}

/// The rules for partition `index` of the retry topic `topic` of group
/// `group`: its group's retry count, and the partition of `G.dlq` in the
/// same commit log, creating `G.dlq` (with a partition in every log:
/// [`Broker::ensure_topic`]) and that partition if needed.
/// Without auto-creation, or with a `G.dlq` that has no partition in that
/// log, there is no dead-letter partition (logged).
pub async fn rules(
    broker: &Broker,
    context: &Rc<ShardContext>,
    topic: &TopicMeta,
    index: u32,
    group: &str,
) -> RetryRules {
    let max_reconsume_times = u32::try_from(topic.config.max_reconsume_times)
        .unwrap_or(broker.config.delay.max_reconsume_times);
    let dlq = dlq_topic(group);
    let dlq_target = match broker.ensure_topic(context, &dlq).await {
        // Compaction would keep one dead letter per key (and none without
        // a key): a compacted G.dlq is not used.
        Some(meta) if meta.config.compact_policy => None,
        Some(meta) => dlq_partition(context, meta, &topic.name, index).await,
        None => None,
    };
    if dlq_target.is_none()
        && let Some(failed) = NO_DLQ_PARTITION.record(monotonic_ms())
    {
        tracing::warn!(
            retry_topic = topic.name,
            partition = index,
            dead_letter_topic = dlq,
            failed,
            "no partition of the dead-letter topic is kept with this retry partition (the topic \
             is missing and kafka.auto_create_topics is off, or it was created with too few \
             partitions, or with cleanup.policy=compact, which would delete dead letters): \
             records past their retries keep retrying at the last back-off (`failed` counts \
             such produces since the last line)"
        );
    }
    RetryRules {
        topic: topic.name.clone(),
        partition: index,
        levels_ms: broker.config.delay.levels_ms.clone(),
        max_reconsume_times,
        dlq_target,
    }
}

static NO_DLQ_PARTITION: LogThrottle = LogThrottle::with_lines(Duration::from_secs(60), 1);

/// The [`crate::ids::PartitionId`] of the first partition of `dlq` kept in
/// the same commit log as partition `index` of `retry_topic`, created there
/// if need be; run on the shard owning that log.
async fn dlq_partition(
    context: &Rc<ShardContext>,
    dlq: Arc<TopicMeta>,
    retry_topic: &str,
    index: u32,
) -> Option<u32> {
    let owner = context.shards.owner(retry_topic, index);
    let retry_topic = retry_topic.to_owned();
    context
        .run_on(owner, move |context| async move {
            let same = (0..dlq.partitions)
                .find(|&slot| context.same_log((&dlq.name, slot), (&retry_topic, index)))?;
            let store = context.store_for(&dlq.name, same);
            if store.partition_id(&dlq.name, same).is_none() {
                crate::broker::create_partition_here(&context, &dlq, same).ok()?;
            }
            store.partition_id(&dlq.name, same).map(|id| id.0)
        })
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::delay::ROCKETMQ_LEVELS_MS;

    const NOW: i64 = 1_700_000_000_000;

    fn rules(dlq_target: Option<u32>) -> RetryRules {
        RetryRules {
            topic: "g.retry".to_owned(),
            partition: 2,
            levels_ms: ROCKETMQ_LEVELS_MS.to_vec(),
            max_reconsume_times: 16,
            dlq_target,
        }
    }

    fn held(headers: &[(&str, &str)], rules: &RetryRules) -> Result<Retry, String> {
        retry(
            headers
                .iter()
                .map(|(key, value)| (key.as_bytes(), Some(value.as_bytes()))),
            NOW,
            rules,
        )
    }

    fn set(hold: &Hold) -> Vec<(&str, &str)> {
        hold.headers
            .iter()
            .map(|(key, value)| (*key, value.as_str()))
            .collect()
    }

    #[test]
    fn a_first_retry_waits_10_s_and_is_named_by_its_place_in_the_retry_topic() {
        let Ok(Retry::Again(hold)) = held(&[("trace", "x")], &rules(Some(9))) else {
            panic!("retried")
        };
        assert_eq!(hold.due_ms, NOW + 10_000);
        assert_eq!(
            set(&hold),
            [
                (RECONSUME_TIMES, "1"),
                (RETRY_TOPIC, "g.retry"),
                (RETRY_PARTITION, "2")
            ]
        );
    }

    #[test]
    fn later_retries_back_off_and_keep_the_named_record() {
        let named = [
            (RETRY_TOPIC, "orders"),
            (RETRY_PARTITION, "0"),
            (RETRY_OFFSET, "41"),
        ];
        let mut headers = named.to_vec();
        headers.push((RECONSUME_TIMES, "3"));
        let Ok(Retry::Again(hold)) = held(&headers, &rules(Some(9))) else {
            panic!("retried")
        };
        assert_eq!(hold.due_ms, NOW + 120_000, "the 4th attempt waits 2 m");
        assert_eq!(
            set(&hold),
            [(RECONSUME_TIMES, "4")],
            "provenance kept as given"
        );
    }

    #[test]
    fn past_max_reconsume_times_a_record_is_dead_lettered_at_once() {
        let headers = [
            (RECONSUME_TIMES, "16"),
            (RETRY_TOPIC, "orders"),
            (RETRY_PARTITION, "1"),
            (RETRY_OFFSET, "77"),
        ];
        let Ok(Retry::DeadLetter(hold)) = held(&headers, &rules(Some(9))) else {
            panic!("dead-lettered")
        };
        assert_eq!(hold.due_ms, NOW);
        assert_eq!(
            set(&hold),
            [
                (DLQ_TOPIC, "orders"),
                (DLQ_PARTITION, "1"),
                (RECONSUME_TIMES, "16"),
                ("sluice.target.partition", "9"),
                (DLQ_OFFSET, "77"),
            ]
        );
        let Ok(Retry::DeadLetter(hold)) = held(&[(RECONSUME_TIMES, "20")], &rules(Some(9))) else {
            panic!("dead-lettered")
        };
        let Ok(Retry::DeadLetter(huge)) =
            held(&[(RECONSUME_TIMES, "999999999999999999")], &rules(Some(9)))
        else {
            panic!("dead-lettered")
        };
        assert_eq!(
            set(&huge)[2],
            (RECONSUME_TIMES, "999999999999999999"),
            "the count kept as sent"
        );
        assert_eq!(
            &set(&hold)[..2],
            [(DLQ_TOPIC, "g.retry"), (DLQ_PARTITION, "2")]
        );
        assert_eq!(hold.removed, [DLQ_OFFSET], "the offset comes at delivery");
        let Ok(Retry::NoDeadLetterPartition(hold)) = held(&[(RECONSUME_TIMES, "16")], &rules(None))
        else {
            panic!("kept retrying")
        };
        assert_eq!(hold.due_ms, NOW + 7_200_000, "at the last back-off");
        let never = RetryRules {
            max_reconsume_times: 0,
            ..rules(Some(3))
        };
        assert!(matches!(held(&[], &never), Ok(Retry::DeadLetter(_))));
    }

    #[test]
    fn bad_headers_are_errors_naming_them() {
        for (headers, says) in [
            (vec![(RECONSUME_TIMES, "x")], "not a decimal number"),
            (
                vec![(RECONSUME_TIMES, "1"), (RECONSUME_TIMES, "2")],
                "given twice",
            ),
            (vec![(RETRY_TOPIC, "t")], "all three or none"),
            (
                vec![
                    (RETRY_TOPIC, "t"),
                    (RETRY_PARTITION, "-1"),
                    (RETRY_OFFSET, "1"),
                ],
                "not a decimal number",
            ),
            (
                vec![
                    (RETRY_TOPIC, ""),
                    (RETRY_PARTITION, "1"),
                    (RETRY_OFFSET, "1"),
                ],
                "not a topic name",
            ),
            (vec![("sluice.due.ms", "1")], "the broker's own"),
            (vec![("sluice.target.partition", "1")], "the broker's own"),
        ] {
            let error = held(&headers, &rules(Some(1))).unwrap_err();
            assert!(error.contains(says), "{headers:?}: {error}");
        }
    }

    #[test]
    fn retry_topics_name_their_group() {
        assert_eq!(retry_group("orders.retry"), Some("orders"));
        assert_eq!(retry_group("a.b.retry"), Some("a.b"));
        assert_eq!(retry_group(".retry"), None);
        assert_eq!(retry_group("orders"), None);
        assert_eq!(retry_group("orders.retry.x"), None);
        assert_eq!(retry_topic("g"), "g.retry");
        assert!(is_retry_or_dlq("g.retry") && is_retry_or_dlq("g.dlq"));
        assert!(!is_retry_or_dlq(".dlq") && !is_retry_or_dlq("g.dlq.x"));
        assert_eq!(dlq_topic("g"), "g.dlq");
    }
}
