//! COBOL copybooks: the record layout a mainframe program declares, read into a flat list
//! of elementary fields with offsets, byte widths and storage kinds.
//!
//! Supported: fixed-format (sequence area, `*` / `/` comment indicator, columns 8–72) and
//! free-format source, `*>` comments, level numbers and group items (a group's USAGE is
//! inherited), `PIC X(n)` / `A(n)`, `9(n)`, `S9(n)V9(m)` in DISPLAY (zoned; `SIGN
//! LEADING/TRAILING [SEPARATE]`), `COMP-3` / `PACKED-DECIMAL`, `COMP` / `COMP-4` / `COMP-5` /
//! `BINARY` (big-endian, 2/4/8 bytes), `FILLER`, `OCCURS n TIMES` (names get `(i)`
//! subscripts), `JUSTIFIED RIGHT`, `VALUE` (ignored), level 88 (ignored).
//!
//! Invariant: what cannot be laid out unambiguously is refused with its line, never
//! guessed: `REDEFINES` (two layouts over the same bytes), `OCCURS ... DEPENDING ON`
//! (variable length), level 66 `RENAMES`, `SYNCHRONIZED` (slack bytes), COMP-1/COMP-2
//! floats, edited pictures, more than one 01 record.

use super::field::Kind;
use super::spec::{self, Align, NumPic, Pic, SignMode};

/// One problem in a copybook, at its (1-based) line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyError {
    pub line: usize,
    pub message: String,
}

/// An elementary field of the layout.
#[derive(Debug, Clone)]
pub struct CopyField {
    /// The COBOL name, with `(i)` subscripts for OCCURS; `FILLER` for unnamed fields.
    pub name: String,
    pub filler: bool,
    /// Byte offset in the record.
    pub offset: usize,
    pub kind: Kind,
    /// The picture and usage as written, for messages (`S9(7)V99 COMP-3`).
    pub pic: String,
    /// Copybook line of the definition.
    pub line: usize,
}

/// A parsed record layout.
#[derive(Debug, Clone)]
pub struct Copybook {
    /// The 01-level record name, if any.
    pub record_name: Option<String>,
    pub fields: Vec<CopyField>,
    /// Total bytes of one record.
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    Display,
    Packed,
    Binary,
}

#[derive(Debug)]
struct Item {
    level: u32,
    name: Option<String>,
    line: usize,
    pic: Option<(Pic, String)>,
    usage: Option<(Usage, String)>,
    occurs: usize,
    sign: Option<SignMode>,
    justified: bool,
    children: Vec<Item>,
}

struct Token {
    text: String,
    line: usize,
}

/// Source lines to tokens; a period ending a word is its own token (the sentence end).
/// Whether a line fits the fixed reference format: columns 1–6 a sequence area (digits or
/// spaces), column 7 an indicator (space, `*`, `/`, `-`).
fn looks_fixed(line: &str) -> bool {
    let chars: Vec<char> = line.chars().take(7).collect();
    chars.len() < 7
        || (chars[..6].iter().all(|c| c.is_ascii_digit() || *c == ' ')
            && matches!(chars[6], ' ' | '*' | '/' | '-'))
}

fn tokenize(text: &str) -> Result<Vec<Token>, CopyError> {
    // One format for the whole file: free-format text often starts a level number within
    // the first six columns, which read as fixed-format would lose it.
    let fixed = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .all(looks_fixed);
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let raw = raw.trim_end_matches('\r');
        let chars: Vec<char> = raw.chars().collect();
        let content: String = if fixed && chars.len() > 6 {
            match chars[6] {
                '*' | '/' => continue,
                '-' => {
                    return Err(CopyError {
                        line,
                        message:
                            "continuation lines (`-` in column 7) are not supported; join the line"
                                .into(),
                    });
                }
                _ => chars[7.min(chars.len())..chars.len().min(72)]
                    .iter()
                    .collect(),
            }
        } else {
            if raw.trim_start().starts_with('*') || fixed {
                continue;
            }
            raw.to_string()
        };
        let content = match content.find("*>") {
            Some(i) => &content[..i],
            None => &content[..],
        };
        let mut rest = content.trim_start();
        while !rest.is_empty() {
            let (word, tail) = if rest.starts_with(['"', '\'']) {
                let q = rest.as_bytes()[0] as char;
                match rest[1..].find(q) {
                    Some(end) => rest.split_at(end + 2),
                    None => {
                        return Err(CopyError {
                            line,
                            message: "unterminated literal".into(),
                        });
                    }
                }
            } else {
                match rest.find(char::is_whitespace) {
                    Some(i) => rest.split_at(i),
                    None => (rest, ""),
                }
            };
            rest = tail.trim_start();
            match word.strip_suffix('.') {
                Some(w) => {
                    if !w.is_empty() {
                        out.push(Token {
                            text: w.to_string(),
                            line,
                        });
                    }
                    out.push(Token {
                        text: ".".into(),
                        line,
                    });
                }
                None => out.push(Token {
                    text: word.to_string(),
                    line,
                }),
            }
        }
    }
    Ok(out)
}

