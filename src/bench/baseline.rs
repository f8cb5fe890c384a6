//! `sluice bench baseline`: this host's own limits, measured with the same
//! chunk size as the load (one record batch), so a broker figure can be read
//! as a fraction of what the machine allows in the same run:
//!
//! - loopback TCP: `connections` sender/receiver thread pairs, no protocol;
//! - sequential read of what was written, cold, through the page cache (what
//!   a catch-up fetch reads);
//! - write + fdatasync per batch (what acks=all must pay) and plain
//!   sequential writes with one fdatasync at the end (acks=0/1), both with
//!   O_DIRECT where the filesystem allows it (the broker's default write
//!   mode), in a scratch file in the data directory;
//! - optionally, write + fdatasync of one chunk at a fixed rate (`--paced-rate`),
//!   latency counted from each chunk's due time: the disk's share of what a
//!   fixed-rate acks=all run sees, stalls included (a back-to-back pass
//!   shows a 300 ms stall as one slow chunk, a paced one as the 30 chunks
//!   that fell due during it, as a fixed-rate producer's requests do).

use std::alloc::{Layout, alloc_zeroed, dealloc};

use anyhow::Context;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::stats::{Bound, round};

/// Scratch file size; writes wrap around inside it.
const SCRATCH_BYTES: u64 = 4 << 30;
const ALIGN: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub struct Baseline {
    pub tcp_mb_s: f64,
    pub disk_sync_mb_s: f64,
    pub disk_write_mb_s: f64,
    /// Reading back what the write pass wrote, through the page cache (as
    /// catch-up fetches read the log).
    pub disk_read_mb_s: f64,
    /// Latency of one chunk's write + fdatasync, back to back: p50, p99,
    /// p99.9 and max in ms (what an acks=all batch of this size cannot beat
    /// on this disk; issue 19 item 5 compares the broker's p99 with it).
    pub disk_sync_latency_ms: [f64; 4],
    /// The fixed-rate pass, when asked for.
    pub paced: Option<PacedSync>,
    pub chunk_bytes: usize,
    pub direct_io: bool,
}

impl Baseline {
    /// The limit a result of this kind is bound by: the lower of the network
    /// and the disk path it needs.
    pub fn limit(&self, bound: Bound) -> (&'static str, f64) {
        let tcp = ("loopback TCP", self.tcp_mb_s);
        let disk = match bound {
            Bound::DurableWrite => ("write+fdatasync per batch", self.disk_sync_mb_s),
            Bound::Write => ("sequential write", self.disk_write_mb_s),
            Bound::Read => ("sequential read", self.disk_read_mb_s),
            Bound::Network => return tcp,
        };
        if disk.1 < tcp.1 { disk } else { tcp }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "tcp_mb_s": round(self.tcp_mb_s),
            "disk_sync_mb_s": round(self.disk_sync_mb_s),
            "disk_write_mb_s": round(self.disk_write_mb_s),
            "disk_read_mb_s": round(self.disk_read_mb_s),
            "disk_sync_p50_ms": round(self.disk_sync_latency_ms[0]),
            "disk_sync_p99_ms": round(self.disk_sync_latency_ms[1]),
            "disk_sync_p999_ms": round(self.disk_sync_latency_ms[2]),
            "disk_sync_max_ms": round(self.disk_sync_latency_ms[3]),
            "chunk_bytes": self.chunk_bytes,
            "direct_io": self.direct_io,
            "disk_paced": self.paced.map(|paced| paced.to_json()),
        })
    }

    pub fn to_text(&self) -> String {
        let [p50, p99, p999, max] = self.disk_sync_latency_ms;
        let paced = self.paced.map_or(String::new(), |paced| {
            let [p50, p99, p999, max] = paced.latency_ms;
            format!(
                "  write+fdatasync at {:.0} MB/s, {} writers, from due time: p50 {p50:.3} ms  \
                 p99 {p99:.3} ms  p99.9 {p999:.3} ms  max {max:.3} ms ({} chunks)\n",
                paced.rate_mb_s, paced.writers, paced.chunks
            )
        });
        format!(
            "baseline: {} B chunks\n  loopback TCP               {:.1} MB/s\n  \
             write+fdatasync per chunk  {:.1} MB/s (p50 {p50:.3} ms  p99 {p99:.3} ms  \
             p99.9 {p999:.3} ms  max {max:.3} ms)\n  sequential write           {:.1} MB/s\n  \
             sequential read            {:.1} MB/s\n{paced}  ({}; MB = 10^6 bytes)\n",
            self.chunk_bytes,
            self.tcp_mb_s,
            self.disk_sync_mb_s,
            self.disk_write_mb_s,
            self.disk_read_mb_s,
            if self.direct_io {
                "disk with O_DIRECT"
            } else {
                "disk through the page cache: O_DIRECT refused here"
            }
        )
    }
}

