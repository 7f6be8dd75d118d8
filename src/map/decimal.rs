//! Exact decimal numbers for `number:` pictures, packed and binary fields and hash totals.
//!
//! Invariant: no value ever passes through a float. Payload numbers arrive as their JSON
//! text (serde_json's `arbitrary_precision`), are parsed here into a scaled `i128` and leave
//! as digits, so `19.99` stays `19.99` and a hash total of a million amounts is exact.

use std::fmt;

/// `mantissa / 10^scale`, exactly. 38 significant digits, more than any COBOL picture (31).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    pub mantissa: i128,
    pub scale: u32,
}

/// The most digits a value may have.
const MAX_DIGITS: usize = 38;

impl Decimal {
    pub const ZERO: Decimal = Decimal {
        mantissa: 0,
        scale: 0,
    };

    /// Parses `[+-]digits[.digits]` (surrounding spaces allowed). No exponents, no
    /// thousands separators: those are refused rather than guessed.
    pub fn parse(text: &str) -> Result<Decimal, String> {
        let t = text.trim();
        let (negative, body) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
            return Err("value is not a decimal number".to_string());
        }
        let int = int.trim_start_matches('0');
        if int.len() + frac.len() > MAX_DIGITS {
            return Err(format!("value has more than {MAX_DIGITS} digits"));
        }
        let mut mantissa: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            // Cannot overflow: at most 38 digits, and i128 holds 10^38 - 1.
            mantissa = mantissa * 10 + i128::from(b - b'0');
        }
        // `frac.len() <= 38` was checked above.
        let scale = frac.len() as u32;
        Ok(Decimal {
            mantissa: if negative { -mantissa } else { mantissa },
            scale,
        })
    }

    pub fn is_negative(self) -> bool {
        self.mantissa < 0
    }

    /// The sum, or `None` past 38 digits.
    pub fn checked_add(self, other: Decimal) -> Option<Decimal> {
        let scale = self.scale.max(other.scale);
        let a = self
            .mantissa
            .checked_mul(10i128.checked_pow(scale - self.scale)?)?;
        let b = other
            .mantissa
            .checked_mul(10i128.checked_pow(scale - other.scale)?)?;
        Some(Decimal {
            mantissa: a.checked_add(b)?,
            scale,
        })
    }

    /// The absolute value as the integer a picture of `digits` digits at `scale` stores
    /// (`value × 10^scale`, below `10^digits`). Refuses to drop non-zero decimals. Too many
    /// integer digits is an error, or with `truncate` keeps the low-order digits (COBOL's
    /// MOVE semantics).
    pub fn to_stored(self, digits: u32, scale: i32, truncate: bool) -> Result<u128, String> {
        let m = self.mantissa.unsigned_abs();
        // Scales are at most 38 (values) and 31 + 31 (pictures) apart: the casts cannot wrap.
        let have = self.scale as i32;
        let m = if have > scale {
            let (rem, quot) = match 10u128.checked_pow((have - scale) as u32) {
                Some(div) => (m % div, m / div),
                None => (m, 0),
            };
            if rem != 0 {
                return Err(if scale >= 0 {
                    format!(
                        "value has {} decimal places; the picture keeps {scale}",
                        self.scale
                    )
                } else {
                    format!(
                        "value is not a multiple of {} (the picture's P positions)",
                        Decimal::power_of_ten(-scale)
                    )
                });
            }
            quot
        } else if m == 0 {
            0
        } else {
            10u128
                .checked_pow((scale - have) as u32)
                .and_then(|p| m.checked_mul(p))
                .ok_or_else(|| "value is too large".to_string())?
        };
        if digits as usize > MAX_DIGITS {
            return Err(format!(
                "a picture of {digits} digits is longer than {MAX_DIGITS}"
            ));
        }
        let limit = 10u128.pow(digits);
        if m < limit {
            return Ok(m);
        }
        if truncate {
            return Ok(m % limit);
        }
        let int = digits as i32 - scale;
        Err(if int > 0 {
            format!("value does not fit in {int} integer digits")
        } else {
            format!(
                "value does not fit the picture (it holds less than {})",
                Decimal::power_of_ten(int)
            )
        })
    }

    /// `10^e` (e may be negative), for messages.
    fn power_of_ten(e: i32) -> Decimal {
        if e >= 0 {
            Decimal {
                mantissa: 10i128.pow(e as u32),
                scale: 0,
            }
        } else {
            Decimal {
                mantissa: 1,
                scale: (-e) as u32,
            }
        }
    }

    /// `stored × 10^-scale` as a decimal (for decoding), keeping the picture's own scale so
    /// `V99` always shows two decimals. `None` past 38 digits.
    pub fn from_stored(negative: bool, stored: u128, scale: i32) -> Option<Decimal> {
        let (mantissa, scale) = if scale >= 0 {
            (i128::try_from(stored).ok()?, scale as u32)
        } else {
            let m = i128::try_from(stored)
                .ok()?
                .checked_mul(10i128.checked_pow((-scale) as u32)?)?;
            (m, 0)
        };
        Some(Decimal {
            mantissa: if negative { -mantissa } else { mantissa },
            scale,
        })
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.mantissa.unsigned_abs().to_string();
        let scale = self.scale as usize;
        let sign = if self.mantissa < 0 { "-" } else { "" };
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let digits = format!("{digits:0>w$}", w = scale + 1);
        let (int, frac) = digits.split_at(digits.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly_and_prints_back() {
        for s in [
            "19.99",
            "-0.05",
            "0",
            "1234567890123456789012345.6789",
            "007",
        ] {
            let d = Decimal::parse(s).unwrap();
            assert_eq!(d.to_string(), s.trim_start_matches("00"));
        }
        assert!(Decimal::parse("1e3").is_err());
        assert!(Decimal::parse("1,000").is_err());
        assert!(Decimal::parse(".").is_err());
        assert!(Decimal::parse("-").is_err());
    }

    #[test]
    fn stored_integers_for_a_picture() {
        let d = |s: &str| Decimal::parse(s).unwrap();
        assert_eq!(d("19.99").to_stored(9, 2, false).unwrap(), 1999);
        assert_eq!(d("19.9").to_stored(5, 2, false).unwrap(), 1990);
        assert!(d("19.999").to_stored(9, 2, false).is_err());
        assert_eq!(d("19.990").to_stored(9, 2, false).unwrap(), 1999);
        let e = d("12345").to_stored(3, 0, false).unwrap_err();
        assert!(e.contains("does not fit in 3 integer digits"), "{e}");
        assert_eq!(d("12345").to_stored(3, 0, true).unwrap(), 345);
        // 9(3)PPP and PPP9(3).
        assert_eq!(d("123000").to_stored(3, -3, false).unwrap(), 123);
        let e = d("123456").to_stored(3, -3, false).unwrap_err();
        assert!(e.contains("multiple of 1000"), "{e}");
        assert_eq!(d("0.000456").to_stored(3, 6, false).unwrap(), 456);
        let e = d("0.5").to_stored(3, 6, false).unwrap_err();
        assert!(e.contains("less than 0.001"), "{e}");
        let show = |n, m, s| Decimal::from_stored(n, m, s).unwrap().to_string();
        assert_eq!(show(true, 1999, 2), "-19.99");
        assert_eq!(show(false, 123, -3), "123000");
        assert_eq!(show(false, 456, 6), "0.000456");
        assert_eq!(show(false, 0, 2), "0.00");
    }

    #[test]
    fn sums_align_scales() {
        let a = Decimal::parse("19.99").unwrap();
        let b = Decimal::parse("0.011").unwrap();
        assert_eq!(a.checked_add(b).unwrap().to_string(), "20.001");
    }
}
