//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka uses them
//! (KIP-84, KIP-554): the stored credential, the server's side of the
//! exchange, and a client's side for `sluice` commands and tests.
//!
//! The exchange, carried in SaslAuthenticate requests:
//!
//! | step | who | message |
//! |---|---|---|
//! | client-first | client | `n,,n=<user>,r=<client nonce>` |
//! | server-first | broker | `r=<client nonce><server nonce>,s=<base64 salt>,i=<iterations>` |
//! | client-final | client | `c=biws,r=<nonce>,p=<base64 proof>` |
//! | server-final | broker | `v=<base64 server signature>` |
//!
//! The broker stores only the salt, the iteration count, `StoredKey =
//! H(HMAC(SaltedPassword, "Client Key"))` and `ServerKey =
//! HMAC(SaltedPassword, "Server Key")` (RFC 5802 §3): never the password
//! nor the salted password. Channel binding is not offered (`p=` is
//! refused), as in Kafka.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Kafka's bounds on a SCRAM credential's iteration count
/// (`org.apache.kafka.common.security.scram.internals.ScramMechanism`).
pub const ITERATIONS_MIN: u32 = 4096;
pub const ITERATIONS_MAX: u32 = 16384;
/// Iterations of credentials the broker makes itself (the bootstrap user,
/// `sluice users create`): Kafka's `kafka-configs.sh` default.
pub const ITERATIONS_DEFAULT: u32 = 8192;
/// Bytes of salt the broker draws for credentials it makes.
const SALT_BYTES: usize = 32;
/// Bytes of randomness in the broker's nonce (base64-encoded on the wire).
const NONCE_BYTES: usize = 24;
/// The longest client-first or client-final message accepted.
pub const MESSAGE_BYTES_MAX: usize = 4096;

/// A SCRAM mechanism (KIP-554's `mechanism` codes: 1 and 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScramMechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// The SASL mechanism name (`SCRAM-SHA-256`, `SCRAM-SHA-512`).
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL
            .into_iter()
            .find(|mechanism| mechanism.name().eq_ignore_ascii_case(name))
    }

    /// KIP-554's code: 1 = SCRAM-SHA-256, 2 = SCRAM-SHA-512 (0 is unknown).
    pub fn code(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    pub fn from_code(code: i8) -> Option<ScramMechanism> {
        ScramMechanism::ALL
            .into_iter()
            .find(|mechanism| mechanism.code() == code)
    }

    /// Bytes of this mechanism's hash (and of a salted password).
    pub fn output_bytes(self) -> usize {
        match self {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            ScramMechanism::Sha512 => {
                let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes any key");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => Sha256::digest(data).to_vec(),
            ScramMechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// RFC 5802's `Hi(password, salt, iterations)` (PBKDF2 with this
    /// mechanism's HMAC). CPU-bound: milliseconds at Kafka's iteration
    /// counts, so never on a shard thread.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => {
                pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, iterations).to_vec()
            }
            ScramMechanism::Sha512 => {
                pbkdf2::pbkdf2_hmac_array::<Sha512, 64>(password, salt, iterations).to_vec()
            }
        }
    }
}

/// What the broker keeps of a user's password for one mechanism.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    #[serde(with = "base64_bytes")]
    pub salt: Vec<u8>,
    pub iterations: u32,
    #[serde(with = "base64_bytes")]
    pub stored_key: Vec<u8>,
    #[serde(with = "base64_bytes")]
    pub server_key: Vec<u8>,
}

impl ScramCredential {
    /// The credential of a salted password (what AlterUserScramCredentials
    /// carries, KIP-554).
    pub fn from_salted_password(
        mechanism: ScramMechanism,
        salt: &[u8],
        iterations: u32,
        salted_password: &[u8],
    ) -> ScramCredential {
        let client_key = mechanism.hmac(salted_password, b"Client Key");
        ScramCredential {
            salt: salt.to_vec(),
            iterations,
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.hmac(salted_password, b"Server Key"),
        }
    }

    /// A credential for `password` with a fresh random salt (CPU-bound, see
    /// [`ScramMechanism::salted_password`]).
    pub fn from_password(
        mechanism: ScramMechanism,
        password: &str,
        iterations: u32,
    ) -> ScramCredential {
        let mut salt = vec![0u8; SALT_BYTES];
        crate::security::fill_random(&mut salt);
        let salted = mechanism.salted_password(password.as_bytes(), &salt, iterations);
        ScramCredential::from_salted_password(mechanism, &salt, iterations, &salted)
    }

