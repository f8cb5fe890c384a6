//! Issue 19 item 2, hot reads from memory: O_DIRECT writes leave nothing in
//! the page cache, so every fetch of data written a moment ago used to be a
//! disk read. The commit log now keeps its newest frames in memory
//! (`storage.tail_cache_bytes`) and fetch answers from there; older data
//! still comes from the segment files.

use sluice::ids::{Offset, PartitionId};
use sluice::record_batch::{BatchBuilder, RecordSpec};
use sluice::storage::{Durability, ReadPart, ShardStore};

use crate::broker_process::BrokerProcess;
use crate::delayed_delivery::metric_sum;
use crate::kafka_bad_input::{batch, produce_with_acks};
use crate::kafka_clients;
use crate::support::{self, KIB, validated};
use crate::wire::Wire;

/// How a read batch's bytes are planned: all in memory, or starting with a
/// file span.
fn from_memory(parts: &[ReadPart]) -> bool {
    parts.iter().all(|part| matches!(part, ReadPart::Memory(_)))
}

/// With a 96 KiB cache and ~21 KiB frames, the last few batches are read
/// from memory and the older ones from the segment files, and every batch
/// reads back as appended either way; after a restart the cache is empty,
/// so the same batches come from the files (mutation: a cache that serves
/// the frame after the one asked for fails the byte comparison; one that is
/// never consulted fails "from memory").
#[test]
fn the_newest_batches_are_read_from_memory_and_older_ones_from_the_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let mut storage = support::small_storage(sluice::config::WriteMode::Direct);
        storage.tail_cache_bytes = 96 * KIB;
        let options = support::options(dir.path(), storage.clone(), support::native_backend());
        let store = ShardStore::open(options).unwrap();
        let id = support::create(&store, "tail", 0);
        let mut appended = Vec::new();
        for seq in 0..30 {
            let bytes = support::batch(&format!("b{seq}"), 20, 1000);
            let receipt = store
                .append(id, validated(&bytes), Durability::Written)
                .await
                .unwrap();
            store.wait(&receipt).await.unwrap();
            appended.push(bytes);
        }
        let sources = read_one_by_one(&store, id, &appended);
        let newest: Vec<bool> = sources[sources.len() - 3..].to_vec();
        let oldest: Vec<bool> = sources[..20].to_vec();
        assert!(
            newest.iter().all(|&memory| memory),
            "the newest batches come from memory: {sources:?}"
        );
        assert!(
            oldest.iter().all(|&memory| !memory),
            "the oldest batches come from the files: {sources:?}"
        );
        support::shutdown(&store).await;
        drop(store);

        let options = support::options(dir.path(), storage, support::native_backend());
        let store = ShardStore::open(options).unwrap();
        let sources = read_one_by_one(&store, id, &appended);
        assert!(
            sources[..sources.len() - 1].iter().all(|&memory| !memory),
            "after a restart every whole block is read from the files: {sources:?}"
        );
        support::shutdown(&store).await;
    });
}

/// Read `appended` back a batch at a time, checking each batch's bytes;
/// whether each came from memory.
fn read_one_by_one(store: &ShardStore, id: PartitionId, appended: &[Vec<u8>]) -> Vec<bool> {
    let mut sources = Vec::new();
    let mut next = Offset(0);
    for (index, original) in appended.iter().enumerate() {
        let result = store.read(id, next, 1).unwrap();
        let read = &result.batches[0];
        assert_eq!(read.base_offset, next, "batch {index}");
        assert_eq!(
            support::batch_bytes(read),
            support::stored_form(original, next),
            "batch {index} reads back as appended"
        );
        sources.push(from_memory(&read.parts));
        next = Offset(read.last_offset.0 + 1);
    }
    sources
}

/// Bytes the broker process has read from storage (`/proc/PID/io`
/// `read_bytes`: page-cache hits do not count).
fn storage_read_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|line| line.strip_prefix("read_bytes: "))
        .unwrap()
        .parse()
        .unwrap()
}

