//! Storage benchmarks (criterion): append throughput, appends per fdatasync,
//! consume-queue lookups, each against a baseline measured in the same run.
//!
//! * `append/<group>/<flush>/<mode>`: 1 KiB records in 64 KiB or 1 MiB
//!   batches through `ShardStore::append`. `async`: acknowledged when
//!   written, 64 in flight, one fdatasync at the end. `sync`: acknowledged
//!   after fdatasync, 4 in flight. `direct` (O_DIRECT) or `buffered`.
//! * `baseline/<group>/<flush>/<mode>`: plain sequential `pwrite` of the same
//!   sizes into a preallocated file, with `fdatasync` after every write for
//!   `sync`, once at the end for `async`.
//! * `appends_per_fsync/<producers>`: 1 KiB acks=all appends from N
//!   concurrent producers; prints appends completed per fdatasync.
//! * `consume_queue/*`: offset and timestamp lookups in a 1M-entry queue,
//!   and reopening it (which verifies every entry).
//! * `producer_state/*` (issue 13): what idempotence adds per batch in
//!   Produce, `ProducerStates::check` then `apply` for a steady producer,
//!   alone or among 1000 others on the partition; baseline: the same calls
//!   for a batch without a producer id (a plain producer's).
//!
//! After the criterion output, a table prints each append figure next to its
//! baseline and their ratio (this machine is shared and noisy: compare
//! ratios, not absolute numbers). Run: `cargo bench --bench storage`.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice::config::{RetentionConfig, StorageConfig, WriteMode};
use sluice::ids::{LogPosition, Offset, ShardId};
use sluice::io::{AlignedBuf, IoBackend};
use sluice::record_batch::{
    BatchBuilder, BatchHeader, RecordSpec, ValidatedBatch, increment_sequence,
};
use sluice::storage::consume_queue::{ConsumeQueue, QueueEntry};
use sluice::storage::producer_state::{Check, ProducerStates};
use sluice::storage::{Durability, PartitionConfig, ShardStore, StoreOptions};

const RECORD_BYTES: usize = 1024;
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const ASYNC_IN_FLIGHT: usize = 64;
const SYNC_IN_FLIGHT: usize = 4;

thread_local! {
    /// Bytes and time accumulated per bench id, for the ratio table.
    static TOTALS: RefCell<BTreeMap<String, (u64, Duration)>> = const { RefCell::new(BTreeMap::new()) };
}

fn record(id: &str, bytes: u64, elapsed: Duration) {
    TOTALS.with(|totals| {
        let mut totals = totals.borrow_mut();
        let entry = totals.entry(id.to_owned()).or_default();
        entry.0 += bytes;
        entry.1 += elapsed;
    });
}

fn backend() -> IoBackend {
    match sluice::io::backend::probe_io_uring() {
        Ok(()) => IoBackend::IoUring,
        Err(_) => IoBackend::Epoll,
    }
}

/// A RecordBatch of 1 KiB records, as many as fit in `group_bytes` (and in
/// Kafka's default `message.max.bytes`).
fn group_batch(group_bytes: usize) -> Vec<u8> {
    let limit = group_bytes.min(sluice::config::MESSAGE_MAX_BYTES_DEFAULT as usize);
    let value = vec![b'x'; RECORD_BYTES - 16];
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    while builder.encoded_len() + RECORD_BYTES + 16 <= limit {
        builder.push(RecordSpec {
            key: Some(b"bench-key"),
            value: Some(&value),
            timestamp_delta_ms: 0,
        });
    }
    builder.build()
}

/// The storage settings under test: the defaults, with `SLUICE_BENCH_FLUSH_BYTES`,
/// `SLUICE_BENCH_WRITE_BUFFERS` and `SLUICE_BENCH_INFLIGHT` overriding
/// `flush_bytes`, `write_buffers` and `inflight_writes_max` for tuning runs.
fn storage_config(write_mode: WriteMode) -> StorageConfig {
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse::<u32>().ok())
    };
    let defaults = StorageConfig::default();
    let config = StorageConfig {
        write_mode,
        flush_bytes: env("SLUICE_BENCH_FLUSH_BYTES").unwrap_or(defaults.flush_bytes),
        write_buffers: env("SLUICE_BENCH_WRITE_BUFFERS").unwrap_or(defaults.write_buffers),
        inflight_writes_max: env("SLUICE_BENCH_INFLIGHT").unwrap_or(defaults.inflight_writes_max),
        ..defaults
    };
    sluice::config::Config {
        storage: config.clone(),
        ..Default::default()
    }
    .validate()
    .expect("bench storage settings are valid");
    config
}

