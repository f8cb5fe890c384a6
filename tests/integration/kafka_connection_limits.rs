//! Clients that hold connections or memory without doing work (issue 12,
//! items 4 and 5): long polls from clients that went away, requests that
//! trickle in or stall, and declared sizes that never arrive. Raw sockets
//! against the real binary; memory is read from `/proc/<pid>/status`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{ApiVersionsRequest, CreateTopicsRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::broker_process::BrokerProcess;
use crate::kafka_bad_input::{batch, produce_code};
use crate::kafka_pipelining::long_poll;
use crate::wire::Wire;

const MIB: u64 = 1024 * 1024;

/// Start a broker with `kafka` settings (TOML lines of the `[kafka]`
/// section) and a 100 ms metrics refresh.
fn broker_with(dir: &Path, kafka: &str) -> BrokerProcess {
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!("[kafka]\n{kafka}\n[metrics]\nrefresh_interval_ms = 100\n"),
    )
    .unwrap();
    BrokerProcess::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

fn create_topic(wire: &mut Wire, topic: &str) {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(name(topic))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ]);
    let created = wire.call(5, &request);
    assert_eq!(created.topics[0].error_code, 0);
}

/// A Fetch of an empty partition that waits up to `max_wait_ms` for a byte.
/// Whether a new client gets an ApiVersions answer (a refused one is
/// closed, which may also fail the write).
fn served(address: &str) -> bool {
    let mut client = TcpStream::connect(address).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // ApiVersions v0: size, api key 18, version 0, correlation id 1, null client id.
    let request = [0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0xff, 0xff];
    let mut size = [0u8; 4];
    client.write_all(&request).is_ok() && client.read_exact(&mut size).is_ok()
}

/// A `/proc/<pid>/status` field in bytes (`VmRSS`, `VmSize`).
fn memory_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// An unlabelled gauge from `/metrics`.
fn gauge(metrics: &str, name: &str) -> f64 {
    let mut stream = TcpStream::connect(metrics).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Poll `condition` every 50 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// Whether the broker has closed `stream` (EOF or reset); waits up to 50 ms.
fn closed_by_broker(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => matches!(
            error.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
        ),
    }
}

/// Fill `kafka.connections_max` with clients that each send `polls` Fetch
/// requests with max_wait_ms 0x7fffffff, check a new client is refused,
/// close them all, and wait up to 10 s for a new client to be served.
fn long_polls_then_close(kafka: &str, slots: usize, polls: usize) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with(dir.path(), &format!("connections_max = {slots}\n{kafka}"));
    let mut pollers: Vec<Wire> = (0..slots).map(|_| Wire::connect(&broker.address)).collect();
    create_topic(&mut pollers[0], "quiet");
    for poller in &mut pollers {
        poller.call(
            3,
            &ApiVersionsRequest::default()
                .with_client_software_name(kafka_protocol::protocol::StrBytes::from_static_str(
                    "sluice-tests",
                ))
                .with_client_software_version(kafka_protocol::protocol::StrBytes::from_static_str(
                    "1.0",
                )),
        );
        for _ in 0..polls {
            poller.send(12, &long_poll("quiet", i32::MAX));
        }
    }
    assert!(
        !served(&broker.address),
        "with every slot held, a new client is refused"
    );
    drop(pollers);
    eventually(Duration::from_secs(10), || served(&broker.address))
}

/// Issue 12, item 4: clients that send a Fetch with max_wait_ms 0x7fffffff
/// and close their socket filled `kafka.connections_max` until the waits
/// ended, and every new client was refused. Their connections now end when
/// the broker reads their EOF.
#[test]
fn clients_that_close_during_a_long_poll_free_their_connections_at_once() {
    assert!(
        long_polls_then_close("", 64, 1),
        "the closed clients' connections still hold kafka.connections_max"
    );
}

/// Issue 12, item 4: the same with every client's pipeline full, so the
/// broker is not reading from them: it sees their FIN by polling the socket.
#[test]
fn clients_that_close_with_a_full_pipeline_of_long_polls_free_their_connections() {
    assert!(
        long_polls_then_close("requests_in_flight_max = 2", 16, 3),
        "the closed clients' connections still hold kafka.connections_max"
    );
}

/// Issue 12, item 4: a client's max_wait_ms is capped at
/// `kafka.fetch_wait_max_ms`, so a long poll cannot hold its connection
/// for the 24 days a client may ask.
#[test]
fn a_long_poll_waits_at_most_fetch_wait_max_ms() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with(dir.path(), "fetch_wait_max_ms = 200");
    let mut wire = Wire::connect(&broker.address);
    create_topic(&mut wire, "quiet");
    let fetched: FetchResponse = wire.call(12, &long_poll("quiet", i32::MAX));
    let partition = &fetched.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    assert_eq!(partition.high_watermark, 0, "answered empty at the cap");
}

