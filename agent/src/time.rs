//! Wall-clock helpers: milliseconds since the Unix epoch inside, RFC 3339 at the API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{AgentError, Result};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// An RFC 3339 timestamp (any offset, years 0000-9999, any fraction: what JSON Schema's
/// `date-time` allows) as milliseconds since the epoch. A time before the epoch is 0: no memory
/// is older, so as a bound it means the same.
pub fn parse_timestamp_ms(text: &str) -> Result<u64> {
    let time = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| AgentError::invalid(format!("timestamp {text:?} is not RFC 3339 ({e})")))?;
    Ok(u64::try_from(time.timestamp_millis()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ms = 1_767_312_000_123;
        assert_eq!(format_ms(ms), "2026-01-02T00:00:00.123Z");
        assert_eq!(parse_timestamp_ms(&format_ms(ms)).unwrap(), ms);
        assert!(parse_timestamp_ms("not a time").is_err());
        assert!(parse_timestamp_ms("2026-01-02").is_err());
    }

    #[test]
    fn every_rfc_3339_form_parses() {
        let ms = 1_767_312_000_123;
        for text in [
            "2026-01-02T00:00:00.123Z",
            "2026-01-02t00:00:00.123z",
            "2026-01-02T01:00:00.123+01:00",
            "2026-01-01T23:00:00.123456789-01:00",
        ] {
            assert_eq!(parse_timestamp_ms(text).unwrap(), ms, "{text}");
        }
        assert_eq!(parse_timestamp_ms("0427-08-28T07:10:23Z").unwrap(), 0);
        assert_eq!(parse_timestamp_ms("1969-12-31T23:59:59.999Z").unwrap(), 0);
    }
}
