//! Kafka config values: the types Kafka's `ConfigDef` knows, how a value
//! string is read, and the checks a value must pass.
//!
//! A value is read as Kafka reads it: trimmed; a boolean in any case; a list
//! split on commas with each element trimmed (an empty string is the empty
//! list); numbers in decimal. [`ValueSpec::normalize`] returns the value in
//! the form Kafka shows it (`" 100"` becomes `"100"`, `"TRUE"` becomes
//! `"true"`, `"0.5"` stays `"0.5"`, a list is joined with commas), or the
//! reason it is refused. Both topic configs (`topic_config.rs`) and broker
//! settings (`broker_config.rs`) are described by a [`ValueSpec`].

/// A config's type, with its DescribeConfigs code (KIP-569).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigType {
    Boolean,
    String,
    Int,
    Long,
    Double,
    List,
}

impl ConfigType {
    /// DescribeConfigs' `config_type` (v3+).
    pub fn code(self) -> i8 {
        match self {
            ConfigType::Boolean => 1,
            ConfigType::String => 2,
            ConfigType::Int => 3,
            ConfigType::Long => 5,
            ConfigType::Double => 6,
            ConfigType::List => 7,
        }
    }

    /// Whether IncrementalAlterConfigs may APPEND to or SUBTRACT from it.
    pub fn is_list(self) -> bool {
        self == ConfigType::List
    }
}

/// What a value must satisfy beyond its type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Check {
    Any,
    /// An integer (INT or LONG) within `min..=max`.
    Range {
        min: i64,
        max: i64,
    },
    /// Kafka's gzip level: -1 (the codec's default) or 1 to 9.
    GzipLevel,
    /// A DOUBLE within `min..=max`.
    Fraction {
        min: f64,
        max: f64,
    },
    /// A STRING that is one of these (case-sensitive, as Kafka's `ValidString`).
    OneOf(&'static [&'static str]),
    /// A LIST whose every element is one of these (Kafka's `ValidList`).
    EachOf(&'static [&'static str]),
    /// Kafka's throttled-replicas list: `*`, or `partition:broker` pairs.
    ThrottledReplicas,
    /// A Kafka release or inter-broker protocol version (`3.0`, `2.8-IV1`).
    KafkaVersion,
}

/// A config's type and checks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValueSpec {
    pub kind: ConfigType,
    pub check: Check,
}

impl ValueSpec {
    pub const fn new(kind: ConfigType, check: Check) -> ValueSpec {
        ValueSpec { kind, check }
    }

    /// `raw` in the form Kafka shows it, or why it is not a valid value.
    pub fn normalize(&self, raw: &str) -> Result<String, String> {
        let trimmed = raw.trim();
        let normalized = match self.kind {
            ConfigType::Boolean => match trimmed.to_ascii_lowercase().as_str() {
                "true" => "true".to_owned(),
                "false" => "false".to_owned(),
                _ => return Err("expected true or false".to_owned()),
            },
            ConfigType::Int => {
                let value = trimmed
                    .parse::<i32>()
                    .map_err(|error| format!("expected a 32-bit integer ({error})"))?;
                self.check_integer(i64::from(value))?;
                value.to_string()
            }
            ConfigType::Long => {
                let value = trimmed
                    .parse::<i64>()
                    .map_err(|error| format!("expected a 64-bit integer ({error})"))?;
                self.check_integer(value)?;
                value.to_string()
            }
            ConfigType::Double => {
                let value = trimmed
                    .parse::<f64>()
                    .map_err(|error| format!("expected a number ({error})"))?;
                self.check_fraction(value)?;
                format_double(value)
            }
            ConfigType::String => {
                if let Check::OneOf(allowed) = self.check
                    && !allowed.contains(&trimmed)
                {
                    return Err(format!("expected one of {}", allowed.join(", ")));
                }
                if self.check == Check::KafkaVersion && !is_kafka_version(trimmed) {
                    return Err("expected a Kafka version such as 3.0 or 2.8-IV1".to_owned());
                }
                trimmed.to_owned()
            }
            ConfigType::List => {
                let items = list_items(trimmed);
                self.check_list(&items)?;
                items.join(",")
            }
        };
        Ok(normalized)
    }

    fn check_integer(&self, value: i64) -> Result<(), String> {
        match self.check {
            Check::Range { min, max } if value < min || value > max => Err(match (min, max) {
                (min, i64::MAX) | (min, 0x7fff_ffff) => format!("must be at least {min}"),
                (min, max) => format!("must be between {min} and {max}"),
            }),
            Check::GzipLevel if value != -1 && !(1..=9).contains(&value) => {
                Err("must be between 1 and 9, or -1 for the codec's default".to_owned())
            }
            _ => Ok(()),
        }
    }

    fn check_fraction(&self, value: f64) -> Result<(), String> {
        match self.check {
            Check::Fraction { min, max } if !(min..=max).contains(&value) => {
                Err(format!("must be between {min} and {max}"))
            }
            _ if !value.is_finite() => Err("must be a finite number".to_owned()),
            _ => Ok(()),
        }
    }

