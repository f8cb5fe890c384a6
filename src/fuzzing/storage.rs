//! Targets for Sluice's own files, read back after a crash or disk damage:
//! commit-log frames and the segment scan recovery runs, the checkpoint,
//! `partition.meta`, consume-queue entries and queue files.
//!
//! Every format carries a CRC32C, which a mutated input almost never
//! matches; each target's first byte can ask for the checksum to be
//! recomputed, so the fields behind it are fuzzed too.

use std::path::{Path, PathBuf};

use super::{Target, fix_crc_le};
use crate::config::WriteMode;
use crate::ids::{LogPosition, Offset, PartitionId};
use crate::record_batch;
use crate::storage::checkpoint::{Checkpoint, PartitionCheckpoint};
use crate::storage::frame::{
    COVERED_PAYLOAD_PREFIX_BYTES, FRAME_HEADER_BYTES, FRAME_PREFIX_BYTES, FrameHeader,
};
use crate::storage::partition::PartitionMeta;
use crate::storage::queue_entry::{ENTRY_BYTES, QueueEntry};
use crate::storage::queue_file::{self, QueueFile};
use crate::storage::segment::{Segment, segment_path};
use crate::storage::segment_reader::{FrameScanner, SCAN_BUFFER_BYTES, ScanItem};

/// A commit-log frame header with its covered batch prefix.
pub const LOG_FRAME: Target = Target {
    name: "log_frame",
    run: log_frame,
    seeds: log_frame_seeds,
    allocation_max_bytes: super::proportional_allocation_max_bytes,
    input_max_bytes: 256,
};

/// A segment file scanned as recovery scans it: frame by frame, looking
/// past damage for the next valid frame, measuring a torn tail.
pub const SEGMENT_SCAN: Target = Target {
    name: "segment_scan",
    run: segment_scan,
    seeds: segment_scan_seeds,
    allocation_max_bytes: |input| {
        SCAN_BUFFER_BYTES + super::proportional_allocation_max_bytes(input)
    },
    input_max_bytes: 64 * 1024,
};

/// The shard checkpoint file.
pub const CHECKPOINT: Target = Target {
    name: "checkpoint",
    run: checkpoint,
    seeds: checkpoint_seeds,
    allocation_max_bytes: super::proportional_allocation_max_bytes,
    input_max_bytes: 4096,
};

/// A partition's `partition.meta` file.
pub const PARTITION_META: Target = Target {
    name: "partition_meta",
    run: partition_meta,
    seeds: partition_meta_seeds,
    allocation_max_bytes: super::proportional_allocation_max_bytes,
    input_max_bytes: 1024,
};

/// One consume-queue slot.
pub const QUEUE_ENTRY: Target = Target {
    name: "queue_entry",
    run: queue_entry,
    seeds: queue_entry_seeds,
    allocation_max_bytes: super::proportional_allocation_max_bytes,
    input_max_bytes: 64,
};

/// A consume-queue file opened from disk, then every slot read.
pub const QUEUE_FILE: Target = Target {
    name: "queue_file",
    run: queue_file,
    seeds: queue_file_seeds,
    allocation_max_bytes: super::proportional_allocation_max_bytes,
    input_max_bytes: 16 * 1024,
};

const FIX_CRC: u8 = 1;
const FIX_COUNT: u8 = 2;
/// `queue_file`: name the file after the index its header records.
const NAME_FROM_HEADER: u8 = 4;
/// `queue_file`: recompute the CRC of every non-empty slot.
const FIX_ENTRY_CRCS: u8 = 8;

