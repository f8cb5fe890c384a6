//! Sequential, verifying reads of frames from a segment: recovery's scanner.
//!
//! [`FrameScanner::read`] checks a frame completely (header CRC, bounds,
//! RecordBatch structure and CRC) and classifies what it found. Nothing it
//! returns as a frame can be half-written. [`FrameScanner::find_next_frame`]
//! looks past damage for the next valid frame (resynchronising on the frame
//! magic), so recovery can tell a torn tail from a damaged frame in the middle.

use std::io;

use super::compaction::commit::CommitPart;
use super::frame::{FRAME_HEADER_BYTES, FRAME_MAGIC, FRAME_PREFIX_BYTES, FrameHeader, FrameKind};
use super::segment::Segment;
use crate::ids::LogPosition;
use crate::record_batch::control::{self, TxnMarker};
use crate::record_batch::{self, BatchHeader};

/// Read-ahead of the scanner; larger frames grow the buffer.
pub const SCAN_BUFFER_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug)]
pub enum ScanItem {
    Frame {
        position: LogPosition,
        header: FrameHeader,
        batch: BatchHeader,
        /// The transaction marker a control batch holds (`None` for data
        /// batches and for control batches this broker cannot read).
        marker: Option<TxnMarker>,
        /// What a compaction commit frame carries.
        commit: Option<CommitPart>,
    },
    /// No valid frame starts here (zeros, garbage, torn or damaged bytes).
    Invalid {
        position: LogPosition,
        reason: String,
    },
    /// Too few bytes remain in the segment for any frame.
    SegmentEnd,
}

/// A frame checked whole: its header, its batch's header, and the
/// transaction marker a control batch holds.
#[derive(Debug)]
pub struct CheckedFrame {
    pub header: FrameHeader,
    pub batch: BatchHeader,
    pub marker: Option<TxnMarker>,
    /// What a compaction commit frame carries.
    pub commit: Option<CommitPart>,
}

/// Check the frame at the start of `bytes` as the scanner checks one on
/// disk (header magic, version, length and CRC; the batch's structure and
/// CRC). `bytes` may hold more after it; the reason when it is not a whole,
/// sound frame.
pub fn check_frame(bytes: &[u8], payload_len_max: u64) -> Result<CheckedFrame, String> {
    if bytes.len() < FRAME_PREFIX_BYTES {
        return Err(format!(
            "{} bytes cannot hold a frame ({FRAME_PREFIX_BYTES} at least)",
            bytes.len()
        ));
    }
    let header = FrameHeader::decode(bytes, payload_len_max).map_err(|error| error.to_string())?;
    let end = header.frame_len();
    if (bytes.len() as u64) < end {
        return Err(format!(
            "a {end}-byte frame with only {} bytes of it present",
            bytes.len()
        ));
    }
    let payload = &bytes[FRAME_HEADER_BYTES..end as usize];
    let (batch, marker) = check_batch(payload)?;
    let commit = commit_part(&header, payload)?;
    Ok(CheckedFrame {
        header,
        batch,
        marker,
        commit,
    })
}

/// The commit part a compaction commit frame's (checked) batch carries.
fn commit_part(header: &FrameHeader, batch: &[u8]) -> Result<Option<CommitPart>, String> {
    if header.kind != FrameKind::CompactionCommit {
        return Ok(None);
    }
    CommitPart::decode(batch)
        .map(Some)
        .map_err(|error| error.to_string())
}

/// Check a stored batch's structure and CRC; its header and marker.
fn check_batch(batch: &[u8]) -> Result<(BatchHeader, Option<TxnMarker>), String> {
    let batch_header =
        record_batch::check_structure(batch).map_err(|error| format!("stored batch: {error}"))?;
    if !record_batch::crc_matches(batch) {
        return Err("stored batch CRC32C mismatch (torn or damaged write)".to_owned());
    }
    let marker = batch_header
        .is_control()
        .then(|| control::parse_marker(batch).ok())
        .flatten();
    Ok((batch_header, marker))
}

pub struct FrameScanner<'a> {
    segment: &'a Segment,
    payload_len_max: u64,
    buf: Vec<u8>,
    buf_position: LogPosition,
    buf_len: usize,
}