    fn check_list(&self, items: &[&str]) -> Result<(), String> {
        match self.check {
            Check::EachOf(allowed) => {
                if let Some(item) = items.iter().find(|item| !allowed.contains(item)) {
                    Err(format!("{item:?} is not one of {}", allowed.join(", ")))
                } else if let Some(twice) =
                    (1..items.len()).find(|&at| items[..at].contains(&items[at]))
                {
                    Err(format!("{:?} is listed twice", items[twice]))
                } else {
                    Ok(())
                }
            }
            Check::ThrottledReplicas => {
                let pairs = items.iter().all(|item| is_replica_pair(item));
                if pairs || items == ["*"] {
                    Ok(())
                } else {
                    Err(
                        "expected * or a list of partition:broker pairs, such as 0:1,1:1"
                            .to_owned(),
                    )
                }
            }
            _ => Ok(()),
        }
    }
}

/// The elements of a LIST value: split on commas, trimmed, the empty string
/// being the empty list (Kafka's `ConfigDef.parseType`).
pub fn list_items(value: &str) -> Vec<&str> {
    let value = value.trim();
    if value.is_empty() {
        return Vec::new();
    }
    value.split(',').map(str::trim).collect()
}

/// A double as Java's `Double.toString` writes the plain ones: `0.5`, `1.0`.
fn format_double(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e7 {
        format!("{value:.1}")
    } else {
        value.to_string()
    }
}

fn is_replica_pair(item: &str) -> bool {
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    item.split_once(':')
        .is_some_and(|(partition, broker)| digits(partition) && digits(broker))
}

/// `0.10.2`, `2.8`, `3.0-IV1`: two or three dot-separated numbers and an
/// optional `-IVn` suffix, as Kafka's `MetadataVersion.fromVersionString`
/// reads them (a major version from 0 to 4).
fn is_kafka_version(text: &str) -> bool {
    let (release, iv) = match text.split_once("-IV") {
        Some((release, iv)) => (release, Some(iv)),
        None => (text, None),
    };
    let number = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    let parts: Vec<&str> = release.split('.').collect();
    let release_ok = (2..=3).contains(&parts.len())
        && parts.iter().all(|part| number(part))
        && parts[0].parse::<u32>().is_ok_and(|major| major <= 4);
    release_ok && iv.is_none_or(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_and_shown_as_kafka_reads_and_shows_them() {
        let long = ValueSpec::new(
            ConfigType::Long,
            Check::Range {
                min: -1,
                max: i64::MAX,
            },
        );
        assert_eq!(long.normalize(" 100 ").unwrap(), "100");
        assert_eq!(long.normalize("+5").unwrap(), "5");
        assert!(long.normalize("-2").unwrap_err().contains("at least -1"));
        assert!(long.normalize("soon").is_err());
        let int = ValueSpec::new(
            ConfigType::Int,
            Check::Range {
                min: 0,
                max: i32::MAX.into(),
            },
        );
        assert!(int.normalize("2147483648").unwrap_err().contains("32-bit"));
        let boolean = ValueSpec::new(ConfigType::Boolean, Check::Any);
        assert_eq!(boolean.normalize("TRUE").unwrap(), "true");
        assert!(boolean.normalize("yes").is_err());
        let ratio = ValueSpec::new(ConfigType::Double, Check::Fraction { min: 0.0, max: 1.0 });
        assert_eq!(ratio.normalize("1").unwrap(), "1.0");
        assert_eq!(ratio.normalize("0.25").unwrap(), "0.25");
        assert!(ratio.normalize("1.5").is_err());
        assert!(ratio.normalize("NaN").is_err());
        let policy = ValueSpec::new(ConfigType::List, Check::EachOf(&["compact", "delete"]));
        assert_eq!(
            policy.normalize(" delete , compact").unwrap(),
            "delete,compact"
        );
        assert_eq!(policy.normalize("").unwrap(), "");
        assert!(
            policy
                .normalize("compact,compact")
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            policy
                .normalize("delete,shred")
                .unwrap_err()
                .contains("shred")
        );
        let codec = ValueSpec::new(ConfigType::String, Check::OneOf(&["producer", "zstd"]));
        assert!(codec.normalize("ZSTD").is_err());
        let gzip = ValueSpec::new(ConfigType::Int, Check::GzipLevel);
        assert!(gzip.normalize("-1").is_ok() && gzip.normalize("9").is_ok());
        assert!(gzip.normalize("0").is_err() && gzip.normalize("10").is_err());
    }

    #[test]
    fn throttled_replicas_and_versions_follow_kafkas_patterns() {
        let replicas = ValueSpec::new(ConfigType::List, Check::ThrottledReplicas);
        assert_eq!(replicas.normalize("0:1, 1:1").unwrap(), "0:1,1:1");
        assert_eq!(replicas.normalize("*").unwrap(), "*");
        assert_eq!(replicas.normalize("").unwrap(), "");
        assert!(replicas.normalize("0:1,*").is_err());
        assert!(replicas.normalize("zero:one").is_err());
        let version = ValueSpec::new(ConfigType::String, Check::KafkaVersion);
        for good in ["0.10.2", "2.8", "3.0-IV1", "0.11.0-IV2"] {
            assert!(version.normalize(good).is_ok(), "{good}");
        }
        for bad in ["3", "three", "3.0-IV", "9.0", "3.0.1.2"] {
            assert!(version.normalize(bad).is_err(), "{bad}");
        }
    }
}
