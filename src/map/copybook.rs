//! COBOL copybooks: the record layout a mainframe program declares, read into the tree ESS
//! encodes and decodes by ([`Node`]s over a flat list of elementary [`CopyField`]s).
//!
//! Supported: fixed-format (sequence area, `*` / `/` comments, `-` continuation lines,
//! columns 8–72) and free-format source, `*>` comments; levels and groups (USAGE, SIGN and
//! SYNC of a group apply to its items); `PIC X/A`, `N` (national, UTF-16), `9`, `S`, `V`, `P`
//! (scaling: `9(3)PPP`, `PPP9(3)`); USAGE DISPLAY (zoned: `SIGN LEADING/TRAILING
//! [SEPARATE]`, `BLANK WHEN ZERO`), `COMP-3`/`PACKED-DECIMAL`, `COMP`/`COMP-4`/`BINARY`
//! (digits of the picture), `COMP-5` (the whole storage), `COMP-1`/`COMP-2` (floats);
//! `SYNCHRONIZED` with IBM Enterprise COBOL's slack bytes (before an item: m = 2 for binary
//! of 1–4 digits, 4 for 5–18 digits and COMP-1, 8 for COMP-2, from the record's start; at
//! the end of each occurrence of a table holding such items, up to a multiple of its largest
//! m); `JUSTIFIED RIGHT`; `VALUE` (FILLER constants, figurative constants, `ALL`, hex);
//! `OCCURS n` (names get `(i)` subscripts) and `OCCURS n TO m DEPENDING ON X` (a
//! variable-length [`Table`]); `REDEFINES` and several 01 records (a [`RedefinesSet`] of
//! alternatives); level 88 condition names.
//!
//! Invariant: what cannot be laid out unambiguously is refused with its line and column and
//! the way around it, never guessed: level 66 `RENAMES`, edited pictures, `USAGE INDEX` /
//! `POINTER`, a REDEFINES longer than what it redefines, nested variable-length tables, a
//! SYNC item after a variable-length table. One bad entry gives one error: the entry stays
//! in the tree as a placeholder so the entries after it nest and lay out as written.

use super::field::Kind;
use super::float::FloatFormat;
use super::spec::{self, Align, NumPic, Pic, SignMode};

/// One problem in a copybook, at its (1-based) line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// A literal of a VALUE clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// `'ABC'`, `"ABC"`, `N'ABC'`.
    Text(String),
    /// `123`, `-1.50` (the text as written, without a `+`).
    Number(String),
    /// `X'C1C2'`: bytes as they are.
    Hex(Vec<u8>),
    /// `SPACES`, `ZEROS`, `HIGH-VALUES`, `LOW-VALUES`, `QUOTES`.
    Figurative(Figurative),
    /// `ALL 'ab'`: the text repeated to the field's width.
    All(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figurative {
    Spaces,
    Zeros,
    HighValues,
    LowValues,
    Quotes,
}

/// One value (or `THRU` range) of a level-88 condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CondValue {
    One(Literal),
    Range(Literal, Literal),
}

/// A level-88 condition name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub name: String,
    pub values: Vec<CondValue>,
    pub line: usize,
}

/// An elementary field of the layout.
#[derive(Debug, Clone)]
pub struct CopyField {
    /// The COBOL name, with `(i)` subscripts for OCCURS; `FILLER` for unnamed fields.
    pub name: String,
    pub filler: bool,
    /// Byte offset in the record, with every variable-length table before it at its maximum.
    pub offset: usize,
    /// False when a variable-length table comes before the field: its offset then depends
    /// on the record.
    pub fixed_offset: bool,
    pub kind: Kind,
    /// The picture and usage as written, for messages (`S9(7)V99 COMP-3`).
    pub pic: String,
    /// Copybook line of the definition.
    pub line: usize,
    /// Its VALUE clause: what an unmapped field (a FILLER constant) is written as.
    pub value: Option<Literal>,
    /// Its level-88 condition names.
    pub conditions: Vec<Condition>,
    /// The REDEFINES alternatives it sits in, outermost first: (set, alternative).
    pub alts: Vec<(usize, usize)>,
    /// Its SYNCHRONIZED alignment (2, 4, 8), 0 when not synchronized.
    pub sync_m: usize,
}

/// How a record is built from fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// An elementary field, by index into [`Copybook::fields`].
    Field(usize),
    /// Slack bytes the compiler inserts for SYNCHRONIZED items (written as spaces).
    Slack(usize),
    /// A REDEFINES set, by index into [`Copybook::sets`].
    Choice(usize),
    /// A variable-length table, by index into [`Copybook::tables`].
    Table(usize),
}

/// Items sharing the same bytes (`B REDEFINES A`, or several 01 records).
#[derive(Debug, Clone)]
pub struct RedefinesSet {
    pub alts: Vec<Alt>,
    /// Bytes the set occupies: the redefined item's size (the largest record for 01s).
    pub width: usize,
    /// Whether the alternatives are whole records (01 level): then a record's length is
    /// its alternative's, except in fixed-length framing.
    pub records: bool,
    pub line: usize,
}

/// One layout of a REDEFINES set.
#[derive(Debug, Clone)]
pub struct Alt {
    pub name: String,
    pub line: usize,
    pub nodes: Vec<Node>,
    /// Bytes this alternative lays out (at the maximum of any table in it).
    pub len: usize,
}

/// `OCCURS min TO max DEPENDING ON object`.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub line: usize,
    /// The field holding the count (before the table).
    pub object: usize,
    pub min: usize,
    pub max: usize,
    /// Element `i` (0-based) of the table.
    pub elems: Vec<Vec<Node>>,
    /// Bytes of one element, slack included.
    pub elem_len: usize,
}

/// A parsed record layout.
#[derive(Debug, Clone)]
pub struct Copybook {
    /// The (first) 01-level record name, if any.
    pub record_name: Option<String>,
    pub fields: Vec<CopyField>,
    pub nodes: Vec<Node>,
    pub sets: Vec<RedefinesSet>,
    pub tables: Vec<Table>,
    /// Bytes of the longest record.
    pub len: usize,
    /// Bytes of the shortest record (every table at its minimum, the shortest 01 record).
    pub min_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    Display,
    Packed,
    Binary,
    Comp5,
    Comp1,
    Comp2,
    National,
}

#[derive(Debug, Clone)]
struct Occurs {
    min: usize,
    max: usize,
    depending: Option<(String, usize)>,
}

#[derive(Debug, Clone)]
struct Item {
    level: u32,
    name: Option<String>,
    line: usize,
    col: usize,
    pic: Option<(Pic, String)>,
    usage: Option<(Usage, String)>,
    occurs: Option<Occurs>,
    redefines: Option<String>,
    sign: Option<SignMode>,
    justified: bool,
    sync: bool,
    blank_zero: bool,
    value: Option<Literal>,
    conditions: Vec<Condition>,
    children: Vec<Item>,
    /// The entry had an error (already reported): lay out nothing, report nothing more.
    broken: bool,
}

impl Item {
    fn placeholder(level: u32, name: Option<String>, line: usize, col: usize) -> Item {
        Item {
            level,
            name,
            line,
            col,
            pic: None,
            usage: None,
            occurs: None,
            redefines: None,
            sign: None,
            justified: false,
            sync: false,
            blank_zero: false,
            value: None,
            conditions: Vec::new(),
            children: Vec::new(),
            broken: true,
        }
    }

    fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| "FILLER".into())
    }
}

#[derive(Debug, Clone)]
struct Token {
    text: String,
    line: usize,
    col: usize,
}

impl Token {
    fn upper(&self) -> String {
        self.text.to_ascii_uppercase()
    }
}

/// Whether a line fits the fixed reference format: columns 1–6 a sequence area (digits or
/// spaces), column 7 an indicator (space, `*`, `/`, `-`, `D`).
fn looks_fixed(line: &str) -> bool {
    let chars: Vec<char> = line.chars().take(7).collect();
    chars.len() < 7
        || (chars[..6].iter().all(|c| c.is_ascii_digit() || *c == ' ')
            && matches!(chars[6], ' ' | '*' | '/' | '-' | 'D' | 'd'))
}

