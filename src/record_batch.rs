//! Kafka RecordBatch v2 ("magic 2"): the unit Sluice stores.
//!
//! A producer's batch is stored byte for byte, except `baseOffset` and
//! `partitionLeaderEpoch`, which the broker assigns and which lie outside the
//! batch CRC. This module reads and checks the fixed 61-byte header, patches
//! the two broker-owned fields, and builds batches for tests and the load
//! generator. All fields are big-endian, as Kafka defines them.
//!
//! Invariant: a [`ValidatedBatch`] has a correct length, magic 2, a CRC32C that
//! matches its bytes, and a non-negative `lastOffsetDelta`. Storage only accepts
//! validated batches, so recovery can trust the CRC to find torn writes.
//! [`ValidatedBatch::validate`], which Produce uses, also checks the header
//! fields Kafka checks and walks every record ([`record_walk`]), so what a
//! client stores can be decoded by every reader.
//!
//! Batches written before those checks existed may still be on disk, so
//! every reader of records ([`walk_records`]) runs the same bounded walk and
//! treats a bad batch as an error to report, never as trusted input.

pub(crate) mod compressor;
pub mod control;
pub(crate) mod decompressor;
pub mod record_walk;
mod snappy_reader;

use std::ops::ControlFlow;

use thiserror::Error;

pub use decompressor::Codec;
use record_walk::{RecordView, RecordsError, RecordsSummary, WalkInput, Walked};

/// Length of the fixed RecordBatch v2 header, up to and including `recordsCount`.
pub const HEADER_BYTES: usize = 61;
/// Bytes before `partitionLeaderEpoch` that `batchLength` does not count.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The only record format Sluice stores.
pub const MAGIC_V2: i8 = 2;

const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
/// The CRC covers everything from `attributes` to the end of the batch.
pub const CRC_COVERED_FROM: usize = 21;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const RECORDS_COUNT_AT: usize = 57;

const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;

pub(crate) const ATTRIBUTE_COMPRESSION_MASK: i16 = 0x07;
const ATTRIBUTE_LOG_APPEND_TIME: i16 = 0x08;
pub(crate) const ATTRIBUTE_TRANSACTIONAL: i16 = 0x10;
pub(crate) const ATTRIBUTE_CONTROL: i16 = 0x20;

/// What a batch is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// The whole batch, compressed (Kafka `max.message.bytes`).
    pub size_max_bytes: usize,
    /// The records section once decompressed.
    pub decompressed_max_bytes: u64,
}

impl BatchLimits {
    /// `max_message_bytes` for the batch and `decompressed_ratio_max` times
    /// it for the decompressed records (`storage.decompressed_batch_ratio_max`).
    pub fn new(max_message_bytes: usize, decompressed_ratio_max: u32) -> BatchLimits {
        BatchLimits {
            size_max_bytes: max_message_bytes,
            decompressed_max_bytes: (max_message_bytes as u64)
                .saturating_mul(u64::from(decompressed_ratio_max)),
        }
    }

    /// No limit: for batches this process built itself (the load generator).
    pub fn unlimited() -> BatchLimits {
        BatchLimits {
            size_max_bytes: usize::MAX,
            decompressed_max_bytes: u64::MAX,
        }
    }
}

