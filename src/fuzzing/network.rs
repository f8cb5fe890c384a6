//! The black-box network fuzzer: mutated requests against a running broker
//! over many connections, while a watcher checks that the process stays up,
//! its resident memory stays bounded and a plain client still produces and
//! reads back a record (issue 12).
//!
//! Requests start as a valid frame of every advertised API and version
//! ([`super::samples`]) and are mutated ([`super::mutate`]): bit flips,
//! lengths and counts forged, truncation, splices; size prefixes that lie
//! (too long, too short, negative, huge); frames that stop halfway; raw
//! garbage; bytes sent whole, in pieces or one at a time. Each connection
//! runs a short script of such frames, reads what comes back for a moment
//! and closes.
//!
//! When the broker dies, its memory passes the bound or the check fails,
//! the fuzzer stops and saves the scripts of the last connections of every
//! worker (the exact bytes each one sent) to the output directory, one file
//! per connection; [`replay`] sends them again in order, and the example
//! `network_fuzz --replay` does that against a fresh broker.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{CreateTopicsRequest, FetchRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;

use super::kafka::sample_batch;
use super::mutate::{Rng, mutate};
use super::samples::sample_frame;
use crate::client::KafkaClient;
use crate::kafka::versions::SUPPORTED;
use crate::record_batch::{BatchBuilder, RecordSpec};

/// The topic the templates name (`samples` uses "t"); created with
/// [`FUZZ_TOPIC_PARTITIONS`] partitions before fuzzing starts, so produce,
/// fetch and list-offsets requests reach real partitions.
pub const FUZZ_TOPIC: &str = "t";
const FUZZ_TOPIC_PARTITIONS: i32 = 2;
/// The topic the health check produces to and reads from.
pub const HEALTH_TOPIC: &str = "fuzz-health";
/// Longest mutated frame body.
const FRAME_BYTES_MAX: usize = 16 * 1024;
/// Frames per connection script, at most.
const SCRIPT_FRAMES_MAX: usize = 8;
/// How long a connection waits for more of the broker's answers.
const READ_QUIET: Duration = Duration::from_millis(150);
/// Connections per worker kept for the reproducer.
const RECENT_SCRIPTS_MAX: usize = 16;
/// How often the watcher samples the process.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct NetworkFuzzOptions {
    /// The broker's Kafka listener, `host:port`.
    pub address: String,
    /// The broker's process id, for `/proc/<pid>/status`.
    pub pid: u32,
    pub seed: u64,
    pub duration: Duration,
    /// Worker threads, each with one connection at a time.
    pub workers: usize,
    /// Resident memory the broker may gain over what it had once the
    /// fuzzer's topics were made.
    pub rss_growth_max_bytes: u64,
    /// How often a plain client produces and reads back a record.
    pub check_interval: Duration,
    /// Where reproducers are saved on a failure.
    pub out_dir: PathBuf,
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct NetworkFuzzReport {
    pub connections: u64,
    pub frames: u64,
    pub bytes_sent: u64,
    /// Connections the broker closed (refused input) before the script ended.
    pub closed_by_broker: u64,
    pub health_checks: u64,
    pub rss_start_bytes: u64,
    pub rss_peak_bytes: u64,
    pub elapsed: Duration,
    /// Why the run stopped early: the broker died, grew, or failed a check.
    pub failure: Option<String>,
    /// Reproducers saved on a failure, oldest first.
    pub saved: Vec<PathBuf>,
}

/// One connection's worth of bytes, as sent.
#[derive(Clone, Debug)]
struct Script {
    /// Each write, in order (a frame may take several).
    writes: Vec<Vec<u8>>,
    frames: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    frames: AtomicU64,
    bytes_sent: AtomicU64,
    closed_by_broker: AtomicU64,
}

