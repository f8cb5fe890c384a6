//! The metrics listener (default 127.0.0.1:9644): `/health` (the process is
//! up), `/ready` (every shard recovered and serving), `/metrics` (Prometheus
//! text format).
//!
//! A small blocking HTTP/1.1 server on its own thread, off the shards' data
//! path: one short request per connection, with read and write timeouts.
//! `/metrics` renders the recorder installed by [`super::install`]; without
//! one (tests of the server alone) it exports liveness and readiness only.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use super::names;

/// How long a scrape may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request line or header line accepted.
const LINE_BYTES_MAX: usize = 8 * 1024;

pub struct MetricsServer {
    pub address: SocketAddr,
    ready: Arc<AtomicBool>,
}

impl MetricsServer {
    /// Bind `address` and serve it on a background thread; `/metrics`
    /// renders `recorder`.
    pub fn start(
        address: SocketAddr,
        recorder: Option<PrometheusHandle>,
    ) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(address)?;
        let address = listener.local_addr()?;
        let ready = Arc::new(AtomicBool::new(false));
        let serving = Arc::clone(&ready);
        std::thread::Builder::new()
            .name("sluice-metrics".to_owned())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    if let Err(error) = answer(stream, &serving, recorder.as_ref()) {
                        tracing::debug!(%error, "metrics request failed");
                    }
                }
            })?;
        Ok(MetricsServer { address, ready })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

fn answer(
    stream: TcpStream,
    ready: &AtomicBool,
    recorder: Option<&PrometheusHandle>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?).take(LINE_BYTES_MAX as u64 * 32);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let is_ready = ready.load(Ordering::Relaxed);
    let (status, content_type, body) = match path {
        "/health" => ("200 OK", "text/plain", "ok\n".to_owned()),
        "/ready" if is_ready => ("200 OK", "text/plain", "ready\n".to_owned()),
        "/ready" => (
            "503 Service Unavailable",
            "text/plain",
            "starting\n".to_owned(),
        ),
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            exposition(is_ready, recorder),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /health or /ready\n".to_owned(),
        ),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn exposition(ready: bool, recorder: Option<&PrometheusHandle>) -> String {
    if let Some(recorder) = recorder {
        metrics::gauge!(names::UP).set(1.0);
        metrics::gauge!(names::READY).set(f64::from(u8::from(ready)));
        return recorder.render();
    }
    format!(
        "# HELP sluice_up Whether the broker process is running.\n# TYPE sluice_up gauge\nsluice_up 1\n\
         # HELP sluice_ready Whether every shard has recovered and serves requests.\n# TYPE sluice_ready gauge\nsluice_ready {}\n",
        u8::from(ready)
    )
}