fn store_options(dir: &Path, write_mode: WriteMode) -> StoreOptions {
    StoreOptions {
        shard: ShardId(0),
        data_dir: dir.to_owned(),
        storage: storage_config(write_mode),
        retention: RetentionConfig::default(),
        backend: backend(),
    }
}

/// Append `count` copies of `batch`; returns (elapsed, store stats).
fn run_appends(
    batch: &[u8],
    count: u64,
    durability: Durability,
    write_mode: WriteMode,
) -> (Duration, sluice::storage::commit_log::LogStats) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let runtime = sluice::shard::build_runtime(backend()).unwrap();
    let result = runtime.block_on(async {
        let store = ShardStore::open(store_options(dir.path(), write_mode)).unwrap();
        let config =
            PartitionConfig::from_defaults(&RetentionConfig::default(), &StorageConfig::default());
        let id = store.create_partition("bench", 0, config).unwrap();
        let validated = ValidatedBatch::frame_only(batch, 64 * MIB).unwrap();
        let in_flight = match durability {
            Durability::Fsynced => SYNC_IN_FLIGHT,
            _ => ASYNC_IN_FLIGHT,
        };
        let started = Instant::now();
        let mut receipts = VecDeque::new();
        for _ in 0..count {
            let receipt = store.append(id, validated, durability).await.unwrap();
            receipts.push_back(receipt);
            if receipts.len() >= in_flight {
                let oldest = receipts.pop_front().unwrap();
                store.wait(&oldest).await.unwrap();
            }
        }
        for receipt in &receipts {
            store.wait(receipt).await.unwrap();
        }
        // Like the baseline: the run ends when everything is on disk.
        store.sync().await.unwrap();
        let elapsed = started.elapsed();
        let stats = store.stats();
        store.shutdown().await.unwrap();
        (elapsed, stats)
    });
    drop(runtime);
    result
}

/// Plain sequential writes of `group_bytes` into a preallocated file.
fn run_baseline(
    group_bytes: usize,
    count: u64,
    sync_each: bool,
    write_mode: WriteMode,
) -> Duration {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let path = dir.path().join("baseline");
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true);
    if write_mode == WriteMode::Direct {
        options.custom_flags(libc::O_DIRECT);
    }
    let file = options.open(&path).unwrap();
    let total = group_bytes as u64 * count;
    // SAFETY: fallocate only reads its integer arguments.
    unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
            0,
            total as libc::off_t,
        )
    };
    let mut buf = AlignedBuf::zeroed(group_bytes, 4096);
    buf.as_mut_slice().fill(b'x');
    let started = Instant::now();
    for index in 0..count {
        file.write_all_at(buf.as_slice(), index * group_bytes as u64)
            .unwrap();
        if sync_each {
            file.sync_data().unwrap();
        }
    }
    file.sync_data().unwrap();
    started.elapsed()
}

