//! Reading the controller log back at open: every segment in index order,
//! each frame's CRC, consecutive indexes within and across segments.
//!
//! The whole directory is checked before anything is changed. Only then is
//! a torn tail of the last segment cut away (or the segment removed when
//! nothing in it survives), with a log line: those bytes were never
//! acknowledged, because append reports an entry flushed only after its
//! fdatasync. Damage anywhere else stops the open with the file and offset.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use openraft::LogId;

use super::segment::{self, Stop, parse_segment_file_name, segment_file_name};
use super::{Entries, Entry, LogStoreError, NodeId, Segment, remove_file, sync_dir, write_error};

/// What the segments hold, after any torn tail was cut.
pub(super) struct Recovered {
    pub segments: Vec<Segment>,
    /// The entries after `last_purged`.
    pub entries: Entries,
}

/// What the last segment needs once every segment is checked: its torn
/// tail cut, or the file removed when no entry in it survives (it was
/// created by an append that never completed).
struct Repair {
    path: PathBuf,
    /// Where and why the scan stopped; `None`: the file is a bare header.
    stop: Option<Stop>,
    file_len: u64,
    /// No entry in the file: it goes.
    remove: bool,
}

pub(super) fn recover(
    dir: &Path,
    last_purged: Option<&LogId<NodeId>>,
) -> Result<Recovered, LogStoreError> {
    let first_indexes = list_segments(dir)?;
    let mut segments = Vec::with_capacity(first_indexes.len());
    let mut entries = Entries::new();
    let mut repair = None;
    let mut next_index = None;
    for (position, &first_index) in first_indexes.iter().enumerate() {
        let is_last = position + 1 == first_indexes.len();
        let path = dir.join(segment_file_name(first_index));
        let bytes = std::fs::read(&path).map_err(|source| LogStoreError::Read {
            path: path.clone(),
            source,
        })?;
        let scan = segment::scan(&bytes);
        let mut frame_offsets = Vec::with_capacity(scan.frames.len());
        for frame in &scan.frames {
            let entry: Entry =
                serde_json::from_slice(&bytes[frame.payload.clone()]).map_err(|source| {
                    LogStoreError::DecodeEntry {
                        path: path.clone(),
                        offset: frame.offset,
                        source,
                    }
                })?;
            let index = entry.log_id.index;
            let expected = expected_index(&frame_offsets, first_index, next_index, index);
            if index != expected {
                return Err(LogStoreError::IndexGap {
                    path,
                    offset: frame.offset,
                    expected,
                    found: index,
                });
            }
            next_index = Some(index + 1);
            frame_offsets.push(frame.offset);
            if last_purged.is_none_or(|purged| index > purged.index) {
                entries.insert(index, entry);
            }
        }
        let valid_len = scan.valid_len(bytes.len());
        match scan.stop {
            Some(stop) if !(is_last && stop.torn) => {
                return Err(LogStoreError::Damaged {
                    path,
                    offset: stop.offset,
                    damage: stop.damage,
                });
            }
            stop if is_last && (stop.is_some() || frame_offsets.is_empty()) => {
                repair = Some(Repair {
                    path: path.clone(),
                    stop,
                    file_len: bytes.len() as u64,
                    remove: frame_offsets.is_empty(),
                });
            }
            _ if frame_offsets.is_empty() => return Err(LogStoreError::EmptySegment { path }),
            _ => {}
        }
        if !frame_offsets.is_empty() {
            segments.push(Segment {
                first_index,
                path,
                frame_offsets,
                len_bytes: valid_len,
            });
        }
    }
    if let Some(repair) = repair {
        repair_last_segment(dir, repair)?;
    }
    Ok(Recovered { segments, entries })
}

/// The first index of every segment file in `dir`, in order.
fn list_segments(dir: &Path) -> Result<Vec<u64>, LogStoreError> {
    let list_error = |source| LogStoreError::ListDir {
        path: dir.to_owned(),
        source,
    };
    let mut first_indexes = Vec::new();
    for dir_entry in std::fs::read_dir(dir).map_err(list_error)? {
        let name = dir_entry.map_err(list_error)?.file_name();
        if let Some(first_index) = name.to_str().and_then(parse_segment_file_name) {
            first_indexes.push(first_index);
        }
    }
    first_indexes.sort_unstable();
    Ok(first_indexes)
}

/// The index the frame after `frame_offsets` in the segment named
/// `first_index` must carry, given the index `next_index` that follows the
/// previous entry read (in this or an earlier segment). A segment's first
/// entry is the one it is named after.
fn expected_index(
    frame_offsets: &[u64],
    first_index: u64,
    next_index: Option<u64>,
    found: u64,
) -> u64 {
    match next_index {
        Some(next) if !frame_offsets.is_empty() => next,
        _ if found != first_index => first_index,
        Some(next) => next,
        None => first_index,
    }
}

fn repair_last_segment(dir: &Path, repair: Repair) -> Result<(), LogStoreError> {
    let Repair {
        path,
        stop,
        file_len,
        remove,
    } = repair;
    match &stop {
        Some(stop) => tracing::warn!(
            path = %path.display(),
            offset = stop.offset,
            bytes_dropped = file_len - stop.offset,
            damage = %stop.damage,
            "cutting the torn tail of the controller log (an append cut short by a crash, never \
             acknowledged)"
        ),
        None => tracing::warn!(
            path = %path.display(),
            "removing a controller log segment that holds no entry (created by an append cut \
             short by a crash)"
        ),
    }
    if remove {
        remove_file(&path)?;
        return sync_dir(dir);
    }
    let offset = stop.map_or(file_len, |stop| stop.offset);
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|source| write_error("open", &path, source))?;
    file.set_len(offset)
        .map_err(|source| write_error("truncate", &path, source))?;
    file.sync_all()
        .map_err(|source| write_error("fsync", &path, source))
}