/// One line's program text with the column (1-based) its first character came from.
struct SourceLine {
    line: usize,
    /// (column, character) pairs.
    chars: Vec<(usize, char)>,
}

/// The program text of each line, comments removed, continuation lines joined.
fn source_lines(text: &str) -> Result<Vec<SourceLine>, CopyError> {
    // One format for the whole file: free-format text often starts a level number within
    // the first six columns, which read as fixed-format would lose it.
    let fixed = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .all(looks_fixed);
    let mut out: Vec<SourceLine> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let chars: Vec<char> = raw.trim_end_matches('\r').chars().collect();
        let indicator = if fixed { chars.get(6).copied() } else { None };
        if matches!(indicator, Some('*' | '/')) {
            continue;
        }
        let (start, end) = if fixed {
            (7.min(chars.len()), chars.len().min(72))
        } else {
            (0, chars.len())
        };
        let mut body: Vec<(usize, char)> = (start..end).map(|i| (i + 1, chars[i])).collect();
        if !fixed
            && body
                .iter()
                .find(|(_, c)| !c.is_whitespace())
                .is_some_and(|(_, c)| *c == '*')
        {
            continue;
        }
        // `*>` starts a comment anywhere outside a literal.
        let mut quote = None;
        for i in 0..body.len() {
            let c = body[i].1;
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '\'' || c == '"' => quote = Some(c),
                None if c == '*' && body.get(i + 1).is_some_and(|(_, n)| *n == '>') => {
                    body.truncate(i);
                    break;
                }
                None => {}
            }
        }
        if indicator == Some('-') {
            let Some(prev) = out.last_mut() else {
                return Err(CopyError {
                    line,
                    col: 7,
                    message: "a continuation line (`-` in column 7) with nothing before it".into(),
                });
            };
            // An open literal continues after the first quote of the continuation line;
            // anything else continues at its first non-blank character.
            let open = {
                let mut q = None;
                for (_, c) in &prev.chars {
                    match q {
                        Some(x) if *c == x => q = None,
                        Some(_) => {}
                        None if *c == '\'' || *c == '"' => q = Some(*c),
                        None => {}
                    }
                }
                q
            };
            let first = body.iter().position(|(_, c)| !c.is_whitespace());
            match (open, first) {
                (Some(q), Some(i)) if body[i].1 == q => {
                    // The literal runs to column 72 of the line before.
                    let last_col = prev.chars.last().map_or(7, |(c, _)| *c);
                    prev.chars.extend((last_col + 1..=72).map(|c| (c, ' ')));
                    prev.chars.extend(body.into_iter().skip(i + 1));
                }
                (Some(_), _) => {
                    return Err(CopyError {
                        line,
                        col: first.map_or(8, |i| body[i].0),
                        message:
                            "a continued literal must go on after a quote on the continuation line"
                                .into(),
                    });
                }
                (None, Some(i)) => {
                    while prev.chars.last().is_some_and(|(_, c)| c.is_whitespace()) {
                        prev.chars.pop();
                    }
                    prev.chars.extend(body.into_iter().skip(i));
                }
                (None, None) => {}
            }
            continue;
        }
        out.push(SourceLine { line, chars: body });
    }
    Ok(out)
}

/// Source lines to tokens. A period ending a word is its own token (the sentence end);
/// commas and semicolons between words are separators.
fn tokenize(text: &str) -> Result<Vec<Token>, CopyError> {
    let mut out = Vec::new();
    for sl in source_lines(text)? {
        let cs = &sl.chars;
        let mut i = 0;
        while i < cs.len() {
            if cs[i].1.is_whitespace() {
                i += 1;
                continue;
            }
            let (col, start) = (cs[i].0, i);
            // A literal, with an optional X/N/NX/G/Z prefix: up to its closing quote
            // (a doubled quote inside is one quote).
            let prefix = cs[i..]
                .iter()
                .take(3)
                .take_while(|(_, c)| c.is_ascii_alphabetic())
                .count();
            let q_at = i + prefix;
            let is_lit = cs.get(q_at).is_some_and(|(_, c)| *c == '\'' || *c == '"')
                && (prefix == 0
                    || matches!(
                        cs[i..q_at]
                            .iter()
                            .map(|(_, c)| c.to_ascii_uppercase())
                            .collect::<String>()
                            .as_str(),
                        "X" | "N" | "NX" | "G" | "Z" | "U"
                    ));
            if is_lit {
                let q = cs[q_at].1;
                let mut j = q_at + 1;
                loop {
                    match cs.get(j) {
                        None => {
                            return Err(CopyError {
                                line: sl.line,
                                col,
                                message: "unterminated literal (a literal ends with its quote on the same line, or continues on a `-` line)".into(),
                            });
                        }
                        Some((_, c)) if *c == q => {
                            if cs.get(j + 1).is_some_and(|(_, n)| *n == q) {
                                j += 2;
                                continue;
                            }
                            j += 1;
                            break;
                        }
                        Some(_) => j += 1,
                    }
                }
                i = j;
            } else {
                while i < cs.len() && !cs[i].1.is_whitespace() {
                    i += 1;
                }
            }
            let mut word: String = cs[start..i].iter().map(|(_, c)| *c).collect();
            let mut period = false;
            // A trailing separator comma/semicolon, then a sentence-ending period.
            if !is_lit || word.ends_with('.') || word.ends_with(',') {
                if word.len() > 1 && (word.ends_with(',') || word.ends_with(';')) && !is_lit {
                    word.pop();
                }
                if word.ends_with('.') {
                    word.pop();
                    period = true;
                }
                if word.ends_with(',') || word.ends_with(';') {
                    word.pop();
                }
            }
            let skip = matches!(
                word.to_ascii_uppercase().as_str(),
                "EJECT" | "SKIP1" | "SKIP2" | "SKIP3" | "," | ";"
            );
            if !word.is_empty() && !skip {
                out.push(Token {
                    text: word,
                    line: sl.line,
                    col,
                });
            }
            if period {
                out.push(Token {
                    text: ".".into(),
                    line: sl.line,
                    col: col + cs[start..i].len().saturating_sub(1),
                });
            }
        }
    }
    Ok(out)
}

fn usage_of(word: &str) -> Option<Result<Usage, String>> {
    Some(match word {
        "DISPLAY" => Ok(Usage::Display),
        "COMP-3" | "COMPUTATIONAL-3" | "PACKED-DECIMAL" => Ok(Usage::Packed),
        "COMP" | "COMPUTATIONAL" | "COMP-4" | "COMPUTATIONAL-4" | "BINARY" => Ok(Usage::Binary),
        "COMP-5" | "COMPUTATIONAL-5" => Ok(Usage::Comp5),
        "COMP-1" | "COMPUTATIONAL-1" => Ok(Usage::Comp1),
        "COMP-2" | "COMPUTATIONAL-2" => Ok(Usage::Comp2),
        "NATIONAL" => Ok(Usage::National),
        "INDEX" | "POINTER" | "PROCEDURE-POINTER" | "FUNCTION-POINTER" | "OBJECT" => Err(format!(
            "USAGE {word} holds a machine address or index, which has no portable byte layout; describe the bytes as PIC X(n) (or S9(9) COMP)"
        )),
        "COMP-X" | "COMPUTATIONAL-X" | "COMP-6" | "COMPUTATIONAL-6" | "COMP-N" => Err(format!(
            "USAGE {word} (a Micro Focus extension) is not supported; use COMP-5 or COMP-3"
        )),
        "DISPLAY-1" => {
            Err("USAGE DISPLAY-1 (DBCS) is not supported; use NATIONAL or PIC X(n)".into())
        }
        _ => return None,
    })
}

fn is_clause(w: &str) -> bool {
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
            | "LEADING"
            | "TRAILING"
            | "RENAMES"
    ) || usage_of(w).is_some()
}

