//! Both ways, for generated copybooks (issue 13): decode(encode(e)) == e for generated
//! events, and encode(decode(bytes)) == bytes for generated valid records — records built
//! here byte by byte from the COBOL rules (zones and sign nibbles, two's complement, IBM's
//! SYNC slack, RDW framing), not by ESS's encoder.
//!
//! A generated copybook mixes every usage and clause: X (JUSTIFIED), N, zoned with each
//! sign position, BLANK WHEN ZERO, P scaling, COMP-3, COMP, COMP-5, COMP-1, COMP-2, SYNC,
//! fixed OCCURS, a trailing OCCURS DEPENDING ON table, and optionally two 01 record types
//! chosen by level-88 conditions; encodings, framings, float formats and byte orders vary.

use std::fmt::Write as _;
use std::path::Path;

use ess::config::connector;
use ess::event::Event;
use ess::map::encoding::Encoding;
use ess::map::float::FloatFormat;
use ess::map::{MapContext, Mapping, View};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// One elementary item of a generated copybook.
#[derive(Debug, Clone)]
enum Gen {
    Text {
        w: usize,
        just: bool,
    },
    Nat {
        w: usize,
    },
    Zoned {
        signed: bool,
        int: u32,
        frac: u32,
        sign: u8,
        bwz: bool,
    },
    Scaled {
        digits: u32,
        p: u32,
        left: bool,
    },
    Packed {
        signed: bool,
        int: u32,
        frac: u32,
    },
    Comp {
        signed: bool,
        digits: u32,
        native: bool,
        sync: bool,
    },
    Float {
        double: bool,
        sync: bool,
    },
}

impl Gen {
    fn pic(&self) -> String {
        let num = |signed: bool, int: u32, frac: u32| {
            let mut s = String::from(if signed { "S" } else { "" });
            if int > 0 {
                let _ = write!(s, "9({int})");
            }
            if frac > 0 {
                let _ = write!(s, "V9({frac})");
            }
            s
        };
        match self {
            Gen::Text { w, just } => {
                format!("PIC X({w}){}", if *just { " JUSTIFIED RIGHT" } else { "" })
            }
            Gen::Nat { w } => format!("PIC N({w})"),
            Gen::Zoned {
                signed,
                int,
                frac,
                sign,
                bwz,
            } => {
                let sign = match (signed, sign) {
                    (false, _) | (true, 0) => "",
                    (true, 1) => " SIGN LEADING",
                    (true, 2) => " SIGN LEADING SEPARATE",
                    _ => " SIGN TRAILING SEPARATE",
                };
                format!(
                    "PIC {}{sign}{}",
                    num(*signed, *int, *frac),
                    if *bwz { " BLANK WHEN ZERO" } else { "" }
                )
            }
            Gen::Scaled { digits, p, left } => {
                let ps = "P".repeat(*p as usize);
                if *left {
                    format!("PIC {ps}9({digits})")
                } else {
                    format!("PIC 9({digits}){ps}")
                }
            }
            Gen::Packed { signed, int, frac } => {
                format!("PIC {} COMP-3", num(*signed, *int, *frac))
            }
            Gen::Comp {
                signed,
                digits,
                native,
                sync,
            } => format!(
                "PIC {}9({digits}) {}{}",
                if *signed { "S" } else { "" },
                if *native { "COMP-5" } else { "COMP" },
                if *sync { " SYNC" } else { "" }
            ),
            Gen::Float { double, sync } => format!(
                "{}{}",
                if *double { "COMP-2" } else { "COMP-1" },
                if *sync { " SYNC" } else { "" }
            ),
        }
    }

    fn width(&self) -> usize {
        match self {
            Gen::Text { w, .. } => *w,
            Gen::Nat { w } => 2 * w,
            Gen::Zoned {
                signed,
                int,
                frac,
                sign,
                ..
            } => (int + frac) as usize + usize::from(*signed && *sign >= 2),
            Gen::Scaled { digits, .. } => *digits as usize,
            Gen::Packed { int, frac, .. } => (int + frac) as usize / 2 + 1,
            Gen::Comp { digits, .. } => match digits {
                1..=4 => 2,
                5..=9 => 4,
                _ => 8,
            },
            Gen::Float { double, .. } => {
                if *double {
                    8
                } else {
                    4
                }
            }
        }
    }