/// Why a batch is refused. The Kafka error code for each is in
/// `kafka::error_code::for_batch`.
#[derive(Debug, Error)]
pub enum BatchError {
    #[error("record batch is {len} bytes, shorter than the {HEADER_BYTES}-byte v2 header")]
    TooShort { len: usize },
    #[error(
        "record batch declares batchLength {declared} but {actual} bytes follow the length field"
    )]
    LengthMismatch { declared: i64, actual: usize },
    #[error("record batch has magic {found}; only magic 2 (Kafka 0.11+) is supported")]
    UnsupportedMagic { found: i8 },
    #[error(
        "record batch CRC32C mismatch: header says {expected:#010x}, bytes hash to {computed:#010x}"
    )]
    CrcMismatch { expected: u32, computed: u32 },
    #[error("record batch has lastOffsetDelta {found}; it must be >= 0")]
    InvalidLastOffsetDelta { found: i32 },
    #[error("record batch has recordsCount {found}; it must be >= 0")]
    InvalidRecordsCount { found: i32 },
    #[error("record batch is {size} bytes, above the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("record batch has recordsCount {found}; a produced batch holds at least one record")]
    NoRecords { found: i32 },
    #[error(
        "record batch has recordsCount {records_count} but lastOffsetDelta {last_offset_delta}; \
         the count must be lastOffsetDelta + 1"
    )]
    CountMismatch {
        records_count: i32,
        last_offset_delta: i32,
    },
    #[error(
        "record batch uses compression codec id {id}; Kafka defines 0 (none), 1 (gzip), \
         2 (snappy), 3 (lz4) and 4 (zstd)"
    )]
    UnsupportedCompression { id: i16 },
    #[error("record batch is a control batch; clients may not write control records")]
    ControlBatch,
    #[error(
        "record batch has timestamp type LogAppendTime; a producer must send CreateTime and \
         leave LogAppendTime to the broker"
    )]
    LogAppendTimeFromClient,
    #[error("record batch has baseOffset {found}; a produced batch must have baseOffset 0")]
    NonZeroBaseOffset { found: i64 },
    #[error("record batch has producerId {producer_id} but baseSequence {base_sequence}")]
    MissingSequence {
        producer_id: i64,
        base_sequence: i32,
    },
    #[error(transparent)]
    Records(#[from] RecordsError),
    /// The broker's own recompression failed (a bug or resource fault, not
    /// the client's).
    #[error("recompressing the batch with {codec} failed: {source}")]
    Recompress {
        codec: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The header fields storage needs, decoded once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// The broker's `partitionLeaderEpoch` field (outside the CRC); a held
    /// frame's timer batch names its visible batch's CRC here (issue 18).
    pub partition_leader_epoch: i32,
    /// The stored CRC-32C of the batch from its attributes on.
    pub crc: u32,
    pub last_offset_delta: i32,
    pub base_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub records_count: i32,
    pub attributes: i16,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl BatchHeader {
    /// Decode the header fields without checking anything but the length.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < HEADER_BYTES {
            return Err(BatchError::TooShort { len: bytes.len() });
        }
        Ok(BatchHeader {
            base_offset: read_i64(bytes, BASE_OFFSET_AT),
            partition_leader_epoch: read_i32(bytes, LEADER_EPOCH_AT),
            crc: read_u32(bytes, CRC_AT),
            last_offset_delta: read_i32(bytes, LAST_OFFSET_DELTA_AT),
            base_timestamp_ms: read_i64(bytes, BASE_TIMESTAMP_AT),
            max_timestamp_ms: read_i64(bytes, MAX_TIMESTAMP_AT),
            records_count: read_i32(bytes, RECORDS_COUNT_AT),
            attributes: read_i16(bytes, ATTRIBUTES_AT),
            producer_id: read_i64(bytes, PRODUCER_ID_AT),
            producer_epoch: read_i16(bytes, PRODUCER_EPOCH_AT),
            base_sequence: read_i32(bytes, BASE_SEQUENCE_AT),
        })
    }

    /// The codec id, bits 0-2 of the attributes (5-7 are undefined).
    pub fn compression_codec(&self) -> i16 {
        self.attributes & ATTRIBUTE_COMPRESSION_MASK
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTRIBUTE_CONTROL != 0
    }

    pub fn uses_log_append_time(&self) -> bool {
        self.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0
    }

    /// Attribute bit 4: the batch belongs to a transaction (KIP-98).
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTRIBUTE_TRANSACTIONAL != 0
    }

    /// Whether an idempotent producer stamped the batch (producerId >= 0).
    pub fn has_producer(&self) -> bool {
        self.producer_id >= 0
    }

    /// The sequence of the batch's last record. Sequences wrap from
    /// `i32::MAX` to 0, as Kafka's `DefaultRecordBatch.incrementSequence`.
    pub fn last_sequence(&self) -> i32 {
        increment_sequence(self.base_sequence, self.last_offset_delta)
    }
}

/// `sequence + increment`, wrapping from `i32::MAX` to 0 as Kafka's
/// producers and brokers do (`DefaultRecordBatch.incrementSequence`).
pub fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

