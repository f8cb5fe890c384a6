//! `sluice bench produce --idempotent`: what idempotence costs the broker
//! (issue 13, docs/exactly-once-design.md 5.4). Plain and idempotent
//! producers run interleaved in one invocation, `--rounds` rounds of two
//! halves, plain first in odd rounds and idempotent first in even ones
//! (A B, B A, A B, ...), so drift in a shared machine and its disk, and
//! whatever the first half of a round leaves to the second, hit both alike. Each half writes a fresh topic of the same layout
//! (`<topic>-<round>-plain`, `<topic>-<round>-idempotent`), so no partition
//! carries state from another half, and gets its own warm-up.
//!
//! Both halves send the same batches with the same per-send CRC (`batch.rs`),
//! with acks=all and the same in-flight count, so the client costs the same
//! and the difference is the broker's: the producer-state check and update
//! per batch. The figure is `idempotent_ratio`, the median over rounds of
//! idempotent MB/s ÷ plain MB/s, with `p99_ratio` likewise for the p99 ack
//! latency (the design's target: ≥ 0.95 and ≤ 1.05). Any produce error fails
//! the run: an OUT_OF_ORDER_SEQUENCE_NUMBER is the load generator's bug, and
//! counting past it would measure nothing.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use super::baseline::Baseline;
use super::produce::{self, ProduceLoad, Window};
use super::stats::{Bound, Recorder, Report, median, round};

/// How the halves of a comparison run.
pub struct Comparison<'a> {
    /// The load of both halves; its topic is the prefix of theirs.
    pub load: &'a ProduceLoad,
    pub rounds: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub baseline: Option<Baseline>,
}

/// Plain or idempotent.
#[derive(Clone, Copy)]
enum Mode {
    Plain,
    Idempotent,
}

impl Mode {
    /// The halves of `round` (from 1) in the order they run: plain first in
    /// odd rounds, idempotent first in even ones (A B, B A, ...), so an
    /// effect of running first or second in a round (the disk still busy
    /// with the half before, retention deleting its segments) falls on both
    /// modes alike over an even number of rounds.
    fn order(round: usize) -> [Mode; 2] {
        if round % 2 == 1 {
            [Mode::Plain, Mode::Idempotent]
        } else {
            [Mode::Idempotent, Mode::Plain]
        }
    }

    fn index(self) -> usize {
        match self {
            Mode::Plain => 0,
            Mode::Idempotent => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Idempotent => "idempotent",
        }
    }

    /// A half's report title.
    fn half(self) -> &'static str {
        match self {
            Mode::Plain => "produce, plain",
            Mode::Idempotent => "produce, idempotent",
        }
    }

    /// The title of the report over every round.
    fn all_rounds(self) -> &'static str {
        match self {
            Mode::Plain => "produce, plain (all rounds)",
            Mode::Idempotent => "produce, idempotent (all rounds)",
        }
    }
}

/// The topic of one half: `<topic>-<round>-<mode>`.
fn half_topic(prefix: &str, round: &str, mode: Mode) -> String {
    format!("{prefix}-{round}-{}", mode.name())
}

fn half_settings(load: &ProduceLoad, round: &str, mode: Mode) -> Value {
    let mut settings = super::producer_settings(load);
    settings["topic"] = json!(half_topic(&load.topic, round, mode));
    settings["idempotent"] = json!(matches!(mode, Mode::Idempotent));
    settings
}

/// One half's figures, taken before its recorder joins the totals.
struct Half {
    json: Value,
    throughput_mb_s: f64,
    p99_ms: f64,
}

