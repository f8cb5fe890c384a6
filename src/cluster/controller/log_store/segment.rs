//! The controller log's segment files and the frames in them.
//!
//! A segment is `<index of its first entry, 20 digits>.log`. Layout
//! (little-endian):
//!
//! | bytes   | field        | notes                                         |
//! |---------|--------------|-----------------------------------------------|
//! | 0..4    | magic        | `SLRL` (Sluice Raft log)                      |
//! | 4       | version      | 1                                             |
//! | 5..8    | reserved     | 0                                             |
//!
//! then frames, one per log entry, back to back:
//!
//! | bytes   | field        | notes                                         |
//! |---------|--------------|-----------------------------------------------|
//! | 0..4    | payload_len  | 1..=[`FRAME_PAYLOAD_BYTES_MAX`]               |
//! | 4..8    | crc32c       | CRC32C of the payload                         |
//! | 8..     | payload      | the entry as JSON (`openraft::Entry`)         |
//!
//! [`scan`] walks a segment's bytes (read whole: segments are small) and
//! stops at the first frame that does not check out, saying whether that
//! damage looks like a write cut short by a crash ([`Stop::torn`]); the
//! log store decides what that means for the segment it came from.

use std::ops::Range;

use thiserror::Error;

pub const SEGMENT_HEADER_BYTES: usize = 8;
pub const FRAME_HEADER_BYTES: usize = 8;
/// The largest entry a frame holds. Controller entries are metadata
/// commands of a few hundred bytes; the bound keeps a damaged length from
/// being believed.
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// A segment that has reached this size gets no more frames: the next entry
/// starts a new segment, so a purge can delete whole files.
pub const SEGMENT_BYTES_TARGET: u64 = 64 * 1024 * 1024;

const MAGIC: [u8; 4] = *b"SLRL";
const VERSION: u8 = 1;
const SUFFIX: &str = ".log";
const NAME_DIGITS: usize = 20;

const _: () = assert!(FRAME_PAYLOAD_BYTES_MAX as u64 <= SEGMENT_BYTES_TARGET);

/// Why a scan stopped before the end of a segment.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameDamage {
    #[error("segment header cut short: {bytes_left} of {SEGMENT_HEADER_BYTES} bytes")]
    ShortSegmentHeader { bytes_left: usize },
    #[error("segment magic is {found:02x?}, expected {MAGIC:02x?} (not a controller log segment)")]
    BadMagic { found: [u8; 4] },
    #[error("segment format version {found}; this build reads version {VERSION}")]
    UnsupportedVersion { found: u8 },
    #[error("frame header cut short: {bytes_left} of {FRAME_HEADER_BYTES} bytes")]
    ShortFrameHeader { bytes_left: usize },
    #[error("frame claims {payload_len} payload bytes but only {bytes_left} are left")]
    ShortPayload { payload_len: u32, bytes_left: usize },
    #[error("frame payload length {payload_len} is outside 1..={FRAME_PAYLOAD_BYTES_MAX}")]
    PayloadLengthOutOfRange { payload_len: u32 },
    #[error("frame CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
}

/// Where and why a scan stopped.
#[derive(Debug, PartialEq, Eq)]
pub struct Stop {
    /// Byte offset of the header or frame that failed its checks.
    pub offset: u64,
    pub damage: FrameDamage,
    /// The damage is what a crash during an unacknowledged write leaves:
    /// a header or frame cut short, a bad CRC in the frame that ends the
    /// file, or nothing but zeros from `offset` to the end (a file extended
    /// whose data never reached the disk).
    pub torn: bool,
}

/// One frame that passed its checks.
#[derive(Debug, PartialEq, Eq)]
pub struct ScannedFrame {
    pub offset: u64,
    /// The payload's bytes within the scanned buffer.
    pub payload: Range<usize>,
}

/// What [`scan`] found: the frames that check out, in order, and where it
/// stopped if it did not reach the end cleanly.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan {
    pub frames: Vec<ScannedFrame>,
    pub stop: Option<Stop>,
}

