//! COMP-1 / COMP-2: floating point in IBM hexadecimal (HFP, the z/OS default) or IEEE 754
//! binary form, to and from decimal text.
//!
//! HFP: a sign bit, a 7-bit exponent of 16 biased by 64 and a fraction of 24 (COMP-1) or
//! 56 (COMP-2) bits whose first hex digit is not zero: value = ±0.F × 16^(e−64).
//!
//! Invariant: decoding prints the shortest decimal that encodes back to the same bits, so
//! encode(decode(bytes)) == bytes. Text is read into an f64 with correct rounding first; an
//! f64 always fits an HFP long fraction exactly (53 ≤ 56 − 3 bits), so COMP-2 in HFP keeps
//! every f64. An HFP long value with more than 53 significant bits (written by a mainframe)
//! has no f64: it is printed exactly, all of its digits, and encoding such text rounds it to
//! 53 bits (the one case where a value does not come back bit for bit).

/// Which float a field holds and how it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloatFormat {
    /// COMP-2 (8 bytes) rather than COMP-1 (4 bytes).
    pub double: bool,
    /// IEEE 754 rather than IBM hexadecimal.
    pub ieee: bool,
    /// Little-endian (a COBOL compiler on x86) rather than big-endian (z/OS).
    pub little: bool,
}

impl FloatFormat {
    pub fn width(self) -> usize {
        if self.double { 8 } else { 4 }
    }

