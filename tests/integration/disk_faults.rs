//! The real broker on hostile disks (issue 12): a file system that fills
//! between two disk-guard samples, one without fallocate, and a shard that
//! cannot start.
//!
//! The full disk is a small tmpfs mounted in a private mount namespace
//! (`unshare -m` as root, `unshare -Urm` otherwise), so nothing outside the
//! broker sees it and it disappears with the process. The missing fallocate
//! is an `LD_PRELOAD` shim compiled here with `cc`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker_process::BrokerProcess;
use crate::kafka_bad_input::{batch, produce_with_acks};
use crate::kafka_clients;
use crate::wire::Wire;

const STORAGE_ERROR: i16 = 56;

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The `unshare` flags that give this process a private mount namespace in
/// which it may mount tmpfs, or `None` (with why) where that is impossible.
fn private_mount_namespace() -> Result<Vec<&'static str>, String> {
    // SAFETY: geteuid has no arguments and cannot fail.
    let flags = if unsafe { libc::geteuid() } == 0 {
        vec!["-m"]
    } else {
        vec!["-U", "-r", "-m"]
    };
    let probe = Command::new("unshare")
        .args(&flags)
        .args(["sh", "-c", "mount -t tmpfs -o size=1m probe /mnt 2>/dev/null || mount -t tmpfs -o size=1m probe /tmp"])
        .stderr(Stdio::null())
        .status()
        .map_err(|error| format!("unshare cannot run: {error}"))?;
    if !probe.success() {
        return Err("this sandbox forbids mounting tmpfs in a new mount namespace".to_owned());
    }
    Ok(flags)
}

