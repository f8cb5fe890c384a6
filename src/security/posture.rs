//! The security posture, logged once at start (issue 20 item 6): every
//! Kafka listener with its protocol, what SASL offers, and what an operator
//! would want to know before exposing the broker.
//!
//! Warnings: a SASL listener with no user who could log in (nobody gets in
//! until `sluice users create` runs over another listener); PLAIN offered
//! without TLS (passwords travel in clear); SASL without an authorizer
//! (every user who logs in may do anything); an ACL authorizer whose ACLs
//! cannot apply to anyone but super users because no listener
//! authenticates. The exposure of each listener is `exposure.rs`'s.

use crate::broker::Broker;
use crate::config::{AuthorizerKind, ClientAuth, SaslMechanism, SecurityProtocol};

/// Log the posture of `broker`'s listeners and credentials.
pub fn log(broker: &Broker) {
    let security = &broker.config.security;
    let listeners: Vec<String> = (0..=broker.extra_listeners.len())
        .map(|index| {
            let listener = broker.listener(index);
            let (host, port) = &listener.advertised;
            if listener.name == listener.protocol.name() {
                format!("{}={host}:{port}", listener.name)
            } else {
                format!(
                    "{}({})={host}:{port}",
                    listener.name,
                    listener.protocol.name()
                )
            }
        })
        .collect();
    let any_sasl =
        (0..=broker.extra_listeners.len()).any(|index| broker.listener(index).protocol.uses_sasl());
    let snapshot = broker.metadata.snapshot();
    let users = snapshot.scram_credentials.len();
    let authorizer = match security.authorizer {
        AuthorizerKind::None => "none".to_owned(),
        AuthorizerKind::Acl => format!(
            "acl ({} ACLs, no-ACL default {})",
            snapshot.acls.len(),
            if security.allow_everyone_if_no_acl_found {
                "allow"
            } else {
                "deny"
            }
        ),
    };
    let mechanisms: Vec<&str> = security
        .mechanisms()
        .into_iter()
        .map(SaslMechanism::name)
        .collect();
    tracing::info!(
        listeners = %listeners.join(","),
        sasl_mechanisms = %if any_sasl { mechanisms.join(",") } else { "none".to_owned() },
        scram_users = users,
        super_users = security.super_users.len() + usize::from(!security.sasl_bootstrap_user.is_empty()),
        authorizer = %authorizer,
        tls_client_auth = if security.protocols().any(SecurityProtocol::uses_tls) {
            match security.tls.client_auth {
                ClientAuth::None => "none",
                ClientAuth::Requested => "requested",
                ClientAuth::Required => "required",
            }
        } else {
            "-"
        },
        "security posture"
    );
    if any_sasl && users == 0 {
        tracing::warn!(
            "a SASL listener is configured but no user has credentials: nobody can log in on it. \
             Set security.sasl_bootstrap_user with SLUICE_SASL_BOOTSTRAP_PASSWORD (it is made at \
             the next start)"
        );
    }
    let any_certificates = security.tls.client_auth != ClientAuth::None
        && security
            .protocols()
            .any(|protocol| protocol == SecurityProtocol::Ssl);
    let anonymous_listeners: Vec<String> = (0..=broker.extra_listeners.len())
        .map(|index| broker.listener(index))
        .filter(|listener| !listener.protocol.uses_sasl())
        .map(|listener| listener.name)
        .collect();
    if any_sasl && security.authorizer == AuthorizerKind::None {
        tracing::warn!(
            "SASL without an authorizer: every user who logs in may do anything except read or \
             change credentials (super users only). Set security.authorizer = \"acl\" and grant \
             what each user needs with `sluice acls add`"
        );
    }
    if security.authorizer == AuthorizerKind::Acl
        && !any_sasl
        && !any_certificates
        && !security.is_super_user(crate::kafka::session::ANONYMOUS)
    {
        tracing::warn!(
            "security.authorizer = \"acl\" but no listener authenticates: every client is \
             User:ANONYMOUS, which no super user entry names, so nobody can manage ACLs, users \
             or topics beyond what ACLs grant User:ANONYMOUS. Add a SASL or SSL listener with \
             client certificates, or \"User:ANONYMOUS\" to security.super_users"
        );
    } else if security.authorizer == AuthorizerKind::Acl
        && !anonymous_listeners.is_empty()
        && !security.is_super_user(crate::kafka::session::ANONYMOUS)
    {
        tracing::info!(
            listeners = %anonymous_listeners.join(","),
            "clients of these listeners that present no client certificate are User:ANONYMOUS \
             and get only what ACLs grant User:ANONYMOUS or User:*"
        );
    }
    let open_ssl = security
        .protocols()
        .any(|protocol| protocol == SecurityProtocol::Ssl)
        && security.tls.client_auth != ClientAuth::Required;
    if open_ssl && security.authorizer == AuthorizerKind::None {
        tracing::warn!(
            "an SSL listener takes clients without a certificate (security.tls.client_auth is \
             not \"required\") and there is no authorizer: anyone who connects may do anything. \
             Require client certificates, or set security.authorizer = \"acl\""
        );
    }
    if security.tls.client_auth == ClientAuth::None && !security.tls.client_ca.is_empty() {
        tracing::warn!(
            "security.tls.client_ca is set but client_auth = \"none\": client certificates are \
             not asked for; set client_auth = \"requested\" or \"required\""
        );
    }
    if security.authorizer == AuthorizerKind::Acl
        && security.super_users.is_empty()
        && security.sasl_bootstrap_user.is_empty()
    {
        tracing::warn!(
            "security.authorizer = \"acl\" with no super user (security.super_users, \
             security.sasl_bootstrap_user): only principals that ACLs already allow ALTER on the \
             cluster can grant ACLs"
        );
    }
    if security.authorizer == AuthorizerKind::None && !snapshot.acls.is_empty() {
        tracing::warn!(
            acls = snapshot.acls.len(),
            "ACLs are stored but security.authorizer = \"none\": they are not enforced, and \
             every client may do anything"
        );
    }
    if security.authorizer == AuthorizerKind::Acl && security.allow_everyone_if_no_acl_found {
        tracing::warn!(
            "security.allow_everyone_if_no_acl_found = true: every topic, group and transactional \
             id that no ACL names is open to every client, and so is the cluster itself until an \
             ACL names it: any client may then create ACLs and change passwords. Grant ALTER on \
             the cluster to an administrator (sluice acls add --cluster) to close it"
        );
    }
    let sasl_without_tls = (0..=broker.extra_listeners.len())
        .any(|index| broker.listener(index).protocol == SecurityProtocol::SaslPlaintext);
    if sasl_without_tls && security.mechanisms().contains(&SaslMechanism::Plain) {
        tracing::warn!(
            "SASL PLAIN is offered on a listener without TLS: clients send their passwords in \
             clear. Prefer SCRAM-SHA-256/512 (security.sasl_enabled_mechanisms)"
        );
    }
}
