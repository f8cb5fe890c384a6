//! The TLS listeners' server side (issue 20 item 2): rustls (ring
//! provider, TLS 1.2 and 1.3), configured from `[security.tls]`.
//!
//! The certificate chain, private key and client CA are PEM files read at
//! start (a bad file stops the start, naming it) and again on SIGHUP
//! ([`TlsServer::reload`]): a reload that fails is logged and the previous
//! configuration stays. Connections already open keep the configuration
//! they started with; new ones get the new one.
//!
//! With `client_auth = "requested"` or `"required"` client certificates are
//! verified against `client_ca` (webpki); the subject of a verified one,
//! as RFC 2253 prints it, becomes the connection's user through
//! `principal_mapping_rules` ([`super::principal_mapping`]) on an SSL
//! listener. On SASL_SSL the SASL login names the principal, as in Kafka.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::principal_mapping::Rules;
use crate::config::{ClientAuth, TlsConfig};

/// Why the TLS configuration cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} PEM file {path}: {reason}")]
    File {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("{path} holds no PEM {what}")]
    Empty { what: &'static str, path: String },
    #[error("the TLS configuration is refused: {0}")]
    Rustls(String),
    #[error("security.tls.principal_mapping_rules: {0}")]
    Rules(String),
}

/// What every TLS listener accepts connections with.
pub struct TlsServer {
    settings: TlsConfig,
    current: ArcSwap<ServerConfig>,
    rules: Rules,
}

/// Refuse what is not a regular file before opening it: a FIFO would
/// block the main thread (and with it SIGTERM) on SIGHUP.
fn regular_file(what: &'static str, path: &str) -> Result<(), TlsError> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => Ok(()),
        Ok(_) => Err(TlsError::File {
            what,
            path: path.to_owned(),
            reason: "not a regular file".to_owned(),
        }),
        Err(error) => Err(TlsError::File {
            what,
            path: path.to_owned(),
            reason: error.to_string(),
        }),
    }
}

fn certificates(what: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    regular_file(what, path)?;
    let file_error = |reason: String| TlsError::File {
        what,
        path: path.to_owned(),
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(|error| file_error(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| file_error(error.to_string()))?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// A rustls server configuration from `settings`.
fn server_config(settings: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let chain = certificates("certificate", &settings.certificate)?;
    regular_file("private key", &settings.private_key)?;
    let key = PrivateKeyDer::from_pem_file(Path::new(&settings.private_key)).map_err(|error| {
        TlsError::File {
            what: "private key",
            path: settings.private_key.clone(),
            reason: format!(
                "{error} (an unencrypted PKCS#8, PKCS#1 or SEC1 key; decrypt an encrypted one \
                 with `openssl pkey -in KEY -out KEY.plain`)"
            ),
        }
    })?;
    describe_certificate(&settings.certificate, &chain[0]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let rustls_error = |error: rustls::Error| TlsError::Rustls(error.to_string());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?;
    let builder = match settings.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Requested | ClientAuth::Required => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates("CA certificate", &settings.client_ca)? {
                roots.add(certificate).map_err(rustls_error)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = if settings.client_auth == ClientAuth::Requested {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|error| TlsError::Rustls(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|error| {
        TlsError::Rustls(format!(
            "{error}: {} and {} must be an X.509 v3 certificate (with a subjectAltName for the \
             names and addresses clients connect to) and its own key",
            settings.certificate, settings.private_key
        ))
    })?;
    // Kafka clients do not resume sessions across connections often enough
    // to matter; tickets would only add key material to rotate.
    config.send_tls13_tickets = 0;
    Ok(config)
}

impl TlsServer {
    /// Load `settings` (the start fails on an error).
    pub fn load(settings: &TlsConfig) -> Result<TlsServer, TlsError> {
        let rules = Rules::parse(&settings.principal_mapping_rules).map_err(TlsError::Rules)?;
        let config = server_config(settings)?;
        Ok(TlsServer {
            settings: settings.clone(),
            current: ArcSwap::from_pointee(config),
            rules,
        })
    }

    /// The configuration new connections use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Read the files again (SIGHUP). On an error the configuration in use
    /// stays, and the error is returned for the log.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.settings)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// The user name for a verified client certificate (DER), or why it has
    /// none: a subject that does not parse, or one no mapping rule matches.
    pub fn principal(&self, certificate: &[u8]) -> Result<String, String> {
        let subject = subject(certificate)?;
        self.rules
            .map(&subject)
            .ok_or_else(|| format!("no principal mapping rule matches the subject {subject:?}"))
    }
}

/// Log the broker certificate's subject and expiry; warn when it has
/// expired (clients will refuse it) or expires within a week.
fn describe_certificate(path: &str, leaf: &CertificateDer<'_>) {
    use x509_cert::der::Decode;
    let Ok(parsed) = x509_cert::Certificate::from_der(leaf.as_ref()) else {
        return;
    };
    let tbs = &parsed.tbs_certificate;
    let not_after = tbs.validity.not_after.to_system_time();
    let left = not_after.duration_since(std::time::SystemTime::now());
    let subject = tbs.subject.to_string();
    let expires = tbs.validity.not_after.to_string();
    match left {
        Err(_) => tracing::warn!(
            path,
            %subject,
            %expires,
            "the TLS certificate has expired: clients will refuse it; replace the file and send SIGHUP"
        ),
        Ok(left) if left < std::time::Duration::from_secs(7 * 86_400) => tracing::warn!(
            path,
            %subject,
            %expires,
            "the TLS certificate expires within a week: replace the file and send SIGHUP"
        ),
        Ok(_) => tracing::info!(path, %subject, %expires, "TLS certificate"),
    }
}

/// A certificate's subject as RFC 2253 (RFC 4514) prints it: most
/// specific attribute first, `CN=alice,OU=eng,O=Example`, as Kafka's
/// `X500Principal.getName()`.
pub fn subject(certificate: &[u8]) -> Result<String, String> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(certificate)
        .map_err(|error| format!("the client certificate does not parse: {error}"))?;
    Ok(parsed.tbs_certificate.subject.to_string())
}