impl<'a> FrameScanner<'a> {
    pub fn new(segment: &'a Segment, payload_len_max: u64) -> FrameScanner<'a> {
        FrameScanner {
            segment,
            payload_len_max,
            buf: vec![0; SCAN_BUFFER_BYTES],
            buf_position: segment.base,
            buf_len: 0,
        }
    }

    /// Classify what starts at `position`.
    pub fn read(&mut self, position: LogPosition) -> io::Result<ScanItem> {
        let segment_end = self.segment.end();
        if position.0 + FRAME_PREFIX_BYTES as u64 > segment_end.0 {
            return Ok(ScanItem::SegmentEnd);
        }
        let payload_len_max = self.payload_len_max;
        let prefix = self.bytes(position, FRAME_PREFIX_BYTES)?;
        let header = match FrameHeader::decode(prefix, payload_len_max) {
            Ok(header) => header,
            Err(error) => return Ok(invalid(position, error.to_string())),
        };
        if position.0 + header.frame_len() > segment_end.0 {
            return Ok(invalid(
                position,
                "frame runs past the end of its segment".to_owned(),
            ));
        }
        let batch_at = position.plus(FRAME_HEADER_BYTES as u64);
        let batch = self.bytes(batch_at, header.payload_len as usize)?;
        match check_batch(batch).and_then(|(batch_header, marker)| {
            Ok((batch_header, marker, commit_part(&header, batch)?))
        }) {
            Ok((batch_header, marker, commit)) => Ok(ScanItem::Frame {
                position,
                header,
                batch: batch_header,
                marker,
                commit,
            }),
            Err(reason) => Ok(invalid(position, reason)),
        }
    }

    /// The first valid frame in `[from, limit)`, searching for the frame magic.
    pub fn find_next_frame(
        &mut self,
        from: LogPosition,
        limit: LogPosition,
    ) -> io::Result<Option<LogPosition>> {
        let limit = limit.min(self.segment.end());
        let mut at = from;
        while at < limit {
            let window = ((limit.0 - at.0) as usize).min(SCAN_BUFFER_BYTES / 2);
            if window < FRAME_MAGIC.len() {
                break;
            }
            let bytes = self.bytes(at, window)?;
            let candidates: Vec<usize> = bytes
                .windows(FRAME_MAGIC.len())
                .enumerate()
                .filter(|(_, window)| *window == FRAME_MAGIC)
                .map(|(index, _)| index)
                .collect();
            for index in candidates {
                let candidate = at.plus(index as u64);
                if let ScanItem::Frame { .. } = self.read(candidate)? {
                    return Ok(Some(candidate));
                }
            }
            at = at.plus((window - FRAME_MAGIC.len() + 1) as u64);
        }
        Ok(None)
    }

    /// Bytes from `from` to the last non-zero byte before `limit` (0 if all
    /// zero): the size of whatever lies after the last valid frame.
    pub fn nonzero_extent(&mut self, from: LogPosition, limit: LogPosition) -> io::Result<u64> {
        let limit = limit.min(self.segment.end());
        let mut at = from;
        let mut last_nonzero_end = from;
        while at < limit {
            let window = ((limit.0 - at.0) as usize).min(SCAN_BUFFER_BYTES / 2);
            let bytes = self.bytes(at, window)?;
            if let Some(index) = bytes.iter().rposition(|&byte| byte != 0) {
                last_nonzero_end = at.plus(index as u64 + 1);
            }
            at = at.plus(window as u64);
        }
        Ok(last_nonzero_end.0 - from.0)
    }

    /// `len` bytes at `position`, from the read-ahead buffer.
    fn bytes(&mut self, position: LogPosition, len: usize) -> io::Result<&[u8]> {
        let end = position.0 + len as u64;
        let buffered_end = self.buf_position.0 + self.buf_len as u64;
        if position < self.buf_position || end > buffered_end {
            self.fill(position, len)?;
        }
        let start = (position.0 - self.buf_position.0) as usize;
        Ok(&self.buf[start..start + len])
    }

    fn fill(&mut self, position: LogPosition, len: usize) -> io::Result<()> {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let want = ((self.segment.end().0 - position.0) as usize).min(self.buf.len());
        let read = self.segment.read_at(position, &mut self.buf[..want])?;
        if read < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "segment {} is shorter than its preallocated size (read {read} of {len} bytes at {position})",
                    self.segment.path.display()
                ),
            ));
        }
        self.buf_position = position;
        self.buf_len = read;
        Ok(())
    }
}

fn invalid(position: LogPosition, reason: String) -> ScanItem {
    ScanItem::Invalid { position, reason }
}