/// What the device does with the store's queue depth and no broker at all:
/// `queue_depth` O_DIRECT writes of `group_bytes` kept in flight through
/// io_uring, sequentially over a preallocated file (like fio --iodepth).
fn run_queued_baseline(
    group_bytes: usize,
    count: u64,
    queue_depth: usize,
    sync_each: bool,
) -> Duration {
    use io_uring::{IoUring, opcode, types};
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(dir.path().join("queued"))
        .unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let total = group_bytes as u64 * count;
    // SAFETY: fallocate only reads its integer arguments.
    unsafe { libc::fallocate(fd, 0, 0, total as libc::off_t) };
    let mut buffers: Vec<AlignedBuf> = (0..queue_depth)
        .map(|_| AlignedBuf::zeroed(group_bytes, 4096))
        .collect();
    for buf in &mut buffers {
        buf.as_mut_slice().fill(b'x');
    }
    let mut ring = IoUring::new(queue_depth as u32 * 2).unwrap();
    let started = Instant::now();
    let (mut next, mut done, mut inflight) = (0u64, 0u64, 0usize);
    while done < count {
        while inflight < queue_depth && next < count {
            let buf = &buffers[(next % queue_depth as u64) as usize];
            let write = opcode::Write::new(types::Fd(fd), buf.as_ptr(), group_bytes as u32)
                .offset(next * group_bytes as u64)
                .build()
                .user_data(next);
            let entry = if sync_each {
                let sync = opcode::Fsync::new(types::Fd(fd))
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(u64::MAX);
                // SAFETY: the buffer lives until the ring is drained below.
                unsafe {
                    ring.submission()
                        .push_multiple(&[write.flags(io_uring::squeue::Flags::IO_LINK), sync])
                        .unwrap()
                };
                None
            } else {
                Some(write)
            };
            if let Some(entry) = entry {
                // SAFETY: as above.
                unsafe { ring.submission().push(&entry).unwrap() };
            }
            next += 1;
            inflight += 1;
        }
        ring.submit_and_wait(1).unwrap();
        for cqe in ring.completion() {
            assert!(
                cqe.result() >= 0,
                "queued baseline I/O failed: {}",
                cqe.result()
            );
            if cqe.user_data() == u64::MAX || !sync_each {
                done += 1;
                inflight -= 1;
            }
        }
    }
    file.sync_data().unwrap();
    started.elapsed()
}

fn bench_dir() -> std::path::PathBuf {
    std::env::var_os("SLUICE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into)
}

fn mode_name(mode: WriteMode) -> &'static str {
    match mode {
        WriteMode::Direct => "direct",
        WriteMode::Buffered => "buffered",
    }
}

fn appends(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    for group_bytes in [64 * KIB, MIB] {
        let batch = group_batch(group_bytes);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        for (flush, durability) in [
            ("async", Durability::Written),
            ("sync", Durability::Fsynced),
        ] {
            for mode in [WriteMode::Direct, WriteMode::Buffered] {
                let label = format!("{}/{flush}/{}", size_name(group_bytes), mode_name(mode));
                group.bench_function(BenchmarkId::new("store", &label), |bencher| {
                    bencher.iter_custom(|iters| {
                        let (elapsed, stats) = run_appends(&batch, iters, durability, mode);
                        if std::env::var_os("SLUICE_BENCH_STATS").is_some() {
                            eprintln!(
                                "stats {label}: {} writes, {:.0} KiB/write, queue depth {:.2}, {} fsyncs, {:.2} GB/s",
                                stats.writes,
                                stats.bytes_written as f64 / stats.writes.max(1) as f64 / 1024.0,
                                stats.queue_depth_sum as f64 / stats.writes.max(1) as f64,
                                stats.fsyncs,
                                batch.len() as f64 * iters as f64 / elapsed.as_secs_f64() / 1e9
                            );
                        }
                        record(
                            &format!("store/{label}"),
                            batch.len() as u64 * iters,
                            elapsed,
                        );
                        elapsed
                    });
                });
                if mode == WriteMode::Direct {
                    group.bench_function(BenchmarkId::new("queued", &label), |bencher| {
                        bencher.iter_custom(|iters| {
                            let depth = storage_config(mode).inflight_writes_max as usize;
                            let elapsed = run_queued_baseline(
                                batch.len().next_multiple_of(4096),
                                iters,
                                depth,
                                flush == "sync",
                            );
                            record(
                                &format!("queued/{label}"),
                                batch.len() as u64 * iters,
                                elapsed,
                            );
                            elapsed
                        });
                    });
                }
                group.bench_function(BenchmarkId::new("baseline", &label), |bencher| {
                    bencher.iter_custom(|iters| {
                        let elapsed = run_baseline(
                            batch.len().next_multiple_of(4096),
                            iters,
                            flush == "sync",
                            mode,
                        );
                        record(
                            &format!("baseline/{label}"),
                            batch.len() as u64 * iters,
                            elapsed,
                        );
                        elapsed
                    });
                });
            }
        }
    }
    group.finish();
    print_ratios();
}

