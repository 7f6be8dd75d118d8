//! Character encodings of record bytes: `ascii`, `latin1` and the EBCDIC code pages 037,
//! 273, 277, 278, 280, 284, 285, 297, 500, 871, 1047 and their euro variants 1140–1149.
//!
//! Invariant: encoding never substitutes. A character the code page cannot represent is an
//! error naming it (the event is parked), never a silent `?`; a byte that stands for no
//! character (ASCII above 0x7F) is a decode error, never U+FFFD.
//!
//! The EBCDIC tables live in [`super::codepages`] (generated from glibc iconv, re-checked
//! against iconv and Python's codecs by `tests/map_codepages.rs`). Each is a permutation of
//! 256 characters, so decoding is one table lookup and encoding one inverse lookup: an
//! inverse table over Latin-1 plus the few characters outside it (`€` on the euro pages,
//! `‾` on 285).

use super::codepages::PAGES;

/// A record's character set (`record.encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Ascii,
    Latin1,
    /// UTF-8: the default and the only encoding of `format: json` bodies (RFC 8259 §8.1),
    /// allowed for CSV and SOAP; not for fixed-width records, whose widths count bytes.
    Utf8,
    /// An EBCDIC code page, by its index in [`PAGES`].
    Ebcdic(CodePage),
}

/// One EBCDIC code page (an index into the generated tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodePage(u8);

/// The names accepted in `record.encoding`, for error messages.
pub const NAMES: &str = "ascii, latin1, utf-8 (json, csv, soap), ebcdic-037, ebcdic-273, ebcdic-277, ebcdic-278, ebcdic-280, ebcdic-284, ebcdic-285, ebcdic-297, ebcdic-500, ebcdic-871, ebcdic-1047, ebcdic-1140 … ebcdic-1149";

/// Sentinel in an inverse table: this Latin-1 character has no byte on the page.
const NONE: u16 = 0xFFFF;

/// Per page: Latin-1 code point -> byte (or [`NONE`]), and the characters above U+00FF.
struct Inverse {
    latin1: [u16; 256],
    extra: [(char, u8); 2],
}

static INVERSE: [Inverse; PAGES.len()] = {
    let mut out = [const {
        Inverse {
            latin1: [NONE; 256],
            extra: [('\0', 0); 2],
        }
    }; PAGES.len()];
    let mut p = 0;
    while p < PAGES.len() {
        let table = &PAGES[p].3;
        let mut n_extra = 0;
        let mut b = 0;
        while b < 256 {
            let c = table[b];
            if c < 256 {
                out[p].latin1[c as usize] = b as u16;
            } else {
                // Generated tables hold at most two characters above Latin-1 (checked by a test);
                // '\0' pairs never match because NUL is inside Latin-1.
                out[p].extra[n_extra] = (
                    match char::from_u32(c as u32) {
                        Some(ch) => ch,
                        None => '\0',
                    },
                    b as u8,
                );
                n_extra += 1;
            }
            b += 1;
        }
        p += 1;
    }
    out
};

impl CodePage {
    /// The page's CCSID (37, 1047, 1140...).
    pub fn ccsid(self) -> u16 {
        PAGES[usize::from(self.0)].0
    }

    /// glibc iconv's name for the page (`IBM037`).
    pub fn iconv_name(self) -> &'static str {
        PAGES[usize::from(self.0)].1
    }

    /// Every page ESS knows.
    pub fn all() -> impl Iterator<Item = CodePage> {
        (0..PAGES.len() as u8).map(CodePage)
    }

    fn table(self) -> &'static [u16; 256] {
        &PAGES[usize::from(self.0)].3
    }
}

