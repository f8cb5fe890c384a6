//! The shard runtime: owner routing through mailboxes, cross-shard calls,
//! restarts, and the `serve` process's guards and shutdown.

use std::process::{Command, Stdio};

use sluice::config::WriteMode;
use sluice::data_dir::DataDir;
use sluice::ids::{Offset, ShardId};
use sluice::shard::ShardRuntime;
use sluice::storage::Durability;

use crate::support::{self, batch, stderr_lines, validated, wait_for};

const PARTITIONS: u32 = 6;
const BATCHES: usize = 20;

#[test]
fn partitions_live_on_their_owner_shard_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::runtime_config(dir.path(), 2);
    let backend = support::native_backend();
    let client = support::runtime(backend);

    let data_dir = DataDir::open(dir.path(), 2, WriteMode::Direct).unwrap();
    let runtime = ShardRuntime::start(
        &config,
        &data_dir,
        backend,
        std::sync::Arc::new(sluice::shard::StorageOnly),
    )
    .unwrap();
    let shards = runtime.shards().clone();
    client.block_on(async {
        for index in 0..PARTITIONS {
            let owner = shards.owner("routed", index);
            let served_by = shards
                .call(owner, move |context| async move {
                    let store = &context.store();
                    let id = support::create(store, "routed", index);
                    for seq in 0..BATCHES {
                        let bytes = batch(&format!("p{index}s{seq}"), 2, 200);
                        let receipt = store
                            .append(id, validated(&bytes), Durability::Fsynced)
                            .await
                            .unwrap();
                        store.wait(&receipt).await.unwrap();
                    }
                    context.id
                })
                .await
                .unwrap();
            assert_eq!(served_by, owner);
        }
        // A shard asks another shard: the call crosses mailboxes both ways.
        let other = shards.owner("routed", 1);
        let asked_from = ShardId(1 - other.0);
        let high_watermark = shards
            .call(asked_from, move |context| async move {
                context
                    .shards
                    .call(other, |owner| async move {
                        let id = owner.store().partition_id("routed", 1).unwrap();
                        owner.store().offsets(id).unwrap().high_watermark
                    })
                    .await
                    .unwrap()
            })
            .await
            .unwrap();
        assert_eq!(high_watermark, Offset(2 * BATCHES as i64));
    });
    assert!(runtime.shutdown().is_empty());
    drop(data_dir);

    let data_dir = DataDir::open(dir.path(), 2, WriteMode::Direct).unwrap();
    let runtime = ShardRuntime::start(
        &config,
        &data_dir,
        backend,
        std::sync::Arc::new(sluice::shard::StorageOnly),
    )
    .unwrap();
    let partitions: usize = runtime
        .ready()
        .iter()
        .map(|ready| ready.recovery.partitions)
        .sum();
    assert_eq!(partitions, PARTITIONS as usize);
    let shards = runtime.shards().clone();
    client.block_on(async {
        for index in 0..PARTITIONS {
            let batches = shards
                .call(shards.owner("routed", index), move |context| async move {
                    let id = context.store().partition_id("routed", index).unwrap();
                    support::read_all(&context.store(), id, Offset(0)).len()
                })
                .await
                .unwrap();
            assert_eq!(batches, BATCHES, "partition {index} after restart");
        }
    });
    assert!(runtime.shutdown().is_empty());
}

fn serve(data_dir: &std::path::Path, shards: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--shards", shards, "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn serve_guards_its_data_dir_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = serve(dir.path(), "2");
    let first_lines = stderr_lines(&mut first);
    let mut seen = Vec::new();
    assert!(
        wait_for(&first_lines, "sluice ready", &mut seen),
        "{seen:#?}"
    );

    let mut second = serve(dir.path(), "2");
    let second_lines = stderr_lines(&mut second);
    assert!(!second.wait().unwrap().success());
    let refused: Vec<String> = second_lines.iter().collect();
    assert!(
        refused
            .iter()
            .any(|line| line.contains("in use by another sluice process")),
        "{refused:#?}"
    );

    support::terminate(&first);
    assert!(first.wait().unwrap().success());
    assert!(
        wait_for(&first_lines, "sluice stopped", &mut seen),
        "{seen:#?}"
    );

    let mut resharded = serve(dir.path(), "3");
    let resharded_lines = stderr_lines(&mut resharded);
    assert!(!resharded.wait().unwrap().success());
    let refused: Vec<String> = resharded_lines.iter().collect();
    assert!(
        refused.iter().any(|line| line.contains("set `shards = 2`")),
        "{refused:#?}"
    );
}
