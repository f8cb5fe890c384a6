//! The data directory: exclusive ownership, layout version, and what its
//! filesystem supports.
//!
//! * `LOCK` is held with `flock` for the life of the process, so two brokers
//!   never write the same files (which is also what makes memory-mapping the
//!   consume queues sound).
//! * `sluice.meta` records the layout version and the shard count. Partitions
//!   live in the shard that owns them, so starting with another shard count
//!   would strand them; that is refused with the fix in the message.
//! * If `write_mode = "direct"` but the filesystem refuses O_DIRECT (tmpfs,
//!   some FUSE and network filesystems), buffered writes are used and a
//!   warning says so.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::WriteMode;
use crate::storage::durable_file::write_atomic;

pub const LOCK_FILE: &str = "LOCK";
pub const META_FILE: &str = "sluice.meta";
/// Version 2: consume-queue files have a header and checksummed 40-byte
/// entries (issue 12).
pub const LAYOUT_VERSION: u32 = 2;
/// Layouts this build upgrades in place. Version 1 differs only in the
/// consume-queue files, which are derived data: recovery rebuilds them from
/// the commit log.
const LAYOUT_VERSIONS_UPGRADED: [u32; 1] = [1];

#[derive(Debug, Error)]
pub enum DataDirError {
    #[error("cannot use data directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "data directory {path} is in use by another sluice process ({holder}); stop it or choose \
         another --data-dir"
    )]
    Locked { path: PathBuf, holder: String },
    #[error(
        "data directory {path} was created with {found} shards but {configured} are configured; \
         partitions live in the shard that owns them, so set `shards = {found}` (or start on an \
         empty data directory)"
    )]
    ShardCountChanged {
        path: PathBuf,
        found: usize,
        configured: usize,
    },
    #[error(
        "data directory {path} has layout version {found}; this build reads version {LAYOUT_VERSION}"
    )]
    UnsupportedLayout { path: PathBuf, found: u32 },
    #[error(
        "{path} is not a valid sluice.meta: {source}; it holds `layout_version = N` and \
         `shards = N` (restore it, or start on an empty data directory)"
    )]
    BadMeta {
        path: PathBuf,
        #[source]
        source: MetaError,
    },
}

/// What is wrong inside `sluice.meta`.
#[derive(Debug, Error)]
pub enum MetaError {
    #[error("`{key} = {value}` is not a number: {source}")]
    NotANumber {
        key: &'static str,
        value: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("`{key}` is missing")]
    Missing { key: &'static str },
}

/// An opened, locked data directory. Dropping it releases the lock.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    write_mode: WriteMode,
    _lock: File,
}

impl DataDir {
    pub fn open(path: &Path, shards: usize, requested: WriteMode) -> Result<DataDir, DataDirError> {
        let io_error = |source| DataDirError::Io {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(path).map_err(io_error)?;
        let lock = lock(path)?;
        check_meta(path, shards)?;
        let write_mode = match requested {
            WriteMode::Direct if !supports_direct_io(path).map_err(io_error)? => {
                tracing::warn!(
                    path = %path.display(),
                    "the filesystem does not support O_DIRECT; using buffered writes (set storage.write_mode = \"buffered\" to silence this)"
                );
                WriteMode::Buffered
            }
            mode => mode,
        };
        Ok(DataDir {
            path: path.to_owned(),
            write_mode,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The write mode in effect (the configured one unless unsupported).
    pub fn write_mode(&self) -> WriteMode {
        self.write_mode
    }
}

fn lock(dir: &Path) -> Result<File, DataDirError> {
    let path = dir.join(LOCK_FILE);
    let io_error = |source| DataDirError::Io {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error)?;
    // SAFETY: flock takes an open descriptor and flags; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(DataDirError::Locked {
                path: dir.to_owned(),
                holder: format!("pid {}", holder.trim()),
            });
        }
        return Err(io_error(error));
    }
    file.set_len(0).map_err(io_error)?;
    writeln!(file, "{}", std::process::id()).map_err(io_error)?;
    Ok(file)
}

