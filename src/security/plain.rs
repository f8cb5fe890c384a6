//! SASL/PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd` in one
//! message. Kafka sends it in one SaslAuthenticate request. The broker
//! keeps no passwords, so the password is checked against the user's SCRAM
//! credential (`ScramCredential::matches_password`), as Redpanda does:
//! one set of credentials serves both mechanisms.

use thiserror::Error;

/// The longest PLAIN message accepted (RFC 4616 allows 255 bytes per
/// field; this is generous for any client).
pub const MESSAGE_BYTES_MAX: usize = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlainError {
    #[error("malformed PLAIN message: {0}")]
    Malformed(&'static str),
    #[error("authorization id {authzid:?} differs from user {user:?}")]
    Authzid { authzid: String, user: String },
}

/// A PLAIN message's user and password.
#[derive(Debug, PartialEq, Eq)]
pub struct PlainCredentials {
    pub user: String,
    pub password: String,
}

/// Read a PLAIN message. An authorization id, if given, must name the
/// user itself (Kafka's `PlainSaslServer` rule).
pub fn parse(message: &[u8]) -> Result<PlainCredentials, PlainError> {
    if message.len() > MESSAGE_BYTES_MAX {
        return Err(PlainError::Malformed("over 1024 bytes"));
    }
    let text = std::str::from_utf8(message).map_err(|_| PlainError::Malformed("not UTF-8"))?;
    let mut fields = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(PlainError::Malformed("expected three NUL-separated fields"));
    };
    if user.is_empty() || password.is_empty() {
        return Err(PlainError::Malformed("empty user or password"));
    }
    if !authzid.is_empty() && authzid != user {
        return Err(PlainError::Authzid {
            authzid: authzid.to_owned(),
            user: user.to_owned(),
        });
    }
    Ok(PlainCredentials {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

/// The PLAIN message for `user` and `password` (clients, tests).
pub fn message(user: &str, password: &str) -> Vec<u8> {
    format!("\0{user}\0{password}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages_parse_or_are_refused() {
        assert_eq!(
            parse(&message("alice", "pw")).unwrap(),
            PlainCredentials {
                user: "alice".into(),
                password: "pw".into()
            }
        );
        assert!(parse(b"alice\0alice\0pw").is_ok());
        for bad in [
            &b""[..],
            b"\0alice",
            b"\0\0pw",
            b"\0alice\0",
            b"bob\0alice\0pw",
            b"\0a\0b\0c",
            b"\0a\0\xff",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&vec![b'a'; 2000]).is_err());
    }
}
