//! Snapshots of the idempotent producers' state, so recovery rebuilds it from
//! the newest snapshot plus the log after it instead of from the first
//! segment (design `docs/exactly-once-design.md` §2.4).
//!
//! A snapshot is a derived file, like the consume queues: everything in it
//! can be rebuilt from the log, so a missing or damaged one only costs a
//! longer scan. It is exact for one log position, a frame boundary: the
//! shard's append end when its state was copied. The checkpointer writes it
//! only once the log is durable up to that position, so a snapshot on disk
//! never describes frames a crash could lose. One file per shard,
//! `producers/<position, 20 digits>.snap`, replaced atomically
//! ([`write_atomic`]); older ones are removed after a new one is durable.
//!
//! Layout (little-endian): magic `SLPS`, version u8, 3 reserved bytes,
//! position u64, partition count u32, then per partition {id u32, entry
//! count u32, then per entry {producer id i64, last timestamp i64, epoch i16,
//! batch count u8, reserved u8, coordinator epoch i32, open transaction's
//! first offset i64 (-1: none), then per batch {first sequence i32, last
//! sequence i32, base offset i64, last offset delta i32, reserved u32, frame
//! end u64}}, aborted count u32, then per aborted transaction {producer id
//! i64, first offset i64, marker offset i64, last stable offset after it
//! i64}}, then CRC32C of everything before it. Version 1 (before
//! transactions) had no open-transaction offset and no aborted list, and
//! is still read.

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::durable_file::write_atomic;
use super::producer_state::{
    AbortedTxn, BATCHES_CACHED_MAX, BatchMeta, NO_COORDINATOR_EPOCH, ProducerEntry, ProducerStates,
};
use crate::ids::{LogPosition, Offset, PartitionId};

pub const PRODUCER_SNAPSHOTS_DIR: &str = "producers";
const MAGIC: [u8; 4] = *b"SLPS";
const VERSION: u8 = 2;
/// The version written before transactions; still read.
const VERSION_IDEMPOTENT_ONLY: u8 = 1;
const EXTENSION: &str = "snap";
const CRC_BYTES: usize = 4;

/// The producer state of every partition of a shard, exact at `position`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerSnapshot {
    pub position: LogPosition,
    /// Partitions with at least one producer, by id.
    pub partitions: Vec<(PartitionId, ProducerStates)>,
}

#[derive(Debug, Error)]
pub enum ProducerSnapshotError {
    #[error("cannot access producer snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "producer snapshot {path} is damaged ({reason}); recovery rebuilds the producers' state \
         from the first segment instead"
    )]
    Corrupt { path: PathBuf, reason: String },
}

