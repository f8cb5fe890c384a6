//! The open-files limit (`RLIMIT_NOFILE`) against what the broker may need.
//!
//! Running out shows late and far from the cause: accepts fail with EMFILE
//! and clients are refused, a segment cannot roll, a consume-queue file
//! cannot be created. So at start `sluice serve` first raises the soft limit
//! to the hard limit when it is lower (no privilege needed; shells and
//! containers often start at 1024 under a far higher hard limit), then
//! compares the result with [`OpenFilesNeed`], an estimate from the
//! configuration and the data directory, and warns with the fix when the
//! limit is below it.
//!
//! The estimate, per item:
//! - each Kafka connection up to `kafka.connections_max`: its socket, plus on
//!   io_uring the pipe pair its fetches splice through ([`FDS_PER_CONNECTION_URING`]);
//! - the metrics listener's connection cap;
//! - each shard: its listening socket, compio's ring or epoll and its
//!   eventfd, the commit log's ring and eventfd, checkpoint and directory
//!   fsyncs ([`FDS_PER_SHARD`]), and the next segment it rolls to;
//! - the segments already in the data directory: two each (a writer and a
//!   reader), which stay open;
//! - the process itself ([`FDS_PROCESS`]): stdio, the data-directory lock,
//!   the metrics runtime.
//!
//! Consume-queue files take no descriptor (`storage/queue_file.rs` maps
//! them and closes the file) but one memory map each, so the start also
//! warns when `vm.max_map_count` is below their count plus
//! [`MAPS_PROCESS`] ([`check_map_count`]).
//!
//! Segments accumulate until retention deletes them, so the estimate is a
//! floor for today's data, not a ceiling: the packaged unit sets
//! `LimitNOFILE=1048576`.

use std::io;
use std::path::Path;

use crate::config::Config;
use crate::io::IoBackend;
use crate::storage::layout::ShardLayout;
use crate::telemetry::http::HttpLimits;

/// Descriptors per Kafka connection on io_uring: the socket and the two ends
/// of the pipe that fetches splice through.
pub const FDS_PER_CONNECTION_URING: u64 = 3;
/// Descriptors per Kafka connection on epoll: the socket (fetches are read
/// into memory, no pipe).
pub const FDS_PER_CONNECTION_EPOLL: u64 = 1;
/// Descriptors each shard holds besides its storage files: the listening
/// socket, two rings (or epoll) and their eventfds, with room for checkpoint
/// and directory fsyncs in flight.
pub const FDS_PER_SHARD: u64 = 16;
/// Descriptors a segment holds open: a writer and a reader.
pub const FDS_PER_SEGMENT: u64 = 2;
/// Descriptors the process holds outside the shards.
pub const FDS_PROCESS: u64 = 32;
/// Memory maps the process holds besides its consume-queue files: the
/// binary and its libraries, thread stacks and guard pages, the write
/// buffers and the allocator's arenas, with room to spare.
pub const MAPS_PROCESS: u64 = 4096;

/// The open-files limit before and after [`raise_soft_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit found at start.
    pub soft_before: u64,
    /// The soft limit in force now.
    pub soft: u64,
    pub hard: u64,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard one when it is lower.
pub fn raise_soft_limit() -> io::Result<OpenFilesLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live rlimit struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let soft_before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the rlimit struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
    }
    Ok(OpenFilesLimit {
        soft_before,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// The storage files found in a data directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageFiles {
    pub segments: u64,
    pub queue_files: u64,
}

/// Count the segments and consume-queue files of `shards` shards under
/// `data_dir` (missing shard directories count as empty).
pub fn count_storage_files(data_dir: &Path, shards: usize) -> io::Result<StorageFiles> {
    let mut files = StorageFiles::default();
    for shard in 0..shards {
        let shard = u16::try_from(shard).map_err(io::Error::other)?;
        let layout = ShardLayout::new(data_dir, crate::ids::ShardId(shard));
        files.segments += count_with_extension(&layout.log_dir(), "log")?;
        for partition in read_dir_or_empty(&layout.partitions_dir())? {
            let partition = partition?;
            if partition.file_type()?.is_dir() {
                files.queue_files += count_with_extension(&partition.path(), "cq")?;
            }
        }
    }
    Ok(files)
}

fn count_with_extension(dir: &Path, extension: &str) -> io::Result<u64> {
    let mut count = 0;
    for entry in read_dir_or_empty(dir)? {
        if entry?
            .path()
            .extension()
            .is_some_and(|found| found == extension)
        {
            count += 1;
        }
    }
    Ok(count)
}

fn read_dir_or_empty(dir: &Path) -> io::Result<Vec<io::Result<std::fs::DirEntry>>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.collect()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(error),
    }
}

/// The descriptors the broker may need, by item (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFilesNeed {
    /// Descriptors one client connection takes with the chosen I/O backend.
    pub per_connection: u64,
    pub connections: u64,
    pub metrics: u64,
    pub shards: u64,
    pub storage: u64,
    pub process: u64,
}

impl OpenFilesNeed {
    pub fn estimate(
        config: &Config,
        backend: IoBackend,
        shards: usize,
        files: StorageFiles,
    ) -> OpenFilesNeed {
        let per_connection = match backend {
            IoBackend::IoUring => FDS_PER_CONNECTION_URING,
            IoBackend::Epoll => FDS_PER_CONNECTION_EPOLL,
        };
        let shards = shards as u64;
        OpenFilesNeed {
            per_connection,
            connections: u64::from(config.kafka.connections_max) * per_connection,
            metrics: HttpLimits::default().connections_max as u64,
            shards: shards * (FDS_PER_SHARD + FDS_PER_SEGMENT),
            storage: files.segments * FDS_PER_SEGMENT,
            process: FDS_PROCESS,
        }
    }

