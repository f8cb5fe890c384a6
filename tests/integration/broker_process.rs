//! The real `sluice` binary as a test fixture: ephemeral ports, a temporary
//! data directory, its log kept for assertions, stopped with SIGTERM or
//! killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct BrokerProcess {
    child: Option<Child>,
    /// `host:port` of the Kafka listener.
    pub address: String,
    /// `host:port` of the metrics and health listener.
    pub metrics: String,
    lines: Arc<Mutex<Vec<String>>>,
}

/// Where the broker listens and the limits it starts under.
pub struct Launch<'a> {
    pub listen: &'a str,
    pub metrics_listen: &'a str,
    /// `RLIMIT_NOFILE` (soft, hard) set in the child before it runs;
    /// `None` inherits the test's.
    pub open_files: Option<(u64, u64)>,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch {
            listen: "127.0.0.1:0",
            metrics_listen: "127.0.0.1:0",
            open_files: None,
        }
    }
}

/// A `host:port` on loopback that was free a moment ago, for a broker that
/// is restarted where its clients reconnect (pass it as [`Launch::listen`]).
///
/// The port comes from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), handed out once per test process: a
/// port bound with `:0` by another test, or the local end of any outgoing
/// connection, is always taken from the ephemeral range, so the address
/// cannot be grabbed between this call and the broker's bind (which the
/// old "bind :0, close, reuse" scheme allowed under parallel tests).
pub fn free_loopback_address() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|low| *low > FIRST + 1000)
        .unwrap_or(32_768);
    let span = ephemeral_low - FIRST;
    // Test binaries run one after another, but a rerun may find ports of
    // a previous run in TIME_WAIT: start each process somewhere else.
    let _ = NEXT.compare_exchange(
        0,
        std::process::id() % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port as u16)) {
            return listener.local_addr().unwrap().to_string();
        }
    }
    panic!("no free loopback port below the ephemeral range");
}

impl BrokerProcess {
    /// Start a broker on `data_dir` with 2 shards and wait until it is ready.
    pub fn start(data_dir: &Path, extra: &[&str]) -> BrokerProcess {
        BrokerProcess::start_with(data_dir, extra, &Launch::default())
    }

    /// [`BrokerProcess::start`] with other listeners or limits.
    pub fn start_with(data_dir: &Path, extra: &[&str], launch: &Launch<'_>) -> BrokerProcess {
        let mut command = BrokerProcess::command_with(data_dir, extra, launch);
        if let Some((soft, hard)) = launch.open_files {
            // SAFETY: the closure makes one async-signal-safe syscall
            // (setrlimit) on a struct it owns.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        BrokerProcess::start_command(command)
    }

    /// The command [`BrokerProcess::start`] runs, for tests that add to it
    /// (environment) before starting it with [`BrokerProcess::start_command`].
    pub fn command(data_dir: &Path, extra: &[&str]) -> Command {
        BrokerProcess::command_with(data_dir, extra, &Launch::default())
    }

    pub fn command_with(data_dir: &Path, extra: &[&str], launch: &Launch<'_>) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args(BrokerProcess::serve_args_with(data_dir, launch))
            .args(extra)
            .env("RUST_LOG", "info");
        command
    }

    /// `serve` and the flags every test broker uses (ephemeral ports, 2
    /// shards, `data_dir`), for tests that wrap the binary in another command.
    pub fn serve_args(data_dir: &Path) -> Vec<std::ffi::OsString> {
        BrokerProcess::serve_args_with(data_dir, &Launch::default())
    }

    fn serve_args_with(data_dir: &Path, launch: &Launch<'_>) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = [
            "serve",
            "--listen",
            launch.listen,
            "--metrics-listen",
            launch.metrics_listen,
            "--shards",
            "2",
            "--data-dir",
        ]
        .iter()
        .map(Into::into)
        .collect();
        args.push(data_dir.into());
        args
    }

    /// Start `command` (a `sluice serve`, possibly wrapped) and wait until
    /// the broker is ready.
    pub fn start_command(mut command: Command) -> BrokerProcess {
        let mut child = command
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

    /// The broker's process id (for `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the broker runs").id()
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

    /// Whether the broker process is still running (not exited or killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// The broker's resident memory (`VmRSS` in `/proc/<pid>/status`).
    pub fn resident_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("the broker runs").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|value| value.trim().parse().ok())
            .expect("VmRSS in kB");
        kib * 1024
    }

    /// SIGTERM, then wait for a clean exit.
    /// [`BrokerProcess::stop`], then the broker's whole log (its last lines
    /// say why a shutdown was not clean).
    pub fn stop_with_log(self) -> (ExitStatus, Vec<String>) {
        let lines = Arc::clone(&self.lines);
        let status = self.stop();
        // The reader thread sees the pipe close right after the exit.
        std::thread::sleep(Duration::from_millis(100));
        let log = lines.lock().unwrap().clone();
        (status, log)
    }

    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill takes a pid and a signal number; no memory is passed.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// SIGKILL: no flush, no checkpoint, like a crash.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// Run `command` until it exits by itself (30 s at most); its status and log.
pub fn exit_of(mut command: std::process::Command) -> (ExitStatus, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        std::io::Read::read_to_string(&mut { stderr }, &mut log).unwrap();
        log
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sluice serve {command:?} kept running; log:\n{}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