/// A batch whose structure and CRC have been checked (see module invariant).
#[derive(Clone, Copy, Debug)]
pub struct ValidatedBatch<'a> {
    bytes: &'a [u8],
    header: BatchHeader,
    /// What the walk of its records found, when they were walked.
    records: Option<RecordsSummary>,
}

impl<'a> ValidatedBatch<'a> {
    /// Everything Produce requires of a batch from a client, in the order
    /// Kafka checks it (`UnifiedLog.analyzeAndValidateRecords`, then
    /// `LogValidator.validateBatch` and its record iterators):
    ///
    /// 1. the frame: length, magic 2, `limits.size_max_bytes`, CRC32C;
    /// 2. the header: baseOffset 0, recordsCount > 0 and equal to
    ///    lastOffsetDelta + 1, a codec id Kafka defines, no control flag, no
    ///    LogAppendTime flag (the broker sets it), a baseSequence when there
    ///    is a producerId;
    /// 3. the records, walked once (decompressing through a fixed buffer,
    ///    at most `limits.decompressed_max_bytes`): see [`record_walk`].
    pub fn validate(bytes: &'a [u8], limits: &BatchLimits) -> Result<Self, BatchError> {
        let mut batch = ValidatedBatch::frame_only(bytes, limits.size_max_bytes)?;
        check_client_header(&batch.header)?;
        let walked = walk_records(bytes, limits.decompressed_max_bytes, |_| {
            ControlFlow::Continue(())
        })?;
        batch.records = match walked {
            Walked::Complete(summary) => Some(summary),
            Walked::Stopped => None,
        };
        Ok(batch)
    }

    /// Only what storage relies on: length, magic, `size_limit_bytes`,
    /// CRC32C and non-negative counts. The records are not read. For batches
    /// whose records are checked elsewhere or not needed (tests that store
    /// what a client may not, as an older build did).
    pub fn frame_only(bytes: &'a [u8], size_limit_bytes: usize) -> Result<Self, BatchError> {
        let header = check_structure(bytes)?;
        if bytes.len() > size_limit_bytes {
            return Err(BatchError::TooLarge {
                size: bytes.len(),
                limit: size_limit_bytes,
            });
        }
        let expected = read_u32(bytes, CRC_AT);
        let computed = crc32c::crc32c(&bytes[CRC_COVERED_FROM..]);
        if expected != computed {
            return Err(BatchError::CrcMismatch { expected, computed });
        }
        Ok(ValidatedBatch {
            bytes,
            header,
            records: None,
        })
    }

