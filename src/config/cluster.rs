//! The `[cluster]` section: this node's place in a cluster of Sluice nodes
//! (issue 15). Absent, Sluice runs as one node, exactly as without it.
//!
//! The section comes from the config file, from the `--node-id`,
//! `--cluster-listen` and `--cluster-peers` flags of `sluice serve`
//! ([`ClusterFlags`]), or both (the flags override the file). `node_id`,
//! `listen` and `peers` have no default: [`ClusterConfig::validate`] names
//! the one that is missing and the flag that sets it. The other settings
//! have defaults, resolved only by the accessors here
//! ([`ClusterConfig::replication_factor`], ...), so no other code repeats
//! them. `peers` is typed ([`Peer`]) as it is read, from a TOML list of
//! strings or one comma-separated string, so a malformed entry never gets
//! past the parser.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::{ConfigError, KafkaConfig, MetricsConfig, invalid, parse_address};

/// `cluster.node_id` while neither the file nor `--node-id` set it; Kafka's
/// `node.id` has the same default, and a cluster refuses to start with it.
pub const NODE_ID_UNSET: i32 = -1;
/// Most nodes `cluster.peers` may list. Every peer is a controller voter and
/// every metadata change waits for a majority of them (Kafka runs three or
/// five controllers), so a larger quorum only slows commits down.
pub const PEERS_MAX: usize = 64;
/// `cluster.replication_factor` when not set: this many nodes, or all of
/// them when there are fewer (Kafka's usual `default.replication.factor`).
pub const REPLICATION_FACTOR_DEFAULT_MAX: u16 = 3;
/// `cluster.min_insync_replicas` when not set: this many replicas, or the
/// replication factor when it is smaller.
pub const MIN_INSYNC_REPLICAS_DEFAULT_MAX: u16 = 2;
/// The controller leader sends Raft heartbeats this many times per
/// `cluster.election_timeout_min_ms`, so one late or lost heartbeat does not
/// start an election.
pub const RAFT_HEARTBEATS_PER_ELECTION_TIMEOUT_MIN: u64 = 3;
/// Smallest `cluster.election_timeout_min_ms`: below it, a busy host's
/// scheduling delays alone start needless elections.
pub const ELECTION_TIMEOUT_MS_MIN: u64 = 150;
/// Largest election timeout and heartbeat interval: a minute without a
/// controller is an outage, not a setting.
pub const CLUSTER_INTERVAL_MS_MAX: u64 = 60_000;
/// Smallest `cluster.heartbeat_interval_ms`.
pub const HEARTBEAT_INTERVAL_MS_MIN: u64 = 10;

/// This node's place in the cluster. See the module doc for where the
/// values come from; check them with [`ClusterConfig::validate`] (part of
/// `Config::validate`) before using them.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id (Kafka `node.id`): one of the ids in `peers`, and equal
    /// to `kafka.node_id` (Kafka has one node id; `--node-id` sets both).
    /// Required, >= 0 ([`NODE_ID_UNSET`] until set).
    pub node_id: i32,
    /// Address of the internal RPC listener the other nodes connect to (the
    /// controller's Raft traffic, forwarded admin requests, heartbeats),
    /// `ip:port` with a fixed port. Required. Unauthenticated, like the
    /// Kafka listener: keep it on a private network.
    pub listen: String,
    /// `host:port` the other nodes use to reach this node's cluster
    /// listener; empty = `listen` (with this host's name instead of an
    /// unspecified address), as `kafka.advertised`. Its port must be the one
    /// this node's `peers` entry names.
    pub advertised: String,
    /// Every node of the cluster, this one included: `id@host:port` of each
    /// node's cluster listener (a host name or an IP address; `[v6]:port`
    /// for IPv6). A TOML list of strings, or one comma-separated string (as
    /// `--cluster-peers` takes). Ids and addresses are unique; at most
    /// [`PEERS_MAX`]. The same list on every node. Required.
    #[serde(deserialize_with = "deserialize_peers")]
    pub peers: Vec<Peer>,
    /// Replicas of each shard group (and so of each partition), the
    /// preferred leader included. Default min(3, number of peers); between
    /// 1 and the number of peers. Read it with
    /// [`ClusterConfig::replication_factor`].
    pub replication_factor: Option<u16>,
    /// Kafka's `min.insync.replicas` default for acks=all writes. Default
    /// min(2, replication factor); between 1 and the replication factor.
    /// Read it with [`ClusterConfig::min_insync_replicas`].
    pub min_insync_replicas: Option<u16>,
    /// How often this node heartbeats to the controller leader (Kafka
    /// `broker.heartbeat.interval.ms`). Default 500; 10 to 60000, below
    /// `session_timeout_ms`.
    pub heartbeat_interval_ms: u64,
    /// A node the controller has not heard from for this long is marked
    /// down and its leaderships move (Kafka `broker.session.timeout.ms`).
    /// Default 6000; above `heartbeat_interval_ms` and above
    /// `election_timeout_max_ms` (so electing a new controller does not mark
    /// every node down), at most 2147483647.
    pub session_timeout_ms: u64,
    /// A follower that hears nothing from the controller leader for a random
    /// time between these two starts an election (Raft's randomised election
    /// timeout). The leader's Raft heartbeats go out every
    /// `election_timeout_min_ms / 3` (133 ms by default). A follower also
    /// refuses to vote for `election_timeout_max_ms` after it last heard the
    /// leader (openraft's leader lease), so with the defaults 400 and 800 a
    /// new controller leader is elected about 0.8 to 1.6 s after the old one
    /// dies. `election_timeout_min_ms` at least 150,
    /// `election_timeout_max_ms` above it, both at most 60000.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A follower that has not caught up with its shard group's leader for
    /// this long leaves the group's in-sync set, so acks=all writes stop
    /// waiting for it (Kafka `replica.lag.time.max.ms`); it rejoins once it
    /// catches up. Default 30000; 100 to 2147483647.
    pub replica_lag_time_max_ms: u64,
    /// Most bytes a second one follower copy fetches while it catches up
    /// (more than one fetch behind its leader), so a new or returning
    /// replica copying whole segments does not starve the leader's disk
    /// and network; 0 for no limit (Kafka's follower replication quota).
    /// Default 0.
    pub replica_catchup_bytes_per_second: u64,
    /// How often the controller moves the leadership of each shard group
    /// back to its preferred leader (its first member) when that node is
    /// live and in sync again after a failover (Kafka
    /// `auto.leader.rebalance.enable` with
    /// `leader.imbalance.check.interval.seconds`); 0 never does. Default
    /// 300000 (5 minutes, Kafka's); 0 or 100 to 2147483647.
    pub leader_rebalance_interval_ms: u64,
}

