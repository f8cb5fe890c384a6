//! A compacted partition's clean section on disk: one immutable generation
//! of the clean queue in `partitions/<id>/clean-<generation, 20 digits>/`
//! (consume-queue files whose positions point at compaction copies in the
//! commit log) and its `clean.meta`, written last and atomically, so a
//! generation without a sound meta is a write cut short.
//!
//! `clean.meta`, little-endian: magic `SLCM`, version u8 1, 3 reserved
//! bytes, generation u64, clean end i64, entries u64, position of the
//! pass's first commit frame u64, CRC32C of what precedes it.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::ids::{LogPosition, Offset};
use crate::storage::consume_queue::{ConsumeQueue, QueueEntry, QueueError};
use crate::storage::durable_file::write_atomic;

const DIR_PREFIX: &str = "clean-";
const META_FILE: &str = "clean.meta";
const META_MAGIC: [u8; 4] = *b"SLCM";
const META_VERSION: u8 = 1;
const META_BYTES: usize = 44;

/// The clean section of a compacted partition: offsets
/// `[its first entry, end)` are read through `queue`.
pub struct CleanSection {
    pub generation: u64,
    /// The clean end: the first offset of the head (the main queue).
    pub end: Offset,
    /// Where the pass's first commit frame is in the commit log: recovery
    /// scans from there to build a damaged generation again.
    pub commit_position: LogPosition,
    pub queue: ConsumeQueue,
    /// Bytes of all its batches.
    total_bytes: u64,
    dir: PathBuf,
}

#[derive(Debug, Error)]
pub enum CleanError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("clean section {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `clean.meta` records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    generation: u64,
    end: Offset,
    entries: u64,
    commit_position: LogPosition,
}