/// Issue 12, item 4: a slowloris sending a request a byte at a time held
/// its connection for `kafka.idle_timeout_ms` (10 minutes). A request must
/// now be whole within `kafka.request_read_timeout_ms` of its first byte.
#[test]
fn a_client_trickling_a_request_is_closed_at_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with(
        dir.path(),
        "request_read_timeout_ms = 1000\nidle_timeout_ms = 600000",
    );
    let mut slow = TcpStream::connect(&broker.address).unwrap();
    slow.write_all(&10_000i32.to_be_bytes()).unwrap();
    let started = Instant::now();
    let mut closed = false;
    while !closed && started.elapsed() < Duration::from_secs(20) {
        // One byte every ~100 ms: a trickle that never completes the frame.
        closed = slow.write_all(&[0]).is_err() || closed_by_broker(&mut slow);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(closed, "the trickling client still holds its connection");
    assert!(
        broker.wait_for_log("kafka.request_read_timeout_ms"),
        "{:#?}",
        broker.log()
    );
    assert!(served(&broker.address));
}

/// Issue 12, item 5: connections declaring 100 MiB requests and sending
/// 1 KiB each reserved the declared size at once (2 000 of them: 205 GB of
/// address space, 185 MB resident). Memory now follows the bytes that
/// arrive, the budget admits five such requests, and the rest wait.
#[test]
fn declared_request_sizes_reserve_no_memory() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with(dir.path(), "");
    let pid = broker.pid();
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(produce_code(&mut wire, "normal", 0, batch(1, 10)), 0);
    let size_before = memory_bytes(pid, "VmSize");
    let resident_before = memory_bytes(pid, "VmRSS");

    let connections = 300;
    let mut declared = (100 * MIB as i32).to_be_bytes().to_vec();
    declared.extend_from_slice(&[0u8; 1024]);
    let _hogs: Vec<TcpStream> = (0..connections)
        .map(|_| {
            let mut hog = TcpStream::connect(&broker.address).unwrap();
            hog.write_all(&declared).unwrap();
            hog
        })
        .collect();
    let waiting = "sluice_kafka_connections_waiting_for_request_budget";
    assert!(
        eventually(Duration::from_secs(30), || {
            gauge(&broker.metrics, waiting) >= f64::from(connections - 5)
        }),
        "all but five wait for the budget: {}",
        gauge(&broker.metrics, waiting)
    );
    let queued = gauge(&broker.metrics, "sluice_kafka_queued_request_bytes");
    assert!(queued <= (512 * MIB) as f64, "{queued} bytes queued");

    let size_growth = memory_bytes(pid, "VmSize").saturating_sub(size_before);
    let resident_growth = memory_bytes(pid, "VmRSS").saturating_sub(resident_before);
    assert!(
        size_growth < 256 * MIB,
        "address space grew by {} MiB",
        size_growth / MIB
    );
    assert!(
        resident_growth < 128 * MIB,
        "resident memory grew by {} MiB",
        resident_growth / MIB
    );
    assert_eq!(
        produce_code(&mut wire, "normal", 0, batch(1, 10)),
        0,
        "a normal request still fits in the budget"
    );
}

/// Issue 12, item 5: sixteen stalled 99 MiB requests held 1.66 GB. With a
/// budget of one request, stalled requests are read one at a time, each
/// closed at the read timeout, and resident memory stays near the budget;
/// once they are gone a normal client is served.
#[test]
fn the_request_budget_pushes_back_until_stalled_requests_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 8 * MIB;
    let broker = broker_with(
        dir.path(),
        &format!(
            "request_max_bytes = {budget}\nqueued_requests_max_bytes = {budget}\n\
             request_read_timeout_ms = 1000"
        ),
    );
    let pid = broker.pid();
    let resident_before = memory_bytes(pid, "VmRSS");

    let stalled = 12;
    let sent = 7 * MIB as usize;
    let clients: Vec<_> = (0..stalled)
        .map(|_| {
            let address = broker.address.clone();
            std::thread::spawn(move || {
                let mut client = TcpStream::connect(&address).unwrap();
                let mut request = (budget as i32).to_be_bytes().to_vec();
                request.resize(4 + sent, 1);
                // Blocks while the broker does not read (TCP pushes back).
                let _ = client.write_all(&request);
                let deadline = Instant::now() + Duration::from_secs(120);
                while Instant::now() < deadline {
                    if closed_by_broker(&mut client) {
                        return true;
                    }
                }
                false
            })
        })
        .collect();

    let mut resident_peak = 0;
    let mut waited = 0.0f64;
    let mut queued_peak = 0.0f64;
    while !clients.iter().all(|client| client.is_finished()) {
        resident_peak = resident_peak.max(memory_bytes(pid, "VmRSS"));
        waited = waited.max(gauge(
            &broker.metrics,
            "sluice_kafka_connections_waiting_for_request_budget",
        ));
        queued_peak = queued_peak.max(gauge(&broker.metrics, "sluice_kafka_queued_request_bytes"));
        std::thread::sleep(Duration::from_millis(20));
    }
    for client in clients {
        assert!(client.join().unwrap(), "a stalled request was never closed");
    }
    let growth = resident_peak.saturating_sub(resident_before);
    assert!(
        growth < 40 * MIB,
        "resident memory grew by {} MiB with {stalled} stalled requests of {} MiB",
        growth / MIB,
        sent as u64 / MIB
    );
    assert!(waited >= 1.0, "connections waited for the budget");
    assert!(queued_peak <= budget as f64, "{queued_peak} bytes queued");
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(produce_code(&mut wire, "after", 0, batch(1, 10)), 0);
}
