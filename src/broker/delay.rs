//! Delayed delivery's record headers (issue 18; ARCHITECTURE.md, "Delayed
//! delivery, retry and dead letters"): which produced records are delayed,
//! until when, and how long a retried record waits.
//!
//! A record is delayed by at most one of three headers, each a decimal
//! ASCII number: [`DELAY_LEVEL`] (1 to the number of levels: RocketMQ's
//! 18 levels by default, `delay.levels_ms`), [`DELAY_MS`] (relative to the
//! broker's clock at Produce) or [`DELIVER_AT_MS`] (absolute, epoch
//! milliseconds); without one, by its topic's `sluice.delivery.delay.ms`.
//! A value that is not such a number, a level outside the table, a due time
//! more than `delay.max_delay_ms` ahead, or two delay headers on one record
//! is an error naming the header, which Produce turns into INVALID_RECORD
//! for the record (KIP-467). A due time not after the broker's clock is no
//! delay.

/// Header: the RocketMQ delay level, 1 = the first of the levels.
pub const DELAY_LEVEL: &str = "sluice.delay.level";
/// Header: milliseconds to wait from the broker's clock at Produce.
pub const DELAY_MS: &str = "sluice.delay.ms";
/// Header: the delivery time, epoch milliseconds.
pub const DELIVER_AT_MS: &str = "sluice.deliver.at.ms";
/// Header: how many times a retried record was consumed and failed
/// (RocketMQ's `reconsumeTimes`); missing = 0.
pub const RECONSUME_TIMES: &str = "sluice.reconsume.times";
/// Headers added at delivery: the record's offset and timestamp at Produce.
pub use crate::storage::timer::notes::{ORIGIN_OFFSET, ORIGIN_TIMESTAMP};

/// The clock delayed delivery runs on, epoch milliseconds: the wall clock
/// (plus, in debug builds, a test's offset: `failpoint::clock_offset_ms`).
/// Produce computes due times with it and the timer delivers by it.
pub fn clock_ms() -> i64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64);
    wall.saturating_add(crate::failpoint::clock_offset_ms())
}

/// RocketMQ's delay levels (`messageDelayLevel`), in milliseconds:
/// `1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h`.
pub const ROCKETMQ_LEVELS_MS: [u64; 18] = [
    1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000,
    480_000, 540_000, 600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
];

/// The level a retried record's first attempt waits for: RocketMQ's
/// consumer retries start at level 3 (10 s) and go one level up per
/// attempt, so 16 attempts use levels 3 to 18.
const FIRST_RETRY_LEVEL: usize = 3;

/// What decides a record's delay besides its own headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayRules<'a> {
    /// Level `n` waits `levels_ms[n - 1]` milliseconds.
    pub levels_ms: &'a [u64],
    /// The longest delay accepted, milliseconds (`delay.max_delay_ms`).
    pub max_delay_ms: u64,
    /// The topic's `sluice.delivery.delay.ms`: the delay of a record with no
    /// delay header; 0 = none.
    pub topic_delay_ms: u64,
}

/// When a produced record is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Appended at once, as any record.
    Now,
    /// Held until this epoch millisecond (after the broker's clock at
    /// Produce, at most `max_delay_ms` after it).
    At(i64),
}