/// Run the rounds; `ensure_topic` creates a half's topic (or checks its
/// layout) before the half starts. Returns the report as JSON and text.
pub fn run(
    comparison: &Comparison<'_>,
    ensure_topic: impl Fn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<(Value, String)> {
    assert!(comparison.rounds > 0, "--rounds is at least 1");
    let mut totals = [
        (Recorder::default(), Duration::ZERO),
        (Recorder::default(), Duration::ZERO),
    ];
    let mut rounds = Vec::with_capacity(comparison.rounds);
    for round in 1..=comparison.rounds {
        let mut halves: [Option<Half>; 2] = [None, None];
        for mode in Mode::order(round) {
            let (half, recorder, elapsed) = run_half(comparison, round, mode, &ensure_topic)?;
            eprintln!(
                "round {round}/{} {:<10}  {:8.1} MB/s  p99 {:.3} ms",
                comparison.rounds,
                mode.name(),
                half.throughput_mb_s,
                half.p99_ms
            );
            let total = &mut totals[mode.index()];
            total.0.merge(recorder);
            total.1 += elapsed;
            halves[mode.index()] = Some(half);
        }
        let [Some(plain), Some(idempotent)] = halves else {
            unreachable!("every round runs both halves")
        };
        rounds.push((plain, idempotent));
    }
    let [plain, idempotent] = [Mode::Plain, Mode::Idempotent]
        .into_iter()
        .zip(totals)
        .map(|(mode, (recorder, elapsed))| Report {
            test: mode.all_rounds(),
            latency_of: "ack latency",
            settings: half_settings(comparison.load, "*", mode),
            elapsed,
            recorder,
            baseline: comparison
                .baseline
                .map(|baseline| (baseline, Bound::DurableWrite)),
            extra: Vec::new(),
        })
        .collect::<Vec<_>>()
        .try_into()
        .ok()
        .expect("two modes");
    Ok(summarize(comparison, &rounds, &plain, &idempotent))
}

fn run_half(
    comparison: &Comparison<'_>,
    round: usize,
    mode: Mode,
    ensure_topic: &impl Fn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<(Half, Recorder, Duration)> {
    let topic = half_topic(&comparison.load.topic, &round.to_string(), mode);
    ensure_topic(&topic)?;
    let load = ProduceLoad {
        topic,
        idempotent: matches!(mode, Mode::Idempotent),
        ..comparison.load.clone()
    };
    let window = Window::new(comparison.warmup, comparison.duration);
    let (recorder, elapsed) = produce::run(&load, window)
        .with_context(|| format!("round {round}, {} producers", mode.name()))?;
    if recorder.errors > 0 {
        anyhow::bail!(
            "round {round}, {} producers: {} produce request(s) failed, first: {}; the \
             comparison stops (after a failed request an idempotent producer's sequences are \
             off, and a half with failures measures something else)",
            mode.name(),
            recorder.errors,
            recorder.first_error.as_deref().unwrap_or("?")
        );
    }
    let throughput_mb_s = recorder.bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6;
    let p99_ms = recorder.percentile_ms(0.99);
    let report = Report {
        test: mode.half(),
        latency_of: "ack latency",
        settings: super::producer_settings(&load),
        elapsed,
        recorder,
        baseline: None,
        extra: Vec::new(),
    };
    let half = Half {
        json: report.to_json(),
        throughput_mb_s,
        p99_ms,
    };
    Ok((half, report.recorder, elapsed))
}

/// The shared settings: topics `<topic>-<round>-plain|idempotent`.
fn settings(comparison: &Comparison<'_>) -> Value {
    let mut settings = super::producer_settings(comparison.load);
    settings["topic"] = json!(format!(
        "{}-<round>-plain|idempotent",
        comparison.load.topic
    ));
    if let Some(fields) = settings.as_object_mut() {
        fields.remove("idempotent");
    }
    settings["rounds"] = json!(comparison.rounds);
    settings["warmup_s"] = json!(comparison.warmup.as_secs_f64());
    settings["duration_s"] = json!(comparison.duration.as_secs_f64());
    settings
}

/// The ratios of one round: idempotent over plain, MB/s and p99.
fn ratios(plain: &Half, idempotent: &Half) -> (f64, f64) {
    (
        idempotent.throughput_mb_s / plain.throughput_mb_s.max(1e-9),
        idempotent.p99_ms / plain.p99_ms.max(1e-9),
    )
}

fn summarize(
    comparison: &Comparison<'_>,
    rounds: &[(Half, Half)],
    plain: &Report,
    idempotent: &Report,
) -> (Value, String) {
    let per_round: Vec<(f64, f64)> = rounds
        .iter()
        .map(|(plain, idempotent)| ratios(plain, idempotent))
        .collect();
    let throughput_ratio = median(per_round.iter().map(|(ratio, _)| *ratio).collect());
    let p99_ratio = median(per_round.iter().map(|(_, ratio)| *ratio).collect());
    let json = json!({
        "test": "produce --idempotent",
        "settings": settings(comparison),
        "rounds": rounds.iter().zip(&per_round).enumerate().map(
            |(index, ((plain, idempotent), (throughput, p99)))| json!({
                "round": index + 1,
                "plain": plain.json,
                "idempotent": idempotent.json,
                "idempotent_ratio": round(*throughput),
                "p99_ratio": round(*p99),
            })
        ).collect::<Vec<_>>(),
        "plain": plain.to_json(),
        "idempotent": idempotent.to_json(),
        "idempotent_ratio": round(throughput_ratio),
        "p99_ratio": round(p99_ratio),
    });
    let mut text = String::from(
        "produce --idempotent: plain and idempotent producers, interleaved\n  \
         round  plain MB/s  p99 ms   idempotent MB/s  p99 ms   MB/s ratio  p99 ratio\n",
    );
    for (index, ((plain, idempotent), (throughput, p99))) in
        rounds.iter().zip(&per_round).enumerate()
    {
        text += &format!(
            "  {:<5}  {:>10.1}  {:>7.3}  {:>15.1}  {:>7.3}  {:>10.3}  {:>9.3}\n",
            index + 1,
            plain.throughput_mb_s,
            plain.p99_ms,
            idempotent.throughput_mb_s,
            idempotent.p99_ms,
            throughput,
            p99
        );
    }
    text += &plain.to_text();
    text += &idempotent.to_text();
    text += &format!(
        "idempotent_ratio {throughput_ratio:.3} (idempotent MB/s / plain MB/s), p99_ratio \
         {p99_ratio:.3} (idempotent p99 / plain p99): medians over {} round(s)\n",
        rounds.len()
    );
    (json, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(throughput_mb_s: f64, p99_ms: f64) -> Half {
        Half {
            json: json!({}),
            throughput_mb_s,
            p99_ms,
        }
    }

    #[test]
    fn rounds_alternate_which_mode_runs_first() {
        let firsts: Vec<&str> = (1..=4).map(|round| Mode::order(round)[0].name()).collect();
        assert_eq!(firsts, ["plain", "idempotent", "plain", "idempotent"]);
        for round in 1..=4 {
            let [first, second] = Mode::order(round);
            assert_ne!(first.index(), second.index(), "both modes in round {round}");
        }
    }

    #[test]
    fn ratios_are_idempotent_over_plain() {
        let (throughput, p99) = ratios(&half(1000.0, 20.0), &half(950.0, 21.0));
        assert!((throughput - 0.95).abs() < 1e-9);
        assert!((p99 - 1.05).abs() < 1e-9);
    }
}
