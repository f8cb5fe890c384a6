//! `sluice users create|delete|list`: SCRAM credentials through
//! AlterUserScramCredentials and DescribeUserScramCredentials (KIP-554).
//!
//! `create` reads the password from the first line of standard input (not
//! an argument, which `ps` and shell history would show), salts and hashes
//! it here, and sends only the salted password, as Kafka's
//! `kafka-configs.sh --alter --add-config SCRAM-SHA-512=[password=...]`
//! does. On a SASL listener the command itself authenticates with
//! `SLUICE_SASL_USERNAME` / `SLUICE_SASL_PASSWORD` (a super user).

use std::io::BufRead;

use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, DescribeUserScramCredentialsRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::table::Table;
use super::{AdminResult, describe_error};
use crate::client::KafkaClient;
use crate::security::scram::{ITERATIONS_DEFAULT, ScramMechanism};

/// Which mechanisms a command acts on: one, or both.
pub fn mechanisms(name: Option<&str>) -> anyhow::Result<Vec<ScramMechanism>> {
    match name {
        None => Ok(ScramMechanism::ALL.to_vec()),
        Some(name) => ScramMechanism::from_name(name)
            .map(|mechanism| vec![mechanism])
            .ok_or_else(|| {
                anyhow::anyhow!("unknown mechanism {name}: SCRAM-SHA-256 or SCRAM-SHA-512")
            }),
    }
}

/// Create `user` (or change its password) for `mechanisms`.
pub fn create(
    brokers: &str,
    user: &str,
    mechanisms: &[ScramMechanism],
    iterations: Option<u32>,
) -> AdminResult {
    let mut password = String::new();
    std::io::stdin().lock().read_line(&mut password)?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        anyhow::bail!(
            "no password: give it on standard input (echo \"$PASSWORD\" | sluice users create {user})"
        );
    }
    let iterations = iterations.unwrap_or(ITERATIONS_DEFAULT);
    let upsertions = mechanisms
        .iter()
        .map(|mechanism| {
            let mut salt = vec![0u8; 32];
            crate::security::fill_random(&mut salt);
            let salted = mechanism.salted_password(password.as_bytes(), &salt, iterations);
            ScramCredentialUpsertion::default()
                .with_name(StrBytes::from_string(user.to_owned()))
                .with_mechanism(mechanism.code())
                .with_iterations(i32::try_from(iterations).unwrap_or(i32::MAX))
                .with_salt(salt.into())
                .with_salted_password(salted.into())
        })
        .collect();
    alter(
        brokers,
        AlterUserScramCredentialsRequest::default().with_upsertions(upsertions),
    )?;
    println!("user {user}: {}", names(mechanisms));
    Ok(())
}

/// Delete `user`'s credentials for `mechanisms` (default: those it has).
pub fn delete(brokers: &str, user: &str, mechanism: Option<&str>) -> AdminResult {
    let mechanisms = match mechanism {
        Some(_) => mechanisms(mechanism)?,
        None => {
            let mut client = KafkaClient::connect(brokers)?;
            let described = client.call(
                &DescribeUserScramCredentialsRequest::default().with_users(Some(vec![
                    UserName::default().with_name(StrBytes::from_string(user.to_owned())),
                ])),
            )?;
            check(described.error_code, described.error_message.as_deref())?;
            let result = described.results.first();
            if let Some(result) = result {
                check(result.error_code, result.error_message.as_deref())?;
            }
            result
                .into_iter()
                .flat_map(|result| &result.credential_infos)
                .filter_map(|info| ScramMechanism::from_code(info.mechanism))
                .collect()
        }
    };
    let deletions = mechanisms
        .iter()
        .map(|mechanism| {
            ScramCredentialDeletion::default()
                .with_name(StrBytes::from_string(user.to_owned()))
                .with_mechanism(mechanism.code())
        })
        .collect();
    alter(
        brokers,
        AlterUserScramCredentialsRequest::default().with_deletions(deletions),
    )?;
    println!("deleted user {user}: {}", names(&mechanisms));
    Ok(())
}

/// Every user with SCRAM credentials, and their mechanisms and iterations.
pub fn list(brokers: &str) -> AdminResult {
    let mut client = KafkaClient::connect(brokers)?;
    let described = client.call(&DescribeUserScramCredentialsRequest::default())?;
    check(described.error_code, described.error_message.as_deref())?;
    let mut table = Table::new(&["USER", "MECHANISM", "ITERATIONS"]);
    for result in &described.results {
        for info in &result.credential_infos {
            let mechanism = ScramMechanism::from_code(info.mechanism)
                .map_or_else(|| info.mechanism.to_string(), |m| m.name().to_owned());
            table.row(vec![
                result.user.to_string(),
                mechanism,
                info.iterations.to_string(),
            ]);
        }
    }
    print!("{}", table.render());
    Ok(())
}

fn alter(brokers: &str, request: AlterUserScramCredentialsRequest) -> AdminResult {
    let mut client = KafkaClient::connect(brokers)?;
    let response = client.call(&request)?;
    for result in &response.results {
        if result.error_code != 0 {
            anyhow::bail!(
                "user {}: {}",
                result.user.as_str(),
                describe_error(result.error_code, result.error_message.as_deref())
            );
        }
    }
    Ok(())
}

fn check(code: i16, message: Option<&str>) -> AdminResult {
    if code != 0 {
        anyhow::bail!(describe_error(code, message));
    }
    Ok(())
}

fn names(mechanisms: &[ScramMechanism]) -> String {
    mechanisms
        .iter()
        .map(|mechanism| mechanism.name())
        .collect::<Vec<_>>()
        .join(", ")
}
