//! Issue 15, cluster start: the `[cluster]` settings and the `--node-id`,
//! `--cluster-listen` and `--cluster-peers` flags of the real binary, and
//! the checks of the node identity file (`node.toml`) before any shard
//! starts; without `[cluster]` nothing changes. The cluster itself is
//! tested in `cluster.rs`.

use std::path::Path;
use std::process::ExitStatus;

use crate::broker_process::{BrokerProcess, exit_of, free_loopback_address};
use crate::kafka_clients::create_topic;

/// Exit status of a configuration error: systemd does not restart it
/// (packaging/sluice.service), since restarting cannot fix it.
const CONFIG_ERROR_EXIT: i32 = 2;

/// Run `sluice serve` on `data` until it exits by itself (every start here
/// is expected to stop); its status and log.
pub(crate) fn run_until_exit(data: &Path, extra: &[&str]) -> (ExitStatus, String) {
    exit_of(BrokerProcess::command(data, extra))
}

/// Three nodes' cluster listeners on loopback: the `--cluster-peers` value
/// and each node's `--cluster-listen`.
struct Peers {
    list: String,
    listen: Vec<String>,
}

fn three_peers() -> Peers {
    let listen: Vec<String> = (0..3).map(|_| free_loopback_address()).collect();
    let list = listen
        .iter()
        .enumerate()
        .map(|(index, address)| format!("{}@{address}", index + 1))
        .collect::<Vec<_>>()
        .join(",");
    Peers { list, listen }
}

/// The flags that start node `id` (1 to 3) of `peers`.
fn node_flags(peers: &Peers, id: usize) -> Vec<String> {
    vec![
        "--node-id".to_owned(),
        id.to_string(),
        "--cluster-listen".to_owned(),
        peers.listen[id - 1].clone(),
        "--cluster-peers".to_owned(),
        peers.list.clone(),
    ]
}

fn as_args(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

#[test]
fn bad_cluster_flags_and_settings_stop_the_start_naming_the_key_and_the_fix() {
    let peers = three_peers();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nnode_id = 1\n\n[cluster]\nnode_id = 1\nlisten = \"{}\"\npeers = \"{}\"\n\
             replication_factor = 4\n",
            peers.listen[0], peers.list
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let listen = peers.listen[0].as_str();
    let list = peers.list.as_str();
    let cases: [(Vec<&str>, &str, &str); 6] = [
        (
            vec!["--node-id", "1", "--cluster-listen", listen],
            "setting `cluster.peers` is missing",
            "--cluster-peers 1@HOST:PORT",
        ),
        (
            vec!["--node-id", "1", "--cluster-peers", list],
            "setting `cluster.listen` is missing",
            "--cluster-listen IP:PORT",
        ),
        (
            vec!["--cluster-listen", listen, "--cluster-peers", list],
            "setting `cluster.node_id` is missing",
            "--node-id N",
        ),
        (
            vec![
                "--node-id",
                "4",
                "--cluster-listen",
                listen,
                "--cluster-peers",
                list,
            ],
            "setting `cluster.node_id` = 4 is invalid",
            "add `4@HOST:PORT` for this node to the peers",
        ),
        (
            vec![
                "--node-id",
                "1",
                "--cluster-listen",
                listen,
                "--cluster-peers",
                "1@127.0.0.1",
            ],
            "setting `cluster.peers` = \"1@127.0.0.1\" is invalid",
            "expected id@host:port",
        ),
        (
            vec!["--config", config],
            "setting `cluster.replication_factor` = 4 is invalid",
            "between 1 and the number of peers (3)",
        ),
    ];
    for (flags, refusal, fix) in cases {
        let data = dir.path().join("data");
        let (status, log) = run_until_exit(&data, &flags);
        assert_eq!(
            status.code(),
            Some(CONFIG_ERROR_EXIT),
            "{flags:?}; log:\n{log}"
        );
        assert!(
            log.contains(refusal),
            "{flags:?} says {refusal:?}; log:\n{log}"
        );
        assert!(log.contains(fix), "{flags:?} says {fix:?}; log:\n{log}");
        assert!(
            !data.exists(),
            "{flags:?}: a bad setting stops the start before the data dir is touched"
        );
    }
}

#[test]
fn a_data_dir_of_node_2_started_as_node_3_is_refused_with_the_reason() {
    let peers = three_peers();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();

    // Node 2 claims the data dir: a cluster of one, which it leads.
    let solo = free_loopback_address();
    let flags = [
        "--node-id".to_owned(),
        "2".to_owned(),
        "--cluster-listen".to_owned(),
        solo.clone(),
        "--cluster-peers".to_owned(),
        format!("2@{solo}"),
    ];
    let broker = BrokerProcess::start(data, &as_args(&flags));
    assert_eq!(broker.stop().code(), Some(0));
    let identity = std::fs::read_to_string(data.join("node.toml")).unwrap();
    assert!(
        identity.contains("node_id = 2") && identity.contains("cluster_id = "),
        "{identity}"
    );

    let (status, log) = run_until_exit(data, &as_args(&node_flags(&peers, 3)));
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    let reason = format!(
        "data dir {} belongs to node 2, this node is configured as node 3; start node 2 on it \
         (--node-id 2), or give node 3 its own data dir",
        data.display()
    );
    assert!(log.contains(&reason), "log:\n{log}");
    assert!(
        !log.contains("sluice::cluster::controller"),
        "refused before the controller starts; log:\n{log}"
    );
    let identity_after = std::fs::read_to_string(data.join("node.toml")).unwrap();
    assert_eq!(
        identity_after, identity,
        "a refused node leaves node.toml alone"
    );

    // Nor does a single node serve it: its topics are the cluster's.
    let (status, log) = run_until_exit(data, &[]);
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    let reason = format!("data dir {} belongs to node 2 of cluster", data.display());
    for needle in [reason.as_str(), "start it with its cluster settings"] {
        assert!(log.contains(needle), "says {needle:?}; log:\n{log}");
    }
}

#[test]
fn a_single_node_data_dir_started_with_cluster_flags_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let broker = BrokerProcess::start(data, &[]);
    create_topic(&broker.address, "orders", 2, &[]);
    assert_eq!(broker.stop().code(), Some(0));

    let peers = three_peers();
    let (status, log) = run_until_exit(data, &as_args(&node_flags(&peers, 1)));
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    let reason = format!(
        "data dir {} holds the topics of a single node (orders, in metadata.toml)",
        data.display()
    );
    for needle in [
        reason.as_str(),
        "start without the [cluster] section",
        "point --data-dir at an empty directory",
    ] {
        assert!(log.contains(needle), "says {needle:?}; log:\n{log}");
    }
    assert!(
        !data.join("node.toml").exists(),
        "a refused data dir is not claimed"
    );

    // The refusal changed nothing: the single node still starts on it.
    let broker = BrokerProcess::start(data, &[]);
    assert_eq!(broker.stop().code(), Some(0));
}

#[test]
fn without_a_cluster_section_a_single_node_starts_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let (status, log) = broker.stop_with_log();
    assert_eq!(status.code(), Some(0), "log:\n{}", log.join("\n"));
    assert!(
        !dir.path().join("node.toml").exists(),
        "a single node writes no identity file"
    );
    assert!(
        !log.iter().any(|line| line.contains("sluice::cluster")),
        "no cluster code runs; log:\n{}",
        log.join("\n")
    );
}
