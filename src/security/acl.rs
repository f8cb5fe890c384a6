//! Kafka's ACL model (KIP-140 for the admin APIs, KIP-290 for prefixed
//! patterns) and the decision an authorizer makes from it.
//!
//! An [`AclBinding`] says that a principal (`User:alice`, or `User:*` for
//! every user) connecting from a host (an IP address as the broker sees it,
//! or `*`) is allowed or denied an operation on the resources a pattern
//! names: one resource (`Literal`, where the name `*` names every resource
//! of the type) or every resource whose name starts with a prefix
//! (`Prefixed`). The resource types are Kafka's `TOPIC`, `GROUP`, `CLUSTER`
//! (named `kafka-cluster`) and `TRANSACTIONAL_ID`; the numeric codes of
//! every enum are Kafka's (`org.apache.kafka.common.acl`,
//! `org.apache.kafka.common.resource`), as CreateAcls, DescribeAcls and
//! DeleteAcls carry them.
//!
//! [`AclSet::authorizes`] decides as Kafka's `StandardAuthorizer` does:
//! - a DENY binding for the operation (or `ALL`) that matches the
//!   principal, host and resource wins over everything;
//! - else an ALLOW binding for the operation, for `ALL`, or for an
//!   operation that implies it allows it: `READ`, `WRITE`, `DELETE` and
//!   `ALTER` imply `DESCRIBE`, `ALTER_CONFIGS` implies `DESCRIBE_CONFIGS`;
//! - else, if no binding at all matches the resource, the configured
//!   default (`security.allow_everyone_if_no_acl_found`, Kafka's
//!   `allow.everyone.if.no.acl.found`, default false) decides;
//! - else the operation is denied.
//!
//! Super users are allowed everything before any of this is consulted
//! (`kafka/authorize.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The one name a `CLUSTER` resource has (Kafka's `kafka-cluster`).
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// The name or host that matches every resource or host.
pub const WILDCARD: &str = "*";
/// The most ACL bindings a cluster keeps (every snapshot of the metadata
/// holds them all).
pub const ACLS_MAX: usize = 10_000;
/// The longest resource name, principal or host kept, in bytes.
pub const ACL_FIELD_BYTES_MAX: usize = 1024;

/// Kafka's `ResourceType` codes, less UNKNOWN (0), ANY (1), and the
/// delegation-token types Sluice has no resources of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Topic,
    Group,
    Cluster,
    TransactionalId,
}

impl ResourceType {
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Topic,
        ResourceType::Group,
        ResourceType::Cluster,
        ResourceType::TransactionalId,
    ];

    pub fn code(self) -> i8 {
        match self {
            ResourceType::Topic => 2,
            ResourceType::Group => 3,
            ResourceType::Cluster => 4,
            ResourceType::TransactionalId => 5,
        }
    }

    pub fn from_code(code: i8) -> Option<ResourceType> {
        ResourceType::ALL
            .into_iter()
            .find(|resource| resource.code() == code)
    }

    /// Kafka's name for the type (`TOPIC`, `TRANSACTIONAL_ID`).
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Topic => "TOPIC",
            ResourceType::Group => "GROUP",
            ResourceType::Cluster => "CLUSTER",
            ResourceType::TransactionalId => "TRANSACTIONAL_ID",
        }
    }

    pub fn from_name(name: &str) -> Option<ResourceType> {
        let name = name.to_ascii_uppercase().replace('-', "_");
        ResourceType::ALL
            .into_iter()
            .find(|resource| resource.name() == name)
    }

    /// The operations ACLs on this type can grant (Kafka's
    /// `AclEntry.supportedOperations`), `ALL` aside.
    pub fn operations(self) -> &'static [Operation] {
        use Operation::*;
        match self {
            ResourceType::Topic => &[
                Read,
                Write,
                Create,
                Delete,
                Alter,
                Describe,
                DescribeConfigs,
                AlterConfigs,
            ],
            ResourceType::Group => &[Read, Describe, Delete],
            ResourceType::Cluster => &[
                Create,
                Alter,
                Describe,
                ClusterAction,
                DescribeConfigs,
                AlterConfigs,
                IdempotentWrite,
            ],
            ResourceType::TransactionalId => &[Describe, Write],
        }
    }
}

/// Kafka's `PatternType` codes for stored bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternType {
    /// The resource named (or every resource, for the name `*`).
    Literal,
    /// Every resource whose name starts with the binding's name.
    Prefixed,
}

