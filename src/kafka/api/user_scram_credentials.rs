//! DescribeUserScramCredentials and AlterUserScramCredentials (KIP-554):
//! the SCRAM credentials in the cluster metadata.
//!
//! The client salts and hashes the password itself (AlterUserScramCredentials
//! carries the salt, the iteration count and `SaltedPassword`); the broker
//! keeps `StoredKey` and `ServerKey` from it, never the salted password.
//! Each user's alterations are checked together and applied only if all
//! pass: a user named twice for one mechanism gets DUPLICATE_RESOURCE, an
//! empty name, an iteration count outside 4096..=16384 or an empty salt
//! UNACCEPTABLE_CREDENTIAL, an unknown mechanism UNSUPPORTED_SASL_MECHANISM,
//! and deleting a credential that does not exist RESOURCE_NOT_FOUND.
//!
//! With `security.authorizer = "acl"` Describe needs DESCRIBE and Alter
//! needs ALTER on the cluster (CLUSTER_AUTHORIZATION_FAILED), as in Kafka.
//! Without an authorizer, on a SASL listener only super users
//! (`security.super_users`, `security.sasl_bootstrap_user`) may call them,
//! so that logging in means something; on a listener without
//! authentication anyone may, as in Kafka without an authorizer.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};

use super::{decode, str_bytes};
use crate::broker::metadata_command::{MetadataCommand, Refusal};
use crate::config::AuthorizerKind;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;
use crate::security::scram::{ScramCredential, ScramMechanism};

/// Whether this connection may do `operation` (DESCRIBE or ALTER) to
/// credentials.
fn allowed(request: &Request<'_>, operation: Operation) -> bool {
    let security = &request.broker.config.security;
    if security.authorizer != AuthorizerKind::None {
        return request.authorizer().cluster(operation);
    }
    match request.session.user() {
        Some(user) => security.is_super_user(&user),
        None => !request.session.protocol().uses_sasl(),
    }
}

/// Why the connection may not: whom the rule admits.
fn not_allowed(request: &Request<'_>) -> &'static str {
    if request.broker.config.security.authorizer == AuthorizerKind::None {
        "only super users (security.super_users) may read or change SCRAM credentials"
    } else {
        "SCRAM credentials need DESCRIBE (to read) or ALTER (to change) on the cluster: log in \
         as a super user (security.super_users, the bootstrap user) or one granted it"
    }
}

pub fn describe(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let describe: DescribeUserScramCredentialsRequest = decode(request, body)?;
    let mut response = DescribeUserScramCredentialsResponse::default();
    if !allowed(request, Operation::Describe) {
        response = response
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(str_bytes(not_allowed(request))));
        return request.respond(response);
    }
    let snapshot = request.broker.metadata.snapshot();
    let info = |credentials: &BTreeMap<ScramMechanism, ScramCredential>| {
        credentials
            .iter()
            .map(|(mechanism, credential)| {
                CredentialInfo::default()
                    .with_mechanism(mechanism.code())
                    .with_iterations(i32::try_from(credential.iterations).unwrap_or(i32::MAX))
            })
            .collect()
    };
    let named: Vec<String> = describe
        .users
        .unwrap_or_default()
        .into_iter()
        .map(|user| user.name.to_string())
        .collect();
    let results = if named.is_empty() {
        snapshot
            .scram_credentials
            .iter()
            .map(|(user, credentials)| {
                DescribeUserScramCredentialsResult::default()
                    .with_user(str_bytes(user))
                    .with_credential_infos(info(credentials))
            })
            .collect()
    } else {
        let mut seen = BTreeSet::new();
        let repeated: BTreeSet<&String> = named.iter().filter(|user| !seen.insert(*user)).collect();
        let mut listed = BTreeSet::new();
        named
            .iter()
            .filter(|user| listed.insert(*user))
            .map(|user| {
                let result =
                    DescribeUserScramCredentialsResult::default().with_user(str_bytes(user));
                if repeated.contains(user) {
                    return result
                        .with_error_code(ResponseError::DuplicateResource.code())
                        .with_error_message(Some(str_bytes(&format!(
                            "cannot describe user {user:?} twice in one request"
                        ))));
                }
                match snapshot.scram_credentials.get(user) {
                    Some(credentials) => result.with_credential_infos(info(credentials)),
                    None => result
                        .with_error_code(ResponseError::ResourceNotFound.code())
                        .with_error_message(Some(str_bytes(&format!(
                            "user {user:?} has no SCRAM credentials"
                        )))),
                }
            })
            .collect()
    };
    request.respond(response.with_results(results))
}

/// One user's alterations, in request order.
#[derive(Default)]
struct UserChanges {
    commands: Vec<MetadataCommand>,
    error: Option<(ResponseError, String)>,
}

impl UserChanges {
    fn fail(&mut self, error: ResponseError, message: String) {
        self.error.get_or_insert((error, message));
    }

