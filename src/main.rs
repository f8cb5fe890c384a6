//! The `sluice` command: `sluice serve` runs the broker; `sluice topics`,
//! `sluice groups`, `sluice transactions`, `sluice delays` and `sluice dlq`
//! administer a running one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sluice::broker::Broker;
use sluice::broker::peer::BrokerPeers;
use sluice::config::{self, ClusterFlags, Config, IoBackendSetting, SecurityProtocol};
use sluice::data_dir::DataDir;
use sluice::error_chain::error_chain;
use sluice::exposure;
use sluice::io::{IoBackend, choose_backend};
use sluice::kafka::KafkaService;
use sluice::kafka::listener::bind_shard_listeners;
use sluice::open_files;
use sluice::shard::ShardRuntime;
use sluice::shard::signals::{Termination, TerminationSignals};
use sluice::storage::{CheckpointStatus, RecoveryReport};
use sluice::telemetry;
use sluice::telemetry::http::MetricsServer;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Kafka-compatible broker storage node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// List, create, describe and delete topics on a running broker.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
        /// Broker addresses, HOST:PORT[,HOST:PORT…].
        #[arg(long, global = true, default_value = "127.0.0.1:9092")]
        brokers: String,
    },
    /// List, describe and delete consumer groups; reset their offsets.
    Groups {
        #[command(subcommand)]
        command: GroupsCommand,
        /// Broker addresses, HOST:PORT[,HOST:PORT…].
        #[arg(long, global = true, default_value = "127.0.0.1:9092")]
        brokers: String,
    },
    /// Create, delete and list SASL/SCRAM users (KIP-554). On a SASL
    /// listener, authenticate as a super user with SLUICE_SASL_USERNAME and
    /// SLUICE_SASL_PASSWORD (and SLUICE_SASL_MECHANISM, default
    /// SCRAM-SHA-512); every command accepts them.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
        /// Broker addresses, HOST:PORT[,HOST:PORT…].
        #[arg(long, global = true, default_value = "127.0.0.1:9092")]
        brokers: String,
    },
    /// Add, remove and list ACLs (KIP-140; the broker needs
    /// security.authorizer = "acl"). Authenticate as a super user with
    /// SLUICE_SASL_USERNAME and SLUICE_SASL_PASSWORD.
    Acls {
        #[command(subcommand)]
        command: AclsCommand,
        /// Broker addresses, HOST:PORT[,HOST:PORT…].
        #[arg(long, global = true, default_value = "127.0.0.1:9092")]
        brokers: String,
    },
    /// Set, remove and list client quotas (KIP-546) of users and client
    /// ids: byte rates and request time.
    Quotas {
        #[command(subcommand)]
        command: QuotasCommand,
        /// Broker addresses, HOST:PORT[,HOST:PORT…].
        #[arg(long, global = true, default_value = "127.0.0.1:9092")]
        brokers: String,
    },
    /// List and describe transactions; fence a transactional id, aborting
    /// its open transaction.
    Transactions {
        #[command(subcommand)]
        command: TransactionsCommand,
        /// Broker addresses, HOST:PORT[,HOST:PORT…].
        #[arg(long, global = true, default_value = "127.0.0.1:9092")]
        brokers: String,
    },
    /// The delayed records a broker holds, per topic and by due time (read
    /// from its metrics listener, as of its last metrics refresh).
    Delays {
        #[command(subcommand)]
        command: DelaysCommand,
        /// Metrics listeners (`metrics.listen`), HOST:PORT[,HOST:PORT…].
        #[arg(long, global = true, default_value = "127.0.0.1:9644")]
        metrics: String,
    },
    /// List a consumer group's dead letters (G.dlq) and replay them to
    /// their topics.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
        /// Broker addresses, HOST:PORT[,HOST:PORT…].
        #[arg(long, global = true, default_value = "127.0.0.1:9092")]
        brokers: String,
    },
    /// Load generator: produce, consume and end-to-end runs against a
    /// broker, and this host's own limits as a baseline.
    Bench {
        #[command(subcommand)]
        command: sluice::bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Every topic and its partition count.
    List,
    /// Create a topic.
    Create {
        name: String,
        /// Partition count; the broker's default (`kafka.default_partitions`,
        /// Kafka's `num.partitions`) when not given.
        #[arg(long, short = 'p')]
        partitions: Option<i32>,
        /// Replicas per partition; the broker's default when not given or
        /// -1 (a single node takes 1; a cluster takes 1 up to
        /// `cluster.replication_factor` and gives every topic that many).
        #[arg(long, short = 'r', allow_negative_numbers = true)]
        replication_factor: Option<i16>,
        /// Topic config, KEY=VALUE (repeatable), e.g. retention.ms=3600000.
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// Partitions with their log start and end, and the configs set on the topic.
    Describe { name: String },
    /// Set or remove topic configs (IncrementalAlterConfigs); others keep
    /// their values.
    #[command(group(clap::ArgGroup::new("changes").required(true).multiple(true).args(["configs", "delete_configs"])))]
    Alter {
        name: String,
        /// Topic config to set, KEY=VALUE (repeatable), e.g.
        /// sluice.disk.pressure.delete=true.
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Topic config to remove, back to its default (repeatable).
        #[arg(long = "delete-config", value_name = "KEY")]
        delete_configs: Vec<String>,
    },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Subcommand)]