/// Input: a flag byte (bit 0: recompute the header CRC, bits 1–2: the
/// payload length limit), then the frame prefix.
pub fn log_frame(data: &[u8]) {
    let Some((&flags, prefix)) = data.split_first() else {
        return;
    };
    if prefix.len() < FRAME_PREFIX_BYTES {
        return;
    }
    let mut prefix = prefix.to_vec();
    if flags & FIX_CRC != 0 {
        fix_frame_crc(&mut prefix);
    }
    let payload_len_max = [1u64 << 20, 61, 4096, u64::from(u32::MAX)][usize::from(flags >> 1) % 4];
    let Ok(header) = FrameHeader::decode(&prefix, payload_len_max) else {
        return;
    };
    assert!(
        header.payload_len as usize >= record_batch::HEADER_BYTES
            && u64::from(header.payload_len) <= payload_len_max
    );
    let mut encoded = [0u8; FRAME_PREFIX_BYTES];
    header.encode_prefix(
        &prefix[FRAME_HEADER_BYTES..FRAME_PREFIX_BYTES],
        &mut encoded,
    );
    let reserved_zero = prefix[5..8] == [0, 0, 0];
    let differs_at: &[std::ops::Range<usize>] = if reserved_zero { &[] } else { &[5..8, 16..20] };
    assert_equal_outside(&encoded, &prefix[..FRAME_PREFIX_BYTES], differs_at, "frame");
}

/// The frame header CRC: bytes 0..16 and the covered batch prefix.
fn fix_frame_crc(prefix: &mut [u8]) {
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&prefix[..16]),
        &prefix[FRAME_HEADER_BYTES..FRAME_PREFIX_BYTES],
    );
    prefix[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// `encoded` equals `found` except in `reserved` ranges: reserved bytes,
/// which decoding does not check (they lie under the CRC), and the CRC
/// where they are set.
fn assert_equal_outside(
    encoded: &[u8],
    found: &[u8],
    reserved: &[std::ops::Range<usize>],
    what: &str,
) {
    assert_eq!(
        encoded.len(),
        found.len(),
        "{what} re-encodes to another length"
    );
    for (at, (a, b)) in encoded.iter().zip(found).enumerate() {
        if reserved.iter().any(|range| range.contains(&at)) {
            continue;
        }
        assert_eq!(a, b, "{what} re-encodes differently at byte {at}");
    }
}

/// A frame of `batch` for partition `partition`, as the appender writes it.
fn frame(partition: u32, batch: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        payload_len: batch.len() as u32,
        partition: PartitionId(partition),
        kind: Default::default(),
    };
    let mut out = [0u8; FRAME_PREFIX_BYTES];
    header.encode_prefix(&batch[..COVERED_PAYLOAD_PREFIX_BYTES], &mut out);
    let mut framed = out.to_vec();
    framed.extend_from_slice(&batch[COVERED_PAYLOAD_PREFIX_BYTES..]);
    framed
}

fn log_frame_seeds() -> Vec<Vec<u8>> {
    let batch = super::kafka::sample_batch();
    let framed = frame(3, &batch);
    vec![
        [&[0u8][..], &framed[..FRAME_PREFIX_BYTES]].concat(),
        [&[FIX_CRC][..], &framed[..FRAME_PREFIX_BYTES]].concat(),
    ]
}

/// Input: a flag byte (bits 0–1: the payload length limit, bits 2–3: the
/// resync window), then the segment's bytes.
pub fn segment_scan(data: &[u8]) {
    let Some((&flags, contents)) = data.split_first() else {
        return;
    };
    let payload_len_max = [1u64 << 20, 61, 200, 4096][usize::from(flags) % 4];
    let resync_window = [1u64 << 20, 1, 64, 4096][usize::from(flags >> 2) % 4];
    let base = LogPosition(if flags & 0x10 != 0 { 1 << 32 } else { 0 });
    with_scratch_dir(|dir| {
        std::fs::write(segment_path(dir, base), contents).expect("write the scratch segment");
        let segment =
            Segment::open(dir, base, WriteMode::Buffered).expect("open the scratch segment");
        scan_like_recovery(&segment, contents, payload_len_max, resync_window);
    });
}

