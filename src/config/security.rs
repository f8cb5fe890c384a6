//! The `[security]` section: how clients authenticate (issue 20).
//!
//! The default is Kafka's: `PLAINTEXT`, no authentication, every client is
//! `User:ANONYMOUS` and may do anything. With `security_protocol =
//! "SASL_PLAINTEXT"` every connection must authenticate (SaslHandshake and
//! SaslAuthenticate, KIP-43 and KIP-152) with one of
//! `sasl_enabled_mechanisms` before any other request but ApiVersions.
//! Credentials live in the cluster metadata (`sluice users`, KIP-554's
//! AlterUserScramCredentials); the first one comes from
//! `sasl_bootstrap_user` and the environment variable
//! [`BOOTSTRAP_PASSWORD_ENV`], so that no password sits in a config file.

use serde::Deserialize;

use super::{ConfigError, invalid};
use crate::security::scram::ScramMechanism;

/// The environment variable holding `sasl_bootstrap_user`'s password.
pub const BOOTSTRAP_PASSWORD_ENV: &str = "SLUICE_SASL_BOOTSTRAP_PASSWORD";

/// Kafka's security protocols.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No authentication, no encryption.
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    /// SASL authentication over plain TCP.
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// TLS (`[security.tls]`); the principal is the client certificate's,
    /// if it sent one, else `User:ANONYMOUS`.
    #[serde(rename = "SSL")]
    Ssl,
    /// SASL authentication inside TLS.
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    /// Kafka's name for it.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// Whether a TLS listener asks for client certificates (Kafka's
/// `ssl.client.auth`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates (default).
    #[default]
    #[serde(rename = "none")]
    None,
    /// Clients may present one; it names the principal on an SSL listener.
    #[serde(rename = "requested")]
    Requested,
    /// Clients must present one signed by `client_ca`.
    #[serde(rename = "required")]
    Required,
}

/// `[security.tls]`: the certificate every TLS listener (SSL, SASL_SSL)
/// presents, and client-certificate authentication. Files are PEM, read at
/// start and again on SIGHUP.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, leaf first (Kafka's keystore).
    pub certificate: String,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: String,
    /// `none` (default), `requested` or `required` (Kafka's
    /// `ssl.client.auth`).
    pub client_auth: ClientAuth,
    /// The CA certificates client certificates must chain to (Kafka's
    /// truststore); needed unless `client_auth` is `none`.
    pub client_ca: String,
    /// How a client certificate's subject (RFC 2253, `CN=alice,O=Example`)
    /// becomes a user name (Kafka's `ssl.principal.mapping.rules`):
    /// `RULE:<regex>/<replacement>/[L|U]` rules, comma-separated, tried in
    /// order, and `DEFAULT` (the whole subject). Default `DEFAULT`.
    pub principal_mapping_rules: String,
}

/// Who decides what a principal may do (Kafka's `authorizer.class.name`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum AuthorizerKind {
    /// No authorizer: every client may do everything, as in Kafka without
    /// one (CreateAcls and its siblings answer SECURITY_DISABLED).
    #[default]
    #[serde(rename = "none")]
    None,
    /// Kafka's ACLs (`security/acl.rs`), kept in the cluster metadata and
    /// consulted on every request; super users bypass them.
    #[serde(rename = "acl")]
    Acl,
}

impl AuthorizerKind {
    pub fn name(self) -> &'static str {
        match self {
            AuthorizerKind::None => "none",
            AuthorizerKind::Acl => "acl",
        }
    }
}

/// A SASL mechanism the broker can offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SaslMechanism {
    Plain,
    Scram(ScramMechanism),
}

impl SaslMechanism {
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::Scram(scram) => scram.name(),
        }
    }

    /// The mechanism a client names (case as Kafka: exact).
    pub fn from_name(name: &str) -> Option<SaslMechanism> {
        if name == "PLAIN" {
            return Some(SaslMechanism::Plain);
        }
        ScramMechanism::ALL
            .into_iter()
            .find(|scram| scram.name() == name)
            .map(SaslMechanism::Scram)
    }
}

