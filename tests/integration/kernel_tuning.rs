//! kernel-tuning/check and kernel-tuning/apply: `check` and a dry-run
//! `apply` on this machine (changing nothing), and a full `apply --execute
//! --persist` against a fake /proc, /sys and /etc (SLUICE_TUNING_ROOT), after
//! which `check` finds nothing off.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn script(name: &str, root: Option<&Path>, args: &[&str]) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kernel-tuning")
        .join(name);
    let mut command = Command::new("bash");
    command.arg(path).args(args);
    match root {
        Some(root) => command.env("SLUICE_TUNING_ROOT", root),
        None => command.env_remove("SLUICE_TUNING_ROOT"),
    };
    command.output().expect("bash runs the script")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The sysctls apply may touch, read straight from /proc/sys.
fn host_sysctls() -> Vec<(String, String)> {
    [
        "vm/swappiness",
        "vm/dirty_background_ratio",
        "vm/dirty_ratio",
        "vm/dirty_expire_centisecs",
        "net/core/somaxconn",
        "net/core/netdev_max_backlog",
        "net/ipv4/tcp_wmem",
    ]
    .iter()
    .map(|key| {
        let value = fs::read_to_string(Path::new("/proc/sys").join(key)).unwrap_or_default();
        ((*key).to_owned(), value)
    })
    .collect()
}

#[test]
fn check_reports_every_tunable_on_this_host_and_dry_run_changes_nothing() {
    let check = script("check", None, &["--data-dir", env!("CARGO_MANIFEST_DIR")]);
    let report = text(&check);
    let code = check.status.code();
    assert!(
        code == Some(0) || code == Some(1),
        "check exits 0 or 1: {report}"
    );
    let off = report
        .lines()
        .filter(|line| line.starts_with("off "))
        .count();
    assert_eq!(code == Some(1), off > 0, "exit status matches: {report}");
    for tunable in [
        "vm.dirty_background_ratio",
        "vm.dirty_ratio",
        "vm.dirty_expire_centisecs",
        "vm.swappiness",
        "transparent_hugepage",
        "net.core.somaxconn",
        "net.core.netdev_max_backlog",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
        "fs.file-max",
        "nofile",
        "memlock",
        "kernel.io_uring_disabled",
        "cpu governor",
        "core isolation",
        "irq affinity",
        "numa",
        "discard mount option",
    ] {
        assert!(
            report.lines().any(|line| line.contains(tunable)),
            "{tunable} is reported: {report}"
        );
    }

    let before = host_sysctls();
    let dry = script("apply", None, &["--persist"]);
    let said = text(&dry);
    assert_eq!(dry.status.code(), Some(0), "{said}");
    assert!(said.contains("dry run: nothing is changed"), "{said}");
    assert!(
        !said.lines().any(|line| line.starts_with("changed ")),
        "{said}"
    );
    assert_eq!(host_sysctls(), before, "a dry run changes nothing");
    // Every setting check found off is either shown as a change or left to the operator.
    let answered = said
        .lines()
        .filter(|line| line.starts_with("would set ") || line.starts_with("left to you: "))
        .count();
    assert!(answered >= off, "{said}\n{report}");
}

fn write(root: &Path, path: &str, value: &str) {
    let file = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(file, format!("{value}\n")).unwrap();
}

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path.trim_start_matches('/')))
        .unwrap()
        .trim_end()
        .to_owned()
}

/// A 4-core, one-node host with an NVMe disk and everything off.
fn untuned_host(root: &Path) {
    for (key, value) in [
        ("vm/dirty_background_ratio", "10"),
        ("vm/dirty_ratio", "40"),
        ("vm/dirty_expire_centisecs", "3000"),
        ("vm/swappiness", "60"),
        ("net/core/somaxconn", "128"),
        ("net/core/netdev_max_backlog", "1000"),
        ("net/core/rmem_max", "212992"),
        ("net/core/wmem_max", "212992"),
        ("net/ipv4/tcp_rmem", "4096\t131072\t6291456"),
        ("net/ipv4/tcp_wmem", "4096\t16384\t4194304"),
        ("fs/file-max", "65536"),
        ("kernel/io_uring_disabled", "2"),
        ("kernel/osrelease", "6.8.0-test"),
    ] {
        write(root, &format!("/proc/sys/{key}"), value);
    }
    write(
        root,
        "/sys/block/nvme0n1/queue/scheduler",
        "[mq-deadline] none",
    );
    write(root, "/sys/block/nvme0n1/queue/read_ahead_kb", "4096");
    write(root, "/sys/block/nvme0n1/queue/nr_requests", "64");
    write(root, "/sys/block/nvme0n1/queue/rotational", "0");
    write(
        root,
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "[always] madvise never",
    );
    write(root, "/sys/devices/system/cpu/online", "0-3");
    for core in 0..4 {
        write(
            root,
            &format!("/sys/devices/system/cpu/cpu{core}/cpufreq/scaling_governor"),
            "powersave",
        );
    }
    fs::create_dir_all(root.join("sys/devices/system/node/node0")).unwrap();
    write(
        root,
        "/proc/interrupts",
        "           CPU0       CPU1       CPU2       CPU3\n 40:  10  0  0  0  PCI-MSIX-0000:01:00.0  0-edge  nvme0q0\n 41:  0  0  0  0  PCI-MSIX-0000:02:00.0  0-edge  eth0-rx-0",
    );
    write(root, "/proc/irq/40/smp_affinity_list", "0-3");
    write(root, "/proc/irq/41/smp_affinity_list", "1");
    write(root, "/proc/cmdline", "quiet isolcpus=0,1");
    write(
        root,
        "/proc/self/mounts",
        "proc /proc proc rw 0 0\n/dev/nvme0n1p1 / ext4 rw,relatime 0 0\n/dev/nvme0n1p2 /var/lib ext4 rw,relatime,discard 0 0",
    );
    write(
        root,
        "/proc/4242/limits",
        "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1048576              1048576              files\nMax locked memory         65536                65536                bytes",
    );
    // An operator's earlier entry, and one apply will replace.
    write(
        root,
        "/etc/sysctl.d/60-sluice.conf",
        "# earlier\nvm.swappiness = 10\nnet.ipv4.ip_local_port_range = 1024 65000",
    );
}

