//! Reading Fetch v11 responses as they stream off a consumer's socket.
//!
//! The records of each fetched partition are either kept, read batch by
//! batch into one reused buffer (the largest batch's size, so it stays in
//! the CPU's cache) as a streaming client hands each batch on, or
//! discarded: each batch is
//! counted from its 61-byte header and the rest of it is dropped inside the
//! kernel by `recv` with `MSG_TRUNC`, which on a TCP socket discards the
//! bytes instead of copying them out (tcp(7); `tcp_recvmsg` skips the copy).
//! Discarding measures what the broker can deliver rather than how fast the
//! load generator copies memory: on a 2-core machine the copy of 1 GB of
//! freshly DMA'd page-cache pages costs the consumer 1–2 CPU seconds,
//! taken from the same cores as the broker (benches/README.md, issue 19).

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use super::batch::read_stamp;
use super::wire;
use crate::admin::describe_error;
use crate::record_batch::{self, BatchHeader, HEADER_BYTES};

/// What becomes of the records of a fetched partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Records {
    /// Read into memory, as a real client does; with `stamps`, each batch's
    /// send stamp is read from its first key (see [`read_stamp`]).
    Keep { stamps: bool },
    /// Counted from the batch headers; everything else is dropped in the
    /// kernel without being copied.
    Discard,
}

/// One whole batch of a fetched partition.
#[derive(Debug, PartialEq, Eq)]
pub struct SeenBatch {
    /// The offset after the batch's last record.
    pub next_offset: i64,
    pub records: u64,
    /// The batch's bytes, its 12-byte log overhead included.
    pub bytes: u64,
    /// The send time stamped into the first key, in nanoseconds since the
    /// epoch (only with `Records::Keep { stamps: true }`).
    pub stamp: Option<u64>,
}

/// A partition's part of a Fetch response.
#[derive(Debug)]
pub struct FetchedPartition {
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    /// Whole batches in order. A partial batch at the end, cut by the
    /// fetch's byte limit, is left out, as Kafka clients skip it.
    pub batches: Vec<SeenBatch>,
}

/// Bytes read ahead for the small fields of a response; a skip at least
/// this long goes to the kernel instead of through the buffer.
const READ_AHEAD_BYTES: usize = 8 << 10;

/// The least a kept batch's buffer grows by at a time.
const GROWTH_STEP_BYTES: usize = 64 << 10;

/// A consumer's connection: requests are written to [`Self::stream`],
/// responses read with [`Self::read_fetch_response`] through a small
/// read-ahead buffer.
pub struct FetchConnection {
    stream: TcpStream,
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
    /// Kept records, reused from one response to the next.
    records: Vec<u8>,
}

impl FetchConnection {
    pub fn new(stream: TcpStream) -> Self {
        FetchConnection {
            stream,
            buffer: vec![0; READ_AHEAD_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            records: Vec::new(),
        }
    }

    /// The socket, for writing requests; reading from it directly would
    /// lose what the buffer holds.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Read one Fetch v11 response frame, size prefix included; returns its
    /// correlation id and partitions. Errors: the connection closing, a
    /// frame over 1 GiB or one whose fields run past its end, a top-level
    /// error code; the connection is then out of step and must be dropped.
    pub fn read_fetch_response(
        &mut self,
        records: Records,
    ) -> anyhow::Result<(i32, Vec<FetchedPartition>)> {
        let mut prefix = [0u8; 4];
        self.read_exact(&mut prefix)?;
        let size = wire::frame_size(prefix)?;
        let mut frame = Frame {
            connection: self,
            size,
            left: size,
        };
        frame.parse(records)
    }

    fn fill(&mut self) -> io::Result<()> {
        debug_assert_eq!(self.start, self.end, "fill only an empty buffer");
        let read = loop {
            match self.stream.read(&mut self.buffer) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.map_err(wire::explain_timeout)?,
            }
        };
        if read == 0 {
            return Err(closed());
        }
        self.start = 0;
        self.end = read;
        Ok(())
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Fill `out`: from the buffer, then straight from the socket when
    /// what is left is at least the read-ahead's size (no second copy).
    fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut at = 0;
        while at < out.len() {
            if self.buffered() == 0 && out.len() - at >= READ_AHEAD_BYTES {
                match self.stream.read(&mut out[at..]) {
                    Ok(0) => return Err(closed()),
                    Ok(read) => at += read,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(wire::explain_timeout(error)),
                }
                continue;
            }
            if self.buffered() == 0 {
                self.fill()?;
            }
            let n = self.buffered().min(out.len() - at);
            out[at..at + n].copy_from_slice(&self.buffer[self.start..self.start + n]);
            self.start += n;
            at += n;
        }
        Ok(())
    }

