//! Recovery: bring a shard's commit log and consume queues back to a
//! consistent state after a clean stop or a crash.
//!
//! 1. Open the segments, the checkpoint (if valid) and the partitions. A log
//!    that lacks any position between its first segment and the checkpoint
//!    (a segment truncated, emptied or deleted, in the middle or at the end)
//!    lost durable, acknowledged data: the shard is refused
//!    ([`RecoveryError::LogLostBelowCheckpoint`] names the files, the lost
//!    ranges and how to go on). Open each queue trusting only the entries
//!    the checkpoint vouches for, each verified by its CRC. A queue with
//!    fewer sound entries than that (files deleted or lost, a damaged or
//!    zeroed entry) is *behind* and is rebuilt from where it stops, from the
//!    first segment if it is gone. Without a checkpoint no entry is trusted,
//!    so every entry is rebuilt from frames the scan finds: none can point
//!    into a hole in the log.
//! 2. Scan from the earliest point anyone needs, verifying every frame (header
//!    CRC, batch structure, batch CRC), and index each frame a queue lacks.
//! 3. At an invalid frame, look ahead a bounded window for the next valid
//!    frame. If one exists, the damaged range is skipped and logged: nothing
//!    indexes it, and frames after it are kept. If none exists, valid data
//!    ends there.
//! 4. Only after the scan: zero the torn bytes after the end, drop trailing
//!    segments without frames, fsync, and report what was found.
//!
//! Nothing past the last valid frame is ever indexed, so nothing half-written
//! is ever served.

use super::timer::index::TimerCheckpoint;
use super::timer::pairing::{TimerFrame, TimerPairing};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::checkpoint::{CHECKPOINT_FILE, Checkpoint, CheckpointError, PartitionCheckpoint};
use super::compaction::clean_section::CleanSection;
use super::compaction::collector::Collector;
use super::consume_queue::{ConsumeQueue, QueueEntry, QueueError};
use super::frame::{FRAME_HEADER_BYTES, FrameKind};
use super::layout::ShardLayout;
use super::partition::{META_FILE, MetaError, Partition, PartitionConfig, PartitionMeta};
use super::producer_snapshot::ProducerSnapshot;
use super::producer_state::ProducerStates;
use super::segment::{self, Segment, SegmentError, list_segments};
use super::segment_reader::{FrameScanner, ScanItem};
use crate::config::WriteMode;
use crate::ids::{LogPosition, Offset, PartitionId};

#[derive(Clone, Debug)]
pub struct RecoveryOptions {
    pub layout: ShardLayout,
    pub write_mode: WriteMode,
    pub entries_per_file: u32,
    /// Largest plausible frame payload; bigger lengths are damage.
    pub payload_len_max: u64,
    /// How far past an invalid frame to look for a valid one.
    pub resync_window_bytes: u64,
}

#[derive(Debug, Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("compaction clean section: {0}")]
    Clean(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("recovery I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Part of the log below the position the checkpoint recorded as durable
    /// is missing (a segment truncated, emptied or deleted, in the middle or
    /// at the end): the disk lost acknowledged data.
    #[error(
        "the commit log lacks positions below {checkpoint}, which the checkpoint {checkpoint_file} \
         records as durable ({lost}): the disk lost acknowledged data, so this shard is not \
         started. To start with what the log still holds (the missing positions stay lost), copy \
         {shard_dir} aside for inspection, delete {checkpoint_file} and start again"
    )]
    LogLostBelowCheckpoint {
        lost: LostRanges,
        checkpoint: LogPosition,
        checkpoint_file: PathBuf,
        shard_dir: PathBuf,
    },
}

/// A range of log positions below the checkpoint that no segment holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostRange {
    pub start: LogPosition,
    pub end: LogPosition,
    /// The segment that ends at `start` (the log directory if there is none).
    pub file: PathBuf,
    /// The segment after the gap and its base; `None` when the log ends at
    /// `start`.
    pub next: Option<(PathBuf, LogPosition)>,
}

