//! A whole number of at least 1: how every count and size in the configuration is written.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A whole number ≥ 1. Zero and negatives are configuration errors, never "unlimited".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Positive(pub u64);

impl Positive {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Positive, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Positive;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number of at least 1")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Positive, E> {
                if v == 0 {
                    Err(E::custom("must be at least 1 (0 never means unlimited)"))
                } else {
                    Ok(Positive(v))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Positive, E> {
                if v <= 0 {
                    Err(E::custom(format!(
                        "must be at least 1, got {v} (0 or negative never means unlimited)"
                    )))
                } else {
                    Ok(Positive(v as u64))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A number of CPUs, possibly fractional (`0.5`, `2`, `1.25`), kept in thousandths of a CPU.
/// Finer than a thousandth, zero, negative or absurd values are configuration errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cpus(u64);

impl Cpus {
    /// Most CPUs a limit may name (a limit above the host's count simply never throttles).
    pub const MAX: u64 = 4096;

    pub fn from_millis(millis: u64) -> Option<Cpus> {
        (1..=Self::MAX * 1000)
            .contains(&millis)
            .then_some(Cpus(millis))
    }

    /// Thousandths of a CPU.
    pub fn millis(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 1000, self.0 % 1000);
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:03}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cpus, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Cpus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of CPUs such as 0.5 or 2")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cpus, E> {
                Cpus::from_millis(v.saturating_mul(1000)).ok_or_else(|| {
                    E::custom(format!(
                        "cpus must be more than 0 and at most {}, got {v}",
                        Cpus::MAX
                    ))
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cpus, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("cpus must be more than 0, got {v}"))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cpus, E> {
                let millis = v * 1000.0;
                if !v.is_finite() || v <= 0.0 || v > Cpus::MAX as f64 {
                    return Err(E::custom(format!(
                        "cpus must be more than 0 and at most {}, got {v}",
                        Cpus::MAX
                    )));
                }
                if (millis - millis.round()).abs() > 1e-6 || millis.round() < 1.0 {
                    return Err(E::custom(format!(
                        "cpus {v} is finer than a thousandth of a CPU"
                    )));
                }
                Ok(Cpus(millis.round() as u64))
            }
        }
        d.deserialize_any(V)
    }
}
