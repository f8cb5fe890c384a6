//! Streaming Snappy decoder for Kafka batches, in the two framings clients
//! send: the xerial framing the Java producer writes (`SnappyOutputStream`:
//! a 16-byte header starting `\x82SNAPPY\0`, then blocks of a big-endian u32
//! length and a raw Snappy stream) and a bare raw Snappy stream, which is
//! what librdkafka writes. Kafka reads both (xerial's `SnappyInputStream`
//! falls back to raw when the magic is absent), and so does this reader.
//!
//! Why not the `snap` crate: its raw decoder needs the whole output buffer
//! up front, sized by the length the stream declares, and its streaming
//! reader speaks the other ("framing format") framing. This reader keeps a
//! sliding window of [`WINDOW_BYTES`] and never holds more than
//! [`HISTORY_MAX_BYTES`], whatever the stream declares.
//!
//! The one departure from the format: a copy may reach back at most
//! [`WINDOW_BYTES`]. Every Snappy encoder (the reference C++ one, which
//! snappy-java wraps, librdkafka's port of it, Go's and Rust's) compresses in
//! independent 64 KiB fragments, so its copies never reach further; a stream
//! that does is refused as invalid instead of forcing an unbounded window.
//!
//! Raw format: <https://github.com/google/snappy/blob/main/format_description.txt>.

use std::io;

/// Farthest back a copy may reach: Snappy encoders' fragment size.
pub const WINDOW_BYTES: usize = 64 * 1024;
/// Longest piece of a literal decoded at once, so history stays bounded.
const LITERAL_PIECE_MAX_BYTES: usize = WINDOW_BYTES;
/// Longest single copy element (6 bits of length, plus one).
const COPY_MAX_BYTES: usize = 64;
/// History is trimmed back to [`WINDOW_BYTES`] once it holds this much and
/// every byte of it has been read out.
const HISTORY_TRIM_BYTES: usize = 2 * WINDOW_BYTES;
/// The most the history buffer ever holds.
pub const HISTORY_MAX_BYTES: usize = HISTORY_TRIM_BYTES + LITERAL_PIECE_MAX_BYTES + COPY_MAX_BYTES;
/// snappy-java's stream header: magic, then version and compatible version.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;

/// Reads the decompressed bytes of a Kafka Snappy records section.
pub struct SnappyReader<'a> {
    /// Compressed bytes not yet parsed.
    input: &'a [u8],
    /// True for xerial framing: after a raw stream, another block may follow.
    framed: bool,
    /// The raw stream being decoded, once its preamble is read.
    stream: Option<RawStream>,
    /// Decoded bytes: the window behind `emitted`, then bytes not yet read.
    history: Vec<u8>,
    emitted: usize,
}

/// Progress through one raw Snappy stream.
struct RawStream {
    /// Bytes its preamble declares it decodes to.
    declared: u64,
    produced: u64,
    /// Compressed bytes of this stream left in `input` (xerial blocks end
    /// before the input does).
    compressed_left: usize,
    /// Literal bytes still to copy from the input.
    literal_left: usize,
}

impl<'a> SnappyReader<'a> {
    pub fn new(input: &'a [u8]) -> io::Result<SnappyReader<'a>> {
        let framed = input.starts_with(XERIAL_MAGIC);
        let input = if framed {
            input.get(XERIAL_HEADER_BYTES..).ok_or_else(|| {
                invalid(format!(
                    "snappy-java header is {} bytes, shorter than {XERIAL_HEADER_BYTES}",
                    input.len()
                ))
            })?
        } else {
            input
        };
        Ok(SnappyReader {
            input,
            framed,
            stream: None,
            history: Vec::with_capacity(HISTORY_MAX_BYTES),
            emitted: 0,
        })
    }

    /// Decode more into `history`; false at the end of the input.
    fn decode_more(&mut self) -> io::Result<bool> {
        if self.emitted == self.history.len() && self.history.len() >= HISTORY_TRIM_BYTES {
            let drop = self.history.len() - WINDOW_BYTES;
            self.history.drain(..drop);
            self.emitted -= drop;
        }
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                if self.input.is_empty() {
                    return Ok(false);
                }
                let stream = self.start_stream()?;
                // A new raw stream cannot refer back into the previous one.
                self.history.clear();
                self.emitted = 0;
                self.stream.insert(stream)
            }
        };
        if stream.produced == stream.declared {
            if stream.literal_left != 0 || stream.compressed_left != 0 {
                return Err(invalid(format!(
                    "snappy stream has {} bytes after the {} it declares",
                    stream.compressed_left, stream.declared
                )));
            }
            self.stream = None;
            if !self.framed && !self.input.is_empty() {
                return Err(invalid("bytes follow the raw snappy stream"));
            }
            return Ok(true);
        }
        decode_element(stream, &mut self.input, &mut self.history)?;
        Ok(true)
    }

    /// Read the next raw stream's header: the xerial block length, if
    /// framed, then the preamble's declared length.
    fn start_stream(&mut self) -> io::Result<RawStream> {
        let mut block = self.input;
        if self.framed {
            let (length, rest) = self
                .input
                .split_first_chunk::<4>()
                .ok_or_else(|| invalid("snappy-java block length cut short"))?;
            let length = u32::from_be_bytes(*length) as usize;
            block = rest.get(..length).ok_or_else(|| {
                invalid(format!(
                    "snappy-java block of {length} bytes, but {} remain",
                    rest.len()
                ))
            })?;
            self.input = rest;
        }
        let block_bytes = block.len();
        let declared = read_uvarint32(&mut block)?;
        self.input = &self.input[block_bytes - block.len()..];
        let compressed_left = block.len();
        Ok(RawStream {
            declared: u64::from(declared),
            produced: 0,
            compressed_left,
            literal_left: 0,
        })
    }
}

