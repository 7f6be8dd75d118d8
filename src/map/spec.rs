//! The field language of SPEC §4, parsed: a field's source and its modifiers, from the short
//! form (`src | mod | mod:arg`) or the long form (`{from: src, width: 10, ...}`), and COBOL
//! pictures (`9(7)V99`, `S9(5)`, `X(10)`).
//!
//! Invariant: both forms produce the same [`FieldDef`], so they cannot drift apart; every
//! problem in a definition is reported (not just the first), each as a sentence that says
//! what to write instead.

use crate::config::connector::LongField;

/// Where a field's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A payload path: `id`, `address.zip`, `items[0].code`.
    Path(Vec<PathSeg>),
    /// A quoted constant: `"A"`.
    Const(String),
    Seq,
    Type,
    Key,
    TraceId,
    ReceivedAt,
    Ts,
    /// Control records only: the number of records in the batch.
    Count,
    /// Control records only: the sum of a numeric record field over the batch.
    Sum(String),
    /// Control records only: the batch time.
    Date,
    FirstSeq,
    LastSeq,
    /// Spaces or zeros, whatever the field's type calls blank (copybook FILLER, unmapped fields).
    Blank,
    /// `$88:NAME`: the value of the copybook's level-88 condition NAME (resolved to a
    /// constant when the map is compiled).
    Cond(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
    /// `[*]`: every element of a list (transform and compliance paths only).
    Each,
}

impl Source {
    /// The metadata and control names, for error messages.
    const NAMES: &'static str = "$seq, $type, $key, $trace_id, $received_at, $ts, $88:CONDITION (a copybook level-88 name; and in header/trailer: $count, $sum:FIELD, $date, $first_seq, $last_seq)";

    pub fn parse(text: &str) -> Result<Source, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("the source is empty; write a payload path such as `id`, a quoted constant such as `\"A\"`, or $seq".into());
        }
        if let Some(c) = unquote(t) {
            return Ok(Source::Const(c));
        }
        if let Some(meta) = t.strip_prefix('$') {
            return Ok(match meta {
                "seq" => Source::Seq,
                "type" => Source::Type,
                "key" => Source::Key,
                "trace_id" => Source::TraceId,
                "received_at" => Source::ReceivedAt,
                "ts" => Source::Ts,
                "count" => Source::Count,
                "date" => Source::Date,
                "first_seq" => Source::FirstSeq,
                "last_seq" => Source::LastSeq,
                _ => match (meta.strip_prefix("sum:"), meta.strip_prefix("88:")) {
                    (Some(f), _) if !f.trim().is_empty() => Source::Sum(f.trim().to_string()),
                    (_, Some(c)) if !c.trim().is_empty() => Source::Cond(c.trim().to_string()),
                    _ => {
                        return Err(format!(
                            "unknown source {t:?}; the $ sources are {}",
                            Source::NAMES
                        ));
                    }
                },
            });
        }
        parse_path(t).map(Source::Path)
    }

    /// Sources that only mean something in a batch's header or trailer.
    pub fn is_control(&self) -> bool {
        matches!(
            self,
            Source::Count | Source::Sum(_) | Source::Date | Source::FirstSeq | Source::LastSeq
        )
    }

    /// Whether this is the payload path `updated_at` (which falls back to `$ts`, `$received_at`).
    pub fn is_updated_at(&self) -> bool {
        matches!(self, Source::Path(p) if p.len() == 1 && p[0] == PathSeg::Key("updated_at".into()))
    }
}

