//! The node identity file, `<data_dir>/node.toml`: which node of which
//! cluster a data directory belongs to.
//!
//! A cluster node claims its data dir on its first start by writing its
//! node id there, and records the cluster id once it has joined (the id is
//! generated once for the cluster and committed by its controller). From
//! then on the node refuses to start on the dir as another node, or to
//! join another cluster with it: either would serve one node's data as
//! another's. A dir that holds a single node's topics (in `metadata.toml`)
//! and has not joined a cluster is refused too, since the cluster's
//! metadata does not know those topics. Each refusal says what the dir
//! holds and the fix.
//!
//! The file is small TOML (`version`, `node_id`, `cluster_id` once known),
//! replaced atomically and durably (`storage::durable_file::write_atomic`):
//! a crash leaves the old or the new identity. Invariant for callers: the
//! cluster id is recorded ([`NodeIdentity::record_cluster_id`]) before any
//! cluster metadata is written to the data dir, so a dir without a cluster
//! id holds no cluster topics.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::broker::group::OFFSETS_TOPIC;
use crate::broker::metadata::METADATA_FILE;
use crate::broker::producer_ids::PRODUCER_IDS_TOPIC;
use crate::broker::txn::TXN_TOPIC;
use crate::storage::durable_file::write_atomic;

/// The identity file, in the data directory.
pub const NODE_FILE: &str = "node.toml";
/// Version of `node.toml` this build reads and writes.
pub const NODE_FILE_VERSION: u32 = 1;
/// Topics every node creates for itself: a data dir holding only these has
/// no single-node data worth refusing.
const INTERNAL_TOPICS: [&str; 3] = [OFFSETS_TOPIC, PRODUCER_IDS_TOPIC, TXN_TOPIC];
/// Single-node topics named in a refusal; the rest are counted.
const TOPICS_NAMED_MAX: usize = 5;

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid node identity file: {source}; it holds `version = 1`, \
         `node_id = N` and, once the node joined its cluster, `cluster_id = \"...\"` (restore it, \
         or empty the data dir to start this node afresh)"
    )]
    Unparsable {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error(
        "{path} is not a valid node identity file: {reason} (restore it, or empty the data dir to \
         start this node afresh)"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error("{path} has version {found}; this build reads version {NODE_FILE_VERSION}")]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("cannot encode {path} (a bug): {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: toml::ser::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "data dir {data_dir} belongs to node {found}, this node is configured as node \
         {configured}; start node {found} on it (--node-id {found}), or give node {configured} \
         its own data dir (--data-dir)"
    )]
    OtherNode {
        data_dir: PathBuf,
        found: i32,
        configured: i32,
    },
    #[error(
        "data dir {data_dir} holds node {node_id}'s data of cluster {found}, but this node is \
         joining cluster {joining}; point --data-dir at this node's data dir of cluster \
         {joining}, or empty the data dir (its data is lost) to join as a new node"
    )]
    OtherCluster {
        data_dir: PathBuf,
        node_id: i32,
        found: String,
        joining: String,
    },
    #[error(
        "data dir {data_dir} holds the topics of a single node ({topics}, in {METADATA_FILE}) and \
         has not joined a cluster; a cluster node cannot take them over, as the cluster's \
         metadata does not know them: start without the [cluster] section and the \
         --node-id/--cluster-* flags to keep serving them, or point --data-dir at an empty \
         directory for this cluster node"
    )]
    SingleNodeData { data_dir: PathBuf, topics: String },
    #[error(
        "data dir {data_dir} belongs to node {node_id} of cluster {cluster} ({NODE_FILE}); a \
         single node cannot serve it, as its topics live in the cluster's metadata: start it with \
         its cluster settings (--node-id {node_id} --cluster-listen ... --cluster-peers ..., or \
         the [cluster] section), or point --data-dir elsewhere"
    )]
    ClusterData {
        data_dir: PathBuf,
        node_id: i32,
        cluster: String,
    },
    #[error(
        "cannot tell whether the data dir holds a single node's topics: {path} is not valid TOML \
         ({source}); restore it, or point --data-dir at an empty directory for this cluster node"
    )]
    MetadataUnparsable {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
}

/// `node.toml` as stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    version: u32,
    node_id: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
}

/// A data dir's identity as loaded: none (a fresh dir, or one a single node
/// used) or the node and cluster it belongs to.
#[derive(Debug)]
pub struct IdentityFile {
    data_dir: PathBuf,
    stored: Option<Stored>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    node_id: i32,
    cluster_id: Option<String>,
}

