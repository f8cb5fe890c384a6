//! Compress a batch's records section, for the broker's recompression
//! (a topic's `compression.type` other than `producer`).
//!
//! Each codec is written as Kafka's Java client writes it, so every client
//! reads the result: gzip as one RFC 1952 member at the topic's
//! `compression.gzip.level`; snappy in snappy-java's framing (a 16-byte
//! header, then 32 KiB blocks each with a big-endian length), which
//! librdkafka, kafka-python and the Java client all read; lz4 as an LZ4
//! frame of independent 64 KiB blocks without a content checksum
//! (`Lz4BlockOutputStream`), fast mode at Kafka's default level 9 and
//! high-compression mode at the others; zstd as one frame at the topic's
//! `compression.zstd.level`. The output grows as the codec writes it; the
//! input is a records section the caller has already bounded.

use std::io::{self, Write};

use super::decompressor::Codec;

/// snappy-java's stream header: magic, version 1, compatible version 1.
const SNAPPY_JAVA_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// snappy-java's block size (`SnappyOutputStream`'s default).
const SNAPPY_JAVA_BLOCK_BYTES: usize = 32 * 1024;
/// Kafka's default lz4 level, at which it uses lz4's fast compressor.
const LZ4_KAFKA_DEFAULT_LEVEL: i32 = 9;
/// lz4's fast mode (LZ4F levels below 3).
const LZ4_FAST_LEVEL: u32 = 0;

/// `records` compressed with `codec` at `level` (Kafka's level for it;
/// -1 for gzip's default; ignored by snappy and none).
pub fn compress(codec: Codec, level: i32, records: &[u8]) -> io::Result<Vec<u8>> {
    match codec {
        Codec::None => Ok(records.to_vec()),
        Codec::Gzip => {
            let level = u32::try_from(level)
                .ok()
                .filter(|level| (1..=9).contains(level))
                .map_or_else(flate2::Compression::default, flate2::Compression::new);
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
            encoder.write_all(records)?;
            encoder.finish()
        }
        Codec::Snappy => snappy_java(records),
        Codec::Lz4 => {
            let level = match level {
                LZ4_KAFKA_DEFAULT_LEVEL => LZ4_FAST_LEVEL,
                other => u32::try_from(other).unwrap_or(LZ4_FAST_LEVEL),
            };
            let mut encoder = lz4::EncoderBuilder::new()
                .block_size(lz4::BlockSize::Max64KB)
                .block_mode(lz4::BlockMode::Independent)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .level(level)
                .build(Vec::new())?;
            encoder.write_all(records)?;
            let (out, finished) = encoder.finish();
            finished.map(|()| out)
        }
        Codec::Zstd => zstd::bulk::compress(records, level),
    }
}

fn snappy_java(records: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = snap::raw::Encoder::new();
    let mut out = SNAPPY_JAVA_HEADER.to_vec();
    for block in records.chunks(SNAPPY_JAVA_BLOCK_BYTES) {
        let compressed = encoder
            .compress_vec(block)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        let length = u32::try_from(compressed.len()).map_err(|error| {
            io::Error::new(io::ErrorKind::InvalidData, format!("snappy block: {error}"))
        })?;
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&compressed);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::decompressor::Decompressor;
    use super::*;

    fn round_trip(codec: Codec, level: i32, data: &[u8]) -> Vec<u8> {
        let compressed = compress(codec, level, data).unwrap();
        let mut decompressor = Decompressor::new(codec, &compressed, 1 << 30).unwrap();
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let read = decompressor.read(&mut chunk).unwrap();
            if read == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..read]);
        }
        decompressor.finish().unwrap();
        out
    }

    #[test]
    fn every_codec_reads_back_what_it_wrote_at_every_kind_of_level() {
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 1000) as u8)
            .collect();
        for (codec, levels) in [
            (Codec::Gzip, &[-1, 1, 9][..]),
            (Codec::Snappy, &[0][..]),
            (Codec::Lz4, &[1, 9, 17][..]),
            (Codec::Zstd, &[-5, 3, 19][..]),
        ] {
            for &level in levels {
                assert_eq!(round_trip(codec, level, &data), data, "{codec:?} {level}");
            }
        }
        assert_eq!(round_trip(Codec::Snappy, 0, b""), b"");
    }
}
