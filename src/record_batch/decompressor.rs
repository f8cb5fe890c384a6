//! The decompressed bytes of a batch's records section, read in chunks.
//!
//! Each codec is read as the Kafka clients write it (KIP-110 for zstd):
//! gzip is an RFC 1952 stream (concatenated members allowed, as Java's
//! `GZIPInputStream` reads them); snappy is raw or in snappy-java's framing
//! ([`SnappyReader`]); lz4 is the LZ4 frame format (`Lz4BlockOutputStream`
//! in Kafka, `LZ4F` in librdkafka); zstd is one or more zstd frames.
//!
//! Nothing here is sized by what the stream declares beyond fixed bounds:
//! gzip keeps its 32 KiB window, snappy a 64 KiB one, lz4 at most two of the
//! frame's blocks (4 MiB at most each), and zstd its window, which libzstd
//! allocates from the frame header before it reads any content. So the zstd
//! window is capped ([`zstd_window_log_max`]): never above what the records
//! may decompress to, rounded up to a power of two, but at least 8 MiB (the
//! largest window of zstd levels 1–19, so any batch a client writes at
//! those levels decodes) and at most 2^27 bytes (zstd's default limit, and
//! zstd-jni's in Kafka). A frame that asks for more is refused. The caller
//! bounds how far the stream decodes (see `record_walk`).

use std::io::{self, Read};

use super::snappy_reader::SnappyReader;

/// A batch's compression codec: bits 0-2 of its attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    /// The codec with Kafka's id, or `None` for ids 5-7, which no Kafka
    /// version defines.
    pub fn from_id(id: i16) -> Option<Codec> {
        match id {
            0 => Some(Codec::None),
            1 => Some(Codec::Gzip),
            2 => Some(Codec::Snappy),
            3 => Some(Codec::Lz4),
            4 => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// Kafka's id for the codec (attribute bits 0-2).
    pub fn id(self) -> i16 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

/// Smallest zstd window cap: 2^23 bytes, the largest window zstd's levels
/// 1–19 choose (`ZSTD_defaultCParameters`, inputs of unknown size).
const ZSTD_WINDOW_LOG_FLOOR: u32 = 23;
/// Largest zstd window cap: 2^27 bytes, `ZSTD_WINDOWLOG_LIMIT_DEFAULT`.
const ZSTD_WINDOW_LOG_CEILING: u32 = 27;

/// The base-2 log of the largest zstd window (`ZSTD_d_windowLogMax`) a batch
/// that may decompress to `decompressed_max_bytes` is allowed: the bits
/// that size needs, within 23..=27 (see the module docs).
pub fn zstd_window_log_max(decompressed_max_bytes: u64) -> u32 {
    let bits = u64::BITS - decompressed_max_bytes.saturating_sub(1).leading_zeros();
    bits.clamp(ZSTD_WINDOW_LOG_FLOOR, ZSTD_WINDOW_LOG_CEILING)
}

/// Streams the decompressed records section of one batch.
pub struct Decompressor<'a> {
    inner: Inner<'a>,
}

enum Inner<'a> {
    Gzip(flate2::bufread::MultiGzDecoder<&'a [u8]>),
    Snappy(SnappyReader<'a>),
    Lz4(lz4::Decoder<&'a [u8]>),
    Zstd(zstd::stream::read::Decoder<'static, &'a [u8]>),
}

impl<'a> Decompressor<'a> {
    /// A decompressor for `compressed`, whose output the caller stops at
    /// `decompressed_max_bytes`; `codec` must not be [`Codec::None`].
    ///
    /// Errors: the stream's header is malformed (lz4, snappy framing) or,
    /// for zstd, the decoder cannot be set up.
    pub fn new(
        codec: Codec,
        compressed: &'a [u8],
        decompressed_max_bytes: u64,
    ) -> io::Result<Decompressor<'a>> {
        let inner = match codec {
            Codec::None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an uncompressed batch has nothing to decompress",
                ));
            }
            Codec::Gzip => Inner::Gzip(flate2::bufread::MultiGzDecoder::new(compressed)),
            Codec::Snappy => Inner::Snappy(SnappyReader::new(compressed)?),
            Codec::Lz4 => Inner::Lz4(lz4::Decoder::new(compressed)?),
            Codec::Zstd => {
                let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed)?;
                decoder.window_log_max(zstd_window_log_max(decompressed_max_bytes))?;
                Inner::Zstd(decoder)
            }
        };
        Ok(Decompressor { inner })
    }

    /// Read decompressed bytes; 0 at the end of the stream.
    pub fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Gzip(decoder) => decoder.read(out),
            Inner::Snappy(reader) => reader.read(out),
            Inner::Lz4(decoder) => decoder.read(out),
            Inner::Zstd(decoder) => decoder.read(out),
        }
    }

    /// After [`Decompressor::read`] returned 0: check that the compressed
    /// stream ended where it should and nothing follows it. (The lz4 reader
    /// reports a frame cut short as a plain end, so it is checked here.)
    pub fn finish(self) -> io::Result<()> {
        let rest = match self.inner {
            Inner::Gzip(decoder) => decoder.into_inner(),
            Inner::Snappy(_) => &[],
            Inner::Lz4(decoder) => {
                let (rest, ended) = decoder.finish();
                ended.map_err(|source| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("lz4 frame cut short: {source}"),
                    )
                })?;
                rest
            }
            Inner::Zstd(decoder) => decoder.finish(),
        };
        if rest.is_empty() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} bytes follow the compressed stream", rest.len()),
            ))
        }
    }
}