    /// IBM's SYNC alignment (0: none).
    fn sync_m(&self) -> usize {
        match self {
            Gen::Comp { sync: true, .. } if self.width() == 2 => 2,
            Gen::Comp { sync: true, .. } => 4,
            Gen::Float {
                double: false,
                sync: true,
            } => 4,
            Gen::Float {
                double: true,
                sync: true,
            } => 8,
            _ => 0,
        }
    }
}

fn gen_item() -> impl Strategy<Value = Gen> {
    prop_oneof![
        (1usize..8, any::<bool>()).prop_map(|(w, just)| Gen::Text { w, just }),
        (1usize..4).prop_map(|w| Gen::Nat { w }),
        (any::<bool>(), 0u32..6, 0u32..4, 0u8..4, any::<bool>()).prop_map(
            |(signed, int, frac, sign, bwz)| {
                let int = if int + frac == 0 { 1 } else { int };
                Gen::Zoned {
                    signed: signed && !bwz,
                    int,
                    frac,
                    sign,
                    bwz,
                }
            }
        ),
        (1u32..4, 1u32..3, any::<bool>()).prop_map(|(digits, p, left)| Gen::Scaled {
            digits,
            p,
            left
        }),
        (any::<bool>(), 0u32..10, 0u32..5).prop_map(|(signed, int, frac)| Gen::Packed {
            signed,
            int: if int + frac == 0 { 1 } else { int },
            frac
        }),
        (any::<bool>(), 1u32..19, any::<bool>(), any::<bool>()).prop_map(
            |(signed, digits, native, sync)| Gen::Comp {
                signed,
                digits,
                native,
                sync
            }
        ),
        (any::<bool>(), any::<bool>()).prop_map(|(double, sync)| Gen::Float { double, sync }),
    ]
}

/// A generated record layout and the settings it is read with.
#[derive(Debug, Clone)]
struct Book {
    items: Vec<(Gen, usize)>,
    /// A trailing OCCURS 0 TO max DEPENDING ON table of one item.
    table: Option<(Gen, usize)>,
    /// Two 01 record types (`A`, `B`), each holding `items`.
    records: bool,
    encoding: &'static str,
    rdw: bool,
    ieee: bool,
    little: bool,
}

fn book() -> impl Strategy<Value = Book> {
    (
        prop::collection::vec(
            (gen_item(), prop_oneof![3 => Just(1usize), 1 => 2usize..4]),
            1..7,
        ),
        prop::option::of((gen_item(), 1usize..4)),
        any::<bool>(),
        prop_oneof![
            Just("ascii"),
            Just("latin1"),
            Just("ebcdic-037"),
            Just("ebcdic-273"),
            Just("ebcdic-1148")
        ],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(items, table, records, encoding, rdw, ieee, little)| Book {
                items,
                table,
                records,
                encoding,
                rdw,
                ieee,
                little,
            },
        )
}

