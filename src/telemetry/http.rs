//! The metrics listener (default 127.0.0.1:9644): `/health` (the process is
//! up), `/ready` (every shard recovered and serving), `/metrics` (Prometheus
//! text format), for GET and HEAD; 404 for any other path.
//!
//! hyper's HTTP/1.1 server on a current-thread tokio runtime in its own
//! thread (`sluice-metrics`), off the shards' data path. Each connection is
//! its own task, so a client that connects and says nothing, or sends its
//! request a byte at a time, delays no one else: an orchestrator's liveness
//! probe is never queued behind a client (issue 12). Every connection
//! answers one request and closes, within three bounds ([`HttpLimits`]):
//! - the request head must arrive within `header_read_timeout`, so a silent
//!   or slow-loris connection is closed quickly;
//! - the whole connection, writing the answer included, ends by
//!   `connection_deadline`, so a client that stops reading is closed too;
//! - at most `connections_max` are open. A new connection over the cap
//!   closes the *oldest* open one rather than itself: a flood of silent
//!   connections then evicts its own members, and a probe (the newest
//!   connection, whose request follows at once) is served unless more than
//!   `connections_max` connections arrive between its connect and its
//!   request.
//!
//! `/metrics` renders the recorder installed by [`super::install`]; without
//! one (tests of the server alone) it exports liveness and readiness only.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::names;
use crate::log_throttle::{LogThrottle, monotonic_ms};

/// Pause after a failed accept (out of file descriptors, most likely), so
/// the loop does not spin while the cause lasts.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Largest request head buffered (hyper's minimum); the endpoints need a
/// request line and a few headers.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Most header fields a request may carry.
const REQUEST_HEADERS_MAX: usize = 32;

/// Failed accepts, logged at most once per 10 s with their count.
static ACCEPT_FAILURES: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// The bounds on the metrics listener's clients.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Time from accept until the request head has fully arrived. Probes
    /// and scrapers send it at once; a silent connection is closed after it.
    pub header_read_timeout: Duration,
    /// Time from accept until the connection is closed, answer written or
    /// not (Prometheus' default scrape timeout is 10 s).
    pub connection_deadline: Duration,
    /// Open connections; a new one over it closes the oldest.
    pub connections_max: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(3),
            connection_deadline: Duration::from_secs(10),
            connections_max: 1024,
        }
    }
}

impl HttpLimits {
    fn check(&self) {
        assert!(self.connections_max >= 1);
        assert!(self.header_read_timeout <= self.connection_deadline);
    }
}

pub struct MetricsServer {
    pub address: SocketAddr,
    ready: Arc<AtomicBool>,
}

/// What every connection task reads.
struct Endpoints {
    ready: Arc<AtomicBool>,
    recorder: Option<PrometheusHandle>,
}

impl MetricsServer {
    /// Bind `address` and serve it on a background thread with the default
    /// [`HttpLimits`]; `/metrics` renders `recorder`.
    pub fn start(
        address: SocketAddr,
        recorder: Option<PrometheusHandle>,
    ) -> io::Result<MetricsServer> {
        MetricsServer::start_with(address, recorder, HttpLimits::default())
    }

