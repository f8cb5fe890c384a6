//! Creating partitions: the checks, the name and the id are settled on the
//! shard; the files (the partition-id counter, the directory, the metadata,
//! the first consume-queue file with blocks reserved under its first
//! entries) are made by [`FileWork::run`], which
//! [`ShardStore::create_partitions`] runs on the blocking pool. Each
//! partition costs several fsyncs (a few milliseconds), so a CreateTopics of
//! 10 000 partitions made on the shard thread held its appends and fetches
//! for tens of seconds (issue 19, item 3: the shard thread sat in D state
//! three quarters of the time while its partitions were created).
//!
//! Order on disk, for a crash at any point: the partition-id counter is
//! durable before any directory under an id it covers; a directory is
//! durable in the partitions directory before its metadata is written; the
//! metadata is written atomically (recovery removes a directory without
//! it). The first consume-queue file is an empty queue's (recovery deletes
//! and recreates it when nothing in it is trusted).

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

use super::consume_queue::ConsumeQueue;
use super::durable_file::write_atomic;
use super::partition::{META_FILE, Partition, PartitionConfig, PartitionMeta, validate_topic_name};
use super::segment;
use super::shard_store::ShardStore;
use super::store_errors::PartitionError;
use crate::ids::PartitionId;

/// A partition to create: `id` is a cluster controller's id
/// ([`PartitionId::CLUSTER_FIRST`] or above, the same on every replica),
/// or none for the shard to allocate one.
#[derive(Clone, Debug)]
pub struct NewPartition {
    pub topic: String,
    pub index: u32,
    pub id: Option<PartitionId>,
    pub config: PartitionConfig,
}

/// A partition whose name and id are taken; its files are being made.
struct Planned {
    meta: PartitionMeta,
    config: PartitionConfig,
    dir: PathBuf,
}

/// The file-system half of a batch of creations: plain data and files, run
/// on any thread.
struct FileWork {
    partitions_dir: PathBuf,
    ids_file: PathBuf,
    /// The partition-id counter to make durable first, when the batch
    /// allocated ids; `ids_written` holds the last value written, so a
    /// batch finishing late never records a smaller one.
    next_id: Option<u32>,
    ids_written: Arc<Mutex<u32>>,
    entries_per_file: u32,
    /// Each partition's metadata and directory, in the batch's order.
    partitions: Vec<(PartitionMeta, PathBuf)>,
}

type Made = Result<ConsumeQueue, PartitionError>;

impl FileWork {
    /// Make every partition's files; one result per partition, in order.
    /// Blocking: two fsyncs per partition and three per batch.
    fn run(self) -> Vec<Made> {
        let io = |path: &PathBuf| {
            let path = path.clone();
            move |source| PartitionError::Io { path, source }
        };
        if let Some(next_id) = self.next_id {
            let mut written = self
                .ids_written
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if next_id > *written {
                let recorded = write_atomic(&self.ids_file, format!("{next_id}\n").as_bytes());
                if let Err(source) = recorded {
                    let error = source.to_string();
                    return self
                        .partitions
                        .iter()
                        .map(|_| {
                            Err(PartitionError::Io {
                                path: self.ids_file.clone(),
                                source: std::io::Error::new(source.kind(), error.clone()),
                            })
                        })
                        .collect();
                }
                *written = next_id;
            }
        }
        let mut made: Vec<Result<(), PartitionError>> = self
            .partitions
            .iter()
            .map(|(_, dir)| std::fs::create_dir_all(dir).map_err(io(dir)))
            .collect();
        if let Err(source) = segment::sync_dir(&self.partitions_dir) {
            // Not one directory is known to survive a crash: none may get
            // metadata, or a partition could be announced and then lost.
            let error = source.to_string();
            for result in made.iter_mut().filter(|result| result.is_ok()) {
                *result = Err(PartitionError::Io {
                    path: self.partitions_dir.clone(),
                    source: std::io::Error::new(source.kind(), error.clone()),
                });
            }
        }
        self.partitions
            .into_iter()
            .zip(made)
            .map(|((meta, dir), created)| {
                created?;
                write_atomic(&dir.join(META_FILE), &meta.encode()).map_err(io(&dir))?;
                let mut queue = ConsumeQueue::open(&dir, self.entries_per_file, 0)?;
                // The first file and the blocks of its first page, ahead
                // of the first append (which would make them on the shard
                // thread); reservations ahead grow it from there.
                queue.prepare_next()?;
                Ok(queue)
            })
            .collect()
    }
}

/// Takes a batch's names off the "being created" list when the batch ends,
/// finished or dropped half-way.
struct CreatingGuard<'a> {
    store: &'a ShardStore,
    names: Vec<(String, u32)>,
}

impl Drop for CreatingGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.store.state.borrow_mut();
        for name in &self.names {
            state.creating.remove(name);
        }
    }
}

impl ShardStore {
    /// Create a partition's files (durably) and start indexing it, on the
    /// calling thread; see [`ShardStore::create_partitions`].
    pub fn create_partition(
        &self,
        topic: &str,
        index: u32,
        config: PartitionConfig,
    ) -> Result<PartitionId, PartitionError> {
        self.create_partition_as(topic, index, None, config)
    }

