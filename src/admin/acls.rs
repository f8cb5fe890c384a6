//! `sluice acls add|remove|list`: the cluster's ACLs through CreateAcls,
//! DeleteAcls and DescribeAcls (KIP-140), in the spirit of Kafka's
//! `kafka-acls.sh`. The broker must run with `security.authorizer = "acl"`
//! (it answers SECURITY_DISABLED otherwise), and the command must log in
//! as a principal allowed ALTER (add, remove) or DESCRIBE (list) on the
//! cluster: a super user, with `SLUICE_SASL_USERNAME` / `SLUICE_SASL_PASSWORD`.
//!
//! A resource is named by exactly one of `--topic`, `--group`,
//! `--transactional-id` or `--cluster`; `add` takes one binding per
//! operation given.

use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::delete_acls_response::DeleteAclsMatchingAcl;
use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest};
use kafka_protocol::protocol::StrBytes;

use super::table::Table;
use super::{AdminResult, describe_error};
use crate::client::KafkaClient;
use crate::security::acl::{CLUSTER_NAME, Operation, PatternType, ResourceType};

/// The resource an ACL command names, as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct ResourceArgs {
    pub topic: Option<String>,
    pub group: Option<String>,
    pub transactional_id: Option<String>,
    pub cluster: bool,
}

impl ResourceArgs {
    /// The one resource named, or none; more than one is an error.
    fn resource(&self) -> anyhow::Result<Option<(ResourceType, String)>> {
        let named: Vec<(ResourceType, String)> = [
            self.topic.clone().map(|name| (ResourceType::Topic, name)),
            self.group.clone().map(|name| (ResourceType::Group, name)),
            self.transactional_id
                .clone()
                .map(|name| (ResourceType::TransactionalId, name)),
            self.cluster
                .then(|| (ResourceType::Cluster, CLUSTER_NAME.to_owned())),
        ]
        .into_iter()
        .flatten()
        .collect();
        if named.len() > 1 {
            anyhow::bail!(
                "name one resource: --topic, --group, --transactional-id or --cluster, not {}",
                named.len()
            );
        }
        Ok(named.into_iter().next())
    }
}

/// What `add` creates: `permission` for each of `operations` to
/// `principal` from `host` on the resource.
pub struct AddArgs {
    pub resource: ResourceArgs,
    pub prefixed: bool,
    pub principal: String,
    pub host: String,
    pub operations: Vec<String>,
    pub deny: bool,
}

/// What `remove` and `list` match: every given part must match; a part
/// not given matches anything.
pub struct FilterArgs {
    pub resource: ResourceArgs,
    /// `any`, `match` (every binding that applies to the named resource),
    /// `literal` or `prefixed`; `None`: `literal` for `remove` with a
    /// resource named (as `kafka-acls.sh --remove`), else `any`.
    pub pattern: Option<String>,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<String>,
    /// `allow` or `deny`.
    pub permission: Option<String>,
}

fn operation(name: &str) -> anyhow::Result<Operation> {
    Operation::from_name(name).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown operation {name}: ALL, READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, \
             CLUSTER_ACTION, DESCRIBE_CONFIGS, ALTER_CONFIGS or IDEMPOTENT_WRITE"
        )
    })
}

fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

/// Create the ACLs `args` describes.
pub fn add(brokers: &str, args: AddArgs) -> AdminResult {
    let Some((resource_type, name)) = args.resource.resource()? else {
        anyhow::bail!("name the resource: --topic, --group, --transactional-id or --cluster");
    };
    if args.operations.is_empty() {
        anyhow::bail!("name at least one --operation");
    }
    let pattern = if args.prefixed {
        PatternType::Prefixed
    } else {
        PatternType::Literal
    };
    let permission = if args.deny { 2 } else { 3 };
    let mut creations = Vec::new();
    for name_of_operation in &args.operations {
        creations.push(
            AclCreation::default()
                .with_resource_type(resource_type.code())
                .with_resource_name(str_bytes(&name))
                .with_resource_pattern_type(pattern.code())
                .with_principal(str_bytes(&args.principal))
                .with_host(str_bytes(&args.host))
                .with_operation(operation(name_of_operation)?.code())
                .with_permission_type(permission),
        );
    }
    let mut client = KafkaClient::connect(brokers)?;
    let response = client.call(&CreateAclsRequest::default().with_creations(creations))?;
    let mut created = Vec::new();
    let mut failed = Vec::new();
    for (result, name_of_operation) in response.results.iter().zip(&args.operations) {
        let operation = Operation::from_name(name_of_operation).map_or("?", Operation::name);
        if result.error_code == 0 {
            created.push(operation);
        } else {
            failed.push(format!(
                "{operation}: {}",
                describe_error(result.error_code, result.error_message.as_deref())
            ));
        }
    }
    if !created.is_empty() {
        println!(
            "{} {} {} on {} {}:{name} from {}",
            args.principal,
            if args.deny { "DENY" } else { "ALLOW" },
            created.join(","),
            resource_type.name(),
            pattern.name(),
            args.host,
        );
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} not created ({}created){}",
            if failed.len() == 1 {
                "one ACL was"
            } else {
                "some ACLs were"
            },
            if created.is_empty() {
                "none "
            } else {
                "the others were "
            },
            failed
                .iter()
                .map(|line| format!("\n  {line}"))
                .collect::<String>()
        );
    }
    Ok(())
}