impl Meta {
    fn encode(&self) -> [u8; META_BYTES] {
        let mut out = [0u8; META_BYTES];
        out[..4].copy_from_slice(&META_MAGIC);
        out[4] = META_VERSION;
        out[8..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..24].copy_from_slice(&self.end.0.to_le_bytes());
        out[24..32].copy_from_slice(&self.entries.to_le_bytes());
        out[32..40].copy_from_slice(&self.commit_position.0.to_le_bytes());
        let crc = crc32c::crc32c(&out[..40]);
        out[40..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Meta> {
        if bytes.len() != META_BYTES || bytes[..4] != META_MAGIC || bytes[4] != META_VERSION {
            return None;
        }
        let stored = u32::from_le_bytes(bytes[40..].try_into().ok()?);
        if crc32c::crc32c(&bytes[..40]) != stored {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        Some(Meta {
            generation: u64_at(8),
            end: Offset(u64_at(16) as i64),
            entries: u64_at(24),
            commit_position: LogPosition(u64_at(32)),
        })
    }
}

/// A generation found on disk that cannot be used: where its pass's commit
/// frames begin, so recovery can collect them again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unusable {
    pub generation: u64,
    pub commit_position: LogPosition,
}

impl CleanSection {
    /// Write generation `generation` of `partition_dir`'s clean section:
    /// the entries (offsets, positions and running max timestamps
    /// increasing), fsynced, then its meta. Blocking I/O: run it off the
    /// shard thread.
    pub fn write(
        partition_dir: &Path,
        generation: u64,
        end: Offset,
        commit_position: LogPosition,
        entries: &[QueueEntry],
        entries_per_file: u32,
    ) -> Result<CleanSection, CleanError> {
        let dir = partition_dir.join(format!("{DIR_PREFIX}{generation:020}"));
        if dir.exists() {
            // A write cut short, or one recovery repeats: start it afresh.
            std::fs::remove_dir_all(&dir).map_err(|source| io(&dir, source))?;
        }
        // The entries come from the log: a pass whose entries do not
        // increase (parts of two passes joined) is refused, never a panic.
        let ordered = entries.windows(2).all(|pair| {
            pair[1].base_offset > pair[0].last_offset()
                && pair[1].position > pair[0].position
                && pair[1].max_timestamp_ms >= pair[0].max_timestamp_ms
        });
        if !ordered || entries.last().is_some_and(|last| last.next_offset() > end) {
            return Err(CleanError::Io {
                path: dir,
                source: std::io::Error::other(
                    "the pass's entries do not increase or pass its clean end; it is not applied",
                ),
            });
        }
        let mut queue = ConsumeQueue::open(&dir, entries_per_file, 0)?;
        for entry in entries {
            queue.append(*entry)?;
        }
        for path in queue.take_dirty_files() {
            std::fs::File::open(&path)
                .and_then(|file| file.sync_all())
                .map_err(|source| io(&path, source))?;
        }
        let meta = Meta {
            generation,
            end,
            entries: entries.len() as u64,
            commit_position,
        };
        write_atomic(&dir.join(META_FILE), &meta.encode()).map_err(|source| io(&dir, source))?;
        sync_dir(partition_dir)?;
        Ok(CleanSection {
            generation,
            end,
            commit_position,
            queue,
            total_bytes: entries.iter().map(|entry| u64::from(entry.batch_len)).sum(),
            dir,
        })
    }

    /// Open the newest complete generation in `partition_dir`, deleting
    /// every other one (older ones were replaced; newer ones without a sound
    /// meta were cut short). A newest generation whose meta is sound but
    /// whose entries are not is deleted too and reported as [`Unusable`].
    pub fn open_newest(
        partition_dir: &Path,
        entries_per_file: u32,
    ) -> Result<(Option<CleanSection>, Option<Unusable>), CleanError> {
        let mut generations = Vec::new();
        let listing = match std::fs::read_dir(partition_dir) {
            Ok(listing) => listing,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok((None, None));
            }
            Err(source) => return Err(io(partition_dir, source)),
        };
        for item in listing {
            let item = item.map_err(|source| io(partition_dir, source))?;
            let name = item.file_name();
            let Some(generation) = name
                .to_str()
                .and_then(|name| name.strip_prefix(DIR_PREFIX))
                .and_then(|digits| digits.parse::<u64>().ok())
            else {
                continue;
            };
            generations.push((generation, item.path()));
        }
        generations.sort_unstable_by_key(|(generation, _)| std::cmp::Reverse(*generation));
        let mut chosen = None;
        let mut unusable = None;
        for (generation, dir) in generations {
            if chosen.is_none() && unusable.is_none() {
                let meta = std::fs::read(dir.join(META_FILE))
                    .ok()
                    .and_then(|bytes| Meta::decode(&bytes))
                    .filter(|meta| meta.generation == generation);
                if let Some(meta) = meta {
                    match open_generation(&dir, meta, entries_per_file) {
                        Ok(section) => {
                            chosen = Some(section);
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(%error, dir = %dir.display(), "a clean-section generation is damaged; it is built again from its commit frames");
                            unusable = Some(Unusable {
                                generation,
                                commit_position: meta.commit_position,
                            });
                        }
                    }
                }
            }
            std::fs::remove_dir_all(&dir).map_err(|source| io(&dir, source))?;
        }
        Ok((chosen, unusable))
    }

    /// Delete this generation's files (it was replaced, or its partition
    /// no longer keeps any of it). Blocking I/O.
    pub fn remove(self) -> Result<(), CleanError> {
        let dir = self.dir;
        drop(self.queue);
        std::fs::remove_dir_all(&dir).map_err(|source| io(&dir, source))
    }

    /// Bytes of the batches from the one holding `from` on.
    pub fn bytes_from(&self, from: Offset) -> Result<u64, QueueError> {
        let whole = self
            .queue
            .first()?
            .is_none_or(|first| from <= first.base_offset);
        if whole && self.queue.head_index() == 0 {
            return Ok(self.total_bytes);
        }
        let mut bytes = 0;
        for index in self.queue.search_offset(from)?..self.queue.tail_index() {
            bytes += self
                .queue
                .get(index)?
                .map_or(0, |entry| u64::from(entry.batch_len));
        }
        Ok(bytes)
    }
}

fn open_generation(
    dir: &Path,
    meta: Meta,
    entries_per_file: u32,
) -> Result<CleanSection, CleanError> {
    let queue = ConsumeQueue::open(dir, entries_per_file, meta.entries)?;
    if queue.tail_index() - queue.head_index() != meta.entries {
        return Err(CleanError::Io {
            path: dir.to_owned(),
            source: std::io::Error::other(format!(
                "{} sound entries where its meta records {}",
                queue.tail_index() - queue.head_index(),
                meta.entries
            )),
        });
    }
    let mut total_bytes = 0;
    for index in queue.head_index()..queue.tail_index() {
        total_bytes += queue
            .get(index)?
            .map_or(0, |entry| u64::from(entry.batch_len));
    }
    Ok(CleanSection {
        generation: meta.generation,
        end: meta.end,
        commit_position: meta.commit_position,
        queue,
        total_bytes,
        dir: dir.to_owned(),
    })
}

fn sync_dir(dir: &Path) -> Result<(), CleanError> {
    std::fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(|source| io(dir, source))
}

fn io(path: &Path, source: std::io::Error) -> CleanError {
    CleanError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(count: i64) -> Vec<QueueEntry> {
        (0..count)
            .map(|index| QueueEntry {
                base_offset: Offset(index * 10),
                position: LogPosition(4096 + index as u64 * 200),
                batch_len: 100,
                last_offset_delta: 9,
                max_timestamp_ms: 1_000 + index,
                attributes: 0,
            })
            .collect()
    }

    #[test]
    fn the_newest_complete_generation_wins_and_the_others_go() {
        let dir = tempfile::tempdir().unwrap();
        CleanSection::write(
            dir.path(),
            1,
            Offset(30),
            LogPosition(9000),
            &entries(3),
            64,
        )
        .unwrap();
        let second = CleanSection::write(
            dir.path(),
            2,
            Offset(50),
            LogPosition(9900),
            &entries(5),
            64,
        )
        .unwrap();
        assert_eq!(second.queue.tail_index(), 5);
        drop(second);
        // A third generation cut short before its meta.
        std::fs::create_dir_all(dir.path().join("clean-00000000000000000003")).unwrap();
        let (section, unusable) = CleanSection::open_newest(dir.path(), 64).unwrap();
        let section = section.unwrap();
        assert_eq!((section.generation, section.end), (2, Offset(50)));
        assert_eq!(section.commit_position, LogPosition(9900));
        assert_eq!(section.bytes_from(Offset(20)).unwrap(), 300);
        assert_eq!(unusable, None);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|item| item.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["clean-00000000000000000002"]);
    }