    /// Whether `password` is the one this credential was made from
    /// (SASL/PLAIN checks passwords this way; CPU-bound). Compares in
    /// constant time.
    pub fn matches_password(&self, mechanism: ScramMechanism, password: &str) -> bool {
        let salted = mechanism.salted_password(password.as_bytes(), &self.salt, self.iterations);
        let client_key = mechanism.hmac(&salted, b"Client Key");
        bool::from(mechanism.hash(&client_key).ct_eq(&self.stored_key))
    }

    /// Whether the iteration count is within Kafka's bounds.
    pub fn iterations_valid(iterations: i32) -> bool {
        u32::try_from(iterations).is_ok_and(|n| (ITERATIONS_MIN..=ITERATIONS_MAX).contains(&n))
    }
}

/// Why an exchange failed. The client is told only that authentication
/// failed; these say why in the broker's log.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("the SCRAM message is not UTF-8 or is over {MESSAGE_BYTES_MAX} bytes")]
    Unreadable,
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("authorization id {authzid:?} differs from user {user:?}")]
    Authzid { authzid: String, user: String },
    #[error("delegation tokens (tokenauth) are not supported")]
    TokenAuth,
    #[error("no {mechanism} credential for user {user:?}")]
    UnknownUser {
        user: String,
        mechanism: &'static str,
    },
    #[error("the client's nonce or channel binding does not match the exchange")]
    Mismatch,
    #[error("wrong password")]
    BadProof,
    #[error(
        "the server's signature does not verify: this is not the broker the credential was made for"
    )]
    BadServerSignature,
    #[error("the server refused: {0}")]
    ServerError(String),
}

/// The broker's state between its server-first and the client-final.
#[derive(Debug)]
pub struct ScramServerFirst {
    mechanism: ScramMechanism,
    user: String,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    credential: ScramCredential,
}

