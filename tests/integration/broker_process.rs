//! The real `sluice` binary as a test fixture: ephemeral ports, a temporary
//! data directory, its log kept for assertions, stopped with SIGTERM or
//! killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct BrokerProcess {
    child: Option<Child>,
    /// `host:port` of the Kafka listener.
    pub address: String,
    /// `host:port` of the metrics and health listener.
    pub metrics: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl BrokerProcess {
    /// Start a broker on `data_dir` with 2 shards and wait until it is ready.
    pub fn start(data_dir: &Path, extra: &[&str]) -> BrokerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--shards",
                "2",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the sluice binary starts");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_sender, ready) = mpsc::channel();
        std::thread::spawn({
            let lines = Arc::clone(&lines);
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("sluice ready") {
                        let _ = ready_sender.send(line.clone());
                    }
                    lines.lock().unwrap().push(line);
                }
            }
        });
        let ready_line = match ready.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => panic!(
                "broker never became ready; log:\n{}",
                lines.lock().unwrap().join("\n")
            ),
        };
        let address = ready_line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("kafka="))
            .expect("the ready line names the Kafka listener")
            .to_owned();
        let metrics = ready_line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("metrics="))
            .expect("the ready line names the metrics listener")
            .to_owned();
        BrokerProcess {
            child: Some(child),
            address,
            metrics,
            lines,
        }
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the broker is running").id()
    }

    /// Everything the broker logged so far.
    pub fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(needle))
    }

    /// Whether `needle` shows up in the log within a few seconds (the log is
    /// read from the broker's stderr by a thread, a little behind).
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if self.log_contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill takes a pid and a signal number; no memory is passed.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }

    /// SIGKILL: no flush, no checkpoint, like a crash.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
