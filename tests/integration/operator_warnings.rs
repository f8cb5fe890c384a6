//! What the broker tells the operator (issue 12, operator footguns): at
//! start, a warning for each listener reachable from other hosts (there is
//! no authentication yet) and for an open-files limit below what the
//! configuration needs, after raising the soft limit to the hard one; while
//! running, refused connections and failed accepts log one line per burst
//! with a count instead of one per connection.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiVersionsRequest;

use crate::broker_process::{BrokerProcess, Launch};
use crate::wire::Wire;

const EXPOSED_KAFKA: &str = "kafka.listen is not a loopback address";
const EXPOSED_METRICS: &str = "metrics.listen is not a loopback address";
const RAISED: &str = "raised the open-files soft limit";
const TOO_FEW_FILES: &str = "the open-files limit (RLIMIT_NOFILE) is below";
const REFUSING: &str = "refusing Kafka connections";
const ACCEPT_FAILED: &str = "Kafka accept failed";
const ACCEPTS_FAILED: &str = "Kafka accepts failed since the last such line";
/// Long enough for the once-per-10-s line that closes a burst.
const BURST_LINE_WAIT: Duration = Duration::from_secs(20);

/// An IPv4 address of this machine other than loopback, if it has one.
fn own_non_loopback_address() -> Option<IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut entry = list;
    while !entry.is_null() && found.is_none() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
        let interface = unsafe { &*entry };
        let address = interface.ifa_addr;
        // SAFETY: a non-null ifa_addr points to a sockaddr whose family says
        // its type; AF_INET means a sockaddr_in.
        if !address.is_null() && i32::from(unsafe { (*address).sa_family }) == libc::AF_INET {
            let ipv4 = unsafe { &*(address as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(ipv4.sin_addr.s_addr));
            if !ip.is_loopback() && !ip.is_unspecified() {
                found = Some(IpAddr::V4(ip));
            }
        }
        entry = interface.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// The (soft, hard) open-files limit of this process.
fn open_files_limit() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live struct we pass.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    (limit.rlim_cur, limit.rlim_max)
}

/// Whether a child can be given a hard open-files limit of `hard` without
/// privilege (lowering is always allowed); says why not when it cannot.
fn can_set_open_files_limit(hard: u64) -> bool {
    let (_, ours) = open_files_limit();
    if ours < hard {
        eprintln!("skipped: this process's hard open-files limit {ours} is below {hard}");
    }
    ours >= hard
}

fn lines_with(broker: &BrokerProcess, needle: &str) -> Vec<String> {
    broker
        .log()
        .into_iter()
        .filter(|line| line.contains(needle))
        .collect()
}

