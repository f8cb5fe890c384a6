//! Group configs: per-group overrides of the consumer protocol's session
//! timeout and heartbeat interval (KIP-848's GROUP config resource, type
//! 32 in DescribeConfigs, AlterConfigs and IncrementalAlterConfigs; Kafka
//! 4's `GroupConfig`).
//!
//! * `consumer.session.timeout.ms` (INT): a consumer-protocol member of the
//!   group silent this long is removed. Default
//!   `groups.consumer_session_timeout_ms`; within
//!   `groups.consumer_session_timeout_{min,max}_ms`.
//! * `consumer.heartbeat.interval.ms` (INT): the interval told to the
//!   group's members in every ConsumerGroupHeartbeat answer. Default
//!   `groups.consumer_heartbeat_interval_ms`; within
//!   `groups.consumer_heartbeat_interval_{min,max}_ms`; below the session
//!   timeout.
//!
//! As in Kafka, a group's configs are independent of the group's life: they
//! may be set before it exists, outlive its members and its deletion, and
//! describing an unknown group answers its defaults. They are checked whole
//! (INVALID_CONFIG with Kafka's message for an unknown name, a value that
//! is not an INT, out of range, or a session timeout not above the
//! interval), persisted with the cluster metadata, and read by the group's
//! coordinator on each heartbeat, so a change applies from the members'
//! next heartbeat. Share-group configs (`share.*`, KIP-932) are refused:
//! Sluice has no share groups.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::broker::broker_config::ConfigSource;
use crate::config::GroupsConfig;

pub const SESSION_TIMEOUT: &str = "consumer.session.timeout.ms";
pub const HEARTBEAT_INTERVAL: &str = "consumer.heartbeat.interval.ms";

/// The most groups that may have configs at once, and the most bytes their
/// names may take together: each change rewrites the cluster metadata
/// whole, so the set is bounded (INVALID_REQUEST past it).
pub const CONFIGURED_GROUPS_MAX: usize = 10_000;
pub const CONFIGURED_GROUP_NAMES_BYTES_MAX: usize = 1 << 20;
/// The longest group id a config may name: the longest a group's records
/// hold (ConsumerGroupHeartbeat refuses longer ones).
pub const GROUP_NAME_BYTES_MAX: usize = crate::broker::group::offsets::RECORD_STRING_BYTES_MAX;

/// One group config: its name, Kafka's documentation, the broker setting it
/// defaults to and the range that setting allows.
pub struct GroupConfigDef {
    pub name: &'static str,
    /// The broker-level synonym (Kafka's name for the default).
    pub broker_synonym: &'static str,
    pub doc: &'static str,
    default: fn(&GroupsConfig) -> u64,
    range: fn(&GroupsConfig) -> (u64, u64),
    range_names: (&'static str, &'static str),
}

/// Every group config, in name order.
pub const GROUP_CONFIGS: &[GroupConfigDef] = &[
    GroupConfigDef {
        name: HEARTBEAT_INTERVAL,
        broker_synonym: "group.consumer.heartbeat.interval.ms",
        doc: "The heartbeat interval given to the members of this consumer group.",
        default: |groups| groups.consumer_heartbeat_interval_ms,
        range: |groups| {
            (
                groups.consumer_heartbeat_interval_min_ms,
                groups.consumer_heartbeat_interval_max_ms,
            )
        },
        range_names: (
            "group.consumer.min.heartbeat.interval.ms",
            "group.consumer.max.heartbeat.interval.ms",
        ),
    },
    GroupConfigDef {
        name: SESSION_TIMEOUT,
        broker_synonym: "group.consumer.session.timeout.ms",
        doc: "The timeout to detect client failures when using the consumer group protocol.",
        default: |groups| groups.consumer_session_timeout_ms,
        range: |groups| {
            (
                groups.consumer_session_timeout_min_ms,
                groups.consumer_session_timeout_max_ms,
            )
        },
        range_names: (
            "group.consumer.min.session.timeout.ms",
            "group.consumer.max.session.timeout.ms",
        ),
    },
];

fn def(name: &str) -> Option<&'static GroupConfigDef> {
    GROUP_CONFIGS.iter().find(|def| def.name == name)
}

/// What one consumer group runs with: its overrides over the broker's
/// defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupSettings {
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
}

impl GroupSettings {
    /// The settings of a group with `overrides` (checked when they were
    /// stored; a value that no longer parses falls back to the default).
    pub fn resolve(groups: &GroupsConfig, overrides: Option<&BTreeMap<String, String>>) -> Self {
        let value = |name: &str| {
            let def = def(name).expect("a group config");
            overrides
                .and_then(|overrides| overrides.get(name))
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or((def.default)(groups))
        };
        GroupSettings {
            session_timeout: Duration::from_millis(value(SESSION_TIMEOUT)),
            heartbeat_interval: Duration::from_millis(value(HEARTBEAT_INTERVAL)),
        }
    }
}

