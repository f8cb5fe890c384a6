//! `sluice bench` against the real broker: the JSON it prints, records it
//! produced coming back through `consume` and an independent client, e2e
//! stamps, the same-run baseline, and clear errors.

use std::process::Command;

use serde_json::Value;

use super::broker_process::BrokerProcess;
use super::kafka_clients::{consume, create_topic, high_watermarks};

fn bench(address: &str, args: &[&str]) -> (bool, Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("bench")
        .args(args)
        .args(["--brokers", address, "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = if output.status.success() {
        assert_eq!(
            stdout.lines().count(),
            1,
            "one JSON line on stdout: {stdout}"
        );
        serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{error}: {stdout}"))
    } else {
        Value::Null
    };
    (output.status.success(), json, stderr)
}

fn number(json: &Value, key: &str) -> f64 {
    json[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing from {json}"))
}

#[test]
fn produce_and_consume_report_what_the_log_holds() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let shape = ["--record-size", "200", "--batch-records", "50"];
    let (ok, produced, log) = bench(
        &broker.address,
        &[
            &["produce", "--topic", "load", "--partitions", "3"][..],
            &shape,
            &["--acks", "all", "--duration", "1", "--warmup", "0.2"],
        ]
        .concat(),
    );
    assert!(ok, "{log}");
    let records = number(&produced, "records");
    assert!(records >= 50.0 && records % 50.0 == 0.0, "{produced}");
    assert_eq!(number(&produced, "errors"), 0.0);
    for key in [
        "throughput_mb_s",
        "records_per_s",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
    ] {
        assert!(number(&produced, key) > 0.0, "{key} in {produced}");
    }
    assert!(number(&produced, "p50_ms") <= number(&produced, "p99_ms"));
    assert!(number(&produced, "p99_ms") <= number(&produced, "max_ms"));
    assert!(produced.get("baseline_ratio").is_none());

    // The log holds at least what was acknowledged (warm-up batches too),
    // and an independent client reads it all back intact.
    let in_log: i64 = high_watermarks(&broker.address, "load", 3).iter().sum();
    assert!(in_log as f64 >= records, "{in_log} < {records}");
    let read = consume(&broker.address, "load", 3, 0, in_log as usize);
    assert!(read.iter().all(|record| record.payload.len() == 200));
    assert!(read.iter().any(|record| record.partition == 2));

    // Catch-up consume reads exactly that many records.
    let (ok, consumed, log) = bench(
        &broker.address,
        &["consume", "--topic", "load", "--consumers", "2"],
    );
    assert!(ok, "{log}");
    assert_eq!(number(&consumed, "records"), in_log as f64, "{consumed}");
    assert_eq!(number(&consumed, "errors"), 0.0);
    assert!(number(&consumed, "p50_ms") > 0.0);

    // A topic with another partition count is refused, not silently used.
    let (ok, _, log) = bench(
        &broker.address,
        &[
            "produce",
            "--topic",
            "load",
            "--partitions",
            "2",
            "--duration",
            "1",
        ],
    );
    assert!(!ok);
    assert!(log.contains("exists with 3 partitions, not 2"), "{log}");
}

#[test]
fn e2e_measures_stamped_batches_and_baseline_gives_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    let (ok, e2e, log) = bench(
        &broker.address,
        &[
            "e2e",
            "--topic",
            "e2e",
            "--rate",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--record-size",
            "100",
            "--batch-records",
            "10",
            "--compression",
            "lz4",
        ],
    );
    assert!(ok, "{log}");
    // 2 MB/s of ~1 KB batches for a second: on the order of 2000 batches,
    // every one consumed after it was produced.
    let produced = number(&e2e["produce"], "records");
    let consumed = number(&e2e, "records");
    assert!(produced >= 1000.0, "{e2e}");
    assert_eq!(consumed, produced, "{e2e}");
    assert!(number(&e2e, "p50_ms") > 0.0);
    assert!(number(&e2e, "p99_ms") < 10_000.0);

    let (ok, produced, log) = bench(
        &broker.address,
        &[
            "produce",
            "--topic",
            "ratio",
            "--acks",
            "1",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--record-size",
            "100",
            "--batch-records",
            "100",
            "--baseline",
            "--baseline-duration",
            "0.3",
            "--data-dir",
        ]
        .into_iter()
        .chain([data.to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    assert!(ok, "{log}");
    let baseline = &produced["baseline"];
    for key in [
        "tcp_mb_s",
        "disk_sync_mb_s",
        "disk_write_mb_s",
        "disk_read_mb_s",
    ] {
        assert!(number(baseline, key) > 0.0, "{key} in {baseline}");
    }
    let limit = number(baseline, "tcp_mb_s").min(number(baseline, "disk_write_mb_s"));
    let ratio = number(&produced, "baseline_ratio");
    let expected = number(&produced, "throughput_mb_s") / limit;
    assert!(
        (ratio - expected).abs() < 0.01,
        "{ratio} vs {expected}: {produced}"
    );
    // The scratch file is gone.
    let leftovers: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with(".sluice-baseline")
        })
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn consume_of_an_empty_topic_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    create_topic(&broker.address, "empty", 2, &[]);
    let (ok, _, log) = bench(&broker.address, &["consume", "--topic", "empty"]);
    assert!(!ok);
    assert!(log.contains("holds no records to read"), "{log}");
    assert!(log.contains("sluice bench produce --topic empty"), "{log}");
}