    /// Drop the next `len` bytes: from the buffer, then in the kernel.
    fn skip(&mut self, len: usize) -> io::Result<()> {
        let buffered = self.buffered().min(len);
        self.start += buffered;
        let mut rest = len - buffered;
        while rest > 0 {
            if rest < READ_AHEAD_BYTES {
                self.fill()?;
                let n = self.buffered().min(rest);
                self.start += n;
                rest -= n;
                continue;
            }
            // SAFETY: with MSG_TRUNC a TCP socket copies nothing to the
            // buffer, so a null pointer is never written through.
            let dropped = unsafe {
                libc::recv(
                    self.stream.as_raw_fd(),
                    std::ptr::null_mut(),
                    rest,
                    libc::MSG_TRUNC,
                )
            };
            match dropped {
                0 => return Err(closed()),
                n if n > 0 => rest -= n as usize,
                _ => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(wire::explain_timeout(error));
                    }
                }
            }
        }
        Ok(())
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed in the middle of a response",
    )
}

/// The rest of one response frame: every read is checked against it.
struct Frame<'c> {
    connection: &'c mut FetchConnection,
    size: usize,
    left: usize,
}

impl Frame<'_> {
    fn parse(&mut self, records: Records) -> anyhow::Result<(i32, Vec<FetchedPartition>)> {
        let correlation_id = self.i32()?;
        let _throttle_time_ms = self.i32()?;
        let error_code = self.i16()?;
        let _session_id = self.i32()?;
        if error_code != 0 {
            anyhow::bail!("fetch failed: {}", describe_error(error_code, None));
        }
        let mut partitions = Vec::new();
        for _ in 0..self.count()? {
            let name_len = self.count16()?;
            self.skip(name_len)?;
            for _ in 0..self.count()? {
                let partition = self.i32()?;
                let error_code = self.i16()?;
                let high_watermark = self.i64()?;
                let _last_stable_offset = self.i64()?;
                let _log_start_offset = self.i64()?;
                let aborted = self.count()?; // null (-1) reads as none
                self.skip(aborted.saturating_mul(16))?; // producer id, first offset
                let _preferred_read_replica = self.i32()?;
                let records_len = self.count()?; // null (-1) reads as empty
                let batches = self.batches(records_len, records)?;
                partitions.push(FetchedPartition {
                    partition,
                    error_code,
                    high_watermark,
                    batches,
                });
            }
        }
        self.skip(self.left)?;
        Ok((correlation_id, partitions))
    }

    /// Walk `len` bytes of records batch by batch. Each batch's header is
    /// read into the connection's reused buffer; the rest of the batch is
    /// read after it (`Keep`, as a client hands each batch on before
    /// reading the next: the buffer stays the largest batch's size, so it
    /// stays in the CPU's cache) or dropped in the kernel (`Discard`).
    fn batches(&mut self, len: usize, records: Records) -> anyhow::Result<Vec<SeenBatch>> {
        self.claim(len)?;
        let mut buffer = std::mem::take(&mut self.connection.records);
        let mut batches = Vec::new();
        let read = self.walk(&mut buffer, len, records, &mut batches);
        self.connection.records = buffer;
        read?;
        Ok(batches)
    }

    fn walk(
        &mut self,
        buffer: &mut Vec<u8>,
        len: usize,
        records: Records,
        batches: &mut Vec<SeenBatch>,
    ) -> io::Result<()> {
        let mut rest = len;
        while rest >= HEADER_BYTES {
            self.read_growing(buffer, 0, HEADER_BYTES)?;
            rest -= HEADER_BYTES;
            let Some(total) = whole_batch(&buffer[..HEADER_BYTES], HEADER_BYTES + rest) else {
                break;
            };
            rest -= total - HEADER_BYTES;
            let stamp = match records {
                Records::Keep { stamps } => {
                    self.read_growing(buffer, HEADER_BYTES, total)?;
                    stamps.then(|| read_stamp(&buffer[..total])).flatten()
                }
                Records::Discard => {
                    self.connection.skip(total - HEADER_BYTES)?;
                    None
                }
            };
            batches.push(seen(&buffer[..HEADER_BYTES], total, stamp));
        }
        // A partial batch cut by the byte limit: read (or dropped) and not
        // counted, as clients do.
        match records {
            Records::Keep { .. } => self.read_growing(buffer, 0, rest),
            Records::Discard => self.connection.skip(rest),
        }
    }

    /// Fill `buffer[from..to]` from the connection. The buffer grows only
    /// as bytes arrive, to at most twice what it holds (or 64 KiB more), so
    /// a batch length read off the socket never sizes an allocation before
    /// its bytes are there; once it is the largest batch's size it stays.
    fn read_growing(&mut self, buffer: &mut Vec<u8>, from: usize, to: usize) -> io::Result<()> {
        let mut at = from;
        while at < to {
            let end = to.min(buffer.len().max(2 * at).max(at + GROWTH_STEP_BYTES));
            if buffer.len() < end {
                buffer.resize(end, 0); // zeroes only the growth
            }
            self.connection.read_exact(&mut buffer[at..end])?;
            at = end;
        }
        Ok(())
    }

    /// Take `len` bytes of the frame, failing if it holds fewer.
    fn claim(&mut self, len: usize) -> anyhow::Result<()> {
        if len > self.left {
            anyhow::bail!(
                "fetch response of {} bytes ends early: {len} bytes wanted at {}",
                self.size,
                self.size - self.left
            );
        }
        self.left -= len;
        Ok(())
    }

    fn skip(&mut self, len: usize) -> anyhow::Result<()> {
        self.claim(len)?;
        Ok(self.connection.skip(len)?)
    }

    fn array<const N: usize>(&mut self) -> anyhow::Result<[u8; N]> {
        self.claim(N)?;
        let mut bytes = [0u8; N];
        self.connection.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    fn i16(&mut self) -> anyhow::Result<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> anyhow::Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> anyhow::Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// An array's length; null (-1) as none.
    fn count(&mut self) -> anyhow::Result<usize> {
        Ok(self.i32()?.max(0) as usize)
    }

    /// A string's length; null (-1) as none.
    fn count16(&mut self) -> anyhow::Result<usize> {
        Ok(self.i16()?.max(0) as usize)
    }
}

