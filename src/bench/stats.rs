//! Counting and reporting: one [`Recorder`] per thread (an HDR histogram of
//! latencies in microseconds plus counters), merged into a [`Report`] that
//! prints for people or as one JSON object.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::baseline::Baseline;

/// Latencies above this are recorded as this (an hour, in microseconds).
const LATENCY_MAX_US: u64 = 3_600_000_000;

pub struct Recorder {
    latency_us: Histogram<u64>,
    /// Produce at a fixed rate: latencies from each request's send rather
    /// than its scheduled time (empty elsewhere).
    from_send_us: Histogram<u64>,
    pub records: u64,
    /// Record batch bytes: what is stored and sent, without request framing.
    pub bytes: u64,
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("valid histogram bounds"),
            from_send_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("valid histogram bounds"),
            records: 0,
            bytes: 0,
            requests: 0,
            errors: 0,
            first_error: None,
        }
    }
}

impl Recorder {
    pub fn latency(&mut self, latency: Duration) {
        record(&mut self.latency_us, latency);
    }

    /// A produce's latency from the moment its request was written (see
    /// `produce.rs`), recorded beside [`Recorder::latency`].
    pub fn latency_from_send(&mut self, latency: Duration) {
        record(&mut self.from_send_us, latency);
    }

    pub fn add(&mut self, records: u64, bytes: u64) {
        self.records += records;
        self.bytes += bytes;
    }

    pub fn error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }

    pub fn merge(&mut self, other: Recorder) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share their bounds");
        self.from_send_us
            .add(&other.from_send_us)
            .expect("histograms share their bounds");
        self.records += other.records;
        self.bytes += other.bytes;
        self.requests += other.requests;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// The latency at `quantile` (0.99 for p99) in milliseconds; 0 when
    /// nothing was recorded.
    pub fn percentile_ms(&self, quantile: f64) -> f64 {
        percentile_ms(&self.latency_us, quantile)
    }

    fn max_ms(&self) -> f64 {
        self.latency_us.max() as f64 / 1000.0
    }

    /// p50, p90, p99, p99.9 and max of the latencies from send, in
    /// milliseconds; `None` when none were recorded.
    fn send_latencies_ms(&self) -> Option<[f64; 5]> {
        let histogram = &self.from_send_us;
        if histogram.is_empty() {
            return None;
        }
        let at = |quantile| percentile_ms(histogram, quantile);
        Some([
            at(0.50),
            at(0.90),
            at(0.99),
            at(0.999),
            histogram.max() as f64 / 1000.0,
        ])
    }
}

fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.min(LATENCY_MAX_US));
}

fn percentile_ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// Which host limit a result is compared with.
#[derive(Clone, Copy)]
pub enum Bound {
    /// Produce acks=all: every batch is written and fdatasynced first.
    DurableWrite,
    /// Produce acks=0/1: written, synced later.
    Write,
    /// Consume (catch-up): read from the log, then across loopback TCP.
    Read,
    /// e2e: bytes cross loopback TCP.
    Network,
}

pub struct Report {
    pub test: &'static str,
    /// What the latency histogram measured.
    pub latency_of: &'static str,
    pub settings: Value,
    pub elapsed: Duration,
    pub recorder: Recorder,
    pub baseline: Option<(Baseline, Bound)>,
    /// Further results (e2e carries the producers' own report).
    pub extra: Vec<(&'static str, Value)>,
    /// Cores the load generator itself used over the run ([`ClientCpu`]).
    pub client_cpu: Option<ClientCpu>,
}

/// The load generator's own CPU over a run (user + system time of this
/// process ÷ wall time), so a figure bound by the client, not the broker,
/// says so (issue 19 item 6).
#[derive(Clone, Copy, Debug)]
pub struct ClientCpu {
    pub cores: f64,
}

impl ClientCpu {
    /// Above this many cores the client may be what bounds the figure.
    pub const WARN_CORES: f64 = 0.5;