/// A data dir claimed by this node: it may learn and record its cluster id.
#[derive(Debug)]
pub struct NodeIdentity {
    data_dir: PathBuf,
    node_id: i32,
    cluster_id: Option<String>,
}

impl IdentityFile {
    /// Read `<data_dir>/node.toml`; a missing file is a dir no cluster node
    /// has claimed.
    pub fn load(data_dir: &Path) -> Result<IdentityFile, IdentityError> {
        let path = data_dir.join(NODE_FILE);
        let stored = match std::fs::read_to_string(&path) {
            Ok(text) => Some(decode(&path, &text)?),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(IdentityError::Read { path, source }),
        };
        Ok(IdentityFile {
            data_dir: data_dir.to_owned(),
            stored,
        })
    }

    /// The node the dir belongs to, if a node claimed it.
    pub fn node_id(&self) -> Option<i32> {
        self.stored.as_ref().map(|stored| stored.node_id)
    }

    /// Refuse to serve a cluster node's data dir as a single node (its
    /// topics are in the cluster's metadata, not in `metadata.toml`).
    pub fn refuse_as_single_node(&self) -> Result<(), IdentityError> {
        match &self.stored {
            Some(stored) => Err(IdentityError::ClusterData {
                data_dir: self.data_dir.clone(),
                node_id: stored.node_id,
                cluster: stored
                    .cluster_id
                    .clone()
                    .unwrap_or_else(|| "(not joined yet)".to_owned()),
            }),
            None => Ok(()),
        }
    }

    /// The cluster the dir's node joined, if it did.
    pub fn cluster_id(&self) -> Option<&str> {
        self.stored.as_ref()?.cluster_id.as_deref()
    }

    /// Refuse a dir that belongs to another node, or that holds a single
    /// node's topics and has not joined a cluster; claim a fresh one for
    /// `configured` (`node.toml` is written and fsynced).
    pub fn check_node(self, configured: i32) -> Result<NodeIdentity, IdentityError> {
        assert!(configured >= 0, "node ids are validated as >= 0");
        if let Some(stored) = &self.stored
            && stored.node_id != configured
        {
            return Err(IdentityError::OtherNode {
                data_dir: self.data_dir,
                found: stored.node_id,
                configured,
            });
        }
        if self.cluster_id().is_none() {
            refuse_single_node_data(&self.data_dir)?;
        }
        let fresh = self.stored.is_none();
        let node = NodeIdentity {
            data_dir: self.data_dir,
            node_id: configured,
            cluster_id: self.stored.and_then(|stored| stored.cluster_id),
        };
        if fresh {
            node.persist()?;
        }
        Ok(node)
    }
}

