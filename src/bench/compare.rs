//! `sluice bench produce --idempotent|--transactional`: what idempotence or
//! transactions cost the broker (issue 13, docs/exactly-once-design.md
//! 5.4). Plain producers and the variant run interleaved in one
//! invocation, `--rounds` rounds of two halves, plain first in odd rounds
//! and the variant first in even ones (A B, B A, A B, ...), so drift in a
//! shared machine and its disk, and whatever the first half of a round
//! leaves to the second, hit both alike. Each half writes a fresh topic of
//! the same layout (`<topic>-<round>-plain`, `<topic>-<round>-<variant>`),
//! so no partition carries state from another half, and gets its own
//! warm-up.
//!
//! Both halves send the same batches with the same per-send CRC
//! (`batch.rs`), with acks=all and the same in-flight count, so the client
//! costs the same and the difference is the broker's: the producer-state
//! check and update per batch, and for transactions also AddPartitionsToTxn
//! and EndTxn, the markers, and the pipeline draining before each commit.
//! The figure is `<variant>_ratio`, the median over rounds of variant MB/s
//! ÷ plain MB/s, with `p99_ratio` likewise for the p99 ack latency (the
//! design's target for idempotence: ≥ 0.95 and ≤ 1.05); a transactional
//! half also reports its commit latency (`transaction.rs`). Any produce
//! error fails the run: an OUT_OF_ORDER_SEQUENCE_NUMBER is the load
//! generator's bug, and counting past it would measure nothing.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use super::baseline::Baseline;
use super::produce::{self, ProduceLoad, ProducerKind, Window};
use super::stats::{Bound, Recorder, Report, median, round};
use super::transaction::TxnFigures;

/// How the halves of a comparison run.
pub struct Comparison<'a> {
    /// The load of both halves; its topic is the prefix of theirs, its
    /// kind the variant compared with plain.
    pub load: &'a ProduceLoad,
    pub rounds: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub baseline: Option<Baseline>,
}

impl Comparison<'_> {
    fn variant(&self) -> ProducerKind {
        self.load.kind
    }

    /// The halves of `round` (from 1) in the order they run: plain first in
    /// odd rounds, the variant first in even ones (A B, B A, ...), so an
    /// effect of running first or second in a round (the disk still busy
    /// with the half before, retention deleting its segments) falls on both
    /// kinds alike over an even number of rounds.
    fn order(&self, round: usize) -> [ProducerKind; 2] {
        if round % 2 == 1 {
            [ProducerKind::Plain, self.variant()]
        } else {
            [self.variant(), ProducerKind::Plain]
        }
    }
}

/// Where a half's figures go: 0 plain, 1 the variant.
fn index(kind: ProducerKind) -> usize {
    match kind {
        ProducerKind::Plain => 0,
        _ => 1,
    }
}

/// A half's report title.
fn half_title(kind: ProducerKind) -> &'static str {
    match kind {
        ProducerKind::Plain => "produce, plain",
        ProducerKind::Idempotent => "produce, idempotent",
        ProducerKind::Transactional { .. } => "produce, transactional",
        ProducerKind::Delayed { .. } => "produce, delayed",
    }
}

/// The title of the report over every round.
fn all_rounds_title(kind: ProducerKind) -> &'static str {
    match kind {
        ProducerKind::Plain => "produce, plain (all rounds)",
        ProducerKind::Idempotent => "produce, idempotent (all rounds)",
        ProducerKind::Transactional { .. } => "produce, transactional (all rounds)",
        ProducerKind::Delayed { .. } => "produce, delayed (all rounds)",
    }
}

/// The topic of one half: `<topic>-<round>-<kind>`.
fn half_topic(prefix: &str, round: &str, kind: ProducerKind) -> String {
    format!("{prefix}-{round}-{}", kind.name())
}

fn half_load(load: &ProduceLoad, round: &str, kind: ProducerKind) -> ProduceLoad {
    ProduceLoad {
        topic: half_topic(&load.topic, round, kind),
        kind,
        // Fresh topics, on a single node (the comparison is not
        // leader-aware).
        leaders: Default::default(),
        ..load.clone()
    }
}

/// A transactional half's extra figures, for its report.
fn transaction_extra(transactions: Option<&TxnFigures>) -> Vec<(&'static str, Value)> {
    transactions
        .map(|figures| vec![("transactions", figures.to_json())])
        .unwrap_or_default()
}

/// One half's figures, taken before its recorders join the totals.
struct Half {
    json: Value,
    throughput_mb_s: f64,
    p99_ms: f64,
    commit_p50_ms: Option<f64>,
    commit_p99_ms: Option<f64>,
}

/// Every round's figures of one kind together.
#[derive(Default)]
struct Totals {
    acks: Recorder,
    transactions: Option<TxnFigures>,
    elapsed: Duration,
}