impl PatternType {
    pub fn code(self) -> i8 {
        match self {
            PatternType::Literal => 3,
            PatternType::Prefixed => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PatternType::Literal => "LITERAL",
            PatternType::Prefixed => "PREFIXED",
        }
    }
}

/// Kafka's `AclOperation` codes, less UNKNOWN (0) and ANY (1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
    CreateTokens,
    DescribeTokens,
}

impl Operation {
    const EVERY: [Operation; 13] = [
        Operation::All,
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Describe,
        Operation::ClusterAction,
        Operation::DescribeConfigs,
        Operation::AlterConfigs,
        Operation::IdempotentWrite,
        Operation::CreateTokens,
        Operation::DescribeTokens,
    ];

    pub fn code(self) -> i8 {
        match self {
            Operation::All => 2,
            Operation::Read => 3,
            Operation::Write => 4,
            Operation::Create => 5,
            Operation::Delete => 6,
            Operation::Alter => 7,
            Operation::Describe => 8,
            Operation::ClusterAction => 9,
            Operation::DescribeConfigs => 10,
            Operation::AlterConfigs => 11,
            Operation::IdempotentWrite => 12,
            Operation::CreateTokens => 13,
            Operation::DescribeTokens => 14,
        }
    }

    pub fn from_code(code: i8) -> Option<Operation> {
        Operation::EVERY
            .into_iter()
            .find(|operation| operation.code() == code)
    }

    /// Kafka's name (`READ`, `DESCRIBE_CONFIGS`).
    pub fn name(self) -> &'static str {
        match self {
            Operation::All => "ALL",
            Operation::Read => "READ",
            Operation::Write => "WRITE",
            Operation::Create => "CREATE",
            Operation::Delete => "DELETE",
            Operation::Alter => "ALTER",
            Operation::Describe => "DESCRIBE",
            Operation::ClusterAction => "CLUSTER_ACTION",
            Operation::DescribeConfigs => "DESCRIBE_CONFIGS",
            Operation::AlterConfigs => "ALTER_CONFIGS",
            Operation::IdempotentWrite => "IDEMPOTENT_WRITE",
            Operation::CreateTokens => "CREATE_TOKENS",
            Operation::DescribeTokens => "DESCRIBE_TOKENS",
        }
    }

    pub fn from_name(name: &str) -> Option<Operation> {
        let name = name.to_ascii_uppercase().replace('-', "_");
        Operation::EVERY
            .into_iter()
            .find(|operation| operation.name() == name)
    }

    /// Whether an ALLOW binding for `self` allows `wanted`.
    fn allows(self, wanted: Operation) -> bool {
        self == wanted
            || self == Operation::All
            || (wanted == Operation::Describe
                && matches!(
                    self,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ))
            || (wanted == Operation::DescribeConfigs && self == Operation::AlterConfigs)
    }

    /// Whether a DENY binding for `self` denies `wanted`.
    fn denies(self, wanted: Operation) -> bool {
        self == wanted || self == Operation::All
    }
}

/// Kafka's `AclPermissionType` codes, less UNKNOWN (0) and ANY (1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    Deny,
    Allow,
}

impl Permission {
    pub fn code(self) -> i8 {
        match self {
            Permission::Deny => 2,
            Permission::Allow => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Permission::Deny => "DENY",
            Permission::Allow => "ALLOW",
        }
    }
}

/// One ACL: who may or may not do what to which resources.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub resource_name: String,
    pub pattern_type: PatternType,
    /// `User:<name>` or `User:*`.
    pub principal: String,
    /// An IP address or `*`.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// Why an ACL cannot be created (INVALID_REQUEST, with this message).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidAcl(pub String);