fn size_name(bytes: usize) -> String {
    if bytes >= MIB {
        format!("{}MiB", bytes / MIB)
    } else {
        format!("{}KiB", bytes / KIB)
    }
}

fn print_ratios() {
    println!("\nappend throughput vs the same writes without a broker, same run (GB/s):");
    println!("  plain:  sequential pwrite (+fdatasync each for sync), one at a time");
    println!(
        "  queued: O_DIRECT writes kept in flight through io_uring at the store's queue depth"
    );
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>13} {:>14}",
        "case", "store", "plain", "queued", "store/plain", "store/queued"
    );
    let rate = |(bytes, elapsed): (u64, Duration)| bytes as f64 / elapsed.as_secs_f64() / 1e9;
    TOTALS.with(|totals| {
        let totals = totals.borrow();
        for (id, &measured) in totals.iter() {
            let Some(label) = id.strip_prefix("store/") else {
                continue;
            };
            let store = rate(measured);
            let plain = totals.get(&format!("baseline/{label}")).map(|&m| rate(m));
            let queued = totals.get(&format!("queued/{label}")).map(|&m| rate(m));
            let show =
                |value: Option<f64>| value.map_or("-".to_owned(), |value| format!("{value:.2}"));
            println!(
                "{label:<24} {store:>8.2} {:>8} {:>8} {:>13} {:>14}",
                show(plain),
                show(queued),
                show(plain.map(|plain| store / plain)),
                show(queued.map(|queued| store / queued)),
            );
        }
    });
}

fn appends_per_fsync(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("appends_per_fsync");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    let batch = group_batch(2 * KIB);
    for producers in [1usize, 8, 64] {
        group.throughput(Throughput::Elements(1));
        let mut ratios = Vec::new();
        group.bench_function(BenchmarkId::from_parameter(producers), |bencher| {
            bencher.iter_custom(|iters| {
                let (elapsed, appends, fsyncs) = concurrent_sync_appends(&batch, iters, producers);
                ratios.push(appends as f64 / fsyncs.max(1) as f64);
                elapsed
            });
        });
        if !ratios.is_empty() {
            let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
            println!("appends_per_fsync/{producers}: {mean:.1} appends completed per fdatasync");
        }
    }
    group.finish();
}

