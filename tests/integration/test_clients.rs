//! Real Kafka clients as test fixtures: the Python (kafka-python,
//! confluent-kafka, aiokafka, Quix Streams, Faust) and Node (kafkajs) client scripts
//! kept in `tests/clients/`, run as child processes against a broker, each
//! printing one JSON report as the last line of its stdout.
//!
//! The clients come from `scripts/install-test-clients.sh` (three venvs
//! under `target/test-clients/`: one for Quix Streams, which needs an older
//! confluent-kafka, and one for faust-streaming; `node_modules` under
//! `tests/clients/node/`), which
//! `.ci/run` runs before `cargo test` and [`installed`] runs once per test
//! process, so a plain `cargo test` works on a machine with network access.
//! Where installing fails, a test fails when `CI=true` and is skipped with the
//! reason otherwise.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;

const REPOSITORY: &str = env!("CARGO_MANIFEST_DIR");

/// Where the installer puts the venv (see `scripts/install-test-clients.sh`).
const VENV_PYTHON: &str = "target/test-clients/venv/bin/python";
/// Where it puts the venv with Quix Streams.
const QUIX_VENV_PYTHON: &str = "target/test-clients/quix-venv/bin/python";
/// Where it puts the venv with faust-streaming.
const FAUST_VENV_PYTHON: &str = "target/test-clients/faust-venv/bin/python";

/// How much of a client's stderr a failure message shows.
const STDERR_SHOWN_LINES_MAX: usize = 40;

/// The interpreters of the installed clients.
pub struct Clients {
    python: PathBuf,
    quix_python: PathBuf,
    faust_python: PathBuf,
    scripts: PathBuf,
}

/// The installed clients, or `None` after printing why the calling test is
/// skipped. Installs them on first use in this process; where that fails,
/// panics with the installer's output when `CI=true`.
pub fn installed(test: &str) -> Option<&'static Clients> {
    static INSTALLED: OnceLock<Result<Clients, String>> = OnceLock::new();
    match INSTALLED.get_or_init(install) {
        Ok(clients) => Some(clients),
        Err(why) if std::env::var("CI").is_ok_and(|value| value == "true") => {
            panic!("{test}: the Kafka test clients are not installed: {why}")
        }
        Err(why) => {
            eprintln!("{test}: skipped: {why}; run scripts/install-test-clients.sh");
            None
        }
    }
}

fn install() -> Result<Clients, String> {
    let repository = Path::new(REPOSITORY);
    let script = repository.join("scripts/install-test-clients.sh");
    let output = Command::new("bash")
        .arg(&script)
        .current_dir(repository)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{} could not run: {error}", script.display()))?;
    if !output.status.success() {
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        return Err(format!(
            "{} failed ({}):\n{}\n",
            script.display(),
            output.status,
            printed.trim_end()
        ));
    }
    Ok(Clients {
        python: repository.join(VENV_PYTHON),
        quix_python: repository.join(QUIX_VENV_PYTHON),
        faust_python: repository.join(FAUST_VENV_PYTHON),
        scripts: repository.join("tests/clients"),
    })
}

impl Clients {
    /// Start `tests/clients/python/<script>` with the venv's python.
    pub fn python(&self, script: &str, args: &[&str]) -> ClientProcess {
        self.python_with_env(script, args, &[])
    }