    /// Appends the float for the decimal `text` (JSON number syntax).
    pub fn encode(self, text: &str, out: &mut Vec<u8>) -> Result<(), String> {
        let t = text.trim();
        let json_like = !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
        let v: f64 = match t.parse() {
            Ok(v) if json_like => v,
            _ => return Err("value is not a number".into()),
        };
        let bits: u64 = match (self.ieee, self.double) {
            (true, true) => {
                if !v.is_finite() {
                    return Err("value is too large for COMP-2".into());
                }
                v.to_bits()
            }
            (true, false) => {
                // Parse again as f32: correctly rounded from the text, not twice rounded.
                let f: f32 = t.parse().map_err(|_| "value is not a number".to_string())?;
                if !f.is_finite() {
                    return Err("value is too large for COMP-1 (IEEE single precision)".into());
                }
                u64::from(f.to_bits())
            }
            (false, double) => hfp_from_f64(v, if double { 56 } else { 24 })?,
        };
        let w = self.width();
        let be = bits.to_be_bytes();
        let bytes = &be[8 - w..];
        if self.little {
            out.extend(bytes.iter().rev());
        } else {
            out.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// The bits of a stored float (`bytes` is exactly [`FloatFormat::width`] long).
    fn bits(self, bytes: &[u8]) -> u64 {
        let mut v = 0u64;
        let mut push = |b: u8| v = (v << 8) | u64::from(b);
        if self.little {
            bytes.iter().rev().for_each(|&b| push(b));
        } else {
            bytes.iter().for_each(|&b| push(b));
        }
        v
    }

    /// The shortest decimal text that encodes back to `bytes`.
    pub fn decode(self, bytes: &[u8], out: &mut String) -> Result<(), String> {
        let bits = self.bits(bytes);
        match (self.ieee, self.double) {
            (true, true) => {
                let v = f64::from_bits(bits);
                if !v.is_finite() {
                    return Err("the COMP-2 value is infinite or not a number".into());
                }
                push_plain(&format!("{v:e}"), out);
            }
            (true, false) => {
                // Only the low 32 bits were read for a 4-byte field.
                let v = f32::from_bits(bits as u32);
                if !v.is_finite() {
                    return Err("the COMP-1 value is infinite or not a number".into());
                }
                push_plain(&format!("{v:e}"), out);
            }
            (false, double) => {
                let p = if double { 56 } else { 24 };
                let v = hfp_to_f64(bits, p);
                // The shortest digits whose f64 encodes to the same bits.
                for digits in 1..=17 {
                    let s = format!("{v:.*e}", digits - 1);
                    let back: f64 = s.parse().unwrap_or(f64::NAN);
                    if hfp_from_f64(back, p).ok() == Some(bits) {
                        push_plain(&s, out);
                        return Ok(());
                    }
                }
                exact_hfp(bits, p, out);
            }
        }
        Ok(())
    }
}

/// An f64 as HFP with a `p`-bit fraction (24 or 56), rounded to nearest, ties to even.
fn hfp_from_f64(v: f64, p: u32) -> Result<u64, String> {
    let total = p + 8;
    let sign = u64::from(v.is_sign_negative()) << (total - 1);
    if !v.is_finite() {
        return Err("value is not a finite number".into());
    }
    if v == 0.0 {
        return Ok(sign);
    }
    let raw = v.abs().to_bits();
    let (mut m, mut k) = ((raw & ((1 << 52) - 1)), ((raw >> 52) & 0x7FF) as i32);
    if k == 0 {
        k = -1074; // subnormal: value = m × 2^-1074
    } else {
        m |= 1 << 52;
        k -= 1075;
    }
    let len = 64 - m.leading_zeros() as i32;
    let t = k + len; // value < 2^t, value ≥ 2^(t-1)
    let mut e = t.div_euclid(4) + i32::from(t.rem_euclid(4) != 0);
    let shift = k + p as i32 - 4 * e;
    let mut f: u64 = if shift >= 0 {
        m << shift
    } else {
        let s = (-shift) as u32;
        if s >= 64 {
            0
        } else {
            let q = m >> s;
            let rem = m & ((1u64 << s) - 1);
            let half = 1u64 << (s - 1);
            q + u64::from(rem > half || (rem == half && q & 1 == 1))
        }
    };
    if f >> p != 0 {
        f >>= 4;
        e += 1;
    }
    let biased = e + 64;
    if biased > 127 {
        return Err("value is too large for IBM hexadecimal floating point (above 7.2E75)".into());
    }
    if biased < 0 || f == 0 {
        return Err("value is too small for IBM hexadecimal floating point (below 5.4E-79)".into());
    }
    Ok(sign | ((biased as u64) << p) | f)
}

/// HFP bits (a `p`-bit fraction) as the nearest f64 (exact for COMP-1).
fn hfp_to_f64(bits: u64, p: u32) -> f64 {
    let neg = bits >> (p + 7) & 1 == 1;
    let e = ((bits >> p) & 0x7F) as i32 - 64;
    let f = bits & ((1u64 << p) - 1);
    // f < 2^56 converts with one rounding; the power of two is exact in f64's range.
    let v = f as f64 * 2f64.powi(4 * e - p as i32);
    if neg { -v } else { v }
}

/// Every digit of an HFP value that no f64 holds: `F × 2^x` written out in decimal.
fn exact_hfp(bits: u64, p: u32, out: &mut String) {
    let neg = bits >> (p + 7) & 1 == 1;
    let e = ((bits >> p) & 0x7F) as i32 - 64;
    let f = bits & ((1u64 << p) - 1);
    let x = 4 * e - p as i32;
    // A little-endian base-10^9 integer.
    let mut n: Vec<u64> = vec![
        f % 1_000_000_000,
        f / 1_000_000_000 % 1_000_000_000,
        f / 1_000_000_000_000_000_000,
    ];
    let mul = |n: &mut Vec<u64>, by: u64| {
        let mut carry = 0;
        for limb in n.iter_mut() {
            let v = *limb * by + carry;
            *limb = v % 1_000_000_000;
            carry = v / 1_000_000_000;
        }
        while carry > 0 {
            n.push(carry % 1_000_000_000);
            carry /= 1_000_000_000;
        }
    };
    let frac_digits = if x >= 0 {
        (0..x).for_each(|_| mul(&mut n, 2));
        0
    } else {
        (0..-x).for_each(|_| mul(&mut n, 5));
        (-x) as usize
    };
    let mut digits = String::new();
    for (i, limb) in n.iter().rev().enumerate() {
        if i == 0 {
            digits.push_str(&limb.to_string());
        } else {
            digits.push_str(&format!("{limb:09}"));
        }
    }
    let digits = digits.trim_start_matches('0');
    let digits = format!("{digits:0>w$}", w = frac_digits + 1);
    let (int, frac) = digits.split_at(digits.len() - frac_digits);
    if neg {
        out.push('-');
    }
    out.push_str(int);
    let frac = frac.trim_end_matches('0');
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
}

/// `d.ddde±x` (Rust's `{:e}`) as a JSON number: plain decimal for exponents from −7 to
/// 20, else scientific (`1.5e-9`).
fn push_plain(sci: &str, out: &mut String) {
    let (mant, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    if neg {
        out.push('-');
    }
    if !(-7..=20).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push_str(&exp.to_string());
        return;
    }
    let point = exp + 1; // digits before the decimal point
    if point <= 0 {
        out.push_str("0.");
        (0..-point).for_each(|_| out.push('0'));
        out.push_str(&digits);
    } else if point as usize >= digits.len() {
        out.push_str(&digits);
        (0..point as usize - digits.len()).for_each(|_| out.push('0'));
    } else {
        out.push_str(&digits[..point as usize]);
        out.push('.');
        out.push_str(&digits[point as usize..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HFP1: FloatFormat = FloatFormat {
        double: false,
        ieee: false,
        little: false,
    };
    const HFP2: FloatFormat = FloatFormat {
        double: true,
        ieee: false,
        little: false,
    };

    fn enc(f: FloatFormat, t: &str) -> Vec<u8> {
        let mut out = Vec::new();
        f.encode(t, &mut out).unwrap();
        out
    }

    fn dec(f: FloatFormat, b: &[u8]) -> String {
        let mut s = String::new();
        f.decode(b, &mut s).unwrap();
        s
    }

    #[test]
    fn ibm_reference_values() {
        // IBM z/Architecture Principles of Operation and the usual worked examples.
        assert_eq!(enc(HFP1, "1"), [0x41, 0x10, 0x00, 0x00]);
        assert_eq!(enc(HFP1, "-118.625"), [0xC2, 0x76, 0xA0, 0x00]);
        assert_eq!(enc(HFP1, "0.1"), [0x40, 0x19, 0x99, 0x9A]);
        assert_eq!(
            enc(HFP2, "0.1"),
            [0x40, 0x19, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9A]
        );
        assert_eq!(enc(HFP1, "0"), [0, 0, 0, 0]);
        assert_eq!(enc(HFP1, "-0"), [0x80, 0, 0, 0]);
        // The largest f64 below HFP's maximum: 53 fraction bits set.
        let max = (1.0 - 2f64.powi(-53)) * 16f64.powi(63);
        assert_eq!(
            enc(HFP2, &format!("{max:e}")),
            [0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF8]
        );
        let mut out = Vec::new();
        assert!(
            HFP1.encode("1e80", &mut out)
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            HFP1.encode("1e-80", &mut out)
                .unwrap_err()
                .contains("too small")
        );
        assert!(HFP1.encode("inf", &mut out).is_err());
        assert!(HFP1.encode("NaN", &mut out).is_err());
    }

    #[test]
    fn decoding_prints_the_shortest_text_that_comes_back() {
        assert_eq!(dec(HFP1, &[0x40, 0x19, 0x99, 0x9A]), "0.1");
        assert_eq!(dec(HFP1, &[0xC2, 0x76, 0xA0, 0x00]), "-118.625");
        assert_eq!(
            dec(HFP2, &[0x40, 0x19, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9A]),
            "0.1"
        );
        assert_eq!(dec(HFP1, &[0x80, 0, 0, 0]), "-0");
        // 56 significant bits: more than an f64 holds, so every digit is printed.
        let wide = [0x4F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(dec(HFP2, &wide), "1152921504606846960");
        let ieee = FloatFormat {
            double: true,
            ieee: true,
            little: true,
        };
        assert_eq!(enc(ieee, "1.5"), 1.5f64.to_le_bytes());
        assert_eq!(dec(ieee, &1e-9f64.to_le_bytes()), "1e-9");
        assert_eq!(dec(ieee, &123456.5f64.to_le_bytes()), "123456.5");
    }

    #[test]
    fn every_hfp_bit_pattern_of_a_sample_comes_back() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for f in [HFP1, HFP2] {
                let w = f.width();
                let mut bits = x >> (64 - 8 * w);
                // Normalised values only (first fraction hex digit not zero), as IBM writes.
                let p = if f.double { 56 } else { 24 };
                if (bits >> (p - 4)) & 0xF == 0 {
                    bits |= 1 << (p - 4);
                }
                let bytes = &bits.to_be_bytes()[8 - w..];
                let text = dec(f, bytes);
                let mut back = Vec::new();
                f.encode(&text, &mut back).unwrap();
                let exact = f64::from_bits(hfp_to_f64(bits, p).to_bits());
                if f.double && hfp_from_f64(exact, p).ok() != Some(bits) {
                    continue; // more bits than an f64: printed exactly, re-encoded rounded
                }
                assert_eq!(back, bytes, "{text}");
            }
        }
    }
}