impl Default for ClusterConfig {
    /// The section `--node-id`, `--cluster-listen` or `--cluster-peers`
    /// creates: the required keys unset, the others at their defaults.
    fn default() -> Self {
        ClusterConfig {
            node_id: NODE_ID_UNSET,
            listen: String::new(),
            advertised: String::new(),
            peers: Vec::new(),
            replication_factor: None,
            min_insync_replicas: None,
            heartbeat_interval_ms: 500,
            session_timeout_ms: 6000,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            replica_lag_time_max_ms: 30_000,
            replica_catchup_bytes_per_second: 0,
            leader_rebalance_interval_ms: 300_000,
        }
    }
}

/// One node in `cluster.peers`: its id and the `host:port` of its cluster
/// listener, as written (a host name is resolved when it is connected to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: i32,
    pub address: String,
    port: u16,
}

impl Peer {
    /// The port of [`Peer::address`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `--cluster-peers`: `id@host:port` entries separated by commas.
    pub fn parse_list(text: &str) -> Result<Vec<Peer>, ConfigError> {
        text.split(',')
            .map(|entry| {
                entry.trim().parse().or_else(|reason: PeerSyntax| {
                    invalid("cluster.peers", format!("{entry:?}"), reason.to_string())
                })
            })
            .collect()
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.address)
    }
}

/// Why a `cluster.peers` entry is not `id@host:port`.
#[derive(Debug, thiserror::Error)]
#[error("{problem}: expected id@host:port, e.g. 2@10.0.0.2:9093")]
pub struct PeerSyntax {
    problem: String,
}

fn peer_syntax<T>(problem: impl Into<String>) -> Result<T, PeerSyntax> {
    Err(PeerSyntax {
        problem: problem.into(),
    })
}

impl FromStr for Peer {
    type Err = PeerSyntax;

    fn from_str(entry: &str) -> Result<Peer, PeerSyntax> {
        if entry.is_empty() {
            return peer_syntax("empty entry");
        }
        let Some((id, address)) = entry.split_once('@') else {
            return peer_syntax("no `@` between the node id and the address");
        };
        let Ok(id) = id.parse::<i32>() else {
            return peer_syntax(format!("node id {id:?} is not a number"));
        };
        if id < 0 {
            return peer_syntax(format!("node id {id} is negative"));
        }
        let Some((host, port)) = address.rsplit_once(':') else {
            return peer_syntax("no `:port` after the host");
        };
        let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
        let bad_host = host.is_empty()
            || host.contains(|c: char| c.is_whitespace() || c == '@' || c == ',')
            || (host.contains(':') && !bracketed);
        if bad_host {
            return peer_syntax(format!(
                "host {host:?} is not a host name or address (IPv6 goes in brackets, [::1])"
            ));
        }
        let port = match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return peer_syntax(format!("port {port:?} is not between 1 and 65535")),
        };
        Ok(Peer {
            id,
            address: address.to_owned(),
            port,
        })
    }
}