impl Book {
    /// Record kinds: `""` for one record, else `A`/`B`.
    fn kinds(&self) -> Vec<&'static str> {
        if self.records {
            vec!["A", "B"]
        } else {
            vec![""]
        }
    }

    fn copybook(&self) -> String {
        let mut s = String::new();
        for k in self.kinds() {
            let _ = writeln!(s, "01 R{k}.");
            if !k.is_empty() {
                let _ = writeln!(s, " 05 T{k} PIC X.\n  88 IS-{k} VALUE '{k}'.");
            }
            for (i, (g, occurs)) in self.items.iter().enumerate() {
                let occ = if *occurs > 1 {
                    format!(" OCCURS {occurs}")
                } else {
                    String::new()
                };
                let _ = writeln!(s, " 05 F{k}{i}{occ} {}.", g.pic());
            }
            if let Some((g, max)) = &self.table {
                let _ = writeln!(
                    s,
                    " 05 N{k} PIC 9(2).\n 05 E{k} OCCURS 0 TO {max} DEPENDING ON N{k} {}.",
                    g.pic()
                );
            }
        }
        s
    }

    fn map(&self) -> String {
        let mut y = format!(
            "target: t\nlayout: b.cpy\nrecord: {{encoding: {}, framing: {}, floats: {}, byte_order: {}}}\n",
            self.encoding,
            if self.rdw { "rdw" } else { "fixed" },
            if self.ieee { "ieee" } else { "hfp" },
            if self.little { "little" } else { "big" },
        );
        if self.records {
            y.push_str("layout_when: {RA: IS-A, RB: IS-B}\n");
        }
        y.push_str("deliver: {kind: file, dir: o, file: f}\n");
        y
    }

    fn compile(&self, dir: &Path) -> Mapping {
        std::fs::write(dir.join("b.cpy"), self.copybook()).unwrap();
        let text = self.map();
        let conn = connector::parse(&dir.join("m.yml"), &text).unwrap();
        Mapping::compile_layout(
            &conn,
            &MapContext {
                timezone: chrono_tz::UTC,
            },
        )
        .unwrap_or_else(|e| panic!("{e:?}\n{}\n{text}", self.copybook()))
    }

    fn enc(&self) -> Encoding {
        Encoding::parse(self.encoding).unwrap()
    }

    fn float(&self, double: bool) -> FloatFormat {
        FloatFormat {
            double,
            ieee: self.ieee,
            little: self.little,
        }
    }
}

/// A little PRNG for building values from one seed (proptest shrinks the seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn u128_below(&mut self, n: u128) -> u128 {
        ((u128::from(self.next()) << 64) | u128::from(self.next())) % n
    }
}

/// `±v × 10^-scale` as ESS writes it: the picture's decimals, `-0.00` kept.
fn number(neg: bool, v: u128, scale: i32) -> String {
    let mut s = String::from(if neg { "-" } else { "" });
    if scale <= 0 {
        s.push_str(&v.to_string());
        if v != 0 {
            s.push_str(&"0".repeat((-scale) as usize));
        }
        return s;
    }
    let d = format!("{v:0>w$}", w = scale as usize + 1);
    let (i, f) = d.split_at(d.len() - scale as usize);
    let _ = write!(s, "{i}.{f}");
    s
}

const CHARS: &[u8] = b"ABCXYZabcxyz0189 .-/";

/// A value of `g` for an event, in the form decoding gives back.
fn value(g: &Gen, book: &Book, r: &mut Rng) -> Value {
    let text = |r: &mut Rng, n: usize| -> String {
        (0..n)
            .map(|_| char::from(CHARS[r.below(CHARS.len() as u64) as usize]))
            .collect()
    };
    match g {
        Gen::Text { w, just } => {
            let n = r.below(*w as u64 + 1) as usize;
            let t = text(r, n);
            Value::String(if *just {
                t.trim_start().to_string()
            } else {
                t.trim_end().to_string()
            })
        }
        Gen::Nat { w } => {
            let t: String = (0..r.below(*w as u64 + 1))
                .map(|_| ['é', '€', 'Ω', '中', 'a', ' '][r.below(6) as usize])
                .collect();
            Value::String(t.trim_end().to_string())
        }
        Gen::Zoned {
            signed,
            int,
            frac,
            bwz,
            ..
        } => {
            let v = r.u128_below(10u128.pow(int + frac));
            let v = if *bwz && r.below(3) == 0 { 0 } else { v };
            json_number(&number(*signed && r.below(2) == 0, v, *frac as i32))
        }
        Gen::Scaled { digits, p, left } => {
            let v = r.u128_below(10u128.pow(*digits));
            json_number(&number(
                false,
                v,
                if *left {
                    (digits + p) as i32
                } else {
                    -(*p as i32)
                },
            ))
        }
        Gen::Packed { signed, int, frac } => {
            let v = r.u128_below(10u128.pow(int + frac));
            json_number(&number(*signed && r.below(2) == 0, v, *frac as i32))
        }
        Gen::Comp {
            signed,
            digits,
            native,
            ..
        } => {
            let bits = 8 * g.width() as u32;
            let (neg, v) = if *native {
                let lim = if *signed {
                    1u128 << (bits - 1)
                } else {
                    1u128 << bits
                };
                let neg = *signed && r.below(2) == 0;
                let v = r.u128_below(lim + u128::from(neg));
                (neg && v != 0, v)
            } else {
                (
                    *signed && r.below(2) == 0,
                    r.u128_below(10u128.pow(*digits)),
                )
            };
            json_number(&number(neg && v != 0, v, 0))
        }
        Gen::Float { double, .. } => {
            // Valid bits, shown as ESS shows them: what decoding prints is the canonical text.
            let f = book.float(*double);
            let bytes = float_bytes(f, r);
            let mut s = String::new();
            f.decode(&bytes, &mut s).unwrap();
            json_number(&s)
        }
    }
}

