//! A small blocking Kafka client for the admin commands: one connection,
//! requests encoded with kafka-protocol at the highest version both sides
//! speak (learned with ApiVersions when connecting).
//!
//! With `SLUICE_SASL_USERNAME` and `SLUICE_SASL_PASSWORD` in the
//! environment it authenticates after ApiVersions (SaslHandshake v1 and
//! SaslAuthenticate, KIP-152) with `SLUICE_SASL_MECHANISM` (default
//! SCRAM-SHA-512; SCRAM-SHA-256 and PLAIN too), as a SASL listener needs.
//!
//! With `SLUICE_TLS_CA` (the CA certificates, PEM, that the broker's
//! certificate chains to) it speaks TLS, as an SSL or SASL_SSL listener
//! needs, checking the broker's certificate against the host name or IP
//! address in `--brokers`; `SLUICE_TLS_CERTIFICATE` and `SLUICE_TLS_KEY`
//! present a client certificate (mTLS).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use thiserror::Error;

/// How long a request may take before the command gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted.
const RESPONSE_MAX_BYTES: usize = 256 * 1024 * 1024;
const CLIENT_ID: &str = "sluice-admin";

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot connect to {address}: {source} (is the broker running? see --brokers)")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection to {address} failed: {source}")]
    Io {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the broker at {address} does not support {key:?} (versions {min}..={max} are needed)")]
    Unsupported {
        address: String,
        key: ApiKey,
        min: i16,
        max: i16,
    },
    #[error("cannot encode or decode {key:?}: {source}")]
    Codec {
        key: ApiKey,
        #[source]
        source: anyhow::Error,
    },
    /// `R::KEY` of a request type kafka-protocol itself does not list (a
    /// mismatch inside kafka-protocol: a bug).
    #[error("API key {0} is not one kafka-protocol knows")]
    UnknownApiKey(i16),
    #[error("response {found} does not answer request {expected}")]
    Correlation { expected: i32, found: i32 },
    #[error("response of {0} bytes is larger than the client accepts")]
    TooLarge(usize),
    #[error(
        "no answer from {address} within {} s: the broker is overloaded or, in a cluster, \
         has no controller majority (topic, config and group changes need one)",
        REQUEST_TIMEOUT.as_secs()
    )]
    TimedOut { address: String },
    #[error("the broker at {address} closed the connection in the middle of a response")]
    Truncated { address: String },
    #[error("SASL authentication with {address} failed: {reason}")]
    Authentication { address: String, reason: String },
    #[error(
        "the broker at {address} closed the connection without an answer (a SASL listener \
         closes connections that have not logged in: set {SASL_USERNAME_ENV} and \
         {SASL_PASSWORD_ENV}; its log says why)"
    )]
    Closed { address: String },
}

/// Kafka's ILLEGAL_SASL_STATE: a SaslHandshake where none is expected.
const ILLEGAL_SASL_STATE: i16 = 34;

/// The environment variables of the client's SASL credentials.
pub const SASL_USERNAME_ENV: &str = "SLUICE_SASL_USERNAME";
pub const SASL_PASSWORD_ENV: &str = "SLUICE_SASL_PASSWORD";
pub const SASL_MECHANISM_ENV: &str = "SLUICE_SASL_MECHANISM";

pub const TLS_CA_ENV: &str = "SLUICE_TLS_CA";
pub const TLS_CERTIFICATE_ENV: &str = "SLUICE_TLS_CERTIFICATE";
pub const TLS_KEY_ENV: &str = "SLUICE_TLS_KEY";

/// The connection: TCP, or TLS over it.
trait Stream: Read + Write + Send {}
impl<S: Read + Write + Send> Stream for S {}