/// Recovery's scan loop (`recovery::scan`), checking each frame it accepts
/// against the bytes it came from.
fn scan_like_recovery(segment: &Segment, contents: &[u8], payload_len_max: u64, window: u64) {
    let mut scanner = FrameScanner::new(segment, payload_len_max);
    let mut at = segment.base;
    // Every step moves forward, so this bounds a loop that does not.
    for _ in 0..=contents.len() + 1 {
        match scanner.read(at).expect("scratch reads do not fail") {
            ScanItem::Frame {
                position,
                header,
                batch,
                ..
            } => {
                assert_eq!(position, at);
                let start = (position.0 - segment.base.0) as usize;
                let end = start + header.frame_len() as usize;
                assert!(end <= contents.len(), "a frame past the segment's end");
                let payload = &contents[start + FRAME_HEADER_BYTES..end];
                assert_eq!(
                    FrameHeader::decode(&contents[start..], payload_len_max),
                    Ok(header)
                );
                assert_eq!(record_batch::check_structure(payload).ok(), Some(batch));
                assert!(record_batch::crc_matches(payload));
                at = position.plus(header.frame_len());
            }
            ScanItem::SegmentEnd => {
                assert!(at.0 + FRAME_PREFIX_BYTES as u64 > segment.end().0);
                return;
            }
            ScanItem::Invalid { position, .. } => {
                assert_eq!(position, at);
                let limit = position.plus(window);
                let next = scanner
                    .find_next_frame(position.plus(1), limit)
                    .expect("scratch reads do not fail");
                let Some(next) = next else {
                    let extent = scanner
                        .nonzero_extent(position, limit)
                        .expect("scratch reads do not fail");
                    assert!(position.0 + extent <= segment.end().0.min(limit.0));
                    return;
                };
                assert!(next > position && next < limit);
                assert!(matches!(scanner.read(next), Ok(ScanItem::Frame { .. })));
                at = next;
            }
        }
    }
    panic!("the scan did not finish");
}