fn concurrent_sync_appends(batch: &[u8], total: u64, producers: usize) -> (Duration, u64, u64) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let runtime = sluice::shard::build_runtime(backend()).unwrap();
    runtime.block_on(async {
        let store = ShardStore::open(store_options(dir.path(), WriteMode::Direct)).unwrap();
        let config =
            PartitionConfig::from_defaults(&RetentionConfig::default(), &StorageConfig::default());
        let id = store.create_partition("bench", 0, config).unwrap();
        let batch: Rc<Vec<u8>> = Rc::new(batch.to_vec());
        let per_producer = total.div_ceil(producers as u64);
        let before = store.stats();
        let started = Instant::now();
        let tasks: Vec<_> = (0..producers)
            .map(|_| {
                let store = Rc::clone(&store);
                let batch = Rc::clone(&batch);
                compio::runtime::spawn(async move {
                    let validated = ValidatedBatch::frame_only(&batch, MIB).unwrap();
                    for _ in 0..per_producer {
                        let receipt = store
                            .append(id, validated, Durability::Fsynced)
                            .await
                            .unwrap();
                        store.wait(&receipt).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = started.elapsed();
        let after = store.stats();
        store.shutdown().await.unwrap();
        let appends = after.frames_appended - before.frames_appended;
        (elapsed, appends, after.fsyncs - before.fsyncs)
    })
}

fn consume_queue_lookup(criterion: &mut Criterion) {
    const ENTRIES: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut queue = ConsumeQueue::open(dir.path(), 262_144, 0).unwrap();
    for index in 0..ENTRIES {
        queue
            .append(QueueEntry {
                base_offset: Offset(index as i64 * 10),
                position: LogPosition(index * 4096),
                batch_len: 4000,
                last_offset_delta: 9,
                max_timestamp_ms: 1_700_000_000_000 + index as i64,
                attributes: 0,
            })
            .unwrap();
    }
    let mut group = criterion.benchmark_group("consume_queue");
    let mut probe = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        probe ^= probe << 13;
        probe ^= probe >> 7;
        probe ^= probe << 17;
        probe % ENTRIES
    };
    group.bench_function("lookup_by_offset_1M_entries", |bencher| {
        bencher.iter(|| queue.search_offset(Offset(next() as i64 * 10 + 5)));
    });
    group.bench_function("lookup_by_timestamp_1M_entries", |bencher| {
        bencher.iter(|| queue.search_timestamp(1_700_000_000_000 + next() as i64));
    });
    // The same queue mapped afresh, as after a restart: its pages come in
    // through read faults instead of the writes that built it.
    drop(queue);
    let queue = ConsumeQueue::open(dir.path(), 262_144, ENTRIES).unwrap();
    group.bench_function("lookup_by_offset_1M_entries_reopened", |bencher| {
        bencher.iter(|| queue.search_offset(Offset(next() as i64 * 10 + 5)));
    });
    drop(queue);
    // Reopening verifies every trusted entry's CRC (issue 12): what that
    // adds to a start, per 1M-entry queue, with its pages in the page cache.
    group.sample_size(10);
    group.bench_function("open_verifying_1M_entries", |bencher| {
        bencher.iter(|| ConsumeQueue::open(dir.path(), 262_144, ENTRIES).unwrap());
    });
    group.sample_size(100);
    // Baseline: the same binary search over an in-memory Vec.
    let offsets: Vec<i64> = (0..ENTRIES as i64).map(|index| index * 10 + 9).collect();
    group.bench_function("baseline_vec_binary_search_1M", |bencher| {
        bencher.iter(|| {
            let target = next() as i64 * 10 + 5;
            offsets.partition_point(|&last| last < target)
        });
    });
    group.finish();
}

/// A 1000-record batch's header as Produce parses it: producer `producer_id`
/// (-1 for none) at `base_sequence`, epoch 0.
fn producer_header(producer_id: i64, base_sequence: i32) -> BatchHeader {
    const RECORDS: i32 = 1000;
    BatchHeader {
        base_offset: 0,
        partition_leader_epoch: -1,
        crc: 0,
        last_offset_delta: RECORDS - 1,
        base_timestamp_ms: 1_700_000_000_000,
        max_timestamp_ms: 1_700_000_000_000,
        records_count: RECORDS,
        attributes: 0,
        producer_id,
        producer_epoch: if producer_id < 0 { -1 } else { 0 },
        base_sequence: if producer_id < 0 { -1 } else { base_sequence },
    }
}

/// Produce's per-batch producer-state work, as `try_append` does it: check,
/// then apply at the next offset. The producer's next batch follows each
/// time, so every check answers Append after a hash lookup and a compare
/// with the newest cached batch, and every apply pushes into the 5-entry
/// ring.
fn producer_state(criterion: &mut Criterion) {
    const PRODUCER: i64 = 1_000_000;
    let mut group = criterion.benchmark_group("producer_state");
    for (name, producer_id, others) in [
        ("check_and_apply", PRODUCER, 0),
        ("check_and_apply_among_1000_producers", PRODUCER, 1000),
        ("baseline_no_producer_id", -1, 0),
    ] {
        let mut states = ProducerStates::default();
        let mut offset = 0i64;
        for other in 0..others {
            let header = producer_header(other, 0);
            states.apply(&header, Offset(offset), LogPosition(offset as u64 * 1024));
            offset += 1000;
        }
        let mut header = producer_header(producer_id, 0);
        group.bench_function(name, |bencher| {
            bencher.iter(|| {
                let check = states.check(std::hint::black_box(&header));
                assert!(matches!(check, Ok(Check::Append)), "{check:?}");
                states.apply(&header, Offset(offset), LogPosition(offset as u64 * 1024));
                offset += 1000;
                if header.producer_id >= 0 {
                    header.base_sequence = increment_sequence(header.base_sequence, 1000);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    appends,
    appends_per_fsync,
    consume_queue_lookup,
    producer_state
);
criterion_main!(benches);