impl std::fmt::Display for LostRange {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (start, end, file) = (self.start, self.end, self.file.display());
        match &self.next {
            Some((next, next_base)) => write!(
                formatter,
                "positions {start}..{end} are missing: {file} ends at {start} but the next \
                 segment {} starts at {next_base}",
                next.display()
            ),
            None => write!(
                formatter,
                "positions {start}..{end} are missing: the commit log ends at position {start} \
                 ({file})"
            ),
        }
    }
}

/// Every lost range, for the error message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostRanges(pub Vec<LostRange>);

impl std::fmt::Display for LostRanges {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, range) in self.0.iter().enumerate() {
            if index > 0 {
                formatter.write_str("; ")?;
            }
            write!(formatter, "{range}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointStatus {
    Found(LogPosition),
    Missing,
    Damaged(String),
}

/// What recovery found and did, for the startup log and for tests.
#[derive(Clone, Debug)]
pub struct RecoveryReport {
    pub checkpoint: CheckpointStatus,
    pub segments: usize,
    pub partitions: usize,
    pub scan_start: LogPosition,
    /// The newest producer snapshot: `Found(position)` if it seeded the
    /// producers' state.
    pub producer_snapshot: CheckpointStatus,
    /// Where the scan that rebuilds idempotent-producer state started: the
    /// snapshot's position, or the first segment without a usable snapshot.
    /// Frames below `scan_start` are read for it only.
    pub producer_scan_start: LogPosition,
    pub end: LogPosition,
    pub frames_scanned: u64,
    pub bytes_scanned: u64,
    pub frames_reindexed: u64,
    pub orphan_frames: u64,
    /// Damaged ranges skipped in the middle of the log: (start, bytes, why).
    pub skipped: Vec<(LogPosition, u64, String)>,
    /// Torn or garbage bytes zeroed after the last valid frame.
    pub truncated_bytes: u64,
    pub truncated_at: Option<LogPosition>,
    pub queues_rebuilt: Vec<PartitionId>,
    /// Partitions whose consume queue held a damaged entry (its index): the
    /// queue was cut back before it and re-indexed.
    pub damaged_queue_entries: Vec<(PartitionId, u64)>,
    /// The timer notes (issue 18: held frames, delivery and roll notes) at
    /// or after the checkpoint's timer position (whose batch follows them),
    /// in log order: what the timer re-derives.
    pub timer_frames: Vec<TimerFrame>,
    pub elapsed: Duration,
}

pub struct Recovered {
    pub segments: VecDeque<Segment>,
    pub end: LogPosition,
    pub partitions: Vec<Partition>,
    pub next_partition_id: u32,
    pub report: RecoveryReport,
    /// Compaction passes whose commit frames the scan met: the store
    /// applies the complete ones once they are below its visible limit.
    pub compaction: Collector,
    /// The timer index as of `timer_from` (the checkpoint's timer position;
    /// the timer frames from there on are in `report.timer_frames`).
    pub timer: TimerCheckpoint,
    pub timer_from: LogPosition,
}

struct QueueState {
    meta: PartitionMeta,
    queue: ConsumeQueue,
    remembered: Option<PartitionCheckpoint>,
    /// Seeded from the producer snapshot, then rebuilt from every frame of
    /// the partition the scan reads from `producer_scan_start` on.
    producers: ProducerStates,
}

pub fn recover(
    options: &RecoveryOptions,
    default_config: PartitionConfig,
) -> Result<Recovered, RecoveryError> {
    let started = Instant::now();
    let layout = &options.layout;
    layout
        .create_dirs()
        .map_err(|(dir, source)| io_error(&dir, source))?;
    let mut segments = open_segments(options)?;
    let (checkpoint, checkpoint_status) = load_checkpoint(layout);
    let first_base = segments
        .front()
        .map_or(LogPosition::ZERO, |segment| segment.base);
    let log_limit = segments.back().map_or(LogPosition::ZERO, Segment::end);
    if let Some(checkpoint) = &checkpoint {
        check_nothing_lost_below(layout, &segments, checkpoint.indexed_position)?;
    }
    // Retention may have deleted the segments below an older checkpoint.
    let checkpoint = checkpoint.filter(|checkpoint| checkpoint.indexed_position >= first_base);
    let indexed = checkpoint
        .as_ref()
        .map_or(first_base, |checkpoint| checkpoint.indexed_position);
    let (timer, timer_from) = checkpoint.as_ref().map_or_else(
        || (TimerCheckpoint::default(), indexed),
        |checkpoint| (checkpoint.timer, checkpoint.timer_position),
    );
    let remembered: HashMap<PartitionId, PartitionCheckpoint> = checkpoint
        .iter()
        .flat_map(|checkpoint| {
            checkpoint
                .partitions
                .iter()
                .map(|partition| (partition.id, *partition))
        })
        .collect();

    let (snapshot, snapshot_status) = load_producer_snapshot(layout, first_base, log_limit);
    let producer_from = snapshot
        .as_ref()
        .map_or(first_base, |snapshot| snapshot.position.max(first_base));
    let mut seeds: HashMap<PartitionId, ProducerStates> = snapshot
        .map(|snapshot| snapshot.partitions.into_iter().collect())
        .unwrap_or_default();

    let metas = load_metas(layout)?;
    // Ids a cluster's controller allocated are not the shard's to count.
    let next_partition_id = read_partition_ids(layout).max(
        metas
            .iter()
            .filter(|meta| !meta.id.is_cluster_assigned())
            .map(|meta| meta.id.0 + 1)
            .max()
            .unwrap_or(0),
    );
    let mut report = RecoveryReport {
        checkpoint: checkpoint_status,
        segments: segments.len(),
        partitions: metas.len(),
        scan_start: indexed,
        producer_snapshot: snapshot_status,
        producer_scan_start: producer_from,
        end: indexed,
        frames_scanned: 0,
        bytes_scanned: 0,
        frames_reindexed: 0,
        orphan_frames: 0,
        skipped: Vec::new(),
        truncated_bytes: 0,
        truncated_at: None,
        queues_rebuilt: Vec::new(),
        damaged_queue_entries: Vec::new(),
        timer_frames: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut queues = HashMap::new();
    let mut cleans = HashMap::new();
    for meta in metas {
        let (clean, unusable) =
            CleanSection::open_newest(&layout.partition_dir(meta.id), options.entries_per_file)
                .map_err(|error| RecoveryError::Clean(error.to_string()))?;
        if let Some(unusable) = unusable {
            // Built again from its commit frames, which the scan collects.
            report.scan_start = report.scan_start.min(unusable.commit_position);
        }
        if let Some(clean) = clean {
            cleans.insert(meta.id, clean);
        }
        let remembered = remembered.get(&meta.id).copied();
        let (mut state, resume) = open_queue(options, meta, remembered, first_base)?;
        state.producers = seeds.remove(&state.meta.id).unwrap_or_default();
        if let Some(damaged) = state.queue.damage_found_at_open() {
            report
                .damaged_queue_entries
                .push((state.meta.id, damaged.index));
        }
        if let Some(resume) = resume {
            report.queues_rebuilt.push(state.meta.id);
            report.scan_start = report.scan_start.min(resume);
        }
        queues.insert(state.meta.id, state);
    }

    let scan_from = report.scan_start.max(first_base);
    let mut collector = Collector::default();
    let (end, tails) = scan(
        options,
        &segments,
        ScanRange {
            index_from: scan_from,
            read_from: producer_from.min(scan_from),
            producer_from,
            indexed,
            timer_from,
        },
        &mut queues,
        &mut collector,
        &mut report,
    )?;
    let skipped: Vec<(LogPosition, LogPosition)> = report
        .skipped
        .iter()
        .map(|(position, bytes, _)| (*position, position.plus(*bytes)))
        .collect();
    collector.drop_damaged(|entry| {
        let frame_end = entry.frame_end(FRAME_HEADER_BYTES as u64);
        skipped
            .iter()
            .any(|&(start, end)| entry.position < end && start < frame_end)
    });
    assert!(
        end <= log_limit,
        "recovered end {end} past the last segment's end {log_limit}"
    );
    assert!(
        end >= scan_from.min(indexed),
        "recovery never ends before where it trusted the log"
    );
    if end < timer_from {
        tracing::error!(
            end = end.0,
            timer_from = timer_from.0,
            "the recovered log ends before the position the timer's checkpoint vouches for \
             (damage): delayed records timed past the end may be delivered from dead bytes"
        );
    }
    finish_log(&mut segments, end, tails, options, &mut report)?;
    if let Some(last) = segments.back() {
        assert!(
            last.base <= end && end <= last.end(),
            "recovered end {end} outside the last segment {}..{}",
            last.base,
            last.end()
        );
    }
    report.end = end;

    let partitions = queues
        .into_values()
        .map(|state| {
            let dir = layout.partition_dir(state.meta.id);
            let remembered = state
                .remembered
                .map(|checkpoint| (checkpoint.log_start_offset, checkpoint.next_offset));
            let clean = cleans
                .remove(&state.meta.id)
                .and_then(|clean| keep_clean_section(clean, end));
            let mut partition =
                Partition::new(state.meta, default_config, dir, state.queue, remembered)
                    .with_clean(clean, remembered.map(|(start, _)| start));
            partition.producers = state.producers;
            let (high_watermark, log_start) =
                (partition.high_watermark, partition.log_start_offset);
            partition.producers.stabilize(high_watermark);
            partition.producers.prune_aborted(log_start);
            partition
        })
        .collect();
    report.elapsed = started.elapsed();
    Ok(Recovered {
        segments,
        end,
        partitions,
        next_partition_id,
        report,
        compaction: collector,
        timer,
        timer_from,
    })
}

fn open_segments(options: &RecoveryOptions) -> Result<VecDeque<Segment>, RecoveryError> {
    let log_dir = options.layout.log_dir();
    let mut segments = VecDeque::new();
    for base in list_segments(&log_dir)? {
        let segment = Segment::open(&log_dir, base, options.write_mode)?;
        if let Some(previous) = segments.back().map(Segment::end)
            && previous != segment.base
        {
            tracing::warn!(
                expected = previous.0,
                found = segment.base.0,
                "commit-log segments are not contiguous; positions in the gap are lost"
            );
        }
        segments.push_back(segment);
    }
    Ok(segments)
}

/// The checkpoint only records positions that were durable (fsynced), so
/// any position below it that no segment holds was acknowledged data the
/// disk lost: a segment truncated or emptied (it ends before the next one's
/// base, or before the checkpoint if it is the last) or deleted between two
/// others. Starting anyway would leave queue entries pointing into the hole
/// (issue 12: fetches there returned nothing, or a torn response, for good),
/// so the shard is refused with what was found and how to go on. Segments
/// retention deleted from the front are not a loss: their positions are
/// below the first segment.
fn check_nothing_lost_below(
    layout: &ShardLayout,
    segments: &VecDeque<Segment>,
    checkpoint: LogPosition,
) -> Result<(), RecoveryError> {
    let lost = lost_ranges(&layout.log_dir(), segments, checkpoint);
    if lost.is_empty() {
        return Ok(());
    }
    Err(RecoveryError::LogLostBelowCheckpoint {
        lost: LostRanges(lost),
        checkpoint,
        checkpoint_file: layout.root().join(CHECKPOINT_FILE),
        shard_dir: layout.root().to_owned(),
    })
}

/// The ranges below `checkpoint` between the first segment's base and the
/// checkpoint that no segment covers, in log order.
fn lost_ranges(
    log_dir: &std::path::Path,
    segments: &VecDeque<Segment>,
    checkpoint: LogPosition,
) -> Vec<LostRange> {
    let mut lost = Vec::new();
    for (segment, next) in segments.iter().zip(segments.iter().skip(1)) {
        let end = next.base.min(checkpoint);
        if segment.end() < end {
            lost.push(LostRange {
                start: segment.end(),
                end,
                file: segment.path.clone(),
                next: Some((next.path.clone(), next.base)),
            });
        }
    }
    let log_end = segments.back().map_or(LogPosition::ZERO, Segment::end);
    if log_end < checkpoint {
        lost.push(LostRange {
            start: log_end,
            end: checkpoint,
            file: segments
                .back()
                .map_or_else(|| log_dir.to_owned(), |segment| segment.path.clone()),
            next: None,
        });
    }
    lost
}

fn load_checkpoint(layout: &ShardLayout) -> (Option<Checkpoint>, CheckpointStatus) {
    match Checkpoint::load(layout.root()) {
        Ok(Some(checkpoint)) => {
            let position = checkpoint.indexed_position;
            (Some(checkpoint), CheckpointStatus::Found(position))
        }
        Ok(None) => (None, CheckpointStatus::Missing),
        Err(error @ (CheckpointError::Corrupt { .. } | CheckpointError::Io { .. })) => {
            tracing::warn!(%error, "ignoring the checkpoint");
            (None, CheckpointStatus::Damaged(error.to_string()))
        }
    }
}

/// The newest producer snapshot, if it is sound and the log still reaches
/// its position; otherwise the state is rebuilt from the first segment.
fn load_producer_snapshot(
    layout: &ShardLayout,
    first_base: LogPosition,
    log_limit: LogPosition,
) -> (Option<ProducerSnapshot>, CheckpointStatus) {
    let snapshot = match ProducerSnapshot::load_newest(&layout.producer_snapshots_dir()) {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => return (None, CheckpointStatus::Missing),
        Err(error) => {
            tracing::warn!(%error, first_segment = first_base.0, "ignoring the producer snapshot; rebuilding the producers' state from the first segment");
            return (None, CheckpointStatus::Damaged(error.to_string()));
        }
    };
    if snapshot.position > log_limit {
        // Only durable positions are snapshotted: the log lost data the
        // snapshot saw, so the state must come from what the log holds.
        let reason = format!(
            "the producer snapshot is for position {}, past the end of the commit log at {log_limit}",
            snapshot.position
        );
        tracing::warn!(%reason, first_segment = first_base.0, "ignoring the producer snapshot; rebuilding the producers' state from the first segment");
        return (None, CheckpointStatus::Damaged(reason));
    }
    let position = snapshot.position;
    (Some(snapshot), CheckpointStatus::Found(position))
}

fn load_metas(layout: &ShardLayout) -> Result<Vec<PartitionMeta>, RecoveryError> {
    let dir = layout.partitions_dir();
    let mut metas = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|source| io_error(&dir, source))? {
        let path = entry.map_err(|source| io_error(&dir, source))?.path();
        let meta_path = path.join(META_FILE);
        let bytes = match std::fs::read(&meta_path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // A creation interrupted before its metadata was durable: the
                // partition was never announced, so nothing refers to it.
                tracing::warn!(path = %path.display(), "removing partition directory without metadata");
                std::fs::remove_dir_all(&path).map_err(|source| io_error(&path, source))?;
                continue;
            }
            Err(source) => return Err(io_error(&meta_path, source)),
        };
        metas.push(PartitionMeta::decode(&bytes, &meta_path)?);
    }
    metas.sort_by_key(|meta| meta.id);
    Ok(metas)
}

