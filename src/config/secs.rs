//! Durations in the config: a plain integer is seconds (as always), a string may carry units
//! (`90s`, `15m`, `1h`, `2d`, `1w`, or a sum like `1h30m`), as `regate gc --grace` takes them.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::time::Duration;

/// `30s`, `15m`, `1h`, `2d`, `1w`, sums like `1h30m`, or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            // a bare number is seconds, and only as the whole value
            "" if total == 0 => 1,
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(mult)?)?;
    }
    Some(Duration::from_secs(total))
}

const EXPECTED: &str = "a duration: seconds (3600) or a number with a unit (30s, 15m, 1h, 2d)";

struct Secs;

// errors are raised inside the deserializer's own call, so it names the key and line
impl<'de> Visitor<'de> for Secs {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
        Ok(n)
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
        u64::try_from(n).map_err(|_| E::custom(format!("{n} is negative; expected {EXPECTED}")))
    }
    fn visit_str<E: de::Error>(self, t: &str) -> Result<u64, E> {
        parse_duration(t).map(|d| d.as_secs()).ok_or_else(|| {
            E::custom(format!(
                "{t:?} is not a duration: give seconds (3600) or a number with a unit (30s, 15m, 1h, 2d)"
            ))
        })
    }
}

struct OptSecs;

impl<'de> Visitor<'de> for OptSecs {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }
    fn visit_none<E: de::Error>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(Secs).map(Some)
    }
}

/// A duration in whole seconds: `3600` or `1h`.
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(Secs)
}

/// An optional duration in whole seconds.
pub fn opt_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_option(OptSecs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums() {
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1w"), Some(Duration::from_secs(604_800)));
        for bad in ["soon", "1y", "", "h", "1h30", "-1s", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
