//! Counts in requests (`k`, `limit`) as JSON numbers, not only as Rust integers: JSON has one
//! number type, and JSON Schema's `integer` includes `10.0`, so a client that writes a count as
//! a float with no fraction (JavaScript, many JSON libraries) is answered, not refused. Query
//! strings carry the same numbers as text.

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{self, Visitor},
};

/// Deserializes a `usize` from a JSON integer or a float with no fractional part; a string is
/// refused, as its schema says.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    deserializer.deserialize_any(WholeNumber)
}

/// An optional count in a query string, where every value is text: the same numbers, written
/// out.
pub fn deserialize_optional_text<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    let Some(text) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let number = if let Ok(whole) = text.parse::<u64>() {
        WholeNumber.visit_u64(whole)
    } else {
        match text.parse::<f64>() {
            Ok(number) if number.is_finite() => WholeNumber.visit_f64(number),
            _ => Err(de::Error::invalid_value(de::Unexpected::Str(&text), &WholeNumber)),
        }
    };
    number.map(Some)
}

struct WholeNumber;

impl Visitor<'_> for WholeNumber {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number of at least 0")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        usize::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
        usize::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<usize, E> {
        // 2^53: beyond it not every whole float is exact, and no count gets near it.
        const EXACT: f64 = 9_007_199_254_740_992.0;
        if v.fract() == 0.0 && (0.0..=EXACT).contains(&v) {
            Ok(v as usize)
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    struct Request {
        #[serde(deserialize_with = "super::deserialize")]
        k: usize,
    }

    #[derive(Deserialize, Debug)]
    struct Query {
        #[serde(default, deserialize_with = "super::deserialize_optional_text")]
        limit: Option<usize>,
    }

    fn parse(json: &str) -> Result<Request, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn whole_numbers_are_counts_however_they_are_written() {
        assert_eq!(parse(r#"{"k": 88}"#).unwrap().k, 88);
        assert_eq!(parse(r#"{"k": 88.0}"#).unwrap().k, 88);
        assert_eq!(parse(r#"{"k": 8.8e1}"#).unwrap().k, 88);
    }

    #[test]
    fn fractions_negatives_and_text_are_refused() {
        for bad in [
            r#"{"k": 88.5}"#,
            r#"{"k": -1}"#,
            r#"{"k": -1.0}"#,
            r#"{"k": "88"}"#,
            r#"{"k": 1e300}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad} was taken");
        }
    }

    #[test]
    fn query_strings_carry_the_same_numbers_as_text() {
        let limit = |query: &str| serde_urlencoded::from_str::<Query>(query).map(|q| q.limit);
        assert_eq!(limit("limit=7").unwrap(), Some(7));
        assert_eq!(limit("limit=7.0").unwrap(), Some(7));
        assert_eq!(limit("").unwrap(), None);
        for bad in ["limit=8.5", "limit=ten", "limit=-1", "limit=", "limit=inf"] {
            assert!(limit(bad).is_err(), "{bad} was taken");
        }
    }
}