/// `a.b`, `items[0].code`, `["odd key"]` is not supported: keys are `[A-Za-z0-9_-]` runs.
fn parse_path(t: &str) -> Result<Vec<PathSeg>, String> {
    let bad = |why: &str| {
        Err(format!(
            "{t:?} is not a payload path ({why}); write e.g. `id`, `address.zip`, `items[0].code`, or quote a constant: `\"{t}\"`"
        ))
    };
    let mut segs = Vec::new();
    for part in t.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty() && (segs.is_empty() || rest.is_empty()) {
            return bad("empty name");
        }
        if !key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        {
            return bad("names are letters, digits, `_` and `-`");
        }
        if !key.is_empty() {
            segs.push(PathSeg::Key(key.to_string()));
        }
        while !rest.is_empty() {
            let Some(close) = rest.find(']') else {
                return bad("missing `]`");
            };
            let inner = rest[1..close].trim();
            if inner == "*" {
                segs.push(PathSeg::Each);
            } else {
                let Ok(idx) = inner.parse::<usize>() else {
                    return bad("an index is a number, e.g. `[0]`");
                };
                segs.push(PathSeg::Index(idx));
            }
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return bad("unexpected text after `]`");
            }
        }
    }
    Ok(segs)
}

/// The text of a `"..."` or `'...'` literal (`\"` and `\\` escapes inside double quotes).
pub fn unquote(t: &str) -> Option<String> {
    let q = t.chars().next()?;
    if (q != '"' && q != '\'') || t.len() < 2 || !t.ends_with(q) {
        return None;
    }
    let inner = &t[1..t.len() - 1];
    if q == '\'' {
        return Some(inner.replace("''", "'"));
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) => out.push(n),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Upper,
    Lower,
}

/// Where the sign of a signed DISPLAY number goes (COBOL `SIGN IS ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignMode {
    /// Overpunched on the last digit (COBOL's default): `+1` ends in `A`, `-1` in `J`.
    TrailingOverpunch,
    LeadingOverpunch,
    /// A separate `+`/`-` character before the digits.
    LeadingSeparate,
    TrailingSeparate,
}

/// A numeric COBOL picture: `S9(7)V99`, `9(3)PPP`, `SPPP9(3)`. `digits` are stored; the
/// value is the stored integer times 10^-`scale` (`V99`: scale 2; `PPP` on the right:
/// scale -3; `PPP` on the left of three digits: scale 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumPic {
    pub signed: bool,
    pub digits: u32,
    pub scale: i32,
}

impl NumPic {
    /// A picture without scaling positions: `int` digits, `V`, `frac` digits.
    pub fn new(signed: bool, int: u32, frac: u32) -> NumPic {
        NumPic {
            signed,
            digits: int + frac,
            // A picture has at most MAX_PIC_DIGITS (31) digits, so this never wraps.
            scale: frac as i32,
        }
    }

    pub fn digits(self) -> u32 {
        self.digits
    }

    /// Digits left of the decimal point, `P` positions included (0 for `PPP999`).
    pub fn int_digits(self) -> u32 {
        (self.digits as i32 - self.scale).max(0) as u32
    }

    /// Decimal places a value of this picture has (0 for `999PPP`).
    pub fn frac_digits(self) -> u32 {
        self.scale.max(0) as u32
    }
}

/// A COBOL picture string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pic {
    /// `X(n)` / `A(n)`: n characters.
    Alnum(u32),
    /// `N(n)`: n national characters (UTF-16, two bytes each).
    National(u32),
    Num(NumPic),
}

/// The most digits a numeric picture may have (IBM Enterprise COBOL's ARITH(EXTEND) limit).
pub const MAX_PIC_DIGITS: u32 = 31;