fn check_meta(dir: &Path, shards: usize) -> Result<(), DataDirError> {
    let path = dir.join(META_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (version, found) = parse_meta(&text).map_err(|source| DataDirError::BadMeta {
                path: path.clone(),
                source,
            })?;
            if version != LAYOUT_VERSION && !LAYOUT_VERSIONS_UPGRADED.contains(&version) {
                return Err(DataDirError::UnsupportedLayout {
                    path,
                    found: version,
                });
            }
            if found != shards {
                return Err(DataDirError::ShardCountChanged {
                    path: dir.to_owned(),
                    found,
                    configured: shards,
                });
            }
            if version != LAYOUT_VERSION {
                tracing::info!(
                    path = %dir.display(),
                    from = version,
                    to = LAYOUT_VERSION,
                    "upgrading the data directory layout: consume queues are rebuilt from the \
                     commit log during this start"
                );
                write_meta(&path, shards)?;
            }
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => write_meta(&path, shards),
        Err(source) => Err(DataDirError::Io { path, source }),
    }
}

fn write_meta(path: &Path, shards: usize) -> Result<(), DataDirError> {
    let text = format!("layout_version = {LAYOUT_VERSION}\nshards = {shards}\n");
    write_atomic(path, text.as_bytes()).map_err(|source| DataDirError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The layout version and shard count in `sluice.meta`'s text.
fn parse_meta(text: &str) -> Result<(u32, usize), MetaError> {
    let mut version = None;
    let mut shards = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key.trim() {
            "layout_version" => version = Some(meta_number("layout_version", value)?),
            "shards" => shards = Some(meta_number("shards", value)?),
            _ => {}
        }
    }
    let version = version.ok_or(MetaError::Missing {
        key: "layout_version",
    })?;
    let shards = shards.ok_or(MetaError::Missing { key: "shards" })?;
    Ok((version, shards))
}

fn meta_number<T>(key: &'static str, value: &str) -> Result<T, MetaError>
where
    T: std::str::FromStr<Err = std::num::ParseIntError>,
{
    let value = value.trim();
    value.parse().map_err(|source| MetaError::NotANumber {
        key,
        value: value.to_owned(),
        source,
    })
}

fn supports_direct_io(dir: &Path) -> io::Result<bool> {
    let probe = dir.join(".direct-io-probe");
    let result = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    let _ = std::fs::remove_file(&probe);
    match result {
        Ok(_) => Ok(true),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path(), 2, WriteMode::Buffered).unwrap();
        let error = DataDir::open(dir.path(), 2, WriteMode::Buffered).unwrap_err();
        assert!(matches!(error, DataDirError::Locked { .. }), "{error}");
        drop(first);
        DataDir::open(dir.path(), 2, WriteMode::Buffered).unwrap();
    }

    #[test]
    fn a_version_1_directory_is_upgraded_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join(META_FILE);
        std::fs::write(&meta, "layout_version = 1\nshards = 2\n").unwrap();
        drop(DataDir::open(dir.path(), 2, WriteMode::Buffered).unwrap());
        let text = std::fs::read_to_string(&meta).unwrap();
        assert!(
            text.contains(&format!("layout_version = {LAYOUT_VERSION}")),
            "{text}"
        );
        std::fs::write(&meta, "layout_version = 99\nshards = 2\n").unwrap();
        let error = DataDir::open(dir.path(), 2, WriteMode::Buffered).unwrap_err();
        assert!(
            matches!(error, DataDirError::UnsupportedLayout { found: 99, .. }),
            "{error}"
        );
    }

    #[test]
    fn changing_the_shard_count_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        drop(DataDir::open(dir.path(), 2, WriteMode::Buffered).unwrap());
        let error = DataDir::open(dir.path(), 3, WriteMode::Buffered).unwrap_err();
        assert!(error.to_string().contains("shards = 2"), "{error}");
    }

    #[test]
    fn a_meta_file_with_a_bad_number_names_the_key_and_keeps_the_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join(META_FILE);
        std::fs::write(&meta, "layout_version = 2\nshards = two\n").unwrap();
        let error = DataDir::open(dir.path(), 2, WriteMode::Buffered).unwrap_err();
        let DataDirError::BadMeta { source, .. } = &error else {
            panic!("{error:?}");
        };
        assert!(
            matches!(source, MetaError::NotANumber { key: "shards", .. }),
            "{source:?}"
        );
        let text = crate::error_chain::error_chain(&error);
        assert!(text.contains("`shards = two` is not a number"), "{text}");
        assert!(text.contains("invalid digit found in string"), "{text}");
    }
}