enum GroupsCommand {
    /// Every group with its state.
    List,
    /// A group's members, committed offsets and lag per partition.
    Describe { group: String },
    /// Delete a group without members, with its committed offsets.
    Delete { group: String },
    /// Move a group's committed offsets (the group must have no members).
    /// A dry run unless --execute.
    ResetOffsets(ResetArgs),
}

#[derive(Subcommand)]
enum TransactionsCommand {
    /// Every transactional id with its producer id and state.
    List {
        /// Only ids in this state: Empty, Ongoing, PrepareCommit,
        /// PrepareAbort, CompleteCommit or CompleteAbort.
        #[arg(long)]
        state: Option<String>,
        /// Only the id of this producer id.
        #[arg(long)]
        producer_id: Option<i64>,
    },
    /// A transactional id's state, producer, timeout, and the partitions of
    /// its transaction in progress.
    Describe { transactional_id: String },
    /// Fence a transactional id's producer (its epoch is bumped, as when a
    /// new instance starts) and abort its open transaction.
    Abort { transactional_id: String },
}

#[derive(Subcommand)]
enum DelaysCommand {
    /// Pending delayed records per topic and when the next one is due.
    Count,
    /// Pending delayed records per topic by due time: overdue, within 1
    /// minute, 10 minutes, 1 hour, 1 day, 7 days, later.
    List,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Group G's dead letters (G.dlq, from the log start): offset, time,
    /// retries made, the record that failed, key and value; then how many
    /// there are and how many were replayed.
    List {
        group: String,
        /// Most dead letters shown (all are counted).
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
    },
    /// Produce group G's dead letters not replayed yet to their topics
    /// again, then commit how far it got as group G.dlq.replay's offsets.
    /// A dry run unless --execute.
    ///
    /// Each dead letter of G.dlq from G.dlq.replay's committed offset (else
    /// the log start) to the high watermark goes to --to TOPIC, else to the
    /// topic it failed in (its sluice.dlq.topic header); to its own
    /// partition when it goes back to its topic, else by its key's hash
    /// (round robin without a key). It keeps its key, value and own headers
    /// and loses the broker's (sluice.reconsume.times, sluice.dlq.*,
    /// sluice.retry.*, sluice.origin.offset and .timestamp, the delay
    /// headers), so it is delivered at once (unless the target topic delays
    /// every record) and, failing again, starts its retries from zero; its
    /// timestamp is the time of the replay. A dead letter without a topic header (and no
    /// --to) or whose target topic does not exist fails the command before
    /// anything is produced.
    ///
    /// Replay is at least once: records are produced with acks=all and the
    /// offsets committed after; a command that dies between the two
    /// produces those records again on the next run. Run one replay of a
    /// group at a time.
    Replay {
        group: String,
        /// Produce every dead letter to this topic (it must exist) instead
        /// of its own.
        #[arg(long, value_name = "TOPIC")]
        to: Option<String>,
        /// Produce the records and commit the offsets (without it, only
        /// print how many records would go to each partition).
        #[arg(long)]
        execute: bool,
    },
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset", "to_datetime", "shift_by"])))]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["topic", "all_topics"])))]
struct ResetArgs {
    group: String,
    /// Topic to reset (repeatable).
    #[arg(long)]
    topic: Vec<String>,
    /// Every topic the group has committed offsets for.
    #[arg(long)]
    all_topics: bool,
    #[arg(long)]
    to_earliest: bool,
    #[arg(long)]
    to_latest: bool,
    #[arg(long, value_name = "OFFSET")]
    to_offset: Option<i64>,
    /// RFC 3339 time (2026-11-21T10:00:00Z) or epoch milliseconds: the first
    /// record at or after it.
    #[arg(long, value_name = "TIME")]
    to_datetime: Option<String>,
    /// Move by N records (negative: back), from the committed offset.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    shift_by: Option<i64>,
    /// Commit the new offsets (without it, only print them).
    #[arg(long)]
    execute: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML); every key is optional.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Kafka listener, HOST:PORT (overrides `kafka.listen`; port 0 picks one).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Address given to clients, HOST:PORT (overrides `kafka.advertised`).
    #[arg(long, value_name = "HOST:PORT")]
    advertised: Option<String>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Metrics and health listener, HOST:PORT (overrides `metrics.listen`).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Number of shards (overrides `shards`; 0 = one per core).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// I/O backend (overrides `io_backend`).
    #[arg(long, value_enum, value_name = "BACKEND")]
    io_backend: Option<BackendArg>,
    /// This node's id in a cluster (overrides `cluster.node_id` and
    /// `kafka.node_id`). --node-id, --cluster-listen and --cluster-peers
    /// make this node part of a cluster; without a [cluster] section in the
    /// file, all three are needed.
    #[arg(long, value_name = "N", help_heading = "Cluster")]
    node_id: Option<i32>,
    /// Internal RPC listener the other nodes connect to, IP:PORT with a
    /// fixed port (overrides `cluster.listen`).
    #[arg(long, value_name = "HOST:PORT", help_heading = "Cluster")]
    cluster_listen: Option<String>,
    /// Every node of the cluster, this one included: id@host:port of each
    /// node's cluster listener, comma-separated (overrides `cluster.peers`).
    #[arg(
        long,
        value_name = "1@HOST:PORT,2@HOST:PORT,3@HOST:PORT",
        help_heading = "Cluster"
    )]
    cluster_peers: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    #[value(name = "io_uring")]
    IoUring,
    Epoll,
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Topics { .. }
            | Command::Groups { .. }
            | Command::Users { .. }
            | Command::Acls { .. }
            | Command::Quotas { .. }
            | Command::Transactions { .. }
            | Command::Delays { .. }
            | Command::Dlq { .. }
    ) {
        end_quietly_on_a_closed_pipe();
    }
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Topics { command, brokers } => admin_exit(topics(&brokers, command)),
        Command::Groups { command, brokers } => admin_exit(groups(&brokers, command)),
        Command::Users { command, brokers } => admin_exit(users(&brokers, command)),
        Command::Acls { command, brokers } => admin_exit(acls(&brokers, command)),
        Command::Quotas { command, brokers } => admin_exit(quotas(&brokers, command)),
        Command::Transactions { command, brokers } => admin_exit(transactions(&brokers, command)),
        Command::Delays { command, metrics } => admin_exit(match command {
            DelaysCommand::Count => sluice::admin::delays::count(&metrics),
            DelaysCommand::List => sluice::admin::delays::list(&metrics),
        }),
        Command::Dlq { command, brokers } => admin_exit(dlq(&brokers, command)),
        Command::Bench { command } => admin_exit(sluice::bench::run(command)),
    }
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Create USER, or change its password: read from the first line of
    /// standard input (echo "$PASSWORD" | sluice users create alice).
    Create {
        user: String,
        /// SCRAM-SHA-256 or SCRAM-SHA-512; default both (PLAIN clients
        /// are checked against either).
        #[arg(long)]
        mechanism: Option<String>,
        /// PBKDF2 iterations, 4096 to 16384 (default 8192).
        #[arg(long)]
        iterations: Option<u32>,
    },
    /// Delete USER's credentials (one mechanism's with --mechanism).
    Delete {
        user: String,
        #[arg(long)]
        mechanism: Option<String>,
    },
    /// Every user with credentials, by mechanism.
    List,
}