/// `peers` from a TOML list of strings or one comma-separated string.
fn deserialize_peers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Peer>, D::Error> {
    struct PeersVisitor;

    impl<'de> Visitor<'de> for PeersVisitor {
        type Value = Vec<Peer>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of \"id@host:port\" strings, or one comma-separated string")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<Peer>, E> {
            text.split(',')
                .map(|entry| peer_entry(entry.trim()))
                .collect()
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Peer>, A::Error> {
            let mut peers = Vec::new();
            while let Some(entry) = seq.next_element::<String>()? {
                peers.push(peer_entry(entry.trim())?);
            }
            Ok(peers)
        }
    }

    deserializer.deserialize_any(PeersVisitor)
}

fn peer_entry<E: de::Error>(entry: &str) -> Result<Peer, E> {
    entry
        .parse()
        .map_err(|reason| E::custom(format!("`cluster.peers` entry {entry:?}: {reason}")))
}

/// The `sluice serve` flags that set `[cluster]` keys; any of them creates
/// the section when the file has none.
#[derive(Clone, Debug, Default)]
pub struct ClusterFlags {
    /// `--node-id N`: `cluster.node_id` and `kafka.node_id`.
    pub node_id: Option<i32>,
    /// `--cluster-listen HOST:PORT`: `cluster.listen`.
    pub listen: Option<String>,
    /// `--cluster-peers 1@HOST:PORT,...`: `cluster.peers`.
    pub peers: Option<String>,
}

impl ClusterFlags {
    fn any(&self) -> bool {
        self.node_id.is_some() || self.listen.is_some() || self.peers.is_some()
    }
}

impl super::Config {
    /// Apply the cluster flags over the file's settings. Not validated: see
    /// `Config::validate`, which names a required key still missing.
    pub fn apply_cluster_flags(&mut self, flags: &ClusterFlags) -> Result<(), ConfigError> {
        if !flags.any() {
            return Ok(());
        }
        let cluster = self.cluster.get_or_insert_with(ClusterConfig::default);
        if let Some(node_id) = flags.node_id {
            cluster.node_id = node_id;
            self.kafka.node_id = node_id;
        }
        if let Some(listen) = &flags.listen {
            cluster.listen = listen.clone();
        }
        if let Some(peers) = &flags.peers {
            cluster.peers = Peer::parse_list(peers)?;
        }
        Ok(())
    }
}

impl ClusterConfig {
    /// Replicas of each shard group: the setting, or min(3, peers).
    pub fn replication_factor(&self) -> u16 {
        self.replication_factor.unwrap_or_else(|| {
            let peers = u16::try_from(self.peers.len()).unwrap_or(u16::MAX);
            peers.min(REPLICATION_FACTOR_DEFAULT_MAX)
        })
    }

    /// The default `min.insync.replicas`: the setting, or min(2,
    /// replication factor).
    pub fn min_insync_replicas(&self) -> u16 {
        self.min_insync_replicas.unwrap_or_else(|| {
            self.replication_factor()
                .min(MIN_INSYNC_REPLICAS_DEFAULT_MAX)
        })
    }

    /// How often the controller leader sends Raft heartbeats.
    pub fn raft_heartbeat_interval_ms(&self) -> u64 {
        self.election_timeout_min_ms / RAFT_HEARTBEATS_PER_ELECTION_TIMEOUT_MIN
    }

    /// `host:port` the other nodes reach this node's cluster listener at:
    /// `advertised`, or `listen` with this host's name in place of an
    /// unspecified address.
    pub fn advertised_address(&self) -> (String, u16) {
        super::advertised_or_listen(&self.advertised, &self.listen)
    }

    /// This node's own entry in `peers` (present once validated).
    pub fn this_peer(&self) -> Option<&Peer> {
        self.peers.iter().find(|peer| peer.id == self.node_id)
    }

    /// Check every key and the relations between them and to `kafka` and
    /// `metrics`; the error names the key and the fix.
    pub(super) fn validate(
        &self,
        kafka: &KafkaConfig,
        metrics: &MetricsConfig,
    ) -> Result<(), ConfigError> {
        self.validate_required()?;
        self.validate_listeners(kafka, metrics)?;
        self.validate_peers()?;
        self.validate_replication()?;
        self.validate_timing()?;
        if kafka.node_id != self.node_id {
            return invalid(
                "kafka.node_id",
                kafka.node_id,
                format!(
                    "must equal cluster.node_id ({}): Kafka has one node id; set both to the \
                     same value (--node-id sets both)",
                    self.node_id
                ),
            );
        }
        Ok(())
    }