/// Fuzz the broker at `options.address` until the duration is up or a
/// failure is seen.
pub fn run(options: &NetworkFuzzOptions) -> NetworkFuzzReport {
    let started = Instant::now();
    let mut report = NetworkFuzzReport::default();
    if let Err(error) = prepare_topics(&options.address) {
        report.failure = Some(format!("cannot create the fuzzer's topics: {error}"));
        return report;
    }
    let mut health = HealthCheck::new(&options.address);
    if let Err(error) = health.check() {
        report.failure = Some(format!(
            "the broker fails the check before fuzzing: {error}"
        ));
        return report;
    }
    report.health_checks = 1;
    report.rss_start_bytes = resident_bytes(options.pid).unwrap_or(0);
    report.rss_peak_bytes = report.rss_start_bytes;
    let templates = Arc::new(templates());
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let recent: Vec<Arc<Mutex<VecDeque<Script>>>> = (0..options.workers)
        .map(|_| Arc::new(Mutex::new(VecDeque::new())))
        .collect();
    let workers: Vec<_> = recent
        .iter()
        .enumerate()
        .map(|(index, recent)| {
            let worker = Worker {
                address: options.address.clone(),
                rng: Rng::new(options.seed ^ (index as u64).wrapping_mul(0x9e37_79b9)),
                templates: Arc::clone(&templates),
                stop: Arc::clone(&stop),
                counters: Arc::clone(&counters),
                recent: Arc::clone(recent),
            };
            std::thread::spawn(move || worker.run())
        })
        .collect();
    let deadline = started + options.duration;
    let mut next_check = Instant::now() + options.check_interval;
    while Instant::now() < deadline && report.failure.is_none() {
        std::thread::sleep(WATCH_INTERVAL);
        report.failure = watch(options, &mut report);
        if report.failure.is_none() && Instant::now() >= next_check {
            match health.check() {
                Ok(()) => report.health_checks += 1,
                Err(error) => {
                    // Once more on a fresh connection: the check's own
                    // connection may have been the one that broke.
                    health = HealthCheck::new(&options.address);
                    if let Err(again) = health.check() {
                        report.failure = Some(format!(
                            "a plain client can no longer produce and read back: {error}; \
                             again: {again}"
                        ));
                    }
                }
            }
            next_check = Instant::now() + options.check_interval;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    if report.failure.is_none() {
        report.failure = watch(options, &mut report);
    }
    if report.failure.is_none() {
        match HealthCheck::new(&options.address).check() {
            Ok(()) => report.health_checks += 1,
            Err(error) => {
                report.failure = Some(format!("the final check failed: {error}"));
            }
        }
    }
    if report.failure.is_some() {
        report.saved = save_recent(&options.out_dir, options.seed, &recent);
    }
    report.connections = counters.connections.load(Ordering::Relaxed);
    report.frames = counters.frames.load(Ordering::Relaxed);
    report.bytes_sent = counters.bytes_sent.load(Ordering::Relaxed);
    report.closed_by_broker = counters.closed_by_broker.load(Ordering::Relaxed);
    report.elapsed = started.elapsed();
    report
}

/// The process check: alive, and within its memory bound.
fn watch(options: &NetworkFuzzOptions, report: &mut NetworkFuzzReport) -> Option<String> {
    let Some(rss) = resident_bytes(options.pid) else {
        return Some(format!("the broker (pid {}) is gone", options.pid));
    };
    report.rss_peak_bytes = report.rss_peak_bytes.max(rss);
    let bound = report.rss_start_bytes + options.rss_growth_max_bytes;
    (rss > bound).then(|| {
        format!(
            "the broker's resident memory is {} MiB, over its bound of {} MiB ({} MiB at the start)",
            rss >> 20,
            bound >> 20,
            report.rss_start_bytes >> 20
        )
    })
}

/// `VmRSS` of `pid`; `None` once the process is gone or a zombie.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let state = status
        .lines()
        .find_map(|line| line.strip_prefix("State:"))?;
    if state.trim_start().starts_with('Z') || state.trim_start().starts_with('X') {
        return None;
    }
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|value| value.trim().parse().ok())?;
    Some(kib * 1024)
}

fn prepare_topics(address: &str) -> Result<(), String> {
    let mut client = KafkaClient::connect(address).map_err(|error| error.to_string())?;
    let topic = |name: &'static str, partitions| {
        CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)
    };
    let request = CreateTopicsRequest::default()
        .with_topics(vec![
            topic(FUZZ_TOPIC, FUZZ_TOPIC_PARTITIONS),
            topic(HEALTH_TOPIC, 1),
        ])
        .with_timeout_ms(30_000);
    let response = client.call(&request).map_err(|error| error.to_string())?;
    for topic in &response.topics {
        // Already there from an earlier run on the same broker: fine.
        let exists = kafka_protocol::ResponseError::TopicAlreadyExists.code();
        if topic.error_code != 0 && topic.error_code != exists {
            return Err(format!(
                "creating {} failed with error code {}",
                topic.name.0, topic.error_code
            ));
        }
    }
    Ok(())
}