impl AclBinding {
    /// A binding from CreateAcls' codes, or why it is not one Kafka would
    /// store: an UNKNOWN or ANY element, a pattern other than LITERAL or
    /// PREFIXED, an empty name, a CLUSTER named other than `kafka-cluster`,
    /// a principal not of the form `User:<name>`, or a host that is neither
    /// `*` nor an IP address.
    #[allow(clippy::too_many_arguments)]
    pub fn from_wire(
        resource_type: i8,
        resource_name: &str,
        pattern_type: i8,
        principal: &str,
        host: &str,
        operation: i8,
        permission: i8,
    ) -> Result<AclBinding, InvalidAcl> {
        let invalid = |message: String| Err(InvalidAcl(message));
        let Some(resource_type) = ResourceType::from_code(resource_type) else {
            return invalid(format!(
                "resource type {resource_type} is not one of TOPIC (2), GROUP (3), CLUSTER (4) \
                 or TRANSACTIONAL_ID (5)"
            ));
        };
        let pattern_type = match pattern_type {
            3 => PatternType::Literal,
            4 => PatternType::Prefixed,
            other => {
                return invalid(format!(
                    "pattern type {other} is not LITERAL (3) or PREFIXED (4)"
                ));
            }
        };
        let Some(operation) = Operation::from_code(operation) else {
            return invalid(format!("operation {operation} is not an ACL operation"));
        };
        let permission = match permission {
            2 => Permission::Deny,
            3 => Permission::Allow,
            other => return invalid(format!("permission {other} is not DENY (2) or ALLOW (3)")),
        };
        if resource_name.is_empty() {
            return invalid("the resource name is empty".to_owned());
        }
        for (what, value) in [
            ("resource name", resource_name),
            ("principal", principal),
            ("host", host),
        ] {
            if value.len() > ACL_FIELD_BYTES_MAX {
                return invalid(format!(
                    "a {what} of {} bytes is longer than {ACL_FIELD_BYTES_MAX}",
                    value.len()
                ));
            }
        }
        if pattern_type == PatternType::Prefixed && resource_name == WILDCARD {
            return invalid(format!(
                "a PREFIXED pattern of {WILDCARD:?} matches no resource; every resource is \
                 the LITERAL {WILDCARD:?}"
            ));
        }
        if resource_type == ResourceType::Cluster
            && (resource_name != CLUSTER_NAME || pattern_type != PatternType::Literal)
        {
            return invalid(format!(
                "the only CLUSTER resource is the LITERAL {CLUSTER_NAME:?}"
            ));
        }
        if principal
            .strip_prefix("User:")
            .is_none_or(|name| name.is_empty())
        {
            return invalid(format!(
                "principal {principal:?} is not User:<name> or User:*"
            ));
        }
        if host != WILDCARD && host.parse::<IpAddr>().is_err() {
            return invalid(format!("host {host:?} is not * or an IP address"));
        }
        if operation != Operation::All && !resource_type.operations().contains(&operation) {
            return invalid(format!(
                "{} is not an operation on a {} resource",
                operation.name(),
                resource_type.name()
            ));
        }
        Ok(AclBinding {
            resource_type,
            resource_name: resource_name.to_owned(),
            pattern_type,
            principal: principal.to_owned(),
            host: host.to_owned(),
            operation,
            permission,
        })
    }

    /// Whether this binding's pattern covers resource `name`.
    fn covers(&self, name: &str) -> bool {
        match self.pattern_type {
            PatternType::Literal => self.resource_name == name || self.resource_name == WILDCARD,
            PatternType::Prefixed => name.starts_with(&self.resource_name),
        }
    }
}

impl fmt::Display for AclBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} on {}:{}:{} from {}",
            self.principal,
            self.permission.name(),
            self.operation.name(),
            self.resource_type.name(),
            self.pattern_type.name(),
            self.resource_name,
            self.host
        )
    }
}

/// What a filter's pattern type matches (Kafka's `PatternType` in a
/// filter: ANY (1), MATCH (2), LITERAL (3), PREFIXED (4)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternFilter {
    /// Either pattern type, the name compared as is.
    Any,
    /// Every binding that would apply to the resource the name names: a
    /// literal one of that name or `*`, or a prefixed one whose prefix
    /// starts the name.
    Match,
    Exactly(PatternType),
}

/// A DescribeAcls or DeleteAcls filter: `None` (Kafka's null or ANY)
/// matches anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: Option<ResourceType>,
    pub resource_name: Option<String>,
    pub pattern: PatternFilter,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
}

