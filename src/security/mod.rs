//! Authentication: SASL mechanisms and the credentials they check
//! (issue 20; ARCHITECTURE.md, "Security").

pub mod acl;
pub mod plain;
pub mod posture;
pub mod principal_mapping;
pub mod scram;
pub mod tls;

/// Fill `buf` from the kernel's CSPRNG (getrandom(2)); blocks only until
/// the pool is first seeded at boot.
pub fn fill_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most the requested length into `buf`.
        let written =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if written > 0 {
            filled += written as usize;
        }
    }
}