/// A VALUE literal from its token(s); `ALL` takes the next one.
fn literal(toks: &[Token], i: &mut usize) -> Result<Literal, String> {
    let Some(t) = toks.get(*i) else {
        return Err("VALUE needs a literal".into());
    };
    *i += 1;
    let up = t.upper();
    let quoted = |s: &str| -> Option<String> {
        let q = s.chars().next()?;
        if (q != '\'' && q != '"') || s.len() < 2 || !s.ends_with(q) {
            return None;
        }
        let d = format!("{q}{q}");
        Some(s[1..s.len() - 1].replace(&d, &q.to_string()))
    };
    if let Some(s) = quoted(&t.text) {
        return Ok(Literal::Text(s));
    }
    if let Some(rest) = up.strip_prefix('X').and_then(quoted) {
        let hex: String = rest.chars().filter(|c| !c.is_whitespace()).collect();
        if hex.len() % 2 != 0 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "{} is not a hexadecimal literal (an even number of hex digits)",
                t.text
            ));
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|k| u8::from_str_radix(&hex[k..k + 2], 16).unwrap_or(0))
            .collect();
        return Ok(Literal::Hex(bytes));
    }
    if let Some(s) = t.text.strip_prefix(['N', 'n']).and_then(quoted) {
        return Ok(Literal::Text(s));
    }
    if up.len() > 1 && up.starts_with(['G', 'Z', 'U']) && quoted(&t.text[1..]).is_some() {
        return Err(format!(
            "literal {}: DBCS, null-terminated and UTF-8 literals are not supported",
            t.text
        ));
    }
    let fig = match up.as_str() {
        "SPACE" | "SPACES" => Some(Figurative::Spaces),
        "ZERO" | "ZEROS" | "ZEROES" => Some(Figurative::Zeros),
        "HIGH-VALUE" | "HIGH-VALUES" => Some(Figurative::HighValues),
        "LOW-VALUE" | "LOW-VALUES" | "NULL" | "NULLS" => Some(Figurative::LowValues),
        "QUOTE" | "QUOTES" => Some(Figurative::Quotes),
        _ => None,
    };
    if let Some(f) = fig {
        return Ok(Literal::Figurative(f));
    }
    if up == "ALL" {
        return match literal(toks, i)? {
            Literal::Text(s) if !s.is_empty() => Ok(Literal::All(s)),
            Literal::Figurative(f) => Ok(Literal::Figurative(f)),
            _ => Err("ALL needs a quoted literal or a figurative constant".into()),
        };
    }
    let num = t.text.strip_prefix('+').unwrap_or(&t.text);
    if super::decimal::Decimal::parse(num).is_ok() {
        return Ok(Literal::Number(num.to_string()));
    }
    Err(format!(
        "{} is not a literal (quote text: '{}')",
        t.text, t.text
    ))
}

/// One parsed sentence.
enum Entry {
    Data(Box<Item>),
    Cond(Condition),
}

/// Reads a `PICTURE [IS] pic` clause's picture.
fn pic_clause(toks: &[Token], i: &mut usize, label: &str) -> Result<(Pic, String), String> {
    if toks.get(*i).is_some_and(|t| t.upper() == "IS") {
        *i += 1;
    }
    let Some(p) = toks.get(*i) else {
        return Err(format!("{label}: PIC needs a picture, e.g. PIC X(10)"));
    };
    *i += 1;
    let pic = spec::parse_pic(&p.text).map_err(|e| format!("{label}: {e}"))?;
    Ok((pic, p.text.clone()))
}

/// `OCCURS [min TO] max [TIMES] [DEPENDING ON x] [ASCENDING/DESCENDING KEY ...] [INDEXED BY ...]`.
fn occurs_clause(toks: &[Token], i: &mut usize, label: &str) -> Result<Occurs, String> {
    let count = |t: Option<&Token>| t.and_then(|t| t.text.parse::<usize>().ok());
    let first = count(toks.get(*i)).ok_or_else(|| format!("{label}: OCCURS needs a count"))?;
    *i += 1;
    let (mut min, mut max) = (first, first);
    if toks.get(*i).is_some_and(|t| t.upper() == "TO") {
        *i += 1;
        max = count(toks.get(*i))
            .ok_or_else(|| format!("{label}: OCCURS {first} TO needs a maximum"))?;
        *i += 1;
    }
    if toks.get(*i).is_some_and(|t| t.upper() == "TIMES") {
        *i += 1;
    }
    let mut depending = None;
    if toks.get(*i).is_some_and(|t| t.upper() == "DEPENDING") {
        *i += 1;
        if toks.get(*i).is_some_and(|t| t.upper() == "ON") {
            *i += 1;
        }
        let obj = toks
            .get(*i)
            .ok_or_else(|| format!("{label}: DEPENDING ON needs the name of the count field"))?;
        depending = Some((obj.text.clone(), obj.col));
        *i += 1;
        if min == max && first == max && !toks[..*i].iter().any(|t| t.upper() == "TO") {
            min = 0;
        }
    } else if min != max {
        return Err(format!(
            "{label}: OCCURS {min} TO {max} needs DEPENDING ON (the field holding the count)"
        ));
    }
    if max == 0 || min > max {
        return Err(format!(
            "{label}: OCCURS {min} TO {max} is not a valid range"
        ));
    }
    // ASCENDING/DESCENDING KEY IS x, INDEXED BY x: no effect on the layout.
    while let Some(w) = toks.get(*i).map(Token::upper) {
        if !matches!(w.as_str(), "ASCENDING" | "DESCENDING" | "INDEXED") {
            break;
        }
        *i += 1;
        while toks
            .get(*i)
            .is_some_and(|t| matches!(t.upper().as_str(), "KEY" | "IS" | "BY"))
        {
            *i += 1;
        }
        while toks.get(*i).is_some_and(|t| {
            let u = t.upper();
            !is_clause(&u) && !matches!(u.as_str(), "ASCENDING" | "DESCENDING" | "INDEXED")
        }) {
            *i += 1;
        }
    }
    Ok(Occurs {
        min,
        max,
        depending,
    })
}