impl Scan {
    /// Bytes of the segment that hold a good header and good frames.
    pub fn valid_len(&self, bytes_len: usize) -> u64 {
        match &self.stop {
            Some(stop) => stop.offset,
            None => bytes_len as u64,
        }
    }
}

pub fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:0NAME_DIGITS$}{SUFFIX}")
}

/// The first index a segment file's name declares, or `None` when the name
/// is not a segment's.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SUFFIX)?;
    if stem.len() != NAME_DIGITS || !stem.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub fn segment_header() -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0; SEGMENT_HEADER_BYTES];
    header[..4].copy_from_slice(&MAGIC);
    header[4] = VERSION;
    header
}

/// Append one frame holding `payload` to `out`. The caller has checked the
/// payload against [`FRAME_PAYLOAD_BYTES_MAX`].
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    assert!(!payload.is_empty(), "an entry encodes to at least `{{}}`");
    let payload_len = u32::try_from(payload.len()).expect("caller bounds the payload");
    assert!(payload_len <= FRAME_PAYLOAD_BYTES_MAX);
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Check a segment's header and frames. Never allocates by a length read
/// from `bytes`: a frame's length is checked against the bytes left before
/// its payload is looked at.
pub fn scan(bytes: &[u8]) -> Scan {
    let mut frames = Vec::new();
    if let Err(damage) = check_segment_header(bytes) {
        let torn = matches!(damage, FrameDamage::ShortSegmentHeader { .. }) || all_zero(bytes);
        let stop = Stop {
            offset: 0,
            damage,
            torn,
        };
        return Scan {
            frames,
            stop: Some(stop),
        };
    }
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < bytes.len() {
        match check_frame(bytes, offset) {
            Ok(payload) => {
                let end = payload.end;
                frames.push(ScannedFrame {
                    offset: offset as u64,
                    payload,
                });
                offset = end;
            }
            Err((damage, frame_end)) => {
                let torn = is_torn(&damage, frame_end, bytes, offset);
                let stop = Stop {
                    offset: offset as u64,
                    damage,
                    torn,
                };
                return Scan {
                    frames,
                    stop: Some(stop),
                };
            }
        }
    }
    Scan { frames, stop: None }
}

fn check_segment_header(bytes: &[u8]) -> Result<(), FrameDamage> {
    let Some(header) = bytes.get(..SEGMENT_HEADER_BYTES) else {
        return Err(FrameDamage::ShortSegmentHeader {
            bytes_left: bytes.len(),
        });
    };
    let found = [header[0], header[1], header[2], header[3]];
    if found != MAGIC {
        return Err(FrameDamage::BadMagic { found });
    }
    if header[4] != VERSION {
        return Err(FrameDamage::UnsupportedVersion { found: header[4] });
    }
    Ok(())
}

/// The payload range of the frame at `offset`, or its damage and (when
/// its length could be read) where the frame would end.
fn check_frame(bytes: &[u8], offset: usize) -> Result<Range<usize>, (FrameDamage, Option<usize>)> {
    let rest = &bytes[offset..];
    let Some(header) = rest.get(..FRAME_HEADER_BYTES) else {
        let damage = FrameDamage::ShortFrameHeader {
            bytes_left: rest.len(),
        };
        return Err((damage, None));
    };
    let payload_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let bytes_left = rest.len() - FRAME_HEADER_BYTES;
    let payload_bytes = payload_len as usize;
    if payload_bytes > bytes_left {
        let damage = FrameDamage::ShortPayload {
            payload_len,
            bytes_left,
        };
        return Err((damage, None));
    }
    let frame_end = offset + FRAME_HEADER_BYTES + payload_bytes;
    if payload_len == 0 || payload_len > FRAME_PAYLOAD_BYTES_MAX {
        return Err((
            FrameDamage::PayloadLengthOutOfRange { payload_len },
            Some(frame_end),
        ));
    }
    let payload = offset + FRAME_HEADER_BYTES..frame_end;
    let computed = crc32c::crc32c(&bytes[payload.clone()]);
    if computed != stored {
        return Err((
            FrameDamage::CrcMismatch { stored, computed },
            Some(frame_end),
        ));
    }
    Ok(payload)
}