#[test]
fn apply_execute_persist_fixes_what_check_finds_in_a_fake_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    untuned_host(root);
    let options = ["--device", "nvme0n1", "--shards", "2", "--pid", "4242"];

    let check = script("check", Some(root), &options);
    let report = text(&check);
    assert_eq!(check.status.code(), Some(1), "{report}");
    for off in [
        "nvme0n1 scheduler",
        "nvme0n1 read_ahead_kb",
        "nvme0n1 nr_requests",
        "vm.swappiness",
        "transparent_hugepage",
        "net.core.somaxconn",
        "net.ipv4.tcp_wmem",
        "fs.file-max",
        "kernel.io_uring_disabled",
        "cpu governor",
        "irq affinity",
        "discard mount option",
    ] {
        assert!(
            report
                .lines()
                .any(|line| line.starts_with("off") && line.contains(off)),
            "{off} is off: {report}"
        );
    }

    let dry = script(
        "apply",
        Some(root),
        &[&options[..], &["--persist"]].concat(),
    );
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    assert_eq!(
        read(root, "/proc/sys/vm/swappiness"),
        "60",
        "dry run by default"
    );

    let applied = script(
        "apply",
        Some(root),
        &[&options[..], &["--execute", "--persist"]].concat(),
    );
    let said = text(&applied);
    assert_eq!(applied.status.code(), Some(0), "{said}");
    assert!(said.contains("changed vm.swappiness: 60 -> 1"), "{said}");
    assert_eq!(read(root, "/proc/sys/vm/swappiness"), "1");
    assert_eq!(
        read(root, "/proc/sys/net/ipv4/tcp_wmem"),
        "4096 16384 16777216"
    );
    assert_eq!(read(root, "/proc/sys/kernel/io_uring_disabled"), "0");
    assert_eq!(read(root, "/sys/block/nvme0n1/queue/scheduler"), "none");
    assert_eq!(
        read(root, "/sys/kernel/mm/transparent_hugepage/enabled"),
        "madvise"
    );
    assert_eq!(
        read(
            root,
            "/sys/devices/system/cpu/cpu1/cpufreq/scaling_governor"
        ),
        "performance"
    );
    assert_eq!(
        read(
            root,
            "/sys/devices/system/cpu/cpu3/cpufreq/scaling_governor"
        ),
        "powersave",
        "only shard cores"
    );
    assert_eq!(read(root, "/proc/irq/40/smp_affinity_list"), "2-3");
    assert_eq!(read(root, "/proc/irq/41/smp_affinity_list"), "2-3");

    let sysctl = read(root, "/etc/sysctl.d/60-sluice.conf");
    assert!(sysctl.contains("vm.swappiness = 1"), "{sysctl}");
    assert!(!sysctl.contains("vm.swappiness = 10"), "{sysctl}");
    assert!(
        sysctl.contains("net.ipv4.ip_local_port_range = 1024 65000"),
        "other entries are kept: {sysctl}"
    );
    let udev = read(root, "/etc/udev/rules.d/60-sluice.rules");
    assert!(
        udev.contains(r#"KERNEL=="nvme0n1", ATTR{queue/scheduler}="none""#),
        "{udev}"
    );
    let tmpfiles = read(root, "/etc/tmpfiles.d/sluice.conf");
    assert!(
        tmpfiles.contains("transparent_hugepage/enabled"),
        "{tmpfiles}"
    );

    // What apply leaves to the operator: remounting without `discard`.
    assert!(
        said.contains("left to you: discard mount option is discard"),
        "{said}"
    );
    write(
        root,
        "/proc/self/mounts",
        "proc /proc proc rw 0 0\n/dev/nvme0n1p1 / ext4 rw,relatime 0 0\n/dev/nvme0n1p2 /var/lib ext4 rw,relatime 0 0",
    );
    let after = script("check", Some(root), &options);
    assert_eq!(after.status.code(), Some(0), "{}", text(&after));
}