fn usage_of(word: &str) -> Option<Result<Usage, String>> {
    Some(match word {
        "DISPLAY" => Ok(Usage::Display),
        "COMP-3" | "COMPUTATIONAL-3" | "PACKED-DECIMAL" => Ok(Usage::Packed),
        "COMP" | "COMPUTATIONAL" | "COMP-4" | "COMPUTATIONAL-4" | "COMP-5" | "COMPUTATIONAL-5"
        | "BINARY" => Ok(Usage::Binary),
        "COMP-1" | "COMPUTATIONAL-1" | "COMP-2" | "COMPUTATIONAL-2" => Err(format!(
            "{word} (floating point) is not supported; use a fixed-point picture"
        )),
        "INDEX" | "POINTER" => Err(format!("USAGE {word} has no portable byte layout")),
        _ => return None,
    })
}

/// One sentence (`05 NAME PIC X(10).`) into an item.
fn parse_entry(toks: &[Token]) -> Result<Option<Item>, CopyError> {
    let line = toks[0].line;
    let err = |message: String| CopyError { line, message };
    let level: u32 = toks[0]
        .text
        .parse()
        .map_err(|_| err(format!("expected a level number, found {:?}", toks[0].text)))?;
    if level == 88 {
        return Ok(None);
    }
    if level == 66 {
        return Err(err("level 66 RENAMES is not supported".into()));
    }
    if !(1..=49).contains(&level) && level != 77 {
        return Err(err(format!(
            "level {level} is not a data level (01-49, 77)"
        )));
    }
    let words: Vec<String> = toks[1..]
        .iter()
        .map(|t| t.text.to_ascii_uppercase())
        .collect();
    let mut i = 0;
    let is_clause = |w: &str| {
        matches!(
            w,
            "PIC"
                | "PICTURE"
                | "USAGE"
                | "OCCURS"
                | "VALUE"
                | "VALUES"
                | "REDEFINES"
                | "SIGN"
                | "SYNC"
                | "SYNCHRONIZED"
                | "JUST"
                | "JUSTIFIED"
                | "BLANK"
                | "GLOBAL"
                | "EXTERNAL"
        ) || usage_of(w).is_some()
    };
    let mut name = None;
    if let Some(w) = words.first() {
        if !is_clause(w) {
            if w != "FILLER" {
                name = Some(toks[1].text.clone());
            }
            i = 1;
        }
    }
    let mut item = Item {
        level,
        name,
        line,
        pic: None,
        usage: None,
        occurs: 1,
        sign: None,
        justified: false,
        children: Vec::new(),
    };
    let label = item.name.clone().unwrap_or_else(|| "FILLER".into());
    let next = |i: &mut usize| -> Option<&str> {
        let w = words.get(*i).map(String::as_str);
        *i += 1;
        w
    };
    while i < words.len() {
        let w = words[i].clone();
        i += 1;
        match w.as_str() {
            "PIC" | "PICTURE" => {
                let mut p = next(&mut i).unwrap_or("");
                if p == "IS" {
                    p = next(&mut i).unwrap_or("");
                }
                // Keep the case-preserving original for messages.
                let pic = spec::parse_pic(p).map_err(|e| err(format!("{label}: {e}")))?;
                item.pic = Some((pic, p.to_string()));
            }
            "USAGE" => {
                let mut u = next(&mut i).unwrap_or("");
                if u == "IS" {
                    u = next(&mut i).unwrap_or("");
                }
                match usage_of(u) {
                    Some(Ok(x)) => item.usage = Some((x, u.to_string())),
                    Some(Err(e)) => return Err(err(format!("{label}: {e}"))),
                    None => return Err(err(format!("{label}: unknown USAGE {u:?}"))),
                }
            }
            "OCCURS" => {
                let n: usize = next(&mut i)
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| err(format!("{label}: OCCURS needs a count")))?;
                if matches!(words.get(i).map(String::as_str), Some("TO"))
                    || words[i..].iter().any(|w| w == "DEPENDING")
                {
                    return Err(err(format!(
                        "{label}: OCCURS ... DEPENDING ON makes the record's length vary, which a fixed-width layout cannot hold; use the maximum count without DEPENDING ON"
                    )));
                }
                if n == 0 {
                    return Err(err(format!("{label}: OCCURS 0")));
                }
                item.occurs = n;
                if words.get(i).map(String::as_str) == Some("TIMES") {
                    i += 1;
                }
                // ASCENDING/DESCENDING KEY IS x, INDEXED BY x: no effect on the layout.
                while let Some(w) = words.get(i).map(String::as_str) {
                    match w {
                        "ASCENDING" | "DESCENDING" | "INDEXED" => {
                            i += 1;
                            while matches!(
                                words.get(i).map(String::as_str),
                                Some("KEY" | "IS" | "BY")
                            ) {
                                i += 1;
                            }
                            while words.get(i).is_some_and(|w| {
                                !is_clause(w)
                                    && !matches!(w.as_str(), "ASCENDING" | "DESCENDING" | "INDEXED")
                            }) {
                                i += 1;
                            }
                        }
                        _ => break,
                    }
                }
            }
            "REDEFINES" => {
                return Err(err(format!(
                    "{label} REDEFINES {}: two layouts over the same bytes are not supported; write one copybook (and one map) per layout",
                    words.get(i).cloned().unwrap_or_default()
                )));
            }
            "VALUE" | "VALUES" => {
                if matches!(words.get(i).map(String::as_str), Some("IS" | "ARE")) {
                    i += 1;
                }
                if words.get(i).map(String::as_str) == Some("ALL") {
                    i += 1;
                }
                i += 1;
            }
            "SIGN" => {
                if words.get(i).map(String::as_str) == Some("IS") {
                    i += 1;
                }
                let leading = match next(&mut i) {
                    Some("LEADING") => true,
                    Some("TRAILING") => false,
                    other => {
                        return Err(err(format!(
                            "{label}: SIGN {} is not LEADING or TRAILING",
                            other.unwrap_or("")
                        )));
                    }
                };
                let separate = words.get(i).map(String::as_str) == Some("SEPARATE");
                if separate {
                    i += 1;
                    if words.get(i).map(String::as_str) == Some("CHARACTER") {
                        i += 1;
                    }
                }
                item.sign = Some(match (leading, separate) {
                    (true, true) => SignMode::LeadingSeparate,
                    (true, false) => SignMode::LeadingOverpunch,
                    (false, true) => SignMode::TrailingSeparate,
                    (false, false) => SignMode::TrailingOverpunch,
                });
            }
            "JUST" | "JUSTIFIED" => {
                item.justified = true;
                if words.get(i).map(String::as_str) == Some("RIGHT") {
                    i += 1;
                }
            }
            "SYNC" | "SYNCHRONIZED" => {
                return Err(err(format!(
                    "{label}: SYNCHRONIZED inserts compiler-dependent slack bytes; remove it"
                )));
            }
            "BLANK" => {
                return Err(err(format!(
                    "{label}: BLANK WHEN ZERO is an editing clause and is not supported"
                )));
            }
            "GLOBAL" | "EXTERNAL" => {}
            "IS" => {}
            u => match usage_of(u) {
                Some(Ok(x)) => item.usage = Some((x, u.to_string())),
                Some(Err(e)) => return Err(err(format!("{label}: {e}"))),
                None => return Err(err(format!("{label}: unexpected word {:?}", toks[i].text))),
            },
        }
    }
    Ok(Some(item))
}