impl AclFilter {
    /// A filter from the wire's codes (ANY = 1 for each enum), or why it
    /// is not one: an UNKNOWN (0) or unheard-of code.
    #[allow(clippy::too_many_arguments)]
    pub fn from_wire(
        resource_type: i8,
        resource_name: Option<&str>,
        pattern_type: i8,
        principal: Option<&str>,
        host: Option<&str>,
        operation: i8,
        permission: i8,
    ) -> Result<AclFilter, InvalidAcl> {
        let resource_type = match resource_type {
            1 => None,
            code => Some(ResourceType::from_code(code).ok_or_else(|| {
                InvalidAcl(format!(
                    "resource type {code} is not ANY or a resource type"
                ))
            })?),
        };
        let pattern = match pattern_type {
            1 => PatternFilter::Any,
            2 => PatternFilter::Match,
            3 => PatternFilter::Exactly(PatternType::Literal),
            4 => PatternFilter::Exactly(PatternType::Prefixed),
            code => {
                return Err(InvalidAcl(format!(
                    "pattern type {code} is not ANY, MATCH, LITERAL or PREFIXED"
                )));
            }
        };
        let operation = match operation {
            1 => None,
            code => Some(Operation::from_code(code).ok_or_else(|| {
                InvalidAcl(format!("operation {code} is not ANY or an operation"))
            })?),
        };
        let permission = match permission {
            1 => None,
            2 => Some(Permission::Deny),
            3 => Some(Permission::Allow),
            code => {
                return Err(InvalidAcl(format!(
                    "permission {code} is not ANY, DENY or ALLOW"
                )));
            }
        };
        Ok(AclFilter {
            resource_type,
            resource_name: resource_name.map(str::to_owned),
            pattern,
            principal: principal.map(str::to_owned),
            host: host.map(str::to_owned),
            operation,
            permission,
        })
    }

    /// A filter matching every binding.
    pub fn any() -> AclFilter {
        AclFilter {
            resource_type: None,
            resource_name: None,
            pattern: PatternFilter::Any,
            principal: None,
            host: None,
            operation: None,
            permission: None,
        }
    }

    /// Whether `binding` passes the filter (Kafka's `AclBindingFilter.matches`).
    pub fn matches(&self, binding: &AclBinding) -> bool {
        let resource = self
            .resource_type
            .is_none_or(|wanted| wanted == binding.resource_type)
            && match (&self.pattern, &self.resource_name) {
                (PatternFilter::Any, name) => name
                    .as_ref()
                    .is_none_or(|name| *name == binding.resource_name),
                (PatternFilter::Exactly(pattern), name) => {
                    *pattern == binding.pattern_type
                        && name
                            .as_ref()
                            .is_none_or(|name| *name == binding.resource_name)
                }
                (PatternFilter::Match, None) => true,
                (PatternFilter::Match, Some(name)) => binding.covers(name),
            };
        resource
            && self
                .principal
                .as_ref()
                .is_none_or(|principal| *principal == binding.principal)
            && self.host.as_ref().is_none_or(|host| *host == binding.host)
            && self
                .operation
                .is_none_or(|operation| operation == binding.operation)
            && self
                .permission
                .is_none_or(|permission| permission == binding.permission)
    }
}

/// The cluster's ACLs, indexed by resource for the authorizer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AclSet {
    bindings: BTreeSet<AclBinding>,
    /// Literal bindings by type, then name (`*` included as a name).
    literal: BTreeMap<ResourceType, BTreeMap<String, Vec<AclBinding>>>,
    /// Prefixed bindings by type, then prefix.
    prefixed: BTreeMap<ResourceType, BTreeMap<String, Vec<AclBinding>>>,
}

/// Whose view a consumer group's regex subscription resolves in (KIP-848:
/// a member is assigned only topics it may DESCRIBE, as Kafka 4 does):
/// the member's principal and address as of its last heartbeat, checked
/// against the ACLs of the metadata the resolution reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Viewer {
    /// No authorizer, or a super user: every topic.
    pub unrestricted: bool,
    pub user: String,
    pub host: IpAddr,
    pub no_acl_default: bool,
}

impl Default for Viewer {
    fn default() -> Viewer {
        Viewer::unrestricted()
    }
}

impl Viewer {
    /// A view of every topic.
    pub fn unrestricted() -> Viewer {
        Viewer {
            unrestricted: true,
            user: String::new(),
            host: IpAddr::from([0, 0, 0, 0]),
            no_acl_default: true,
        }
    }

    /// Whether topic `name` is in view under `acls`.
    pub fn may_describe_topic(&self, acls: &AclSet, name: &str) -> bool {
        self.unrestricted
            || acls.authorizes(
                Requester {
                    user: &self.user,
                    host: self.host,
                },
                Operation::Describe,
                ResourceType::Topic,
                name,
                self.no_acl_default,
            )
    }
}