/// A TLS client configuration from the environment, or `None` without
/// `SLUICE_TLS_CA`.
fn tls_from_env() -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, ClientError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let Ok(ca) = std::env::var(TLS_CA_ENV) else {
        return Ok(None);
    };
    let setting = |name: &str, error: String| ClientError::Tls(format!("{name}: {error}"));
    let mut roots = rustls::RootCertStore::empty();
    for certificate in
        CertificateDer::pem_file_iter(&ca).map_err(|e| setting(TLS_CA_ENV, e.to_string()))?
    {
        let certificate = certificate.map_err(|e| setting(TLS_CA_ENV, e.to_string()))?;
        roots
            .add(certificate)
            .map_err(|e| setting(TLS_CA_ENV, e.to_string()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (
        std::env::var(TLS_CERTIFICATE_ENV),
        std::env::var(TLS_KEY_ENV),
    ) {
        (Ok(certificate), Ok(key)) => {
            let chain = CertificateDer::pem_file_iter(&certificate)
                .and_then(|chain| chain.collect::<Result<Vec<_>, _>>())
                .map_err(|e| setting(TLS_CERTIFICATE_ENV, e.to_string()))?;
            let key = PrivateKeyDer::from_pem_file(&key)
                .map_err(|e| setting(TLS_KEY_ENV, e.to_string()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                ClientError::Tls(format!(
                    "{TLS_CERTIFICATE_ENV} and {TLS_KEY_ENV} are refused here, before any \
                     connection: {e} (they must be an X.509 v3 certificate, signed with \
                     extensions such as `openssl x509 -req -extfile`, and its own key)"
                ))
            })?
        }
        (Err(_), Err(_)) => builder.with_no_client_auth(),
        _ => {
            return Err(ClientError::Tls(format!(
                "set both {TLS_CERTIFICATE_ENV} and {TLS_KEY_ENV}, or neither"
            )));
        }
    };
    Ok(Some(std::sync::Arc::new(config)))
}

/// The first exchange's `error`, explained when this client spoke TLS and
/// the broker closed the connection: the listener is most likely not a
/// TLS one (a Kafka listener closes on a ClientHello).
fn explain_tls_close(tls: bool, address: &str, error: ClientError) -> ClientError {
    let closed = match &error {
        ClientError::Closed { .. } => true,
        ClientError::Io { source, .. } => matches!(
            source.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        _ => false,
    };
    if !tls || !closed {
        return error;
    }
    ClientError::Tls(format!(
        "{address} closed the connection during the TLS handshake: it is most likely a \
         PLAINTEXT or SASL_PLAINTEXT listener; unset {TLS_CA_ENV} for it"
    ))
}

/// `stream` wrapped in TLS for the host of `address`.
fn tls_stream(
    config: std::sync::Arc<rustls::ClientConfig>,
    address: &str,
    stream: TcpStream,
) -> Result<Box<dyn Stream>, ClientError> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| ClientError::Tls(format!("{host}: {e}")))?;
    let connection =
        rustls::ClientConnection::new(config, name).map_err(|e| ClientError::Tls(e.to_string()))?;
    Ok(Box::new(rustls::StreamOwned::new(connection, stream)))
}

pub struct KafkaClient {
    address: String,
    stream: Box<dyn Stream>,
    next_correlation_id: i32,
    /// Broker's supported (min, max) per API key.
    versions: HashMap<i16, (i16, i16)>,
}

impl KafkaClient {
    /// Connect to the first of `brokers` (comma-separated `host:port`) that
    /// answers, and learn its API versions.
    pub fn connect(brokers: &str) -> Result<KafkaClient, ClientError> {
        let mut last_error = None;
        let tls = tls_from_env()?;
        for address in brokers
            .split(',')
            .map(str::trim)
            .filter(|address| !address.is_empty())
        {
            match TcpStream::connect(address) {
                Ok(stream) => {
                    let io = |source| ClientError::Io {
                        address: address.to_owned(),
                        source,
                    };
                    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(io)?;
                    stream.set_nodelay(true).map_err(io)?;
                    let stream: Box<dyn Stream> = match &tls {
                        Some(config) => tls_stream(std::sync::Arc::clone(config), address, stream)?,
                        None => Box::new(stream),
                    };
                    let mut client = KafkaClient {
                        address: address.to_owned(),
                        stream,
                        next_correlation_id: 1,
                        versions: HashMap::new(),
                    };
                    client
                        .learn_versions()
                        .map_err(|error| explain_tls_close(tls.is_some(), address, error))?;
                    client.authenticate_from_env()?;
                    return Ok(client);
                }
                Err(source) => {
                    last_error = Some(ClientError::Connect {
                        address: address.to_owned(),
                        source,
                    })
                }
            }
        }
        Err(last_error.unwrap_or(ClientError::Connect {
            address: brokers.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no broker address given",
            ),
        }))
    }

    /// Authenticate with the credentials in the environment, if any.
    fn authenticate_from_env(&mut self) -> Result<(), ClientError> {
        let Ok(user) = std::env::var(SASL_USERNAME_ENV) else {
            return Ok(());
        };
        let failed = |reason: String| ClientError::Authentication {
            address: self.address.clone(),
            reason,
        };
        let password = std::env::var(SASL_PASSWORD_ENV).map_err(|_| {
            failed(format!(
                "{SASL_USERNAME_ENV} is set but {SASL_PASSWORD_ENV} is not"
            ))
        })?;
        let mechanism =
            std::env::var(SASL_MECHANISM_ENV).unwrap_or_else(|_| "SCRAM-SHA-512".to_owned());
        self.authenticate(&mechanism.to_ascii_uppercase(), &user, &password)
    }

    /// Authenticate as `user` with SASL `mechanism` (`PLAIN`,
    /// `SCRAM-SHA-256`, `SCRAM-SHA-512`).
    pub fn authenticate(
        &mut self,
        mechanism: &str,
        user: &str,
        password: &str,
    ) -> Result<(), ClientError> {
        use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};

        use crate::security::scram::{ScramClient, ScramMechanism};
        let address = self.address.clone();
        let failed = |reason: String| ClientError::Authentication {
            address: address.clone(),
            reason,
        };
        let handshake = self.call_at(
            &SaslHandshakeRequest::default()
                .with_mechanism(StrBytes::from_string(mechanism.to_owned())),
            1,
        )?;
        if handshake.error_code == ILLEGAL_SASL_STATE && handshake.mechanisms.is_empty() {
            // A listener without SASL: nothing to log in to.
            eprintln!(
                "note: the listener at {address} does not use SASL; {SASL_USERNAME_ENV} and \
                 {SASL_PASSWORD_ENV} are ignored"
            );
            return Ok(());
        }
        if handshake.error_code != 0 {
            let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(failed(format!(
                "the broker refused mechanism {mechanism} (error {}; it offers {offered:?})",
                handshake.error_code
            )));
        }
        let mut step = |bytes: Vec<u8>| -> Result<Bytes, ClientError> {
            let version = self.version_of::<SaslAuthenticateRequest>()?;
            let response = self.call_at(
                &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes)),
                version,
            )?;
            if response.error_code != 0 {
                let message = response
                    .error_message
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                return Err(failed(format!("error {}: {message}", response.error_code)));
            }
            Ok(response.auth_bytes)
        };
        if mechanism == "PLAIN" {
            step(crate::security::plain::message(user, password))?;
            return Ok(());
        }
        let scram = ScramMechanism::from_name(mechanism).ok_or_else(|| {
            failed(format!(
                "unknown mechanism {mechanism}: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
            ))
        })?;
        let (client, first) = ScramClient::start(scram, user, password);
        let server_first = step(first.into_bytes())?;
        let (client, client_final) = client
            .respond(&server_first)
            .map_err(|error| failed(error.to_string()))?;
        let server_final = step(client_final.into_bytes())?;
        client
            .verify(&server_final)
            .map_err(|error| failed(error.to_string()))
    }

    /// The `host:port` this client is connected to.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn learn_versions(&mut self) -> Result<(), ClientError> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("sluice"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let response: ApiVersionsResponse = self.call_at(&request, 3)?;
        self.versions = response
            .api_keys
            .iter()
            .map(|key| (key.api_key, (key.min_version, key.max_version)))
            .collect();
        Ok(())
    }

    /// The highest version of `R` both this client and the broker speak.
    pub fn version_of<R: Request>(&self) -> Result<i16, ClientError> {
        let key = api_key::<R>()?;
        let ours = R::VERSIONS;
        let (min, max) = self
            .versions
            .get(&R::KEY)
            .copied()
            .ok_or(ClientError::Unsupported {
                address: self.address.clone(),
                key,
                min: ours.min,
                max: ours.max,
            })?;
        let version = max.min(ours.max);
        if version < min.max(ours.min) {
            return Err(ClientError::Unsupported {
                address: self.address.clone(),
                key,
                min: ours.min,
                max: ours.max,
            });
        }
        Ok(version)
    }

    /// Send `request` at the best common version and decode the answer.
    pub fn call<R: Request>(&mut self, request: &R) -> Result<R::Response, ClientError> {
        let version = self.version_of::<R>()?;
        self.call_at(request, version)
    }

    /// Send `request` at `version` and decode the answer.
    pub fn call_at<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, ClientError> {
        let key = api_key::<R>()?;
        let codec = |source: anyhow::Error| ClientError::Codec { key, source };
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[0; 4]);
        header
            .encode(&mut frame, R::header_version(version))
            .map_err(codec)?;
        request.encode(&mut frame, version).map_err(codec)?;
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        let io = |source| ClientError::Io {
            address: self.address.clone(),
            source,
        };
        self.stream.write_all(&frame).map_err(io)?;
        let mut body = self.read_frame()?;
        let header = ResponseHeader::decode(&mut body, key.response_header_version(version))
            .map_err(codec)?;
        if header.correlation_id != correlation_id {
            return Err(ClientError::Correlation {
                expected: correlation_id,
                found: header.correlation_id,
            });
        }
        R::Response::decode(&mut body, version).map_err(codec)
    }

    fn read_frame(&mut self) -> Result<Bytes, ClientError> {
        let io = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                ClientError::TimedOut {
                    address: self.address.clone(),
                }
            }
            std::io::ErrorKind::UnexpectedEof => ClientError::Closed {
                address: self.address.clone(),
            },
            _ => ClientError::Io {
                address: self.address.clone(),
                source,
            },
        };
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).map_err(io)?;
        // A TLS record (handshake or alert: 0x16 or 0x15, version 3.x)
        // where a Kafka size should be: the listener speaks TLS.
        if matches!(size, [0x15 | 0x16, 0x03, ..]) {
            return Err(ClientError::Tls(format!(
                "{} answered with TLS: it is an SSL or SASL_SSL listener; set {TLS_CA_ENV} to the \
                 CA certificate (PEM) its certificate chains to",
                self.address
            )));
        }
        let size = i32::from_be_bytes(size).max(0) as usize;
        if size > RESPONSE_MAX_BYTES {
            return Err(ClientError::TooLarge(size));
        }
        // Grown as the bytes arrive, never sized by the length alone.
        let mut body = Vec::new();
        (&mut self.stream)
            .take(size as u64)
            .read_to_end(&mut body)
            .map_err(io)?;
        if body.len() < size {
            return Err(ClientError::Truncated {
                address: self.address.clone(),
            });
        }
        Ok(Bytes::from(body))
    }
}

fn api_key<R: Request>() -> Result<ApiKey, ClientError> {
    // `try_from` fails with `()`: the key itself is the whole story.
    ApiKey::try_from(R::KEY).map_err(|()| ClientError::UnknownApiKey(R::KEY))
}
