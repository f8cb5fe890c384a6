//! Append/read round trips against a simple in-memory model, as property
//! tests: random sequences of appends (single and in bursts that share group
//! commits), syncs, reads from random offsets and clean reopens, over small
//! segments so roll-over and chunk spanning happen constantly.

use std::rc::Rc;

use proptest::prelude::*;
use sluice::config::WriteMode;
use sluice::ids::{Offset, PartitionId};
use sluice::storage::{Durability, ShardStore};

use crate::support::{self, batch, stored_form, validated};

const PARTITIONS: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Append {
        partition: usize,
        records: usize,
        value_bytes: usize,
        fsync: bool,
    },
    /// Several appends issued before any is awaited: they share writes.
    Burst {
        partition: usize,
        count: usize,
        value_bytes: usize,
    },
    Sync,
    Read {
        partition: usize,
        from_permille: u16,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PARTITIONS, 1..6usize, 0..6000usize, any::<bool>()).prop_map(
            |(partition, records, value_bytes, fsync)| Op::Append { partition, records, value_bytes, fsync }
        ),
        2 => (0..PARTITIONS, 2..12usize, 0..3000usize)
            .prop_map(|(partition, count, value_bytes)| Op::Burst { partition, count, value_bytes }),
        1 => Just(Op::Sync),
        3 => (0..PARTITIONS, 0..1000u16).prop_map(|(partition, from_permille)| Op::Read { partition, from_permille }),
        1 => Just(Op::Reopen),
    ]
}

/// The model: per partition, the batches appended, with their base offsets.
#[derive(Default)]
struct Model {
    batches: Vec<Vec<(Offset, Vec<u8>)>>,
    next_label: usize,
}

impl Model {
    fn label(&mut self) -> String {
        self.next_label += 1;
        format!("b{}", self.next_label)
    }

    fn next_offset(&self, partition: usize) -> Offset {
        self.batches[partition]
            .last()
            .map_or(Offset(0), |(base, bytes)| {
                let header = sluice::record_batch::BatchHeader::parse(bytes).unwrap();
                Offset(base.0 + i64::from(header.last_offset_delta) + 1)
            })
    }
}

struct Harness {
    dir: tempfile::TempDir,
    write_mode: WriteMode,
    store: Rc<ShardStore>,
    ids: Vec<PartitionId>,
}

impl Harness {
    fn new(write_mode: WriteMode) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = support::open(dir.path(), write_mode, support::native_backend());
        let ids = (0..PARTITIONS)
            .map(|index| support::create(&store, "model", index as u32))
            .collect();
        Harness {
            dir,
            write_mode,
            store,
            ids,
        }
    }

    async fn apply(&mut self, op: &Op, model: &mut Model) {
        match *op {
            Op::Append {
                partition,
                records,
                value_bytes,
                fsync,
            } => {
                let label = model.label();
                let bytes = batch(&label, records, value_bytes);
                let durability = if fsync {
                    Durability::Fsynced
                } else {
                    Durability::Written
                };
                let receipt = self
                    .store
                    .append(self.ids[partition], validated(&bytes), durability)
                    .await
                    .unwrap();
                assert_eq!(
                    receipt.base_offset,
                    model.next_offset(partition),
                    "offsets are dense"
                );
                self.store.wait(&receipt).await.unwrap();
                model.batches[partition].push((receipt.base_offset, bytes));
            }
            Op::Burst {
                partition,
                count,
                value_bytes,
            } => {
                let mut receipts = Vec::new();
                for _ in 0..count {
                    let label = model.label();
                    let bytes = batch(&label, 1, value_bytes);
                    let receipt = self
                        .store
                        .append(self.ids[partition], validated(&bytes), Durability::Fsynced)
                        .await
                        .unwrap();
                    assert_eq!(receipt.base_offset, model.next_offset(partition));
                    model.batches[partition].push((receipt.base_offset, bytes));
                    receipts.push(receipt);
                }
                for receipt in &receipts {
                    self.store.wait(receipt).await.unwrap();
                }
            }
            Op::Sync => self.store.sync().await.unwrap(),
            Op::Read {
                partition,
                from_permille,
            } => self.check_read(model, partition, from_permille),
            Op::Reopen => {
                support::shutdown(&self.store).await;
                self.store =
                    support::open(self.dir.path(), self.write_mode, support::native_backend());
                for (index, id) in self.ids.iter().enumerate() {
                    assert_eq!(self.store.partition_id("model", index as u32), Some(*id));
                }
                for partition in 0..PARTITIONS {
                    self.check_read(model, partition, 0);
                }
            }
        }
    }

    fn check_read(&self, model: &Model, partition: usize, from_permille: u16) {
        let expected = &model.batches[partition];
        let end = model.next_offset(partition);
        let offsets = self.store.offsets(self.ids[partition]).unwrap();
        assert_eq!(offsets.high_watermark, end, "everything awaited is visible");
        let from = Offset(end.0 * i64::from(from_permille) / 1000);
        let got = support::read_all(&self.store, self.ids[partition], from);
        let first = expected.partition_point(|(base, bytes)| {
            let header = sluice::record_batch::BatchHeader::parse(bytes).unwrap();
            base.0 + i64::from(header.last_offset_delta) < from.0
        });
        assert_eq!(
            got.len(),
            expected.len() - first,
            "batch count from offset {from}"
        );
        for ((base, bytes), (expected_base, original)) in got.iter().zip(&expected[first..]) {
            assert_eq!(base, expected_base);
            assert_eq!(
                bytes,
                &stored_form(original, *expected_base),
                "stored bytes at {base}"
            );
        }
    }
}

fn run_model(write_mode: WriteMode, ops: &[Op]) {
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let mut harness = Harness::new(write_mode);
        let mut model = Model {
            batches: vec![Vec::new(); PARTITIONS],
            next_label: 0,
        };
        for op in ops {
            harness.apply(op, &mut model).await;
        }
        for partition in 0..PARTITIONS {
            harness.check_read(&model, partition, 0);
        }
        support::shutdown(&harness.store).await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn direct_writes_match_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run_model(WriteMode::Direct, &ops);
    }

    #[test]
    fn buffered_writes_match_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run_model(WriteMode::Buffered, &ops);
    }
}

#[test]
fn large_batches_span_write_buffers_and_segments() {
    // 60 KiB batches into 16 KiB write buffers and 256 KiB segments.
    let ops: Vec<Op> = (0..40)
        .map(|index| Op::Append {
            partition: index % PARTITIONS,
            records: 3,
            value_bytes: 20_000,
            fsync: index % 2 == 0,
        })
        .chain([
            Op::Reopen,
            Op::Read {
                partition: 1,
                from_permille: 500,
            },
        ])
        .collect();
    run_model(WriteMode::Direct, &ops);
}