/// `overrides` checked whole and normalised (Kafka's `GroupConfig.validate`),
/// or the INVALID_CONFIG message.
pub fn checked(
    groups: &GroupsConfig,
    overrides: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut normalised = BTreeMap::new();
    for (name, raw) in overrides {
        let Some(def) = def(&name) else {
            return Err(if name.starts_with("share.") {
                format!("{name}: share groups (KIP-932) are not supported by Sluice")
            } else {
                format!("Unknown group config name: {name}")
            });
        };
        let value: i32 = raw.trim().parse().map_err(|_| {
            format!("Invalid value {raw} for configuration {name}: Not a number of type INT")
        })?;
        let (min, max) = (def.range)(groups);
        let (min_name, max_name) = def.range_names;
        if value < 1 || (value as u64) < min {
            return Err(format!(
                "{name} must be greater than or equal to {min_name} ({min})"
            ));
        }
        if value as u64 > max {
            return Err(format!(
                "{name} must be less than or equal to {max_name} ({max})"
            ));
        }
        normalised.insert(name, value.to_string());
    }
    let settings = GroupSettings::resolve(groups, Some(&normalised));
    if settings.session_timeout <= settings.heartbeat_interval {
        return Err(format!(
            "{SESSION_TIMEOUT} must be greater than {HEARTBEAT_INTERVAL}"
        ));
    }
    Ok(normalised)
}

/// One described group config.
pub struct GroupConfigEntry {
    pub def: &'static GroupConfigDef,
    pub value: String,
    pub source: ConfigSource,
    /// (name, value, source), the winning level first.
    pub synonyms: Vec<(String, String, ConfigSource)>,
}

/// The group configs named by `keys` (all when `None`) of a group with
/// `overrides`, as DescribeConfigs shows them: the group's value (source
/// GROUP_CONFIG), else the broker's setting (STATIC_BROKER_CONFIG where
/// `sluice.toml` changed it, DEFAULT_CONFIG otherwise).
pub fn describe(
    groups: &GroupsConfig,
    overrides: Option<&BTreeMap<String, String>>,
    keys: Option<&[String]>,
) -> Vec<GroupConfigEntry> {
    let built_in = GroupsConfig::default();
    GROUP_CONFIGS
        .iter()
        .filter(|def| keys.is_none_or(|keys| keys.iter().any(|key| key == def.name)))
        .map(|def| {
            let default = (def.default)(groups);
            let broker_source = if default == (def.default)(&built_in) {
                ConfigSource::Default
            } else {
                ConfigSource::StaticBroker
            };
            let mut synonyms = Vec::new();
            if let Some(value) = overrides.and_then(|overrides| overrides.get(def.name)) {
                synonyms.push((def.name.to_owned(), value.clone(), ConfigSource::Group));
            }
            synonyms.push((
                def.broker_synonym.to_owned(),
                default.to_string(),
                broker_source,
            ));
            let (_, value, source) = synonyms[0].clone();
            GroupConfigEntry {
                def,
                value,
                source,
                synonyms,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn values_are_checked_against_the_broker_ranges_and_each_other() {
        let groups = GroupsConfig::default();
        let ok = checked(&groups, configs(&[(SESSION_TIMEOUT, " 50000")])).unwrap();
        assert_eq!(ok[SESSION_TIMEOUT], "50000");
        for (pairs, expected) in [
            (
                vec![(SESSION_TIMEOUT, "44999")],
                "greater than or equal to group.consumer.min.session.timeout.ms",
            ),
            (
                vec![(SESSION_TIMEOUT, "60001")],
                "less than or equal to group.consumer.max.session.timeout.ms",
            ),
            (vec![(HEARTBEAT_INTERVAL, "0")], "greater than or equal"),
            (vec![(HEARTBEAT_INTERVAL, "-5")], "greater than or equal"),
            (vec![(HEARTBEAT_INTERVAL, "5s")], "Not a number of type INT"),
            (vec![(SESSION_TIMEOUT, "4294967296")], "Not a number"),
            (vec![("retention.ms", "1")], "Unknown group config name"),
            (vec![("share.session.timeout.ms", "45000")], "KIP-932"),
        ] {
            let error = checked(&groups, configs(&pairs)).unwrap_err();
            assert!(error.contains(expected), "{pairs:?}: {error}");
        }
        let wide = GroupsConfig {
            consumer_heartbeat_interval_max_ms: 60_000,
            ..GroupsConfig::default()
        };
        let error = checked(
            &wide,
            configs(&[(SESSION_TIMEOUT, "45000"), (HEARTBEAT_INTERVAL, "45000")]),
        )
        .unwrap_err();
        assert!(error.contains("must be greater than consumer.heartbeat.interval.ms"));
    }

    #[test]
    fn settings_and_descriptions_take_the_override_over_the_broker_default() {
        let groups = GroupsConfig {
            consumer_heartbeat_interval_ms: 6000,
            ..GroupsConfig::default()
        };
        let overrides = configs(&[(SESSION_TIMEOUT, "50000")]);
        let settings = GroupSettings::resolve(&groups, Some(&overrides));
        assert_eq!(settings.session_timeout, Duration::from_secs(50));
        assert_eq!(settings.heartbeat_interval, Duration::from_secs(6));
        let described = describe(&groups, Some(&overrides), None);
        let sources: Vec<_> = described
            .iter()
            .map(|entry| (entry.def.name, entry.value.as_str(), entry.source))
            .collect();
        assert_eq!(
            sources,
            [
                (HEARTBEAT_INTERVAL, "6000", ConfigSource::StaticBroker),
                (SESSION_TIMEOUT, "50000", ConfigSource::Group),
            ]
        );
        assert_eq!(described[1].synonyms.len(), 2);
        let unknown_group = describe(&GroupsConfig::default(), None, None);
        assert!(
            unknown_group
                .iter()
                .all(|entry| entry.source == ConfigSource::Default)
        );
    }
}