/// Measure all three limits, `duration` each.
pub fn measure(
    data_dir: &Path,
    chunk_bytes: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Baseline> {
    let tcp_mb_s = tcp(chunk_bytes, connections.max(1), duration)?;
    let synced = disk(data_dir, chunk_bytes, duration, true)?;
    let plain = disk(data_dir, chunk_bytes, duration, false)?;
    Ok(Baseline {
        tcp_mb_s,
        disk_sync_mb_s: synced.write_mb_s,
        disk_write_mb_s: plain.write_mb_s,
        disk_read_mb_s: plain.read_mb_s,
        disk_sync_latency_ms: latency_summary_ms(synced.chunk_latencies),
        paced: None,
        direct_io: synced.direct_io,
        chunk_bytes,
    })
}

/// The fixed-rate write + fdatasync pass: p50, p99, p99.9 and max in ms of
/// each chunk's completion after its due time.
#[derive(Clone, Copy, Debug)]
pub struct PacedSync {
    pub rate_mb_s: f64,
    pub writers: usize,
    pub chunks: usize,
    pub latency_ms: [f64; 4],
}

impl PacedSync {
    fn to_json(self) -> Value {
        json!({
            "rate_mb_s": round(self.rate_mb_s),
            "writers": self.writers,
            "chunks": self.chunks,
            "p50_ms": round(self.latency_ms[0]),
            "p99_ms": round(self.latency_ms[1]),
            "p999_ms": round(self.latency_ms[2]),
            "max_ms": round(self.latency_ms[3]),
        })
    }
}

/// Write + fdatasync `chunk_bytes` at `rate_mb_s` (MB = 10^6 bytes) for
/// `duration`, split evenly over `writers` threads with a scratch file each
/// (a broker's shards each sync their own log). A writer behind its
/// schedule writes at once, so a stall delays every chunk due during it.
/// Errors: the directory is not one, or a write or fdatasync fails.
pub fn measure_paced(
    dir: &Path,
    chunk_bytes: usize,
    rate_mb_s: f64,
    writers: usize,
    duration: Duration,
) -> anyhow::Result<PacedSync> {
    if !(rate_mb_s.is_finite() && rate_mb_s > 0.0) {
        anyhow::bail!("--paced-rate must be a positive number of MB/s, not {rate_mb_s}");
    }
    let writers = writers.max(1);
    let chunk = AlignedChunk::new(chunk_bytes);
    let interval = Duration::from_secs_f64(writers as f64 * chunk.len() as f64 / (rate_mb_s * 1e6));
    let chunks_each = (duration.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
    let file_bytes = (chunks_each * chunk.len() as u64).clamp(chunk.len() as u64, SCRATCH_BYTES);
    let files = (0..writers)
        .map(|writer| scratch_file(dir, &format!("paced-{writer}"), file_bytes))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let latencies = std::thread::scope(|scope| {
        let chunk = &chunk;
        let handles: Vec<_> = files
            .iter()
            .map(|scratch| {
                let file = &scratch.file;
                scope.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let context = || format!("paced disk baseline in {}", scratch.path.0.display());
                    let mut latencies = Vec::with_capacity(chunks_each as usize);
                    for index in 0..chunks_each {
                        let due = started + interval * index as u32;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let offset = (index * chunk.len() as u64) % file_bytes;
                        file.write_all_at(chunk.bytes(), offset)
                            .with_context(context)?;
                        file.sync_data().with_context(context)?;
                        latencies.push(due.elapsed());
                    }
                    Ok(latencies)
                })
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            all.extend(handle.join().expect("a paced writer panicked")?);
        }
        anyhow::Ok(all)
    })?;
    Ok(PacedSync {
        rate_mb_s,
        writers,
        chunks: latencies.len(),
        latency_ms: latency_summary_ms(latencies),
    })
}

/// What one disk pass measured.
struct DiskPass {
    write_mb_s: f64,
    direct_io: bool,
    /// Reading back what was written (plain pass only; 0 otherwise).
    read_mb_s: f64,
    /// Each chunk's write (and fdatasync, in the synced pass).
    chunk_latencies: Vec<Duration>,
}

/// p50, p99, p99.9 and max of `latencies` in ms (zeros for none).
fn latency_summary_ms(mut latencies: Vec<Duration>) -> [f64; 4] {
    if latencies.is_empty() {
        return [0.0; 4];
    }
    latencies.sort_unstable();
    let at = |quantile: f64| {
        let index = ((latencies.len() as f64 * quantile).ceil() as usize).clamp(1, latencies.len());
        latencies[index - 1].as_secs_f64() * 1e3
    };
    [at(0.50), at(0.99), at(0.999), at(1.0)]
}

fn tcp(chunk_bytes: usize, connections: usize, duration: Duration) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("loopback TCP: bind")?;
    let address = listener
        .local_addr()
        .context("loopback TCP: local address")?;
    let chunk = vec![0x5au8; chunk_bytes.max(1)];
    std::thread::scope(|scope| {
        let mut receivers = Vec::new();
        let mut senders = Vec::new();
        for _ in 0..connections {
            senders.push(TcpStream::connect(address).context("loopback TCP: connect")?);
            let (mut input, _) = listener.accept().context("loopback TCP: accept")?;
            receivers.push(scope.spawn(move || {
                let mut buf = vec![0u8; chunk_bytes.max(64 * 1024)];
                let mut total = 0u64;
                while let Ok(read @ 1..) = input.read(&mut buf) {
                    total += read as u64;
                }
                total
            }));
        }
        let started = Instant::now();
        let deadline = started + duration;
        for mut output in senders {
            let chunk = &chunk;
            scope.spawn(
                move || {
                    while Instant::now() < deadline && output.write_all(chunk).is_ok() {}
                },
            );
        }
        let total: u64 = receivers
            .into_iter()
            .map(|receiver| receiver.join().unwrap_or(0))
            .sum();
        Ok(total as f64 / started.elapsed().as_secs_f64() / 1e6)
    })
}