impl Copybook {
    /// Parses a copybook; every problem found is returned (one per sentence at most).
    pub fn parse(text: &str) -> Result<Copybook, Vec<CopyError>> {
        let toks = tokenize(text).map_err(|e| vec![e])?;
        let mut errs = Vec::new();
        let mut items = Vec::new();
        let mut start = 0;
        for (i, t) in toks.iter().enumerate() {
            if t.text == "." {
                if i > start {
                    match parse_entry(&toks[start..i]) {
                        Ok(Some(item)) => items.push(item),
                        Ok(None) => {}
                        Err(e) => errs.push(e),
                    }
                }
                start = i + 1;
            }
        }
        if start < toks.len() {
            errs.push(CopyError {
                line: toks[start].line,
                message: "the last entry does not end with a period".into(),
            });
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        // Nest by level numbers.
        let mut roots: Vec<Item> = Vec::new();
        let mut stack: Vec<Item> = Vec::new();
        for item in items {
            while stack
                .last()
                .is_some_and(|top| top.level >= item.level || top.level == 77)
            {
                let done = stack.pop().expect("checked by is_some_and");
                attach(&mut stack, &mut roots, done);
            }
            if stack.is_empty() && item.level != 1 && item.level != 77 && !roots.is_empty() {
                errs.push(CopyError {
                    line: item.line,
                    message: format!("level {} has no enclosing group", item.level),
                });
            }
            stack.push(item);
        }
        while let Some(done) = stack.pop() {
            attach(&mut stack, &mut roots, done);
        }
        if roots.iter().filter(|r| r.level == 1).count() > 1 {
            let second = roots
                .iter()
                .filter(|r| r.level == 1)
                .nth(1)
                .map_or(1, |r| r.line);
            errs.push(CopyError {
                line: second,
                message: "a second 01 record: a layout is one record; put each record type in its own copybook".into(),
            });
        }
        if roots.is_empty() {
            errs.push(CopyError {
                line: 1,
                message: "no data items found".into(),
            });
        }
        let record_name = roots
            .first()
            .filter(|r| !r.children.is_empty())
            .and_then(|r| r.name.clone());
        let mut fields = Vec::new();
        let mut offset = 0;
        for r in &roots {
            flatten(r, None, "", &mut offset, &mut fields, &mut errs);
        }
        let mut seen = std::collections::HashSet::new();
        for f in &fields {
            if !f.filler && !seen.insert(f.name.clone()) {
                errs.push(CopyError {
                    line: f.line,
                    message: format!(
                        "{} appears twice; names must be unique to be mapped",
                        f.name
                    ),
                });
            }
        }
        if !errs.is_empty() {
            errs.sort_by_key(|e| e.line);
            errs.dedup();
            return Err(errs);
        }
        Ok(Copybook {
            record_name,
            fields,
            len: offset,
        })
    }

    /// The field name closest to `name` (another spelling, a typo), for "did you mean".
    pub fn suggest(&self, name: &str) -> Option<&str> {
        let norm = |s: &str| s.to_ascii_uppercase().replace('_', "-");
        let want = norm(name);
        self.fields
            .iter()
            .filter(|f| !f.filler)
            .map(|f| (levenshtein(&norm(&f.name), &want), f.name.as_str()))
            .filter(|(d, _)| *d <= 2)
            .min_by_key(|(d, _)| *d)
            .map(|(_, n)| n)
    }
}

fn attach(stack: &mut [Item], roots: &mut Vec<Item>, done: Item) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(done),
        None => roots.push(done),
    }
}