impl io::Read for SnappyReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.emitted == self.history.len() {
            if !self.decode_more()? {
                return Ok(0);
            }
        }
        let ready = &self.history[self.emitted..];
        let n = ready.len().min(out.len());
        out[..n].copy_from_slice(&ready[..n]);
        self.emitted += n;
        Ok(n)
    }
}

/// Decode one element (or the next piece of a long literal) of `stream`
/// from `input` onto `history`.
fn decode_element(
    stream: &mut RawStream,
    input: &mut &[u8],
    history: &mut Vec<u8>,
) -> io::Result<()> {
    if stream.literal_left > 0 {
        let n = stream.literal_left.min(LITERAL_PIECE_MAX_BYTES);
        let piece = take(stream, input, n)?;
        history.extend_from_slice(piece);
        stream.literal_left -= n;
        stream.produced += n as u64;
        return Ok(());
    }
    let tag = take(stream, input, 1)?[0];
    let (length, offset) = match tag & 0x03 {
        0 => {
            let length = match tag >> 2 {
                short @ 0..60 => usize::from(short) + 1,
                long => {
                    let bytes = usize::from(long - 59);
                    let raw = take(stream, input, bytes)?;
                    let mut le = [0u8; 4];
                    le[..bytes].copy_from_slice(raw);
                    u32::from_le_bytes(le) as usize + 1
                }
            };
            check_fits(stream, length)?;
            stream.literal_left = length;
            return Ok(());
        }
        1 => {
            let low = take(stream, input, 1)?[0];
            let length = usize::from((tag >> 2) & 0x07) + 4;
            (length, usize::from(tag >> 5) << 8 | usize::from(low))
        }
        2 => {
            let raw = take(stream, input, 2)?;
            (
                usize::from(tag >> 2) + 1,
                usize::from(u16::from_le_bytes([raw[0], raw[1]])),
            )
        }
        _ => {
            let raw = take(stream, input, 4)?;
            let offset = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
            (usize::from(tag >> 2) + 1, offset)
        }
    };
    check_fits(stream, length)?;
    copy_back(history, offset, length, stream.produced)?;
    stream.produced += length as u64;
    Ok(())
}

/// Append `length` bytes copied from `offset` bytes back (they may overlap
/// what is being written: a run).
fn copy_back(history: &mut Vec<u8>, offset: usize, length: usize, produced: u64) -> io::Result<()> {
    if offset == 0 || offset as u64 > produced {
        return Err(invalid(format!(
            "snappy copy from {offset} bytes back, but {produced} bytes are decoded"
        )));
    }
    if offset > WINDOW_BYTES {
        return Err(invalid(format!(
            "snappy copy from {offset} bytes back, beyond the {WINDOW_BYTES}-byte window every \
             Snappy encoder keeps to"
        )));
    }
    debug_assert!(offset <= history.len(), "the window is kept in history");
    let start = history.len() - offset;
    if offset >= length {
        history.extend_from_within(start..start + length);
    } else {
        for index in 0..length {
            let byte = history[start + index];
            history.push(byte);
        }
    }
    Ok(())
}

fn check_fits(stream: &RawStream, length: usize) -> io::Result<()> {
    if stream.produced + length as u64 > stream.declared {
        return Err(invalid(format!(
            "snappy element of {length} bytes runs past the {} bytes the stream declares",
            stream.declared
        )));
    }
    Ok(())
}

