//! Job identifiers: UUIDv7, so that ids sort by creation time and make stable list cursors.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Uuid);

impl JobId {
    pub fn new() -> JobId {
        JobId(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job id {0:?}: expected a UUID such as 0192f5e4-7b1c-7d3a-9c2e-5f0a1b2c3d4e")]
pub struct InvalidJobId(pub String);

impl FromStr for JobId {
    type Err = InvalidJobId;

    /// Only the canonical hyphenated form is accepted, so that one job has exactly one spelling.
    fn from_str(s: &str) -> Result<JobId, InvalidJobId> {
        if s.len() != 36 {
            return Err(InvalidJobId(truncate(s)));
        }
        Uuid::try_parse(s)
            .map(JobId)
            .map_err(|_| InvalidJobId(truncate(s)))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_creation() {
        let a = JobId::new();
        let b = JobId::new();
        assert!(a < b);
        assert_eq!(a.to_string().parse::<JobId>().unwrap(), a);
    }

    #[test]
    fn bad_ids_are_refused() {
        for bad in [
            "",
            "1",
            "../etc",
            "0192f5e47b1c7d3a9c2e5f0a1b2c3d4e",
            &"a".repeat(100),
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?} accepted");
        }
    }
}