/// Produce one record with a fresh value, then fetch it back.
struct HealthCheck {
    address: String,
    client: Option<KafkaClient>,
    sequence: u64,
}

impl HealthCheck {
    fn new(address: &str) -> HealthCheck {
        HealthCheck {
            address: address.to_owned(),
            client: None,
            sequence: 0,
        }
    }

    fn check(&mut self) -> Result<(), String> {
        if self.client.is_none() {
            let client = KafkaClient::connect(&self.address).map_err(|error| error.to_string())?;
            self.client = Some(client);
        }
        let client = self.client.as_mut().expect("connected above");
        self.sequence += 1;
        let value = format!("health-{}-{}", std::process::id(), self.sequence);
        let outcome = produce_and_read_back(client, value.as_bytes());
        if outcome.is_err() {
            self.client = None;
        }
        outcome
    }
}

/// The Produce and Fetch versions of the health check: the newest that name
/// topics by name (v13 of each names them by id).
const HEALTH_PRODUCE_VERSION: i16 = 12;
const HEALTH_FETCH_VERSION: i16 = 12;

fn produce_and_read_back(client: &mut KafkaClient, value: &[u8]) -> Result<(), String> {
    let topic = || TopicName(StrBytes::from_static_str(HEALTH_TOPIC));
    let mut builder = BatchBuilder::new(crate::storage::segment::now_ms() as i64);
    builder.push(RecordSpec {
        key: Some(b"health"),
        value: Some(value),
        timestamp_delta_ms: 0,
    });
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic())
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(builder.build()))),
                ]),
        ]);
    let response = client
        .call_at(&produce, HEALTH_PRODUCE_VERSION)
        .map_err(|error| error.to_string())?;
    let partition = response
        .responses
        .first()
        .and_then(|topic| topic.partition_responses.first())
        .ok_or("an empty produce response")?;
    if partition.error_code != 0 {
        return Err(format!(
            "produce failed with error code {}",
            partition.error_code
        ));
    }
    let offset = partition.base_offset;
    let fetch = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(topic())
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let response = client
        .call_at(&fetch, HEALTH_FETCH_VERSION)
        .map_err(|error| error.to_string())?;
    let partition = response
        .responses
        .first()
        .and_then(|topic| topic.partitions.first())
        .ok_or("an empty fetch response")?;
    if partition.error_code != 0 {
        return Err(format!(
            "fetch failed with error code {}",
            partition.error_code
        ));
    }
    let mut records = partition.records.clone().unwrap_or_default();
    let batches = RecordBatchDecoder::decode_all(&mut records)
        .map_err(|error| format!("the fetched records do not decode: {error}"))?;
    let found = batches
        .iter()
        .flat_map(|set| &set.records)
        .any(|record| record.offset == offset && record.value.as_deref() == Some(value));
    if !found {
        return Err(format!(
            "the record produced at offset {offset} was not fetched back"
        ));
    }
    Ok(())
}

/// A valid frame (without its size prefix) of every advertised API and
/// version, naming [`FUZZ_TOPIC`].
fn templates() -> Vec<Vec<u8>> {
    let mut templates = Vec::new();
    for entry in SUPPORTED {
        for version in entry.min..=entry.max {
            if let Ok(frame) = sample_frame(entry.key, version, 1, sample_batch()) {
                templates.push(frame);
            }
        }
    }
    templates
}

struct Worker {
    address: String,
    rng: Rng,
    templates: Arc<Vec<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    recent: Arc<Mutex<VecDeque<Script>>>,
}

