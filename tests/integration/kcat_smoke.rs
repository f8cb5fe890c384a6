//! The smoke test with kcat (Debian's, built on librdkafka 2.0.2): list
//! metadata, produce lines with `-P`, consume them with `-C -e`, compare.
//! `.ci/run` installs kcat; without it this test fails and says how to get it.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::broker_process::BrokerProcess;

/// Run Debian's kcat with `args`, `input` on its stdin; its output.
/// cargo's LD_LIBRARY_PATH is removed: it would hand kcat the test build's
/// librdkafka (no SCRAM) instead of Debian's.
pub fn kcat(args: &[&str], input: Option<&[u8]>) -> std::process::Output {
    let mut child = Command::new("kcat")
        .env_remove("LD_LIBRARY_PATH")
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("kcat is needed for this test ({error}); install it: apt-get install kcat, or run .ci/run"));
    if let Some(input) = input {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

#[test]
fn kcat_lists_produces_and_consumes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let address = broker.address.as_str();

    let listed = kcat(&["-b", address, "-L"], None);
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && listing.contains("1 brokers"),
        "{listing}"
    );

    let lines: String = (0..2000).map(|index| format!("line-{index}\n")).collect();
    let produced = kcat(
        &["-b", address, "-P", "-t", "smoke", "-X", "acks=all"],
        Some(lines.as_bytes()),
    );
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );

    let consumed = kcat(&["-b", address, "-C", "-t", "smoke", "-e", "-q"], None);
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&consumed.stdout),
        lines,
        "kcat reads back exactly what it wrote"
    );

    let listed = kcat(&["-b", address, "-L", "-t", "smoke"], None);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("topic \"smoke\" with 1 partitions"));
}