/// Run the rounds; `ensure_topic` creates a half's topic (or checks its
/// layout) before the half starts. Returns the report as JSON and text.
pub fn run(
    comparison: &Comparison<'_>,
    ensure_topic: impl Fn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<(Value, String)> {
    assert!(comparison.rounds > 0, "--rounds is at least 1");
    assert_ne!(
        comparison.variant(),
        ProducerKind::Plain,
        "plain against what?"
    );
    let mut totals = [Totals::default(), Totals::default()];
    let mut rounds = Vec::with_capacity(comparison.rounds);
    for round in 1..=comparison.rounds {
        let mut halves: [Option<Half>; 2] = [None, None];
        for kind in comparison.order(round) {
            let (half, produced) = run_half(comparison, round, kind, &ensure_topic)?;
            eprintln!(
                "round {round}/{} {:<13}  {:8.1} MB/s  p99 {:.3} ms{}",
                comparison.rounds,
                kind.name(),
                half.throughput_mb_s,
                half.p99_ms,
                half.commit_p99_ms
                    .map(|p99| format!("  commit p99 {p99:.3} ms"))
                    .unwrap_or_default()
            );
            let total = &mut totals[index(kind)];
            total.acks.merge(produced.acks);
            if let Some(figures) = produced.transactions {
                total
                    .transactions
                    .get_or_insert_with(TxnFigures::default)
                    .merge(figures);
            }
            total.elapsed += produced.elapsed;
            halves[index(kind)] = Some(half);
        }
        let [Some(plain), Some(variant)] = halves else {
            unreachable!("every round runs both halves")
        };
        rounds.push((plain, variant));
    }
    let [plain, variant] = totals;
    let commit_text = variant
        .transactions
        .as_ref()
        .map(TxnFigures::to_text)
        .unwrap_or_default();
    let [plain, variant] = [
        (ProducerKind::Plain, plain),
        (comparison.variant(), variant),
    ]
    .map(|(kind, total)| Report {
        test: all_rounds_title(kind),
        latency_of: "ack latency",
        settings: super::producer_settings(&half_load(comparison.load, "*", kind)),
        elapsed: total.elapsed,
        recorder: total.acks,
        baseline: comparison
            .baseline
            .map(|baseline| (baseline, Bound::DurableWrite)),
        extra: transaction_extra(total.transactions.as_ref()),
        client_cpu: None,
    });
    Ok(summarize(
        comparison,
        &rounds,
        &plain,
        &variant,
        &commit_text,
    ))
}

fn run_half(
    comparison: &Comparison<'_>,
    round: usize,
    kind: ProducerKind,
    ensure_topic: &impl Fn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<(Half, produce::Produced)> {
    let load = half_load(comparison.load, &round.to_string(), kind);
    ensure_topic(&load.topic)?;
    let window = Window::new(comparison.warmup, comparison.duration);
    let produced = produce::run(&load, window)
        .with_context(|| format!("round {round}, {} producers", kind.name()))?;
    let acks = &produced.acks;
    if acks.errors > 0 {
        anyhow::bail!(
            "round {round}, {} producers: {} produce request(s) failed, first: {}; the \
             comparison stops (after a failed request an idempotent producer's sequences are \
             off, and a half with failures measures something else)",
            kind.name(),
            acks.errors,
            acks.first_error.as_deref().unwrap_or("?")
        );
    }
    let elapsed = produced.elapsed;
    let report = Report {
        test: half_title(kind),
        latency_of: "ack latency",
        settings: super::producer_settings(&load),
        elapsed,
        recorder: produced.acks,
        baseline: None,
        extra: transaction_extra(produced.transactions.as_ref()),
        client_cpu: None,
    };
    let commits = produced
        .transactions
        .as_ref()
        .map(|figures| &figures.commits);
    let half = Half {
        json: report.to_json(),
        throughput_mb_s: report.throughput_mb_s(),
        p99_ms: report.recorder.percentile_ms(0.99),
        commit_p50_ms: commits.map(|commits| commits.percentile_ms(0.50)),
        commit_p99_ms: commits.map(|commits| commits.percentile_ms(0.99)),
    };
    let produced = produce::Produced {
        acks: report.recorder,
        ..produced
    };
    Ok((half, produced))
}

/// The shared settings: topics `<topic>-<round>-plain|<variant>`.
fn settings(comparison: &Comparison<'_>) -> Value {
    let variant = comparison.variant();
    let mut settings = super::producer_settings(comparison.load);
    settings["topic"] = json!(format!(
        "{}-<round>-plain|{}",
        comparison.load.topic,
        variant.name()
    ));
    if let Some(fields) = settings.as_object_mut() {
        fields.remove("idempotent");
        fields.remove("transactional");
    }
    settings["rounds"] = json!(comparison.rounds);
    settings["warmup_s"] = json!(comparison.warmup.as_secs_f64());
    settings["duration_s"] = json!(comparison.duration.as_secs_f64());
    settings
}

/// The ratios of one round: the variant over plain, MB/s and p99.
fn ratios(plain: &Half, variant: &Half) -> (f64, f64) {
    (
        variant.throughput_mb_s / plain.throughput_mb_s.max(1e-9),
        variant.p99_ms / plain.p99_ms.max(1e-9),
    )
}

fn summarize(
    comparison: &Comparison<'_>,
    rounds: &[(Half, Half)],
    plain: &Report,
    variant: &Report,
    commit_text: &str,
) -> (Value, String) {
    let name = comparison.variant().name();
    let ratio_key = format!("{name}_ratio");
    let per_round: Vec<(f64, f64)> = rounds
        .iter()
        .map(|(plain, variant)| ratios(plain, variant))
        .collect();
    let throughput_ratio = median(per_round.iter().map(|(ratio, _)| *ratio).collect());
    let p99_ratio = median(per_round.iter().map(|(_, ratio)| *ratio).collect());
    let mut json = json!({
        "test": format!("produce --{name}"),
        "settings": settings(comparison),
        "rounds": rounds.iter().zip(&per_round).enumerate().map(
            |(index, ((plain, variant), (throughput, p99)))| {
                let mut round_json = json!({
                    "round": index + 1,
                    "plain": plain.json,
                    "p99_ratio": round(*p99),
                });
                round_json[name] = variant.json.clone();
                round_json[ratio_key.as_str()] = json!(round(*throughput));
                round_json
            }
        ).collect::<Vec<_>>(),
        "plain": plain.to_json(),
        "p99_ratio": round(p99_ratio),
    });
    json[name] = variant.to_json();
    json[ratio_key.as_str()] = json!(round(throughput_ratio));
    let transactional = rounds
        .iter()
        .any(|(_, variant)| variant.commit_p99_ms.is_some());
    let mut text = format!(
        "produce --{name}: plain and {name} producers, interleaved\n  \
         round  plain MB/s  p99 ms   {name:>13} MB/s  p99 ms   MB/s ratio  p99 ratio{}\n",
        if transactional {
            "  commit p50 ms  commit p99 ms"
        } else {
            ""
        }
    );
    for (index, ((plain, variant), (throughput, p99))) in rounds.iter().zip(&per_round).enumerate()
    {
        text += &format!(
            "  {:<5}  {:>10.1}  {:>7.3}  {:>18.1}  {:>7.3}  {:>10.3}  {:>9.3}",
            index + 1,
            plain.throughput_mb_s,
            plain.p99_ms,
            variant.throughput_mb_s,
            variant.p99_ms,
            throughput,
            p99
        );
        if let (Some(p50), Some(p99)) = (variant.commit_p50_ms, variant.commit_p99_ms) {
            text += &format!("  {p50:>13.3}  {p99:>13.3}");
        }
        text += "\n";
    }
    text += &plain.to_text();
    text += &variant.to_text();
    text += commit_text;
    text += &format!(
        "{ratio_key} {throughput_ratio:.3} ({name} MB/s / plain MB/s), p99_ratio \
         {p99_ratio:.3} ({name} p99 / plain p99): medians over {} round(s)\n",
        rounds.len()
    );
    (json, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::batch::Compression;

    fn half(throughput_mb_s: f64, p99_ms: f64) -> Half {
        Half {
            json: json!({}),
            throughput_mb_s,
            p99_ms,
            commit_p50_ms: None,
            commit_p99_ms: None,
        }
    }

    fn load(kind: ProducerKind) -> ProduceLoad {
        ProduceLoad {
            address: "127.0.0.1:9092".into(),
            leaders: Default::default(),
            topic: "cmp".into(),
            partitions: 2,
            producers: 2,
            record_size: 1024,
            batch_records: 1000,
            acks: -1,
            compression: Compression::None,
            rate_mb_s: None,
            inflight: 5,
            stamp: false,
            kind,
            record_headers: Vec::new(),
        }
    }

    #[test]
    fn rounds_alternate_which_kind_runs_first() {
        for variant in [
            ProducerKind::Idempotent,
            ProducerKind::Transactional {
                batches_per_partition: 10,
            },
        ] {
            let load = load(variant);
            let comparison = Comparison {
                load: &load,
                rounds: 4,
                warmup: Duration::ZERO,
                duration: Duration::from_secs(1),
                baseline: None,
            };
            let firsts: Vec<ProducerKind> =
                (1..=4).map(|round| comparison.order(round)[0]).collect();
            let plain = ProducerKind::Plain;
            assert_eq!(firsts, [plain, variant, plain, variant]);
            for round in 1..=4 {
                let [first, second] = comparison.order(round);
                assert_ne!(index(first), index(second), "both kinds in round {round}");
            }
        }
    }

    #[test]
    fn each_half_writes_its_own_topic_as_its_own_kind() {
        let variant = ProducerKind::Transactional {
            batches_per_partition: 3,
        };
        let half = half_load(&load(variant), "2", variant);
        assert_eq!(half.topic, "cmp-2-transactional");
        assert_eq!(half.kind, variant);
        let plain = half_load(&load(variant), "2", ProducerKind::Plain);
        assert_eq!(plain.topic, "cmp-2-plain");
        assert_eq!(plain.kind, ProducerKind::Plain);
    }

    #[test]
    fn ratios_are_variant_over_plain() {
        let (throughput, p99) = ratios(&half(1000.0, 20.0), &half(950.0, 21.0));
        assert!((throughput - 0.95).abs() < 1e-9);
        assert!((p99 - 1.05).abs() < 1e-9);
    }
}