/// A Kafka listener besides the main one (`kafka.listen`), as Kafka's
/// `listeners` / `advertised.listeners` / `listener.security.protocol.map`
/// name them together: `[[security.listeners]]` in the config file.
/// Metadata, DescribeCluster, FindCoordinator and Produce's leader hints
/// answer a client with the addresses of the listener it came in on.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Its name (letters, digits, `_`, `-`; at most 64 bytes), unique and
    /// not the main listener's (its security protocol's name).
    pub name: String,
    /// `host:port` every shard listens on.
    pub listen: String,
    /// `host:port` clients of this listener are told to connect to; empty =
    /// `listen` (with the host name instead of an unspecified address). In
    /// a cluster every node must have a listener of this name.
    #[serde(default)]
    pub advertised: String,
    /// `PLAINTEXT` (default), `SASL_PLAINTEXT`, `SSL` or `SASL_SSL`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
}

/// The most listeners besides the main one.
pub const EXTRA_LISTENERS_MAX: usize = 8;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// `PLAINTEXT` (default) or `SASL_PLAINTEXT`: the Kafka listener's
    /// security protocol (Kafka's `listener.security.protocol.map`).
    pub security_protocol: SecurityProtocol,
    /// Mechanisms offered on a SASL listener, in the order SaslHandshake
    /// lists them (Kafka's `sasl.enabled.mechanisms`): `SCRAM-SHA-256`,
    /// `SCRAM-SHA-512`, `PLAIN`. Default the two SCRAM ones: PLAIN sends
    /// the password itself, which only TLS should carry.
    pub sasl_enabled_mechanisms: Vec<String>,
    /// Principals allowed everything, as `User:<name>` (Kafka's
    /// `super.users`, `;`-separated there, a list here).
    pub super_users: Vec<String>,
    /// A user created at start with SCRAM-SHA-256 and SCRAM-SHA-512
    /// credentials for the password in `SLUICE_SASL_BOOTSTRAP_PASSWORD`,
    /// if it has none yet, and made a super user: the first administrator.
    /// Empty: none.
    pub sasl_bootstrap_user: String,
    /// Listeners besides `kafka.listen` (whose protocol is
    /// `security_protocol` and whose name is that protocol's), each with
    /// its own protocol and advertised address; default none.
    pub listeners: Vec<ListenerConfig>,
    /// `none` (default: everything allowed) or `acl`: Kafka's ACLs decide
    /// what each principal may do, managed with CreateAcls, DescribeAcls,
    /// DeleteAcls and `sluice acls`.
    pub authorizer: AuthorizerKind,
    /// With `authorizer = "acl"`: whether a resource no ACL names is open
    /// to everyone (Kafka's `allow.everyone.if.no.acl.found`). Default
    /// false: what no ACL allows is denied.
    pub allow_everyone_if_no_acl_found: bool,
    /// The TLS listeners' certificate and client authentication.
    pub tls: TlsConfig,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            security_protocol: SecurityProtocol::Plaintext,
            sasl_enabled_mechanisms: vec!["SCRAM-SHA-256".to_owned(), "SCRAM-SHA-512".to_owned()],
            super_users: Vec::new(),
            sasl_bootstrap_user: String::new(),
            listeners: Vec::new(),
            authorizer: AuthorizerKind::None,
            allow_everyone_if_no_acl_found: false,
            tls: TlsConfig::default(),
        }
    }
}

impl SecurityConfig {
    fn check_mechanisms(&self) -> Result<(), ConfigError> {
        if self.sasl_enabled_mechanisms.is_empty() {
            return invalid(
                "security.sasl_enabled_mechanisms",
                "[]",
                "a SASL listener needs at least one of SCRAM-SHA-256, SCRAM-SHA-512, PLAIN",
            );
        }
        Ok(())
    }