fn disk(
    dir: &Path,
    chunk_bytes: usize,
    duration: Duration,
    sync_each: bool,
) -> anyhow::Result<DiskPass> {
    let scratch = scratch_file(dir, "disk", SCRATCH_BYTES)?;
    let scratch_context = || format!("disk baseline in {}", dir.display());
    let (file, direct_io) = (&scratch.file, scratch.direct_io);
    let chunk = AlignedChunk::new(chunk_bytes);
    let started = Instant::now();
    let mut offset = 0u64;
    let mut written = 0u64;
    let mut chunk_latencies = Vec::new();
    while started.elapsed() < duration {
        if offset + chunk.len() as u64 > SCRATCH_BYTES {
            offset = 0;
        }
        let chunk_started = Instant::now();
        file.write_all_at(chunk.bytes(), offset)
            .with_context(scratch_context)?;
        if sync_each {
            file.sync_data().with_context(scratch_context)?;
        }
        chunk_latencies.push(chunk_started.elapsed());
        offset += chunk.len() as u64;
        written += chunk.len() as u64;
    }
    file.sync_data().with_context(scratch_context)?;
    let write_mb_s = written as f64 / started.elapsed().as_secs_f64() / 1e6;
    let read_mb_s = if sync_each {
        0.0
    } else {
        read_back(
            &scratch.path.0,
            chunk.len(),
            written.min(SCRATCH_BYTES),
            duration,
        )
        .with_context(scratch_context)?
    };
    Ok(DiskPass {
        write_mb_s,
        direct_io,
        read_mb_s,
        chunk_latencies,
    })
}