    /// A batch that passed [`ValidatedBatch::validate`] elsewhere (another
    /// shard) and has not changed since: only the cheap structure checks run.
    pub(crate) fn revalidated(bytes: &'a [u8]) -> Result<Self, BatchError> {
        let header = check_structure(bytes)?;
        Ok(ValidatedBatch {
            bytes,
            header,
            records: None,
        })
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// What [`ValidatedBatch::validate`] found walking the records; `None`
    /// when they were not walked.
    pub fn records(&self) -> Option<&RecordsSummary> {
        self.records.as_ref()
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Everything but the CRC and the size limit: cheap checks shared by produce
/// validation and recovery.
pub fn check_structure(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    let declared = i64::from(read_i32(bytes, BATCH_LENGTH_AT));
    let actual = bytes.len() - LOG_OVERHEAD_BYTES;
    if declared != actual as i64 {
        return Err(BatchError::LengthMismatch { declared, actual });
    }
    let magic = bytes[MAGIC_AT] as i8;
    if magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic { found: magic });
    }
    if header.last_offset_delta < 0 {
        return Err(BatchError::InvalidLastOffsetDelta {
            found: header.last_offset_delta,
        });
    }
    if header.records_count < 0 {
        return Err(BatchError::InvalidRecordsCount {
            found: header.records_count,
        });
    }
    Ok(header)
}

/// The header checks Kafka makes of a batch from a client
/// (`LogValidator.validateBatch`, `UnifiedLog.analyzeAndValidateRecords`,
/// `DefaultRecordBatch.compressionType`).
fn check_client_header(header: &BatchHeader) -> Result<(), BatchError> {
    if header.base_offset != 0 {
        return Err(BatchError::NonZeroBaseOffset {
            found: header.base_offset,
        });
    }
    if header.records_count <= 0 {
        return Err(BatchError::NoRecords {
            found: header.records_count,
        });
    }
    if i64::from(header.records_count) != i64::from(header.last_offset_delta) + 1 {
        return Err(BatchError::CountMismatch {
            records_count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    if Codec::from_id(header.compression_codec()).is_none() {
        return Err(BatchError::UnsupportedCompression {
            id: header.compression_codec(),
        });
    }
    if header.is_control() {
        return Err(BatchError::ControlBatch);
    }
    if header.uses_log_append_time() {
        return Err(BatchError::LogAppendTimeFromClient);
    }
    if header.producer_id >= 0 && header.base_sequence < 0 {
        return Err(BatchError::MissingSequence {
            producer_id: header.producer_id,
            base_sequence: header.base_sequence,
        });
    }
    Ok(())
}

/// Walk the records of the batch `bytes` (whose frame is known whole),
/// decompressing at most `decompressed_max_bytes`, calling `visit` for each
/// record until it breaks. The one way the broker reads inside a batch:
/// Produce validation, ListOffsets by time and the offsets-topic replay.
pub fn walk_records<'a>(
    bytes: &'a [u8],
    decompressed_max_bytes: u64,
    visit: impl FnMut(&RecordView<'a>) -> ControlFlow<()>,
) -> Result<Walked, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    let codec =
        Codec::from_id(header.compression_codec()).ok_or(BatchError::UnsupportedCompression {
            id: header.compression_codec(),
        })?;
    let input = WalkInput {
        records: &bytes[HEADER_BYTES..],
        codec,
        records_count: header.records_count,
        first_timestamp_ms: header.base_timestamp_ms,
        decompressed_max_bytes,
    };
    Ok(record_walk::walk(input, visit)?)
}

/// The batch `bytes` (validated, with records decompressing to at most
/// `decompressed_max_bytes`) with its records section recompressed with
/// `codec` at `level`, or `None` when it already uses `codec` (Kafka keeps
/// such a batch as sent, whatever its level). Every header field but the
/// codec bits of the attributes is kept (producer id, epoch, sequence,
/// transactional flag, timestamps), and the records are the same bytes,
/// so offsets, timestamps, keys, values and headers are unchanged; the
/// CRC is recomputed. The broker's base offset and leader epoch are left
/// for the append to set. Kafka's `LogValidator` rebuilds the batch the
/// same way when the topic's codec differs from the producer's.
pub fn recompress(
    bytes: &[u8],
    codec: Codec,
    level: i32,
    decompressed_max_bytes: u64,
) -> Result<Option<Vec<u8>>, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    let source_id = header.compression_codec();
    let source =
        Codec::from_id(source_id).ok_or(BatchError::UnsupportedCompression { id: source_id })?;
    if source == codec {
        return Ok(None);
    }
    let records = &bytes[HEADER_BYTES..];
    let plain;
    let plain_records = match source {
        Codec::None => records,
        _ => {
            plain = decompress_all(source, records, decompressed_max_bytes)?;
            &plain[..]
        }
    };
    let compressed = compressor::compress(codec, level, plain_records).map_err(|source| {
        BatchError::Recompress {
            codec: codec.name(),
            source,
        }
    })?;
    let fields = HeaderFields {
        attributes: (header.attributes & !ATTRIBUTE_COMPRESSION_MASK) | codec.id(),
        ..HeaderFields::of(&header)
    };
    Ok(Some(assemble(&fields, &compressed)))
}

/// The whole decompressed records section, refusing more than
/// `decompressed_max_bytes` (the output grows as it is read).
pub(crate) fn decompress_all(
    codec: Codec,
    records: &[u8],
    decompressed_max_bytes: u64,
) -> Result<Vec<u8>, BatchError> {
    let failed = |source: std::io::Error| {
        BatchError::Records(RecordsError::Decompress {
            codec: codec.name(),
            source,
        })
    };
    let mut decompressor =
        decompressor::Decompressor::new(codec, records, decompressed_max_bytes).map_err(failed)?;
    let mut out = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let read = decompressor.read(&mut chunk).map_err(failed)?;
        if read == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..read]);
        if out.len() as u64 > decompressed_max_bytes {
            return Err(BatchError::Records(RecordsError::DecompressedTooLarge {
                limit: decompressed_max_bytes,
            }));
        }
    }
    decompressor.finish().map_err(failed)?;
    Ok(out)
}

