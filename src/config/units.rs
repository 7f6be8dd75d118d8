//! Human units in config files: sizes (`8MiB`, `512MB`) and durations (`30d`, `2s`, `15m`).

use std::time::Duration;

/// Why a size or duration in a config file was refused; the text names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{text:?} is not a size such as 8MiB")]
    NotASize { text: String },
    #[error("unknown size unit {unit:?} in {text:?} (use B, KiB, MiB, GiB, KB, MB, GB)")]
    SizeUnit { unit: String, text: String },
    #[error("{text:?} is not a duration such as 30d or 2s")]
    NotADuration { text: String },
    #[error("{text:?} needs a unit: ms, s, m, h, d or w")]
    NoDurationUnit { text: String },
    #[error("unknown duration unit {unit:?} in {text:?} (use ms, s, m, h, d or w)")]
    DurationUnit { unit: String, text: String },
    #[error("{text:?} is too large")]
    TooLarge { text: String },
}

/// `s` cut at its first non-digit: the number and the unit after it.
fn split_number(s: &str) -> (&str, &str) {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    (num, unit.trim())
}

/// Parses a byte size: a number with an optional unit B, KB, MB, GB (powers of 1000) or
/// KiB, MiB, GiB, TiB (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let text = s.trim();
    let (num, unit) = split_number(text);
    let n: u64 = num.parse().map_err(|_| UnitError::NotASize {
        text: text.to_string(),
    })?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        u => {
            return Err(UnitError::SizeUnit {
                unit: u.to_string(),
                text: text.to_string(),
            });
        }
    };
    n.checked_mul(mult).ok_or_else(|| UnitError::TooLarge {
        text: text.to_string(),
    })
}

/// Parses a duration: a number with a unit ms, s, m, h, d or w.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let text = s.trim();
    let (num, unit) = split_number(text);
    let n: u64 = num.parse().map_err(|_| UnitError::NotADuration {
        text: text.to_string(),
    })?;
    let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs);
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3_600),
        "d" => secs(86_400),
        "w" => secs(7 * 86_400),
        "" => {
            return Err(UnitError::NoDurationUnit {
                text: text.to_string(),
            });
        }
        u => {
            return Err(UnitError::DurationUnit {
                unit: u.to_string(),
                text: text.to_string(),
            });
        }
    };
    d.ok_or_else(|| UnitError::TooLarge {
        text: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("512MB"), Ok(512_000_000));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(
            parse_size("8 parsecs").map_err(|e| e.to_string()),
            Err(
                "unknown size unit \"parsecs\" in \"8 parsecs\" (use B, KiB, MiB, GiB, KB, MB, GB)"
                    .to_string()
            )
        );
        assert!(matches!(parse_size("MiB"), Err(UnitError::NotASize { .. })));
        assert!(matches!(
            parse_size("99999999999TiB"),
            Err(UnitError::TooLarge { .. })
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(matches!(
            parse_duration("5"),
            Err(UnitError::NoDurationUnit { .. })
        ));
        assert!(matches!(
            parse_duration("5y"),
            Err(UnitError::DurationUnit { .. })
        ));
        assert!(matches!(
            parse_duration("s"),
            Err(UnitError::NotADuration { .. })
        ));
    }
}