    pub fn total(&self) -> u64 {
        self.connections + self.metrics + self.shards + self.storage + self.process
    }
}

/// Raise the soft limit, then log what was done and warn when the limit is
/// below `need`: one line each, with the fix.
pub fn check_and_log(need: OpenFilesNeed) {
    let limit = match raise_soft_limit() {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-files limit (RLIMIT_NOFILE)");
            return;
        }
    };
    if limit.soft != limit.soft_before {
        tracing::info!(
            from = limit.soft_before,
            to = limit.soft,
            "raised the open-files soft limit (RLIMIT_NOFILE) to its hard limit"
        );
    }
    if limit.soft < need.total() {
        let raise = if limit.hard >= need.total() {
            format!(
                "`ulimit -n {}` before starting",
                need.total().next_power_of_two()
            )
        } else {
            format!(
                "the hard limit ({}) first, as root or in /etc/security/limits.conf, then \
                 `ulimit -n {}` before starting",
                limit.hard,
                need.total().next_power_of_two()
            )
        };
        tracing::warn!(
            limit = limit.soft,
            need = need.total(),
            connection_fds = need.connections,
            storage_fds = need.storage,
            "the open-files limit (RLIMIT_NOFILE) is below what this configuration may need \
             (descriptors for kafka.connections_max connections, {} per connection with this I/O \
             backend, and for shards and segments): past it, clients are refused and segments \
             cannot roll. Raise {raise}, or LimitNOFILE= in the systemd \
             unit (packaging/sluice.service sets 1048576); or lower kafka.connections_max",
            need.per_connection
        );
    }
}

/// The kernel's cap on one process's memory maps (`vm.max_map_count`).
fn max_map_count() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/sys/vm/max_map_count")?;
    text.trim().parse().map_err(io::Error::other)
}

/// The memory maps `files` need: one per consume-queue file, plus
/// [`MAPS_PROCESS`].
pub fn maps_needed(files: StorageFiles) -> u64 {
    files.queue_files + MAPS_PROCESS
}

/// Warn, with the fix, when `vm.max_map_count` is below [`maps_needed`]:
/// past it a consume-queue file cannot be mapped, so a partition cannot be
/// created or opened.
pub fn check_map_count(files: StorageFiles) {
    let need = maps_needed(files);
    match max_map_count() {
        Ok(limit) if limit < need => tracing::warn!(
            limit,
            need,
            queue_files = files.queue_files,
            "vm.max_map_count is below what this data directory needs (one memory map per \
             consume-queue file, about one per partition, plus {MAPS_PROCESS} for the process): \
             past it, partitions cannot be created or opened. Raise it with `sysctl -w \
             vm.max_map_count={}` (kernel-tuning/ sets it)",
            (need * 2).next_power_of_two()
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read vm.max_map_count"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_counts_connections_per_backend_and_storage_files() {
        let config = Config::default();
        let files = StorageFiles {
            segments: 10,
            queue_files: 100,
        };
        let uring = OpenFilesNeed::estimate(&config, IoBackend::IoUring, 4, files);
        assert_eq!(uring.connections, 30_000);
        // Two per segment; consume-queue files are not kept open.
        assert_eq!(uring.storage, 20);
        assert_eq!(uring.shards, 4 * 18);
        let epoll = OpenFilesNeed::estimate(&config, IoBackend::Epoll, 4, files);
        assert_eq!(epoll.connections, 10_000);
        assert_eq!(uring.total() - epoll.total(), 20_000);
    }

    /// The packaged unit's `LimitNOFILE` covers the production config's
    /// connections and shards with most of it left for storage files.
    #[test]
    fn the_packaged_unit_allows_what_the_production_config_needs() {
        let production = Config::parse(include_str!("../packaging/sluice.toml")).unwrap();
        let unit = include_str!("../packaging/sluice.service");
        let limit: u64 = unit
            .lines()
            .find_map(|line| line.strip_prefix("LimitNOFILE="))
            .and_then(|value| value.parse().ok())
            .expect("the unit sets a numeric LimitNOFILE");
        let need = OpenFilesNeed::estimate(
            &production,
            IoBackend::IoUring,
            production.shard_count(),
            StorageFiles::default(),
        );
        assert!(need.total() * 4 <= limit, "{need:?} against {limit}");
    }

    #[test]
    fn storage_files_are_counted_per_shard() {
        let dir = tempfile::tempdir().unwrap();
        for shard in 0..2u16 {
            let layout = ShardLayout::new(dir.path(), crate::ids::ShardId(shard));
            layout.create_dirs().unwrap();
            std::fs::write(layout.log_dir().join("00000000000000000000.log"), b"").unwrap();
            let partition = layout.partitions_dir().join("0000000001");
            std::fs::create_dir(&partition).unwrap();
            std::fs::write(partition.join("00000000000000000000.cq"), b"").unwrap();
            std::fs::write(partition.join("00000000000000262144.cq"), b"").unwrap();
            std::fs::write(partition.join("partition.meta"), b"").unwrap();
        }
        let files = count_storage_files(dir.path(), 3).unwrap();
        assert_eq!(
            files,
            StorageFiles {
                segments: 2,
                queue_files: 4
            }
        );
    }
}
