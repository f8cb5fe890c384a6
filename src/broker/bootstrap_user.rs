//! The first administrator of a SASL listener (issue 20):
//! `security.sasl_bootstrap_user` with the password in
//! `SLUICE_SASL_BOOTSTRAP_PASSWORD`, created at start with SCRAM-SHA-256
//! and SCRAM-SHA-512 credentials if the user has none. An existing user is
//! left as it is: its password changes only through
//! AlterUserScramCredentials (`sluice users create`), so restarting with
//! an old environment never undoes a change.
//!
//! A single node does this at start, before it serves; a cluster node once
//! it has joined (its metadata lives in the controller), through the
//! controller, so every node agrees. Nodes starting together may each
//! write the credentials (with their own salt): give every node the same
//! password, and whichever write is last is as good as the others.

use thiserror::Error;

use super::metadata::{MetadataError, MetadataStore};
use super::metadata_command::MetadataCommand;
use crate::config::{BOOTSTRAP_PASSWORD_ENV, SecurityConfig};
use crate::security::scram::{ITERATIONS_DEFAULT, ScramCredential, ScramMechanism};

#[derive(Debug, Error)]
pub enum BootstrapUserError {
    #[error(
        "security.sasl_bootstrap_user = {user:?} has no credentials yet and {BOOTSTRAP_PASSWORD_ENV} is not set (or empty): set it to the user's password for this start"
    )]
    NoPassword { user: String },
    #[error("cannot create the bootstrap user {user:?}: {reason}")]
    Refused { user: String, reason: String },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

/// Create the bootstrap user if configured and missing. Blocking (PBKDF2
/// and a metadata write, through the controller in a cluster); at start,
/// on the main thread.
pub fn ensure(
    metadata: &MetadataStore,
    security: &SecurityConfig,
) -> Result<(), BootstrapUserError> {
    let user = &security.sasl_bootstrap_user;
    if user.is_empty() {
        return Ok(());
    }
    if metadata.snapshot().scram_credentials.contains_key(user) {
        if std::env::var_os(BOOTSTRAP_PASSWORD_ENV).is_some() {
            tracing::info!(
                user,
                "the bootstrap user (security.sasl_bootstrap_user) has credentials already: \
                 {BOOTSTRAP_PASSWORD_ENV} is ignored (change its password with `sluice users create`)"
            );
        }
        return Ok(());
    }
    let password = std::env::var(BOOTSTRAP_PASSWORD_ENV)
        .ok()
        .filter(|password| !password.is_empty())
        .ok_or_else(|| BootstrapUserError::NoPassword { user: user.clone() })?;
    for mechanism in ScramMechanism::ALL {
        let credential = ScramCredential::from_password(mechanism, &password, ITERATIONS_DEFAULT);
        let command = MetadataCommand::SetScramCredential {
            user: user.clone(),
            mechanism,
            credential,
        };
        let committed = if metadata.is_replicated() {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(|source| BootstrapUserError::Refused {
                    user: user.clone(),
                    reason: format!("cannot wait for the controller: {source}"),
                })?
                .block_on(metadata.submit(command))
        } else {
            metadata.submit_blocking(command)
        };
        committed?.map_err(|refusal| BootstrapUserError::Refused {
            user: user.clone(),
            reason: refusal.to_string(),
        })?;
    }
    tracing::info!(
        user,
        "created the bootstrap user (security.sasl_bootstrap_user) with SCRAM-SHA-256 and SCRAM-SHA-512 credentials"
    );
    Ok(())
}
