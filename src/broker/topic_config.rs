//! Topic configurations: the keys Sluice understands, their broker-wide
//! defaults, validation of overrides, and how they reach storage.
//!
//! A topic stores only its overrides (`name = value` strings, exactly as a
//! client set them). The effective configuration is the defaults with the
//! overrides applied, computed whenever metadata changes. Unknown keys and
//! invalid values are refused with INVALID_CONFIG and a reason.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::storage::PartitionConfig;

pub const RETENTION_MS: &str = "retention.ms";
pub const RETENTION_BYTES: &str = "retention.bytes";
pub const SEGMENT_BYTES: &str = "segment.bytes";
pub const CLEANUP_POLICY: &str = "cleanup.policy";
pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";
pub const FLUSH_MS: &str = "flush.ms";
pub const FLUSH_MESSAGES: &str = "flush.messages";
pub const MESSAGE_TIMESTAMP_TYPE: &str = "message.timestamp.type";
/// Sluice's own: whether this topic's unexpired data may be deleted when
/// disk usage passes `retention.disk_force_clean_ratio` (RocketMQ's forced
/// file cleaning, per topic). Off by default: acknowledged data stays until
/// it expires, and appends are refused when the disk is nearly full.
pub const DISK_PRESSURE_DELETE: &str = "sluice.disk.pressure.delete";

/// Every topic config key Sluice accepts, in DescribeConfigs order.
pub const KEYS: [&str; 9] = [
    CLEANUP_POLICY,
    FLUSH_MESSAGES,
    FLUSH_MS,
    MAX_MESSAGE_BYTES,
    MESSAGE_TIMESTAMP_TYPE,
    RETENTION_BYTES,
    RETENTION_MS,
    SEGMENT_BYTES,
    DISK_PRESSURE_DELETE,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The effective configuration of one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    /// Accepted for compatibility. Segments belong to a shard's commit log,
    /// not to a topic (`storage.segment_bytes`), so this has no effect.
    pub segment_bytes: i64,
    pub max_message_bytes: i32,
    pub flush_ms: i64,
    pub flush_messages: i64,
    pub timestamp_type: TimestampType,
    /// [`DISK_PRESSURE_DELETE`].
    pub disk_pressure_delete: bool,
}

/// Broker-wide limits that topic values are checked against.
#[derive(Clone, Copy, Debug)]
pub struct TopicLimits {
    pub message_max_bytes: u32,
}

/// A refused config: which key, what value, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub value: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid value {:?} for {}: {}",
            self.value, self.key, self.reason
        )
    }
}

impl std::error::Error for ConfigIssue {}

/// One row of DescribeConfigs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: &'static str,
    pub value: String,
    pub is_default: bool,
    pub documentation: &'static str,
}

impl TopicConfig {
    /// The broker-wide defaults, from `sluice.toml`.
    pub fn defaults(config: &Config) -> TopicConfig {
        TopicConfig {
            retention_ms: config.retention.retention_ms,
            retention_bytes: config.retention.retention_bytes,
            segment_bytes: config.storage.segment_bytes as i64,
            max_message_bytes: config.storage.message_max_bytes as i32,
            flush_ms: config.retention.flush_ms as i64,
            flush_messages: i64::MAX,
            timestamp_type: TimestampType::CreateTime,
            disk_pressure_delete: false,
        }
    }

    /// `defaults` with `overrides` applied; the first bad override is refused.
    pub fn with_overrides(
        defaults: &TopicConfig,
        overrides: &BTreeMap<String, String>,
        limits: TopicLimits,
    ) -> Result<TopicConfig, ConfigIssue> {
        let mut config = defaults.clone();
        for (key, value) in overrides {
            config.apply(key, value, limits)?;
        }
        Ok(config)
    }

    fn apply(&mut self, key: &str, value: &str, limits: TopicLimits) -> Result<(), ConfigIssue> {
        let issue = |reason: &str| ConfigIssue {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let integer = || {
            value
                .trim()
                .parse::<i64>()
                .map_err(|error| issue(&format!("expected an integer ({error})")))
        };
        match key {
            RETENTION_MS => {
                self.retention_ms = at_least(
                    integer()?,
                    -1,
                    "-1 (forever) or a positive number of ms",
                    &issue,
                )?
            }
            RETENTION_BYTES => {
                self.retention_bytes = at_least(
                    integer()?,
                    -1,
                    "-1 (no limit) or a positive number of bytes",
                    &issue,
                )?
            }
            SEGMENT_BYTES => self.segment_bytes = at_least(integer()?, 14, "at least 14", &issue)?,
            FLUSH_MS => self.flush_ms = at_least(integer()?, 0, "0 or more ms", &issue)?,
            FLUSH_MESSAGES => self.flush_messages = at_least(integer()?, 1, "at least 1", &issue)?,
            MAX_MESSAGE_BYTES => {
                let bytes = at_least(integer()?, 0, "0 or more bytes", &issue)?;
                if bytes > i64::from(limits.message_max_bytes) {
                    return Err(issue(&format!(
                        "above the broker's storage.message_max_bytes ({})",
                        limits.message_max_bytes
                    )));
                }
                self.max_message_bytes = bytes as i32;
            }
            CLEANUP_POLICY => match value.trim() {
                "delete" => {}
                "compact" | "compact,delete" | "delete,compact" => {
                    return Err(issue("log compaction is not supported yet; use \"delete\""));
                }
                _ => return Err(issue("expected \"delete\"")),
            },
            MESSAGE_TIMESTAMP_TYPE => {
                self.timestamp_type = match value.trim() {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(issue("expected CreateTime or LogAppendTime")),
                }
            }
            DISK_PRESSURE_DELETE => {
                self.disk_pressure_delete = match value.trim() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(issue("expected true or false")),
                }
            }
            _ => return Err(issue("unknown topic config")),
        }
        Ok(())
    }