/// One sentence (`05 NAME PIC X(10).`) into an entry.
fn parse_entry(toks: &[Token]) -> Result<Entry, CopyError> {
    let (line, col) = (toks[0].line, toks[0].col);
    let at = |t: Option<&Token>, message: String| CopyError {
        line: t.map_or(line, |t| t.line),
        col: t.map_or(col, |t| t.col),
        message,
    };
    let head = toks[0].upper();
    if matches!(head.as_str(), "COPY" | "REPLACE") {
        return Err(at(
            Some(&toks[0]),
            format!(
                "{head}: nested copybooks are not expanded; paste the copied text in, or expand it with `cobc -E`"
            ),
        ));
    }
    let level: u32 = toks[0].text.parse().map_err(|_| {
        at(
            Some(&toks[0]),
            format!(
                "expected a level number (01-49, 77, 88), found {:?}",
                toks[0].text
            ),
        )
    })?;
    let name_tok = toks.get(1).filter(|t| !is_clause(&t.upper()));
    let name = name_tok
        .filter(|t| t.upper() != "FILLER")
        .map(|t| t.text.clone());
    let label = name.clone().unwrap_or_else(|| "FILLER".into());
    let mut i = 1 + usize::from(name_tok.is_some());
    if level == 88 {
        let Some(name) = name else {
            return Err(at(
                toks.get(1),
                "a level-88 entry needs a condition name".into(),
            ));
        };
        match toks.get(i).map(Token::upper).as_deref() {
            Some("VALUE" | "VALUES") => i += 1,
            _ => {
                return Err(at(toks.get(i), format!("88 {name}: expected VALUE")));
            }
        }
        if toks
            .get(i)
            .is_some_and(|t| matches!(t.upper().as_str(), "IS" | "ARE"))
        {
            i += 1;
        }
        let mut values = Vec::new();
        while i < toks.len() {
            let u = toks[i].upper();
            if u == "WHEN" {
                break; // WHEN SET TO FALSE ...: only for SET statements
            }
            let t = toks.get(i);
            let lo = literal(toks, &mut i).map_err(|m| at(t, format!("88 {name}: {m}")))?;
            if toks
                .get(i)
                .is_some_and(|t| matches!(t.upper().as_str(), "THRU" | "THROUGH"))
            {
                i += 1;
                let t = toks.get(i);
                let hi = literal(toks, &mut i).map_err(|m| at(t, format!("88 {name}: {m}")))?;
                values.push(CondValue::Range(lo, hi));
            } else {
                values.push(CondValue::One(lo));
            }
        }
        if values.is_empty() {
            return Err(at(toks.get(i), format!("88 {name}: VALUE needs a literal")));
        }
        return Ok(Entry::Cond(Condition { name, values, line }));
    }
    if level == 66 {
        return Err(at(
            Some(&toks[0]),
            format!(
                "66 {label} RENAMES: level 66 is not supported; map the renamed fields themselves"
            ),
        ));
    }
    if !(1..=49).contains(&level) && level != 77 {
        return Err(at(
            Some(&toks[0]),
            format!("level {level} is not a data level (01-49, 77, 88)"),
        ));
    }
    let mut item = Item::placeholder(level, name, line, col);
    item.broken = false;
    while i < toks.len() {
        let t = &toks[i];
        let w = t.upper();
        i += 1;
        let err = |m: String| at(Some(t), m);
        match w.as_str() {
            "PIC" | "PICTURE" => {
                let shown = i + usize::from(toks.get(i).is_some_and(|t| t.upper() == "IS"));
                item.pic = Some(
                    pic_clause(toks, &mut i, &label)
                        .map_err(|m| at(toks.get(shown).or(Some(t)), m))?,
                );
            }
            "USAGE" => {
                if toks.get(i).is_some_and(|t| t.upper() == "IS") {
                    i += 1;
                }
                let u = toks.get(i).map(Token::upper).unwrap_or_default();
                let ut = toks.get(i);
                i += 1;
                match usage_of(&u) {
                    Some(Ok(x)) => item.usage = Some((x, u)),
                    Some(Err(e)) => return Err(at(ut, format!("{label}: {e}"))),
                    None => return Err(at(ut, format!("{label}: unknown USAGE {u:?}"))),
                }
            }
            "OCCURS" => item.occurs = Some(occurs_clause(toks, &mut i, &label).map_err(err)?),
            "REDEFINES" => {
                let target = toks.get(i).ok_or_else(|| {
                    err(format!(
                        "{label}: REDEFINES needs the name of the item it redefines"
                    ))
                })?;
                item.redefines = Some(target.text.clone());
                i += 1;
            }
            "VALUE" | "VALUES" => {
                if toks
                    .get(i)
                    .is_some_and(|t| matches!(t.upper().as_str(), "IS" | "ARE"))
                {
                    i += 1;
                }
                let vt = toks.get(i);
                item.value =
                    Some(literal(toks, &mut i).map_err(|m| at(vt, format!("{label}: {m}")))?);
            }
            "SIGN" | "LEADING" | "TRAILING" => {
                let mut side = w.clone();
                if side == "SIGN" {
                    if toks.get(i).is_some_and(|t| t.upper() == "IS") {
                        i += 1;
                    }
                    side = toks.get(i).map(Token::upper).unwrap_or_default();
                    i += 1;
                }
                let leading = match side.as_str() {
                    "LEADING" => true,
                    "TRAILING" => false,
                    other => {
                        return Err(err(format!(
                            "{label}: SIGN {other} is not LEADING or TRAILING"
                        )));
                    }
                };
                let separate = toks.get(i).is_some_and(|t| t.upper() == "SEPARATE");
                if separate {
                    i += 1;
                    if toks.get(i).is_some_and(|t| t.upper() == "CHARACTER") {
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
                if toks.get(i).is_some_and(|t| t.upper() == "RIGHT") {
                    i += 1;
                }
            }
            "SYNC" | "SYNCHRONIZED" => {
                item.sync = true;
                if toks
                    .get(i)
                    .is_some_and(|t| matches!(t.upper().as_str(), "LEFT" | "RIGHT"))
                {
                    i += 1;
                }
            }
            "BLANK" => {
                if toks.get(i).is_some_and(|t| t.upper() == "WHEN") {
                    i += 1;
                }
                match toks.get(i).map(Token::upper).as_deref() {
                    Some("ZERO" | "ZEROS" | "ZEROES") => i += 1,
                    _ => return Err(err(format!("{label}: expected BLANK WHEN ZERO"))),
                }
                item.blank_zero = true;
            }
            "GLOBAL" | "EXTERNAL" | "IS" => {}
            "RENAMES" => {
                return Err(err(format!(
                    "{label}: RENAMES is not supported; map the renamed fields themselves"
                )));
            }
            u => match usage_of(u) {
                Some(Ok(x)) => item.usage = Some((x, u.to_string())),
                Some(Err(e)) => return Err(err(format!("{label}: {e}"))),
                None => return Err(err(format!("{label}: unexpected word {:?}", t.text))),
            },
        }
    }
    Ok(Entry::Data(Box::new(item)))
}

/// What a group passes down to its items.
#[derive(Clone, Copy, Default)]
struct Inherited {
    usage: Option<Usage>,
    sign: Option<SignMode>,
    sync: bool,
}

/// Lays the items out into fields, nodes, sets and tables.
struct Layout<'e> {
    fields: Vec<CopyField>,
    sets: Vec<RedefinesSet>,
    tables: Vec<Table>,
    errs: &'e mut Vec<CopyError>,
    /// Names of broken entries: errors about them would only repeat the first one.
    broken: Vec<String>,
    /// Inside a variable-length table, or after one in the current record.
    after_table: bool,
    in_table: bool,
    /// The REDEFINES alternatives being laid out, outermost first.
    alts: Vec<(usize, usize)>,
}

/// The slack-byte alignment IBM gives a SYNCHRONIZED elementary item (0: none).
fn sync_m(kind: &Kind) -> usize {
    match kind {
        Kind::Binary { bytes: 2, .. } => 2,
        Kind::Binary { .. } => 4,
        Kind::Float(f) if !f.double => 4,
        Kind::Float(_) => 8,
        _ => 0,
    }
}

impl Layout<'_> {
    fn err(&mut self, item: &Item, message: String) {
        self.errs.push(CopyError {
            line: item.line,
            col: item.col,
            message,
        });
    }

    /// The kind of an elementary item, or `None` after reporting why not.
    fn kind(&mut self, item: &Item, inh: Inherited) -> Option<(Kind, String)> {
        let label = item.label();
        let usage = item.usage.as_ref().map(|(u, _)| *u).or(inh.usage);
        let usage_text = item
            .usage
            .as_ref()
            .map(|(_, t)| t.clone())
            .or_else(|| inh.usage.map(|u| format!("{u:?}").to_ascii_uppercase()))
            .unwrap_or_default();
        let pic = item.pic.as_ref();
        // The picture and the clauses that change the bytes, as a reader of the copybook
        // would name them.
        let clauses = {
            let mut c = String::new();
            match item.sign.or(inh.sign) {
                Some(SignMode::LeadingOverpunch) => c.push_str(" SIGN LEADING"),
                Some(SignMode::LeadingSeparate) => c.push_str(" SIGN LEADING SEPARATE"),
                Some(SignMode::TrailingSeparate) => c.push_str(" SIGN TRAILING SEPARATE"),
                Some(SignMode::TrailingOverpunch) | None => {}
            }
            if item.blank_zero {
                c.push_str(" BLANK WHEN ZERO");
            }
            if item.justified {
                c.push_str(" JUSTIFIED RIGHT");
            }
            if inh.sync {
                c.push_str(" SYNC");
            }
            c
        };
        let shown = |p: &str| {
            if usage_text.is_empty() || usage == Some(Usage::Display) {
                format!("{p}{clauses}")
            } else {
                format!("{p} {usage_text}{clauses}")
            }
        };
        let kind = match (pic, usage.unwrap_or(Usage::Display)) {
            (None, Usage::Comp1 | Usage::Comp2) => {
                let double = usage == Some(Usage::Comp2);
                let k = Kind::Float(FloatFormat {
                    double,
                    ieee: false,
                    little: false,
                });
                let sync = if inh.sync { " SYNC" } else { "" };
                return Some((k, format!("{usage_text}{sync}")));
            }
            (Some((_, p)), Usage::Comp1 | Usage::Comp2) => {
                self.err(
                    item,
                    format!("{label}: {usage_text} takes no PICTURE (remove PIC {p})"),
                );
                return None;
            }
            (None, _) => {
                self.err(
                    item,
                    format!("{label} has neither a PIC nor subordinate items"),
                );
                return None;
            }
            (Some((Pic::Alnum(n), p)), Usage::Display) => {
                if item.blank_zero {
                    self.err(
                        item,
                        format!("{label}: BLANK WHEN ZERO applies to numeric DISPLAY items only"),
                    );
                }
                (
                    Kind::Text {
                        width: Some(*n as usize),
                        align: if item.justified {
                            Align::Right
                        } else {
                            Align::Left
                        },
                        pad: ' ',
                    },
                    shown(p),
                )
            }
            (Some((Pic::National(n), p)), Usage::Display | Usage::National) => (
                Kind::National {
                    chars: *n as usize,
                    align: if item.justified {
                        Align::Right
                    } else {
                        Align::Left
                    },
                },
                shown(p),
            ),
            (Some((Pic::Num(_), p)), Usage::National) => {
                self.err(item, format!("{label}: national numeric (PIC {p} USAGE NATIONAL) is not supported; use DISPLAY, COMP-3 or COMP"));
                return None;
            }
            (Some((Pic::Alnum(_) | Pic::National(_), p)), _) => {
                self.err(item, format!("{label}: PIC {p} cannot be {usage_text}"));
                return None;
            }
            (Some((Pic::Num(n), p)), Usage::Display) => (
                Kind::Zoned {
                    pic: *n,
                    sign: item
                        .sign
                        .or(inh.sign)
                        .unwrap_or(SignMode::TrailingOverpunch),
                    blank_zero: item.blank_zero,
                },
                shown(p),
            ),
            (Some((Pic::Num(n), p)), Usage::Packed) => (Kind::Packed { pic: *n }, shown(p)),
            (Some((Pic::Num(n), p)), u @ (Usage::Binary | Usage::Comp5)) => {
                let Some(bytes) = binary_bytes(*n) else {
                    self.err(
                        item,
                        format!("{label}: a binary field holds at most 18 digits"),
                    );
                    return None;
                };
                (
                    Kind::Binary {
                        pic: *n,
                        bytes,
                        native: u == Usage::Comp5,
                        little: false,
                    },
                    shown(p),
                )
            }
        };
        let usage = usage.unwrap_or(Usage::Display);
        if item.sign.is_some() && usage != Usage::Display {
            self.err(
                item,
                format!("{label}: SIGN applies only to DISPLAY numbers"),
            );
        }
        if item.blank_zero && usage != Usage::Display {
            self.err(
                item,
                format!("{label}: BLANK WHEN ZERO applies to DISPLAY numbers only"),
            );
        }
        if item.justified && !matches!(kind.0, Kind::Text { .. } | Kind::National { .. }) {
            self.err(
                item,
                format!("{label}: JUSTIFIED applies to PIC X, A and N items only"),
            );
        }
        Some(kind)
    }

    /// Lays out the siblings `items` from `offset`; returns the nodes.
    fn items(
        &mut self,
        items: &[Item],
        inh: Inherited,
        suffix: &[usize],
        offset: &mut usize,
        record_start: usize,
    ) -> Vec<Node> {
        let mut nodes = Vec::new();
        let mut k = 0;
        while k < items.len() {
            // A run of `X`, `Y REDEFINES X`, `Z REDEFINES X`... is one set.
            let mut end = k + 1;
            while end < items.len()
                && items[end].redefines.as_ref().is_some_and(|r| {
                    items[k]
                        .name
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case(r))
                })
            {
                end += 1;
            }
            if let Some(r) = &items[k].redefines {
                if !items[k].broken {
                    let msg = format!(
                        "{} REDEFINES {r}: the redefining item must follow {r} (or another item redefining it) directly, at the same level",
                        items[k].label()
                    );
                    self.err(&items[k], msg);
                }
            }
            if end == k + 1 {
                self.item(&items[k], inh, suffix, offset, record_start, &mut nodes);
            } else {
                self.set(
                    &items[k..end],
                    inh,
                    suffix,
                    offset,
                    record_start,
                    false,
                    &mut nodes,
                );
            }
            k = end;
        }
        nodes
    }

    /// Alternatives sharing the bytes at `offset`.
    #[allow(clippy::too_many_arguments)]
    fn set(
        &mut self,
        alts: &[Item],
        inh: Inherited,
        suffix: &[usize],
        offset: &mut usize,
        record_start: usize,
        records: bool,
        nodes: &mut Vec<Node>,
    ) {
        if self.in_table {
            self.err(
                &alts[0],
                format!(
                    "{} REDEFINES inside a variable-length table is not supported",
                    alts[1].label()
                ),
            );
            return;
        }
        let set = self.sets.len();
        self.sets.push(RedefinesSet {
            alts: Vec::new(),
            width: 0,
            records,
            line: alts[0].line,
        });
        let start = *offset;
        let mut lens = Vec::new();
        let after_table = self.after_table;
        for (a, item) in alts.iter().enumerate() {
            self.alts.push((set, a));
            self.after_table = after_table;
            let mut at = start;
            let mut alt_nodes = Vec::new();
            let record_start = if records { start } else { record_start };
            self.item(item, inh, suffix, &mut at, record_start, &mut alt_nodes);
            self.alts.pop();
            let len = at - start;
            if !records && a > 0 && len > lens[0] && !item.broken {
                let msg = format!(
                    "{} REDEFINES {} is longer ({len} bytes) than what it redefines ({} bytes); COBOL lets it run over the items after it: make {} at least {len} bytes",
                    item.label(),
                    alts[0].label(),
                    lens[0],
                    alts[0].label()
                );
                self.err(item, msg);
            }
            lens.push(len);
            let name = format!("{}{}", item.label(), subscript(suffix));
            self.sets[set].alts.push(Alt {
                name,
                line: item.line,
                nodes: alt_nodes,
                len,
            });
            if !records && item.name.is_some() && self.in_table_variable(item) {
                self.err(
                    item,
                    format!(
                        "{}: a variable-length table inside REDEFINES is not supported",
                        item.label()
                    ),
                );
            }
        }
        let width = if records {
            lens.iter().copied().max().unwrap_or(0)
        } else {
            lens[0]
        };
        self.sets[set].width = width;
        *offset = start + width;
        nodes.push(Node::Choice(set));
    }

    fn in_table_variable(&self, item: &Item) -> bool {
        fn has_odo(i: &Item) -> bool {
            i.occurs.as_ref().is_some_and(|o| o.depending.is_some())
                || i.children.iter().any(has_odo)
        }
        has_odo(item)
    }

    /// One item (with its OCCURS) at `offset`.
    fn item(
        &mut self,
        item: &Item,
        inh: Inherited,
        suffix: &[usize],
        offset: &mut usize,
        record_start: usize,
        nodes: &mut Vec<Node>,
    ) {
        if item.broken {
            if let Some(n) = &item.name {
                self.broken.push(n.to_ascii_uppercase());
            }
            return;
        }
        let inh = Inherited {
            usage: item.usage.as_ref().map(|(u, _)| *u).or(inh.usage),
            sign: item.sign.or(inh.sign),
            sync: item.sync || inh.sync,
        };
        match &item.occurs {
            None => self.once(item, inh, suffix, offset, record_start, nodes),
            Some(Occurs {
                max,
                depending: None,
                ..
            }) => {
                for k in 1..=*max {
                    let mut s = suffix.to_vec();
                    s.push(k);
                    let (start, first) = (*offset, nodes.len());
                    self.once(item, inh, &s, offset, record_start, nodes);
                    self.pad_occurrence(start, offset, nodes, first);
                }
            }
            Some(Occurs {
                min,
                max,
                depending: Some((object, obj_col)),
            }) => {
                if self.in_table {
                    self.err(
                        item,
                        format!(
                            "{}: a variable-length table inside another is not supported",
                            item.label()
                        ),
                    );
                    return;
                }
                if !suffix.is_empty() {
                    self.err(
                        item,
                        format!(
                            "{}: OCCURS DEPENDING ON inside a fixed OCCURS table is not supported",
                            item.label()
                        ),
                    );
                    return;
                }
                let obj = self.fields.iter().rposition(|f| {
                    f.name.eq_ignore_ascii_case(object)
                        && f.alts.iter().all(|a| self.alts.contains(a))
                });
                let Some(obj) = obj else {
                    if !self.broken.contains(&object.to_ascii_uppercase()) {
                        self.errs.push(CopyError {
                            line: item.line,
                            col: *obj_col,
                            message: format!("{}: DEPENDING ON {object}: {object} must be an elementary integer field before the table", item.label()),
                        });
                    }
                    return;
                };
                match &self.fields[obj].kind {
                    Kind::Zoned { pic, .. } | Kind::Packed { pic } | Kind::Binary { pic, .. }
                        if pic.scale == 0 => {}
                    _ => {
                        self.errs.push(CopyError {
                            line: item.line,
                            col: *obj_col,
                            message: format!(
                                "{}: DEPENDING ON {object}: {object} is not an integer field",
                                item.label()
                            ),
                        });
                        return;
                    }
                }
                self.in_table = true;
                let table = self.tables.len();
                self.tables.push(Table {
                    name: item.label(),
                    line: item.line,
                    object: obj,
                    min: *min,
                    max: *max,
                    elems: Vec::new(),
                    elem_len: 0,
                });
                let mut elems = Vec::new();
                let mut elem_len = 0;
                for k in 1..=*max {
                    let mut el = Vec::new();
                    let start = *offset;
                    self.once(item, inh, &[k], offset, record_start, &mut el);
                    elem_len = self.pad_occurrence(start, offset, &mut el, 0);
                    elems.push(el);
                }
                self.in_table = false;
                self.after_table = true;
                self.tables[table].elems = elems;
                self.tables[table].elem_len = elem_len;
                nodes.push(Node::Table(table));
            }
        }
    }

    /// After one occurrence of a table (laid out from `start`): IBM's slack bytes at its
    /// end, up to a multiple of the largest SYNC alignment in it, so every occurrence aligns
    /// its items like the first. Returns the occurrence's length.
    fn pad_occurrence(
        &mut self,
        start: usize,
        offset: &mut usize,
        nodes: &mut Vec<Node>,
        first_node: usize,
    ) -> usize {
        let m = self.max_sync_m(&nodes[first_node..]);
        let len = *offset - start;
        if m > 1 && len % m != 0 {
            let slack = m - len % m;
            nodes.push(Node::Slack(slack));
            *offset += slack;
        }
        *offset - start
    }

    fn max_sync_m(&self, nodes: &[Node]) -> usize {
        let mut m = 0;
        for n in nodes {
            m = m.max(match n {
                Node::Field(f) => self.fields[*f].sync_m,
                Node::Slack(_) => 0,
                Node::Choice(s) => self.sets[*s]
                    .alts
                    .iter()
                    .map(|a| self.max_sync_m(&a.nodes))
                    .max()
                    .unwrap_or(0),
                Node::Table(t) => self.tables[*t]
                    .elems
                    .first()
                    .map_or(0, |e| self.max_sync_m(e)),
            });
        }
        m
    }

    /// One occurrence of `item`: a group's items, or an elementary field.
    fn once(
        &mut self,
        item: &Item,
        inh: Inherited,
        suffix: &[usize],
        offset: &mut usize,
        record_start: usize,
        nodes: &mut Vec<Node>,
    ) {
        if !item.children.is_empty() {
            if let Some((_, p)) = &item.pic {
                self.err(
                    item,
                    format!(
                        "{}: a group item cannot have a PIC ({p}); remove it or the items under it",
                        item.label()
                    ),
                );
                return;
            }
            if !item.conditions.is_empty() {
                self.err(item, format!("{}: level-88 conditions on a group item are not supported; put them on an elementary item", item.label()));
            }
            let inner = self.items(&item.children, inh, suffix, offset, record_start);
            nodes.extend(inner);
            return;
        }
        let Some((kind, pic)) = self.kind(item, inh) else {
            if let Some(n) = &item.name {
                self.broken.push(n.to_ascii_uppercase());
            }
            return;
        };
        let m = if inh.sync { sync_m(&kind) } else { 0 };
        if m > 0 {
            if self.after_table {
                self.err(item, format!("{}: SYNCHRONIZED after a variable-length table: its slack bytes would depend on the count; remove SYNC or put the item before the table", item.label()));
            }
            let r = (*offset - record_start) % m;
            if r != 0 {
                nodes.push(Node::Slack(m - r));
                *offset += m - r;
            }
        }
        let width = kind.width().unwrap_or(0);
        nodes.push(Node::Field(self.fields.len()));
        self.fields.push(CopyField {
            name: format!("{}{}", item.label(), subscript(suffix)),
            filler: item.name.is_none(),
            offset: *offset,
            fixed_offset: !self.after_table && !self.in_table,
            kind,
            pic,
            line: item.line,
            value: item.value.clone(),
            conditions: item.conditions.clone(),
            alts: self.alts.clone(),
            sync_m: m,
        });
        *offset += width;
    }
}

