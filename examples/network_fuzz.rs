//! The black-box network fuzzer (`sluice::fuzzing::network`) as a command:
//! starts the real `sluice` binary on a temporary data directory (or uses a
//! running broker), sends it mutated requests for `--duration` seconds and
//! reports what it sent and whether the broker stayed up, bounded and
//! serving. On a failure the last connections' bytes are saved under
//! `--out` for `--replay`. See fuzz/README.md.
//!
//! ```text
//! cargo build --bin sluice
//! cargo run --example network_fuzz -- --duration 600 --seed 7
//! cargo run --example network_fuzz -- --replay target/network-fuzz/seed7-*.bin
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use sluice::fuzzing::network::{self, NetworkFuzzOptions};

#[derive(Parser)]
#[command(about = "Send mutated Kafka requests to a sluice broker and check it survives")]
struct Args {
    /// Seconds to fuzz for.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seed of the mutations (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Connections at once (one per worker thread).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// MiB of resident memory the broker may gain while fuzzed.
    #[arg(long, default_value_t = 256)]
    rss_growth_mib: u64,
    /// Seconds between the produce-and-read-back checks.
    #[arg(long, default_value_t = 2)]
    check_interval: u64,
    /// Where reproducers and the broker's log go.
    #[arg(long, default_value = "target/network-fuzz")]
    out: PathBuf,
    /// The sluice binary to start.
    #[arg(long, default_value = "target/debug/sluice")]
    binary: PathBuf,
    /// Fuzz a broker that is already running here (with --pid) instead.
    #[arg(long, requires = "pid")]
    address: Option<String>,
    /// The running broker's process id (for its memory and liveness).
    #[arg(long)]
    pid: Option<u32>,
    /// Send these saved connections (in order) to a fresh broker instead
    /// of fuzzing, then check it.
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
}

/// A broker this command started, killed when dropped.
struct Broker {
    child: Child,
    address: String,
    _data: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker(binary: &PathBuf, log: PathBuf) -> Result<Broker, String> {
    let data = tempfile::tempdir().map_err(|error| format!("no temporary directory: {error}"))?;
    let mut child = Command::new(binary)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--shards", "2", "--data-dir"])
        .arg(data.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| {
            format!(
                "cannot start {}: {error} (cargo build --bin sluice)",
                binary.display()
            )
        })?;
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let (ready_sender, ready) = mpsc::channel();
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(&log).ok();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("sluice ready") {
                let _ = ready_sender.send(line.clone());
            }
            if let Some(file) = file.as_mut() {
                let _ = writeln!(file, "{line}");
            }
        }
    });
    let line = ready
        .recv_timeout(Duration::from_secs(60))
        .map_err(|error| format!("the broker never logged `sluice ready` ({error})"))?;
    let address = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("kafka="))
        .ok_or("the ready line names no Kafka listener")?
        .to_owned();
    Ok(Broker {
        child,
        address,
        _data: data,
    })
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)
        .map_err(|error| format!("cannot create {}: {error}", args.out.display()))?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64)
    });
    let log = args.out.join(format!("broker-seed{seed}.log"));
    let (broker, address, pid) = match (&args.address, args.pid) {
        (Some(address), Some(pid)) => (None, address.clone(), pid),
        _ => {
            let broker = start_broker(&args.binary, log.clone())?;
            let address = broker.address.clone();
            let pid = broker.child.id();
            (Some(broker), address, pid)
        }
    };
    if !args.replay.is_empty() {
        network::replay(&address, pid, &args.replay)
            .map_err(|error| format!("{error} (log: {})", log.display()))?;
        let rss = network::resident_bytes(pid).unwrap_or(0);
        println!(
            "replayed {} files; the broker is up ({} MiB resident)",
            args.replay.len(),
            rss >> 20
        );
        return Ok(());
    }
    println!(
        "fuzzing {address} (pid {pid}) for {} s with seed {seed}",
        args.duration
    );
    let report = network::run(&NetworkFuzzOptions {
        address,
        pid,
        seed,
        duration: Duration::from_secs(args.duration),
        workers: args.workers,
        rss_growth_max_bytes: args.rss_growth_mib << 20,
        check_interval: Duration::from_secs(args.check_interval),
        out_dir: args.out.clone(),
    });
    println!(
        "seed {seed}: {} connections, {} frames, {} bytes sent in {:.1} s; {} closed by the broker; \
         {} produce/read-back checks; resident {} MiB at the start, {} MiB at most",
        report.connections,
        report.frames,
        report.bytes_sent,
        report.elapsed.as_secs_f64(),
        report.closed_by_broker,
        report.health_checks,
        report.rss_start_bytes >> 20,
        report.rss_peak_bytes >> 20,
    );
    drop(broker);
    match report.failure {
        None => Ok(()),
        Some(failure) => {
            for path in &report.saved {
                println!("saved {}", path.display());
            }
            Err(format!("{failure} (broker log: {})", log.display()))
        }
    }
}