/// Who asks: the principal's user name and the client's address.
#[derive(Clone, Copy, Debug)]
pub struct Requester<'a> {
    /// The user name (`ANONYMOUS` on a listener without authentication).
    pub user: &'a str,
    pub host: IpAddr,
}

impl AclSet {
    pub fn new(bindings: impl IntoIterator<Item = AclBinding>) -> AclSet {
        let mut set = AclSet::default();
        for binding in bindings {
            set.insert(binding);
        }
        set
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    pub fn contains(&self, binding: &AclBinding) -> bool {
        self.bindings.contains(binding)
    }

    pub fn iter(&self) -> impl Iterator<Item = &AclBinding> {
        self.bindings.iter()
    }

    /// Add `binding`; false if it was there already.
    pub fn insert(&mut self, binding: AclBinding) -> bool {
        if !self.bindings.insert(binding.clone()) {
            return false;
        }
        let index = match binding.pattern_type {
            PatternType::Literal => &mut self.literal,
            PatternType::Prefixed => &mut self.prefixed,
        };
        index
            .entry(binding.resource_type)
            .or_default()
            .entry(binding.resource_name.clone())
            .or_default()
            .push(binding);
        true
    }

    /// Remove `binding`; false if it was not there.
    pub fn remove(&mut self, binding: &AclBinding) -> bool {
        if !self.bindings.remove(binding) {
            return false;
        }
        let index = match binding.pattern_type {
            PatternType::Literal => &mut self.literal,
            PatternType::Prefixed => &mut self.prefixed,
        };
        if let Some(by_name) = index.get_mut(&binding.resource_type) {
            if let Some(list) = by_name.get_mut(&binding.resource_name) {
                list.retain(|other| other != binding);
                if list.is_empty() {
                    by_name.remove(&binding.resource_name);
                }
            }
            if by_name.is_empty() {
                index.remove(&binding.resource_type);
            }
        }
        true
    }

    /// Every binding that applies to resource `name` of `resource_type`.
    fn applying<'s>(
        &'s self,
        resource_type: ResourceType,
        name: &str,
    ) -> impl Iterator<Item = &'s AclBinding> {
        let literal = self
            .literal
            .get(&resource_type)
            .into_iter()
            .flat_map(move |by_name| {
                let wildcard = (name != WILDCARD).then(|| by_name.get(WILDCARD)).flatten();
                by_name.get(name).into_iter().chain(wildcard).flatten()
            });
        let prefixed = self
            .prefixed
            .get(&resource_type)
            .into_iter()
            .flat_map(move |by_prefix| {
                name.char_indices()
                    .map(move |(at, c)| &name[..at + c.len_utf8()])
                    .filter_map(move |prefix| by_prefix.get(prefix))
                    .flatten()
            });
        literal.chain(prefixed)
    }

    /// Whether `requester` may do `operation` to some resource of
    /// `resource_type` (Kafka's `authorizeByResourceType`, used for
    /// KIP-679's "WRITE on any topic"): an ALLOW binding for it whose
    /// resources no DENY binding for it covers entirely (a DENY on `*`, a
    /// DENY prefix that starts the ALLOW's name or prefix, or a DENY of the
    /// same literal name).
    pub fn allows_some(
        &self,
        requester: Requester<'_>,
        operation: Operation,
        resource_type: ResourceType,
    ) -> bool {
        let applies = |binding: &AclBinding| {
            binding.resource_type == resource_type
                && binding
                    .principal
                    .strip_prefix("User:")
                    .is_some_and(|user| user == requester.user || user == WILDCARD)
                && (binding.host == WILDCARD
                    || binding.host.parse::<IpAddr>() == Ok(requester.host))
        };
        let denies: Vec<&AclBinding> = self
            .bindings
            .iter()
            .filter(|binding| {
                applies(binding)
                    && binding.permission == Permission::Deny
                    && binding.operation.denies(operation)
            })
            .collect();
        self.bindings
            .iter()
            .filter(|binding| {
                applies(binding)
                    && binding.permission == Permission::Allow
                    && binding.operation.allows(operation)
            })
            .any(|allow| {
                !denies.iter().any(|deny| match deny.pattern_type {
                    PatternType::Literal => {
                        deny.resource_name == WILDCARD
                            || (allow.pattern_type == PatternType::Literal
                                && deny.resource_name == allow.resource_name)
                    }
                    PatternType::Prefixed => allow.resource_name.starts_with(&deny.resource_name),
                })
            })
    }

    /// Whether `requester` may do `operation` to resource `name` of
    /// `resource_type`, by the rules in the module's docs (super users are
    /// the caller's to check). `no_acl_default` is the answer when no
    /// binding applies to the resource.
    pub fn authorizes(
        &self,
        requester: Requester<'_>,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
        no_acl_default: bool,
    ) -> bool {
        let mut any_applies = false;
        let mut allowed = false;
        for binding in self.applying(resource_type, name) {
            any_applies = true;
            let principal_matches = binding
                .principal
                .strip_prefix("User:")
                .is_some_and(|user| user == requester.user || user == WILDCARD);
            let host_matches =
                binding.host == WILDCARD || binding.host.parse::<IpAddr>() == Ok(requester.host);
            if !principal_matches || !host_matches {
                continue;
            }
            match binding.permission {
                Permission::Deny if binding.operation.denies(operation) => return false,
                Permission::Allow if binding.operation.allows(operation) => allowed = true,
                _ => {}
            }
        }
        allowed || (!any_applies && no_acl_default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(
        resource_type: ResourceType,
        name: &str,
        pattern_type: PatternType,
        principal: &str,
        operation: Operation,
        permission: Permission,
    ) -> AclBinding {
        AclBinding {
            resource_type,
            resource_name: name.to_owned(),
            pattern_type,
            principal: principal.to_owned(),
            host: WILDCARD.to_owned(),
            operation,
            permission,
        }
    }

    fn alice() -> Requester<'static> {
        Requester {
            user: "alice",
            host: "10.0.0.1".parse().unwrap(),
        }
    }

    use Operation::*;
    use PatternType::*;
    use Permission::*;
    use ResourceType::*;

    #[test]
    fn literal_prefixed_and_wildcard_bindings_apply_to_their_resources() {
        let set = AclSet::new([
            binding(Topic, "orders", Literal, "User:alice", Write, Allow),
            binding(Topic, "pay-", Prefixed, "User:alice", Read, Allow),
            binding(Group, "*", Literal, "User:*", Read, Allow),
        ]);
        assert!(set.authorizes(alice(), Write, Topic, "orders", false));
        assert!(!set.authorizes(alice(), Write, Topic, "orders-2", false));
        assert!(set.authorizes(alice(), Read, Topic, "pay-eu", false));
        assert!(!set.authorizes(alice(), Read, Topic, "pay", false));
        assert!(!set.authorizes(alice(), Write, Topic, "pay-eu", false));
        assert!(set.authorizes(alice(), Read, Group, "anything", false));
        // Another user gets nothing from alice's bindings.
        let bob = Requester {
            user: "bob",
            ..alice()
        };
        assert!(!set.authorizes(bob, Write, Topic, "orders", false));
        assert!(set.authorizes(bob, Read, Group, "g", false));
    }

    #[test]
    fn deny_wins_and_implied_operations_allow_describe() {
        let set = AclSet::new([
            binding(Topic, "t", Literal, "User:*", All, Allow),
            binding(Topic, "t", Prefixed, "User:alice", Write, Deny),
            binding(Topic, "u", Literal, "User:alice", Read, Allow),
            binding(Topic, "v", Literal, "User:alice", AlterConfigs, Allow),
        ]);
        assert!(!set.authorizes(alice(), Write, Topic, "t", false));
        assert!(set.authorizes(alice(), Read, Topic, "t", false));
        assert!(set.authorizes(alice(), Describe, Topic, "u", false));
        assert!(!set.authorizes(alice(), Write, Topic, "u", false));
        assert!(set.authorizes(alice(), DescribeConfigs, Topic, "v", false));
        assert!(!set.authorizes(alice(), Describe, Topic, "v", false));
    }

    #[test]
    fn the_host_must_match_and_no_acl_takes_the_default() {
        let mut only_from = binding(Topic, "t", Literal, "User:alice", Read, Allow);
        only_from.host = "10.0.0.2".to_owned();
        let set = AclSet::new([only_from]);
        assert!(!set.authorizes(alice(), Read, Topic, "t", true));
        assert!(set.authorizes(alice(), Read, Topic, "no-acls", true));
        assert!(!set.authorizes(alice(), Read, Topic, "no-acls", false));
    }

    #[test]
    fn filters_match_as_kafkas_do() {
        let prefixed = binding(Topic, "pay-", Prefixed, "User:alice", Read, Allow);
        let literal = binding(Topic, "pay-eu", Literal, "User:bob", Write, Deny);
        let wildcard = binding(Topic, "*", Literal, "User:bob", Describe, Allow);
        let matching = AclFilter {
            resource_name: Some("pay-eu".to_owned()),
            pattern: PatternFilter::Match,
            ..AclFilter::any()
        };
        assert!(matching.matches(&prefixed) && matching.matches(&literal));
        assert!(matching.matches(&wildcard));
        let exact = AclFilter {
            resource_name: Some("pay-".to_owned()),
            pattern: PatternFilter::Exactly(Prefixed),
            ..AclFilter::any()
        };
        assert!(exact.matches(&prefixed) && !exact.matches(&literal));
        let by_principal = AclFilter {
            principal: Some("User:bob".to_owned()),
            permission: Some(Deny),
            ..AclFilter::any()
        };
        assert!(!by_principal.matches(&prefixed) && by_principal.matches(&literal));
        assert!(!by_principal.matches(&wildcard));
    }

    #[test]
    fn creation_refuses_what_kafka_refuses() {
        let ok = |rt, name: &str, pt, principal: &str, host: &str, op, perm| {
            AclBinding::from_wire(rt, name, pt, principal, host, op, perm)
        };
        assert!(ok(2, "t", 3, "User:a", "*", 3, 3).is_ok());
        assert!(ok(2, "t", 4, "User:*", "10.1.2.3", 4, 2).is_ok());
        assert!(ok(4, "kafka-cluster", 3, "User:a", "*", 7, 3).is_ok());
        for (rt, name, pt, principal, host, op, perm) in [
            (1, "t", 3, "User:a", "*", 3, 3),           // ANY resource type
            (6, "t", 3, "User:a", "*", 3, 3),           // delegation token
            (2, "t", 2, "User:a", "*", 3, 3),           // MATCH pattern
            (2, "", 3, "User:a", "*", 3, 3),            // empty name
            (2, "t", 3, "alice", "*", 3, 3),            // no principal type
            (2, "t", 3, "Group:a", "*", 3, 3),          // not a user
            (2, "t", 3, "User:a", "example.com", 3, 3), // a host name
            (2, "t", 3, "User:a", "*", 1, 3),           // ANY operation
            (2, "t", 3, "User:a", "*", 3, 1),           // ANY permission
            (4, "other", 3, "User:a", "*", 7, 3),       // cluster's name
            (3, "g", 3, "User:a", "*", 4, 3),           // WRITE on a group
        ] {
            assert!(
                ok(rt, name, pt, principal, host, op, perm).is_err(),
                "{rt} {name} {pt} {principal} {host} {op} {perm}"
            );
        }
    }

    #[test]
    fn write_on_some_topic_is_an_allow_no_deny_covers() {
        let carol = Requester {
            user: "carol",
            host: "10.0.0.1".parse().unwrap(),
        };
        let some =
            |bindings: Vec<AclBinding>| AclSet::new(bindings).allows_some(carol, Write, Topic);
        let allow_prefix = binding(Topic, "ord", Prefixed, "User:carol", Write, Allow);
        // A literal DENY of the prefix's own name leaves orders-1 allowed.
        let deny_literal = binding(Topic, "ord", Literal, "User:carol", Write, Deny);
        assert!(some(vec![allow_prefix.clone(), deny_literal]));
        // A DENY of everything, or of a shorter prefix, covers it.
        let deny_all = binding(Topic, "*", Literal, "User:carol", Write, Deny);
        assert!(!some(vec![allow_prefix.clone(), deny_all]));
        let deny_shorter = binding(Topic, "o", Prefixed, "User:*", All, Deny);
        assert!(!some(vec![allow_prefix, deny_shorter]));
        // Another user's ALLOW is not carol's.
        assert!(!some(vec![binding(
            Topic,
            "t",
            Literal,
            "User:dave",
            Write,
            Allow
        )]));
        assert!(some(vec![binding(
            Topic, "t", Literal, "User:*", All, Allow
        )]));
    }

    #[test]
    fn removal_keeps_the_index_true() {
        let a = binding(Topic, "p", Prefixed, "User:alice", Read, Allow);
        let mut set = AclSet::new([a.clone()]);
        assert!(set.authorizes(alice(), Read, Topic, "p1", false));
        assert!(set.remove(&a) && !set.remove(&a));
        assert!(!set.authorizes(alice(), Read, Topic, "p1", false));
        assert!(set.is_empty());
    }
}