    fn validate_required(&self) -> Result<(), ConfigError> {
        let missing = if self.node_id == NODE_ID_UNSET {
            Some(("cluster.node_id", "node_id = N", "--node-id N"))
        } else if self.listen.is_empty() {
            Some((
                "cluster.listen",
                "listen = \"IP:PORT\"",
                "--cluster-listen IP:PORT",
            ))
        } else if self.peers.is_empty() {
            Some((
                "cluster.peers",
                "peers = \"1@HOST:PORT,2@HOST:PORT,...\"",
                "--cluster-peers 1@HOST:PORT,2@HOST:PORT,...",
            ))
        } else {
            None
        };
        if let Some((key, setting, flag)) = missing {
            return Err(ConfigError::Missing {
                key,
                fix: format!(
                    "a cluster node needs it: set `{setting}` in [cluster] or pass {flag} (or \
                     remove the [cluster] section and the --node-id/--cluster-* flags to run a \
                     single node)"
                ),
            });
        }
        if self.node_id < 0 {
            return invalid("cluster.node_id", self.node_id, "must be >= 0");
        }
        Ok(())
    }

    fn validate_listeners(
        &self,
        kafka: &KafkaConfig,
        metrics: &MetricsConfig,
    ) -> Result<(), ConfigError> {
        let listen = parse_address("cluster.listen", &self.listen)?;
        if listen.port() == 0 {
            return invalid(
                "cluster.listen",
                &self.listen,
                "needs a fixed port: the other nodes reach this one at its cluster.peers entry",
            );
        }
        for (key, other) in [
            ("kafka.listen", &kafka.listen),
            ("metrics.listen", &metrics.listen),
        ] {
            let Ok(other) = other.parse::<std::net::SocketAddr>() else {
                continue;
            };
            let overlapping = listen.ip() == other.ip()
                || listen.ip().is_unspecified()
                || other.ip().is_unspecified();
            if other.port() == listen.port() && overlapping {
                return invalid(
                    "cluster.listen",
                    &self.listen,
                    format!("the same port as {key} ({other}): give the cluster listener its own"),
                );
            }
        }
        if !self.advertised.is_empty() {
            let (host, port) = self.advertised.rsplit_once(':').unwrap_or(("", ""));
            if host.is_empty() || !port.parse::<u16>().is_ok_and(|port| port > 0) {
                return invalid(
                    "cluster.advertised",
                    &self.advertised,
                    "expected host:port (or empty for cluster.listen)",
                );
            }
        }
        Ok(())
    }

    fn validate_peers(&self) -> Result<(), ConfigError> {
        if self.peers.len() > PEERS_MAX {
            return invalid(
                "cluster.peers",
                format!("{} nodes", self.peers.len()),
                format!("at most {PEERS_MAX} nodes"),
            );
        }
        let mut ids = BTreeMap::new();
        let mut addresses = BTreeMap::new();
        for peer in &self.peers {
            if let Some(first) = ids.insert(peer.id, peer) {
                return invalid(
                    "cluster.peers",
                    peer,
                    format!("node id {} is listed twice ({first} and {peer})", peer.id),
                );
            }
            if let Some(first) = addresses.insert(peer.address.as_str(), peer) {
                return invalid(
                    "cluster.peers",
                    peer,
                    format!(
                        "address {} is listed for two nodes ({first} and {peer})",
                        peer.address
                    ),
                );
            }
        }
        let Some(this) = self.this_peer() else {
            let listed: Vec<String> = ids.keys().map(i32::to_string).collect();
            return invalid(
                "cluster.node_id",
                self.node_id,
                format!(
                    "not among cluster.peers (ids {}): add `{}@HOST:PORT` for this node to the \
                     peers, or correct the node id",
                    listed.join(", "),
                    self.node_id
                ),
            );
        };
        let (_, reached_at) = self.advertised_address();
        if this.port() != reached_at {
            let source = if self.advertised.is_empty() {
                "cluster.listen"
            } else {
                "cluster.advertised"
            };
            return invalid(
                "cluster.peers",
                this,
                format!(
                    "this node's entry names port {} but {source} has port {reached_at}: the \
                     other nodes would not reach this one; make them agree",
                    this.port()
                ),
            );
        }
        Ok(())
    }