impl ProducerSnapshot {
    pub fn file_name(position: LogPosition) -> String {
        format!("{:020}.{EXTENSION}", position.0)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.position.0.to_le_bytes());
        out.extend_from_slice(&(self.partitions.len() as u32).to_le_bytes());
        for (id, states) in &self.partitions {
            out.extend_from_slice(&id.0.to_le_bytes());
            out.extend_from_slice(&(states.len() as u32).to_le_bytes());
            let mut entries: Vec<_> = states.entries().collect();
            entries.sort_by_key(|(producer_id, _)| *producer_id);
            for (producer_id, entry) in entries {
                encode_entry(&mut out, producer_id, entry);
            }
            let aborted: Vec<&AbortedTxn> = states.aborted().collect();
            out.extend_from_slice(&(aborted.len() as u32).to_le_bytes());
            for aborted in aborted {
                out.extend_from_slice(&aborted.producer_id.to_le_bytes());
                out.extend_from_slice(&aborted.first_offset.0.to_le_bytes());
                out.extend_from_slice(&aborted.last_offset.0.to_le_bytes());
                out.extend_from_slice(&aborted.last_stable_offset.0.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8], path: &Path) -> Result<ProducerSnapshot, ProducerSnapshotError> {
        let corrupt = |reason: String| ProducerSnapshotError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        if bytes.len() < MAGIC.len() + 1 + CRC_BYTES || bytes[..4] != MAGIC {
            return Err(corrupt("no producer snapshot magic".to_owned()));
        }
        let version = bytes[4];
        if version != VERSION && version != VERSION_IDEMPOTENT_ONLY {
            return Err(corrupt(format!(
                "unsupported version {version}, expected {VERSION}"
            )));
        }
        let (body, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32c::crc32c(body);
        if computed != stored {
            return Err(corrupt(format!(
                "CRC32C {computed:#010x}, stored {stored:#010x}"
            )));
        }
        let mut reader = Reader { body, at: 8 };
        let snapshot = decode_body(&mut reader, version).map_err(corrupt)?;
        if reader.at != body.len() {
            return Err(corrupt(format!(
                "{} bytes after the last partition",
                body.len() - reader.at
            )));
        }
        Ok(snapshot)
    }

    /// Write this snapshot durably into `dir`, then remove every older one.
    pub fn store(&self, dir: &Path) -> Result<(), ProducerSnapshotError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ProducerSnapshotError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(ProducerSnapshot::file_name(self.position));
        write_atomic(&path, &self.encode()).map_err(io(&path))?;
        for (position, older) in list(dir)? {
            if position != self.position {
                std::fs::remove_file(&older).map_err(io(&older))?;
            }
        }
        Ok(())
    }

    /// The newest snapshot in `dir`; `Ok(None)` if there is none. A damaged
    /// newest one is an error: the caller falls back to a full scan.
    pub fn load_newest(dir: &Path) -> Result<Option<ProducerSnapshot>, ProducerSnapshotError> {
        let Some((_, path)) = list(dir)?.into_iter().max_by_key(|(position, _)| *position) else {
            return Ok(None);
        };
        let bytes = std::fs::read(&path).map_err(|source| ProducerSnapshotError::Io {
            path: path.clone(),
            source,
        })?;
        let snapshot = ProducerSnapshot::decode(&bytes, &path)?;
        let named = path.file_name().and_then(|name| name.to_str());
        if named != Some(ProducerSnapshot::file_name(snapshot.position).as_str()) {
            return Err(ProducerSnapshotError::Corrupt {
                reason: format!(
                    "it holds position {}, not the one its name says",
                    snapshot.position
                ),
                path,
            });
        }
        Ok(Some(snapshot))
    }
}

/// The snapshot files in `dir` with the positions their names carry.
/// Remove every snapshot in `dir` taken past `position` (a log cut back
/// there no longer holds what they describe); how many were removed.
pub fn remove_snapshots_after(dir: &Path, position: LogPosition) -> std::io::Result<usize> {
    let found = list(dir).map_err(std::io::Error::other)?;
    let mut removed = 0;
    for (taken, path) in found {
        if taken > position {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    if removed > 0 {
        super::segment::sync_dir(dir)?;
    }
    Ok(removed)
}

fn list(dir: &Path) -> Result<Vec<(LogPosition, PathBuf)>, ProducerSnapshotError> {
    let io = |source| ProducerSnapshotError::Io {
        path: dir.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io(source)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(io)?.path();
        let position = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(&format!(".{EXTENSION}")))
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(position) = position {
            found.push((LogPosition(position), path));
        }
    }
    Ok(found)
}

fn encode_entry(out: &mut Vec<u8>, producer_id: i64, entry: &ProducerEntry) {
    let batches: Vec<&BatchMeta> = entry.batches().collect();
    assert!(batches.len() <= BATCHES_CACHED_MAX);
    out.extend_from_slice(&producer_id.to_le_bytes());
    out.extend_from_slice(&entry.last_timestamp_ms.to_le_bytes());
    out.extend_from_slice(&entry.epoch.to_le_bytes());
    out.push(batches.len() as u8);
    out.push(0);
    out.extend_from_slice(&entry.coordinator_epoch.to_le_bytes());
    let open = entry.current_txn_first_offset.map_or(-1, |first| first.0);
    out.extend_from_slice(&open.to_le_bytes());
    for batch in batches {
        out.extend_from_slice(&batch.first_sequence.to_le_bytes());
        out.extend_from_slice(&batch.last_sequence.to_le_bytes());
        out.extend_from_slice(&batch.base_offset.0.to_le_bytes());
        out.extend_from_slice(&batch.last_offset_delta.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&batch.end.0.to_le_bytes());
    }
}

fn decode_body(reader: &mut Reader<'_>, version: u8) -> Result<ProducerSnapshot, String> {
    let position = LogPosition(reader.u64()?);
    let partition_count = reader.u32()?;
    // Counts come from disk: nothing is sized by them, and the reader runs
    // out of bytes long before a wrong count could cost much.
    let mut partitions = Vec::new();
    for _ in 0..partition_count {
        let id = PartitionId(reader.u32()?);
        let entry_count = reader.u32()?;
        let mut states = ProducerStates::default();
        for _ in 0..entry_count {
            let (producer_id, entry) = decode_entry(reader, version)?;
            if states.get(producer_id).is_some() {
                return Err(format!("producer {producer_id} twice in partition {id}"));
            }
            states.restore(producer_id, entry);
        }
        if version >= VERSION {
            states.restore_aborted(decode_aborted(reader, id)?);
        }
        partitions.push((id, states));
    }
    Ok(ProducerSnapshot {
        position,
        partitions,
    })
}

fn decode_entry(reader: &mut Reader<'_>, version: u8) -> Result<(i64, ProducerEntry), String> {
    let producer_id = reader.u64()? as i64;
    let last_timestamp_ms = reader.u64()? as i64;
    let epoch = i16::from_le_bytes(reader.take::<2>()?);
    let [count, _] = reader.take::<2>()?;
    let coordinator_epoch = reader.u32()? as i32;
    let (coordinator_epoch, open) = if version >= VERSION {
        let first = reader.u64()? as i64;
        (coordinator_epoch, (first >= 0).then_some(Offset(first)))
    } else {
        (NO_COORDINATOR_EPOCH, None)
    };
    if usize::from(count) > BATCHES_CACHED_MAX || (count == 0 && version < VERSION) {
        return Err(format!("producer {producer_id} has {count} batches"));
    }
    let mut batches = [None; BATCHES_CACHED_MAX];
    for slot in batches.iter_mut().take(usize::from(count)) {
        let first_sequence = reader.u32()? as i32;
        let last_sequence = reader.u32()? as i32;
        let base_offset = Offset(reader.u64()? as i64);
        let last_offset_delta = reader.u32()? as i32;
        reader.u32()?;
        let end = LogPosition(reader.u64()?);
        *slot = Some(BatchMeta {
            first_sequence,
            last_sequence,
            base_offset,
            last_offset_delta,
            end,
        });
    }
    let batches: Vec<BatchMeta> = batches.into_iter().flatten().collect();
    let entry =
        ProducerEntry::restored(epoch, last_timestamp_ms, coordinator_epoch, open, &batches)
            .ok_or_else(|| format!("producer {producer_id}'s batches are not in offset order"))?;
    Ok((producer_id, entry))
}

fn decode_aborted(reader: &mut Reader<'_>, id: PartitionId) -> Result<Vec<AbortedTxn>, String> {
    let count = reader.u32()?;
    let mut aborted: Vec<AbortedTxn> = Vec::new();
    for _ in 0..count {
        let next = AbortedTxn {
            producer_id: reader.u64()? as i64,
            first_offset: Offset(reader.u64()? as i64),
            last_offset: Offset(reader.u64()? as i64),
            last_stable_offset: Offset(reader.u64()? as i64),
        };
        let ordered = aborted
            .last()
            .is_none_or(|previous| previous.last_offset < next.last_offset);
        if !ordered || next.first_offset > next.last_offset {
            return Err(format!(
                "aborted transactions of partition {id} are out of order"
            ));
        }
        aborted.push(next);
    }
    Ok(aborted)
}

/// Reads the body front to back; running out of bytes is damage.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let bytes = self
            .at
            .checked_add(N)
            .and_then(|end| self.body.get(self.at..end))
            .ok_or_else(|| format!("truncated at byte {} of {}", self.at, self.body.len()))?;
        let mut array = [0; N];
        array.copy_from_slice(bytes);
        self.at += N;
        Ok(array)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.take::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::control::{MarkerKind, TxnMarker};
    use crate::record_batch::{BatchBuilder, BatchHeader, RecordSpec};

    fn header(producer_id: i64, epoch: i16, base_sequence: i32, records: i32) -> BatchHeader {
        let mut builder = BatchBuilder::new(1_700_000_000_000);
        builder.producer(producer_id, epoch, base_sequence);
        for _ in 0..records {
            builder.push(RecordSpec {
                value: Some(b"v"),
                ..RecordSpec::default()
            });
        }
        BatchHeader::parse(&builder.build()).expect("a built batch parses")
    }

    /// Two partitions: one with a producer whose window wrapped (7 batches)
    /// and one at a newer epoch, one with two producers.
    fn snapshot() -> ProducerSnapshot {
        let mut first = ProducerStates::default();
        let mut offset = 0;
        for index in 0..7 {
            let batch = header(11, 0, index * 2, 2);
            first.apply(&batch, Offset(offset), LogPosition(offset as u64 * 10 + 10));
            offset += 2;
        }
        first.apply(&header(12, 4, 0, 1), Offset(offset), LogPosition(999));
        let mut second = ProducerStates::default();
        second.apply(&header(5, 1, i32::MAX, 1), Offset(3), LogPosition(77));
        // Transactions: 6 open, 7 aborted, 8 only fenced by a marker.
        let transactional = |producer_id| {
            let mut builder = BatchBuilder::new(1_700_000_000_000);
            builder.producer(producer_id, 0, 0).transactional();
            builder.push(RecordSpec::default());
            BatchHeader::parse(&builder.build()).expect("a built batch parses")
        };
        second.apply(&transactional(6), Offset(4), LogPosition(90));
        second.apply(&transactional(7), Offset(5), LogPosition(100));
        let abort = TxnMarker {
            kind: MarkerKind::Abort,
            coordinator_epoch: 3,
        };
        second.apply_marker(7, 0, &abort, Offset(6), 1_700_000_000_000);
        second.apply_marker(8, 2, &abort, Offset(7), 1_700_000_000_000);
        second.stabilize(Offset(8));
        ProducerSnapshot {
            position: LogPosition(4096),
            partitions: vec![(PartitionId(2), first), (PartitionId(9), second)],
        }
    }

    #[test]
    fn producer_snapshot_round_trips() {
        let snapshot = snapshot();
        let decoded = ProducerSnapshot::decode(&snapshot.encode(), Path::new("s")).expect("sound");
        assert_eq!(decoded, snapshot);
        let entry = decoded.partitions[0].1.get(11).expect("kept");
        assert_eq!(entry.batches().count(), BATCHES_CACHED_MAX);
        assert_eq!(entry.newest().unwrap().first_sequence, 12);
        let second = &decoded.partitions[1].1;
        assert_eq!(
            second.first_unstable_offset(),
            Some(Offset(4)),
            "6's transaction is open"
        );
        assert_eq!(second.aborted().count(), 1);
        assert_eq!(
            second
                .get(8)
                .map(|entry| (entry.epoch, entry.coordinator_epoch)),
            Some((2, 3))
        );
    }

    /// A snapshot written before transactions (version 1) still seeds the
    /// producers' state after an upgrade.
    #[test]
    fn a_version_1_snapshot_is_still_read() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"SLPS");
        bytes.extend_from_slice(&[1, 0, 0, 0]);
        bytes.extend_from_slice(&512u64.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes()); // partitions
        bytes.extend_from_slice(&4u32.to_le_bytes()); // partition id
        bytes.extend_from_slice(&1u32.to_le_bytes()); // entries
        bytes.extend_from_slice(&33i64.to_le_bytes()); // producer id
        bytes.extend_from_slice(&1_700_000_000_000i64.to_le_bytes());
        bytes.extend_from_slice(&2i16.to_le_bytes()); // epoch
        bytes.extend_from_slice(&[1, 0]); // batch count, reserved
        bytes.extend_from_slice(&0u32.to_le_bytes()); // reserved
        bytes.extend_from_slice(&10i32.to_le_bytes()); // first sequence
        bytes.extend_from_slice(&11i32.to_le_bytes()); // last sequence
        bytes.extend_from_slice(&40i64.to_le_bytes()); // base offset
        bytes.extend_from_slice(&1i32.to_le_bytes()); // last offset delta
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&480u64.to_le_bytes()); // frame end
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let decoded = ProducerSnapshot::decode(&bytes, Path::new("v1")).expect("version 1 is read");
        assert_eq!(decoded.position, LogPosition(512));
        let entry = decoded.partitions[0].1.get(33).expect("restored");
        assert_eq!(
            (entry.epoch, entry.coordinator_epoch),
            (2, NO_COORDINATOR_EPOCH)
        );
        assert_eq!(entry.current_txn_first_offset, None);
        assert_eq!(entry.newest().map(|batch| batch.last_sequence), Some(11));
    }

    #[test]
    fn every_flipped_byte_or_cut_tail_is_reported_as_damage() {
        let bytes = snapshot().encode();
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(
                matches!(
                    ProducerSnapshot::decode(&damaged, Path::new("s")),
                    Err(ProducerSnapshotError::Corrupt { .. })
                ),
                "byte {at} flipped"
            );
        }
        for len in 0..bytes.len() {
            assert!(
                ProducerSnapshot::decode(&bytes[..len], Path::new("s")).is_err(),
                "cut to {len} bytes"
            );
        }
    }

    #[test]
    fn newer_version_is_refused_with_its_number() {
        let mut bytes = snapshot().encode();
        bytes[4] = VERSION + 1;
        let error = ProducerSnapshot::decode(&bytes, Path::new("s")).expect_err("refused");
        assert!(
            error.to_string().contains("unsupported version 3"),
            "{error}"
        );
    }

    #[test]
    fn sound_crc_over_an_impossible_batch_count_is_still_damage() {
        let mut snapshot = snapshot();
        snapshot.partitions.truncate(1);
        let mut body = snapshot.encode();
        body.truncate(body.len() - CRC_BYTES);
        // The first entry's batch count: header 20, partition 8, then 18.
        body[20 + 8 + 18] = (BATCHES_CACHED_MAX + 1) as u8;
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let error = ProducerSnapshot::decode(&body, Path::new("s")).expect_err("refused");
        assert!(error.to_string().contains("6 batches"), "{error}");
    }

    #[test]
    fn store_keeps_only_the_newest_and_load_reads_it_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut snapshot = snapshot();
        snapshot.store(dir.path()).expect("stored");
        snapshot.position = LogPosition(8192);
        snapshot.store(dir.path()).expect("stored");
        let names: Vec<_> = list(dir.path()).expect("listed");
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(
            ProducerSnapshot::load_newest(dir.path()).expect("sound"),
            Some(snapshot)
        );
        let empty = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            ProducerSnapshot::load_newest(&empty.path().join("none")).expect("none"),
            None
        );
    }
}