fn read_partition_ids(layout: &ShardLayout) -> u32 {
    std::fs::read_to_string(layout.partition_ids_file())
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Open a partition's queue; returns where its rebuild must start if it is
/// behind what the checkpoint vouched for.
fn open_queue(
    options: &RecoveryOptions,
    meta: PartitionMeta,
    remembered: Option<PartitionCheckpoint>,
    first_base: LogPosition,
) -> Result<(QueueState, Option<LogPosition>), RecoveryError> {
    let dir = options.layout.partition_dir(meta.id);
    let trusted = remembered.map_or(0, |checkpoint| checkpoint.queue_entries);
    let queue = match ConsumeQueue::open(&dir, options.entries_per_file, trusted) {
        Ok(queue) => queue,
        Err(error @ (QueueError::Gap { .. } | QueueError::Format { .. })) => {
            tracing::warn!(%error, partition = meta.id.0, "rebuilding consume queue");
            remove_queue_files(&dir)?;
            ConsumeQueue::open(&dir, options.entries_per_file, 0)?
        }
        Err(error) => return Err(error.into()),
    };
    // A damaged entry ended the queue before it, which makes the queue
    // behind: the one re-indexing path below serves damage, lost files and
    // the version-1 upgrade alike.
    if let Some(damaged) = queue.damage_found_at_open() {
        tracing::warn!(
            partition = meta.id.0,
            topic = %meta.topic,
            index = meta.index,
            entry = damaged.index,
            file = %damaged.path.display(),
            error = %damaged.error,
            "consume-queue entry is damaged; the queue is cut back before it and re-indexed from the commit log"
        );
    }
    let resume = (queue.tail_index() < trusted).then(|| {
        queue.last().map_or(first_base, |entry| {
            entry
                .position
                .plus(FRAME_HEADER_BYTES as u64 + u64::from(entry.batch_len))
        })
    });
    if let Some(resume) = resume {
        tracing::warn!(
            partition = meta.id.0,
            topic = %meta.topic,
            index = meta.index,
            entries = queue.tail_index(),
            expected = trusted,
            from_position = resume.0,
            "consume queue is behind the checkpoint; re-indexing it from the commit log"
        );
        if resume < first_base {
            // Retention deleted the segments those entries pointed into:
            // what they indexed is gone, and the queue continues with the
            // oldest frame still on disk.
            tracing::warn!(
                partition = meta.id.0,
                topic = %meta.topic,
                index = meta.index,
                next_offset = ?queue.last().map(|entry| entry.next_offset().0),
                lost_from_position = resume.0,
                log_start_position = first_base.0,
                "the commit log no longer holds the batches of the lost consume-queue entries; \
                 their offsets are not served and reads continue at the oldest batch on disk"
            );
        }
    }
    Ok((
        QueueState {
            meta,
            queue,
            remembered,
            producers: ProducerStates::default(),
        },
        resume,
    ))
}

pub(super) fn remove_queue_files(dir: &std::path::Path) -> Result<(), RecoveryError> {
    for entry in std::fs::read_dir(dir).map_err(|source| io_error(dir, source))? {
        let path = entry.map_err(|source| io_error(dir, source))?.path();
        if path.extension().is_some_and(|extension| extension == "cq") {
            std::fs::remove_file(&path).map_err(|source| io_error(&path, source))?;
        }
    }
    Ok(())
}

/// Non-zero bytes after the last valid frame of a segment: a torn write,
/// or garbage. Zeroed if the log resumes there.
struct TornTail {
    position: LogPosition,
    bytes: u64,
    reason: String,
}

/// Where [`scan`] reads and indexes.
struct ScanRange {
    /// Frames from here on are indexed where their queue lacks them.
    index_from: LogPosition,
    /// Where the scan starts: the smaller of `index_from` and `producer_from`.
    read_from: LogPosition,
    /// Frames from here on rebuild producer state.
    producer_from: LogPosition,
    /// What the checkpoint vouches for.
    indexed: LogPosition,
    /// Timer notes from here on are listed (at or past `indexed`).
    timer_from: LogPosition,
}

/// Scan from `range.read_from`, rebuilding producer state from every frame
/// from `range.producer_from` and indexing the frames from
/// `range.index_from` that the queues lack.
/// Returns the end of the last valid frame (or `indexed` if nothing valid
/// follows it) and the torn tails seen.
fn scan(
    options: &RecoveryOptions,
    segments: &VecDeque<Segment>,
    range: ScanRange,
    queues: &mut HashMap<PartitionId, QueueState>,
    collector: &mut Collector,
    report: &mut RecoveryReport,
) -> Result<(LogPosition, Vec<TornTail>), RecoveryError> {
    assert!(range.read_from == range.index_from.min(range.producer_from));
    let ScanRange {
        index_from: start,
        read_from,
        producer_from,
        indexed,
        timer_from,
    } = range;
    let mut end = indexed.max(start);
    let mut tails = Vec::new();
    let mut pairing = TimerPairing::default();
    for segment in segments {
        if segment.end() <= read_from {
            continue;
        }
        let mut scanner = FrameScanner::new(segment, options.payload_len_max);
        let mut at = read_from.max(segment.base);
        loop {
            match scanner
                .read(at)
                .map_err(|source| io_error(&segment.path, source))?
            {
                ScanItem::Frame {
                    position,
                    header,
                    batch,
                    marker,
                    commit,
                } => {
                    assert!(
                        position >= at && segment.contains(position),
                        "the scanner moved back or out of its segment: {position}"
                    );
                    assert!(
                        position.plus(header.frame_len()) <= segment.end(),
                        "a frame spans segments"
                    );
                    report.frames_scanned += 1;
                    report.bytes_scanned += header.frame_len();
                    at = position.plus(header.frame_len());
                    if let Some(note) = pairing.next(position, &header, &batch)
                        && note.position >= timer_from
                    {
                        report.timer_frames.push(note);
                    }
                    if header.kind != FrameKind::Batch {
                        // Compaction copies are indexed only through their
                        // pass's commit frames, which are collected here.
                        if let Some(part) = commit
                            && queues.contains_key(&header.partition)
                        {
                            collector.collect(header.partition, position, at, part, Instant::now());
                        }
                        if position >= start {
                            end = end.max(at);
                        }
                        continue;
                    }
                    if position >= producer_from {
                        replay_producer(queues, header.partition, &batch, marker.as_ref(), at);
                    }
                    if position >= start {
                        index_frame(
                            queues,
                            position,
                            header.partition,
                            header.payload_len,
                            &batch,
                            report,
                        )?;
                        end = end.max(at);
                    }
                }
                ScanItem::SegmentEnd => break,
                ScanItem::Invalid { position, reason } => {
                    let limit = position.plus(options.resync_window_bytes);
                    let next = scanner
                        .find_next_frame(position.plus(1), limit)
                        .map_err(|source| io_error(&segment.path, source))?;
                    let Some(next) = next else {
                        let bytes = scanner
                            .nonzero_extent(position, limit)
                            .map_err(|source| io_error(&segment.path, source))?;
                        if bytes > 0 {
                            tails.push(TornTail {
                                position,
                                bytes,
                                reason,
                            });
                        }
                        break;
                    };
                    tracing::error!(
                        segment = %segment.path.display(),
                        position = position.0,
                        bytes = next.0 - position.0,
                        %reason,
                        "damaged commit-log range skipped; valid frames follow it and are kept"
                    );
                    report.skipped.push((position, next.0 - position.0, reason));
                    pairing.reset();
                    at = next;
                }
            }
        }
    }
    Ok((end, tails))
}

/// `clean` if its pass's commit frames are in the recovered log (which ends
/// at `end`); a section applied from frames the log no longer holds is
/// dropped (it cannot happen without damage: a pass is applied only once
/// it is durable and, in a cluster, below the high watermark).
fn keep_clean_section(clean: CleanSection, end: LogPosition) -> Option<CleanSection> {
    if clean.commit_position < end {
        return Some(clean);
    }
    tracing::error!(
        generation = clean.generation,
        commit_position = clean.commit_position.0,
        end = end.0,
        "a clean section's commit frames are past the recovered log; it is dropped"
    );
    if let Err(error) = clean.remove() {
        tracing::warn!(%error, "cannot delete the dropped clean section");
    }
    None
}

/// Rebuild a partition's producer state from a stored batch or marker.
fn replay_producer(
    queues: &mut HashMap<PartitionId, QueueState>,
    partition: PartitionId,
    batch: &crate::record_batch::BatchHeader,
    marker: Option<&crate::record_batch::control::TxnMarker>,
    end: LogPosition,
) {
    let Some(state) = queues.get_mut(&partition) else {
        return;
    };
    if batch.is_control() {
        match marker {
            Some(marker) => state.producers.apply_marker(
                batch.producer_id,
                batch.producer_epoch,
                marker,
                Offset(batch.base_offset),
                batch.max_timestamp_ms,
            ),
            None => tracing::warn!(
                %partition,
                base_offset = batch.base_offset,
                "a stored control batch is no transaction marker this broker reads; ignored"
            ),
        }
        return;
    }
    if !state
        .producers
        .replay(batch, Offset(batch.base_offset), end)
    {
        tracing::warn!(
            %partition,
            producer_id = batch.producer_id,
            base_offset = batch.base_offset,
            "a stored producer batch is not past the producer's previous one; ignored for \
             duplicate detection"
        );
    }
}

fn index_frame(
    queues: &mut HashMap<PartitionId, QueueState>,
    position: LogPosition,
    partition: PartitionId,
    payload_len: u32,
    batch: &crate::record_batch::BatchHeader,
    report: &mut RecoveryReport,
) -> Result<(), RecoveryError> {
    let Some(state) = queues.get_mut(&partition) else {
        // A deleted partition's frames stay in the log until retention.
        report.orphan_frames += 1;
        return Ok(());
    };
    let next = state
        .queue
        .last()
        .map_or(Offset(i64::MIN), |entry| entry.next_offset());
    if batch.base_offset < next.0 {
        return Ok(());
    }
    assert!(
        state
            .queue
            .last()
            .is_none_or(|last| last.position < position),
        "frames are indexed in log order"
    );
    let running_max = state
        .queue
        .last()
        .map_or(i64::MIN, |entry| entry.max_timestamp_ms);
    state.queue.append(QueueEntry {
        base_offset: Offset(batch.base_offset),
        position,
        batch_len: payload_len,
        last_offset_delta: batch.last_offset_delta as u32,
        max_timestamp_ms: batch.max_timestamp_ms.max(running_max),
        attributes: batch.attributes as u16,
    })?;
    report.frames_reindexed += 1;
    Ok(())
}

/// Drop segments holding no frames, zero the torn bytes after `end`, and
/// fsync every scanned segment so recovered data is durable.
fn finish_log(
    segments: &mut VecDeque<Segment>,
    end: LogPosition,
    tails: Vec<TornTail>,
    options: &RecoveryOptions,
    report: &mut RecoveryReport,
) -> Result<(), RecoveryError> {
    // A zero-byte segment goes even when it is the only one: its end is its
    // base, so the first roll would try to create its own name (issue 12:
    // EEXIST on every append, for good). The log opens a fresh one at `end`.
    while segments.back().is_some_and(|segment| {
        segment.base >= end && (segments.len() > 1 || segment.size_bytes == 0)
    }) {
        let segment = segments.pop_back().expect("checked above");
        tracing::info!(segment = %segment.path.display(), "removing segment with no valid frames");
        std::fs::remove_file(&segment.path).map_err(|source| io_error(&segment.path, source))?;
    }
    let Some(last) = segments.back() else {
        return Ok(());
    };
    for tail in tails {
        if !last.contains(tail.position) || tail.position < end {
            // Behind the resume point: dead space that is never written again.
            tracing::info!(position = tail.position.0, bytes = tail.bytes, reason = %tail.reason, "unused torn bytes at the end of an older segment");
            continue;
        }
        tracing::warn!(
            segment = %last.path.display(),
            position = end.0,
            bytes = tail.bytes,
            reason = %tail.reason,
            "torn write after the last valid frame; truncating"
        );
        let until = tail
            .position
            .plus(tail.bytes)
            .max(end.plus(options.resync_window_bytes))
            .min(last.end());
        segment::zero_range(last, end, until).map_err(|source| io_error(&last.path, source))?;
        report.truncated_bytes += tail.bytes;
        report.truncated_at = Some(end);
    }
    // Everything scanned may have been written but never fsynced before the
    // crash; the log is about to call it durable, so make it so, per file.
    for segment in segments
        .iter()
        .filter(|segment| segment.end() > report.scan_start)
    {
        segment
            .reader
            .sync_data()
            .map_err(|source| io_error(&segment.path, source))?;
    }
    Ok(())
}

fn io_error(path: &std::path::Path, source: std::io::Error) -> RecoveryError {
    RecoveryError::Io {
        path: path.to_owned(),
        source,
    }
}
