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

    /// The absolute value as exactly `int_digits + frac_digits` digits with an implied
    /// decimal point. Refuses to drop non-zero decimals. Too many integer digits is an
    /// error, or with `truncate` keeps the low-order digits (COBOL's MOVE semantics).
    pub fn to_digits(
        self,
        int_digits: u32,
        frac_digits: u32,
        truncate: bool,
    ) -> Result<Digits, String> {
        let mut m = self.mantissa.unsigned_abs();
        if self.scale > frac_digits {
            let div = 10u128.pow(self.scale - frac_digits);
            if m % div != 0 {
                return Err(format!(
                    "value has {} decimal places; the picture keeps {frac_digits}",
                    self.scale
                ));
            }
            m /= div;
        } else {
            let mul = 10u128
                .checked_pow(frac_digits - self.scale)
                .and_then(|p| m.checked_mul(p))
                .ok_or_else(|| "value is too large".to_string())?;
            m = mul;
        }
        let n = (int_digits + frac_digits) as usize;
        if n > MAX_DIGITS {
            return Err(format!(
                "a picture of {n} digits is longer than {MAX_DIGITS}"
            ));
        }
        // Digits from the right, on the stack; u64 arithmetic when the value allows (the
        // common case, and much cheaper than u128 division).
        let mut out = Digits {
            buf: [b'0'; MAX_DIGITS],
            len: n,
        };
        let mut i = n;
        if let Ok(mut small) = u64::try_from(m) {
            while small != 0 && i > 0 {
                i -= 1;
                out.buf[i] = b'0' + (small % 10) as u8;
                small /= 10;
            }
            m = u128::from(small);
        } else {
            while m != 0 && i > 0 {
                i -= 1;
                out.buf[i] = b'0' + (m % 10) as u8;
                m /= 10;
            }
        }
        if m != 0 && !truncate {
            return Err(format!("value does not fit in {int_digits} integer digits"));
        }
        Ok(out)
    }
}

/// Exactly a picture's digits, ASCII, on the stack (a record has dozens of them).
#[derive(Clone, Copy)]
pub struct Digits {
    buf: [u8; MAX_DIGITS],
    len: usize,
}

impl std::ops::Deref for Digits {
    type Target = str;
    fn deref(&self) -> &str {
        // Only ASCII digits are ever stored, so this is always valid UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl fmt::Debug for Digits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq<&str> for Digits {
    fn eq(&self, other: &&str) -> bool {
        &**self == *other
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
    fn digits_for_a_picture() {
        let d = Decimal::parse("19.99").unwrap();
        assert_eq!(d.to_digits(7, 2, false).unwrap(), "000001999");
        assert_eq!(
            Decimal::parse("19.9")
                .unwrap()
                .to_digits(3, 2, false)
                .unwrap(),
            "01990"
        );
        assert!(
            Decimal::parse("19.999")
                .unwrap()
                .to_digits(7, 2, false)
                .is_err()
        );
        assert_eq!(
            Decimal::parse("19.990")
                .unwrap()
                .to_digits(7, 2, false)
                .unwrap(),
            "000001999"
        );
        assert!(
            Decimal::parse("12345")
                .unwrap()
                .to_digits(3, 0, false)
                .is_err()
        );
        assert_eq!(
            Decimal::parse("12345")
                .unwrap()
                .to_digits(3, 0, true)
                .unwrap(),
            "345"
        );
    }

    #[test]
    fn sums_align_scales() {
        let a = Decimal::parse("19.99").unwrap();
        let b = Decimal::parse("0.011").unwrap();
        assert_eq!(a.checked_add(b).unwrap().to_string(), "20.001");
    }
}