    /// What storage enforces for each partition of the topic.
    pub fn partition_config(&self) -> PartitionConfig {
        PartitionConfig {
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            flush_ms: u64::try_from(self.flush_ms).unwrap_or(u64::MAX),
            flush_messages: u64::try_from(self.flush_messages).unwrap_or(u64::MAX),
            disk_pressure_delete: self.disk_pressure_delete,
        }
    }

    pub fn value_of(&self, key: &str) -> Option<String> {
        Some(match key {
            RETENTION_MS => self.retention_ms.to_string(),
            RETENTION_BYTES => self.retention_bytes.to_string(),
            SEGMENT_BYTES => self.segment_bytes.to_string(),
            CLEANUP_POLICY => "delete".to_owned(),
            MAX_MESSAGE_BYTES => self.max_message_bytes.to_string(),
            FLUSH_MS => self.flush_ms.to_string(),
            FLUSH_MESSAGES => self.flush_messages.to_string(),
            MESSAGE_TIMESTAMP_TYPE => match self.timestamp_type {
                TimestampType::CreateTime => "CreateTime".to_owned(),
                TimestampType::LogAppendTime => "LogAppendTime".to_owned(),
            },
            DISK_PRESSURE_DELETE => self.disk_pressure_delete.to_string(),
            _ => return None,
        })
    }

    /// DescribeConfigs rows for `keys` (all keys when `None`).
    pub fn describe(
        &self,
        overrides: &BTreeMap<String, String>,
        keys: Option<&[String]>,
    ) -> Vec<ConfigEntry> {
        KEYS.iter()
            .filter(|key| keys.is_none_or(|keys| keys.iter().any(|wanted| wanted == *key)))
            .map(|&name| ConfigEntry {
                name,
                value: self.value_of(name).unwrap_or_default(),
                is_default: !overrides.contains_key(name),
                documentation: documentation(name),
            })
            .collect()
    }
}

fn at_least(
    value: i64,
    minimum: i64,
    expected: &str,
    issue: &dyn Fn(&str) -> ConfigIssue,
) -> Result<i64, ConfigIssue> {
    if value < minimum || (minimum == -1 && value == 0) {
        return Err(issue(&format!("expected {expected}")));
    }
    Ok(value)
}

fn documentation(key: &str) -> &'static str {
    match key {
        RETENTION_MS => "How long to keep data; -1 keeps it forever. Enforced per segment age.",
        RETENTION_BYTES => "Most bytes a partition keeps; -1 for no limit.",
        SEGMENT_BYTES => {
            "Accepted for compatibility; segments belong to a shard's commit log (storage.segment_bytes)."
        }
        CLEANUP_POLICY => "Only \"delete\" is supported.",
        MAX_MESSAGE_BYTES => "Largest record batch accepted for this topic.",
        FLUSH_MS => "Data produced with acks=0/1 is fsynced within this many ms.",
        FLUSH_MESSAGES => "Data is fsynced at least every this many records.",
        MESSAGE_TIMESTAMP_TYPE => {
            "CreateTime keeps the producer's timestamps; LogAppendTime replaces them with the broker's."
        }
        DISK_PRESSURE_DELETE => {
            "Sluice: true lets this topic's unexpired data be deleted, oldest first, when disk usage \
             passes retention.disk_force_clean_ratio; false (the default) keeps it and appends are \
             refused near a full disk."
        }
        _ => "",
    }
}

/// Validate overrides without applying them (CreateTopics, validate_only).
pub fn validate_overrides(
    defaults: &TopicConfig,
    overrides: &BTreeMap<String, String>,
    limits: TopicLimits,
) -> Result<(), ConfigIssue> {
    TopicConfig::with_overrides(defaults, overrides, limits).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TopicLimits {
        TopicLimits {
            message_max_bytes: 1_048_588,
        }
    }

    #[test]
    fn overrides_apply_over_defaults() {
        let defaults = TopicConfig::defaults(&Config::default());
        let overrides = BTreeMap::from([
            (RETENTION_MS.to_owned(), "60000".to_owned()),
            (
                MESSAGE_TIMESTAMP_TYPE.to_owned(),
                "LogAppendTime".to_owned(),
            ),
        ]);
        let config = TopicConfig::with_overrides(&defaults, &overrides, limits()).unwrap();
        assert_eq!(config.retention_ms, 60_000);
        assert_eq!(config.timestamp_type, TimestampType::LogAppendTime);
        let rows = config.describe(&overrides, None);
        assert_eq!(rows.len(), KEYS.len());
        assert!(
            !rows
                .iter()
                .find(|row| row.name == RETENTION_MS)
                .unwrap()
                .is_default
        );
        assert!(
            rows.iter()
                .find(|row| row.name == RETENTION_BYTES)
                .unwrap()
                .is_default
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_reason() {
        let defaults = TopicConfig::defaults(&Config::default());
        for (key, value) in [
            (RETENTION_MS, "soon"),
            (RETENTION_MS, "0"),
            (MAX_MESSAGE_BYTES, "999999999"),
            (CLEANUP_POLICY, "compact"),
            (DISK_PRESSURE_DELETE, "yes"),
            ("no.such.key", "1"),
        ] {
            let overrides = BTreeMap::from([(key.to_owned(), value.to_owned())]);
            let issue = TopicConfig::with_overrides(&defaults, &overrides, limits()).unwrap_err();
            assert_eq!(issue.key, key);
            assert!(!issue.reason.is_empty());
        }
    }
}