    /// [`ShardStore::create_partition`] under `id` when one is given (a
    /// cluster's controller allocated it, [`PartitionId::CLUSTER_FIRST`] or
    /// above, so every replica of the partition has it); refused when the
    /// shard holds another partition under it. Blocks the calling thread
    /// for the partition's fsyncs: for startup, tests and single
    /// partitions; batches go through [`ShardStore::create_partitions`].
    pub fn create_partition_as(
        &self,
        topic: &str,
        index: u32,
        id: Option<PartitionId>,
        config: PartitionConfig,
    ) -> Result<PartitionId, PartitionError> {
        let wanted = NewPartition {
            topic: topic.to_owned(),
            index,
            id,
            config,
        };
        let (planned, work, _guard) = self.plan(vec![wanted]);
        let made = work.run();
        self.finish(planned, made)
            .pop()
            .expect("one result per partition")
    }

    /// Create `wanted`, making their files on the blocking pool while the
    /// shard goes on serving. One result per partition, in order:
    /// [`PartitionError::AlreadyExists`] for a name the shard holds or is
    /// creating, [`PartitionError::IdTaken`], [`PartitionError::InvalidTopic`],
    /// or the I/O error that stopped its files (a full disk is
    /// [`PartitionError::Queue`] with `NoSpace`).
    pub async fn create_partitions(
        self: &Rc<Self>,
        wanted: Vec<NewPartition>,
    ) -> Vec<Result<PartitionId, PartitionError>> {
        let (planned, work, _guard) = self.plan(wanted);
        let count = work.partitions.len();
        let made = match compio::runtime::spawn_blocking(move || work.run()).await {
            Ok(made) => made,
            Err(error) => {
                error.resume_unwind();
                (0..count)
                    .map(|_| {
                        Err(PartitionError::Io {
                            path: self.layout.partitions_dir(),
                            source: std::io::Error::other("the partition creation was cancelled"),
                        })
                    })
                    .collect()
            }
        };
        self.finish(planned, made)
    }

    /// Check each wanted partition and take its name and id. Returns, in
    /// order, each one's plan or refusal, the file work for the planned
    /// ones, and the guard that releases their names.
    #[allow(clippy::type_complexity)]
    fn plan(
        &self,
        wanted: Vec<NewPartition>,
    ) -> (
        Vec<Result<Planned, PartitionError>>,
        FileWork,
        CreatingGuard<'_>,
    ) {
        let mut state = self.state.borrow_mut();
        let mut guard = CreatingGuard {
            store: self,
            names: Vec::new(),
        };
        let first_id = state.next_partition_id;
        let mut planned = Vec::with_capacity(wanted.len());
        for NewPartition {
            topic,
            index,
            id,
            config,
        } in wanted
        {
            let plan = (|| {
                validate_topic_name(&topic).map_err(|reason| PartitionError::InvalidTopic {
                    topic: topic.clone(),
                    reason,
                })?;
                let name = (topic.clone(), index);
                if let Some(&id) = state.names.get(&name).or(state.creating.get(&name)) {
                    return Err(PartitionError::AlreadyExists { topic, index, id });
                }
                let id = match id {
                    Some(id) => {
                        assert!(id.is_cluster_assigned(), "given ids are a controller's");
                        let taken = state.partitions.contains_key(&id)
                            || state.creating.values().any(|&creating| creating == id);
                        if taken {
                            return Err(PartitionError::IdTaken { topic, index, id });
                        }
                        id
                    }
                    None => {
                        let id = PartitionId(state.next_partition_id);
                        assert!(
                            !id.is_cluster_assigned(),
                            "a shard's own ids stay below a controller's"
                        );
                        state.next_partition_id = id.0 + 1;
                        id
                    }
                };
                state.creating.insert(name.clone(), id);
                guard.names.push(name);
                Ok(Planned {
                    dir: self.layout.partition_dir(id),
                    meta: PartitionMeta { id, topic, index },
                    config,
                })
            })();
            planned.push(plan);
        }
        let work = FileWork {
            partitions_dir: self.layout.partitions_dir(),
            ids_file: self.layout.partition_ids_file(),
            next_id: (state.next_partition_id > first_id).then_some(state.next_partition_id),
            ids_written: Arc::clone(&self.partition_ids_written),
            entries_per_file: self.options.storage.consume_queue_entries_per_file,
            partitions: planned
                .iter()
                .flatten()
                .map(|plan| (plan.meta.clone(), plan.dir.clone()))
                .collect(),
        };
        (planned, work, guard)
    }

    /// Start indexing the planned partitions whose files were made.
    fn finish(
        &self,
        planned: Vec<Result<Planned, PartitionError>>,
        made: Vec<Made>,
    ) -> Vec<Result<PartitionId, PartitionError>> {
        let mut made = made.into_iter();
        let mut state = self.state.borrow_mut();
        let results: Vec<_> = planned
            .into_iter()
            .map(|plan| {
                let plan = plan?;
                let queue = made
                    .next()
                    .expect("one made result per planned partition")?;
                let id = plan.meta.id;
                let name = (plan.meta.topic.clone(), plan.meta.index);
                let partition = Partition::new(plan.meta, plan.config, plan.dir, queue, None);
                state.names.insert(name, id);
                state.partitions.insert(id, partition);
                Ok(id)
            })
            .collect();
        assert!(made.next().is_none(), "a made result for every plan");
        results
    }
}