impl ScramServerFirst {
    /// Read the client-first message and answer it. `lookup` gives the
    /// user's credential for this mechanism.
    pub fn start(
        mechanism: ScramMechanism,
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
    ) -> Result<ScramServerFirst, ScramError> {
        let message = readable(client_first)?;
        let (gs2_header, bare) = split_gs2_header(message)?;
        let mut attributes = bare.split(',');
        let user = match attributes.next() {
            Some(name) if name.starts_with("n=") => decode_saslname(&name[2..])?,
            _ => return Err(ScramError::Malformed("client-first has no n=")),
        };
        let client_nonce = match attributes.next() {
            Some(nonce) if nonce.starts_with("r=") && nonce.len() > 2 => &nonce[2..],
            _ => return Err(ScramError::Malformed("client-first has no r=")),
        };
        if !client_nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(ScramError::Malformed("the client nonce is not printable"));
        }
        for extension in attributes {
            // KIP-84 extensions; Kafka's only one is delegation tokens.
            if extension.starts_with("tokenauth=") && extension != "tokenauth=false" {
                return Err(ScramError::TokenAuth);
            }
            if extension.starts_with("m=") {
                return Err(ScramError::Malformed(
                    "mandatory extension m= is not supported",
                ));
            }
        }
        if let Some(authzid) = gs2_authzid(gs2_header)?
            && authzid != user
        {
            return Err(ScramError::Authzid { authzid, user });
        }
        let Some(credential) = lookup(&user) else {
            return Err(ScramError::UnknownUser {
                user,
                mechanism: mechanism.name(),
            });
        };
        let mut random = [0u8; NONCE_BYTES];
        crate::security::fill_random(&mut random);
        let nonce = format!("{client_nonce}{}", BASE64.encode(random));
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&credential.salt),
            credential.iterations
        );
        Ok(ScramServerFirst {
            mechanism,
            user,
            gs2_header: gs2_header.to_owned(),
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
            credential,
        })
    }

    /// The server-first message to send.
    pub fn message(&self) -> &str {
        &self.server_first
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn mechanism(&self) -> ScramMechanism {
        self.mechanism
    }

    /// Check the client-final message's proof; on success, the
    /// server-final message and the authenticated user.
    pub fn finish(self, client_final: &[u8]) -> Result<(String, String), ScramError> {
        let message = readable(client_final)?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("client-final has no p="))?;
        let mut attributes = without_proof.split(',');
        let binding = attributes
            .next()
            .and_then(|binding| binding.strip_prefix("c="))
            .ok_or(ScramError::Malformed("client-final has no c="))?;
        let nonce = attributes
            .next()
            .and_then(|nonce| nonce.strip_prefix("r="))
            .ok_or(ScramError::Malformed("client-final has no r="))?;
        // librdkafka sends its client nonce again in front of the combined
        // one; Kafka's `ScramSaslServer` accepts any nonce that ends with
        // the server-first's, and so does this (the proof covers it).
        if binding != BASE64.encode(&self.gs2_header) || !nonce.ends_with(&self.nonce) {
            return Err(ScramError::Mismatch);
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("the proof is not base64"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let mechanism = self.mechanism;
        let signature = mechanism.hmac(&self.credential.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(ScramError::BadProof);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        if !bool::from(
            mechanism
                .hash(&client_key)
                .ct_eq(&self.credential.stored_key),
        ) {
            return Err(ScramError::BadProof);
        }
        let server_signature = mechanism.hmac(&self.credential.server_key, auth_message.as_bytes());
        Ok((format!("v={}", BASE64.encode(server_signature)), self.user))
    }
}

/// A client's side of the exchange (`sluice` commands, tests).
#[derive(Debug)]
pub struct ScramClient {
    mechanism: ScramMechanism,
    password: String,
    client_first_bare: String,
    client_nonce: String,
}

/// A client's state after its client-final: what the server must prove.
#[derive(Debug)]
pub struct ScramClientFinal {
    server_signature: Vec<u8>,
}

impl ScramClient {
    /// Start an exchange; returns the client and its client-first message.
    pub fn start(mechanism: ScramMechanism, user: &str, password: &str) -> (ScramClient, String) {
        let mut random = [0u8; NONCE_BYTES];
        crate::security::fill_random(&mut random);
        let client_nonce = BASE64.encode(random);
        let client_first_bare = format!("n={},r={client_nonce}", encode_saslname(user));
        let first = format!("n,,{client_first_bare}");
        let client = ScramClient {
            mechanism,
            password: password.to_owned(),
            client_first_bare,
            client_nonce,
        };
        (client, first)
    }

    /// Answer the server-first message with the client-final message.
    pub fn respond(self, server_first: &[u8]) -> Result<(ScramClientFinal, String), ScramError> {
        let message = readable(server_first)?;
        if let Some(error) = message.strip_prefix("e=") {
            return Err(ScramError::ServerError(error.to_owned()));
        }
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attribute in message.split(',') {
            if let Some(value) = attribute.strip_prefix("r=") {
                nonce = Some(value);
            } else if let Some(value) = attribute.strip_prefix("s=") {
                salt = BASE64.decode(value).ok();
            } else if let Some(value) = attribute.strip_prefix("i=") {
                iterations = value.parse::<u32>().ok();
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(ScramError::Malformed("server-first lacks r=, s= or i="));
        };
        if !nonce.starts_with(&self.client_nonce) || !(1..=1_000_000).contains(&iterations) {
            return Err(ScramError::Mismatch);
        }
        let mechanism = self.mechanism;
        let salted = mechanism.salted_password(self.password.as_bytes(), &salt, iterations);
        let credential =
            ScramCredential::from_salted_password(mechanism, &salt, iterations, &salted);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{message},{without_proof}", self.client_first_bare);
        let client_key = mechanism.hmac(&salted, b"Client Key");
        let signature = mechanism.hmac(&credential.stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_signature = mechanism.hmac(&credential.server_key, auth_message.as_bytes());
        Ok((
            ScramClientFinal { server_signature },
            format!("{without_proof},p={}", BASE64.encode(proof)),
        ))
    }
}

impl ScramClientFinal {
    /// Check the server-final message: the broker holds this user's
    /// credential, not merely any answer.
    pub fn verify(self, server_final: &[u8]) -> Result<(), ScramError> {
        let message = readable(server_final)?;
        if let Some(error) = message.strip_prefix("e=") {
            return Err(ScramError::ServerError(error.to_owned()));
        }
        let signature = message
            .strip_prefix("v=")
            .and_then(|value| BASE64.decode(value).ok())
            .ok_or(ScramError::Malformed("server-final has no v="))?;
        if bool::from(signature.ct_eq(&self.server_signature)) {
            Ok(())
        } else {
            Err(ScramError::BadServerSignature)
        }
    }
}

fn readable(message: &[u8]) -> Result<&str, ScramError> {
    if message.len() > MESSAGE_BYTES_MAX {
        return Err(ScramError::Unreadable);
    }
    std::str::from_utf8(message).map_err(|_| ScramError::Unreadable)
}

/// Split `gs2-header` (`n,,`, `y,,`, `n,a=<authzid>,`) from the rest.
fn split_gs2_header(message: &str) -> Result<(&str, &str), ScramError> {
    if message.starts_with("p=") {
        return Err(ScramError::ChannelBinding);
    }
    if !(message.starts_with("n,") || message.starts_with("y,")) {
        return Err(ScramError::Malformed("no gs2 header"));
    }
    let second_comma = message[2..]
        .find(',')
        .map(|at| at + 2)
        .ok_or(ScramError::Malformed("no gs2 header"))?;
    Ok(message.split_at(second_comma + 1))
}

/// The `a=` authorization id of a gs2 header, if it names one.
fn gs2_authzid(gs2_header: &str) -> Result<Option<String>, ScramError> {
    let field = &gs2_header[2..gs2_header.len() - 1];
    if field.is_empty() {
        return Ok(None);
    }
    match field.strip_prefix("a=") {
        Some(name) => decode_saslname(name).map(Some),
        None => Err(ScramError::Malformed(
            "bad authorization id in the gs2 header",
        )),
    }
}

/// RFC 5802's saslname: `,` and `=` travel as `=2C` and `=3D`.
fn decode_saslname(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in a user name")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(ScramError::Malformed("empty user name"));
    }
    Ok(out)
}

fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// Serde for byte strings as base64 text (credentials in `metadata.toml`).
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        BASE64.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3's SCRAM-SHA-256 example, with its nonces: user "user",
    /// password "pencil".
    #[test]
    fn the_rfc_7677_exchange_verifies() {
        let mechanism = ScramMechanism::Sha256;
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = mechanism.salted_password(b"pencil", &salt, 4096);
        let credential = ScramCredential::from_salted_password(mechanism, &salt, 4096, &salted);
        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server = ScramServerFirst {
            mechanism,
            user: "user".to_owned(),
            gs2_header: "n,,".to_owned(),
            client_first_bare: client_first_bare.to_owned(),
            server_first: server_first.to_owned(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".to_owned(),
            credential,
        };
        let client_final =
            format!("{without_proof},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        let (server_final, user) = server.finish(client_final.as_bytes()).unwrap();
        assert_eq!(
            server_final,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert_eq!(user, "user");
    }

    fn exchange(
        mechanism: ScramMechanism,
        stored: &ScramCredential,
        user: &str,
        password: &str,
    ) -> Result<String, ScramError> {
        let (client, first) = ScramClient::start(mechanism, user, password);
        let server = ScramServerFirst::start(mechanism, first.as_bytes(), |name| {
            (name == "al,i=ce").then(|| stored.clone())
        })?;
        let (client, client_final) = client.respond(server.message().as_bytes())?;
        let (server_final, user) = server.finish(client_final.as_bytes())?;
        client.verify(server_final.as_bytes())?;
        Ok(user)
    }

    #[test]
    fn client_and_server_agree_and_a_wrong_password_fails() {
        for mechanism in ScramMechanism::ALL {
            let stored = ScramCredential::from_password(mechanism, "s3cret", ITERATIONS_MIN);
            assert!(stored.matches_password(mechanism, "s3cret"));
            assert!(!stored.matches_password(mechanism, "s3cre"));
            assert_eq!(
                exchange(mechanism, &stored, "al,i=ce", "s3cret").unwrap(),
                "al,i=ce"
            );
            assert_eq!(
                exchange(mechanism, &stored, "al,i=ce", "wrong"),
                Err(ScramError::BadProof)
            );
            assert!(matches!(
                exchange(mechanism, &stored, "bob", "s3cret"),
                Err(ScramError::UnknownUser { .. })
            ));
        }
    }

    #[test]
    fn bad_client_messages_are_refused_without_panicking() {
        let stored = ScramCredential::from_password(ScramMechanism::Sha256, "x", ITERATIONS_MIN);
        let lookup = |_: &str| Some(stored.clone());
        for message in [
            &b""[..],
            b"n,,",
            b"n,,n=",
            b"n,,n=a",
            b"n,,r=abc",
            b"p=tls-unique,,n=a,r=b",
            b"x,,n=a,r=b",
            b"n,a=b,n=a,r=b",
            b"n,,n=a=,r=b",
            b"n,,n=a=2,r=b",
            b"n,,n=a,r=b,tokenauth=true",
            b"n,,n=a,r=b,m=x",
            b"\xff\xfe",
            b"n",
        ] {
            assert!(
                ScramServerFirst::start(ScramMechanism::Sha256, message, lookup).is_err(),
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
        let server =
            ScramServerFirst::start(ScramMechanism::Sha256, b"n,,n=a,r=abc", lookup).unwrap();
        for message in ["", "c=biws", "c=biws,r=abc,p=!!", "c=eSws,r=x,p=AAAA"] {
            let server =
                ScramServerFirst::start(ScramMechanism::Sha256, b"n,,n=a,r=abc", lookup).unwrap();
            assert!(server.finish(message.as_bytes()).is_err(), "{message}");
        }
        let nonce = server.nonce.clone();
        assert_eq!(
            server.finish(format!("c=biws,r={nonce},p=AAAA").as_bytes()),
            Err(ScramError::BadProof)
        );
    }
}
