//! How full the data directory's filesystem is, and how large.
//!
//! The ratio is computed as `df` does: used / (used + available to
//! unprivileged users). Tests inject their own probe to drive the
//! disk-usage guards without filling a disk.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Returns the used fraction (0.0..=1.0) of the filesystem holding the data.
pub type DiskUsageProbe = Rc<dyn Fn() -> io::Result<f64>>;

pub fn statvfs_probe(path: PathBuf) -> DiskUsageProbe {
    Rc::new(move || used_ratio(&path))
}

/// The size of the filesystem holding `path`, as Java's `FileStore`
/// reports it (what Kafka's DescribeLogDirs v4 sends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilesystemSpace {
    /// Every block, in bytes (`getTotalSpace`).
    pub total_bytes: u64,
    /// Blocks free to unprivileged users, in bytes (`getUsableSpace`).
    pub usable_bytes: u64,
}

// `statvfs`'s block counts and sizes are `u64` on 64-bit Linux but narrower
// elsewhere; the conversions keep this portable.
#[allow(clippy::useless_conversion)]
pub fn space(path: &Path) -> io::Result<FilesystemSpace> {
    let stats = statvfs(path)?;
    let block_bytes = u64::from(stats.f_frsize);
    Ok(FilesystemSpace {
        total_bytes: u64::from(stats.f_blocks).saturating_mul(block_bytes),
        usable_bytes: u64::from(stats.f_bavail).saturating_mul(block_bytes),
    })
}

fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs fills the zeroed struct we pass; c_path is NUL-terminated.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stats)
}

pub fn used_ratio(path: &Path) -> io::Result<f64> {
    let stats = statvfs(path)?;
    let used = stats.f_blocks.saturating_sub(stats.f_bfree) as f64;
    let usable = used + stats.f_bavail as f64;
    if usable <= 0.0 {
        return Ok(0.0);
    }
    Ok(used / usable)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_temp_dir_has_usable_space_within_its_total() {
        let space = super::space(&std::env::temp_dir()).unwrap();
        assert!(space.total_bytes > 0);
        assert!(space.usable_bytes <= space.total_bytes, "{space:?}");
    }

    #[test]
    fn usage_of_the_temp_dir_is_a_fraction() {
        let ratio = super::used_ratio(&std::env::temp_dir()).unwrap();
        assert!((0.0..=1.0).contains(&ratio), "{ratio}");
    }
}
