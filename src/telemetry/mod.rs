//! Prometheus metrics through the `metrics` facade.
//!
//! [`install`] sets `metrics-exporter-prometheus`'s recorder as the global
//! one (without its HTTP stack: [`http`] serves the exposition on the
//! metrics listener). Names follow Prometheus conventions: a `sluice_`
//! prefix, base units (`_seconds`, `_bytes`), `_total` on counters; every
//! name is a constant in [`names`], described there, and listed in
//! ARCHITECTURE.md.
//!
//! Hot paths never look a metric up by name: handles (an `Arc` around an
//! atomic) are registered once and kept ([`kafka`] per shard thread,
//! [`storage`] per shard store). Gauges are set by each shard's
//! [`refresh`] task every `metrics.refresh_interval_ms`, by lookup, so a
//! gauge nobody sets any more (a deleted group's lag) expires after a few
//! intervals instead of lingering.

pub mod http;
pub mod kafka;
pub mod names;
pub mod refresh;
pub mod storage;

use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

/// Upper bounds of the latency buckets, in seconds (100 µs to 10 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// fdatasync latency buckets: finer at the low end (50 µs to 1 s).
const FSYNC_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Bytes made durable by one fdatasync: 4 KiB to 64 MiB in powers of 4.
const FSYNC_SIZE_BUCKETS: &[f64] = &[
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];
/// Producers released by one fdatasync.
const WAITER_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0,
];
/// Seconds of one compaction pass: 10 ms to 30 min.
const COMPACTION_PASS_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// Why the metrics recorder was not installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A bucket list in this file is not usable (a bug).
    #[error("cannot set the buckets of {name}: {source}")]
    Buckets {
        name: &'static str,
        #[source]
        source: BuildError,
    },
    /// `install` ran twice in one process (a bug; tests install none).
    #[error("a metrics recorder is already installed in this process")]
    AlreadyInstalled,
    #[error("cannot start the metrics upkeep thread: {source}")]
    UpkeepThread {
        #[source]
        source: std::io::Error,
    },
}

/// How often histograms are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Install the Prometheus recorder as the process's global recorder and
/// describe every metric. Gauges not set for `gauge_idle` disappear from the
/// exposition. Returns the handle that renders the exposition; a thread keeps
/// its histograms bounded between scrapes.
pub fn install(gauge_idle: Duration) -> Result<PrometheusHandle, InstallError> {
    let buckets = [
        (names::KAFKA_REQUEST_DURATION, LATENCY_BUCKETS),
        (names::LOG_FSYNC_DURATION, FSYNC_BUCKETS),
        (names::LOG_FSYNC_SIZE, FSYNC_SIZE_BUCKETS),
        (names::LOG_FSYNC_WAITERS, WAITER_BUCKETS),
        (names::COMPACTION_PASS_DURATION, COMPACTION_PASS_BUCKETS),
        (names::DELAY_DELIVERY_LATENESS, LATENCY_BUCKETS),
    ];
    let mut builder =
        PrometheusBuilder::new().idle_timeout(MetricKindMask::GAUGE, Some(gauge_idle));
    for (name, bounds) in buckets {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), bounds)
            .map_err(|source| InstallError::Buckets { name, source })?;
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    // The error only hands our recorder back: that one was installed
    // already is all it says.
    metrics::set_global_recorder(recorder)
        .map_err(|_recorder_handed_back| InstallError::AlreadyInstalled)?;
    names::describe();
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("sluice-metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        })
        .map_err(|source| InstallError::UpkeepThread { source })?;
    Ok(handle)
}