/// Parses `X(10)`, `XXX`, `N(5)`, `9(7)V99`, `S9(5)V9(2)`, `999`, `9(3)PPP`, `SVPP99`.
pub fn parse_pic(text: &str) -> Result<Pic, String> {
    let s = text.trim().to_ascii_uppercase();
    let mut chars = s.chars().peekable();
    let mut signed = false;
    if chars.peek() == Some(&'S') {
        signed = true;
        chars.next();
    }
    // The picture as (symbol, count) runs.
    let mut runs: Vec<(char, u32)> = Vec::new();
    while let Some(c) = chars.next() {
        let mut n = 1u32;
        if chars.peek() == Some(&'(') {
            chars.next();
            let mut num = String::new();
            let mut closed = false;
            for d in chars.by_ref() {
                if d == ')' {
                    closed = true;
                    break;
                }
                num.push(d);
            }
            n = match num.trim().parse() {
                Ok(n) if n > 0 && closed => n,
                _ => {
                    return Err(format!(
                        "picture {text:?}: `({num})` is not a positive count"
                    ));
                }
            };
        }
        match runs.last_mut() {
            Some((last, k)) if *last == c => *k = k.saturating_add(n),
            _ => runs.push((c, n)),
        }
    }
    let count = |sym: char| -> u32 {
        runs.iter()
            .filter(|(c, _)| *c == sym)
            .fold(0u32, |a, (_, n)| a.saturating_add(*n))
    };
    for &(c, _) in &runs {
        match c {
            'X' | 'A' | 'N' | '9' | 'V' | 'P' => {}
            'S' => return Err(format!("picture {text:?}: S must come first")),
            'G' => {
                return Err(format!(
                    "picture {text:?}: G (DBCS) is not supported; use N (national, UTF-16) or X"
                ));
            }
            'E' => {
                return Err(format!(
                    "picture {text:?}: external floating point (E) is not supported; use COMP-1/COMP-2 or a fixed-point picture"
                ));
            }
            _ => {
                return Err(format!(
                    "picture {text:?}: {c:?} is an edited picture symbol (for printing), which is not supported; use 9, S, V, P for numbers or X(n) of the same width for the text"
                ));
            }
        }
    }
    let (x, n) = (count('X') + count('A'), count('N'));
    let (nines, ps, vs) = (count('9'), count('P'), count('V'));
    if x > 0 || n > 0 {
        if nines + ps + vs > 0 || signed || (x > 0 && n > 0) {
            return Err(format!(
                "picture {text:?} mixes X, N and 9/S/V/P; use X(n), N(n) or S9(n)V9(m)"
            ));
        }
        return Ok(if n > 0 {
            Pic::National(n)
        } else {
            Pic::Alnum(x)
        });
    }
    if vs > 1 {
        return Err(format!("picture {text:?} has more than one V"));
    }
    if nines == 0 {
        return Err(format!("picture {text:?} has no digits"));
    }
    if nines > MAX_PIC_DIGITS {
        return Err(format!(
            "picture {text:?} has {nines} digits; at most {MAX_PIC_DIGITS} are supported"
        ));
    }
    // Only 9, P and V are left. P runs sit at one end of the digits; V, if any, is on the
    // side of the P's away from the digits (or at the P's end of the picture).
    let syms: Vec<char> = runs.iter().map(|(c, _)| *c).collect();
    let digits_at: Vec<usize> = (0..syms.len()).filter(|&i| syms[i] == '9').collect();
    if digits_at.len() > 1
        && digits_at
            .windows(2)
            .any(|w| syms[w[0]..w[1]].contains(&'P'))
    {
        return Err(format!(
            "picture {text:?}: P (scaling) positions must be at the left or right end of the digits"
        ));
    }
    let (first9, last9) = (digits_at[0], digits_at[digits_at.len() - 1]);
    let p_left = syms[..first9].contains(&'P');
    let p_right = syms[last9..].contains(&'P');
    let v_at = syms.iter().position(|&c| c == 'V');
    let scale = match (p_left, p_right) {
        (true, true) => {
            return Err(format!(
                "picture {text:?}: P positions on both sides of the digits"
            ));
        }
        (true, false) => {
            let first_p = syms.iter().position(|&c| c == 'P').unwrap_or(0);
            if v_at.is_some_and(|v| v > first_p) {
                return Err(format!(
                    "picture {text:?}: with P on the left, V can only come before the P's"
                ));
            }
            (ps + nines) as i32
        }
        (false, true) => {
            let last_p = syms.iter().rposition(|&c| c == 'P').unwrap_or(0);
            if v_at.is_some_and(|v| v < last_p) {
                return Err(format!(
                    "picture {text:?}: with P on the right, V can only come after the P's"
                ));
            }
            -(ps as i32)
        }
        (false, false) => {
            let after_v: u32 = match v_at {
                Some(v) => runs[v..]
                    .iter()
                    .filter(|(c, _)| *c == '9')
                    .map(|(_, n)| *n)
                    .sum(),
                None => 0,
            };
            after_v as i32
        }
    };
    Ok(Pic::Num(NumPic {
        signed,
        digits: nines,
        scale,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Error,
    Truncate,
}

impl Overflow {
    pub fn parse(s: &str) -> Result<Overflow, String> {
        match s.trim() {
            "error" => Ok(Overflow::Error),
            "truncate" => Ok(Overflow::Truncate),
            other => Err(format!("overflow {other:?} is not `error` or `truncate`")),
        }
    }
}

/// What a field does with a control character (Unicode `Cc`: C0, DEL, C1 — line ends among
/// them) in its value, in fixed-width and CSV records (`control:`). JSON and SOAP bodies
/// escape them instead; `replace` applies there too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Control {
    /// The default: the event is refused (a value with a line end would forge a record).
    #[default]
    Refuse,
    /// `control:replace:" "`: each control character becomes this one.
    Replace(char),
    /// `control:allow`: the value goes into the record as it is.
    Allow,
}

impl Control {
    /// `allow`, `refuse` or `replace:C` (C one character, quoted or not, not itself a control
    /// character).
    pub fn parse(s: &str) -> Result<Control, String> {
        let t = s.trim();
        let bad = || {
            format!(
                "control {t:?} is not `allow`, `refuse` or `replace:C` (e.g. `control:replace:\" \"`)"
            )
        };
        match t {
            "allow" => return Ok(Control::Allow),
            "refuse" => return Ok(Control::Refuse),
            _ => {}
        }
        let Some(arg) = t.strip_prefix("replace:") else {
            return Err(bad());
        };
        let c = unquote(arg.trim()).unwrap_or_else(|| arg.trim().to_string());
        let mut cs = c.chars();
        match (cs.next(), cs.next()) {
            (Some(c), None) if !c.is_control() => Ok(Control::Replace(c)),
            (Some(c), None) => Err(format!(
                "control replace:U+{:04X} would put a control character in the record; replace with a printable character such as \" \"",
                u32::from(c)
            )),
            _ => Err(format!(
                "control replace:{c:?} must be one character, e.g. `control:replace:\" \"`"
            )),
        }
    }
}

/// One field definition as written, either form.
#[derive(Debug, Clone, Default)]
pub struct FieldDef {
    pub source: Option<Source>,
    pub width: Option<usize>,
    pub align: Option<Align>,
    pub pad: Option<char>,
    pub format: Option<String>,
    pub number: Option<(NumPic, SignMode)>,
    pub case: Option<Case>,
    pub trim: bool,
    pub default: Option<String>,
    pub map: Option<Vec<(String, String)>>,
    pub overflow: Option<Overflow>,
    /// `count`: the number of elements of the list at the source (an OCCURS DEPENDING ON
    /// count), instead of the value itself.
    pub count: bool,
    /// `control:`: what a control character in the value does (default: refuse the event).
    pub control: Option<Control>,
}

const MODIFIERS: &str = "width:N, align:left|right, pad:C, format:STRFTIME, number:9(7)V99, upper, lower, trim, default:V, map:{A: APPROVED}, overflow:truncate, count, control:allow|replace:\" \"";

impl FieldDef {
    /// Parses the short form `src | mod | mod:arg`. `|` inside quotes or braces does not split.
    pub fn parse_short(text: &str) -> Result<FieldDef, Vec<String>> {
        Self::parse_short_at(text).map_err(|errs| errs.into_iter().map(|(_, e)| e).collect())
    }

    /// As [`FieldDef::parse_short`], each problem with the character offset in `text` of
    /// the part it is about (so a diagnostic can point at the modifier itself).
    pub fn parse_short_at(text: &str) -> Result<FieldDef, Vec<(usize, String)>> {
        // `split_top_level` returns sub-slices of `text`: their offsets are pointer distances.
        let offset_of = |part: &str| {
            let start = part.as_ptr() as usize - text.as_ptr() as usize;
            let lead = part.len() - part.trim_start().len();
            text[..start + lead].chars().count()
        };
        let parts = split_top_level(text, '|');
        let mut def = FieldDef::default();
        let mut errs = Vec::new();
        match Source::parse(parts[0]) {
            Ok(s) => def.source = Some(s),
            Err(e) => errs.push((offset_of(parts[0]), e)),
        }
        for part in &parts[1..] {
            let m = part.trim();
            let (name, arg) = match m.split_once(':') {
                Some((n, a)) => (n.trim(), Some(a)),
                None => (m, None),
            };
            if let Err(e) = def.apply(name, arg) {
                errs.push((offset_of(part), e));
            }
        }
        if errs.is_empty() { Ok(def) } else { Err(errs) }
    }

    /// Reads the long form; the same checks as the short form.
    pub fn from_long(l: &LongField) -> Result<FieldDef, Vec<String>> {
        let mut def = FieldDef::default();
        let mut errs = Vec::new();
        let mut push = |r: Result<(), String>| {
            if let Err(e) = r {
                errs.push(e);
            }
        };
        match &l.from {
            Some(f) => push(Source::parse(f).map(|s| def.source = Some(s))),
            None => push(Err(
                "the long form needs `from:` (a payload path, a quoted constant or a $ source)"
                    .into(),
            )),
        }
        def.width = l.width;
        if l.width == Some(0) {
            push(Err("width must be at least 1".into()));
        }
        if let Some(a) = &l.align {
            push(def.apply("align", Some(a)));
        }
        if let Some(p) = &l.pad {
            // The long form's value is already unquoted by YAML: take it literally.
            push(def.apply("pad", Some(&format!("{p:?}"))));
        }
        if let Some(f) = &l.format {
            push(def.apply("format", Some(f)));
        }
        if let Some(n) = &l.number {
            push(def.apply("number", Some(n)));
        }
        match (l.upper, l.lower) {
            (Some(true), Some(true)) => push(Err("upper and lower cannot both apply".into())),
            (Some(true), _) => def.case = Some(Case::Upper),
            (_, Some(true)) => def.case = Some(Case::Lower),
            _ => {}
        }
        def.trim = l.trim.unwrap_or(false);
        def.default = l.default.clone();
        def.map = l.map.clone();
        if let Some(o) = &l.overflow {
            push(Overflow::parse(o).map(|o| def.overflow = Some(o)));
        }
        def.count = l.count.unwrap_or(false);
        if let Some(c) = &l.control {
            push(Control::parse(c).map(|c| def.control = Some(c)));
        }
        if errs.is_empty() { Ok(def) } else { Err(errs) }
    }

    fn apply(&mut self, name: &str, arg: Option<&str>) -> Result<(), String> {
        let need = |what: &str| -> Result<&str, String> {
            match arg {
                Some(a) if !a.trim().is_empty() || name == "pad" => Ok(a),
                _ => Err(format!("`{name}` needs a value: `{name}:{what}`")),
            }
        };
        let no_arg = || -> Result<(), String> {
            match arg {
                None => Ok(()),
                Some(_) => Err(format!("`{name}` takes no value; write just `{name}`")),
            }
        };
        match name {
            "width" => {
                let a = need("N")?.trim();
                match a.parse::<usize>() {
                    Ok(w) if w > 0 => self.width = Some(w),
                    _ => return Err(format!("width {a:?} is not a positive number")),
                }
            }
            "align" => {
                self.align = Some(match need("left")?.trim() {
                    "left" => Align::Left,
                    "right" => Align::Right,
                    other => return Err(format!("align {other:?} is not `left` or `right`")),
                })
            }
            "pad" => {
                let a = need("C")?;
                let a = unquote(a.trim()).unwrap_or_else(|| {
                    if a.trim().is_empty() {
                        a.to_string()
                    } else {
                        a.trim().to_string()
                    }
                });
                let mut cs = a.chars();
                match (cs.next(), cs.next()) {
                    (Some(c), None) => self.pad = Some(c),
                    _ => {
                        return Err(format!(
                            "pad {a:?} must be one character, e.g. `pad:0` or `pad:\" \"`"
                        ));
                    }
                }
            }
            "format" => {
                let f = need("%Y%m%d")?.trim();
                let f = unquote(f).unwrap_or_else(|| f.to_string());
                if chrono::format::StrftimeItems::new(&f).parse().is_err() {
                    return Err(format!(
                        "format {f:?} is not a valid strftime pattern (e.g. %Y%m%d%H%M%S)"
                    ));
                }
                self.format = Some(f);
            }
            "number" => {
                let p = need("9(7)V99")?;
                let (pic, sign) = parse_number_pic(p)?;
                self.number = Some((pic, sign));
            }
            "upper" | "lower" => {
                no_arg()?;
                let c = if name == "upper" {
                    Case::Upper
                } else {
                    Case::Lower
                };
                if self.case.is_some_and(|old| old != c) {
                    return Err("upper and lower cannot both apply".into());
                }
                self.case = Some(c);
            }
            "trim" => {
                no_arg()?;
                self.trim = true;
            }
            "count" => {
                no_arg()?;
                self.count = true;
            }
            "default" => {
                let a = arg.unwrap_or("").trim();
                self.default = Some(unquote(a).unwrap_or_else(|| a.to_string()));
            }
            "map" => self.map = Some(parse_inline_map(need("{A: APPROVED, R: REJECTED}")?)?),
            "overflow" => self.overflow = Some(Overflow::parse(need("truncate")?)?),
            "control" => self.control = Some(Control::parse(need("allow")?)?),
            "" => return Err("empty modifier (two `|` in a row?)".into()),
            other => {
                let hint = match other {
                    "len" | "length" | "size" => " (did you mean `width:N`?)",
                    "fmt" | "date" => " (did you mean `format:STRFTIME`?)",
                    "pic" | "picture" => " (did you mean `number:9(7)V99`?)",
                    "uppercase" => " (did you mean `upper`?)",
                    "lowercase" => " (did you mean `lower`?)",
                    _ => "",
                };
                return Err(format!(
                    "unknown modifier {other:?}{hint}; modifiers are {MODIFIERS}"
                ));
            }
        }
        Ok(())
    }
}

/// `S9(7)V99`, with an optional sign placement: `S9(5) leading`, `S9(5) separate`,
/// `S9(5) leading separate`.
fn parse_number_pic(text: &str) -> Result<(NumPic, SignMode), String> {
    let mut words = text.split_whitespace();
    let pic = words.next().unwrap_or("");
    let rest: Vec<String> = words.map(str::to_ascii_lowercase).collect();
    let pic = match parse_pic(pic)? {
        Pic::Num(n) => n,
        Pic::Alnum(_) | Pic::National(_) => {
            return Err(format!(
                "number:{pic} is not numeric; use `width:N` for text"
            ));
        }
    };
    let leading = rest.iter().any(|w| w == "leading");
    let separate = rest.iter().any(|w| w == "separate");
    if let Some(w) = rest
        .iter()
        .find(|w| !matches!(w.as_str(), "leading" | "trailing" | "separate"))
    {
        return Err(format!(
            "number:{text}: {w:?} is not `leading`, `trailing` or `separate`"
        ));
    }
    if !rest.is_empty() && !pic.signed {
        return Err(format!(
            "number:{text}: a sign placement needs a signed picture (S9...)"
        ));
    }
    let sign = match (leading, separate) {
        (false, false) => SignMode::TrailingOverpunch,
        (true, false) => SignMode::LeadingOverpunch,
        (true, true) => SignMode::LeadingSeparate,
        (false, true) => SignMode::TrailingSeparate,
    };
    Ok((pic, sign))
}

/// `{A: APPROVED, R: "REJECTED, FINAL"}`.
fn parse_inline_map(text: &str) -> Result<Vec<(String, String)>, String> {
    let t = text.trim();
    let Some(inner) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else {
        return Err(format!(
            "map {t:?} must be written in braces: `map:{{A: APPROVED, R: REJECTED}}`"
        ));
    };
    let mut out = Vec::new();
    for pair in split_top_level(inner, ',') {
        if pair.trim().is_empty() {
            continue;
        }
        let kv = split_top_level(pair, ':');
        if kv.len() != 2 {
            return Err(format!("map entry {:?} is not `key: value`", pair.trim()));
        }
        let f = |s: &str| unquote(s.trim()).unwrap_or_else(|| s.trim().to_string());
        out.push((f(kv[0]), f(kv[1])));
    }
    if out.is_empty() {
        return Err("map is empty".into());
    }
    Ok(out)
}

/// Splits on `sep` outside quotes and braces.
pub fn split_top_level(text: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut depth, mut quote) = (0, 0i32, None::<char>);
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q == '"' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '{' => depth += 1,
            '}' => depth -= 1,
            c if c == sep && depth == 0 => {
                out.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_constants_and_meta() {
        assert_eq!(
            Source::parse("items[0].code").unwrap(),
            Source::Path(vec![
                PathSeg::Key("items".into()),
                PathSeg::Index(0),
                PathSeg::Key("code".into())
            ])
        );
        assert_eq!(
            Source::parse("\"A|B\"").unwrap(),
            Source::Const("A|B".into())
        );
        assert_eq!(Source::parse("$trace_id").unwrap(), Source::TraceId);
        assert_eq!(
            Source::parse("$sum:AMOUNT").unwrap(),
            Source::Sum("AMOUNT".into())
        );
        assert!(Source::parse("$nope").is_err());
        assert!(Source::parse("a b").is_err());
        assert!(Source::parse("a[x]").is_err());
    }

    #[test]
    fn pictures() {
        assert_eq!(parse_pic("X(10)").unwrap(), Pic::Alnum(10));
        assert_eq!(
            parse_pic("S9(7)V99").unwrap(),
            Pic::Num(NumPic::new(true, 7, 2))
        );
        assert_eq!(
            parse_pic("999").unwrap(),
            Pic::Num(NumPic::new(false, 3, 0))
        );
        let scaled = |signed, digits, scale| {
            Pic::Num(NumPic {
                signed,
                digits,
                scale,
            })
        };
        assert_eq!(parse_pic("9(3)PPP").unwrap(), scaled(false, 3, -3));
        assert_eq!(parse_pic("999PPPV").unwrap(), scaled(false, 3, -3));
        assert_eq!(parse_pic("PPP9(3)").unwrap(), scaled(false, 3, 6));
        assert_eq!(parse_pic("SVPP99").unwrap(), scaled(true, 2, 4));
        assert!(parse_pic("9P9").unwrap_err().contains("end of the digits"));
        assert!(parse_pic("P99P").is_err());
        assert!(parse_pic("99VPP").is_err());
        assert_eq!(parse_pic("N(4)").unwrap(), Pic::National(4));
        assert!(parse_pic("XN").is_err());
        assert!(parse_pic("9(3").is_err());
        assert!(parse_pic("Z(5)9").unwrap_err().contains("edited"));
        assert!(parse_pic("9(40)").is_err());
        assert!(parse_pic("9(0)").is_err());
    }

    #[test]
    fn short_form_collects_every_problem() {
        let errs = FieldDef::parse_short("id | widht:3 | align:middle | pad:00").unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        let d = FieldDef::parse_short("status | map:{A: APPROVED, 'R': \"REJ, X\"} | width:10")
            .unwrap();
        assert_eq!(
            d.map.unwrap(),
            [
                ("A".into(), "APPROVED".into()),
                ("R".into(), "REJ, X".into())
            ]
        );
    }
}