fn json_number(t: &str) -> Value {
    serde_json::from_str(t).unwrap_or_else(|_| panic!("{t}"))
}

/// A valid stored float: finite IEEE bits, or a normalised HFP value (COMP-2 HFP with at
/// most an f64's 53 significant bits: ESS's documented limit).
fn float_bytes(f: FloatFormat, r: &mut Rng) -> Vec<u8> {
    let w = f.width();
    loop {
        let bits = r.next() >> (64 - 8 * w as u32);
        let mut out = bits.to_be_bytes()[8 - w..].to_vec();
        if f.ieee {
            let finite = if f.double {
                f64::from_bits(bits).is_finite()
            } else {
                f32::from_bits(bits as u32).is_finite()
            };
            if !finite {
                continue;
            }
        } else {
            let p = if f.double { 56 } else { 24 };
            if (bits >> (p - 4)) & 0xF == 0 {
                continue; // not normalised
            }
            if f.double {
                // Through an f64: the HFP long values ESS itself reads back exactly.
                let v = f64::from_bits(r.next()) % 1e70;
                if !v.is_finite() || v.abs() < 1e-70 {
                    continue;
                }
                out.clear();
                let ff = FloatFormat { little: false, ..f };
                if ff.encode(&format!("{v:e}"), &mut out).is_err() {
                    continue;
                }
            }
        }
        if f.little {
            out.reverse();
        }
        return out;
    }
}

/// An event payload for one record (kind `k`), every field by its copybook name.
fn payload(book: &Book, k: &str, r: &mut Rng) -> Map<String, Value> {
    let mut p = Map::new();
    if !k.is_empty() {
        p.insert(format!("T{k}"), Value::String(k.into()));
    }
    for (i, (g, occurs)) in book.items.iter().enumerate() {
        for o in 1..=*occurs {
            let name = if *occurs > 1 {
                format!("F{k}{i}({o})")
            } else {
                format!("F{k}{i}")
            };
            p.insert(name, value(g, book, r));
        }
    }
    if let Some((g, max)) = &book.table {
        let n = r.below(*max as u64 + 1) as usize;
        p.insert(format!("N{k}"), Value::from(n));
        for o in 1..=n {
            p.insert(format!("E{k}({o})"), value(g, book, r));
        }
    }
    p
}

fn event(seq: u64, payload: Map<String, Value>) -> Event {
    Event {
        seq,
        event_type: "T".into(),
        payload: ess::event::Payload::from_map(payload),
        key: "k".into(),
        trace_id: "t".into(),
        ts: None,
        received_at: "2025-04-12T12:00:00Z".parse().unwrap(),
    }
}

/// Valid record bytes built from COBOL's rules, not ESS's encoder: (data, kind).
fn record(book: &Book, r: &mut Rng) -> Vec<u8> {
    let enc = book.enc();
    let k = book.kinds()[r.below(book.kinds().len() as u64) as usize];
    let mut out = Vec::new();
    if !k.is_empty() {
        out.push(enc.byte(k.chars().next().unwrap()).unwrap());
    }
    let put = |out: &mut Vec<u8>, g: &Gen, r: &mut Rng| {
        let m = g.sync_m();
        if m > 0 && out.len() % m != 0 {
            out.resize(out.len() + m - out.len() % m, enc.space());
        }
        field_bytes(g, book, r, out);
    };
    for (g, occurs) in &book.items {
        for _ in 0..*occurs {
            let start = out.len();
            put(&mut out, g, r);
            // IBM's slack at the end of each occurrence, up to a multiple of its alignment.
            let m = g.sync_m();
            if *occurs > 1 && m > 0 && (out.len() - start) % m != 0 {
                let len = out.len() - start;
                out.resize(start + len + m - len % m, enc.space());
            }
        }
    }
    if let Some((g, max)) = &book.table {
        let n = r.below(*max as u64 + 1) as u8;
        out.push(enc.digit(n / 10));
        out.push(enc.digit(n % 10));
        for _ in 0..n {
            let start = out.len();
            put(&mut out, g, r);
            let m = g.sync_m();
            if m > 0 && (out.len() - start) % m != 0 {
                let len = out.len() - start;
                out.resize(start + len + m - len % m, enc.space());
            }
        }
    }
    out
}

