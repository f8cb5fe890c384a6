//! One line for an error and everything that caused it, for logs and the
//! command line.
//!
//! Sluice's errors name what failed in their own message and keep the
//! underlying error as their `source()` (STYLE habit 9); many also repeat the
//! source's message in their own, so a bare `%error` log field still says
//! why. [`error_chain`] walks the sources and appends each message not
//! already in the text, so nothing is lost and nothing is said twice.

/// `error` and its sources, outermost first: "a: b: c". A source whose
/// message the text already holds is skipped.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = trimmed(&error.to_string());
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = trimmed(&cause.to_string());
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `message` without trailing whitespace: some library errors end their
/// message with a newline, which split a log line. (Messages laid out on
/// several lines on purpose, such as a TOML error's excerpt, keep them.)
fn trimmed(message: &str) -> String {
    message.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open {path}")]
    struct Open {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("shard-0 failed to start: {source}")]
    struct Start {
        #[source]
        source: Open,
    }

    #[test]
    fn every_source_is_appended_once() {
        let error = Start {
            source: Open {
                path: "shard-0/log/0.log",
                source: std::io::Error::from_raw_os_error(libc::EIO),
            },
        };
        let text = error_chain(&error);
        assert!(
            text.starts_with("shard-0 failed to start: cannot open shard-0/log/0.log: "),
            "{text}"
        );
        assert_eq!(text.matches("cannot open").count(), 1, "{text}");
        assert!(text.ends_with("Input/output error (os error 5)"), "{text}");
    }

    /// kafka-protocol's "not enough bytes" error ends its message with a
    /// newline, which split a log line in two.
    #[test]
    fn no_message_ends_the_chain_with_a_line_break() {
        let error = anyhow::Error::new(kafka_protocol::protocol::buf::NotEnoughBytesError)
            .context("malformed Produce v9 request");
        let text = error_chain(error.as_ref());
        assert_eq!(
            text,
            "malformed Produce v9 request: Not enough bytes remaining in buffer!"
        );
    }
}
