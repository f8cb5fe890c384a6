//! The authorizer each request consults (issue 20 item 4): what the
//! connection's principal may do, by `security.authorizer`.
//!
//! With `authorizer = "none"` everything is allowed, as in Kafka without an
//! authorizer. With `"acl"` a super user (`security.super_users`, the
//! bootstrap user) is allowed everything and anyone else gets what the
//! cluster's ACLs allow (`security/acl.rs`). Each API checks the operations
//! Kafka's `KafkaApis` checks for it and answers a refusal with Kafka's error
//! code for it (TOPIC_AUTHORIZATION_FAILED, GROUP_AUTHORIZATION_FAILED,
//! CLUSTER_AUTHORIZATION_FAILED, TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
//! the table of API → operation is in ARCHITECTURE.md, "Security".

use std::net::IpAddr;
use std::sync::Arc;

use super::dispatch::Request;
use crate::config::AuthorizerKind;
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::security::acl::{AclSet, CLUSTER_NAME, Operation, Requester, ResourceType, Viewer};
use crate::telemetry;

/// The decision-maker for one request.
#[derive(Clone)]
pub enum Authorizer {
    /// No authorizer, or a super user.
    AllowAll,
    /// The principal's ACLs decide.
    Acls {
        user: String,
        host: IpAddr,
        acls: Arc<AclSet>,
        no_acl_default: bool,
    },
}

/// Refusals logged: at most 20 lines per 10 s.
static DENIALS: LogThrottle = LogThrottle::with_lines(std::time::Duration::from_secs(10), 20);

/// Kafka's "authorized operations not requested" value (KIP-430).
pub const AUTHORIZED_OPERATIONS_UNKNOWN: i32 = i32::MIN;

impl Authorizer {
    /// The authorizer for `request`'s connection.
    pub fn for_request(request: &Request<'_>) -> Authorizer {
        let security = &request.broker.config.security;
        if security.authorizer == AuthorizerKind::None {
            return Authorizer::AllowAll;
        }
        let user = request.session.principal_user();
        if security.is_super_user(&user) {
            return Authorizer::AllowAll;
        }
        Authorizer::Acls {
            user,
            host: request.peer.ip().to_canonical(),
            acls: Arc::clone(&request.broker.metadata.snapshot().acls),
            no_acl_default: security.allow_everyone_if_no_acl_found,
        }
    }

    /// Whether the principal may do `operation` to `resource_type` `name`.
    /// A refusal is counted in `sluice_kafka_authorization_denials_total`
    /// and logged (at most 20 lines per 10 s), as Kafka's authorizer log.
    pub fn allows(&self, operation: Operation, resource_type: ResourceType, name: &str) -> bool {
        let allowed = self.allows_quietly(operation, resource_type, name);
        if !allowed {
            self.deny(operation, resource_type, name);
        }
        allowed
    }

    /// Count and log a refusal of `operation` on `resource_type` `name`
    /// decided elsewhere ([`Authorizer::may_create_topic`]).
    pub fn deny(&self, operation: Operation, resource_type: ResourceType, name: &str) {
        if let Authorizer::Acls { user, host, .. } = self {
            telemetry::kafka::authorization_denied(operation.name(), resource_type.name());
            if let Some(denied) = DENIALS.record(monotonic_ms()) {
                tracing::info!(
                    principal = %format!("User:{user}"),
                    %host,
                    operation = operation.name(),
                    resource = %format!("{}:{name}", resource_type.name()),
                    denied,
                    "authorization denied (`denied` counts refusals since the last such line)"
                );
            }
        }
    }

    /// Whether the principal may create topic `name`: CREATE on the
    /// cluster or on the topic. Quiet: a request that only might create
    /// (Produce, Metadata) records a refusal with [`Authorizer::deny`]
    /// when it acts on it.
    pub fn may_create_topic(&self, name: &str) -> bool {
        self.allows_quietly(Operation::Create, ResourceType::Cluster, CLUSTER_NAME)
            || self.allows_quietly(Operation::Create, ResourceType::Topic, name)
    }

    /// [`Authorizer::allows`] without counting or logging a refusal: for
    /// what only filters a listing (Metadata of every topic, ListGroups),
    /// as Kafka's `logIfDenied = false`.
    pub fn allows_quietly(
        &self,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        match self {
            Authorizer::AllowAll => true,
            Authorizer::Acls {
                user,
                host,
                acls,
                no_acl_default,
            } => acls.authorizes(
                Requester { user, host: *host },
                operation,
                resource_type,
                name,
                *no_acl_default,
            ),
        }
    }

    /// The principal's view, for what is resolved later elsewhere (a
    /// consumer group's regex subscription).
    pub fn viewer(&self) -> Viewer {
        match self {
            Authorizer::AllowAll => Viewer::unrestricted(),
            Authorizer::Acls {
                user,
                host,
                no_acl_default,
                ..
            } => Viewer {
                unrestricted: false,
                user: user.clone(),
                host: *host,
                no_acl_default: *no_acl_default,
            },
        }
    }

    pub fn topic(&self, operation: Operation, topic: &str) -> bool {
        self.allows(operation, ResourceType::Topic, topic)
    }

    pub fn group(&self, operation: Operation, group: &str) -> bool {
        self.allows(operation, ResourceType::Group, group)
    }

    pub fn cluster(&self, operation: Operation) -> bool {
        self.allows(operation, ResourceType::Cluster, CLUSTER_NAME)
    }

    pub fn transactional_id(&self, operation: Operation, id: &str) -> bool {
        self.allows(operation, ResourceType::TransactionalId, id)
    }

    /// Whether the principal may have an idempotent producer id (KIP-679:
    /// IDEMPOTENT_WRITE on the cluster, or WRITE on some topic: an ACL
    /// allowing it, or no ACLs with `allow_everyone_if_no_acl_found`).
    pub fn idempotent_write(&self) -> bool {
        match self {
            Authorizer::AllowAll => true,
            Authorizer::Acls {
                acls,
                no_acl_default,
                user,
                host,
            } => {
                *no_acl_default
                    || self.allows_quietly(
                        Operation::IdempotentWrite,
                        ResourceType::Cluster,
                        CLUSTER_NAME,
                    )
                    || acls.allows_some(
                        Requester { user, host: *host },
                        Operation::Write,
                        ResourceType::Topic,
                    )
            }
        }
    }

    /// KIP-430's `authorized_operations` bit set for `resource_type`
    /// `name`: a bit per Kafka operation code the principal is allowed,
    /// over the operations the type supports; [`AUTHORIZED_OPERATIONS_UNKNOWN`]
    /// when the client did not ask.
    pub fn operations(&self, requested: bool, resource_type: ResourceType, name: &str) -> i32 {
        if !requested {
            return AUTHORIZED_OPERATIONS_UNKNOWN;
        }
        resource_type
            .operations()
            .iter()
            .filter(|operation| self.allows_quietly(**operation, resource_type, name))
            .fold(0, |bits, operation| bits | 1 << operation.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_allowed_sets_are_kafkas_bit_positions() {
        let all = Authorizer::AllowAll;
        // READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS.
        assert_eq!(
            all.operations(true, ResourceType::Topic, "t"),
            0b1101_1111_1000
        );
        assert_eq!(
            all.operations(true, ResourceType::Group, "g"),
            0b1_0100_1000
        );
        assert_eq!(
            all.operations(true, ResourceType::Cluster, CLUSTER_NAME),
            0b1_1111_1010_0000
        );
        assert_eq!(
            all.operations(false, ResourceType::Cluster, CLUSTER_NAME),
            AUTHORIZED_OPERATIONS_UNKNOWN
        );
    }
}