    /// [`Self::python`] with extra environment variables.
    pub fn python_with_env(
        &self,
        script: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ClientProcess {
        let path = self.scripts.join("python").join(script);
        let mut command = Command::new(&self.python);
        command.arg(path).args(args);
        for (name, value) in env {
            command.env(name, value);
        }
        ClientProcess::spawn(&mut command, script)
    }

    /// Start `tests/clients/python/<script>` with the Quix Streams venv's
    /// python.
    pub fn quix(&self, script: &str, args: &[&str]) -> ClientProcess {
        let path = self.scripts.join("python").join(script);
        ClientProcess::spawn(Command::new(&self.quix_python).arg(path).args(args), script)
    }

    /// Start `tests/clients/python/<script>` with the faust-streaming
    /// venv's python.
    pub fn faust(&self, script: &str, args: &[&str]) -> ClientProcess {
        let path = self.scripts.join("python").join(script);
        ClientProcess::spawn(
            Command::new(&self.faust_python).arg(path).args(args),
            script,
        )
    }

    /// Start `tests/clients/node/<script>` with node.
    pub fn node(&self, script: &str, args: &[&str]) -> ClientProcess {
        let path = self.scripts.join("node").join(script);
        ClientProcess::spawn(Command::new("node").arg(path).args(args), script)
    }
}

/// What a client script reports on its last stdout line.
#[derive(Debug, Deserialize)]
pub struct Report {
    /// Client library and version.
    pub client: String,
    /// The records the broker acknowledged, in the order the client saw it.
    pub acked: Vec<Acked>,
    /// Records whose delivery failed, with the client's error.
    pub failed: Vec<String>,
    /// Fatal producer errors (confluent-kafka's `error_cb`).
    #[serde(default)]
    pub fatal: Vec<String>,
    /// The error that stopped the script, if one did.
    pub error: Option<String>,
}

/// One acknowledged record: where the broker says it stored `value`.
#[derive(Clone, Debug, Deserialize)]
pub struct Acked {
    pub partition: i32,
    pub offset: i64,
    pub value: String,
}

impl Report {
    /// Panics, with the client's stderr, unless every record was acknowledged
    /// and nothing failed.
    pub fn assert_clean(&self, client: &ClientProcess) {
        let first_failures = &self.failed[..self.failed.len().min(3)];
        assert!(
            self.error.is_none() && self.failed.is_empty() && self.fatal.is_empty(),
            "{}: error {:?}, fatal {:?}, {} failed (first: {first_failures:?});\n{}",
            self.client,
            self.error,
            self.fatal,
            self.failed.len(),
            client.stderr_tail()
        );
    }
}

/// A running client script: stdin kept open until [`ClientProcess::finish`],
/// stdout collected, stderr collected line by line as it comes.
pub struct ClientProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<JoinHandle<String>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl ClientProcess {
    fn spawn(command: &mut Command, name: &str) -> ClientProcess {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("{name} could not start: {error}"));
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let stderr_pipe = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        std::thread::spawn({
            let stderr = Arc::clone(&stderr);
            move || {
                for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                    stderr.lock().unwrap().push(line);
                }
            }
        });
        ClientProcess {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            stdout: Some(stdout),
            stderr,
        }
    }

    /// Whether the script wrote a stderr line containing `needle` within
    /// `timeout`; false as soon as the script has exited without it.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_stderr_lines(needle, 1, timeout)
    }

    /// Whether the script wrote `count` stderr lines containing `needle`
    /// within `timeout`; false as soon as the script has exited without them.
    pub fn wait_for_stderr_lines(&mut self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr_lines(needle) >= count {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                // Its last lines may still be on their way through the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return self.stderr_lines(needle) >= count;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// How many stderr lines so far contain `needle`.
    pub fn stderr_lines(&self, needle: &str) -> usize {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// SIGKILL the script, like a crash: no flush, no clean close of its
    /// connections beyond what the kernel does; waits until it is gone.
    pub fn kill9(&mut self) {
        self.child.kill().expect("the script can be killed");
        self.child.wait().expect("the killed script is reaped");
    }

    /// The last lines the script wrote to stderr, for failure messages.
    pub fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap();
        let from = lines.len().saturating_sub(STDERR_SHOWN_LINES_MAX);
        format!(
            "{} stderr (last lines):\n{}",
            self.name,
            lines[from..].join("\n")
        )
    }

    /// Close stdin (the scripts that run until told stop), wait up to
    /// `timeout` for the script to exit, and parse its report.
    pub fn finish(&mut self, timeout: Duration) -> Report {
        self.finish_as(timeout)
    }

    /// [`ClientProcess::finish`] for scripts whose report has another shape.
    pub fn finish_as<T: DeserializeOwned>(&mut self, timeout: Duration) -> T {
        let (status, stdout) = self.finish_stdout(timeout);
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|error| {
            panic!(
                "{} ({status}) printed no JSON report ({error}); stdout:\n{stdout}\n{}",
                self.name,
                self.stderr_tail()
            )
        })
    }

    /// Close stdin, wait up to `timeout` for the script to exit (panicking,
    /// with its stderr, if it does not), and return its exit status and
    /// everything it wrote to stdout, for scripts that report line by line.
    pub fn finish_stdout(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not finish within {timeout:?};\n{}",
                    self.name,
                    self.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = self
            .stdout
            .take()
            .expect("finish is called once")
            .join()
            .unwrap();
        (status, stdout)
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