/// Runs inside the namespace: mount a 40 MiB tmpfs on `$1`, then in the
/// background fill it when `$2/fill` appears and empty it when `$2/free`
/// appears (each step acknowledged with a file in `$2`), and exec the broker.
const FULL_DISK_WRAPPER: &str = r#"
set -e
mnt=$1; control=$2; shift 2
mount -t tmpfs -o size=40m sluice-test "$mnt"
(
  i=0
  while [ ! -e "$control/fill" ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done
  dd if=/dev/zero of="$mnt/filler" bs=64k 2>/dev/null || true
  touch "$control/filled"
  i=0
  while [ ! -e "$control/free" ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done
  rm -f "$mnt/filler"
  touch "$control/freed"
) &
exec "$@"
"#;

fn signal_and_wait(control: &Path, ask: &str, answer: &str) {
    std::fs::write(control.join(ask), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !control.join(answer).exists() {
        assert!(Instant::now() < deadline, "the wrapper never did {ask}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 12 item 6: the disk fills between two disk-guard samples. Writing
/// the first entry of a sparse, memory-mapped consume-queue file used to
/// raise SIGBUS and kill the broker with nothing in the log. Now appends are
/// refused with a retriable error, acknowledged data stays, and appends
/// succeed again once space is freed.
#[test]
fn a_disk_that_fills_between_guard_samples_refuses_appends_without_dying() {
    let flags = match private_mount_namespace() {
        Ok(flags) => flags,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let control = dir.path().join("control");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::create_dir(&control).unwrap();
    // The guard samples once a minute and would only act at 99.9 %: the
    // disk fills inside its window, as in the issue's reproduction.
    let config = write_config(
        dir.path(),
        "[storage]\nsegment_bytes = 8388608\n\
         [retention]\ndisk_check_interval_ms = 60000\ndisk_clean_ratio = 0.997\n\
         disk_force_clean_ratio = 0.998\ndisk_reject_ratio = 0.999\n",
    );
    let mut command = Command::new("unshare");
    command
        .args(&flags)
        .args(["sh", "-c", FULL_DISK_WRAPPER, "sh"])
        .arg(&mnt)
        .arg(&control)
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .args(BrokerProcess::serve_args(&mnt.join("data")))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info");
    let mut broker = BrokerProcess::start_command(command);
    let address = broker.address.clone();
    kafka_clients::create_topic(&address, "wide", 300, &[]);
    let mut wire = Wire::connect(&address);
    // Partitions 0..10 hold data before the disk fills.
    let mut acked = vec![0i64; 300];
    for partition in 0..10 {
        let code = produce_with_acks(&mut wire, "wide", partition, batch(5, 100), -1);
        assert_eq!(code, 0);
        acked[partition as usize] += 5;
    }

    signal_and_wait(&control, "fill", "filled");
    // Each partition was made with its queue's first page (100 entries):
    // the first appends after the disk filled fit there, and the first
    // entry past it needs blocks the full disk refuses.
    let mut refused = 0;
    for partition in 100..130 {
        let code = produce_with_acks(&mut wire, "wide", partition, batch(5, 100), 1);
        match code {
            0 => acked[partition as usize] += 5,
            STORAGE_ERROR => refused += 1,
            other => panic!("partition {partition}: unexpected error code {other}"),
        }
    }
    for _ in 0..120 {
        match produce_with_acks(&mut wire, "wide", 100, batch(1, 100), 1) {
            0 => acked[100] += 1,
            STORAGE_ERROR => {
                refused += 1;
                break;
            }
            other => panic!("partition 100: unexpected error code {other}"),
        }
    }
    assert!(
        broker.try_wait().is_none(),
        "the broker died on a full disk; log:\n{}",
        broker.log().join("\n")
    );
    assert!(refused > 0, "a full disk refused nothing");
    assert!(broker.wait_for_log("no space to extend consume queue file"));
    // Issue 19: the commit log reserves its space in steps (1 MiB at the
    // start), so large batches soon need a reservation the full disk
    // refuses: a retriable error, never a failed write (which would
    // poison the log and stop every partition of the shard).
    let mut refused_large = 0;
    for _ in 0..3 {
        match produce_with_acks(&mut wire, "wide", 0, batch(1, 900_000), 1) {
            0 => acked[0] += 1,
            STORAGE_ERROR => refused_large += 1,
            other => panic!("a large batch on a full disk: unexpected error code {other}"),
        }
    }
    assert!(refused_large > 0, "a full disk refused no large batch");
    assert!(broker.wait_for_log("cannot reserve disk space ahead of the commit log's writes"));

    signal_and_wait(&control, "free", "freed");
    for _ in 0..3 {
        let code = produce_with_acks(&mut wire, "wide", 0, batch(1, 900_000), -1);
        assert_eq!(code, 0, "a large batch after space was freed");
        acked[0] += 1;
    }
    for partition in 100..130 {
        let code = produce_with_acks(&mut wire, "wide", partition, batch(5, 100), -1);
        assert_eq!(code, 0, "partition {partition} after space was freed");
        acked[partition as usize] += 5;
    }
    let expected: i64 = acked.iter().sum();
    let marks = kafka_clients::high_watermarks(&address, "wide", 300);
    assert_eq!(marks, acked, "every acknowledged record, nothing else");
    let records = kafka_clients::consume(&address, "wide", 300, 0, expected as usize);
    assert_eq!(records.len() as i64, expected);
}

/// A shim that makes fallocate fail as it does on FUSE file systems.
fn no_fallocate_shim(dir: &Path) -> PathBuf {
    let source = dir.join("no_fallocate.c");
    std::fs::write(
        &source,
        "#define _GNU_SOURCE\n#include <errno.h>\n#include <sys/types.h>\n\
         int fallocate(int fd, int mode, off_t offset, off_t len) { errno = EOPNOTSUPP; return -1; }\n\
         int fallocate64(int fd, int mode, off_t offset, off_t len) { errno = EOPNOTSUPP; return -1; }\n",
    )
    .unwrap();
    compile_shim(&source)
}

/// Issue 12 item 7: without fallocate every shard used to exit silently and
/// the process hung. Now segments are created sparse and queue space is
/// reserved by writing zeros (logged once), and data survives a kill -9 and
/// the recovery that clears queue slots without punching holes.
#[test]
fn a_file_system_without_fallocate_serves_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let shim = no_fallocate_shim(dir.path());
    let data = dir.path().join("data");
    let start = || {
        let mut command = BrokerProcess::command(&data, &[]);
        command.env("LD_PRELOAD", &shim);
        BrokerProcess::start_command(command)
    };
    let broker = start();
    assert!(broker.wait_for_log("does not support fallocate"));
    kafka_clients::create_topic(&broker.address, "sparse", 4, &[]);
    let (producer, acks) = kafka_clients::producer(&broker.address, &[]);
    for index in 0..2000u32 {
        let payload = format!("record-{index}");
        kafka_clients::send(
            &producer,
            "sparse",
            Some((index % 4) as i32),
            None,
            payload.as_bytes(),
            &[],
        );
    }
    let acked = kafka_clients::flush(&producer, &acks);
    assert_eq!(acked.len(), 2000);
    drop(producer);
    broker.kill9();
    let broker = start();
    let records = kafka_clients::consume(&broker.address, "sparse", 4, 0, 2000);
    let mut payloads: Vec<_> = records
        .iter()
        .map(|record| record.payload.clone())
        .collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), 2000, "every acknowledged record, once");
    assert_eq!(broker.stop().code(), Some(0));
}

/// A shim whose fallocate fails with EIO for commit-log files: at once in
/// shard-0, after two seconds in shard-1 (so shard-1 is still busy when the
/// start learns of shard-0's failure). Other files get the real call.
fn failing_fallocate_shim(dir: &Path) -> PathBuf {
    let source = dir.join("failing_fallocate.c");
    std::fs::write(
        &source,
        r#"#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/types.h>
static int failing(int fd) {
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    if (strstr(path, "/shard-1/log/")) { sleep(2); return 1; }
    return strstr(path, "/shard-0/log/") != NULL;
}
int fallocate(int fd, int mode, off_t offset, off_t len) {
    if (failing(fd)) { errno = EIO; return -1; }
    return syscall(SYS_fallocate, fd, mode, offset, len);
}
int fallocate64(int fd, int mode, off_t offset, off_t len) { return fallocate(fd, mode, offset, len); }
"#,
    )
    .unwrap();
    compile_shim(&source)
}

fn compile_shim(source: &Path) -> PathBuf {
    let library = source.with_extension("so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(source)
        .status()
        .expect("cc runs");
    assert!(status.success(), "the shim compiles");
    library
}

/// Issue 12 item 7: any shard's startup failure stops the process with the
/// cause and a non-zero exit. It used to wait for a reply from a shard that
/// had failed too, so the process hung unready and ignored SIGTERM.
#[test]
fn a_shard_that_cannot_start_stops_the_process_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let shim = failing_fallocate_shim(dir.path());
    let mut child = BrokerProcess::command(&dir.path().join("data"), &[])
        .env("LD_PRELOAD", &shim)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the broker neither started nor exited after its shards failed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(!status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("shard-0 failed to start"), "log:\n{log}");
    assert!(
        log.contains("shard-0/log/") && log.contains("Input/output error"),
        "the cause names the file and the error; log:\n{log}"
    );
}

/// Runs inside the namespace: mount a tmpfs of `$2` on `$1` and exec the
/// broker.
const SMALL_DISK_WRAPPER: &str = r#"
set -e
mnt=$1; size=$2; shift 2
mount -t tmpfs -o size="$size" sluice-test "$mnt"
exec "$@"
"#;

/// Issue 12 item 8, found by a new user: forced deletion under disk
/// pressure stopped for good on a shard once a consumer group had
/// committed an offset there, because `__consumer_offsets` (never expired)
/// pinned the oldest segment until its hourly copy forward, and appends were
/// then refused at the reject ratio. The coordinator now copies live offsets
/// forward within seconds under pressure, and that copy goes in even above
/// the reject ratio (a tester saw usage jump past it first, and the refused
/// copy kept every append refused, across restarts): the opted-in topic's
/// old data is deleted, appends succeed again, and the committed offset is
/// kept.
#[test]
fn committed_offsets_do_not_block_deletion_under_disk_pressure() {
    let flags = match private_mount_namespace() {
        Ok(flags) => flags,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // 64 MiB: forced deletion from 32 MiB, appends refused from 38.4 MiB.
    let config = write_config(
        dir.path(),
        "[storage]\nsegment_bytes = 2097152\n\
         [retention]\ndisk_check_interval_ms = 100\ndisk_clean_ratio = 0.4\n\
         disk_force_clean_ratio = 0.5\ndisk_reject_ratio = 0.6\n",
    );
    // One shard, so the group's offsets share the topic's commit log.
    let mut serve = BrokerProcess::serve_args(&mnt.join("data"));
    let shards = serve.iter().position(|arg| arg == "--shards").unwrap();
    serve[shards + 1] = "1".into();
    let mut command = Command::new("unshare");
    command
        .args(&flags)
        .args(["sh", "-c", SMALL_DISK_WRAPPER, "sh"])
        .arg(&mnt)
        .arg("64m")
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .args(serve)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info");
    let broker = BrokerProcess::start_command(command);
    let address = broker.address.clone();
    kafka_clients::create_topic(
        &address,
        "dropme",
        1,
        &[("sluice.disk.pressure.delete", "true")],
    );
    let mut wire = Wire::connect(&address);
    // The commit lands in the shard's oldest segment.
    let committed = wire.call(2, &crate::hardening_decoder::commit_request("g1", "dropme"));
    assert_eq!(committed.topics[0].partitions[0].error_code, 0);

    // Up to 56 MiB on a 64 MiB disk at once, until appends are refused:
    // past both ratios before the coordinator's next look.
    let mut refused = false;
    for index in 0..560 {
        match produce_with_acks(&mut wire, "dropme", 0, batch(100, 1000), 1) {
            0 => {}
            STORAGE_ERROR => {
                refused = true;
                break;
            }
            code => panic!("batch {index}: error {code}"),
        }
    }
    assert!(refused, "the disk never passed the reject ratio");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !broker.log_contains("disk pressure deleted unexpired records") {
        assert!(
            Instant::now() < deadline,
            "nothing was deleted under disk pressure; log:\n{}",
            broker.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Space was freed: appends go in again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while produce_with_acks(&mut wire, "dropme", 0, batch(1, 100), 1) != 0 {
        assert!(
            Instant::now() < deadline,
            "appends stay refused; log:\n{}",
            broker.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        crate::hardening_decoder::committed_offset(&mut wire, "g1"),
        1,
        "the committed offset survives the deletion"
    );
}

/// Found by a breaker (issue 14): a roll whose new segment file was
/// created but whose read handle could not be opened (the process at its
/// open-files limit) left the file behind, so every later roll to that
/// position failed with "File exists" and the shard refused all appends
/// until a restart. The failpoint fails that open once, with EMFILE. Also
/// (found by the next breaker): an age roll that fails costs no append;
/// the batch goes into the active segment.
#[test]
fn a_roll_that_fails_after_creating_its_file_does_not_wedge_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rolls.toml");
    std::fs::write(&config, "[storage]\nsegment_roll_min_ms = 1\n").unwrap();
    let data = dir.path().join("data");
    let mut command = BrokerProcess::command(&data, &["--config", config.to_str().unwrap()]);
    command.env("SLUICE_FAILPOINT", "segment_reader_open_once");
    let broker = BrokerProcess::start_command(command);
    kafka_clients::create_topic(&broker.address, "rolls", 1, &[("segment.ms", "1")]);
    let mut wire = Wire::connect(&broker.address);
    // Appends spaced past segment.ms roll the shard's segment; the first
    // roll fails and the later ones must succeed.
    let mut codes = Vec::new();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(50));
        codes.push(produce_with_acks(&mut wire, "rolls", 0, batch(1, 10), -1));
    }
    assert!(
        broker.wait_for_log("Too many open files"),
        "the failpoint fired: {:?}",
        broker.log()
    );
    assert!(
        codes.iter().all(|&code| code == 0),
        "no append failed: {codes:?}"
    );
    let most_segments = most_segments(&data);
    assert!(
        most_segments >= 5,
        "later rolls succeeded: {most_segments} segments"
    );
    assert!(broker.stop().success());
}

/// The most segment files any shard of the broker on `data` has.
fn most_segments(data: &Path) -> usize {
    std::fs::read_dir(data)
        .unwrap()
        .filter_map(|entry| {
            let log = entry.unwrap().path().join("log");
            std::fs::read_dir(log).ok().map(|files| files.count())
        })
        .max()
        .unwrap()
}

/// Found by both issue-14 trials: a topic with `segment.ms=1` rolled the
/// shared log at every append, so the shard ran out of descriptors and
/// refused every topic. Age rolls wait `storage.segment_roll_min_ms`.
#[test]
fn a_tiny_segment_ms_rolls_no_sooner_than_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    kafka_clients::create_topic(&broker.address, "tiny", 1, &[("segment.ms", "1")]);
    let mut wire = Wire::connect(&broker.address);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(produce_with_acks(&mut wire, "tiny", 0, batch(1, 10), -1), 0);
    }
    let most_segments = most_segments(&data);
    assert_eq!(most_segments, 1, "no age roll before the 10-minute floor");
    assert!(broker.stop().success());
}
