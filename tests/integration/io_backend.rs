//! The io_uring-unavailable path.
//!
//! The real `sluice` binary is started under a seccomp filter that makes
//! `io_uring_setup` fail with EPERM, as Docker's default profile does. With
//! `io_backend = auto` it must say why and how to fix it, in one line, and
//! serve on epoll. With `io_backend = io_uring` it must refuse to start with
//! that message: no bare errno, no panic.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use sluice::config::WriteMode;
use sluice::ids::Offset;
use sluice::io::IoBackend;
use sluice::storage::Durability;

use crate::support::{self, batch, stderr_lines, stored_form, validated, wait_for};

#[test]
fn epoll_backend_stores_and_recovers_like_io_uring() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, IoBackend::Epoll);
        let id = support::create(&store, "fallback", 0);
        let mut appended = Vec::new();
        for seq in 0..200 {
            let bytes = batch(&format!("e{seq}"), 3, 900);
            let durability = if seq % 3 == 0 {
                Durability::Fsynced
            } else {
                Durability::Written
            };
            let receipt = store
                .append(id, validated(&bytes), durability)
                .await
                .unwrap();
            store.wait(&receipt).await.unwrap();
            appended.push((receipt.base_offset, bytes));
        }
        support::shutdown(&store).await;
        let store = support::open(dir.path(), WriteMode::Direct, IoBackend::Epoll);
        let served = support::read_all(&store, id, Offset(0));
        assert_eq!(served.len(), appended.len());
        for ((offset, bytes), (want_offset, original)) in served.iter().zip(&appended) {
            assert_eq!(offset, want_offset);
            assert_eq!(bytes, &stored_form(original, *want_offset));
        }
        support::shutdown(&store).await;
    });
}

/// Start `sluice serve` with io_uring_setup denied (EPERM) by seccomp.
fn serve_without_io_uring(data_dir: &std::path::Path, extra: &[&str]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["serve", "--shards", "1", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl).
    unsafe {
        command.pre_exec(deny_io_uring_setup);
    }
    command.spawn().unwrap()
}

/// Install a seccomp filter: io_uring_setup fails with EPERM, all else runs.
fn deny_io_uring_setup() -> std::io::Result<()> {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7;
    const ARCH_OFFSET: u32 = 4;
    const NR_OFFSET: u32 = 0;
    let statement = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let filter = [
        statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, ARCH_OFFSET),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            AUDIT_ARCH,
            1,
            0,
        ),
        statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, NR_OFFSET),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_io_uring_setup as u32,
            0,
            1,
        ),
        statement(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl reads the filter program, which outlives the calls.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn blocked_io_uring_falls_back_to_epoll_with_the_cause_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve_without_io_uring(dir.path(), &[]);
    let lines = stderr_lines(&mut child);
    let mut seen = Vec::new();
    assert!(
        wait_for(&lines, "sluice ready", &mut seen),
        "never ready: {seen:#?}"
    );
    let warning = seen
        .iter()
        .find(|line| line.contains("io_uring is unavailable"))
        .unwrap_or_else(|| panic!("no fallback warning: {seen:#?}"));
    assert!(
        warning.contains("EPERM") && warning.contains("seccomp"),
        "{warning}"
    );
    assert!(warning.contains("fix:"), "{warning}");
    assert!(warning.contains("epoll"), "{warning}");
    assert!(
        seen.iter().any(|line| line.contains("io_backend=epoll")),
        "{seen:#?}"
    );

    support::terminate(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "clean shutdown on SIGTERM: {status}");
}

#[test]
fn blocked_io_uring_when_required_refuses_to_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve_without_io_uring(dir.path(), &["--io-backend", "io_uring"]);
    let lines = stderr_lines(&mut child);
    let status = child.wait().unwrap();
    // The reader thread ends at EOF, after the child exited.
    let seen: Vec<String> = lines.iter().collect();
    assert!(!status.success());
    assert!(
        !seen.iter().any(|line| line.contains("panicked")),
        "{seen:#?}"
    );
    let error = seen
        .iter()
        .find(|line| line.contains("io_uring is unavailable"))
        .unwrap_or_else(|| panic!("no reason given: {seen:#?}"));
    assert!(
        error.contains("fix:") && error.contains("requires it"),
        "{error}"
    );
}