/// Set a CreateTime batch's `maxTimestamp` to what its records hold and
/// recompute the CRC, as Kafka does (`LogValidator` calls
/// `setMaxTimestamp` with the records' maximum).
pub fn set_max_timestamp(bytes: &mut [u8], max_timestamp_ms: i64) {
    assert!(bytes.len() >= HEADER_BYTES, "batch shorter than its header");
    bytes[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&max_timestamp_ms.to_be_bytes());
    recompute_crc(bytes);
}

/// True when the CRC32C stored in the batch matches its covered bytes.
/// The CRC32C a batch's header states (not checked). Panics on fewer than
/// [`HEADER_BYTES`] bytes.
pub fn stored_crc(bytes: &[u8]) -> u32 {
    assert!(bytes.len() >= HEADER_BYTES, "a batch header");
    read_u32(bytes, CRC_AT)
}

pub fn crc_matches(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_BYTES
        && read_u32(bytes, CRC_AT) == crc32c::crc32c(&bytes[CRC_COVERED_FROM..])
}

/// Declared total size of the batch starting at `bytes` (header included), if
/// the length field is readable. Used to walk concatenated batches.
pub fn declared_size(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < LOG_OVERHEAD_BYTES {
        return None;
    }
    let declared = read_i32(bytes, BATCH_LENGTH_AT);
    usize::try_from(declared)
        .ok()
        .map(|len| len + LOG_OVERHEAD_BYTES)
}

