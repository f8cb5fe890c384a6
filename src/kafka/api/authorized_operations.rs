//! The `authorized_operations` bit sets of Metadata, DescribeCluster,
//! DescribeGroups and DescribeTopicPartitions (KIP-430).
//!
//! Each field is a bit set over Kafka's ACL operation codes (`AclOperation`:
//! READ = 3 … IDEMPOTENT_WRITE = 12), with `i32::MIN` when the client did
//! not ask. Sluice has no authorizer yet, so, as a Kafka broker without
//! one does, it answers every operation the resource type supports: the
//! sets below are Kafka's supported operations per resource type.

/// Kafka's ACL operation codes (`org.apache.kafka.common.acl.AclOperation`).
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
enum AclOperation {
    Read = 3,
    Write = 4,
    Create = 5,
    Delete = 6,
    Alter = 7,
    Describe = 8,
    ClusterAction = 9,
    DescribeConfigs = 10,
    AlterConfigs = 11,
    IdempotentWrite = 12,
}

/// The resource types that carry authorized operations in responses.
#[derive(Clone, Copy, Debug)]
pub enum AclResource {
    Topic,
    Group,
    Cluster,
}

use AclOperation::*;

const TOPIC_OPERATIONS: &[AclOperation] = &[
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    DescribeConfigs,
    AlterConfigs,
];
const GROUP_OPERATIONS: &[AclOperation] = &[Read, Describe, Delete];
const CLUSTER_OPERATIONS: &[AclOperation] = &[
    Create,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
];

/// Kafka's "authorized operations not requested" value.
pub const AUTHORIZED_OPERATIONS_UNKNOWN: i32 = i32::MIN;

/// The field's value: every operation `resource` supports when `requested`,
/// else [`AUTHORIZED_OPERATIONS_UNKNOWN`].
pub fn authorized_operations(requested: bool, resource: AclResource) -> i32 {
    if !requested {
        return AUTHORIZED_OPERATIONS_UNKNOWN;
    }
    let operations = match resource {
        AclResource::Topic => TOPIC_OPERATIONS,
        AclResource::Group => GROUP_OPERATIONS,
        AclResource::Cluster => CLUSTER_OPERATIONS,
    };
    operations
        .iter()
        .fold(0, |bits, operation| bits | 1 << *operation as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sets_are_kafkas_bit_positions() {
        // READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS.
        assert_eq!(
            authorized_operations(true, AclResource::Topic),
            0b1101_1111_1000
        );
        assert_eq!(
            authorized_operations(true, AclResource::Group),
            0b1_0100_1000
        );
        assert_eq!(
            authorized_operations(true, AclResource::Cluster),
            0b1_1111_1010_0000
        );
        assert_eq!(
            authorized_operations(false, AclResource::Cluster),
            AUTHORIZED_OPERATIONS_UNKNOWN
        );
    }
}