/// The resource an ACL names: one of these.
#[derive(clap::Args)]
struct AclResource {
    /// A topic (or, with a prefixed pattern, a topic name prefix; `*`:
    /// every topic).
    #[arg(long)]
    topic: Option<String>,
    /// A consumer group (or prefix; `*`: every group).
    #[arg(long)]
    group: Option<String>,
    /// A transactional id (or prefix; `*`: every one).
    #[arg(long)]
    transactional_id: Option<String>,
    /// The cluster (`kafka-cluster`).
    #[arg(long)]
    cluster: bool,
}

impl AclResource {
    fn args(self) -> sluice::admin::acls::ResourceArgs {
        sluice::admin::acls::ResourceArgs {
            topic: self.topic,
            group: self.group,
            transactional_id: self.transactional_id,
            cluster: self.cluster,
        }
    }
}

/// Which ACLs a command matches; a part not given matches any.
#[derive(clap::Args)]
struct AclFilterArgs {
    #[command(flatten)]
    resource: AclResource,
    /// any, match (every ACL that applies to the named resource), literal
    /// or prefixed. Default: literal for `remove` with a resource named,
    /// else any.
    #[arg(long)]
    pattern: Option<String>,
    /// The same as --pattern prefixed (as `add` spells it).
    #[arg(long, conflicts_with = "pattern")]
    prefixed: bool,
    /// User:<name> or User:*.
    #[arg(long)]
    principal: Option<String>,
    /// An IP address or *.
    #[arg(long)]
    host: Option<String>,
    /// READ, WRITE, DESCRIBE, ALL, …
    #[arg(long)]
    operation: Option<String>,
    /// allow or deny.
    #[arg(long)]
    permission: Option<String>,
}

