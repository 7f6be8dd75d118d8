//! Every EBCDIC code page ESS knows, checked byte for byte against glibc's iconv (and
//! against Python's codecs for the pages Python has), both ways: each byte decodes to the
//! character iconv gives, each character encodes back to that byte, and a character the
//! page lacks is refused.

use std::io::Write;
use std::process::{Command, Stdio};

use ess::map::encoding::{CodePage, Encoding};

/// `bytes` through `iconv -f FROM -t TO`.
fn iconv(from: &str, to: &str, bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new("iconv")
        .args(["-f", from, "-t", to])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("iconv (glibc's libc-bin) is installed");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "iconv -f {from} -t {to} failed");
    out.stdout
}

fn chars_of(utf32be: &[u8]) -> Vec<char> {
    utf32be
        .chunks(4)
        .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])).unwrap())
        .collect()
}

#[test]
fn every_page_matches_iconv_both_ways() {
    let all: Vec<u8> = (0..=255).collect();
    let pages: Vec<CodePage> = CodePage::all().collect();
    assert_eq!(pages.len(), 21);
    for p in pages {
        let e = Encoding::Ebcdic(p);
        let want = chars_of(&iconv(p.iconv_name(), "UTF-32BE", &all));
        for (b, c) in all.iter().zip(&want) {
            assert_eq!(e.char_of(*b), Some(*c), "{} byte {b:02X}", e.name());
            let mut out = Vec::new();
            e.encode_into(&c.to_string(), &mut out).unwrap();
            assert_eq!(out, [*b], "{} {c:?}", e.name());
        }
        // iconv's own encoder agrees on the whole page.
        let text: String = want.iter().collect();
        assert_eq!(
            iconv("UTF-8", p.iconv_name(), text.as_bytes()),
            all,
            "{}",
            e.name()
        );
        // Characters outside the page are refused, never replaced.
        let mut out = Vec::new();
        let missing = ['€', '¤', 'Ł', '中']
            .into_iter()
            .find(|c| !want.contains(c))
            .unwrap();
        assert_eq!(e.encode_into(&missing.to_string(), &mut out), Err(missing));
    }
}

#[test]
fn pages_python_has_match_python() {
    let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sys\nfor c in ['cp037','cp273','cp500','cp1140']:\n    sys.stdout.write(c + ' ' + bytes(range(256)).decode(c).encode('utf-32-be').hex() + '\\n')",
        ])
        .output()
    else {
        panic!("python3 is part of the test machine (Debian's python3)");
    };
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let (mut n, mut differ) = (0, Vec::new());
    for line in text.lines() {
        let (name, hex) = line.split_once(' ').unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let e = Encoding::parse(name).unwrap();
        for (b, c) in chars_of(&bytes).into_iter().enumerate() {
            if e.char_of(b as u8) != Some(c) {
                differ.push((name.to_string(), b, c));
            }
        }
        n += 1;
    }
    assert_eq!(n, 4);
    // Python's cp273 reads 0xBC as OVERLINE; IBM's own tables (as glibc, ICU and Java map
    // them) say MACRON, which is what ESS follows. Nothing else differs.
    assert_eq!(differ, [("cp273".to_string(), 0xBC, '\u{203E}')]);
}