/// When a record with `headers` (key, value; `None` is a null value),
/// produced at the broker's `now_ms`, is delivered. Errors name the header
/// and say what is wrong with it.
pub fn delivery<'h>(
    headers: impl IntoIterator<Item = (&'h [u8], Option<&'h [u8]>)>,
    now_ms: i64,
    rules: &DelayRules<'_>,
) -> Result<Delivery, String> {
    let mut found: Option<(&'static str, i64)> = None;
    for (key, value) in headers {
        reserved(key)?;
        let Some(name) = [DELAY_LEVEL, DELAY_MS, DELIVER_AT_MS]
            .into_iter()
            .find(|name| name.as_bytes() == key)
        else {
            continue;
        };
        if let Some((first, _)) = found {
            return Err(if first == name {
                format!("header {name} is given twice")
            } else {
                format!("headers {first} and {name} are both given; a record takes one delay")
            });
        }
        let number = decimal(name, value)?;
        let due = match name {
            DELAY_LEVEL => {
                let level = usize::try_from(number).ok().filter(|level| *level >= 1);
                let delay = level
                    .and_then(|level| rules.levels_ms.get(level - 1))
                    .ok_or_else(|| {
                        format!(
                            "header {name} is {number}, not a level from 1 to {}",
                            rules.levels_ms.len()
                        )
                    })?;
                after(now_ms, *delay)
            }
            DELAY_MS => after(now_ms, number),
            _ => i64::try_from(number).unwrap_or(i64::MAX),
        };
        found = Some((name, due));
    }
    let due = match found {
        Some((name, due)) => {
            let latest = after(now_ms, rules.max_delay_ms);
            if due > latest {
                return Err(format!(
                    "header {name} asks for delivery {} ms from now, past the longest delay of {} ms",
                    i128::from(due) - i128::from(now_ms),
                    rules.max_delay_ms
                ));
            }
            due
        }
        None if rules.topic_delay_ms > 0 => after(now_ms, rules.topic_delay_ms),
        None => return Ok(Delivery::Now),
    };
    Ok(if due > now_ms {
        Delivery::At(due)
    } else {
        Delivery::Now
    })
}

/// An error if `key` names a header only the broker writes (the timer's
/// due-time and target headers, `storage/timer/held.rs`).
pub fn reserved(key: &[u8]) -> Result<(), String> {
    use crate::storage::timer::held::{DUE_HEADER, TARGET_HEADER};
    match [DUE_HEADER, TARGET_HEADER]
        .into_iter()
        .find(|name| name.as_bytes() == key)
    {
        Some(name) => Err(format!(
            "header {name} is the broker's own (it marks how a held record is delivered); a \
             record may not carry it"
        )),
        None => Ok(()),
    }
}

/// How long a retried record waits before attempt `reconsume_times + 1`:
/// the level `3 + reconsume_times` (the last level past the table's end).
pub fn retry_delay_ms(reconsume_times: u32, levels_ms: &[u64]) -> u64 {
    let level = FIRST_RETRY_LEVEL.saturating_add(reconsume_times as usize);
    levels_ms
        .get(level - 1)
        .or(levels_ms.last())
        .copied()
        .unwrap_or(0)
}

/// A header's value as a decimal number: ASCII digits only, at most 18 of
/// them (so every value fits an `i64` epoch millisecond).
pub fn decimal(name: &str, value: Option<&[u8]>) -> Result<u64, String> {
    let value = value.ok_or_else(|| format!("header {name} has no value"))?;
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "header {name} is {:?}, not a decimal number of at most 18 digits",
            String::from_utf8_lossy(&value[..value.len().min(40)])
        ));
    }
    Ok(value
        .iter()
        .fold(0, |number, digit| number * 10 + u64::from(digit - b'0')))
}