impl AclFilterArgs {
    fn args(self) -> sluice::admin::acls::FilterArgs {
        sluice::admin::acls::FilterArgs {
            resource: self.resource.args(),
            pattern: if self.prefixed {
                Some("prefixed".to_owned())
            } else {
                self.pattern
            },
            principal: self.principal,
            host: self.host,
            operation: self.operation,
            permission: self.permission,
        }
    }
}

#[derive(Subcommand)]
enum AclsCommand {
    /// Allow (or with --deny, deny) PRINCIPAL each --operation on one
    /// resource: sluice acls add --principal User:alice --operation WRITE
    /// --topic orders- --prefixed.
    Add {
        #[command(flatten)]
        resource: AclResource,
        /// Match every resource whose name starts with the name given.
        #[arg(long)]
        prefixed: bool,
        /// literal (the default) or prefixed (the same as --prefixed, as
        /// `list` and `remove` spell it).
        #[arg(long, conflicts_with = "prefixed", value_parser = ["literal", "prefixed"])]
        pattern: Option<String>,
        /// User:<name>, or User:* for every user.
        #[arg(long)]
        principal: String,
        /// The client address the ACL applies to (default: any).
        #[arg(long, default_value = "*")]
        host: String,
        /// READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, CLUSTER_ACTION,
        /// DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE or ALL;
        /// repeat or separate with commas.
        #[arg(long, value_delimiter = ',', required = true)]
        operation: Vec<String>,
        /// A DENY ACL (it wins over any ALLOW).
        #[arg(long)]
        deny: bool,
    },
    /// Remove the ACLs that match, and show them.
    Remove {
        #[command(flatten)]
        filter: AclFilterArgs,
    },
    /// The ACLs that match (all, given nothing).
    List {
        #[command(flatten)]
        filter: AclFilterArgs,
    },
}

fn acls(brokers: &str, command: AclsCommand) -> anyhow::Result<()> {
    use sluice::admin::acls;
    match command {
        AclsCommand::Add {
            resource,
            prefixed,
            pattern,
            principal,
            host,
            operation,
            deny,
        } => acls::add(
            brokers,
            acls::AddArgs {
                resource: resource.args(),
                prefixed: prefixed || pattern.as_deref() == Some("prefixed"),
                principal,
                host,
                operations: operation,
                deny,
            },
        ),
        AclsCommand::Remove { filter } => acls::remove(brokers, filter.args()),
        AclsCommand::List { filter } => acls::list(brokers, filter.args()),
    }
}

/// The entity a quota command names.
#[derive(clap::Args)]
struct QuotaEntityArgs {
    /// A user (its principal's name).
    #[arg(long, conflicts_with = "user_default")]
    user: Option<String>,
    /// Every user without a quota of its own (Kafka's <default> user).
    #[arg(long)]
    user_default: bool,
    /// A client id.
    #[arg(long, conflicts_with = "client_id_default")]
    client_id: Option<String>,
    /// Every client id without a quota of its own.
    #[arg(long)]
    client_id_default: bool,
}

impl QuotaEntityArgs {
    fn args(self) -> sluice::admin::quotas::EntityArgs {
        let part = |name: Option<String>, default: bool| match (name, default) {
            (Some(name), _) => Some(Some(name)),
            (None, true) => Some(None),
            (None, false) => None,
        };
        sluice::admin::quotas::EntityArgs {
            user: part(self.user, self.user_default),
            client_id: part(self.client_id, self.client_id_default),
        }
    }
}

#[derive(Subcommand)]
enum QuotasCommand {
    /// Set an entity's quotas: sluice quotas set --user alice
    /// --producer-byte-rate 1048576 --request-percentage 50.
    Set {
        #[command(flatten)]
        entity: QuotaEntityArgs,
        /// Bytes per second the entity may produce.
        #[arg(long)]
        producer_byte_rate: Option<u64>,
        /// Bytes per second the entity may fetch.
        #[arg(long)]
        consumer_byte_rate: Option<u64>,
        /// Percent of one shard thread's time the entity's requests may
        /// take (100 = one whole thread; KIP-124).
        #[arg(long)]
        request_percentage: Option<u64>,
    },
    /// Remove an entity's quotas (--key producer_byte_rate,
    /// consumer_byte_rate or request_percentage; default all).
    Remove {
        #[command(flatten)]
        entity: QuotaEntityArgs,
        #[arg(long)]
        key: Vec<String>,
    },
    /// Every quota.
    List,
}