impl NodeIdentity {
    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// The cluster this node joined, once recorded.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// Refuse to join cluster `id` with data of another cluster. A node
    /// that has not recorded a cluster id yet may join any.
    pub fn check_cluster(&self, id: &str) -> Result<(), IdentityError> {
        match &self.cluster_id {
            Some(recorded) if recorded != id => Err(IdentityError::OtherCluster {
                data_dir: self.data_dir.clone(),
                node_id: self.node_id,
                found: recorded.clone(),
                joining: id.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Record the cluster this node joined; done once (written and fsynced
    /// before this returns). Recording the same id again changes nothing;
    /// another id is refused as [`NodeIdentity::check_cluster`] refuses it.
    pub fn record_cluster_id(&mut self, id: &str) -> Result<(), IdentityError> {
        assert!(
            !id.is_empty() && !id.contains(char::is_whitespace),
            "cluster ids are generated, never empty or spaced: {id:?}"
        );
        self.check_cluster(id)?;
        if self.cluster_id.is_some() {
            return Ok(());
        }
        self.cluster_id = Some(id.to_owned());
        self.persist()
    }

    fn persist(&self) -> Result<(), IdentityError> {
        let path = self.data_dir.join(NODE_FILE);
        let persisted = Persisted {
            version: NODE_FILE_VERSION,
            node_id: self.node_id,
            cluster_id: self.cluster_id.clone(),
        };
        let body = toml::to_string(&persisted).map_err(|source| IdentityError::Encode {
            path: path.clone(),
            source,
        })?;
        let text = format!(
            "# Which Sluice cluster node this data directory belongs to. Written by sluice;\n\
             # do not edit (see ARCHITECTURE.md, Cluster).\n{body}"
        );
        write_atomic(&path, text.as_bytes()).map_err(|source| IdentityError::Write { path, source })
    }
}

fn decode(path: &Path, text: &str) -> Result<Stored, IdentityError> {
    let persisted: Persisted =
        toml::from_str(text).map_err(|source| IdentityError::Unparsable {
            path: path.to_owned(),
            source,
        })?;
    let damaged = |reason: String| IdentityError::Damaged {
        path: path.to_owned(),
        reason,
    };
    if persisted.version != NODE_FILE_VERSION {
        return Err(IdentityError::UnsupportedVersion {
            path: path.to_owned(),
            found: persisted.version,
        });
    }
    if persisted.node_id < 0 {
        return Err(damaged(format!(
            "node_id = {} is negative",
            persisted.node_id
        )));
    }
    if let Some(cluster_id) = &persisted.cluster_id
        && (cluster_id.is_empty() || cluster_id.contains(char::is_whitespace))
    {
        return Err(damaged(format!("cluster_id = {cluster_id:?} is not an id")));
    }
    Ok(Stored {
        node_id: persisted.node_id,
        cluster_id: persisted.cluster_id,
    })
}

/// The part of a single node's `metadata.toml` this check reads (other keys
/// are ignored: the file belongs to `broker::metadata`).
#[derive(Deserialize)]
struct SingleNodeMetadata {
    #[serde(default)]
    topics: Vec<SingleNodeTopic>,
}

#[derive(Deserialize)]
struct SingleNodeTopic {
    name: String,
}

/// Refuse `data_dir` when its `metadata.toml` lists topics other than the
/// internal ones: a single node's data, which a cluster node cannot serve.
pub fn refuse_single_node_data(data_dir: &Path) -> Result<(), IdentityError> {
    let path = data_dir.join(METADATA_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(IdentityError::Read { path, source }),
    };
    let metadata: SingleNodeMetadata =
        toml::from_str(&text).map_err(|source| IdentityError::MetadataUnparsable {
            path: path.clone(),
            source,
        })?;
    let topics: Vec<String> = metadata
        .topics
        .into_iter()
        .map(|topic| topic.name)
        .filter(|name| !INTERNAL_TOPICS.contains(&name.as_str()))
        .collect();
    if topics.is_empty() {
        return Ok(());
    }
    let mut named = topics
        .iter()
        .take(TOPICS_NAMED_MAX)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if topics.len() > TOPICS_NAMED_MAX {
        named.push_str(&format!(" and {} more", topics.len() - TOPICS_NAMED_MAX));
    }
    Err(IdentityError::SingleNodeData {
        data_dir: data_dir.to_owned(),
        topics: named,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single_node_metadata(dir: &Path, topics: &[&str]) {
        let mut text = "version = 1\ncluster_id = \"single\"\n".to_owned();
        for (index, topic) in topics.iter().enumerate() {
            text.push_str(&format!(
                "\n[[topics]]\nname = \"{topic}\"\nid = \"{index:032x}\"\npartitions = 1\n"
            ));
        }
        std::fs::write(dir.join(METADATA_FILE), text).unwrap();
    }

    fn claimed(dir: &Path, node_id: i32) -> NodeIdentity {
        IdentityFile::load(dir)
            .unwrap()
            .check_node(node_id)
            .unwrap()
    }

    #[test]
    fn a_fresh_data_dir_is_claimed_for_the_configured_node() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = IdentityFile::load(dir.path()).unwrap();
        assert_eq!((fresh.node_id(), fresh.cluster_id()), (None, None));
        let node = fresh.check_node(3).unwrap();
        assert_eq!((node.node_id(), node.cluster_id()), (3, None));
        let reloaded = IdentityFile::load(dir.path()).unwrap();
        assert_eq!((reloaded.node_id(), reloaded.cluster_id()), (Some(3), None));
        assert!(!dir.path().join("node.toml.tmp").exists());
    }

    #[test]
    fn the_same_node_restarts_on_its_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        claimed(dir.path(), 2).record_cluster_id("c1").unwrap();
        let node = claimed(dir.path(), 2);
        assert_eq!((node.node_id(), node.cluster_id()), (2, Some("c1")));
    }

    #[test]
    fn a_data_dir_of_another_node_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        claimed(dir.path(), 2);
        let error = IdentityFile::load(dir.path())
            .unwrap()
            .check_node(3)
            .unwrap_err();
        assert!(
            matches!(error, IdentityError::OtherNode { .. }),
            "{error:?}"
        );
        let text = error.to_string();
        let expected = format!(
            "data dir {} belongs to node 2, this node is configured as node 3;",
            dir.path().display()
        );
        assert!(text.starts_with(&expected), "{text}");
        assert!(text.contains("--node-id 2"), "{text}");
        assert!(text.contains("--data-dir"), "{text}");
        let kept = IdentityFile::load(dir.path()).unwrap();
        assert_eq!(kept.node_id(), Some(2), "a refusal leaves the file alone");
    }

    #[test]
    fn the_cluster_id_is_recorded_once_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = claimed(dir.path(), 1);
        node.check_cluster("first").unwrap();
        node.record_cluster_id("first").unwrap();
        node.record_cluster_id("first").unwrap();
        assert_eq!(node.cluster_id(), Some("first"));
        let reloaded = IdentityFile::load(dir.path()).unwrap();
        assert_eq!(reloaded.cluster_id(), Some("first"));
        assert_eq!(reloaded.node_id(), Some(1));
    }

    #[test]
    fn another_clusters_data_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        claimed(dir.path(), 1).record_cluster_id("old").unwrap();
        let mut node = claimed(dir.path(), 1);
        for error in [
            node.check_cluster("new").unwrap_err(),
            node.record_cluster_id("new").unwrap_err(),
        ] {
            assert!(
                matches!(error, IdentityError::OtherCluster { .. }),
                "{error:?}"
            );
            let text = error.to_string();
            assert!(text.contains("of cluster old"), "{text}");
            assert!(text.contains("joining cluster new"), "{text}");
            assert!(text.contains("empty the data dir"), "{text}");
        }
        let kept = IdentityFile::load(dir.path()).unwrap();
        assert_eq!(kept.cluster_id(), Some("old"));
    }

    #[test]
    fn single_node_topics_refuse_a_cluster_node_and_name_the_topics() {
        let dir = tempfile::tempdir().unwrap();
        single_node_metadata(dir.path(), &["__consumer_offsets", "orders", "payments"]);
        let error = IdentityFile::load(dir.path())
            .unwrap()
            .check_node(1)
            .unwrap_err();
        assert!(
            matches!(error, IdentityError::SingleNodeData { .. }),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains("(orders, payments, in metadata.toml)"),
            "{text}"
        );
        assert!(text.contains("without the [cluster] section"), "{text}");
        assert!(
            !dir.path().join(NODE_FILE).exists(),
            "a refused dir is not claimed"
        );
    }

    #[test]
    fn many_single_node_topics_are_counted_after_the_first_few() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..8).map(|index| format!("t{index}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        single_node_metadata(dir.path(), &names);
        let text = refuse_single_node_data(dir.path()).unwrap_err().to_string();
        assert!(text.contains("(t0, t1, t2, t3, t4 and 3 more,"), "{text}");
    }

    #[test]
    fn a_claimed_dir_that_never_joined_still_refuses_single_node_topics() {
        let dir = tempfile::tempdir().unwrap();
        claimed(dir.path(), 1);
        single_node_metadata(dir.path(), &["orders"]);
        let error = IdentityFile::load(dir.path())
            .unwrap()
            .check_node(1)
            .unwrap_err();
        assert!(
            matches!(error, IdentityError::SingleNodeData { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn internal_topics_alone_or_a_joined_nodes_topics_are_not_single_node_data() {
        let dir = tempfile::tempdir().unwrap();
        single_node_metadata(dir.path(), &INTERNAL_TOPICS);
        claimed(dir.path(), 1).record_cluster_id("c").unwrap();
        single_node_metadata(dir.path(), &["orders"]);
        assert_eq!(claimed(dir.path(), 1).cluster_id(), Some("c"));
    }

    #[test]
    fn unreadable_metadata_refuses_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(METADATA_FILE), "[[topics]\n").unwrap();
        let error = refuse_single_node_data(dir.path()).unwrap_err();
        assert!(
            matches!(error, IdentityError::MetadataUnparsable { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("metadata.toml"), "{error}");
    }

    #[test]
    fn a_damaged_identity_file_is_refused_with_the_path_and_the_fix() {
        for (text, expected) in [
            ("node_id = ", "not a valid node identity file"),
            ("version = 1\nnode_id = 1\nextra = 2\n", "unknown field"),
            ("version = 1\nnode_id = -4\n", "node_id = -4 is negative"),
            (
                "version = 1\nnode_id = 1\ncluster_id = \"\"\n",
                "cluster_id = \"\" is not an id",
            ),
            ("version = 9\nnode_id = 1\n", "has version 9"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(NODE_FILE), text).unwrap();
            let error = IdentityFile::load(dir.path()).unwrap_err();
            let chain = crate::error_chain::error_chain(&error);
            assert!(chain.contains(expected), "{text:?}: {chain}");
            assert!(chain.contains("node.toml"), "{text:?}: {chain}");
        }
    }
}