/// The wire filter `args` describes (ANY = 1 where it names nothing).
fn filter(args: &FilterArgs, default_pattern: &str) -> anyhow::Result<DeleteAclsFilter> {
    let resource = args.resource.resource()?;
    let default_pattern = if resource.is_some() {
        default_pattern
    } else {
        "any"
    };
    let pattern = match args
        .pattern
        .as_deref()
        .unwrap_or(default_pattern)
        .to_ascii_lowercase()
        .as_str()
    {
        "any" => 1,
        "match" => 2,
        "literal" => 3,
        "prefixed" => 4,
        other => anyhow::bail!("unknown --pattern {other}: any, match, literal or prefixed"),
    };
    if pattern == 2 && resource.is_none() {
        anyhow::bail!("--pattern match needs a resource to match");
    }
    let operation = match &args.operation {
        Some(name) => operation(name)?.code(),
        None => 1,
    };
    let permission = match args.permission.as_deref().map(str::to_ascii_lowercase) {
        None => 1,
        Some(permission) if permission == "deny" => 2,
        Some(permission) if permission == "allow" => 3,
        Some(other) => anyhow::bail!("unknown --permission {other}: allow or deny"),
    };
    Ok(DeleteAclsFilter::default()
        .with_resource_type_filter(resource.as_ref().map_or(1, |(kind, _)| kind.code()))
        .with_resource_name_filter(resource.map(|(_, name)| StrBytes::from_string(name)))
        .with_pattern_type_filter(pattern)
        .with_principal_filter(args.principal.as_deref().map(str_bytes))
        .with_host_filter(args.host.as_deref().map(str_bytes))
        .with_operation(operation)
        .with_permission_type(permission))
}

/// One binding as a table row.
fn row(acl: &DeleteAclsMatchingAcl) -> Vec<String> {
    let resource = ResourceType::from_code(acl.resource_type).map_or_else(
        || acl.resource_type.to_string(),
        |kind| kind.name().to_owned(),
    );
    let pattern = match acl.pattern_type {
        3 => "LITERAL".to_owned(),
        4 => "PREFIXED".to_owned(),
        other => other.to_string(),
    };
    let operation = Operation::from_code(acl.operation)
        .map_or_else(|| acl.operation.to_string(), |op| op.name().to_owned());
    let permission = match acl.permission_type {
        2 => "DENY".to_owned(),
        3 => "ALLOW".to_owned(),
        other => other.to_string(),
    };
    vec![
        acl.principal.to_string(),
        permission,
        operation,
        resource,
        pattern,
        acl.resource_name.to_string(),
        acl.host.to_string(),
    ]
}

const HEADERS: [&str; 7] = [
    "PRINCIPAL",
    "PERMISSION",
    "OPERATION",
    "RESOURCE",
    "PATTERN",
    "NAME",
    "HOST",
];

/// Every ACL `args` matches.
pub fn list(brokers: &str, args: FilterArgs) -> AdminResult {
    let filter = filter(&args, "any")?;
    let request = DescribeAclsRequest::default()
        .with_resource_type_filter(filter.resource_type_filter)
        .with_resource_name_filter(filter.resource_name_filter)
        .with_pattern_type_filter(filter.pattern_type_filter)
        .with_principal_filter(filter.principal_filter)
        .with_host_filter(filter.host_filter)
        .with_operation(filter.operation)
        .with_permission_type(filter.permission_type);
    let mut client = KafkaClient::connect(brokers)?;
    let response = client.call(&request)?;
    if response.error_code != 0 {
        anyhow::bail!(describe_error(
            response.error_code,
            response.error_message.as_deref()
        ));
    }
    let mut table = Table::new(&HEADERS);
    for resource in &response.resources {
        for acl in &resource.acls {
            table.row(row(&DeleteAclsMatchingAcl::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone())
                .with_pattern_type(resource.pattern_type)
                .with_principal(acl.principal.clone())
                .with_host(acl.host.clone())
                .with_operation(acl.operation)
                .with_permission_type(acl.permission_type)));
        }
    }
    print!("{}", table.render());
    Ok(())
}

/// Remove every ACL `args` matches, and show them.
pub fn remove(brokers: &str, args: FilterArgs) -> AdminResult {
    let filter = filter(&args, "literal")?;
    if filter.resource_type_filter == 1
        && filter.principal_filter.is_none()
        && filter.operation == 1
        && filter.permission_type == 1
    {
        anyhow::bail!(
            "name what to remove (a resource, --principal, --operation or --permission); \
             removing every ACL at once is not offered"
        );
    }
    let request = DeleteAclsRequest::default().with_filters(vec![filter]);
    let mut client = KafkaClient::connect(brokers)?;
    let response = client.call(&request)?;
    let mut table = Table::new(&HEADERS);
    for result in &response.filter_results {
        if result.error_code != 0 {
            anyhow::bail!(describe_error(
                result.error_code,
                result.error_message.as_deref()
            ));
        }
        for acl in &result.matching_acls {
            table.row(row(acl));
        }
    }
    print!("{}", table.render());
    Ok(())
}
