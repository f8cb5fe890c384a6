//! Shared helpers: small-segment stores on temporary directories, batches
//! with checkable contents, and the shard runtime for a test.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Child;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use sluice::config::{Config, RetentionConfig, StorageConfig, WriteMode};
use sluice::ids::{Offset, PartitionId, ShardId};
use sluice::io::IoBackend;
use sluice::record_batch::{BatchBuilder, BatchLimits, RecordSpec, ValidatedBatch};
use sluice::storage::{PartitionConfig, ReadBatch, ShardStore, StoreOptions, read_batch_bytes};

pub const KIB: u64 = 1024;

/// Storage settings that make segment roll-over, chunk spanning and queue
/// file roll-over happen within a few hundred KiB.
pub fn small_storage(write_mode: WriteMode) -> StorageConfig {
    StorageConfig {
        segment_bytes: 256 * KIB,
        write_mode,
        flush_bytes: 16 * 1024,
        write_buffers: 16,
        inflight_writes_max: 4,
        flush_interval_ms: 2,
        checkpoint_interval_ms: 200,
        message_max_bytes: 64 * 1024,
        consume_queue_entries_per_file: 1024,
        // A few frames: reads of the newest come from memory, older ones
        // from the segment files, so both paths run in every test.
        tail_cache_bytes: 64 * KIB,
        ..StorageConfig::default()
    }
}

pub fn options(dir: &Path, storage: StorageConfig, backend: IoBackend) -> StoreOptions {
    StoreOptions {
        shard: ShardId(0),
        data_dir: dir.to_owned(),
        storage,
        retention: RetentionConfig::default(),
        backend,
    }
}

pub fn open(dir: &Path, write_mode: WriteMode, backend: IoBackend) -> Rc<ShardStore> {
    ShardStore::open(options(dir, small_storage(write_mode), backend)).expect("store opens")
}

pub fn runtime(backend: IoBackend) -> compio::runtime::Runtime {
    sluice::shard::build_runtime(backend).expect("runtime")
}

/// The best backend this machine offers (io_uring unless it is blocked).
pub fn native_backend() -> IoBackend {
    match sluice::io::backend::probe_io_uring() {
        Ok(()) => IoBackend::IoUring,
        Err(_) => IoBackend::Epoll,
    }
}

pub fn default_partition_config() -> PartitionConfig {
    PartitionConfig::from_defaults(&RetentionConfig::default(), &StorageConfig::default())
}

pub fn create(store: &ShardStore, topic: &str, index: u32) -> PartitionId {
    store
        .create_partition(topic, index, default_partition_config())
        .expect("partition created")
}

/// A batch whose record values are `value_prefix-0`, `value_prefix-1`, ...
/// padded to `value_bytes`.
pub fn batch(value_prefix: &str, records: usize, value_bytes: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    let values: Vec<Vec<u8>> = (0..records)
        .map(|index| {
            let mut value = format!("{value_prefix}-{index}").into_bytes();
            value.resize(value_bytes.max(value.len()), b'.');
            value
        })
        .collect();
    for (index, value) in values.iter().enumerate() {
        builder.push(RecordSpec {
            key: Some(value_prefix.as_bytes()),
            value: Some(value),
            timestamp_delta_ms: index as i64,
        });
    }
    builder.build()
}

pub fn validated(bytes: &[u8]) -> ValidatedBatch<'_> {
    ValidatedBatch::validate(bytes, &BatchLimits::new(1 << 20, 32)).expect("test batch is valid")
}

/// What a stored copy of `original` must look like at `base_offset`.
pub fn stored_form(original: &[u8], base_offset: Offset) -> Vec<u8> {
    let mut expected = original.to_vec();
    sluice::record_batch::assign_broker_fields(&mut expected, base_offset.0, 0);
    expected
}

/// Every batch readable from `from`, as (base offset, bytes), each checked
/// to be a whole, CRC-valid batch.
pub fn read_all(
    store: &ShardStore,
    partition: PartitionId,
    from: Offset,
) -> Vec<(Offset, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let result = store.read(partition, next, 1 << 20).expect("read in range");
        if result.batches.is_empty() {
            return out;
        }
        for batch in &result.batches {
            let bytes = batch_bytes(batch);
            next = Offset(batch.last_offset.0 + 1);
            out.push((batch.base_offset, bytes));
        }
    }
}

pub fn batch_bytes(batch: &ReadBatch) -> Vec<u8> {
    let bytes = read_batch_bytes(batch).expect("batch readable");
    ValidatedBatch::frame_only(&bytes, 1 << 20).expect("a served batch is never torn or corrupt");
    bytes
}

/// A config for the shard runtime over `dir` with small segments.
pub fn runtime_config(dir: &Path, shards: usize) -> Config {
    Config {
        data_dir: dir.to_owned(),
        shards,
        pin_shards: false,
        storage: small_storage(WriteMode::Direct),
        ..Config::default()
    }
}

/// Lines of `child`'s stderr, streamed so the test can wait for one.
pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

pub fn wait_for(lines: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

/// Send SIGTERM to a child process.
pub fn terminate(child: &Child) {
    // SAFETY: kill takes a pid and a signal number; no memory is passed.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

/// Shut a store down, failing the test (instead of hanging it) if the final
/// flush and fsync never complete.
pub async fn shutdown(store: &ShardStore) {
    compio::time::timeout(Duration::from_secs(60), store.shutdown())
        .await
        .expect("shutdown hung: appended data never became durable")
        .expect("shutdown failed");
}
