//! DescribeLogDirs (API 35, versions 1–4): where partitions are stored and
//! how much they hold, as `kafka-log-dirs --describe` and the admin
//! clients' `describeLogDirs` read it. It needs DESCRIBE on the cluster
//! (CLUSTER_AUTHORIZATION_FAILED from v3, an empty answer before).
//!
//! Each shard's directory (`<data_dir>/shard-<n>`, absolute) is one log
//! dir: a partition lives in exactly one, its owner's, which holds both its
//! consume queue and the commit log its batches are in. Per partition:
//!
//! * `partition_size`: the bytes of its readable batches, from the batch
//!   holding the log start offset up to the high watermark, as its consume
//!   queue indexes them (batch bytes as stored; the commit log's frame
//!   headers and the queue's own files are not counted). Partitions share
//!   their shard's commit log, so this is the partition's share of it, not
//!   the size of files of its own as in Kafka; records deleted (retention,
//!   DeleteRecords) stop counting when the log start passes their batch,
//!   though the segment holding them may outlive them while other
//!   partitions still need it.
//! * `offset_lag` 0 and `is_future_key` false: there are no replicas and no
//!   AlterReplicaLogDirs moves.
//!
//! v4 adds the filesystem's total and usable bytes (statvfs: every block,
//! and the blocks free to unprivileged users), as Java's `FileStore`
//! reports them. Null topics describe every partition; otherwise only the
//! partitions named that exist (others are left out, as in Kafka), and a
//! topic with none of them is left out. A shard's queue is counted in
//! slices of [`STORED_BYTES_ENTRIES_PER_SLICE`] entries, yielding between
//! them, so a long queue does not hold the shard's other work up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use futures_util::future::join_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};

use super::{decode, str_bytes};
use crate::ids::PartitionId;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;
use crate::shard::ShardContext;
use crate::shard::local_sync::yield_now;
use crate::storage::layout::ShardLayout;
use crate::storage::{ShardStore, disk_usage};

/// Consume-queue entries counted before the shard runs its other work
/// (about a millisecond's worth).
pub const STORED_BYTES_ENTRIES_PER_SLICE: u64 = 32_768;

/// The partitions asked for, by topic; `None`: every partition.
type Wanted = Option<BTreeMap<String, BTreeSet<i32>>>;

/// What one shard reports about its directory.
struct ShardDir {
    path: String,
    /// `None` when the filesystem could not be asked (the dir is reported
    /// with KAFKA_STORAGE_ERROR).
    space: Option<disk_usage::FilesystemSpace>,
    /// (topic, [(partition index, stored bytes)]), topics in name order.
    topics: Vec<(String, Vec<(i32, u64)>)>,
}

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let describe: DescribeLogDirsRequest = decode(request, body)?;
    if !request.authorizer().cluster(Operation::Describe) {
        // Kafka: a top-level error from v3, an empty answer before it.
        let mut response = DescribeLogDirsResponse::default();
        if request.version >= 3 {
            response = response.with_error_code(ResponseError::ClusterAuthorizationFailed.code());
        }
        return request.respond(response);
    }
    let wanted: Wanted = describe.topics.map(|topics| {
        let mut wanted: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
        for topic in topics {
            wanted
                .entry(topic.topic.0.to_string())
                .or_default()
                .extend(topic.partitions);
        }
        wanted
    });
    let shards: Vec<_> = request.shard.shards.ids().collect();
    let calls = shards.iter().map(|&shard| {
        let wanted = wanted.clone();
        request.shard.run_on(shard, move |context| async move {
            describe_shard(&context, wanted.as_ref()).await
        })
    });
    let described = join_all(calls).await;
    let data_dir = &request.broker.config.data_dir;
    let results = shards
        .iter()
        .zip(described)
        .map(|(&shard, described)| match described {
            Ok(dir) => dir_result(dir),
            // The shard stopped (shutdown): its directory cannot be read.
            Err(_) => DescribeLogDirsResult::default()
                .with_log_dir(str_bytes(&absolute(
                    ShardLayout::new(data_dir, shard).root(),
                )))
                .with_error_code(ResponseError::KafkaStorageError.code()),
        })
        .collect();
    request.respond(DescribeLogDirsResponse::default().with_results(results))
}