    /// The mechanism of a change of `user`'s credential (repeats were
    /// refused already, for the whole request, in [`alter`]).
    fn mechanism(&mut self, user: &str, code: i8) -> Option<ScramMechanism> {
        if user.is_empty() {
            self.fail(
                ResponseError::UnacceptableCredential,
                "the user name must not be empty".to_owned(),
            );
            return None;
        }
        let mechanism = ScramMechanism::from_code(code);
        if mechanism.is_none() {
            self.fail(
                ResponseError::UnsupportedSaslMechanism,
                format!("unknown SCRAM mechanism {code}: 1 is SCRAM-SHA-256, 2 SCRAM-SHA-512"),
            );
        }
        mechanism
    }
}

pub async fn alter(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let alter: AlterUserScramCredentialsRequest = decode(request, body)?;
    let mut users: Vec<(String, UserChanges)> = Vec::new();
    fn entry<'a>(users: &'a mut Vec<(String, UserChanges)>, user: &str) -> &'a mut UserChanges {
        let at = match users.iter().position(|(name, _)| name == user) {
            Some(at) => at,
            None => {
                users.push((user.to_owned(), UserChanges::default()));
                users.len() - 1
            }
        };
        &mut users[at].1
    }
    // A (user, mechanism) named twice anywhere in the request makes the
    // whole user's alterations DUPLICATE_RESOURCE, before any other check
    // (Kafka's rule).
    let mut seen = BTreeSet::new();
    let named = alter
        .deletions
        .iter()
        .map(|deletion| (deletion.name.as_str(), deletion.mechanism))
        .chain(
            alter
                .upsertions
                .iter()
                .map(|upsertion| (upsertion.name.as_str(), upsertion.mechanism)),
        );
    for (user, code) in named {
        if !seen.insert((user, code)) {
            entry(&mut users, user).fail(
                ResponseError::DuplicateResource,
                format!(
                    "user {user:?}'s credential for mechanism {code} is altered twice in one request"
                ),
            );
        }
    }
    let snapshot = request.broker.metadata.snapshot();
    for deletion in &alter.deletions {
        let user = deletion.name.as_str();
        let changes = entry(&mut users, user);
        if let Some(mechanism) = changes.mechanism(user, deletion.mechanism) {
            let exists = snapshot
                .scram_credentials
                .get(user)
                .is_some_and(|credentials| credentials.contains_key(&mechanism));
            if !exists {
                changes.fail(
                    ResponseError::ResourceNotFound,
                    format!(
                        "user {user:?} has no {} credential to delete",
                        mechanism.name()
                    ),
                );
            }
            changes
                .commands
                .push(MetadataCommand::DeleteScramCredential {
                    user: user.to_owned(),
                    mechanism,
                });
        }
    }
    for upsertion in &alter.upsertions {
        let user = upsertion.name.as_str();
        let changes = entry(&mut users, user);
        if let Some(mechanism) = changes.mechanism(user, upsertion.mechanism) {
            if !ScramCredential::iterations_valid(upsertion.iterations) {
                changes.fail(
                    ResponseError::UnacceptableCredential,
                    format!(
                        "{} iterations is outside {}..={}",
                        upsertion.iterations,
                        crate::security::scram::ITERATIONS_MIN,
                        crate::security::scram::ITERATIONS_MAX
                    ),
                );
                continue;
            }
            if upsertion.salt.is_empty()
                || upsertion.salted_password.len() != mechanism.output_bytes()
            {
                changes.fail(
                    ResponseError::UnacceptableCredential,
                    format!(
                        "the salt must not be empty and a {} salted password is {} bytes, not {}",
                        mechanism.name(),
                        mechanism.output_bytes(),
                        upsertion.salted_password.len()
                    ),
                );
                continue;
            }
            let credential = ScramCredential::from_salted_password(
                mechanism,
                &upsertion.salt,
                upsertion.iterations as u32,
                &upsertion.salted_password,
            );
            changes.commands.push(MetadataCommand::SetScramCredential {
                user: user.to_owned(),
                mechanism,
                credential,
            });
        }
    }
    let permitted = allowed(request, Operation::Alter);
    let mut results = Vec::with_capacity(users.len());
    for (user, changes) in users {
        let mut error = changes.error;
        if !permitted {
            error = Some((
                ResponseError::ClusterAuthorizationFailed,
                not_allowed(request).to_owned(),
            ));
        }
        if error.is_none() {
            for command in changes.commands {
                let refused = match request.broker.metadata.submit(command).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(refusal)) => refusal_error(refusal),
                    Err(failure) => (ResponseError::UnknownServerError, failure.to_string()),
                };
                error = Some(refused);
                break;
            }
            if error.is_none() {
                tracing::info!(user, principal = %request.session.principal(), "changed SCRAM credentials");
            }
        }
        let mut result = AlterUserScramCredentialsResult::default().with_user(str_bytes(&user));
        if let Some((code, message)) = error {
            result = result
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(&message)));
        }
        results.push(result);
    }
    request.respond(AlterUserScramCredentialsResponse::default().with_results(results))
}

fn refusal_error(refusal: Refusal) -> (ResponseError, String) {
    let code = match &refusal {
        Refusal::UnknownCredential(_) => ResponseError::ResourceNotFound,
        Refusal::UnacceptableCredential(_) => ResponseError::UnacceptableCredential,
        _ => ResponseError::InvalidRequest,
    };
    (code, refusal.to_string())
}