fn quotas(brokers: &str, command: QuotasCommand) -> anyhow::Result<()> {
    use sluice::admin::quotas;
    match command {
        QuotasCommand::Set {
            entity,
            producer_byte_rate,
            consumer_byte_rate,
            request_percentage,
        } => quotas::set(
            brokers,
            &entity.args(),
            quotas::QuotaValues {
                producer_byte_rate,
                consumer_byte_rate,
                request_percentage,
            },
        ),
        QuotasCommand::Remove { entity, key } => quotas::remove(brokers, &entity.args(), &key),
        QuotasCommand::List => quotas::list(brokers),
    }
}

fn users(brokers: &str, command: UsersCommand) -> anyhow::Result<()> {
    use sluice::admin::users;
    match command {
        UsersCommand::Create {
            user,
            mechanism,
            iterations,
        } => users::create(
            brokers,
            &user,
            &users::mechanisms(mechanism.as_deref())?,
            iterations,
        ),
        UsersCommand::Delete { user, mechanism } => {
            users::delete(brokers, &user, mechanism.as_deref())
        }
        UsersCommand::List => users::list(brokers),
    }
}

/// Let a command's output be piped into a reader that stops early (`sluice
/// topics describe t | head -3`): restore SIGPIPE's default, ending the
/// process as other command-line tools end, where Rust's runtime ignores it
/// and `println!` panics on the broken pipe. Only for the admin commands,
/// whose output is a table: `serve` and `bench` must see EPIPE on a socket
/// as an error.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: called at the start of main, before any thread is spawned;
    // SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Exit after an admin or bench command, printing the error with every
/// cause (`error_chain`: anyhow's `{:#}` would repeat the causes our errors
/// already quote).
fn admin_exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn topics(brokers: &str, command: TopicsCommand) -> anyhow::Result<()> {
    use sluice::admin::topics;
    match command {
        TopicsCommand::List => topics::list(brokers),
        TopicsCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => topics::create(
            brokers,
            &name,
            partitions,
            replication_factor,
            &key_values(&configs)?,
        ),
        TopicsCommand::Describe { name } => topics::describe(brokers, &name),
        TopicsCommand::Alter {
            name,
            configs,
            delete_configs,
        } => topics::alter(brokers, &name, &key_values(&configs)?, &delete_configs),
        TopicsCommand::Delete { name } => topics::delete(brokers, &name),
    }
}

/// `--config KEY=VALUE` arguments as pairs.
fn key_values(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .filter(|(key, _)| !key.is_empty())
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .with_context(|| format!("--config {pair:?}: expected KEY=VALUE"))
        })
        .collect()
}

fn transactions(brokers: &str, command: TransactionsCommand) -> anyhow::Result<()> {
    use sluice::admin::transactions;
    match command {
        TransactionsCommand::List { state, producer_id } => {
            transactions::list(brokers, state.as_deref(), producer_id)
        }
        TransactionsCommand::Describe { transactional_id } => {
            transactions::describe(brokers, &transactional_id)
        }
        TransactionsCommand::Abort { transactional_id } => {
            transactions::abort(brokers, &transactional_id)
        }
    }
}

fn dlq(brokers: &str, command: DlqCommand) -> anyhow::Result<()> {
    use sluice::admin::dlq::{self, ReplayRequest};
    match command {
        DlqCommand::List { group, limit } => dlq::list(brokers, &group, limit),
        DlqCommand::Replay { group, to, execute } => dlq::replay(
            brokers,
            &ReplayRequest {
                group: &group,
                to: to.as_deref(),
                execute,
            },
        ),
    }
}

fn groups(brokers: &str, command: GroupsCommand) -> anyhow::Result<()> {
    use sluice::admin::groups::{self, ResetRequest, ResetTo};
    match command {
        GroupsCommand::List => groups::list(brokers),
        GroupsCommand::Describe { group } => groups::describe(brokers, &group),
        GroupsCommand::Delete { group } => groups::delete(brokers, &group),
        GroupsCommand::ResetOffsets(args) => {
            let to = if args.to_earliest {
                ResetTo::Earliest
            } else if args.to_latest {
                ResetTo::Latest
            } else if let Some(offset) = args.to_offset {
                ResetTo::Offset(offset)
            } else if let Some(time) = &args.to_datetime {
                ResetTo::TimestampMs(sluice::admin::datetime::parse_ms(time)?)
            } else {
                ResetTo::ShiftBy(args.shift_by.unwrap_or(0))
            };
            groups::reset_offsets(
                brokers,
                &ResetRequest {
                    group: &args.group,
                    topics: &args.topic,
                    all_topics: args.all_topics,
                    to,
                    execute: args.execute,
                },
            )
        }
    }
}