fn dir_result(dir: ShardDir) -> DescribeLogDirsResult {
    let result = DescribeLogDirsResult::default().with_log_dir(str_bytes(&dir.path));
    let Some(space) = dir.space else {
        return result.with_error_code(ResponseError::KafkaStorageError.code());
    };
    let topics = dir
        .topics
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, bytes)| {
                    DescribeLogDirsPartition::default()
                        .with_partition_index(index)
                        .with_partition_size(i64::try_from(bytes).unwrap_or(i64::MAX))
                        .with_offset_lag(0)
                        .with_is_future_key(false)
                })
                .collect();
            DescribeLogDirsTopic::default()
                .with_name(TopicName(str_bytes(&name)))
                .with_partitions(partitions)
        })
        .collect();
    result
        .with_topics(topics)
        .with_total_bytes(i64::try_from(space.total_bytes).unwrap_or(i64::MAX))
        .with_usable_bytes(i64::try_from(space.usable_bytes).unwrap_or(i64::MAX))
}

/// On a shard: its directory, the filesystem's size, and the stored bytes
/// of each wanted partition it owns.
async fn describe_shard(
    context: &ShardContext,
    wanted: Option<&BTreeMap<String, BTreeSet<i32>>>,
) -> ShardDir {
    let root = context.store().root_dir().to_owned();
    let space = match disk_usage::space(&root) {
        Ok(space) => Some(space),
        Err(error) => {
            tracing::warn!(dir = %root.display(), %error, "DescribeLogDirs cannot read the filesystem's size");
            None
        }
    };
    let mut topics: Vec<(String, Vec<(i32, u64)>)> = Vec::new();
    // In a cluster every shard-group log this shard keeps (led or
    // followed), each partition from the store that holds its group's log
    // (every store keeps the shard's internal partitions).
    let mut stores = vec![context.store()];
    stores.extend(context.group_stores().into_iter().map(|(_, store)| store));
    let mut partitions: Vec<(String, u32, PartitionId, Rc<ShardStore>)> = Vec::new();
    let mut listed: BTreeSet<(String, u32)> = BTreeSet::new();
    for store in &stores {
        for (topic, index, id) in store.partitions() {
            let holder = context.store_for(&topic, index);
            if Rc::ptr_eq(&holder, store) && listed.insert((topic.clone(), index)) {
                partitions.push((topic, index, id, Rc::clone(store)));
            }
        }
    }
    partitions.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for (topic, index, id, store) in partitions {
        let Ok(index) = i32::try_from(index) else {
            continue;
        };
        let asked = wanted.is_none_or(|wanted| {
            wanted
                .get(&topic)
                .is_some_and(|partitions| partitions.contains(&index))
        });
        if !asked {
            continue;
        }
        let Some(bytes) = stored_bytes(&store, id).await else {
            continue;
        };
        match topics.last_mut() {
            Some((name, partitions)) if *name == topic => partitions.push((index, bytes)),
            _ => topics.push((topic, vec![(index, bytes)])),
        }
    }
    ShardDir {
        path: absolute(&root),
        space,
        topics,
    }
}

/// The partition's stored bytes, counted a slice at a time; `None` if it
/// was deleted meanwhile. A damaged queue entry ends the count there (the
/// bytes before it are reported; the damage is logged, and a Fetch of it
/// gets KAFKA_STORAGE_ERROR).
async fn stored_bytes(store: &ShardStore, id: PartitionId) -> Option<u64> {
    let mut total = 0u64;
    let mut from = None;
    loop {
        match store.stored_bytes_step(id, from, STORED_BYTES_ENTRIES_PER_SLICE)? {
            Ok(step) => {
                total += step.bytes;
                match step.next {
                    Some(next) => from = Some(next),
                    None => return Some(total),
                }
            }
            Err(error) => {
                tracing::warn!(partition = %id, %error, "DescribeLogDirs: the partition's size stops at a damaged consume-queue entry");
                return Some(total);
            }
        }
        yield_now().await;
    }
}

/// `path` made absolute against the working directory, as Kafka reports
/// log dirs (without resolving links).
fn absolute(path: &Path) -> String {
    let path = std::path::absolute(path).unwrap_or_else(|error| {
        tracing::warn!(path = %path.display(), %error, "cannot make a log dir absolute; reporting it as configured");
        path.to_owned()
    });
    path.display().to_string()
}
