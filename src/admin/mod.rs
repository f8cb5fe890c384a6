//! The admin commands, `sluice topics …`, `sluice groups …`, `sluice
//! transactions …`, `sluice users …`, `sluice acls …` and `sluice dlq …`: run against
//! a broker over the Kafka protocol (`sluice delays …` reads its metrics
//! listener), with the habits of `rpk` and
//! `kafka-consumer-groups` (aligned tables, lag per partition, reset-offsets
//! and dead-letter replay as a dry run unless `--execute`).

pub mod acls;
pub mod datetime;
pub mod delays;
pub mod dlq;
pub mod groups;
pub mod offsets;
pub mod quotas;
pub mod routing;
pub mod table;
pub mod topics;
pub mod transactions;
pub mod users;

use kafka_protocol::ResponseError;

/// An admin command failed: what to print, with its causes (the command
/// exits non-zero).
pub type AdminResult = anyhow::Result<()>;

/// A Kafka error code as its name, with the broker's message if any.
pub fn describe_error(code: i16, message: Option<&str>) -> String {
    let name = ResponseError::try_from_code(code)
        .map_or_else(|| format!("error {code}"), |error| format!("{error:?}"));
    match message {
        Some(message) if !message.is_empty() => format!("{name}: {message}"),
        _ => name,
    }
}