/// A panic in the broker is a bug, and may have left a shard's state half
/// changed: log it, then abort rather than serve on with a dead or
/// inconsistent shard. The service manager restarts the process and
/// recovery rebuilds everything from the durable log.
fn abort_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            "{info}; aborting (a bug: please report it with this line)"
        );
        default_hook(info);
        std::process::abort();
    }));
}

fn init_logging() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // openraft logs its state at INFO and every failed RPC to a down peer
    // at WARN and ERROR, several lines a second; the cluster's own lines
    // say what an operator needs (leader changes, fencing, failed peer
    // calls, throttled). `RUST_LOG=openraft=...` brings them back.
    let asked_for_openraft =
        std::env::var("RUST_LOG").is_ok_and(|value| value.contains("openraft"));
    if !asked_for_openraft {
        // A vote request to a down peer is an ERROR line from raft_core
        // every election timeout (fresh-user trial); the core's own
        // failures stop it, which the cluster thread reports and exits on.
        for directive in [
            "openraft=error",
            "openraft::replication=off",
            "openraft::core::raft_core=off",
        ] {
            if let Ok(quiet) = directive.parse() {
                filter = filter.add_directive(quiet);
            }
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(args: &ServeArgs) -> Result<Config, config::ConfigError> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    if let Some(listen) = &args.listen {
        config.kafka.listen = listen.clone();
    }
    if let Some(advertised) = &args.advertised {
        config.kafka.advertised = advertised.clone();
    }
    if let Some(listen) = &args.metrics_listen {
        config.metrics.listen = listen.clone();
    }
    if let Some(backend) = args.io_backend {
        config.io_backend = match backend {
            BackendArg::Auto => IoBackendSetting::Auto,
            BackendArg::IoUring => IoBackendSetting::IoUring,
            BackendArg::Epoll => IoBackendSetting::Epoll,
        };
    }
    config.apply_cluster_flags(&ClusterFlags {
        node_id: args.node_id,
        listen: args.cluster_listen.clone(),
        peers: args.cluster_peers.clone(),
    })?;
    config.validate()?;
    Ok(config)
}

fn serve(args: ServeArgs) -> ExitCode {
    abort_on_panic();
    let signals = match TerminationSignals::block() {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!(%error, "cannot block SIGINT/SIGTERM for orderly shutdown");
            return ExitCode::FAILURE;
        }
    };
    let config = match load_config(&args) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!("{}", error_chain(&error));
            return ExitCode::from(2);
        }
    };
    match run(config, &signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(mut config: Config, signals: &TerminationSignals) -> anyhow::Result<()> {
    let backend = choose_backend(config.io_backend)?;
    if let Some(reason) = &backend.fallback_reason {
        tracing::warn!("{reason}; running on the epoll fallback");
    }
    let backend = backend.backend;
    let shard_count = config.shard_count();
    let data_dir = DataDir::open(&config.data_dir, shard_count, config.storage.write_mode)?;
    // The mode in effect (buffered where the file system has no O_DIRECT),
    // for everything built from the config: fetch's cold reads, DescribeConfigs.
    config.storage.write_mode = data_dir.write_mode();
    // Issue 15: a cluster node's data dir is checked before anything
    // else touches it; it joins once the broker exists, before the shards.
    let identity = match &config.cluster {
        Some(cluster) => Some(sluice::cluster::check_identity(cluster, data_dir.path())?),
        None => {
            sluice::cluster::check_single_node(data_dir.path())?;
            None
        }
    };
    check_open_files(&config, backend, shard_count, &data_dir);
    let metrics_address = config::parse_address("metrics.listen", &config.metrics.listen)?;
    exposure::warn_metrics(metrics_address);
    let refresh = Duration::from_millis(config.metrics.refresh_interval_ms);
    let recorder = telemetry::install(refresh * 3 + Duration::from_secs(5))?;
    let metrics = MetricsServer::start(metrics_address, Some(recorder))
        .with_context(|| format!("cannot listen on {metrics_address} for metrics"))?;
    let kafka_address = config::parse_address("kafka.listen", &config.kafka.listen)?;
    exposure::warn_kafka(
        "kafka.listen",
        kafka_address,
        config.security.security_protocol,
        &config.security,
    );
    let (main_sockets, kafka_address) = bind_shard_listeners(kafka_address, shard_count)?;
    let advertised = advertised(&config, kafka_address);
    let mut listeners = vec![main_sockets];
    let mut extra_listeners = Vec::new();
    for listener in &config.security.listeners {
        let address = config::parse_address("security.listeners.listen", &listener.listen)?;
        let key = format!("security.listeners {}", listener.name);
        exposure::warn_kafka(&key, address, listener.security_protocol, &config.security);
        let (sockets, bound) = bind_shard_listeners(address, shard_count)?;
        let advertised = config::advertised_or_listen(&listener.advertised, &bound.to_string());
        tracing::info!(
            listener = %listener.name,
            listen = %bound,
            advertised = %format!("{}:{}", advertised.0, advertised.1),
            security_protocol = listener.security_protocol.name(),
            "listening"
        );
        listeners.push(sockets);
        extra_listeners.push(sluice::broker::ListenerEndpoint {
            name: listener.name.clone(),
            protocol: listener.security_protocol,
            advertised,
        });
    }
    // DescribeConfigs shows the bound listener (`listeners`), not a `:0`.
    let mut broker_config = config.clone();
    broker_config.kafka.listen = kafka_address.to_string();
    broker_config.metrics.listen = metrics.address.to_string();
    let mut broker = Broker::new(broker_config, advertised.clone())?;
    broker.extra_listeners = extra_listeners;
    if config.security.protocols().any(SecurityProtocol::uses_tls) {
        let mut tls_hosts: Vec<String> = broker
            .extra_listeners
            .iter()
            .filter(|listener| listener.protocol.uses_tls())
            .map(|listener| listener.advertised.0.clone())
            .collect();
        if config.security.security_protocol.uses_tls() {
            tls_hosts.insert(0, advertised.0.clone());
        }
        tls_hosts.dedup();
        let tls = sluice::security::tls::TlsServer::load(&config.security.tls, tls_hosts)
            .context("cannot set up the TLS listeners ([security.tls])")?;
        broker.tls = Some(Arc::new(tls));
    }
    let broker = Arc::new(broker);
    if config.cluster.is_none() {
        sluice::broker::bootstrap_user::ensure(&broker.metadata, &config.security)?;
        sluice::security::posture::log(&broker);
    }
    let service = Arc::new(KafkaService::new(Arc::clone(&broker), backend, listeners));
    let cancelled = || match signals.pending() {
        Ok(Some(signal)) => {
            tracing::warn!(?signal, "stopping during startup");
            true
        }
        Ok(None) => false,
        Err(error) => {
            tracing::error!(%error, "cannot check for termination signals; stopping");
            true
        }
    };
    let controller = match (&config.cluster, identity) {
        (Some(cluster), Some(identity)) => Some(sluice::cluster::join(
            cluster,
            data_dir.path(),
            &broker,
            identity,
            shard_count as u32,
            &cancelled,
        )?),
        _ => None,
    };
    if controller.is_some() {
        // A cluster's credentials live in its controller: known, and
        // made, once this node has joined.
        sluice::broker::bootstrap_user::ensure(&broker.metadata, &config.security)?;
        sluice::security::posture::log(&broker);
    }
    let runtime =
        ShardRuntime::start_cancellable(&config, &data_dir, backend, service, &cancelled)?;
    if let Some(controller) = &controller {
        let peers = BrokerPeers::new(runtime.shards().clone(), Arc::clone(&broker));
        controller.serve_broker(Arc::new(peers));
    }
    for ready in runtime.ready() {
        log_recovery(ready.shard.to_string(), &ready.recovery);
    }
    metrics.set_ready(true);
    log_ready(
        &runtime,
        &config,
        &data_dir,
        backend,
        kafka_address,
        &advertised,
        metrics.address,
    );
    wait_for_termination(signals, &broker);
    metrics.set_ready(false);
    if let (Some(controller), Some(cluster)) = (&controller, &config.cluster) {
        sluice::cluster::leave(controller, &broker, cluster);
    }
    let failures = runtime.shutdown();
    for (shard, error) in &failures {
        let reason = error_chain(error);
        tracing::error!(%shard, %reason, "shard did not shut down cleanly");
    }
    if !failures.is_empty() {
        anyhow::bail!("some shards did not shut down cleanly");
    }
    tracing::info!("sluice stopped: all data flushed and fsynced");
    Ok(())
}

/// Raise the open-files soft limit and warn if it, or `vm.max_map_count`,
/// is below what `config` and the data directory's files may need
/// (`open_files`).
fn check_open_files(config: &Config, backend: IoBackend, shards: usize, data_dir: &DataDir) {
    let files = match open_files::count_storage_files(data_dir.path(), shards) {
        Ok(files) => files,
        Err(error) => {
            tracing::warn!(%error, "cannot count the storage files; estimating the open-files need without them");
            open_files::StorageFiles::default()
        }
    };
    open_files::check_and_log(open_files::OpenFilesNeed::estimate(
        config, backend, shards, files,
    ));
    open_files::check_map_count(files);
}

/// What clients are told: `kafka.advertised`, or the bound listener with the
/// host name in place of an unspecified address.
fn advertised(config: &Config, bound: SocketAddr) -> (String, u16) {
    let (host, port) = config.kafka.advertised_address();
    if config.kafka.advertised.is_empty() {
        return (host, bound.port());
    }
    (host, port)
}

fn log_ready(
    runtime: &ShardRuntime,
    config: &Config,
    data_dir: &DataDir,
    backend: IoBackend,
    kafka: SocketAddr,
    advertised: &(String, u16),
    metrics: SocketAddr,
) {
    let cores: Vec<String> = runtime
        .ready()
        .iter()
        .map(|ready| {
            ready
                .core
                .map_or("unpinned".to_owned(), |core| core.to_string())
        })
        .collect();
    // The cold-read path in effect (`direct` only with direct writes) and
    // the tail cache, so that an operator can confirm them from the log.
    let storage = &config.storage;
    tracing::info!(
        kafka = %kafka,
        advertised = %format!("{}:{}", advertised.0, advertised.1),
        metrics = %metrics,
        shards = runtime.ready().len(),
        cores = %cores.join(","),
        io_backend = %backend,
        write_mode = ?data_dir.write_mode(),
        cold_reads = if storage.direct_cold_reads() { "direct" } else { "page_cache" },
        tail_cache_bytes = storage.tail_cache_bytes,
        data_dir = %data_dir.path().display(),
        "sluice ready"
    );
}

/// Wait for SIGINT/SIGTERM; a second one during shutdown exits at once.
/// SIGHUP meanwhile reloads the TLS files.
fn wait_for_termination(signals: &TerminationSignals, broker: &Broker) {
    let reload = || match &broker.tls {
        None => tracing::info!("SIGHUP: no TLS listener, nothing to reload"),
        Some(tls) => match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: reloaded {}; new connections use them", tls.files()),
            Err(error) => tracing::error!(
                %error,
                "SIGHUP: cannot reload the TLS files; new connections keep getting the previous ones"
            ),
        },
    };
    match signals.wait(&reload) {
        Ok(signal) => tracing::info!(?signal, "shutting down: flushing and fsyncing every shard"),
        Err(error) => tracing::error!(%error, "sigwait failed; shutting down"),
    }
    let second = TerminationSignals::block();
    let watcher = std::thread::Builder::new()
        .name("sluice-second-signal".to_owned())
        .spawn(move || {
            if let Ok(signals) = second
                && let Ok(signal) = signals.wait(&|| {})
            {
                tracing::warn!(?signal, "second signal: exiting without finishing shutdown");
                let code = if signal == Termination::Interrupt {
                    130
                } else {
                    143
                };
                std::process::exit(code);
            }
        });
    // The shutdown goes on without the watcher (a host out of threads or
    // memory maps refuses it): only a second signal's early exit is lost.
    if let Err(error) = watcher {
        tracing::warn!(%error, "cannot start the thread that watches for a second signal; shutting down without it (SIGKILL still stops the process)");
    }
}

fn log_recovery(shard: String, report: &RecoveryReport) {
    let status = |status: &CheckpointStatus| match status {
        CheckpointStatus::Found(position) => format!("at {position}"),
        CheckpointStatus::Missing => "none".to_owned(),
        CheckpointStatus::Damaged(reason) => format!("damaged ({reason})"),
    };
    let checkpoint = status(&report.checkpoint);
    let producer_snapshot = status(&report.producer_snapshot);
    tracing::info!(
        %shard,
        checkpoint,
        producer_snapshot,
        segments = report.segments,
        partitions = report.partitions,
        scanned_from = report.scan_start.0,
        producers_rebuilt_from = report.producer_scan_start.0,
        frames_scanned = report.frames_scanned,
        bytes_scanned = report.bytes_scanned,
        frames_reindexed = report.frames_reindexed,
        truncated_bytes = report.truncated_bytes,
        damaged_ranges_skipped = report.skipped.len(),
        queues_rebuilt = report.queues_rebuilt.len(),
        damaged_queue_entries = report.damaged_queue_entries.len(),
        elapsed_ms = report.elapsed.as_secs_f64() * 1000.0,
        "recovered"
    );
}