    /// [`MetricsServer::start`] with explicit limits. Binding and the
    /// runtime are set up on the calling thread, so their errors return here.
    pub fn start_with(
        address: SocketAddr,
        recorder: Option<PrometheusHandle>,
        limits: HttpLimits,
    ) -> io::Result<MetricsServer> {
        limits.check();
        let listener = std::net::TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let ready = Arc::new(AtomicBool::new(false));
        let endpoints = Arc::new(Endpoints {
            ready: Arc::clone(&ready),
            recorder,
        });
        std::thread::Builder::new()
            .name("sluice-metrics".to_owned())
            .spawn(move || runtime.block_on(accept_loop(listener, endpoints, limits)))?;
        Ok(MetricsServer { address, ready })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

async fn accept_loop(listener: TcpListener, endpoints: Arc<Endpoints>, limits: HttpLimits) {
    // Oldest first; finished tasks are pruned at each accept.
    let mut open: VecDeque<JoinHandle<()>> = VecDeque::with_capacity(limits.connections_max);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                if let Some(failed) = ACCEPT_FAILURES.record(monotonic_ms()) {
                    tracing::warn!(%error, failed, "metrics listener: accept failed (`failed` counts failures since the last such line)");
                }
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        open.retain(|task| !task.is_finished());
        while open.len() >= limits.connections_max {
            if let Some(oldest) = open.pop_front() {
                oldest.abort();
            }
        }
        open.push_back(tokio::spawn(serve_connection(
            stream,
            Arc::clone(&endpoints),
            limits,
        )));
    }
}

/// One request, answered, then the connection closes; dropped (closing the
/// socket) if the limits run out first.
async fn serve_connection(stream: TcpStream, endpoints: Arc<Endpoints>, limits: HttpLimits) {
    let service = service_fn(move |request| {
        let answer = answer(&request, &endpoints);
        async move { Ok::<_, Infallible>(answer) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(false)
        .max_buf_size(REQUEST_HEAD_BYTES_MAX)
        .max_headers(REQUEST_HEADERS_MAX)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.connection_deadline, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "metrics connection closed"),
        Err(_) => tracing::debug!("metrics connection passed its deadline; closed"),
    }
}

fn answer(request: &Request<Incoming>, endpoints: &Endpoints) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let is_ready = endpoints.ready.load(Ordering::Relaxed);
    match request.uri().path() {
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" if is_ready => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        "/metrics" => {
            let body = exposition(is_ready, endpoints.recorder.as_ref());
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "try /metrics, /health or /ready\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    fn server(limits: HttpLimits) -> MetricsServer {
        MetricsServer::start_with("127.0.0.1:0".parse().unwrap(), None, limits).unwrap()
    }

    /// The whole answer to `request`, read until the server closes.
    fn exchange(server: &MetricsServer, request: &str) -> String {
        let mut stream = TcpStream::connect(server.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn head_gets_the_get_headers_without_the_body() {
        let server = server(HttpLimits::default());
        let get = exchange(&server, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get}");
        assert!(get.contains("content-length: 3\r\n"), "{get}");
        assert!(get.contains("connection: close\r\n"), "{get}");
        assert!(get.ends_with("\r\n\r\nok\n"), "{get}");
        let head = exchange(&server, "HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
    }

    #[test]
    fn ready_follows_the_flag_and_metrics_exports_it() {
        let server = server(HttpLimits::default());
        let starting = exchange(&server, "GET /ready HTTP/1.1\r\n\r\n");
        assert!(starting.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        server.set_ready(true);
        let ready = exchange(&server, "GET /ready HTTP/1.1\r\n\r\n");
        assert!(ready.ends_with("\r\n\r\nready\n"), "{ready}");
        let metrics = exchange(&server, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(metrics.contains("\nsluice_ready 1\n"), "{metrics}");
        let missing = exchange(&server, "GET /nope HTTP/1.1\r\n\r\n");
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
    }

    #[test]
    fn methods_other_than_get_and_head_are_refused() {
        let server = server(HttpLimits::default());
        let post = exchange(
            &server,
            "POST /health HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
        );
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );
        assert!(post.contains("allow: GET, HEAD\r\n"), "{post}");
    }

    #[test]
    fn a_connection_over_the_cap_closes_the_oldest_so_probes_get_through() {
        let server = server(HttpLimits {
            header_read_timeout: Duration::from_secs(30),
            connection_deadline: Duration::from_secs(30),
            connections_max: 4,
        });
        let mut silent: Vec<TcpStream> = (0..4)
            .map(|_| TcpStream::connect(server.address).unwrap())
            .collect();
        let probe = exchange(&server, "GET /health HTTP/1.1\r\n\r\n");
        assert!(probe.starts_with("HTTP/1.1 200 OK\r\n"), "{probe}");
        let oldest = &mut silent[0];
        oldest
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(oldest.read(&mut buf).unwrap(), 0, "the oldest was closed");
    }
}