/// A real broker and a librdkafka consumer: ~24 MB produced and consumed at
/// once is served without reading the disk (the broker reads under 2 MB
/// from storage, the fetch metric counts it all from memory) and every
/// record arrives whole; after a restart the same records are served from
/// the segment files. Mutation: `tail_cache_bytes = 0` makes the broker
/// read the 24 MB from disk and fails the first assertion.
#[test]
fn a_consumer_reading_what_was_just_written_is_served_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    kafka_clients::create_topic(&broker.address, "hot", 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    let batches = 30;
    let records_per_batch = 100;
    for round in 0..batches {
        let code = produce_with_acks(
            &mut wire,
            "hot",
            0,
            batch(records_per_batch, 8000),
            if round % 2 == 0 { 1 } else { -1 },
        );
        assert_eq!(code, 0, "batch {round}");
    }
    let produced = batches * records_per_batch;
    let read_before = storage_read_bytes(broker.pid());
    let records = kafka_clients::consume(&broker.address, "hot", 1, 0, produced);
    let read = storage_read_bytes(broker.pid()) - read_before;
    assert_eq!(records.len(), produced);
    assert!(
        records
            .iter()
            .all(|record| record.payload == vec![b'v'; 8000]),
        "every record arrives whole"
    );
    assert!(
        read < 2_000_000,
        "the broker read {read} bytes from storage to serve 24 MB just written"
    );
    let body = crate::metrics::get(&broker.metrics, "/metrics").1;
    let memory = fetch_bytes(&body, "memory");
    assert!(memory >= 24_000_000.0, "{memory} bytes fetched from memory");
    // Gauges are set every `metrics.refresh_interval_ms` (5 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while metric_sum(&broker.metrics, "sluice_log_tail_cache_bytes") < 24_000_000.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the cache gauge never showed what was produced"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(broker.stop().code(), Some(0));

    let broker = BrokerProcess::start(&data, &[]);
    let records = kafka_clients::consume(&broker.address, "hot", 1, 0, produced);
    assert_eq!(records.len(), produced);
    let body = crate::metrics::get(&broker.metrics, "/metrics").1;
    assert!(
        fetch_bytes(&body, "disk") >= 23_000_000.0,
        "after a restart the records come from the segment files"
    );
    assert_eq!(broker.stop().code(), Some(0));
}

/// The sum of `metric`'s lines (over shards) that carry `label="value"`:
/// `sluice_log_fetch_bytes_total{source}` and
/// `sluice_kafka_fetch_file_bytes_total{read}`.
fn labelled_sum(body: &str, metric: &str, label: &str, value: &str) -> f64 {
    let prefix = format!("{metric}{{");
    let label = format!("{label}=\"{value}\"");
    body.lines()
        .filter(|line| line.starts_with(&prefix) && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `sluice_log_fetch_bytes_total{source=...}` summed over shards.
fn fetch_bytes(body: &str, source: &str) -> f64 {
    labelled_sum(body, "sluice_log_fetch_bytes_total", "source", source)
}

/// `sluice_kafka_fetch_file_bytes_total{read=...}` summed over shards.
fn file_bytes_sent(body: &str, read: &str) -> f64 {
    labelled_sum(body, "sluice_kafka_fetch_file_bytes_total", "read", read)
}

/// Bytes of the segment files under `data` that sit in the page cache
/// (mincore over a read-only mapping of each).
fn segment_bytes_cached(data: &std::path::Path) -> u64 {
    let mut cached = 0;
    for path in segment_files(data) {
        let file = std::fs::File::open(&path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        if len == 0 {
            continue;
        }
        let page = 4096;
        // SAFETY: a new read-only shared mapping of `len` bytes of an open
        // file, only passed to mincore and unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED, "mmap {}", path.display());
        let mut pages = vec![0u8; len.div_ceil(page)];
        // SAFETY: `map` is a mapping of `len` bytes; `pages` holds one byte
        // per page of it.
        let rc = unsafe { libc::mincore(map, len, pages.as_mut_ptr()) };
        // SAFETY: the mapping made above, of this length.
        unsafe { libc::munmap(map, len) };
        assert_eq!(rc, 0, "mincore {}", path.display());
        cached += pages.iter().filter(|&&page| page & 1 == 1).count() as u64 * page as u64;
    }
    cached
}

/// The commit-log segment files under a data directory.
fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(segment_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "log") {
            found.push(path);
        }
    }
    found
}

/// Drop the page cache of the segment files (POSIX_FADV_DONTNEED).
fn drop_segment_cache(data: &std::path::Path) {
    for path in segment_files(data) {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: advice over an open descriptor; no memory is passed.
        let rc = unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0, "fadvise {}", path.display());
    }
}

