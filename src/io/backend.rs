//! Choosing the I/O backend: io_uring, or the epoll fallback.
//!
//! The probe creates a small ring and checks the opcodes Sluice needs. When
//! that fails, the errno is turned into a cause and a fix an operator can act
//! on (sysctl, seccomp profile, memlock limit, kernel version) instead of a
//! bare "Operation not permitted". With `io_backend = "auto"` the broker logs
//! that line and runs on epoll; with `"io_uring"` it refuses to start with it.

use std::fmt;
use std::io;

use io_uring::{IoUring, Probe, opcode};
use thiserror::Error;

use crate::config::IoBackendSetting;

/// Ring entries for the probe ring: as small as the kernel allows, to probe only.
const PROBE_RING_ENTRIES: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoBackend {
    IoUring,
    Epoll,
}

impl fmt::Display for IoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoBackend::IoUring => "io_uring",
            IoBackend::Epoll => "epoll",
        })
    }
}

/// Why io_uring cannot be used here, in operator terms.
#[derive(Debug, Clone, Error)]
#[error("io_uring is unavailable: {cause}; fix: {fix}")]
pub struct UringUnavailable {
    pub cause: String,
    pub fix: String,
}

#[derive(Debug, Error)]
#[error(
    "{0}; io_backend = \"io_uring\" requires it (set io_backend = \"auto\" to fall back to epoll)"
)]
pub struct BackendError(pub UringUnavailable);

/// The backend chosen, and why io_uring was not, if it was not.
#[derive(Debug, Clone)]
pub struct BackendChoice {
    pub backend: IoBackend,
    pub fallback_reason: Option<UringUnavailable>,
}

/// Pick the backend for `setting`, probing io_uring unless told not to.
pub fn choose_backend(setting: IoBackendSetting) -> Result<BackendChoice, BackendError> {
    if setting == IoBackendSetting::Epoll {
        return Ok(BackendChoice {
            backend: IoBackend::Epoll,
            fallback_reason: None,
        });
    }
    match probe_io_uring() {
        Ok(()) => Ok(BackendChoice {
            backend: IoBackend::IoUring,
            fallback_reason: None,
        }),
        Err(reason) if setting == IoBackendSetting::Auto => Ok(BackendChoice {
            backend: IoBackend::Epoll,
            fallback_reason: Some(reason),
        }),
        Err(reason) => Err(BackendError(reason)),
    }
}

/// Create a ring and check the opcodes the storage and network paths use.
pub fn probe_io_uring() -> Result<(), UringUnavailable> {
    let ring = IoUring::new(PROBE_RING_ENTRIES).map_err(|error| explain_setup_error(&error))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|error| UringUnavailable {
            cause: format!(
                "the kernel cannot report io_uring opcodes ({error}); it predates Linux 5.6"
            ),
            fix: "upgrade to Linux 5.10 or later, or set io_backend = \"epoll\"".to_owned(),
        })?;
    let needed = [
        (opcode::Write::CODE, "WRITE"),
        (opcode::Read::CODE, "READ"),
        (opcode::Fsync::CODE, "FSYNC"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(UringUnavailable {
            cause: format!("the kernel's io_uring lacks {}", missing.join(", ")),
            fix: "upgrade to Linux 5.10 or later, or set io_backend = \"epoll\"".to_owned(),
        });
    }
    Ok(())
}

/// Map an `io_uring_setup` failure to its likely cause and the fix.
pub fn explain_setup_error(error: &io::Error) -> UringUnavailable {
    let errno = error.raw_os_error().unwrap_or(0);
    let (cause, fix) = match errno {
        libc::ENOSYS => (
            "io_uring_setup returned ENOSYS: the kernel has no io_uring (older than 5.1 or \
                 built without CONFIG_IO_URING) or a seccomp filter hides it"
                .to_string(),
            "upgrade the kernel, or allow io_uring_setup/io_uring_enter/io_uring_register in the \
             seccomp profile"
                .to_owned(),
        ),
        libc::EPERM => explain_eperm(),
        libc::ENOMEM => (
            format!(
                "io_uring_setup returned ENOMEM: the locked-memory limit ({}) is too small for the \
                 ring (kernels before 5.12 charge rings to RLIMIT_MEMLOCK)",
                memlock_limit_text()
            ),
            "raise it: LimitMEMLOCK=infinity in the systemd unit or `ulimit -l unlimited`"
                .to_owned(),
        ),
        libc::EMFILE | libc::ENFILE => (
            format!("io_uring_setup failed: {error} (out of file descriptors)"),
            "raise the open-files limit: LimitNOFILE=1048576 or `ulimit -n 1048576`".to_owned(),
        ),
        _ => (
            format!("io_uring_setup failed: {error}"),
            "set io_backend = \"epoll\" to run without io_uring".to_owned(),
        ),
    };
    UringUnavailable { cause, fix }
}

fn explain_eperm() -> (String, String) {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    match disabled {
        Some(2) => (
            "io_uring_setup returned EPERM: kernel.io_uring_disabled = 2 disables io_uring for \
             everyone"
                .to_owned(),
            "sysctl -w kernel.io_uring_disabled=0 (persist it in /etc/sysctl.d/)".to_owned(),
        ),
        Some(1) => (
            "io_uring_setup returned EPERM: kernel.io_uring_disabled = 1 limits io_uring to root \
             and the group in kernel.io_uring_group"
                .to_owned(),
            "add the sluice user to the group named by kernel.io_uring_group, or \
             sysctl -w kernel.io_uring_disabled=0"
                .to_owned(),
        ),
        _ => (
            "io_uring_setup returned EPERM: a seccomp filter or security module blocks io_uring \
             (container runtimes' default profiles do)"
                .to_owned(),
            "allow io_uring_setup/io_uring_enter/io_uring_register in the seccomp profile (e.g. \
             docker --security-opt seccomp=<profile>)"
                .to_owned(),
        ),
    }
}

fn memlock_limit_text() -> String {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live rlimit struct we pass.
    let status = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if status != 0 {
        return "unknown".to_owned();
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return "unlimited".to_owned();
    }
    format!("{} KiB", limit.rlim_cur / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_errno_explanation_names_a_fix() {
        for errno in [
            libc::ENOSYS,
            libc::EPERM,
            libc::ENOMEM,
            libc::EMFILE,
            libc::EINVAL,
        ] {
            let reason = explain_setup_error(&io::Error::from_raw_os_error(errno));
            assert!(!reason.fix.is_empty());
            assert!(reason.to_string().contains("fix:"), "{reason}");
        }
    }

    #[test]
    fn epoll_setting_skips_the_probe() {
        let choice = choose_backend(IoBackendSetting::Epoll).unwrap();
        assert_eq!(choice.backend, IoBackend::Epoll);
        assert!(choice.fallback_reason.is_none());
    }
}
