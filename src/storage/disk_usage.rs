//! How full the data directory's filesystem is.
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

pub fn used_ratio(path: &Path) -> io::Result<f64> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs fills the zeroed struct we pass; c_path is NUL-terminated.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) } != 0 {
        return Err(io::Error::last_os_error());
    }
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
    fn usage_of_the_temp_dir_is_a_fraction() {
        let ratio = super::used_ratio(&std::env::temp_dir()).unwrap();
        assert!((0.0..=1.0).contains(&ratio), "{ratio}");
    }
}