    /// The protocols of every listener, the main one first.
    pub fn protocols(&self) -> impl Iterator<Item = SecurityProtocol> + '_ {
        std::iter::once(self.security_protocol).chain(
            self.listeners
                .iter()
                .map(|listener| listener.security_protocol),
        )
    }

    fn check_tls(&self) -> Result<(), ConfigError> {
        if !self.protocols().any(SecurityProtocol::uses_tls) {
            return Ok(());
        }
        let tls = &self.tls;
        if tls.certificate.is_empty() || tls.private_key.is_empty() {
            return invalid(
                "security.tls.certificate",
                format!("{:?}", tls.certificate),
                "an SSL or SASL_SSL listener needs security.tls.certificate and \
                 security.tls.private_key (PEM files)",
            );
        }
        if tls.client_auth != ClientAuth::None && tls.client_ca.is_empty() {
            return invalid(
                "security.tls.client_ca",
                "\"\"",
                "client_auth other than \"none\" needs the CA certificates (PEM) that client \
                 certificates chain to",
            );
        }
        if let Err(reason) =
            crate::security::principal_mapping::Rules::parse(&tls.principal_mapping_rules)
        {
            return invalid(
                "security.tls.principal_mapping_rules",
                &tls.principal_mapping_rules,
                reason,
            );
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.security_protocol.uses_sasl() {
            self.check_mechanisms()?;
        }
        self.check_tls()?;
        for name in &self.sasl_enabled_mechanisms {
            if SaslMechanism::from_name(name).is_none() {
                return invalid(
                    "security.sasl_enabled_mechanisms",
                    name,
                    "expected SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN",
                );
            }
        }
        for principal in &self.super_users {
            if principal.strip_prefix("User:").is_none_or(str::is_empty) {
                return invalid("security.super_users", principal, "expected User:<name>");
            }
        }
        if self.listeners.len() > EXTRA_LISTENERS_MAX {
            return invalid(
                "security.listeners",
                self.listeners.len(),
                format!("at most {EXTRA_LISTENERS_MAX} listeners besides kafka.listen"),
            );
        }
        let mut names = vec![self.security_protocol.name().to_owned()];
        for listener in &self.listeners {
            let name = &listener.name;
            let well_formed = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !well_formed {
                return invalid(
                    "security.listeners.name",
                    name,
                    "1 to 64 letters, digits, '_' or '-'",
                );
            }
            if names.contains(name) {
                return invalid(
                    "security.listeners.name",
                    name,
                    "listener names must be unique; the main listener (kafka.listen) is named \
                     after its security_protocol",
                );
            }
            names.push(name.clone());
            super::parse_address("security.listeners.listen", &listener.listen)?;
            super::check_advertised("security.listeners.advertised", &listener.advertised)?;
            if listener.security_protocol.uses_sasl() {
                self.check_mechanisms()?;
            }
        }
        if self.sasl_bootstrap_user.len() > crate::broker::metadata_command::SCRAM_USER_BYTES_MAX {
            return invalid(
                "security.sasl_bootstrap_user",
                &self.sasl_bootstrap_user,
                "at most 256 bytes",
            );
        }
        Ok(())
    }

    /// The enabled mechanisms, in configured order (validated).
    pub fn mechanisms(&self) -> Vec<SaslMechanism> {
        self.sasl_enabled_mechanisms
            .iter()
            .filter_map(|name| SaslMechanism::from_name(name))
            .collect()
    }

    /// Whether `user` is a super user (listed, or the bootstrap user).
    pub fn is_super_user(&self, user: &str) -> bool {
        (!self.sasl_bootstrap_user.is_empty() && self.sasl_bootstrap_user == user)
            || self
                .super_users
                .iter()
                .any(|principal| principal.strip_prefix("User:") == Some(user))
    }
}