impl Encoding {
    /// Reads a `record.encoding` value (case-insensitive; `cp037`, `ibm-1047`, `ccsid-500`
    /// spellings too).
    pub fn parse(name: &str) -> Option<Encoding> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        match n.as_str() {
            "ascii" | "us-ascii" => return Some(Encoding::Ascii),
            "latin1" | "latin-1" | "iso-8859-1" => return Some(Encoding::Latin1),
            "utf-8" | "utf8" => return Some(Encoding::Utf8),
            _ => {}
        }
        let digits = ["ebcdic-", "ebcdic", "cp", "ibm-", "ibm", "ccsid-", "ccsid"]
            .iter()
            .find_map(|p| n.strip_prefix(p))?;
        let ccsid: u16 = digits.parse().ok()?;
        CodePage::all()
            .find(|p| p.ccsid() == ccsid)
            .map(Encoding::Ebcdic)
    }

    pub fn name(self) -> String {
        match self {
            Encoding::Ascii => "ascii".into(),
            Encoding::Latin1 => "latin1".into(),
            Encoding::Utf8 => "utf-8".into(),
            Encoding::Ebcdic(p) => format!("ebcdic-{:03}", p.ccsid()),
        }
    }

    /// Whether a text in this encoding reads as itself on an ASCII terminal.
    pub fn is_ascii_compatible(self) -> bool {
        matches!(self, Encoding::Ascii | Encoding::Latin1 | Encoding::Utf8)
    }

    /// The byte for `c`, or `None` if this encoding has no single byte for it (in UTF-8,
    /// every character beyond ASCII takes several).
    #[inline]
    pub fn byte(self, c: char) -> Option<u8> {
        let u = u32::from(c);
        match self {
            Encoding::Ascii | Encoding::Utf8 => (u < 0x80).then_some(u as u8),
            Encoding::Latin1 => u8::try_from(u).ok(),
            Encoding::Ebcdic(p) => {
                let inv = &INVERSE[usize::from(p.0)];
                if u < 256 {
                    let b = inv.latin1[u as usize];
                    (b != NONE).then_some(b as u8)
                } else {
                    inv.extra.iter().find(|(x, _)| *x == c).map(|(_, b)| *b)
                }
            }
        }
    }

    /// Appends `text` encoded; on a character this encoding lacks, returns that character
    /// (what was appended before it stays: the caller discards the whole record).
    #[inline]
    pub fn encode_into(self, text: &str, out: &mut Vec<u8>) -> Result<(), char> {
        match self {
            Encoding::Ascii | Encoding::Latin1 if text.is_ascii() => {
                out.extend_from_slice(text.as_bytes());
            }
            Encoding::Utf8 => out.extend_from_slice(text.as_bytes()),
            Encoding::Ebcdic(p) if text.is_ascii() => {
                // Every page ESS knows has every ASCII character (a test checks), so ASCII
                // text is one table lookup a byte, no check.
                let inv = &INVERSE[usize::from(p.0)].latin1;
                out.extend(text.bytes().map(|b| inv[usize::from(b)] as u8));
            }
            _ => {
                for c in text.chars() {
                    out.push(self.byte(c).ok_or(c)?);
                }
            }
        }
        Ok(())
    }

    /// The character a byte stands for, or `None` (ASCII bytes above 0x7F).
    #[inline]
    pub fn char_of(self, b: u8) -> Option<char> {
        match self {
            Encoding::Ascii | Encoding::Utf8 => b.is_ascii().then_some(char::from(b)),
            Encoding::Latin1 => Some(char::from(b)),
            Encoding::Ebcdic(p) => char::from_u32(u32::from(p.table()[usize::from(b)])),
        }
    }

    /// The character a byte stands for, for previews (`.` where there is none).
    pub fn decode_byte(self, b: u8) -> char {
        self.char_of(b).unwrap_or('.')
    }

    /// Appends the characters of `bytes` to `out`; on a byte that stands for no character,
    /// returns its index in `bytes`.
    #[inline]
    pub fn decode_into(self, bytes: &[u8], out: &mut String) -> Result<(), usize> {
        match self {
            Encoding::Ascii | Encoding::Latin1 if bytes.is_ascii() => {
                // ASCII bytes are UTF-8 as they are.
                out.push_str(std::str::from_utf8(bytes).unwrap_or_default());
            }
            Encoding::Utf8 => match std::str::from_utf8(bytes) {
                Ok(text) => out.push_str(text),
                Err(e) => {
                    // What was valid before the bad byte is kept, as for the other encodings.
                    let valid = &bytes[..e.valid_up_to()];
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    return Err(e.valid_up_to());
                }
            },
            Encoding::Ebcdic(p) => {
                let t = p.table();
                for &b in bytes {
                    let u = t[usize::from(b)];
                    if u < 0x80 {
                        out.push(char::from(u as u8));
                    } else {
                        // Generated tables hold Unicode scalar values only (checked by a test).
                        out.push(
                            char::from_u32(u32::from(u)).unwrap_or(char::REPLACEMENT_CHARACTER),
                        );
                    }
                }
            }
            _ => {
                for (i, &b) in bytes.iter().enumerate() {
                    out.push(self.char_of(b).ok_or(i)?);
                }
            }
        }
        Ok(())
    }

    /// The byte of a space and of the digits 0–9 (zoned decimal), which every encoding has.
    #[inline]
    pub fn space(self) -> u8 {
        // Space is 0x20 in ASCII/Latin-1 and 0x40 on every EBCDIC page.
        match self {
            Encoding::Ebcdic(_) => 0x40,
            _ => b' ',
        }
    }

    /// The byte of digit `d` (0–9).
    #[inline]
    pub fn digit(self, d: u8) -> u8 {
        match self {
            Encoding::Ebcdic(_) => 0xF0 + d,
            _ => b'0' + d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(e: Encoding, s: &str) -> Result<Vec<u8>, char> {
        let mut out = Vec::new();
        e.encode_into(s, &mut out).map(|()| out)
    }

    fn page(ccsid: u16) -> Encoding {
        Encoding::parse(&format!("ebcdic-{ccsid}")).unwrap()
    }

    #[test]
    fn well_known_ebcdic_code_points() {
        for e in [page(37), page(1047), page(500), page(1140)] {
            assert_eq!(
                enc(e, "A0 az9").unwrap(),
                [0xC1, 0xF0, 0x40, 0x81, 0xA9, 0xF9]
            );
            assert_eq!(enc(e, "{}\n").unwrap()[2], 0x25);
        }
        assert_eq!(enc(page(37), "é€").unwrap_err(), '€');
        assert_eq!(enc(page(1140), "€").unwrap(), [0x9F]);
        assert_eq!(enc(page(1140), "¤").unwrap_err(), '¤');
        assert_eq!(enc(page(273), "ÄÖÜ").unwrap(), [0x4A, 0xE0, 0x5A]);
    }

    #[test]
    fn cp1047_differs_from_cp037_where_ibm_says() {
        let (a, b) = (page(37), page(1047));
        let diffs: Vec<u8> = (0..=255u8)
            .filter(|&i| a.char_of(i) != b.char_of(i))
            .collect();
        assert_eq!(diffs, [0x5F, 0xAD, 0xB0, 0xBA, 0xBB, 0xBD]);
        assert_eq!(enc(a, "[]^").unwrap(), [0xBA, 0xBB, 0xB0]);
        assert_eq!(enc(b, "[]^").unwrap(), [0xAD, 0xBD, 0x5F]);
    }

    #[test]
    fn tables_are_permutations_and_round_trip() {
        for p in CodePage::all() {
            let e = Encoding::Ebcdic(p);
            let all: String = (0..=255u8).map(|b| e.char_of(b).unwrap()).collect();
            assert_eq!(
                enc(e, &all).unwrap(),
                (0..=255u8).collect::<Vec<_>>(),
                "{}",
                e.name()
            );
            let mut back = String::new();
            e.decode_into(&(0..=255u8).collect::<Vec<_>>(), &mut back)
                .unwrap();
            assert_eq!(back, all);
            // The ASCII fast path of `encode_into` relies on this.
            let inv = &INVERSE[usize::from(p.0)].latin1;
            assert!((0..128).all(|a| inv[a] != NONE), "{}", e.name());
            assert!(
                INVERSE[usize::from(p.0)]
                    .extra
                    .iter()
                    .filter(|(c, _)| *c != '\0')
                    .count()
                    <= 2
            );
        }
    }

    #[test]
    fn names_and_spellings() {
        assert_eq!(Encoding::parse("CP037"), Some(page(37)));
        assert_eq!(Encoding::parse("ibm-1047"), Some(page(1047)));
        assert_eq!(Encoding::parse("ebcdic-037").unwrap().name(), "ebcdic-037");
        assert_eq!(page(1149).name(), "ebcdic-1149");
        assert_eq!(Encoding::parse("ebcdic-999"), None);
        assert_eq!(Encoding::parse("UTF-8"), Some(Encoding::Utf8));
        assert_eq!(Encoding::parse("utf8").unwrap().name(), "utf-8");
        assert_eq!(Encoding::parse("utf-16"), None);
    }

    #[test]
    fn utf8_writes_every_character_and_refuses_bytes_that_are_not_utf8() {
        assert_eq!(
            enc(Encoding::Utf8, "Ñandú €").unwrap(),
            "Ñandú €".as_bytes()
        );
        // One byte per character only for ASCII: a pad or a fill must be ASCII.
        assert_eq!(Encoding::Utf8.byte('a'), Some(b'a'));
        assert_eq!(Encoding::Utf8.byte('Ñ'), None);
        let mut s = String::new();
        assert_eq!(Encoding::Utf8.decode_into("Zoë".as_bytes(), &mut s), Ok(()));
        assert_eq!(s, "Zoë");
        let mut s = String::new();
        assert_eq!(Encoding::Utf8.decode_into(b"ab\xC3(", &mut s), Err(2));
        assert_eq!(s, "ab");
    }

    #[test]
    fn ascii_and_latin1_refuse_what_they_lack() {
        assert_eq!(enc(Encoding::Ascii, "café").unwrap_err(), 'é');
        assert_eq!(enc(Encoding::Latin1, "café").unwrap(), b"caf\xE9");
        assert_eq!(enc(Encoding::Latin1, "Łódź").unwrap_err(), 'Ł');
        let mut s = String::new();
        assert_eq!(Encoding::Ascii.decode_into(b"ab\xE9", &mut s), Err(2));
    }
}