    /// Run `work` and measure the cores this process used meanwhile.
    pub fn measure<T>(work: impl FnOnce() -> T) -> (T, ClientCpu) {
        let (cpu_before, wall_before) = (process_cpu(), std::time::Instant::now());
        let result = work();
        let cpu = process_cpu().saturating_sub(cpu_before);
        let wall = wall_before.elapsed().as_secs_f64().max(1e-9);
        (
            result,
            ClientCpu {
                cores: cpu.as_secs_f64() / wall,
            },
        )
    }
}

/// User plus system CPU time this process has used.
fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is valid.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return Duration::ZERO;
        }
        usage.assume_init()
    };
    let time = |tv: libc::timeval| {
        Duration::from_secs(tv.tv_sec.max(0) as u64)
            + Duration::from_micros(tv.tv_usec.max(0) as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

impl Report {
    pub fn throughput_mb_s(&self) -> f64 {
        self.recorder.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }

    pub fn records_per_s(&self) -> f64 {
        self.recorder.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// This run's throughput over the host limit it is bound by, and that
    /// limit's name and value.
    fn ratio(&self) -> Option<(f64, &'static str, f64)> {
        let (baseline, bound) = self.baseline.as_ref()?;
        let (name, limit) = baseline.limit(*bound);
        Some((self.throughput_mb_s() / limit, name, limit))
    }

    pub fn to_json(&self) -> Value {
        let r = &self.recorder;
        let mut out = json!({
            "test": self.test,
            "settings": self.settings,
            "elapsed_s": round(self.elapsed.as_secs_f64()),
            "throughput_mb_s": round(self.throughput_mb_s()),
            "records_per_s": self.records_per_s().round(),
            "records": r.records,
            "bytes": r.bytes,
            "requests": r.requests,
            "errors": r.errors,
            "first_error": r.first_error,
            "latency_of": self.latency_of,
            "p50_ms": round(r.percentile_ms(0.50)),
            "p90_ms": round(r.percentile_ms(0.90)),
            "p99_ms": round(r.percentile_ms(0.99)),
            "p999_ms": round(r.percentile_ms(0.999)),
            "max_ms": round(r.max_ms()),
        });
        if let Some((baseline, _)) = &self.baseline {
            let (ratio, bound, _) = self.ratio().expect("baseline present");
            out["baseline"] = baseline.to_json();
            out["baseline_bound"] = json!(bound);
            out["baseline_ratio"] = json!(round(ratio));
        }
        if let Some([p50, p90, p99, p999, max]) = r.send_latencies_ms() {
            out["from_send"] = json!({
                "p50_ms": round(p50),
                "p90_ms": round(p90),
                "p99_ms": round(p99),
                "p999_ms": round(p999),
                "max_ms": round(max),
            });
        }
        if let Some(cpu) = self.client_cpu {
            out["client_cpu_cores"] = json!(round(cpu.cores));
        }
        for (name, value) in &self.extra {
            out[*name] = value.clone();
        }
        out
    }

    pub fn to_text(&self) -> String {
        let r = &self.recorder;
        let mut out = format!(
            "{}: {}\n  throughput   {:.1} MB/s, {:.0} records/s over {:.1} s ({} requests)\n  \
             {:<12} p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms\n",
            self.test,
            describe_settings(&self.settings),
            self.throughput_mb_s(),
            self.records_per_s(),
            self.elapsed.as_secs_f64(),
            r.requests,
            self.latency_of,
            r.percentile_ms(0.50),
            r.percentile_ms(0.90),
            r.percentile_ms(0.99),
            r.percentile_ms(0.999),
            r.max_ms(),
        );
        if let Some([p50, p90, p99, p999, max]) = r.send_latencies_ms() {
            out += &format!(
                "  {:<12} p50 {p50:.3} ms  p90 {p90:.3} ms  p99 {p99:.3} ms  p99.9 {p999:.3} ms  max {max:.3} ms\n",
                "from send"
            );
        }
        if let Some((ratio, bound, limit)) = self.ratio() {
            out += &format!("  baseline     {ratio:.2} of {bound} ({limit:.1} MB/s, same run)\n");
        }
        if let Some(cpu) = self.client_cpu {
            out += &format!(
                "  client cpu   {:.2} cores (the load generator itself)\n",
                cpu.cores
            );
            if cpu.cores > ClientCpu::WARN_CORES {
                out += &format!(
                    "  warning      the load generator used more than {} of a core: this figure may be bound by the client, not the broker\n",
                    ClientCpu::WARN_CORES
                );
                if self.settings["discard_records"] == false {
                    out += "  hint         --discard-records drops the records in the kernel instead of copying them\n";
                }
            }
        }
        if r.errors > 0 {
            out += &format!(
                "  errors       {} (first: {})\n",
                r.errors,
                r.first_error.as_deref().unwrap_or("?")
            );
        }
        out += "  (MB = 10^6 bytes of record batches)\n";
        out
    }
}

fn describe_settings(settings: &Value) -> String {
    settings
        .as_object()
        .map(|fields| {
            fields
                .iter()
                .map(|(key, value)| match value {
                    Value::String(text) => format!("{key}={text}"),
                    other => format!("{key}={other}"),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The median of `values` (the mean of the middle two for an even count);
/// NaN for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// Three decimals are plenty for MB/s and milliseconds.
pub fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_merged_histograms() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for micros in 1..=990 {
            a.latency(Duration::from_micros(micros));
        }
        for _ in 0..10 {
            b.latency(Duration::from_millis(50));
        }
        b.add(1000, 1_000_000);
        a.merge(b);
        let mut report = Report {
            test: "produce",
            latency_of: "ack latency",
            settings: json!({}),
            elapsed: Duration::from_secs(2),
            recorder: a,
            baseline: None,
            extra: Vec::new(),
            client_cpu: Some(ClientCpu { cores: 0.75 }),
        };
        assert!(report.to_text().contains("0.75 cores"));
        assert!(report.to_text().contains("more than 0.5 of a core"));
        assert!(
            !report.to_text().contains("--discard-records"),
            "produce has no such flag"
        );
        report.settings = json!({ "discard_records": false }); // a consume that copies
        assert!(report.to_text().contains("--discard-records"));
        report.settings = json!({ "discard_records": true });
        assert!(!report.to_text().contains("--discard-records"));
        let value = report.to_json();
        assert_eq!(value["client_cpu_cores"], 0.75);
        assert_eq!(value["throughput_mb_s"], 0.5);
        assert_eq!(value["records_per_s"], 500.0);
        assert!((value["p50_ms"].as_f64().unwrap() - 0.5).abs() < 0.01);
        assert!(value["p999_ms"].as_f64().unwrap() > 49.0);
        assert!(value.get("baseline_ratio").is_none());
    }

    #[test]
    fn median_takes_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![0.5, 1.5, 1.0, 0.25]), 0.75);
        assert_eq!(median(vec![0.97]), 0.97);
        assert!(median(Vec::new()).is_nan());
    }
}