/// Stamp a batch with the broker's time (`message.timestamp.type =
/// LogAppendTime`): set the timestamp-type attribute and `maxTimestamp`, then
/// recompute the CRC, as Kafka does. Consumers then read the batch's
/// timestamp for every record.
pub fn set_log_append_time(bytes: &mut [u8], now_ms: i64) {
    assert!(bytes.len() >= HEADER_BYTES, "batch shorter than its header");
    let attributes = read_i16(bytes, ATTRIBUTES_AT) | ATTRIBUTE_LOG_APPEND_TIME;
    bytes[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    bytes[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&now_ms.to_be_bytes());
    recompute_crc(bytes);
}

/// Recompute the batch CRC after changing bytes it covers.
pub fn recompute_crc(bytes: &mut [u8]) {
    assert!(bytes.len() >= HEADER_BYTES, "batch shorter than its header");
    let crc = crc32c::crc32c(&bytes[CRC_COVERED_FROM..]);
    bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Overwrite the fields an idempotent producer stamps (KIP-98: `producerId`,
/// `producerEpoch`, `baseSequence`; -1, -1, -1 for none). They lie inside
/// the CRC: the caller recomputes it ([`recompute_crc`]) once it has changed
/// everything it means to.
pub fn assign_producer_fields(
    bytes: &mut [u8],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) {
    assert!(bytes.len() >= HEADER_BYTES, "batch shorter than its header");
    bytes[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer_id.to_be_bytes());
    bytes[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&producer_epoch.to_be_bytes());
    bytes[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&base_sequence.to_be_bytes());
}

/// Set or clear the transactional attribute (0x10, KIP-98: the batch
/// belongs to its producer's open transaction). Inside the CRC, like
/// [`assign_producer_fields`]: the caller recomputes it.
pub fn assign_transactional(bytes: &mut [u8], transactional: bool) {
    assert!(bytes.len() >= HEADER_BYTES, "batch shorter than its header");
    let attributes = read_i16(bytes, ATTRIBUTES_AT);
    let attributes = if transactional {
        attributes | ATTRIBUTE_TRANSACTIONAL
    } else {
        attributes & !ATTRIBUTE_TRANSACTIONAL
    };
    bytes[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
}

/// Overwrite the broker-owned fields (outside the CRC) in a stored copy, or
/// in a copy of just its first [`CRC_COVERED_FROM`] bytes.
pub fn assign_broker_fields(bytes: &mut [u8], base_offset: i64, leader_epoch: i32) {
    assert!(
        bytes.len() >= LEADER_EPOCH_AT + 4,
        "too short to hold the broker fields"
    );
    bytes[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
    bytes[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

fn read_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_i64(bytes: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// One record for [`BatchBuilder`].
#[derive(Clone, Debug, Default)]
pub struct RecordSpec<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub timestamp_delta_ms: i64,
}

/// Builds uncompressed RecordBatch v2 bytes, as a producer would send them.
///
/// Used by tests and the load generator; the broker never re-encodes batches.
#[derive(Debug)]
pub struct BatchBuilder {
    base_timestamp_ms: i64,
    attributes: i16,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records: Vec<u8>,
    records_count: i32,
    max_timestamp_delta_ms: i64,
}

impl BatchBuilder {
    pub fn new(base_timestamp_ms: i64) -> Self {
        BatchBuilder {
            base_timestamp_ms,
            attributes: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records: Vec::new(),
            records_count: 0,
            max_timestamp_delta_ms: 0,
        }
    }

    pub fn push(&mut self, record: RecordSpec<'_>) -> &mut Self {
        let mut body = Vec::with_capacity(16 + record.value.map_or(0, <[u8]>::len));
        body.push(0); // record attributes: unused in v2
        put_varlong(&mut body, record.timestamp_delta_ms);
        put_varint(&mut body, self.records_count);
        put_optional_bytes(&mut body, record.key);
        put_optional_bytes(&mut body, record.value);
        put_varint(&mut body, 0); // header count
        let body_len = i32::try_from(body.len()).expect("record under 2 GiB");
        put_varint(&mut self.records, body_len);
        self.records.extend_from_slice(&body);
        self.records_count += 1;
        self.max_timestamp_delta_ms = self.max_timestamp_delta_ms.max(record.timestamp_delta_ms);
        self
    }

    /// Stamp the batch as an idempotent producer does (KIP-98): its id,
    /// epoch and the sequence of the first record.
    pub fn producer(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> &mut Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Mark the batch as part of a transaction (attribute bit 4, KIP-98).
    pub fn transactional(&mut self) -> &mut Self {
        self.attributes |= ATTRIBUTE_TRANSACTIONAL;
        self
    }

    pub fn records_count(&self) -> i32 {
        self.records_count
    }

    /// Size of the batch [`BatchBuilder::build`] would produce now.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + self.records.len()
    }

    /// Encode the batch with base offset 0, as producers send it.
    pub fn build(&self) -> Vec<u8> {
        assert!(
            self.records_count > 0,
            "a record batch holds at least one record"
        );
        assemble(&self.header_fields(), &self.records)
    }

    /// The records section as [`BatchBuilder::build`] encodes it
    /// (uncompressed), for a caller that compresses it itself.
    pub fn records(&self) -> &[u8] {
        &self.records
    }

    /// The header fields [`BatchBuilder::build`] writes.
    pub fn header_fields(&self) -> HeaderFields {
        HeaderFields {
            attributes: self.attributes,
            last_offset_delta: self.records_count - 1,
            base_timestamp_ms: self.base_timestamp_ms,
            max_timestamp_ms: self.base_timestamp_ms + self.max_timestamp_delta_ms,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            records_count: self.records_count,
        }
    }
}

/// Header fields for [`assemble`]; base offset 0, no leader epoch; lengths
/// and CRC are computed. A batch without a producer has id, epoch and base
/// sequence -1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderFields {
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl HeaderFields {
    /// The fields of a stored batch's header, to re-encode it.
    pub fn of(header: &BatchHeader) -> HeaderFields {
        HeaderFields {
            attributes: header.attributes,
            last_offset_delta: header.last_offset_delta,
            base_timestamp_ms: header.base_timestamp_ms,
            max_timestamp_ms: header.max_timestamp_ms,
            producer_id: header.producer_id,
            producer_epoch: header.producer_epoch,
            base_sequence: header.base_sequence,
            records_count: header.records_count,
        }
    }
}

/// Encode a batch around a records section (compressed or not, as
/// `fields.attributes` says), as a producer would send it. The fields are
/// written as given, even when they disagree with the records: tests use
/// this to build what a bad client sends.
pub fn assemble(fields: &HeaderFields, records: &[u8]) -> Vec<u8> {
    let total = HEADER_BYTES + records.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&0i64.to_be_bytes());
    let batch_length = i32::try_from(total - LOG_OVERHEAD_BYTES).expect("batch under 2 GiB");
    out.extend_from_slice(&batch_length.to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&0u32.to_be_bytes()); // crc, patched below
    out.extend_from_slice(&fields.attributes.to_be_bytes());
    out.extend_from_slice(&fields.last_offset_delta.to_be_bytes());
    out.extend_from_slice(&fields.base_timestamp_ms.to_be_bytes());
    out.extend_from_slice(&fields.max_timestamp_ms.to_be_bytes());
    out.extend_from_slice(&fields.producer_id.to_be_bytes());
    out.extend_from_slice(&fields.producer_epoch.to_be_bytes());
    out.extend_from_slice(&fields.base_sequence.to_be_bytes());
    out.extend_from_slice(&fields.records_count.to_be_bytes());
    out.extend_from_slice(records);
    recompute_crc(&mut out);
    out
}

pub(crate) fn put_varint(out: &mut Vec<u8>, value: i32) {
    put_unsigned_varint(out, ((value << 1) ^ (value >> 31)) as u32 as u64);
}

pub(crate) fn put_varlong(out: &mut Vec<u8>, value: i64) {
    put_unsigned_varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

fn put_unsigned_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(crate) fn put_optional_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(bytes) => {
            put_varint(out, i32::try_from(bytes.len()).expect("field under 2 GiB"));
            out.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BatchLimits {
        BatchLimits::new(1 << 20, 32)
    }

    fn sample() -> Vec<u8> {
        let mut builder = BatchBuilder::new(1_700_000_000_000);
        builder.push(RecordSpec {
            key: Some(b"k"),
            value: Some(b"hello"),
            timestamp_delta_ms: 0,
        });
        builder.push(RecordSpec {
            key: None,
            value: Some(b"world"),
            timestamp_delta_ms: 7,
        });
        builder.build()
    }

    #[test]
    fn built_batch_validates_and_reports_its_header() {
        let bytes = sample();
        let batch = ValidatedBatch::validate(&bytes, &limits()).unwrap();
        assert_eq!(batch.header().last_offset_delta, 1);
        assert_eq!(batch.header().records_count, 2);
        assert_eq!(batch.header().max_timestamp_ms, 1_700_000_000_007);
        assert_eq!(declared_size(&bytes), Some(bytes.len()));
    }

    #[test]
    fn flipped_payload_bit_fails_the_crc() {
        let mut bytes = sample();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        assert!(matches!(
            ValidatedBatch::validate(&bytes, &limits()),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn broker_fields_are_outside_the_crc() {
        let mut bytes = sample();
        assign_broker_fields(&mut bytes, 42, 7);
        let batch = ValidatedBatch::frame_only(&bytes, 1 << 20).unwrap();
        assert_eq!(batch.header().base_offset, 42);
    }

    #[test]
    fn wrong_magic_length_and_size_are_rejected() {
        let mut bytes = sample();
        bytes[MAGIC_AT] = 1;
        assert!(matches!(
            ValidatedBatch::validate(&bytes, &limits()),
            Err(BatchError::UnsupportedMagic { found: 1 })
        ));
        let bytes = sample();
        assert!(matches!(
            ValidatedBatch::validate(&bytes[..bytes.len() - 1], &limits()),
            Err(BatchError::LengthMismatch { .. })
        ));
        assert!(matches!(
            ValidatedBatch::validate(&bytes, &BatchLimits::new(10, 4)),
            Err(BatchError::TooLarge { .. })
        ));
        assert!(matches!(
            ValidatedBatch::validate(&bytes[..20], &limits()),
            Err(BatchError::TooShort { len: 20 })
        ));
    }
}