impl Worker {
    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let script = self.script();
            {
                let mut recent = self
                    .recent
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                if recent.len() == RECENT_SCRIPTS_MAX {
                    recent.pop_front();
                }
                recent.push_back(script.clone());
            }
            let Ok(stream) = TcpStream::connect(&self.address) else {
                // Refused (over connections_max) or the broker is gone:
                // the watcher tells which.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            self.counters.connections.fetch_add(1, Ordering::Relaxed);
            self.counters
                .frames
                .fetch_add(script.frames, Ordering::Relaxed);
            if send_script(&stream, &script, &self.counters) {
                self.counters
                    .closed_by_broker
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A connection's frames: mostly mutated templates with honest size
    /// prefixes, some with lying prefixes, cut short or pure garbage.
    fn script(&mut self) -> Script {
        let rng = &mut self.rng;
        let frames = 1 + rng.below(SCRIPT_FRAMES_MAX);
        let mut writes = Vec::new();
        for _ in 0..frames {
            let template = &self.templates[rng.below(self.templates.len())];
            let body = match rng.below(10) {
                0 | 1 => template.clone(),
                2 => {
                    let len = rng.below(64);
                    rng.bytes(len)
                }
                _ => mutate(rng, template, &self.templates, FRAME_BYTES_MAX),
            };
            let honest = body.len() as i32;
            let size = match rng.below(12) {
                0 => honest + 1 + rng.below(64) as i32,
                1 => honest - 1 - rng.below(8) as i32,
                2 => [0, -1, i32::MIN, i32::MAX, 100 << 20][rng.below(5)],
                _ => honest,
            };
            let mut frame = size.to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            if rng.one_in(16) {
                frame.truncate(rng.below(frame.len()));
            }
            split_into(rng, frame, &mut writes);
        }
        Script {
            writes,
            frames: frames as u64,
        }
    }
}

/// Add `frame` to `writes` whole, in a few pieces or byte by byte.
fn split_into(rng: &mut Rng, frame: Vec<u8>, writes: &mut Vec<Vec<u8>>) {
    match rng.below(8) {
        0 if frame.len() <= 64 => writes.extend(frame.chunks(1).map(<[u8]>::to_vec)),
        1 | 2 => {
            let mut rest = frame.as_slice();
            while !rest.is_empty() {
                let cut = 1 + rng.below(rest.len());
                writes.push(rest[..cut].to_vec());
                rest = &rest[cut..];
            }
        }
        _ => writes.push(frame),
    }
}

/// Send `script` on `stream`, read what comes back until the broker goes
/// quiet or closes; whether the broker closed the connection first.
fn send_script(mut stream: &TcpStream, script: &Script, counters: &Counters) -> bool {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    for write in &script.writes {
        if stream.write_all(write).is_err() {
            return true;
        }
        counters
            .bytes_sent
            .fetch_add(write.len() as u64, Ordering::Relaxed);
    }
    let _ = stream.set_read_timeout(Some(READ_QUIET));
    let mut sink = [0u8; 64 * 1024];
    let closed = loop {
        match stream.read(&mut sink) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false;
            }
            Err(_) => break true,
        }
    };
    let _ = stream.shutdown(Shutdown::Both);
    closed
}

/// Save every worker's recent scripts, oldest first within a worker.
fn save_recent(out_dir: &Path, seed: u64, recent: &[Arc<Mutex<VecDeque<Script>>>]) -> Vec<PathBuf> {
    let mut saved = Vec::new();
    if std::fs::create_dir_all(out_dir).is_err() {
        return saved;
    }
    for (worker, scripts) in recent.iter().enumerate() {
        let scripts = scripts.lock().unwrap_or_else(|poison| poison.into_inner());
        for (index, script) in scripts.iter().enumerate() {
            let path = out_dir.join(format!("seed{seed}-worker{worker:02}-{index:02}.bin"));
            if std::fs::write(&path, script.writes.concat()).is_ok() {
                saved.push(path);
            }
        }
    }
    saved
}

/// Send each file's bytes on a connection of its own, in order, reading
/// what comes back, and check after each that the broker (`pid`) is still
/// alive; for reproducing a saved failure. The error names the file after
/// which the broker was gone.
pub fn replay(address: &str, pid: u32, files: &[PathBuf]) -> Result<(), String> {
    let counters = Counters::default();
    for file in files {
        let bytes = std::fs::read(file)
            .map_err(|error| format!("cannot read {}: {error}", file.display()))?;
        let stream = TcpStream::connect(address)
            .map_err(|error| format!("cannot connect before {}: {error}", file.display()))?;
        let script = Script {
            writes: vec![bytes],
            frames: 0,
        };
        send_script(&stream, &script, &counters);
        // Give a dying process a moment to be seen as gone.
        std::thread::sleep(Duration::from_millis(50));
        if resident_bytes(pid).is_none() {
            return Err(format!("the broker died after {}", file.display()));
        }
    }
    Ok(())
}