    #[test]
    fn entries_that_do_not_increase_are_refused_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut joined = entries(3);
        joined.extend(entries(2));
        assert!(
            CleanSection::write(dir.path(), 1, Offset(30), LogPosition(9000), &joined, 64).is_err()
        );
        assert!(
            CleanSection::write(
                dir.path(),
                1,
                Offset(15),
                LogPosition(9000),
                &entries(3),
                64
            )
            .is_err(),
            "an entry past the clean end"
        );
    }

    #[test]
    fn a_damaged_newest_generation_is_reported_with_its_commit_position() {
        let dir = tempfile::tempdir().unwrap();
        let section =
            CleanSection::write(dir.path(), 4, Offset(30), LogPosition(777), &entries(3), 64)
                .unwrap();
        let generation_dir = section.dir.clone();
        drop(section);
        let queue_file = std::fs::read_dir(&generation_dir)
            .unwrap()
            .map(|item| item.unwrap().path())
            .find(|path| path.extension().is_some_and(|ext| ext == "cq"))
            .unwrap();
        let mut bytes = std::fs::read(&queue_file).unwrap();
        bytes[64 + 41] ^= 0xff;
        std::fs::write(&queue_file, bytes).unwrap();
        let (section, unusable) = CleanSection::open_newest(dir.path(), 64).unwrap();
        assert!(section.is_none());
        assert_eq!(
            unusable,
            Some(Unusable {
                generation: 4,
                commit_position: LogPosition(777)
            })
        );
        assert!(!generation_dir.exists());
    }
}
