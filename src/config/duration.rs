//! Durations in `config.toml`, written as in patterns: `"250ms"`, `"90s"`,
//! `"5m"`, `"6h"`, `"1d"`.

use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::testfile::parse_duration;

/// A duration read from a string such as `"5s"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Duration {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub fn millis(self) -> i64 {
        self.0.as_millis().min(i64::MAX as u128) as i64
    }

    pub fn parse(s: &str) -> Result<Duration, String> {
        let ms = parse_duration(s)?;
        if ms < 0 {
            return Err(format!("bad duration {s:?}: must not be negative"));
        }
        Ok(Duration::from_millis(ms as u64))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}