/// Waits until `count` lines contain `needle`; returns them.
fn wait_for_lines(
    broker: &BrokerProcess,
    needle: &str,
    count: usize,
    wait: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + wait;
    loop {
        let lines = lines_with(broker, needle);
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connect and wait for the broker to close the connection.
fn refused(address: &str) -> bool {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn exposed_listeners_and_a_low_open_files_limit_are_warned_about_at_start() {
    if !can_set_open_files_limit(512) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let own = own_non_loopback_address();
    let kafka = own.map_or("127.0.0.1:0".to_owned(), |ip| {
        SocketAddr::new(ip, 0).to_string()
    });
    let broker = BrokerProcess::start_with(
        dir.path(),
        &[],
        &Launch {
            listen: &kafka,
            metrics_listen: "0.0.0.0:0",
            open_files: Some((256, 512)),
        },
    );
    let raised = lines_with(&broker, RAISED);
    assert!(
        raised.len() == 1 && raised[0].contains("from=256 to=512"),
        "{raised:?}"
    );
    let too_few = lines_with(&broker, TOO_FEW_FILES);
    assert_eq!(too_few.len(), 1, "{:?}", broker.log());
    for fix in [
        "limit=512",
        "the hard limit (512) first",
        "ulimit -n",
        "LimitNOFILE=",
        "kafka.connections_max",
    ] {
        assert!(too_few[0].contains(fix), "{fix}: {}", too_few[0]);
    }
    let metrics = lines_with(&broker, EXPOSED_METRICS);
    assert!(
        metrics.len() == 1 && metrics[0].contains("metrics.listen=0.0.0.0:0"),
        "{metrics:?}"
    );
    match own {
        Some(ip) => {
            let kafka = lines_with(&broker, EXPOSED_KAFKA);
            assert!(
                kafka.len() == 1
                    && kafka[0].contains(&format!("listen={ip}:0"))
                    && kafka[0].contains("security_protocol"),
                "{kafka:?}"
            );
        }
        None => eprintln!(
            "skipped the kafka.listen half: this machine has no non-loopback IPv4 address"
        ),
    }
    assert!(broker.stop().success());
}

#[test]
fn a_loopback_broker_within_its_open_files_limit_warns_of_neither() {
    const FILES: u64 = 4096;
    if !can_set_open_files_limit(FILES) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("few-connections.toml");
    std::fs::write(&config, "[kafka]\nconnections_max = 100\n").unwrap();
    let broker = BrokerProcess::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
        &Launch {
            open_files: Some((FILES, FILES)),
            ..Launch::default()
        },
    );
    for needle in [EXPOSED_KAFKA, EXPOSED_METRICS, RAISED, TOO_FEW_FILES] {
        assert_eq!(
            lines_with(&broker, needle),
            Vec::<String>::new(),
            "{needle}"
        );
    }
    assert!(broker.stop().success());
}

/// Issue 12: clients refused over `kafka.connections_max` logged one warning
/// each (a line per connection under a reconnect storm).
#[test]
fn refusals_over_connections_max_log_one_line_then_the_burst_count() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("two-connections.toml");
    std::fs::write(&config, "[kafka]\nconnections_max = 2\n").unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let mut held: Vec<Wire> = (0..2).map(|_| Wire::connect(&broker.address)).collect();
    for wire in &mut held {
        wire.call(0, &ApiVersionsRequest::default());
    }
    for _ in 0..30 {
        assert!(
            refused(&broker.address),
            "over connections_max closes at once"
        );
    }
    let first = wait_for_lines(&broker, REFUSING, 1, Duration::from_secs(5));
    assert!(
        first.len() == 1 && first[0].ends_with("refused=1"),
        "one line at the start of the burst: {first:?}"
    );
    let lines = wait_for_lines(&broker, REFUSING, 2, BURST_LINE_WAIT);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[1].ends_with("refused=29"),
        "the rest of the burst: {}",
        lines[1]
    );
}

/// Issue 12: with the open-files limit reached, every failed accept logged a
/// warning (about 200 lines a second on 2 shards).
#[test]
fn accepts_failing_at_the_open_files_limit_log_one_line_then_the_burst_count() {
    if !can_set_open_files_limit(256) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with(
        dir.path(),
        &[],
        &Launch {
            open_files: Some((256, 256)),
            ..Launch::default()
        },
    );
    let flood: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&broker.address).unwrap())
        .collect();
    assert_eq!(
        wait_for_lines(&broker, ACCEPT_FAILED, 1, Duration::from_secs(10)).len(),
        1
    );
    // Two shards retry every 10 ms while the cause lasts.
    std::thread::sleep(Duration::from_secs(1));
    let failed = lines_with(&broker, ACCEPT_FAILED);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("Too many open files"), "{}", failed[0]);
    drop(flood);
    let closing = wait_for_lines(&broker, ACCEPTS_FAILED, 1, BURST_LINE_WAIT);
    assert_eq!(closing.len(), 1, "{:?}", broker.log());
    let count: u64 = closing[0]
        .rsplit("failed=")
        .next()
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0);
    assert!(count > 10, "the burst's count: {}", closing[0]);
    assert!(broker.stop().success());
}