fn subscript(suffix: &[usize]) -> String {
    if suffix.is_empty() {
        return String::new();
    }
    let s: Vec<String> = suffix.iter().map(usize::to_string).collect();
    format!("({})", s.join(","))
}

impl Copybook {
    /// Parses a copybook; every problem found is returned, each once.
    pub fn parse(text: &str) -> Result<Copybook, Vec<CopyError>> {
        let toks = tokenize(text).map_err(|e| vec![e])?;
        let mut errs = Vec::new();
        let mut items: Vec<Item> = Vec::new();
        let mut start = 0;
        let mut sentences: Vec<&[Token]> = Vec::new();
        for (i, t) in toks.iter().enumerate() {
            if t.text == "." {
                if i > start {
                    sentences.push(&toks[start..i]);
                }
                start = i + 1;
            }
        }
        if start < toks.len() {
            errs.push(CopyError {
                line: toks[start].line,
                col: toks[start].col,
                message: "the last entry does not end with a period".into(),
            });
            sentences.push(&toks[start..]);
        }
        for s in sentences {
            match parse_entry(s) {
                Ok(Entry::Data(item)) => items.push(*item),
                Ok(Entry::Cond(c)) => match items.last_mut() {
                    Some(last) => last.conditions.push(c),
                    None => errs.push(CopyError {
                        line: c.line,
                        col: s[0].col,
                        message: format!(
                            "88 {}: a condition name needs a data item before it",
                            c.name
                        ),
                    }),
                },
                Err(e) => {
                    errs.push(e);
                    // A placeholder keeps the nesting of the entries after it as written.
                    let level = s[0]
                        .text
                        .parse()
                        .ok()
                        .filter(|l| (1..=49).contains(l) || *l == 77);
                    if let Some(level) = level {
                        let name = s
                            .get(1)
                            .filter(|t| !is_clause(&t.upper()))
                            .map(|t| t.text.clone());
                        items.push(Item::placeholder(level, name, s[0].line, s[0].col));
                    }
                }
            }
        }
        // Nest by level numbers (77 counts as 01).
        let lvl = |i: &Item| if i.level == 77 { 1 } else { i.level };
        let mut roots: Vec<Item> = Vec::new();
        let mut stack: Vec<Item> = Vec::new();
        for item in items {
            while stack.last().is_some_and(|top| lvl(top) >= lvl(&item)) {
                let done = stack.pop().expect("checked by is_some_and");
                attach(&mut stack, &mut roots, done);
            }
            stack.push(item);
        }
        while let Some(done) = stack.pop() {
            attach(&mut stack, &mut roots, done);
        }
        if roots.is_empty() {
            if errs.is_empty() {
                errs.push(CopyError {
                    line: 1,
                    col: 1,
                    message: "no data items found (a copybook holds entries such as `01 REC. 05 ID PIC X(10).`)".into(),
                });
            }
            return Err(errs);
        }
        let has_01 = roots.iter().any(|r| lvl(r) == 1);
        if has_01 {
            if let Some(r) = roots.iter().find(|r| lvl(r) != 1) {
                errs.push(CopyError {
                    line: r.line,
                    col: r.col,
                    message: format!("level {} {} comes before any 01 record", r.level, r.label()),
                });
            }
        }
        let record_name = roots
            .iter()
            .find(|r| lvl(r) == 1 && !r.children.is_empty())
            .and_then(|r| r.name.clone());
        let mut lay = Layout {
            fields: Vec::new(),
            sets: Vec::new(),
            tables: Vec::new(),
            errs: &mut errs,
            broken: Vec::new(),
            after_table: false,
            in_table: false,
            alts: Vec::new(),
        };
        let mut offset = 0;
        let records: Vec<Item> = roots
            .into_iter()
            .filter(|r| !has_01 || lvl(r) == 1)
            .collect();
        let nodes = if has_01 && records.len() > 1 {
            for r in &records[1..] {
                if let Some(t) = &r.redefines {
                    if !records
                        .iter()
                        .any(|x| x.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(t)))
                    {
                        lay.err(
                            r,
                            format!("{} REDEFINES {t}: there is no 01 record {t}", r.label()),
                        );
                    }
                }
            }
            let mut nodes = Vec::new();
            lay.set(
                &records,
                Inherited::default(),
                &[],
                &mut offset,
                0,
                true,
                &mut nodes,
            );
            nodes
        } else {
            lay.items(&records, Inherited::default(), &[], &mut offset, 0)
        };
        let Layout {
            fields,
            sets,
            tables,
            ..
        } = lay;
        let mut seen = std::collections::HashMap::new();
        for f in fields.iter().filter(|f| !f.filler) {
            if let Some(first) = seen.insert(f.name.to_ascii_uppercase(), f.line) {
                if first != f.line {
                    errs.push(CopyError {
                        line: f.line,
                        col: 1,
                        message: format!(
                            "{} appears twice (first on line {first}); names must be unique to be mapped: rename one (COBOL would qualify it, X OF Y)",
                            f.name
                        ),
                    });
                }
            }
        }
        let mut conds = std::collections::HashMap::new();
        for f in &fields {
            for c in &f.conditions {
                let key = c.name.to_ascii_uppercase();
                if seen.contains_key(&key) {
                    errs.push(CopyError {
                        line: c.line,
                        col: 1,
                        message: format!(
                            "88 {}: the name is also a field's; names must be unique",
                            c.name
                        ),
                    });
                }
                if let Some(first) = conds.insert(key, c.line) {
                    if first != c.line {
                        errs.push(CopyError { line: c.line, col: 1, message: format!("88 {} appears twice (first on line {first}); condition names must be unique", c.name) });
                    }
                }
            }
        }
        if !errs.is_empty() {
            errs.sort_by_key(|e| (e.line, e.col));
            errs.dedup();
            return Err(errs);
        }
        let mut cb = Copybook {
            record_name,
            fields,
            nodes,
            sets,
            tables,
            len: offset,
            min_len: 0,
        };
        cb.min_len = cb.min_of(&cb.nodes.clone());
        Ok(cb)
    }

    /// The shortest record `nodes` can make.
    fn min_of(&self, nodes: &[Node]) -> usize {
        nodes
            .iter()
            .map(|n| match n {
                Node::Field(f) => self.fields[*f].kind.width().unwrap_or(0),
                Node::Slack(n) => *n,
                Node::Choice(s) => {
                    let set = &self.sets[*s];
                    if set.records {
                        set.alts
                            .iter()
                            .map(|a| self.min_of(&a.nodes))
                            .min()
                            .unwrap_or(0)
                    } else {
                        set.width
                    }
                }
                Node::Table(t) => {
                    let t = &self.tables[*t];
                    t.min * t.elem_len
                }
            })
            .sum()
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

    /// The field index of a (case-insensitive) name.
    pub fn field(&self, name: &str) -> Option<usize> {
        self.fields
            .iter()
            .position(|f| !f.filler && f.name.eq_ignore_ascii_case(name))
    }

    /// The field a level-88 condition belongs to (its first occurrence), and the condition.
    pub fn condition(&self, name: &str) -> Option<(usize, &Condition)> {
        self.fields.iter().enumerate().find_map(|(i, f)| {
            f.conditions
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(name))
                .map(|c| (i, c))
        })
    }

    /// The (set, alternative) an alternative's name stands for.
    pub fn alternative(&self, name: &str) -> Option<(usize, usize)> {
        self.sets.iter().enumerate().find_map(|(s, set)| {
            set.alts
                .iter()
                .position(|a| a.name.eq_ignore_ascii_case(name))
                .map(|a| (s, a))
        })
    }
}