/// Run `body` with an empty scratch directory of this process and thread,
/// removed afterwards (also after a panic, so a finding leaves no litter).
fn with_scratch_dir(body: impl FnOnce(&Path)) {
    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let thread = format!("{:?}", std::thread::current().id());
    let name: String = thread.chars().filter(char::is_ascii_digit).collect();
    let dir = std::env::temp_dir().join(format!("sluice-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    let scratch = Scratch(dir);
    body(&scratch.0);
}

fn segment_scan_seeds() -> Vec<Vec<u8>> {
    let batch = super::kafka::sample_batch();
    let mut log = Vec::new();
    for partition in 0..3 {
        log.extend_from_slice(&frame(partition, &batch));
    }
    let mut damaged = log.clone();
    damaged[30] ^= 0x40;
    let mut torn = log.clone();
    torn.truncate(log.len() - 10);
    torn.resize(log.len() + 64, 0);
    let mut padded = log.clone();
    padded.resize(4096, 0);
    vec![
        [&[0u8][..], &log].concat(),
        [&[0b1000u8][..], &damaged].concat(),
        [&[0u8][..], &torn].concat(),
        [&[0x10u8][..], &padded].concat(),
    ]
}

/// Input: a flag byte (bit 0: recompute the CRC, bit 1: make the partition
/// count fit the length), then the file.
pub fn checkpoint(data: &[u8]) {
    let Some((&flags, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    // Version 2 ends with 24 bytes of timer state before the CRC.
    let timer_bytes = if file.get(4) == Some(&1) { 0 } else { 24 };
    if flags & FIX_COUNT != 0 && file.len() >= 24 + timer_bytes {
        let count = (file.len() - 24 - timer_bytes) / 32;
        file[16..20].copy_from_slice(&(count as u32).to_le_bytes());
    }
    if flags & FIX_CRC != 0 && file.len() >= 4 {
        let end = file.len() - 4;
        fix_crc_le(&mut file, 0..end, end);
    }
    let Ok(decoded) = Checkpoint::decode(&file, Path::new("fuzz/checkpoint")) else {
        return;
    };
    let encoded = decoded.encode();
    if file[4] == 1 {
        // Read as an empty timer, written again as version 2.
        let again = Checkpoint::decode(&encoded, Path::new("fuzz/checkpoint"));
        assert_eq!(again.ok(), Some(decoded));
        return;
    }
    // Reserved: the header's 3 bytes and each partition's 4; the CRC
    // covers them, so it differs where they do.
    let mut reserved = vec![5..8, encoded.len() - 4..encoded.len()];
    reserved.extend((0..decoded.partitions.len()).map(|index| {
        let at = 20 + index * 32 + 4;
        at..at + 4
    }));
    assert_equal_outside(&encoded, &file, &reserved, "checkpoint");
    let again = Checkpoint::decode(&encoded, Path::new("fuzz/checkpoint"));
    assert_eq!(again.ok(), Some(decoded));
}

fn checkpoint_seeds() -> Vec<Vec<u8>> {
    let checkpoint = Checkpoint {
        indexed_position: LogPosition(1 << 20),
        partitions: (0..3)
            .map(|index| PartitionCheckpoint {
                id: PartitionId(index),
                log_start_offset: Offset(10 * i64::from(index)),
                next_offset: Offset(100 + i64::from(index)),
                queue_entries: 7,
            })
            .collect(),
        timer: crate::storage::timer::index::TimerCheckpoint {
            entries: 5,
            cursor: 1_700_000_000,
        },
        timer_position: LogPosition(2 << 20),
    };
    vec![
        [&[0u8][..], &checkpoint.encode()].concat(),
        [&[FIX_CRC | FIX_COUNT][..], &checkpoint.encode()].concat(),
    ]
}

/// Input: a flag byte (bit 0: recompute the CRC), then the file.
pub fn partition_meta(data: &[u8]) {
    let Some((&flags, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if flags & FIX_CRC != 0 && file.len() >= 4 {
        let end = file.len() - 4;
        fix_crc_le(&mut file, 0..end, end);
    }
    let Ok(decoded) = PartitionMeta::decode(&file, Path::new("fuzz/partition.meta")) else {
        return;
    };
    let encoded = decoded.encode();
    assert_equal_outside(
        &encoded,
        &file,
        &[5..8, encoded.len() - 4..encoded.len()],
        "partition.meta",
    );
}

fn partition_meta_seeds() -> Vec<Vec<u8>> {
    let meta = PartitionMeta {
        id: PartitionId(12),
        topic: "orders".to_owned(),
        index: 3,
    };
    vec![
        [&[0u8][..], &meta.encode()].concat(),
        [&[FIX_CRC][..], &meta.encode()].concat(),
    ]
}

/// Input: a flag byte (bit 0: recompute the CRC), then a 40-byte slot
/// (shorter inputs are padded with zeros).
pub fn queue_entry(data: &[u8]) {
    let Some((&flags, slot)) = data.split_first() else {
        return;
    };
    let mut bytes = [0u8; ENTRY_BYTES];
    let len = slot.len().min(ENTRY_BYTES);
    bytes[..len].copy_from_slice(&slot[..len]);
    if flags & FIX_CRC != 0 {
        fix_crc_le(&mut bytes, 0..36, 36);
    }
    check_entry(&bytes);
}

/// What a decoded entry promises: an empty slot is all zeros, an entry
/// re-encodes to its bytes and its offset and position arithmetic holds.
fn check_entry(bytes: &[u8; ENTRY_BYTES]) -> Option<QueueEntry> {
    match QueueEntry::decode(bytes) {
        Ok(None) => {
            assert!(bytes.iter().all(|&byte| byte == 0));
            None
        }
        Ok(Some(entry)) => {
            assert_eq!(
                &entry.encode(),
                bytes,
                "a queue entry changed in a round trip"
            );
            assert!(entry.next_offset() > entry.base_offset);
            assert!(entry.frame_end(FRAME_HEADER_BYTES as u64) > entry.position);
            Some(entry)
        }
        Err(_) => None,
    }
}

fn sample_entry() -> QueueEntry {
    QueueEntry {
        base_offset: Offset(41),
        position: LogPosition(4096),
        batch_len: 100,
        last_offset_delta: 2,
        max_timestamp_ms: 1_700_000_000_000,
        attributes: 0x14,
    }
}

fn queue_entry_seeds() -> Vec<Vec<u8>> {
    vec![
        [&[0u8][..], &sample_entry().encode()].concat(),
        [&[FIX_CRC][..], &sample_entry().encode()].concat(),
        vec![0u8; 1 + ENTRY_BYTES],
    ]
}

/// Input: a flag byte (bit 0: recompute the header CRC, bit 1: make the
/// header's entry count fit the length, bit 2: name the file after the
/// index its header records, bit 3: recompute each slot's CRC), then the
/// file.
pub fn queue_file(data: &[u8]) {
    let Some((&flags, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    let header_bytes = queue_file::HEADER_BYTES;
    if flags & FIX_COUNT != 0 && file.len() >= header_bytes {
        let entries = ((file.len() - header_bytes) / ENTRY_BYTES).max(1);
        file[8..12].copy_from_slice(&(entries as u32).to_le_bytes());
    }
    if flags & FIX_ENTRY_CRCS != 0 && file.len() > header_bytes {
        for slot in file[header_bytes..].chunks_exact_mut(ENTRY_BYTES) {
            if slot.iter().any(|&byte| byte != 0) {
                fix_crc_le(slot, 0..36, 36);
            }
        }
    }
    if flags & FIX_CRC != 0 && file.len() >= header_bytes {
        fix_crc_le(&mut file, 0..24, 24);
    }
    let first_index = if flags & NAME_FROM_HEADER != 0 && file.len() >= 24 {
        u64::from_le_bytes(file[16..24].try_into().expect("8 bytes"))
    } else {
        0
    };
    with_scratch_dir(|dir| {
        let path = queue_file::queue_file_path(dir, first_index);
        std::fs::write(&path, &file).expect("write the scratch queue file");
        let Ok(queue) = QueueFile::open(dir, first_index) else {
            return;
        };
        let entries = queue.entries();
        assert_eq!(
            file.len() as u64,
            header_bytes as u64 + entries * ENTRY_BYTES as u64
        );
        for slot in 0..entries {
            let at = header_bytes + slot as usize * ENTRY_BYTES;
            let bytes: &[u8; ENTRY_BYTES] = file[at..at + ENTRY_BYTES].try_into().expect("a slot");
            let expected = QueueEntry::decode(bytes);
            assert_eq!(
                queue.entry(slot),
                expected,
                "slot {slot} read back differently"
            );
            check_entry(bytes);
        }
    });
}

fn queue_file_seeds() -> Vec<Vec<u8>> {
    let entries = 4u64;
    let mut file = queue_file::encode_header(entries, 8).to_vec();
    for slot in 0..entries {
        let mut entry = sample_entry();
        entry.base_offset = Offset(41 + 3 * slot as i64);
        entry.position = LogPosition(4096 + 120 * slot);
        if slot < 3 {
            file.extend_from_slice(&entry.encode());
        } else {
            file.extend_from_slice(&[0u8; ENTRY_BYTES]);
        }
    }
    vec![
        [&[NAME_FROM_HEADER][..], &file].concat(),
        [
            &[FIX_CRC | FIX_COUNT | NAME_FROM_HEADER | FIX_ENTRY_CRCS][..],
            &file,
        ]
        .concat(),
        [&[0u8][..], &file].concat(),
    ]
}
