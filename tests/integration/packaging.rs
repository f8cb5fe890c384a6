//! packaging/sluice.service passes `systemd-analyze verify` (pointed at the
//! binary under test), with the limits io_uring and many connections need.

use std::process::Command;

#[test]
fn the_systemd_unit_verifies_cleanly() {
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/sluice.service"),
    )
    .unwrap();
    for setting in [
        "LimitNOFILE=1048576",
        "LimitMEMLOCK=infinity",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "ExecStart=/usr/bin/sluice serve --config /etc/sluice/sluice.toml",
    ] {
        assert!(
            source.lines().any(|line| line == setting),
            "{setting} is set"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("sluice.service");
    std::fs::write(
        &unit,
        source.replace("/usr/bin/sluice", env!("CARGO_BIN_EXE_sluice")),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs (.ci/run installs systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success(), "{said}");
    assert_eq!(said.trim(), "", "no warnings");
}
