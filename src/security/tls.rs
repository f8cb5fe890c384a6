//! The TLS listeners' server side (issue 20 item 2): rustls (ring
//! provider, TLS 1.2 and 1.3), configured from `[security.tls]`.
//!
//! The certificate chain, private key and client CA are PEM files read at
//! start (a bad file stops the start, naming it) and again on SIGHUP
//! ([`TlsServer::reload`]): a reload that fails is logged and the previous
//! configuration stays. An expired certificate is refused like a bad file;
//! one whose subjectAltName misses an advertised name is logged. Connections already open keep the configuration
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
    #[error(
        "the TLS certificate {path} ({subject}) expired at {expires}: every client would refuse \
         it; replace the file (and send SIGHUP to a running broker)"
    )]
    Expired {
        path: String,
        subject: String,
        expires: String,
    },
}

/// What every TLS listener accepts connections with.
pub struct TlsServer {
    settings: TlsConfig,
    /// The host names and addresses the TLS listeners advertise, which the
    /// certificate should cover.
    advertised_hosts: Vec<String>,
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

/// A rustls server configuration from `settings`, for listeners that
/// advertise `advertised_hosts`.
fn server_config(
    settings: &TlsConfig,
    advertised_hosts: &[String],
) -> Result<ServerConfig, TlsError> {
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
    check_certificate(&settings.certificate, &chain[0], advertised_hosts)?;
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
    /// Load `settings` for TLS listeners that advertise `advertised_hosts`
    /// (the start fails on an error).
    pub fn load(
        settings: &TlsConfig,
        advertised_hosts: Vec<String>,
    ) -> Result<TlsServer, TlsError> {
        let rules = Rules::parse(&settings.principal_mapping_rules).map_err(TlsError::Rules)?;
        let config = server_config(settings, &advertised_hosts)?;
        Ok(TlsServer {
            settings: settings.clone(),
            advertised_hosts,
            current: ArcSwap::from_pointee(config),
            rules,
        })
    }

    /// What a reload reads, for its log line.
    pub fn files(&self) -> &'static str {
        match self.settings.client_auth {
            ClientAuth::None => "the TLS certificate and key",
            ClientAuth::Requested | ClientAuth::Required => {
                "the TLS certificate, key and client CA"
            }
        }
    }

    /// The configuration new connections use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Read the files again (SIGHUP). On an error the configuration in use
    /// stays, and the error is returned for the log.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.settings, &self.advertised_hosts)?;
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

/// Check the broker certificate and log its subject and expiry: an
/// expired one is refused (clients would refuse it); one that expires
/// within a week, or whose subjectAltName does not cover a name the TLS
/// listeners advertise (clients check the name they connect to), is
/// logged with a warning.
fn check_certificate(
    path: &str,
    leaf: &CertificateDer<'_>,
    advertised_hosts: &[String],
) -> Result<(), TlsError> {
    use x509_cert::der::Decode;
    let Ok(parsed) = x509_cert::Certificate::from_der(leaf.as_ref()) else {
        // rustls refuses it with its own reason.
        return Ok(());
    };
    let tbs = &parsed.tbs_certificate;
    let not_after = tbs.validity.not_after.to_system_time();
    let left = not_after.duration_since(std::time::SystemTime::now());
    let subject = tbs.subject.to_string();
    let expires = tbs.validity.not_after.to_string();
    match left {
        Err(_) => {
            return Err(TlsError::Expired {
                path: path.to_owned(),
                subject,
                expires,
            });
        }
        Ok(left) if left < std::time::Duration::from_secs(7 * 86_400) => tracing::warn!(
            path,
            %subject,
            %expires,
            "the TLS certificate expires within a week: replace the file and send SIGHUP"
        ),
        Ok(_) => tracing::info!(path, %subject, %expires, "TLS certificate"),
    }
    let names = alt_names(tbs);
    let uncovered: Vec<&str> = advertised_hosts
        .iter()
        .map(String::as_str)
        .filter(|host| !names.covers(host))
        .collect();
    if !uncovered.is_empty() {
        tracing::warn!(
            path,
            advertised = ?uncovered,
            subject_alt_names = ?names.listed(),
            "the TLS certificate's subjectAltName does not cover these advertised names: \
             clients that connect to them will refuse the certificate (\"certificate verify \
             failed\"); add them to the certificate or correct the listeners' `advertised`"
        );
    }
    Ok(())
}

/// The DNS names and IP addresses a certificate's subjectAltName lists.
#[derive(Debug, Default, PartialEq)]
struct AltNames {
    dns: Vec<String>,
    ips: Vec<std::net::IpAddr>,
}

fn alt_names(tbs: &x509_cert::TbsCertificate) -> AltNames {
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let mut names = AltNames::default();
    let Ok(Some((_, SubjectAltName(general)))) = tbs.get::<SubjectAltName>() else {
        return names;
    };
    for name in general {
        match name {
            GeneralName::DnsName(dns) => names.dns.push(dns.as_str().to_ascii_lowercase()),
            GeneralName::IpAddress(octets) => match octets.as_bytes().len() {
                4 => names.ips.push(std::net::IpAddr::from(
                    <[u8; 4]>::try_from(octets.as_bytes()).expect("4 bytes"),
                )),
                16 => names.ips.push(std::net::IpAddr::from(
                    <[u8; 16]>::try_from(octets.as_bytes()).expect("16 bytes"),
                )),
                _ => {}
            },
            _ => {}
        }
    }
    names
}

impl AltNames {
    /// Whether a client connecting to `host` (a name or an address)
    /// accepts the certificate by name: an exact DNS name, a wildcard for
    /// its leftmost label (RFC 6125), or the same address.
    fn covers(&self, host: &str) -> bool {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            return self.ips.contains(&ip);
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.dns.iter().any(|name| match name.strip_prefix("*.") {
            Some(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => *name == host,
        })
    }

    fn listed(&self) -> Vec<String> {
        self.dns
            .iter()
            .cloned()
            .chain(self.ips.iter().map(ToString::to_string))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_names_cover_exact_names_one_wildcard_label_and_addresses() {
        let names = AltNames {
            dns: vec![
                "broker1.example.com".to_owned(),
                "*.kafka.example.com".to_owned(),
            ],
            ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        };
        for covered in [
            "broker1.example.com",
            "BROKER1.example.com.",
            "b2.kafka.example.com",
            "127.0.0.1",
            "[::1]",
        ] {
            assert!(names.covers(covered), "{covered}");
        }
        for uncovered in [
            "localhost",
            "example.com",
            "kafka.example.com",
            "a.b.kafka.example.com",
            "127.0.0.2",
        ] {
            assert!(!names.covers(uncovered), "{uncovered}");
        }
    }
}