/// Take `n` compressed bytes of the current stream.
fn take<'a>(stream: &mut RawStream, input: &mut &'a [u8], n: usize) -> io::Result<&'a [u8]> {
    if n > stream.compressed_left || n > input.len() {
        return Err(invalid("snappy stream cut short"));
    }
    let (taken, rest) = input.split_at(n);
    *input = rest;
    stream.compressed_left -= n;
    Ok(taken)
}

/// The preamble: the decoded length as an unsigned varint of at most 32 bits.
fn read_uvarint32(input: &mut &[u8]) -> io::Result<u32> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let (&byte, rest) = input
            .split_first()
            .ok_or_else(|| invalid("snappy length preamble cut short"))?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            if value > u64::from(u32::MAX) {
                return Err(invalid(format!(
                    "snappy length preamble {value} is above 32 bits"
                )));
            }
            return Ok(value as u32);
        }
    }
    Err(invalid("snappy length preamble longer than 5 bytes"))
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn read_all(input: &[u8]) -> io::Result<Vec<u8>> {
        let mut reader = SnappyReader::new(input)?;
        let mut out = Vec::new();
        let mut chunk = [0u8; 1000];
        loop {
            let n = reader.read(&mut chunk)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..n]);
        }
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_u32;
        (0..len)
            .map(|index| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                // Runs and repeats, so the encoder emits every element kind.
                if index % 1000 < 300 {
                    b'a' + (index % 7) as u8
                } else {
                    b'a' + (state % 20) as u8
                }
            })
            .collect()
    }

    fn xerial(blocks: &[&[u8]]) -> Vec<u8> {
        let mut out = XERIAL_MAGIC.to_vec();
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&1u32.to_be_bytes());
        for block in blocks {
            let compressed = snap::raw::Encoder::new().compress_vec(block).unwrap();
            out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
            out.extend_from_slice(&compressed);
        }
        out
    }

    #[test]
    fn raw_streams_decode_like_the_reference_decoder() {
        for len in [0, 1, 63, 64 * 1024, 300_000] {
            let data = sample(len);
            let compressed = snap::raw::Encoder::new().compress_vec(&data).unwrap();
            assert_eq!(read_all(&compressed).unwrap(), data, "{len} bytes");
        }
    }

    #[test]
    fn xerial_blocks_decode_in_order() {
        let first = sample(40_000);
        let second = sample(70_000);
        let decoded = read_all(&xerial(&[&first, &second])).unwrap();
        assert_eq!(decoded, [first, second].concat());
    }

    #[test]
    fn history_stays_bounded_on_a_large_stream() {
        let data = vec![0u8; 8 << 20];
        let compressed = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        let mut reader = SnappyReader::new(&compressed).unwrap();
        let mut chunk = [0u8; 4096];
        let mut total = 0;
        while let n @ 1.. = reader.read(&mut chunk).unwrap() {
            total += n;
            assert!(reader.history.capacity() <= HISTORY_MAX_BYTES);
        }
        assert_eq!(total, data.len());
    }

    #[test]
    fn damaged_streams_are_errors_not_panics() {
        let data = sample(100_000);
        let compressed = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert!(
            read_all(&compressed[..compressed.len() - 1]).is_err(),
            "cut short"
        );
        let mut longer = compressed.clone();
        longer.push(0);
        assert!(read_all(&longer).is_err(), "a trailing byte");
        // Declares 5 bytes, then a copy from 9 bytes back.
        assert!(
            read_all(&[5, 0x01 | (1 << 2), 9]).is_err(),
            "copy before the start"
        );
        // Declares 2 bytes, then a 3-byte literal.
        assert!(
            read_all(&[2, 2 << 2, b'a', b'b', b'c']).is_err(),
            "literal past the end"
        );
        // Declares 4 GiB - 1 and holds nothing: cut short, nothing allocated.
        assert!(read_all(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        for cut in 0..200 {
            let mut flipped = compressed.clone();
            flipped[cut * 7 % compressed.len()] ^= 0x5a;
            let _ = read_all(&flipped);
        }
    }

    #[test]
    fn copies_beyond_the_window_are_refused() {
        // 70 000 literal bytes, then a 4-byte-offset copy from 66 000 back.
        let mut stream = Vec::new();
        let total: u32 = 70_000 + 4;
        let mut value = total;
        while value >= 0x80 {
            stream.push((value as u8) | 0x80);
            value >>= 7;
        }
        stream.push(value as u8);
        stream.push(62 << 2);
        stream.extend_from_slice(&(70_000u32 - 1).to_le_bytes()[..3]);
        stream.extend(std::iter::repeat_n(b'x', 70_000));
        stream.push(0x03 | (3 << 2));
        stream.extend_from_slice(&66_000u32.to_le_bytes());
        let error = read_all(&stream).unwrap_err();
        assert!(error.to_string().contains("window"), "{error}");
    }
}