fn is_torn(damage: &FrameDamage, frame_end: Option<usize>, bytes: &[u8], offset: usize) -> bool {
    let cut_short = matches!(
        damage,
        FrameDamage::ShortFrameHeader { .. } | FrameDamage::ShortPayload { .. }
    );
    let bad_final_frame =
        matches!(damage, FrameDamage::CrcMismatch { .. }) && frame_end == Some(bytes.len());
    cut_short || bad_final_frame || all_zero(&bytes[offset..])
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&byte| byte == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(payloads: &[&[u8]]) -> Vec<u8> {
        let mut bytes = segment_header().to_vec();
        for payload in payloads {
            encode_frame(payload, &mut bytes);
        }
        bytes
    }

    #[test]
    fn scan_returns_every_frame_of_a_clean_segment() {
        let bytes = segment(&[b"{\"a\":1}", b"{\"b\":2}"]);
        let scan = scan(&bytes);
        assert_eq!(scan.stop, None);
        let payloads: Vec<&[u8]> = scan
            .frames
            .iter()
            .map(|frame| &bytes[frame.payload.clone()])
            .collect();
        assert_eq!(payloads, [&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
        assert_eq!(scan.valid_len(bytes.len()), bytes.len() as u64);
    }

    #[test]
    fn a_frame_cut_short_is_torn_at_its_offset() {
        let whole = segment(&[b"{\"a\":1}", b"{\"b\":2}"]);
        let second = (SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES + 7) as u64;
        for cut in [second as usize + 3, second as usize + 9, whole.len() - 1] {
            let scan = scan(&whole[..cut]);
            assert_eq!(scan.frames.len(), 1, "cut at {cut}");
            let stop = scan.stop.expect("stopped");
            assert_eq!(stop.offset, second);
            assert!(stop.torn, "cut at {cut}: {stop:?}");
        }
    }

    #[test]
    fn a_bad_crc_in_the_final_frame_is_torn_but_not_in_an_earlier_one() {
        let mut bytes = segment(&[b"{\"a\":1}", b"{\"b\":2}"]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let stop = scan(&bytes).stop.expect("stopped");
        assert!(matches!(stop.damage, FrameDamage::CrcMismatch { .. }));
        assert!(stop.torn);

        let mut bytes = segment(&[b"{\"a\":1}", b"{\"b\":2}"]);
        bytes[SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES] ^= 0xff;
        let stop = scan(&bytes).stop.expect("stopped");
        assert_eq!(stop.offset, SEGMENT_HEADER_BYTES as u64);
        assert!(matches!(stop.damage, FrameDamage::CrcMismatch { .. }));
        assert!(!stop.torn);
    }

    #[test]
    fn zeros_to_the_end_are_torn() {
        let mut bytes = segment(&[b"{\"a\":1}"]);
        let end = bytes.len() as u64;
        bytes.extend_from_slice(&[0; 40]);
        let stop = scan(&bytes).stop.expect("stopped");
        assert_eq!(stop.offset, end);
        assert!(stop.torn);
    }

    #[test]
    fn a_huge_length_is_refused_without_reading_past_the_file() {
        let mut bytes = segment(&[b"{\"a\":1}"]);
        bytes[SEGMENT_HEADER_BYTES..SEGMENT_HEADER_BYTES + 4]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        let stop = scan(&bytes).stop.expect("stopped");
        assert!(matches!(stop.damage, FrameDamage::ShortPayload { .. }));
    }

    #[test]
    fn a_foreign_header_is_damage_not_a_tear() {
        let mut bytes = segment(&[b"{\"a\":1}"]);
        bytes[0] = b'X';
        let stop = scan(&bytes).stop.expect("stopped");
        assert!(matches!(stop.damage, FrameDamage::BadMagic { .. }));
        assert!(!stop.torn);
        assert!(scan(&[0; 5]).stop.expect("stopped").torn);
    }

    #[test]
    fn segment_names_round_trip_and_others_are_ignored() {
        assert_eq!(segment_file_name(42), "00000000000000000042.log");
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(parse_segment_file_name("42.log"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.log"), None);
        assert_eq!(parse_segment_file_name("vote.json"), None);
    }
}