fn flatten(
    item: &Item,
    inherited: Option<&(Usage, String)>,
    suffix: &str,
    offset: &mut usize,
    out: &mut Vec<CopyField>,
    errs: &mut Vec<CopyError>,
) {
    let usage = item.usage.as_ref().or(inherited);
    for k in 1..=item.occurs {
        let suffix = if item.occurs > 1 {
            if suffix.is_empty() {
                format!("({k})")
            } else {
                format!("{},{k})", &suffix[..suffix.len() - 1])
            }
        } else {
            suffix.to_string()
        };
        if !item.children.is_empty() {
            if item.pic.is_some() {
                errs.push(CopyError {
                    line: item.line,
                    message: "a group item cannot have a PIC".into(),
                });
                return;
            }
            for c in &item.children {
                flatten(c, usage, &suffix, offset, out, errs);
            }
            continue;
        }
        let label = item.name.clone().unwrap_or_else(|| "FILLER".into());
        let Some((pic, pic_text)) = &item.pic else {
            errs.push(CopyError {
                line: item.line,
                message: format!("{label} has neither a PIC nor subordinate items"),
            });
            return;
        };
        let (usage, usage_text) = usage.map_or((Usage::Display, ""), |(u, t)| (*u, t.as_str()));
        let kind = match (pic, usage) {
            (Pic::Alnum(n), Usage::Display) => Kind::Text {
                width: Some(*n as usize),
                align: if item.justified {
                    Align::Right
                } else {
                    Align::Left
                },
                pad: ' ',
            },
            (Pic::Alnum(_), _) => {
                errs.push(CopyError {
                    line: item.line,
                    message: format!("{label}: PIC {pic_text} cannot be {usage_text}"),
                });
                return;
            }
            (Pic::Num(n), Usage::Display) => Kind::Zoned {
                pic: *n,
                sign: item.sign.unwrap_or(SignMode::TrailingOverpunch),
            },
            (Pic::Num(n), Usage::Packed) => Kind::Packed { pic: *n },
            (Pic::Num(n), Usage::Binary) => match binary_bytes(*n) {
                Some(bytes) => Kind::Binary { pic: *n, bytes },
                None => {
                    errs.push(CopyError {
                        line: item.line,
                        message: format!("{label}: a binary field holds at most 18 digits"),
                    });
                    return;
                }
            },
        };
        if item.sign.is_some() && usage != Usage::Display {
            errs.push(CopyError {
                line: item.line,
                message: format!("{label}: SIGN applies only to DISPLAY numbers"),
            });
        }
        let width = kind.width().unwrap_or(0);
        let pic = if usage_text.is_empty() {
            pic_text.clone()
        } else {
            format!("{pic_text} {usage_text}")
        };
        out.push(CopyField {
            name: format!("{label}{suffix}"),
            filler: item.name.is_none(),
            offset: *offset,
            kind,
            pic,
            line: item.line,
        });
        *offset += width;
    }
}