/// A consumer catching up on data the tail cache no longer holds (a
/// restarted broker) gets every record whole, read with O_DIRECT: the
/// segment files stay out of the page cache (`storage.cold_reads =
/// "direct"`, the default). The same consume with `cold_reads =
/// "page_cache"` leaves the 24 MB cached, which shows the check can fail
/// (mutation: the direct path never taken).
#[test]
fn a_consumer_catching_up_reads_the_segment_files_without_filling_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("page_cache.toml");
    std::fs::write(&config, "[storage]\ncold_reads = \"page_cache\"\n").unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    kafka_clients::create_topic(&broker.address, "cold", 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    let (batches, records_per_batch) = (30, 100);
    for round in 0..batches {
        let code = produce_with_acks(&mut wire, "cold", 0, batch(records_per_batch, 8000), -1);
        assert_eq!(code, 0, "batch {round}");
    }
    drop(wire);
    assert_eq!(broker.stop().code(), Some(0));
    let produced = batches * records_per_batch;

    let mut cached_after = Vec::new();
    for extra in [&[][..], &["--config", config.to_str().unwrap()][..]] {
        let broker = BrokerProcess::start(&data, extra);
        drop_segment_cache(&data);
        let before = segment_bytes_cached(&data);
        let records = kafka_clients::consume(&broker.address, "cold", 1, 0, produced);
        assert_eq!(records.len(), produced, "{extra:?}");
        assert!(
            records
                .iter()
                .all(|record| record.payload == vec![b'v'; 8000]),
            "every record arrives whole ({extra:?})"
        );
        let body = crate::metrics::get(&broker.metrics, "/metrics").1;
        assert!(
            fetch_bytes(&body, "disk") >= 23_000_000.0,
            "the records come from the segment files ({extra:?})"
        );
        let read = if extra.is_empty() {
            "direct"
        } else {
            "page_cache"
        };
        let sent = file_bytes_sent(&body, read);
        assert!(
            sent >= 23_000_000.0,
            "{sent} file bytes sent with read={read}"
        );
        cached_after.push(segment_bytes_cached(&data).saturating_sub(before));
        assert_eq!(broker.stop().code(), Some(0));
    }
    assert!(
        cached_after[0] < 2_000_000,
        "O_DIRECT reads put {} bytes of the segments in the page cache",
        cached_after[0]
    );
    assert!(
        cached_after[1] >= 20_000_000,
        "reads through the page cache left only {} bytes there",
        cached_after[1]
    );
}

/// A batch of `records` records of `value_bytes` each whose values name
/// their partition, batch and place, so that a byte served from the wrong
/// place of a segment shows.
fn named_batch(partition: i32, round: usize, records: usize, value_bytes: usize) -> Vec<u8> {
    let values: Vec<Vec<u8>> = (0..records)
        .map(|index| named_value(partition, round, index, value_bytes))
        .collect();
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    for value in &values {
        builder.push(RecordSpec {
            key: None,
            value: Some(value),
            timestamp_delta_ms: 0,
        });
    }
    builder.build()
}

fn named_value(partition: i32, round: usize, index: usize, value_bytes: usize) -> Vec<u8> {
    let mut value = format!("p{partition}-b{round}-r{index}-").into_bytes();
    value.resize(value_bytes, b'a' + (round % 26) as u8);
    value
}