/// Sequential buffered reads of the first `len` bytes, cold: the cache is
/// dropped first (O_DIRECT writes leave nothing there anyway).
fn read_back(path: &Path, chunk: usize, len: u64, duration: Duration) -> std::io::Result<f64> {
    use std::os::fd::AsRawFd;
    let file = File::open(path)?;
    // SAFETY: advice on an open descriptor we own; failure only means a
    // warmer cache.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut buf = vec![0u8; chunk];
    let started = Instant::now();
    let mut offset = 0u64;
    while offset < len && started.elapsed() < duration {
        let read = file.read_at(&mut buf, offset)?;
        if read == 0 {
            break;
        }
        offset += read as u64;
    }
    Ok(offset as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1e6)
}

fn open(path: &Path, direct: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).truncate(true).read(true).write(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path)
}

fn preallocate(file: &File, bytes: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open descriptor we own.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Removes the scratch file however the measurement ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A preallocated scratch file in the data directory, removed on drop.
struct ScratchFile {
    file: File,
    path: Scratch,
    /// Opened with O_DIRECT (refused by some filesystems, e.g. tmpfs).
    direct_io: bool,
}

/// Create `.sluice-baseline-<pid>-<name>` in `dir` with `bytes` allocated.
/// Errors: `dir` is not a directory, or the file cannot be made.
fn scratch_file(dir: &Path, name: &str, bytes: u64) -> anyhow::Result<ScratchFile> {
    let context = || format!("disk baseline in {}", dir.display());
    if !dir.is_dir() {
        anyhow::bail!(
            "--data-dir {} is not a directory: point it at the broker's data directory, \
             so the disk baseline measures the filesystem Sluice writes to",
            dir.display()
        );
    }
    let path = Scratch(dir.join(format!(".sluice-baseline-{}-{name}", std::process::id())));
    let (file, direct_io) = match open(&path.0, true) {
        Ok(file) => (file, true),
        Err(_) => (open(&path.0, false).with_context(context)?, false),
    };
    preallocate(&file, bytes).with_context(context)?;
    Ok(ScratchFile {
        file,
        path,
        direct_io,
    })
}

/// A chunk of the batch size rounded up to the O_DIRECT alignment.
struct AlignedChunk {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the chunk owns its allocation, written only in `new`; shared
// references only read it.
unsafe impl Sync for AlignedChunk {}

impl AlignedChunk {
    fn new(bytes: usize) -> Self {
        let len = bytes.max(1).div_ceil(ALIGN) * ALIGN;
        let layout = Layout::from_size_align(len, ALIGN).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory for a {len}-byte chunk");
        // Fill with non-zero bytes so nothing below can shortcut zero pages.
        // SAFETY: ptr is valid for len bytes, just allocated.
        unsafe { std::ptr::write_bytes(ptr, 0x5a, len) };
        AlignedChunk { ptr, layout }
    }

    fn len(&self) -> usize {
        self.layout.size()
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr is valid and initialized for layout.size() bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedChunk {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_latencies_summarize_as_nearest_rank_percentiles() {
        let latencies: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        assert_eq!(latency_summary_ms(latencies), [500.0, 990.0, 999.0, 1000.0]);
        assert_eq!(latency_summary_ms(Vec::new()), [0.0; 4]);
        assert_eq!(latency_summary_ms(vec![Duration::from_millis(3)]), [3.0; 4]);
    }

    #[test]
    fn paced_latency_counts_from_the_due_time_so_a_writer_behind_schedule_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        // 96 chunks of 1 MiB due within 1 ms: no disk keeps up, so the last
        // chunk completes about the whole pass after it fell due. Measured
        // from each write's start instead, the max would be one chunk's time.
        let started = Instant::now();
        let paced =
            measure_paced(dir.path(), 1 << 20, 100_000.0, 1, Duration::from_millis(1)).unwrap();
        let wall_ms = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(paced.chunks, 96);
        let [p50, _, _, max] = paced.latency_ms;
        assert!(max >= 0.5 * wall_ms, "max {max} ms in a {wall_ms} ms pass");
        assert!(p50 <= max);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "scratch files left behind: {left:?}");
        assert!(measure_paced(dir.path(), 4096, 0.0, 1, Duration::from_millis(1)).is_err());
    }
}
