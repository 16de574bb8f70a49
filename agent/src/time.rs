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

pub fn parse_timestamp_ms(text: &str) -> Result<u64> {
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|e| AgentError::invalid(format!("timestamp {text:?} is not RFC 3339 ({e})")))?;
    Ok(time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64))
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
    }
}