fn field_bytes(g: &Gen, book: &Book, r: &mut Rng, out: &mut Vec<u8>) {
    let enc = book.enc();
    let digits = |out: &mut Vec<u8>, v: u128, n: u32| {
        let s = format!("{v:0>w$}", w = n as usize);
        out.extend(s.bytes().map(|b| enc.digit(b - b'0')));
    };
    // Zoned sign: the zone nibble in EBCDIC, the overpunch letter in ASCII.
    let over = |d: u8, neg: bool| match enc {
        Encoding::Ebcdic(_) => (if neg { 0xD0 } else { 0xC0 }) | d,
        _ => (if neg { b"}JKLMNOPQR" } else { b"{ABCDEFGHI" })[usize::from(d)],
    };
    match g {
        Gen::Text { w, .. } => {
            for _ in 0..*w {
                out.push(
                    enc.byte(char::from(CHARS[r.below(CHARS.len() as u64) as usize]))
                        .unwrap(),
                );
            }
        }
        Gen::Nat { w } => {
            for _ in 0..*w {
                let c = ['é', '€', 'Ω', '中', 'a', ' '][r.below(6) as usize];
                out.extend((c as u16).to_be_bytes());
            }
        }
        Gen::Zoned {
            signed,
            int,
            frac,
            sign,
            bwz,
        } => {
            let n = int + frac;
            let v = r.u128_below(10u128.pow(n));
            if *bwz && v == 0 {
                out.resize(out.len() + n as usize, enc.space());
                return;
            }
            let neg = *signed && r.below(2) == 0;
            let start = out.len();
            let sep = |neg: bool| enc.byte(if neg { '-' } else { '+' }).unwrap();
            if *signed && *sign == 2 {
                out.push(sep(neg));
            }
            let at = out.len();
            digits(out, v, n);
            if *signed {
                match sign {
                    0 => {
                        let last = out.len() - 1;
                        out[last] = over(
                            format!("{v:0>w$}", w = n as usize).as_bytes()[n as usize - 1] - b'0',
                            neg,
                        );
                    }
                    1 => {
                        out[at] = over(
                            format!("{v:0>w$}", w = n as usize).as_bytes()[0] - b'0',
                            neg,
                        )
                    }
                    2 => {}
                    _ => out.push(sep(neg)),
                }
            }
            let _ = start;
        }
        Gen::Scaled { digits: n, .. } => digits(out, r.u128_below(10u128.pow(*n)), *n),
        Gen::Packed { signed, int, frac } => {
            let n = int + frac;
            let w = (n / 2 + 1) as usize;
            let v = r.u128_below(10u128.pow(n));
            let s = format!("{v:0>w$}", w = 2 * w - 1);
            let sign = match (signed, r.below(2) == 0) {
                (false, _) => 0xF,
                (true, false) => 0xC,
                (true, true) => 0xD,
            };
            let nib: Vec<u8> = s.bytes().map(|b| b - b'0').chain([sign]).collect();
            out.extend(nib.chunks(2).map(|p| (p[0] << 4) | p[1]));
        }
        Gen::Comp {
            signed,
            digits,
            native,
            ..
        } => {
            let w = g.width();
            let bits = 8 * w as u32;
            let v: i128 = if *native {
                let raw = i128::from(r.next() >> (64 - bits));
                if *signed && raw >= 1i128 << (bits - 1) {
                    raw - (1i128 << bits)
                } else {
                    raw
                }
            } else {
                let m = r.u128_below(10u128.pow(*digits)) as i128;
                if *signed && r.below(2) == 0 { -m } else { m }
            };
            let be = v.to_be_bytes();
            let mut b = be[16 - w..].to_vec();
            if *native && book.little {
                b.reverse();
            }
            out.extend(b);
        }
        Gen::Float { double, .. } => out.extend(float_bytes(book.float(*double), r)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn decode_of_encode_is_the_event(book in book(), seed in 1u64.., n in 1usize..4) {
        let dir = tempfile::tempdir().unwrap();
        let m = book.compile(dir.path());
        let mut r = Rng(seed);
        let kinds = book.kinds();
        let mut file = Vec::new();
        let mut events = Vec::new();
        for i in 0..n {
            let p = payload(&book, kinds[i % kinds.len()], &mut r);
            let rec = m.render(&event(i as u64 + 1, p.clone()))
                .unwrap_or_else(|e| panic!("{e}\n{}\n{p:?}", book.copybook()));
            file.extend(rec.bytes);
            events.push(p);
        }
        let frames: Vec<_> = m.framing().split(&file).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(frames.len(), n);
        for (f, want) in frames.iter().zip(&events) {
            let d = m.decode(f.bytes, f.index, View::Fields).unwrap_or_else(|e| panic!("{e}\n{}", book.copybook()));
            let got: Value = serde_json::from_str(&d.json).unwrap();
            prop_assert_eq!(&got, &Value::Object(want.clone()), "\n{}", book.copybook());
        }
    }

    #[test]
    fn encode_of_decode_is_the_record(book in book(), seed in 1u64..) {
        let dir = tempfile::tempdir().unwrap();
        let m = book.compile(dir.path());
        let mut r = Rng(seed);
        let mut data = record(&book, &mut r);
        if !book.rdw {
            // Fixed-length records are padded to the longest layout with spaces.
            let len = m.record_len().unwrap();
            data.resize(len, book.enc().space());
        }
        let d = m.decode(&data, 0, View::Fields).unwrap_or_else(|e| panic!("{e}\n{}\n{data:02X?}", book.copybook()));
        let payload: Map<String, Value> = serde_json::from_str(&d.json).unwrap();
        let back = m.render(&event(1, payload)).unwrap_or_else(|e| panic!("{e}\n{}", book.copybook()));
        let mut framed = Vec::new();
        m.framing().write(&data, &mut framed).unwrap();
        prop_assert_eq!(back.bytes, framed, "\n{}", book.copybook());
    }
}

/// One field of a generated plain map, and how to make a value it gives back as it was.
#[derive(Debug, Clone)]
enum Plain {
    Text {
        w: usize,
        right: bool,
        pad0: bool,
    },
    Number {
        int: u32,
        frac: u32,
        signed: bool,
        sep: bool,
    },
    Mapped,
    When,
    Type,
}

fn plain() -> impl Strategy<Value = Plain> {
    prop_oneof![
        (1usize..9, any::<bool>(), any::<bool>()).prop_map(|(w, right, pad0)| Plain::Text {
            w,
            right,
            pad0
        }),
        (0u32..6, 0u32..4, any::<bool>(), any::<bool>()).prop_map(|(int, frac, signed, sep)| {
            Plain::Number {
                int: int.max(u32::from(frac == 0)),
                frac,
                signed,
                sep: sep && signed,
            }
        }),
        Just(Plain::Mapped),
        Just(Plain::When),
        Just(Plain::Type),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The event view inverts a map's sources: paths (nested, in lists), `map:`, `format:`
    /// (date and time fields of one path read together), `$type`, for fixed and CSV records.
    #[test]
    fn decode_inverts_the_maps_sources(fields in prop::collection::vec(plain(), 1..7), csv in any::<bool>(), seed in 1u64..) {
        let mut r = Rng(seed);
        let mut y = format!("target: t\nformat: {}\nfields:\n", if csv { "csv" } else { "fixed" });
        let mut payload = Map::new();
        let mut ty = "RECORD".to_string();
        let (mut have_when, mut have_type, mut n_list) = (false, false, 0);
        for (i, f) in fields.iter().enumerate() {
            // Paths vary: top level, nested, in a list.
            let in_list = i % 3 == 2 && !matches!(f, Plain::When | Plain::Type);
            let path = match i % 3 { 0 => format!("p{i}"), 1 => format!("g.p{i}"), _ => format!("l[{n_list}]") };
            n_list += usize::from(in_list);
            let put = |p: &mut Map<String, Value>, v: Value| {
                let v = serde_json::json!(v);
                match i % 3 {
                    0 => { p.insert(format!("p{i}"), v); }
                    1 => { p.entry("g").or_insert_with(|| Value::Object(Map::new())).as_object_mut().unwrap().insert(format!("p{i}"), v); }
                    _ => {
                        let l = p.entry("l").or_insert_with(|| Value::Array(Vec::new())).as_array_mut().unwrap();
                        l.push(v);
                    }
                }
            };
            match f {
                Plain::Text { w, right, pad0 } => {
                    let pad = if *pad0 { '0' } else { ' ' };
                    let mods = format!("width:{w}{}{}", if *right { " | align:right" } else { "" }, if *pad0 { " | pad:0" } else { "" });
                    let _ = writeln!(y, "  F{i}: '{path} | {mods}'");
                    let t: String = (0..r.below(*w as u64 + 1)).map(|_| char::from(b"abcXYZ019 -"[r.below(11) as usize])).collect();
                    let t = if *right { t.trim_start_matches(pad).to_string() } else { t.trim_end_matches(pad).to_string() };
                    put(&mut payload, Value::String(t));
                }
                Plain::Number { int, frac, signed, sep } => {
                    let pic = format!("{}9({int}){}", if *signed { "S" } else { "" }, if *frac > 0 { format!("V9({frac})") } else { String::new() });
                    let pic = if *int == 0 { pic.replace("9(0)", "") } else { pic };
                    let _ = writeln!(y, "  F{i}: '{path} | number:{pic}{}'", if *sep { " leading separate" } else { "" });
                    let v = r.u128_below(10u128.pow(int + frac));
                    put(&mut payload, json_number(&number(*signed && r.below(2) == 0, v, *frac as i32)));
                }
                Plain::Mapped => {
                    let _ = writeln!(y, "  F{i}: '{path} | map:{{approved: A, rejected: R}} | width:1'");
                    put(&mut payload, Value::String(["approved", "rejected"][r.below(2) as usize].into()));
                }
                Plain::When if !have_when => {
                    have_when = true;
                    let _ = writeln!(y, "  D{i}: 'when | format:%Y%m%d | width:8'\n  T{i}: 'when | format:%H%M%S | width:6'");
                    let t = format!("2025-{:02}-{:02}T{:02}:{:02}:{:02}Z", 1 + r.below(12), 1 + r.below(28), 4 + r.below(18), r.below(60), r.below(60));
                    payload.insert("when".into(), Value::String(t));
                }
                Plain::Type if !have_type => {
                    have_type = true;
                    let _ = writeln!(y, "  TY{i}: '$type | width:8'");
                    ty = (0..1 + r.below(8)).map(|_| char::from(b'A' + r.below(26) as u8)).collect();
                }
                Plain::When | Plain::Type => {
                    let _ = writeln!(y, "  C{i}: '\"K\" | width:1'");
                }
            }
        }
        y.push_str("deliver: {kind: file, dir: o, file: f}\n");
        let dir = tempfile::tempdir().unwrap();
        let conn = connector::parse(&dir.path().join("m.yml"), &y).unwrap();
        let m = Mapping::compile(&conn, &MapContext { timezone: chrono_tz::Europe::Berlin })
            .unwrap_or_else(|e| panic!("{e:?}\n{y}"));
        let mut ev = event(1, payload.clone());
        ev.event_type = ty.clone();
        let rec = m.render(&ev).unwrap_or_else(|e| panic!("{e}\n{y}"));
        let frames: Vec<_> = m.framing().split(&rec.bytes).collect::<Result<_, _>>().unwrap();
        let d = m.decode(frames[0].bytes, 0, View::Event).unwrap_or_else(|e| panic!("{e}\n{y}"));
        let got: Value = serde_json::from_str(&d.json).unwrap();
        let want = serde_json::json!({"type": ty, "payload": Value::Object(payload)});
        prop_assert_eq!(got, want, "\n{}", y);
    }
}