    fn validate_replication(&self) -> Result<(), ConfigError> {
        let nodes = self.peers.len();
        let replication_factor = self.replication_factor();
        if replication_factor == 0 || usize::from(replication_factor) > nodes {
            return invalid(
                "cluster.replication_factor",
                replication_factor,
                format!("between 1 and the number of peers ({nodes})"),
            );
        }
        let min_insync = self.min_insync_replicas();
        if min_insync == 0 || min_insync > replication_factor {
            return invalid(
                "cluster.min_insync_replicas",
                min_insync,
                format!("between 1 and cluster.replication_factor ({replication_factor})"),
            );
        }
        Ok(())
    }

    fn validate_timing(&self) -> Result<(), ConfigError> {
        if !(HEARTBEAT_INTERVAL_MS_MIN..=CLUSTER_INTERVAL_MS_MAX)
            .contains(&self.heartbeat_interval_ms)
        {
            return invalid(
                "cluster.heartbeat_interval_ms",
                self.heartbeat_interval_ms,
                format!("between {HEARTBEAT_INTERVAL_MS_MIN} and {CLUSTER_INTERVAL_MS_MAX}"),
            );
        }
        if !(ELECTION_TIMEOUT_MS_MIN..=CLUSTER_INTERVAL_MS_MAX)
            .contains(&self.election_timeout_min_ms)
        {
            return invalid(
                "cluster.election_timeout_min_ms",
                self.election_timeout_min_ms,
                format!("between {ELECTION_TIMEOUT_MS_MIN} and {CLUSTER_INTERVAL_MS_MAX}"),
            );
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms
            || self.election_timeout_max_ms > CLUSTER_INTERVAL_MS_MAX
        {
            return invalid(
                "cluster.election_timeout_max_ms",
                self.election_timeout_max_ms,
                format!(
                    "must be above cluster.election_timeout_min_ms ({}) and at most \
                     {CLUSTER_INTERVAL_MS_MAX}: the timeouts are drawn at random between them",
                    self.election_timeout_min_ms
                ),
            );
        }
        if !(100..=super::KAFKA_INT_MAX).contains(&self.replica_lag_time_max_ms) {
            return invalid(
                "cluster.replica_lag_time_max_ms",
                self.replica_lag_time_max_ms,
                format!("must be between 100 and {}", super::KAFKA_INT_MAX),
            );
        }
        if self.leader_rebalance_interval_ms != 0
            && !(100..=super::KAFKA_INT_MAX).contains(&self.leader_rebalance_interval_ms)
        {
            return invalid(
                "cluster.leader_rebalance_interval_ms",
                self.leader_rebalance_interval_ms,
                format!(
                    "must be 0 (never) or between 100 and {}",
                    super::KAFKA_INT_MAX
                ),
            );
        }
        let floor = self.heartbeat_interval_ms.max(self.election_timeout_max_ms);
        if self.session_timeout_ms <= floor || self.session_timeout_ms > super::KAFKA_INT_MAX {
            return invalid(
                "cluster.session_timeout_ms",
                self.session_timeout_ms,
                format!(
                    "must be above cluster.heartbeat_interval_ms ({}) and \
                     cluster.election_timeout_max_ms ({}), at most {}",
                    self.heartbeat_interval_ms,
                    self.election_timeout_max_ms,
                    super::KAFKA_INT_MAX
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const PEERS: &str = r#"["1@127.0.0.1:9093", "2@127.0.0.1:9193", "3@127.0.0.1:9293"]"#;

    /// A `[cluster]` config for node 1 of three on loopback, with `changes`
    /// replacing or adding keys (an empty value leaves the key out).
    fn cluster_toml(changes: &[(&str, &str)]) -> String {
        let mut keys = vec![
            ("node_id", "1".to_owned()),
            ("listen", "\"127.0.0.1:9093\"".to_owned()),
            ("peers", PEERS.to_owned()),
        ];
        for (key, value) in changes {
            keys.retain(|(existing, _)| existing != key);
            keys.push((key, (*value).to_owned()));
        }
        let mut text = "[kafka]\nnode_id = 1\n\n[cluster]\n".to_owned();
        for (key, value) in keys.iter().filter(|(_, value)| !value.is_empty()) {
            text.push_str(&format!("{key} = {value}\n"));
        }
        text
    }

    fn parsed(changes: &[(&str, &str)]) -> Config {
        Config::parse(&cluster_toml(changes)).unwrap()
    }

    fn refusal(changes: &[(&str, &str)]) -> String {
        let error = parsed(changes).validate().unwrap_err();
        crate::error_chain::error_chain(&error)
    }

    #[test]
    fn no_cluster_section_means_a_single_node() {
        assert_eq!(Config::default().cluster, None);
        assert_eq!(Config::parse("").unwrap().cluster, None);
    }

    #[test]
    fn a_valid_section_resolves_its_defaults() {
        let config = parsed(&[]);
        config.validate().unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.node_id, 1);
        let ids: Vec<i32> = cluster.peers.iter().map(|peer| peer.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(cluster.peers[1].address, "127.0.0.1:9193");
        assert_eq!(cluster.peers[1].port(), 9193);
        assert_eq!(cluster.this_peer().unwrap().id, 1);
        assert_eq!(cluster.replication_factor(), 3);
        assert_eq!(cluster.min_insync_replicas(), 2);
        assert_eq!(cluster.heartbeat_interval_ms, 500);
        assert_eq!(cluster.session_timeout_ms, 6000);
        assert_eq!(
            (
                cluster.election_timeout_min_ms,
                cluster.election_timeout_max_ms
            ),
            (400, 800)
        );
        assert_eq!(cluster.raft_heartbeat_interval_ms(), 133);
        assert_eq!(cluster.advertised_address(), ("127.0.0.1".to_owned(), 9093));
    }

    #[test]
    fn peers_are_a_list_of_strings_or_one_comma_separated_string() {
        let list = parsed(&[]).cluster.unwrap().peers;
        let joined = parsed(&[(
            "peers",
            r#""1@127.0.0.1:9093, 2@127.0.0.1:9193,3@127.0.0.1:9293""#,
        )])
        .cluster
        .unwrap()
        .peers;
        assert_eq!(list, joined);
        let flag = Peer::parse_list("1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293").unwrap();
        assert_eq!(list, flag);
        let named = Peer::parse_list("7@broker-7.example.internal:9093,8@[::1]:9093").unwrap();
        assert_eq!(named[0].address, "broker-7.example.internal:9093");
        assert_eq!((named[1].id, named[1].port()), (8, 9093));
    }

    #[test]
    fn replication_defaults_follow_the_number_of_peers() {
        for (peers, replication_factor, min_insync) in [
            (r#""1@127.0.0.1:9093""#, 1, 1),
            (r#""1@127.0.0.1:9093,2@h2:9093""#, 2, 2),
            (PEERS, 3, 2),
            (r#""1@127.0.0.1:9093,2@h2:1,3@h3:1,4@h4:1,5@h5:1""#, 3, 2),
        ] {
            let config = parsed(&[("peers", peers)]);
            config.validate().unwrap();
            let cluster = config.cluster.unwrap();
            assert_eq!(
                (cluster.replication_factor(), cluster.min_insync_replicas()),
                (replication_factor, min_insync),
                "{peers}"
            );
        }
        let cluster = parsed(&[("replication_factor", "1")]).cluster.unwrap();
        assert_eq!(
            (cluster.replication_factor(), cluster.min_insync_replicas()),
            (1, 1)
        );
        let config = parsed(&[("replication_factor", "3"), ("min_insync_replicas", "3")]);
        config.validate().unwrap();
        assert_eq!(config.cluster.unwrap().min_insync_replicas(), 3);
    }

    #[test]
    fn a_missing_required_key_is_named_with_its_flag() {
        for (key, flag) in [
            ("node_id", "--node-id N"),
            ("listen", "--cluster-listen IP:PORT"),
            ("peers", "--cluster-peers 1@HOST:PORT"),
        ] {
            let text = refusal(&[(key, "")]);
            assert!(
                text.starts_with(&format!("setting `cluster.{key}` is missing")),
                "{text}"
            );
            assert!(text.contains(flag), "{text}");
        }
    }

    #[test]
    fn every_refusal_names_its_key_and_the_fix() {
        /// Keys changed, the key the refusal names, and its fix.
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (&[("node_id", "-2")], "cluster.node_id", "must be >= 0"),
            (
                &[("listen", "\"localhost:9093\"")],
                "cluster.listen",
                "host names are not resolved",
            ),
            (
                &[
                    ("listen", "\"127.0.0.1:0\""),
                    ("peers", "\"1@127.0.0.1:1\""),
                ],
                "cluster.listen",
                "needs a fixed port",
            ),
            (
                &[("listen", "\"0.0.0.0:9092\""), ("peers", "\"1@h:9092\"")],
                "cluster.listen",
                "the same port as kafka.listen",
            ),
            (
                &[("listen", "\"127.0.0.1:9644\""), ("peers", "\"1@h:9644\"")],
                "cluster.listen",
                "the same port as metrics.listen",
            ),
            (
                &[("advertised", "\"nohost\"")],
                "cluster.advertised",
                "expected host:port",
            ),
            (
                &[("peers", r#""1@127.0.0.1:9093,1@127.0.0.1:9193""#)],
                "cluster.peers",
                "node id 1 is listed twice",
            ),
            (
                &[("peers", r#""1@127.0.0.1:9093,2@127.0.0.1:9093""#)],
                "cluster.peers",
                "address 127.0.0.1:9093 is listed for two nodes",
            ),
            (
                &[("node_id", "4")],
                "cluster.node_id",
                "not among cluster.peers (ids 1, 2, 3): add `4@HOST:PORT`",
            ),
            (
                &[("listen", "\"127.0.0.1:9094\"")],
                "cluster.peers",
                "port 9093 but cluster.listen has port 9094",
            ),
            (
                &[("advertised", "\"node-1:9999\"")],
                "cluster.peers",
                "port 9093 but cluster.advertised has port 9999",
            ),
            (
                &[("replication_factor", "0")],
                "cluster.replication_factor",
                "between 1 and the number of peers (3)",
            ),
            (
                &[("replication_factor", "4")],
                "cluster.replication_factor",
                "between 1 and the number of peers (3)",
            ),
            (
                &[("min_insync_replicas", "0")],
                "cluster.min_insync_replicas",
                "between 1 and cluster.replication_factor (3)",
            ),
            (
                &[("replication_factor", "2"), ("min_insync_replicas", "3")],
                "cluster.min_insync_replicas",
                "between 1 and cluster.replication_factor (2)",
            ),
            (
                &[("heartbeat_interval_ms", "5")],
                "cluster.heartbeat_interval_ms",
                "between 10 and 60000",
            ),
            (
                &[("heartbeat_interval_ms", "6000")],
                "cluster.session_timeout_ms",
                "above cluster.heartbeat_interval_ms (6000)",
            ),
            (
                &[("election_timeout_min_ms", "100")],
                "cluster.election_timeout_min_ms",
                "between 150 and 60000",
            ),
            (
                &[("election_timeout_max_ms", "400")],
                "cluster.election_timeout_max_ms",
                "above cluster.election_timeout_min_ms (400)",
            ),
            (
                &[("session_timeout_ms", "800")],
                "cluster.session_timeout_ms",
                "cluster.election_timeout_max_ms (800)",
            ),
            (
                &[("session_timeout_ms", "2147483648")],
                "cluster.session_timeout_ms",
                "at most 2147483647",
            ),
        ];
        for (changes, key, fix) in cases {
            let text = refusal(changes);
            assert!(text.contains(&format!("`{key}`")), "{changes:?}: {text}");
            assert!(text.contains(fix), "{changes:?}: {text}");
        }
    }

    #[test]
    fn kafka_node_id_must_be_the_cluster_node_id() {
        let text = cluster_toml(&[]).replace("[kafka]\nnode_id = 1\n", "");
        let error = Config::parse(&text).unwrap().validate().unwrap_err();
        let text = error.to_string();
        assert!(text.contains("`kafka.node_id` = 0"), "{text}");
        assert!(text.contains("must equal cluster.node_id (1)"), "{text}");
        assert!(text.contains("--node-id sets both"), "{text}");
    }

    #[test]
    fn a_malformed_peer_entry_is_refused_by_name_from_the_file_and_the_flag() {
        for entry in [
            "1@127.0.0.1",
            "one@127.0.0.1:9093",
            "-1@127.0.0.1:9093",
            "1:127.0.0.1:9093",
            "1@127.0.0.1:0",
            "1@127.0.0.1:70000",
            "1@:9093",
            "1@::1:9093",
            "1@my host:9093",
            "",
        ] {
            let list = format!("1@127.0.0.1:9093,{entry}");
            let file = Config::parse(&cluster_toml(&[("peers", &format!("{list:?}"))]))
                .unwrap_err()
                .to_string();
            assert!(file.contains("`cluster.peers` entry"), "{entry:?}: {file}");
            assert!(file.contains("expected id@host:port"), "{entry:?}: {file}");
            let flag = Peer::parse_list(&list).unwrap_err().to_string();
            assert!(
                flag.starts_with("setting `cluster.peers`"),
                "{entry:?}: {flag}"
            );
            assert!(flag.contains("expected id@host:port"), "{entry:?}: {flag}");
        }
    }

    #[test]
    fn too_many_peers_are_refused() {
        let peers: Vec<String> = (0..=PEERS_MAX)
            .map(|id| format!("{id}@127.0.0.{}:9093", id + 1))
            .collect();
        let text = refusal(&[("peers", &format!("{:?}", peers.join(",")))]);
        assert!(text.contains("`cluster.peers`"), "{text}");
        assert!(text.contains("at most 64 nodes"), "{text}");
    }

    #[test]
    fn unknown_cluster_keys_are_refused_by_name() {
        let error = Config::parse(&cluster_toml(&[("replicas", "3")])).unwrap_err();
        assert!(error.to_string().contains("replicas"), "{error}");
    }

    #[test]
    fn the_cluster_flags_create_the_section_and_need_all_three() {
        let all = ClusterFlags {
            node_id: Some(2),
            listen: Some("127.0.0.1:9193".to_owned()),
            peers: Some("1@127.0.0.1:9093,2@127.0.0.1:9193".to_owned()),
        };
        let mut config = Config::default();
        config.apply_cluster_flags(&all).unwrap();
        config.validate().unwrap();
        assert_eq!(config.kafka.node_id, 2, "--node-id is Kafka's node id too");
        let cluster = config.cluster.as_ref().unwrap();
        assert_eq!((cluster.node_id, cluster.peers.len()), (2, 2));
        assert_eq!(cluster.replication_factor(), 2);

        let mut config = Config::default();
        config
            .apply_cluster_flags(&ClusterFlags::default())
            .unwrap();
        assert_eq!(config.cluster, None, "no flag, no section");

        for (flags, missing, flag) in [
            (
                ClusterFlags {
                    node_id: None,
                    ..all.clone()
                },
                "cluster.node_id",
                "--node-id",
            ),
            (
                ClusterFlags {
                    listen: None,
                    ..all.clone()
                },
                "cluster.listen",
                "--cluster-listen",
            ),
            (
                ClusterFlags {
                    peers: None,
                    ..all.clone()
                },
                "cluster.peers",
                "--cluster-peers",
            ),
        ] {
            let mut config = Config::default();
            config.apply_cluster_flags(&flags).unwrap();
            let text = config.validate().unwrap_err().to_string();
            assert!(text.contains(&format!("`{missing}` is missing")), "{text}");
            assert!(text.contains(flag), "{text}");
        }
    }

    #[test]
    fn the_cluster_flags_override_the_file() {
        let mut config = parsed(&[]);
        config
            .apply_cluster_flags(&ClusterFlags {
                node_id: Some(2),
                listen: Some("127.0.0.1:9193".to_owned()),
                peers: None,
            })
            .unwrap();
        config.validate().unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!((cluster.node_id, config.kafka.node_id), (2, 2));
        assert_eq!(cluster.listen, "127.0.0.1:9193");
        assert_eq!(cluster.peers.len(), 3, "the file's peers stay");

        let mut config = Config::default();
        let error = config
            .apply_cluster_flags(&ClusterFlags {
                peers: Some("1@127.0.0.1".to_owned()),
                ..ClusterFlags::default()
            })
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("`cluster.peers` = \"1@127.0.0.1\""),
            "{error}"
        );
    }

    /// The commented-out `[cluster]` example in sluice.example.toml, with
    /// its keys uncommented, is a valid configuration.
    #[test]
    fn the_example_cluster_section_is_valid() {
        let example = include_str!("../../sluice.example.toml");
        let block = example
            .split_once("# [cluster]\n")
            .expect("the example has a commented-out [cluster] section")
            .1;
        let mut text = "[kafka]\nnode_id = 1\n\n[cluster]\n".to_owned();
        for line in block.lines() {
            let Some(setting) = line.strip_prefix("# ") else {
                continue;
            };
            let is_key = setting
                .split_once(" = ")
                .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            if is_key {
                text.push_str(setting);
                text.push('\n');
            }
        }
        let config = Config::parse(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
        config.validate().unwrap();
        let cluster = config.cluster.unwrap();
        let defaults = ClusterConfig::default();
        assert_eq!(cluster.node_id, 1);
        assert_eq!(cluster.peers.len(), 3);
        for (key, example, default) in [
            (
                "heartbeat_interval_ms",
                cluster.heartbeat_interval_ms,
                defaults.heartbeat_interval_ms,
            ),
            (
                "session_timeout_ms",
                cluster.session_timeout_ms,
                defaults.session_timeout_ms,
            ),
            (
                "election_timeout_min_ms",
                cluster.election_timeout_min_ms,
                defaults.election_timeout_min_ms,
            ),
            (
                "election_timeout_max_ms",
                cluster.election_timeout_max_ms,
                defaults.election_timeout_max_ms,
            ),
            (
                "replica_lag_time_max_ms",
                cluster.replica_lag_time_max_ms,
                defaults.replica_lag_time_max_ms,
            ),
            (
                "replica_catchup_bytes_per_second",
                cluster.replica_catchup_bytes_per_second,
                defaults.replica_catchup_bytes_per_second,
            ),
            (
                "leader_rebalance_interval_ms",
                cluster.leader_rebalance_interval_ms,
                defaults.leader_rebalance_interval_ms,
            ),
        ] {
            assert_eq!(example, default, "the example shows the default {key}");
        }
    }
}
