//! `--to-datetime` values: RFC 3339 (`2026-11-21T10:00:00Z`,
//! `2026-11-21T10:00:00.250+01:00`) or milliseconds since the epoch.

/// A `--to-datetime` value that is neither RFC 3339 nor epoch milliseconds.
/// The message quotes the whole value and the forms accepted; which number
/// parser refused which part ("invalid digit") would tell the operator less.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read {text:?} as a time: use 2026-11-21T10:00:00Z (RFC 3339) or epoch milliseconds"
)]
pub struct DatetimeError {
    pub text: String,
}

/// Milliseconds since the Unix epoch.
pub fn parse_ms(text: &str) -> Result<i64, DatetimeError> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let error = || DatetimeError {
        text: text.to_owned(),
    };
    let (date, rest) = text.split_once(['T', ' ']).ok_or_else(error)?;
    let mut date_parts = date.split('-');
    let next_number = |parts: &mut std::str::Split<'_, char>| -> Result<i64, DatetimeError> {
        parts
            .next()
            .and_then(|part| part.parse().ok())
            .ok_or_else(error)
    };
    let year = next_number(&mut date_parts)?;
    let month = next_number(&mut date_parts)?;
    let day = next_number(&mut date_parts)?;
    let (clock, offset_minutes) = split_zone(rest).ok_or_else(error)?;
    let mut clock_parts = clock.split(':');
    let hour = next_number(&mut clock_parts)?;
    let minute = next_number(&mut clock_parts)?;
    let seconds: f64 = clock_parts
        .next()
        .unwrap_or("0")
        .parse()
        .ok()
        .ok_or_else(error)?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || !(0.0..61.0).contains(&seconds)
    {
        return Err(error());
    }
    let days = days_from_civil(year, month, day);
    let ms = ((days * 24 + hour) * 60 + minute - offset_minutes) * 60_000
        + (seconds * 1000.0).round() as i64;
    Ok(ms)
}

/// Split `10:00:00Z` / `10:00:00+01:00` into the clock and the zone's
/// offset in minutes.
fn split_zone(rest: &str) -> Option<(&str, i64)> {
    if let Some(clock) = rest.strip_suffix(['Z', 'z']) {
        return Some((clock, 0));
    }
    let sign_at = rest.rfind(['+', '-'])?;
    let (clock, zone) = rest.split_at(sign_at);
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let (hours, minutes) = zone[1..].split_once(':').unwrap_or((&zone[1..], "0"));
    let minutes = hours.parse::<i64>().ok()? * 60 + minutes.parse::<i64>().ok()?;
    Some((clock, sign * minutes))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_epoch_ms_are_read() {
        assert_eq!(parse_ms("0").unwrap(), 0);
        assert_eq!(parse_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_ms("2026-11-21T10:00:00Z").unwrap(), 1_795_255_200_000);
        assert_eq!(
            parse_ms("2026-11-21T11:00:00.5+01:00").unwrap(),
            1_795_255_200_500
        );
        assert_eq!(
            parse_ms("2000-02-29T00:00:00-00:30").unwrap(),
            951_784_200_000
        );
        assert!(parse_ms("yesterday").is_err());
        assert!(parse_ms("2026-13-01T00:00:00Z").is_err());
    }
}