fn attach(stack: &mut [Item], roots: &mut Vec<Item>, done: Item) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(done),
        None => roots.push(done),
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

    fn offsets(cb: &Copybook) -> Vec<(&str, usize)> {
        cb.fields
            .iter()
            .map(|f| (f.name.as_str(), f.offset))
            .collect()
    }

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
        assert_eq!(
            offsets(&cb),
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
        assert_eq!(cb.fields[4].conditions[0].name, "IS-OK");
    }

    /// IBM Enterprise COBOL Language Reference, "Slack bytes within records" and "Slack bytes
    /// within tables": the compiler's own examples.
    #[test]
    fn sync_slack_bytes_follow_ibm() {
        let cb = Copybook::parse(
            "01 FIELD-A.\n 05 FIELD-B PICTURE X(5).\n 05 FIELD-C.\n  10 FIELD-D PICTURE XX.\n  10 FIELD-E COMPUTATIONAL PICTURE S9(6) SYNC.\n",
        )
        .unwrap();
        assert_eq!(
            offsets(&cb),
            [("FIELD-B", 0), ("FIELD-D", 5), ("FIELD-E", 8)]
        );
        let cb = Copybook::parse(
            "01 COMP-RECORD.\n 05 A-1 PICTURE X(5).\n 05 A-2 PICTURE X(3).\n 05 A-3 PICTURE X(3).\n 05 B-1 PICTURE S9999 USAGE COMP SYNCHRONIZED.\n 05 B-2 PICTURE S99999 USAGE COMP SYNCHRONIZED.\n 05 B-3 PICTURE S9999 USAGE COMP SYNCHRONIZED.\n",
        )
        .unwrap();
        assert_eq!(
            offsets(&cb),
            [
                ("A-1", 0),
                ("A-2", 5),
                ("A-3", 8),
                ("B-1", 12),
                ("B-2", 16),
                ("B-3", 20)
            ]
        );
        let cb = Copybook::parse(
            "01 WORK-RECORD.\n 05 WORK-CODE PICTURE X.\n 05 COMP-TABLE OCCURS 10 TIMES.\n  10 COMP-TYPE PICTURE X.\n  10 COMP-PAY PICTURE S9(4)V99 COMP SYNC.\n  10 COMP-HRS PICTURE S9(3) COMP SYNC.\n  10 COMP-NAME PICTURE X(5).\n",
        )
        .unwrap();
        let at = |n: &str| cb.fields.iter().find(|f| f.name == n).unwrap().offset;
        assert_eq!(
            (
                at("COMP-TYPE(1)"),
                at("COMP-PAY(1)"),
                at("COMP-HRS(1)"),
                at("COMP-NAME(1)")
            ),
            (1, 4, 8, 10)
        );
        // 14 bytes padded to 16 at the end of every occurrence.
        assert_eq!((at("COMP-TYPE(2)"), at("COMP-PAY(2)")), (17, 20));
        assert_eq!(cb.len, 1 + 10 * 16);
        // COMP-1 on a fullword, COMP-2 on a doubleword, doubleword binary on a fullword.
        let cb = Copybook::parse("01 R.\n 05 A PIC X.\n 05 F COMP-1 SYNC.\n 05 B PIC X.\n 05 D COMP-2 SYNC.\n 05 C PIC X.\n 05 L PIC S9(18) COMP SYNC.\n").unwrap();
        assert_eq!(
            offsets(&cb),
            [
                ("A", 0),
                ("F", 4),
                ("B", 8),
                ("D", 16),
                ("C", 24),
                ("L", 28)
            ]
        );
        // SYNC means nothing for DISPLAY and packed items.
        let cb = Copybook::parse("01 R.\n 05 A PIC X.\n 05 P PIC S9(3) COMP-3 SYNC.\n").unwrap();
        assert_eq!(offsets(&cb), [("A", 0), ("P", 1)]);
    }

    #[test]
    fn redefines_sets_and_records() {
        let cb = Copybook::parse(
            "01 R.\n 05 KIND PIC X.\n 05 BODY PIC X(6).\n 05 AMT REDEFINES BODY PIC S9(9) COMP-3.\n 05 PAIR REDEFINES BODY.\n  10 P1 PIC XX.\n  10 P2 PIC XX.\n 05 TAIL PIC X.\n",
        )
        .unwrap();
        assert_eq!(cb.sets.len(), 1);
        let names: Vec<_> = cb.sets[0]
            .alts
            .iter()
            .map(|a| (a.name.as_str(), a.len))
            .collect();
        assert_eq!(names, [("BODY", 6), ("AMT", 5), ("PAIR", 4)]);
        assert_eq!(
            cb.fields.iter().find(|f| f.name == "TAIL").unwrap().offset,
            7
        );
        assert_eq!(cb.len, 8);
        let cb = Copybook::parse(
            "01 HDR.\n 05 H-TYPE PIC X.\n 05 H-DATE PIC 9(8).\n01 DTL.\n 05 D-TYPE PIC X.\n 05 D-AMT PIC S9(5)V99 COMP-3.\n 05 D-NAME PIC X(20).\n",
        )
        .unwrap();
        assert!(cb.sets[0].records);
        assert_eq!((cb.len, cb.min_len), (25, 9));
        let e =
            Copybook::parse("01 R.\n 05 A PIC X(2).\n 05 B REDEFINES A PIC X(3).\n").unwrap_err();
        assert!(
            e[0].message
                .contains("longer (3 bytes) than what it redefines (2 bytes)"),
            "{e:?}"
        );
        let e = Copybook::parse("01 R.\n 05 A PIC X(2).\n 05 C PIC X.\n 05 B REDEFINES A PIC X.\n")
            .unwrap_err();
        assert!(e[0].message.contains("must follow A"), "{e:?}");
    }

    #[test]
    fn variable_length_tables() {
        let cb = Copybook::parse(
            "01 R.\n 05 N PIC 9(2).\n 05 ITEM OCCURS 1 TO 5 TIMES DEPENDING ON N.\n  10 CODE PIC X(3).\n  10 QTY PIC S9(3) COMP-3.\n 05 TOTAL PIC 9(5).\n",
        )
        .unwrap();
        let t = &cb.tables[0];
        assert_eq!((t.min, t.max, t.elem_len, t.object), (1, 5, 5, 0));
        assert_eq!((cb.len, cb.min_len), (2 + 25 + 5, 2 + 5 + 5));
        let total = cb.fields.iter().find(|f| f.name == "TOTAL").unwrap();
        assert!(!total.fixed_offset);
        let e = Copybook::parse("01 R.\n 05 T OCCURS 1 TO 5 DEPENDING ON N PIC X.\n 05 N PIC 9.\n")
            .unwrap_err();
        assert!(
            e[0].message
                .contains("must be an elementary integer field before the table"),
            "{e:?}"
        );
        let e = Copybook::parse("01 R.\n 05 N PIC 9.\n 05 T OCCURS 1 TO 5 DEPENDING ON N.\n  10 U OCCURS 1 TO 2 DEPENDING ON N PIC X.\n").unwrap_err();
        assert!(e[0].message.contains("inside another"), "{e:?}");
        let e = Copybook::parse("01 R.\n 05 N PIC 9.\n 05 T OCCURS 1 TO 5 DEPENDING ON N PIC X.\n 05 B PIC S9(4) COMP SYNC.\n").unwrap_err();
        assert!(
            e[0].message
                .contains("SYNCHRONIZED after a variable-length table"),
            "{e:?}"
        );
    }

    #[test]
    fn values_conditions_and_literals() {
        let cb = Copybook::parse(
            "01 R.\n 05 FILLER PIC X(3) VALUE 'H''D'.\n 05 FILLER PIC X(2) VALUE HIGH-VALUES.\n 05 FILLER PIC X(4) VALUE ALL '*'.\n 05 ST PIC X.\n  88 OPEN-ST VALUES 'O' 'P'.\n  88 CLOSED VALUE 'C'.\n 05 N PIC 99.\n  88 SMALL VALUE 1 THRU 9.\n 05 FILLER PIC X(2) VALUE X'C1C2'.\n",
        )
        .unwrap();
        assert_eq!(cb.fields[0].value, Some(Literal::Text("H'D".into())));
        assert_eq!(
            cb.fields[1].value,
            Some(Literal::Figurative(Figurative::HighValues))
        );
        assert_eq!(cb.fields[2].value, Some(Literal::All("*".into())));
        assert_eq!(cb.fields[3].conditions.len(), 2);
        assert_eq!(cb.fields[3].conditions[0].values.len(), 2);
        assert_eq!(
            cb.fields[4].conditions[0].values,
            [CondValue::Range(
                Literal::Number("1".into()),
                Literal::Number("9".into())
            )]
        );
        assert_eq!(cb.fields[5].value, Some(Literal::Hex(vec![0xC1, 0xC2])));
        assert_eq!(cb.condition("closed").map(|(i, _)| i), Some(3));
    }

    #[test]
    fn continuation_lines_join() {
        let cb = Copybook::parse(concat!(
            "       01  R.\n",
            "           05  GREETING  PIC X(70) VALUE 'HELLO THIS IS A VERY LONG LITE\n",
            "      -    'RAL'.\n",
            "           05  AM\n",
            "      -        OUNT      PIC 9(3).\n",
        ))
        .unwrap();
        // The literal ran to column 72, so nothing is added between its two parts.
        assert_eq!(
            cb.fields[0].value,
            Some(Literal::Text("HELLO THIS IS A VERY LONG LITERAL".into()))
        );
        assert_eq!(cb.fields[1].name, "AMOUNT");
    }

    #[test]
    fn one_bad_entry_gives_one_error() {
        // A bad group line: its items still nest under it, so nothing else is reported.
        let e =
            Copybook::parse("01 R.\n 05 G PIC ZZ9.\n  10 A PIC X.\n  10 B PIC X.\n 05 C PIC X.\n")
                .unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].line, e[0].col), (2, 11));
        assert!(e[0].message.contains("edited picture"), "{e:?}");
        let e =
            Copybook::parse("01 R.\n 05 N PIC 9(x).\n 05 T OCCURS 1 TO 3 DEPENDING ON N PIC X.\n")
                .unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
    }

    #[test]
    fn refusals_name_the_clause_and_the_way_around() {
        let cases = [
            (
                "01 R.\n 66 X RENAMES A THRU B.\n",
                "level 66 is not supported",
            ),
            (
                "01 R.\n 05 A PIC X USAGE INDEX.\n",
                "no portable byte layout",
            ),
            ("01 R.\n 05 A PIC X(3) COMP-3.\n", "cannot be COMP-3"),
            ("01 R.\n 05 A COMP-1 PIC 9.\n", "takes no PICTURE"),
            ("01 R.\n 05 A PIC X BLANK WHEN ZERO.\n", "numeric DISPLAY"),
            ("01 R.\n COPY OTHER.\n", "cobc -E"),
            ("01 R.\n 05 A PIC 9 USAGE NATIONAL.\n", "national numeric"),
            ("01 R.\n 05 A PIC 9(19) COMP.\n", "at most 18 digits"),
        ];
        for (text, want) in cases {
            let e = Copybook::parse(text).unwrap_err();
            assert!(e.iter().any(|e| e.message.contains(want)), "{text}: {e:?}");
        }
    }
}