/// The size of the whole batch that starts `bytes` (at least its header),
/// or `None` if the header is short, declares less than a header, or the
/// batch runs past `available` bytes.
fn whole_batch(bytes: &[u8], available: usize) -> Option<usize> {
    if bytes.len() < HEADER_BYTES {
        return None;
    }
    record_batch::declared_size(bytes).filter(|total| (HEADER_BYTES..=available).contains(total))
}

fn seen(header: &[u8], total: usize, stamp: Option<u64>) -> SeenBatch {
    let header = BatchHeader::parse(header).expect("whole_batch checked the header's length");
    SeenBatch {
        next_offset: header.base_offset + i64::from(header.last_offset_delta) + 1,
        records: header.records_count.max(0) as u64,
        bytes: total as u64,
        stamp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::{BatchBuilder, RecordSpec};
    use bytes::Bytes;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{FetchResponse, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use std::io::Write;
    use std::net::TcpListener;

    fn batch(base_offset: i64, records: usize, value_len: usize) -> Vec<u8> {
        let value = vec![7u8; value_len];
        let mut builder = BatchBuilder::new(1_700_000_000_000);
        for _ in 0..records {
            builder.push(RecordSpec {
                key: None,
                value: Some(&value),
                timestamp_delta_ms: 0,
            });
        }
        let mut bytes = builder.build();
        bytes[..8].copy_from_slice(&base_offset.to_be_bytes());
        bytes
    }

    /// A Fetch v11 response frame, size prefix included.
    fn response(correlation_id: i32, partitions: Vec<(i32, Vec<u8>)>) -> Vec<u8> {
        let response = FetchResponse::default().with_responses(vec![
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(index, records)| {
                            PartitionData::default()
                                .with_partition_index(index)
                                .with_high_watermark(1000)
                                .with_records(Some(Bytes::from(records)))
                        })
                        .collect(),
                ),
        ]);
        let mut body = bytes::BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut body, 0)
            .unwrap();
        response.encode(&mut body, 11).unwrap();
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    /// Serve `frames` over a real loopback socket; the reader sees them as
    /// one stream, cut wherever the kernel cuts it.
    fn connection(frames: Vec<Vec<u8>>) -> (FetchConnection, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let writer = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            for frame in frames {
                socket.write_all(&frame).unwrap();
            }
        });
        (
            FetchConnection::new(TcpStream::connect(address).unwrap()),
            writer,
        )
    }

    #[test]
    fn kept_and_discarded_records_count_the_same_and_stay_in_step() {
        // Small batches go through the read-ahead buffer, a 2 MB one to the
        // kernel; partition 1 ends in a batch cut by the byte limit.
        let small: Vec<u8> = (0..20).flat_map(|i| batch(i * 3, 3, 100)).collect();
        let big = batch(500, 2, 1 << 20);
        let mut cut = batch(600, 5, 1000);
        cut.truncate(cut.len() / 2);
        let partition_1: Vec<u8> = [big.clone(), cut].concat();
        let frames: Vec<Vec<u8>> = (0..4)
            .map(|correlation_id| {
                response(
                    correlation_id,
                    vec![
                        (0, small.clone()),
                        (1, partition_1.clone()),
                        (2, Vec::new()),
                    ],
                )
            })
            .collect();
        let (mut connection, writer) = connection(frames);
        let modes = [
            Records::Discard,
            Records::Keep { stamps: false },
            Records::Discard,
            Records::Keep { stamps: true },
        ];
        for (correlation_id, mode) in modes.into_iter().enumerate() {
            let (answered, partitions) = connection.read_fetch_response(mode).unwrap();
            assert_eq!(answered, correlation_id as i32, "{mode:?}");
            assert_eq!(partitions.len(), 3);
            let counts: Vec<(usize, u64, u64, i64)> = partitions
                .iter()
                .map(|partition| {
                    (
                        partition.batches.len(),
                        partition.batches.iter().map(|b| b.records).sum(),
                        partition.batches.iter().map(|b| b.bytes).sum(),
                        partition.batches.last().map_or(-1, |b| b.next_offset),
                    )
                })
                .collect();
            assert_eq!(
                counts,
                vec![
                    (20, 60, small.len() as u64, 60),
                    (1, 2, big.len() as u64, 502),
                    (0, 0, 0, -1)
                ],
                "{mode:?}"
            );
            assert_eq!(partitions[1].high_watermark, 1000);
        }
        writer.join().unwrap();
    }

    #[test]
    fn a_frame_whose_records_run_past_its_end_is_an_error() {
        let mut frame = response(9, vec![(0, batch(0, 1, 10))]);
        let len = frame.len();
        // The records' length is the frame's last i32 before the records.
        let records_len = batch(0, 1, 10).len();
        let at = len - records_len - 4;
        frame[at..at + 4].copy_from_slice(&(records_len as i32 + 1).to_be_bytes());
        let (mut connection, writer) = connection(vec![frame]);
        let error = connection
            .read_fetch_response(Records::Discard)
            .unwrap_err()
            .to_string();
        assert!(error.contains("ends early"), "{error}");
        writer.join().unwrap();
    }

    #[test]
    fn a_broker_that_stops_mid_response_is_a_timeout_not_a_hang() {
        // Half of a 2 MB batch arrives, then nothing: the kept copy reads
        // through std, the discard drops through recv(MSG_TRUNC).
        for mode in [Records::Keep { stamps: false }, Records::Discard] {
            let mut frame = response(0, vec![(0, batch(0, 2, 1 << 20))]);
            frame.truncate(frame.len() / 2);
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let (done, wait) = std::sync::mpsc::channel::<()>();
            let writer = std::thread::spawn(move || {
                let (mut socket, _) = listener.accept().unwrap();
                socket.write_all(&frame).unwrap();
                // Keep the socket open and silent until the reader gives up.
                let _ = wait.recv();
            });
            let stream = TcpStream::connect(address).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_millis(200)))
                .unwrap();
            let mut connection = FetchConnection::new(stream);
            let error = connection.read_fetch_response(mode).unwrap_err();
            let message = format!("{error:#}");
            assert!(message.contains("has not answered"), "{mode:?}: {message}");
            done.send(()).unwrap();
            writer.join().unwrap();
        }
    }

    #[test]
    fn a_huge_declared_batch_grows_the_buffer_only_as_its_bytes_arrive() {
        // A frame that declares 400 MiB of records in one batch, sends 100
        // bytes of it and closes: the reader must fail without having
        // allocated anything near the declared size.
        let declared: usize = 400 << 20;
        let real = batch(0, 1, 100);
        let mut frame = response(0, vec![(0, real.clone())]);
        let records_at = frame.len() - real.len();
        let body_len = frame.len() - 4 + (declared - real.len());
        frame[..4].copy_from_slice(&(body_len as i32).to_be_bytes());
        frame[records_at - 4..records_at].copy_from_slice(&(declared as i32).to_be_bytes());
        frame[records_at + 8..records_at + 12]
            .copy_from_slice(&((declared - 12) as i32).to_be_bytes());
        for mode in [Records::Keep { stamps: false }, Records::Discard] {
            let (mut connection, writer) = connection(vec![frame.clone()]);
            let error = connection.read_fetch_response(mode).unwrap_err();
            assert!(
                format!("{error:#}").contains("closed"),
                "{mode:?}: {error:#}"
            );
            assert!(
                connection.records.capacity() < 1 << 20,
                "{mode:?}: {} bytes allocated for {} received",
                connection.records.capacity(),
                frame.len()
            );
            writer.join().unwrap();
        }
    }
}