/// `now_ms + delay_ms`, saturating.
fn after(now_ms: i64, delay_ms: u64) -> i64 {
    now_ms.saturating_add(i64::try_from(delay_ms).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const RULES: DelayRules<'static> = DelayRules {
        levels_ms: &ROCKETMQ_LEVELS_MS,
        max_delay_ms: 30 * 24 * 3_600_000,
        topic_delay_ms: 0,
    };

    fn due(headers: &[(&str, Option<&str>)], rules: &DelayRules<'_>) -> Result<Delivery, String> {
        delivery(
            headers
                .iter()
                .map(|(key, value)| (key.as_bytes(), value.map(str::as_bytes))),
            NOW,
            rules,
        )
    }

    #[test]
    fn each_header_sets_the_due_time() {
        assert_eq!(due(&[], &RULES), Ok(Delivery::Now));
        assert_eq!(
            due(&[("trace", Some("x")), (DELAY_LEVEL, Some("1"))], &RULES),
            Ok(Delivery::At(NOW + 1_000))
        );
        assert_eq!(
            due(&[(DELAY_LEVEL, Some("18"))], &RULES),
            Ok(Delivery::At(NOW + 7_200_000))
        );
        assert_eq!(
            due(&[(DELAY_MS, Some("250"))], &RULES),
            Ok(Delivery::At(NOW + 250))
        );
        let at = (NOW + 5_000).to_string();
        assert_eq!(
            due(&[(DELIVER_AT_MS, Some(&at))], &RULES),
            Ok(Delivery::At(NOW + 5_000))
        );
    }

    #[test]
    fn a_due_time_not_ahead_is_no_delay() {
        assert_eq!(due(&[(DELAY_MS, Some("0"))], &RULES), Ok(Delivery::Now));
        let past = (NOW - 1).to_string();
        assert_eq!(
            due(&[(DELIVER_AT_MS, Some(&past))], &RULES),
            Ok(Delivery::Now)
        );
        assert_eq!(
            due(&[(DELIVER_AT_MS, Some("0"))], &RULES),
            Ok(Delivery::Now)
        );
    }

    #[test]
    fn the_topic_delay_applies_to_records_without_a_delay_header() {
        let rules = DelayRules {
            topic_delay_ms: 60_000,
            ..RULES
        };
        assert_eq!(due(&[], &rules), Ok(Delivery::At(NOW + 60_000)));
        assert_eq!(
            due(&[(DELAY_MS, Some("10"))], &rules),
            Ok(Delivery::At(NOW + 10)),
            "the record's own header wins"
        );
        assert_eq!(
            due(&[(DELAY_MS, Some("0"))], &rules),
            Ok(Delivery::Now),
            "and may ask for none"
        );
    }

    #[test]
    fn bad_values_are_errors_naming_the_header() {
        for (headers, says) in [
            (vec![(DELAY_LEVEL, Some("0"))], "not a level from 1 to 18"),
            (vec![(DELAY_LEVEL, Some("19"))], "not a level from 1 to 18"),
            (vec![(DELAY_MS, Some("-5"))], "not a decimal number"),
            (vec![(DELAY_MS, Some(" 5"))], "not a decimal number"),
            (vec![(DELAY_MS, Some("5s"))], "not a decimal number"),
            (vec![(DELAY_MS, Some(""))], "not a decimal number"),
            (
                vec![(DELAY_MS, Some("1234567890123456789"))],
                "at most 18 digits",
            ),
            (vec![(DELAY_MS, None)], "has no value"),
            (
                vec![(DELAY_MS, Some("2592000001"))],
                "past the longest delay",
            ),
            (
                vec![(DELIVER_AT_MS, Some("999999999999999999"))],
                "past the longest delay",
            ),
            (
                vec![(DELAY_MS, Some("1")), (DELAY_MS, Some("2"))],
                "given twice",
            ),
            (
                vec![(DELAY_MS, Some("1")), (DELAY_LEVEL, Some("2"))],
                "both given",
            ),
            (vec![("sluice.due.ms", Some("1"))], "the broker's own"),
            (
                vec![("sluice.target.partition", Some("1"))],
                "the broker's own",
            ),
        ] {
            let error = due(&headers, &RULES).unwrap_err();
            assert!(error.contains(says), "{headers:?}: {error}");
            assert!(error.contains("sluice."), "{error}");
        }
        assert!(
            due(&[(DELAY_MS, Some("2592000000"))], &RULES).is_ok(),
            "30 days"
        );
    }

    #[test]
    fn retries_wait_rocketmqs_back_off_from_level_3() {
        let waits: Vec<u64> = (0..18)
            .map(|times| retry_delay_ms(times, &ROCKETMQ_LEVELS_MS))
            .collect();
        assert_eq!(&waits[..4], &[10_000, 30_000, 60_000, 120_000]);
        assert_eq!(waits[15], 7_200_000, "the 16th attempt: 2 h");
        assert_eq!(waits[17], 7_200_000, "past the table: the last level");
        assert_eq!(retry_delay_ms(u32::MAX, &ROCKETMQ_LEVELS_MS), 7_200_000);
        assert_eq!(retry_delay_ms(0, &[]), 0);
    }
}