/// COMP storage: halfword up to 4 digits, fullword up to 9, doubleword up to 18.
fn binary_bytes(pic: NumPic) -> Option<usize> {
    match pic.digits() {
        0..=4 => Some(2),
        5..=9 => Some(4),
        10..=18 => Some(8),
        _ => None,
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_with_groups_occurs_and_usages() {
        let cb = Copybook::parse(
            "000100* PERMIT RECORD\n\
             000200 01  PERMIT-REC.\n\
             000300     05  PERMIT-ID        PIC X(10).\n\
             000400     05  FEE              PIC S9(5)V99 COMP-3.\n\
             000500     05  COUNT-N          PIC 9(4) COMP.\n\
             000600     05  FILLER           PIC X(2).\n\
             000700     05  LINES OCCURS 2 TIMES.\n\
             000800         10  CODE         PIC X(3).\n\
             000900         88  IS-OK        VALUE 'OK '.\n",
        )
        .unwrap();
        let names: Vec<_> = cb
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.offset))
            .collect();
        assert_eq!(
            names,
            [
                ("PERMIT-ID", 0),
                ("FEE", 10),
                ("COUNT-N", 14),
                ("FILLER", 16),
                ("CODE(1)", 18),
                ("CODE(2)", 21)
            ]
        );
        assert_eq!(cb.len, 24);
        assert_eq!(cb.record_name.as_deref(), Some("PERMIT-REC"));
    }

    #[test]
    fn refusals_name_their_line() {
        let e =
            Copybook::parse("01 R.\n  05 A PIC X(4).\n  05 B REDEFINES A PIC 9(4).\n").unwrap_err();
        assert_eq!(e[0].line, 3);
        assert!(e[0].message.contains("REDEFINES"), "{e:?}");
        let e = Copybook::parse(
            "01 R.\n 05 N PIC 9(2).\n 05 T OCCURS 1 TO 5 DEPENDING ON N.\n  10 X PIC X.\n",
        )
        .unwrap_err();
        assert!(e[0].message.contains("DEPENDING ON"), "{e:?}");
    }
}