/// Cold reads of small batches of several partitions that share a shard's
/// segments: one fetch response holds runs of batches 20 bytes apart, runs
/// far apart, and partitions whose batches lie before the previous
/// partition's in the file. They are read ahead across the whole response
/// (`cold_read::ResponseReads`; reading each batch only when its turn came
/// ran 200 MB/s on 16 KiB batches here, against 1300 read ahead), and
/// every record arrives whole and in place (mutation: reading a
/// response's next run from where the previous one ended, not from its own
/// start, trips the plan's check and the consume fails).
#[test]
fn a_consumer_catching_up_on_small_batches_of_many_partitions_gets_every_record_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    let partitions = 4;
    kafka_clients::create_topic(&broker.address, "small", partitions, &[]);
    let mut wire = Wire::connect(&broker.address);
    // Per partition: records per batch and value bytes. Partition 3's
    // 100 KiB batches are gaps too wide to read through for the others.
    let shapes = [(1, 300), (8, 1000), (20, 700), (100, 1024)];
    let rounds = 60;
    for round in 0..rounds {
        for (partition, &(records, value_bytes)) in shapes.iter().enumerate() {
            let partition = partition as i32;
            let records = named_batch(partition, round, records, value_bytes);
            let code = produce_with_acks(&mut wire, "small", partition, records, 1);
            assert_eq!(code, 0, "round {round} partition {partition}");
        }
    }
    drop(wire);
    assert_eq!(broker.stop().code(), Some(0));
    let produced = rounds * shapes.iter().map(|(records, _)| records).sum::<usize>();

    let broker = BrokerProcess::start(&data, &[]);
    drop_segment_cache(&data);
    let records = kafka_clients::consume(&broker.address, "small", partitions, 0, produced);
    for partition in 0..partitions {
        let (per_batch, value_bytes) = shapes[partition as usize];
        let got: Vec<&Vec<u8>> = records
            .iter()
            .filter(|record| record.partition == partition)
            .map(|record| &record.payload)
            .collect();
        assert_eq!(got.len(), rounds * per_batch, "partition {partition}");
        for (at, payload) in got.into_iter().enumerate() {
            let expected = named_value(partition, at / per_batch, at % per_batch, value_bytes);
            assert!(
                *payload == expected,
                "partition {partition} record {at}: {:?}",
                String::from_utf8_lossy(&payload[..payload.len().min(24)])
            );
        }
    }
    let body = crate::metrics::get(&broker.metrics, "/metrics").1;
    let sent = file_bytes_sent(&body, "direct");
    assert!(
        sent >= 7_000_000.0,
        "{sent} file bytes sent with read=direct"
    );
    assert_eq!(file_bytes_sent(&body, "page_cache"), 0.0);
    assert_eq!(broker.stop().code(), Some(0));
}

/// Issue 19 (found by the breaker trial of the response-wide O_DIRECT
/// reads): with no descriptor free, a cold fetch's O_DIRECT open fails and
/// its file parts fall back to the page cache; on io_uring that path used
/// to make the connection's splice pipe first, which failed too, and the
/// broker closed the connection in the middle of the response. The parts
/// are now copied (pread needs no descriptor) and the response arrives
/// whole (mutation: the pipe's error returned again closes the connection).
#[test]
fn a_cold_fetch_with_no_descriptor_free_is_answered_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    kafka_clients::create_topic(&broker.address, "nofd", 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    let (batches, records) = (8, batch(100, 8000));
    for round in 0..batches {
        let code = produce_with_acks(&mut wire, "nofd", 0, records.clone(), -1);
        assert_eq!(code, 0, "batch {round}");
    }
    drop(wire);
    assert_eq!(broker.stop().code(), Some(0));

    let broker = BrokerProcess::start(&data, &[]);
    drop_segment_cache(&data);
    let mut wire = Wire::connect(&broker.address);
    // A round trip first: connect() returns once the kernel queued the
    // connection, and an accept that comes after the limit is lowered
    // fails with EMFILE (seen on a loaded machine).
    let versions = wire.call(0, &kafka_protocol::messages::ApiVersionsRequest::default());
    assert_eq!(versions.error_code, 0);
    let pid = broker.pid() as libc::pid_t;
    // The lowest descriptor number free: with the soft limit there, no
    // open can succeed (the table may have holes below its highest one).
    let open: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|fd| !open.contains(fd)).unwrap();
    let limit = |soft: u64| {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit reads `new` and writes `old`, both live locals.
        let done = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
        assert_eq!(done, 0, "prlimit read");
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        // SAFETY: as above.
        let done = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, &mut old) };
        assert_eq!(done, 0, "prlimit set");
        old.rlim_cur
    };
    let before = limit(lowest_free);
    let request = crate::kafka_fetch::fetch_repeated("nofd", 1, 64 << 20);
    wire.set_read_timeout(std::time::Duration::from_secs(20));
    let response = wire.call(4, &request);
    limit(before);
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    let bytes = partition.records.as_ref().expect("records").clone();
    let mut at = 0;
    let mut seen = 0;
    while at < bytes.len() {
        let len = 12 + u32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let expected = support::stored_form(&records, Offset(seen as i64 * 100));
        assert!(
            bytes[at..at + len] == expected[..],
            "batch {seen} as stored"
        );
        at += len;
        seen += 1;
    }
    assert_eq!(seen, batches, "every batch in the one response");
    let body = crate::metrics::get(&broker.metrics, "/metrics").1;
    assert!(
        file_bytes_sent(&body, "page_cache") >= 6_000_000.0,
        "the file parts fell back to the page cache"
    );
    assert_eq!(broker.stop().code(), Some(0));
}

/// Descriptors of `pid` that point at deleted segment files.
fn deleted_segments_open(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.ok()?.path()).ok()?;
            let target = target.to_string_lossy().into_owned();
            (target.contains(".log") && target.ends_with("(deleted)")).then_some(target)
        })
        .collect()
}

/// Issue 19 (found by the breaker trial of the fetch read-ahead): a
/// connection that made one cold fetch and then went quiet kept the reads
/// its response had started past its end, and with them the segment file:
/// retention deleted the segment, but its blocks stayed allocated (the
/// deletion waits for readers, up to a minute) until the connection sent
/// again or closed. A connection now drops its read-ahead after
/// `READ_AHEAD_KEPT_MAX` (1 s) of quiet (mutation: keeping it until the
/// next request leaves the deleted segment open for the whole wait).
#[test]
fn a_quiet_connection_does_not_keep_a_deleted_segment_open() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[storage]\nsegment_bytes = 2097152\nsegment_roll_min_ms = 1\n\
         [retention]\ncheck_interval_ms = 200\n",
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let broker = BrokerProcess::start(&data, &args);
    kafka_clients::create_topic(&broker.address, "quiet", 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    for round in 0..10 {
        let code = produce_with_acks(&mut wire, "quiet", 0, batch(100, 8000), -1);
        assert_eq!(code, 0, "batch {round}");
    }
    drop(wire);
    assert_eq!(broker.stop().code(), Some(0));
    let segments = segment_files(&data).len();
    assert!(segments >= 4, "{segments} segments");

    let broker = BrokerProcess::start(&data, &args);
    drop_segment_cache(&data);
    let mut wire = Wire::connect(&broker.address);
    let request = crate::kafka_fetch::fetch_repeated("quiet", 1, 1 << 20);
    let response = wire.call(4, &request);
    assert_eq!(response.responses[0].partitions[0].error_code, 0);
    let body = crate::metrics::get(&broker.metrics, "/metrics").1;
    assert!(
        file_bytes_sent(&body, "direct") >= 500_000.0,
        "the fetch read the first segment with O_DIRECT"
    );
    // The connection stays open and quiet while retention deletes the
    // segments it read.
    let (ok, out) = crate::consumer_groups::sluice_admin(
        &broker.address,
        &["topics", "alter", "quiet", "--config", "retention.ms=1"],
    );
    assert!(ok, "{out}");
    // The topic's sealed segments (at least 3 of 8 MB in 2 MiB ones) go;
    // the other shard's one file stays.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while segment_files(&data).len() > segments - 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not delete the sealed segments"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let open = deleted_segments_open(broker.pid());
        if open.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "deleted segments still open while the connection is quiet: {open:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let versions = wire.call(0, &kafka_protocol::messages::ApiVersionsRequest::default());
    assert_eq!(versions.error_code, 0, "the quiet connection still works");
    assert_eq!(broker.stop().code(), Some(0));
}
