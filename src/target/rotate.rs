//! `rotate: 7d` — deletes a connector's own old output files from its folder.
//!
//! The connector's file template (`permit_{{date:%Y%m%d}}_{{seq}}.txt`) is compiled into a
//! [`NameMatcher`]: literal text must match exactly, `{{target}}` is the connector's name,
//! `{{seq}}` one or more digits, and each strftime field of a `{{date}}` a run of the
//! characters that field can produce (digits for `%Y`, letters for `%b`, ...). The batch
//! writer's temp files, `.<name>.ess-tmp`, match when `<name>` does.
//!
//! Invariant: only regular files (not directories, not symlinks) directly in `dir`, whose
//! whole name matches this connector's template (or its temp-file form), and whose mtime is
//! older than `max_age`, are ever deleted. Anything else in the folder is left alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::format::{Fixed, Item, Numeric, Pad, StrftimeItems};

/// Suffix of the file target's temp files: `.<name>.ess-tmp`.
pub const TEMP_SUFFIX: &str = ".ess-tmp";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// One or more characters of a class.
    Run(Class),
    /// Exactly this many characters of a class (zero-padded date fields).
    Exact(Class, usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// ASCII digits.
    Digits,
    /// Digits or spaces (space-padded numbers such as `%e`).
    PaddedDigits,
    /// ASCII letters.
    Letters,
    /// Digits, `+`, `-`, `:` (offsets).
    Offset,
    /// Digits and `.` (fractions).
    Fraction,
    /// Letters, digits and `+-:.,` and spaces (whole-date formats, zone names).
    Any,
}

impl Class {
    fn admits(self, c: char) -> bool {
        match self {
            Class::Digits => c.is_ascii_digit(),
            Class::PaddedDigits => c.is_ascii_digit() || c == ' ',
            Class::Letters => c.is_ascii_alphabetic(),
            Class::Offset => c.is_ascii_digit() || matches!(c, '+' | '-' | ':'),
            Class::Fraction => c.is_ascii_digit() || c == '.',
            Class::Any => {
                c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | ':' | '.' | ',' | ' ')
            }
        }
    }
}

/// Recognises the file names one connector's template produces.
#[derive(Debug, Clone)]
pub struct NameMatcher {
    tokens: Vec<Token>,
}

fn push_literal(tokens: &mut Vec<Token>, s: &str) {
    if s.is_empty() {
        return;
    }
    if let Some(Token::Literal(prev)) = tokens.last_mut() {
        prev.push_str(s);
    } else {
        tokens.push(Token::Literal(s.to_string()));
    }
}

fn push_date(tokens: &mut Vec<Token>, fmt: &str) -> Result<(), String> {
    for item in StrftimeItems::new(fmt) {
        let class = match item {
            Item::Literal(s) | Item::Space(s) => {
                push_literal(tokens, s);
                continue;
            }
            Item::OwnedLiteral(s) | Item::OwnedSpace(s) => {
                push_literal(tokens, &s);
                continue;
            }
            Item::Numeric(Numeric::Nanosecond, _) => Class::Fraction,
            Item::Numeric(n, pad @ (Pad::Zero | Pad::Space)) => {
                let class = if pad == Pad::Zero {
                    Class::Digits
                } else {
                    Class::PaddedDigits
                };
                match numeric_width(&n) {
                    Some(w) => tokens.push(Token::Exact(class, w)),
                    None => tokens.push(Token::Run(class)),
                }
                continue;
            }
            Item::Numeric(_, Pad::None) => Class::Digits,
            Item::Fixed(f) => match f {
                Fixed::ShortMonthName
                | Fixed::LongMonthName
                | Fixed::ShortWeekdayName
                | Fixed::LongWeekdayName
                | Fixed::LowerAmPm
                | Fixed::UpperAmPm => Class::Letters,
                Fixed::Nanosecond
                | Fixed::Nanosecond3
                | Fixed::Nanosecond6
                | Fixed::Nanosecond9 => Class::Fraction,
                Fixed::TimezoneOffset
                | Fixed::TimezoneOffsetColon
                | Fixed::TimezoneOffsetDoubleColon
                | Fixed::TimezoneOffsetTripleColon
                | Fixed::TimezoneOffsetColonZ
                | Fixed::TimezoneOffsetZ => Class::Offset,
                _ => Class::Any,
            },
            Item::Error => return Err(format!("bad date format {fmt:?}")),
        };
        tokens.push(Token::Run(class));
    }
    Ok(())
}

/// The width chrono pads a numeric date field to (years of four digits assumed).
fn numeric_width(n: &Numeric) -> Option<usize> {
    use Numeric::*;
    match n {
        Year | IsoYear => Some(4),
        YearDiv100 | YearMod100 | IsoYearDiv100 | IsoYearMod100 | Month | Day | WeekFromSun
        | WeekFromMon | IsoWeek | Hour | Hour12 | Minute | Second => Some(2),
        NumDaysFromSun | WeekdayFromMon => Some(1),
        Ordinal => Some(3),
        _ => None,
    }
}

impl NameMatcher {
    /// Compiles `template` (see [`crate::target::file_name`]) for `connector`.
    pub fn new(template: &str, connector: &str) -> Result<NameMatcher, String> {
        super::check_file_template(template)?;
        let mut tokens = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            push_literal(&mut tokens, &rest[..start]);
            let len = rest[start..]
                .find("}}")
                .ok_or_else(|| format!("unclosed {{{{ in {template:?}"))?;
            let inner = rest[start + 2..start + len].trim();
            match inner.split_once(':') {
                _ if inner == "date" => push_date(&mut tokens, "%Y-%m-%d")?,
                _ if inner == "target" => push_literal(&mut tokens, connector),
                _ if inner == "seq" => tokens.push(Token::Run(Class::Digits)),
                Some(("date", fmt)) => push_date(&mut tokens, fmt)?,
                _ => {
                    return Err(format!(
                        "unknown placeholder {{{{{inner}}}}} in {template:?}"
                    ));
                }
            }
            rest = &rest[start + len + 2..];
        }
        push_literal(&mut tokens, rest);
        Ok(NameMatcher { tokens })
    }

    /// Whether `name` is a name the template produces.
    pub fn matches(&self, name: &str) -> bool {
        let chars: Vec<char> = name.chars().collect();
        match_from(&self.tokens, &chars)
    }

    /// Whether `name` is one of this connector's output files or its temp form.
    pub fn matches_own(&self, name: &str) -> bool {
        if self.matches(name) {
            return true;
        }
        name.strip_prefix('.')
            .and_then(|n| n.strip_suffix(TEMP_SUFFIX))
            .is_some_and(|inner| self.matches(inner))
    }
}

/// Whether `tokens` match all of `s`. A set-of-positions walk (like a Thompson NFA)
/// rather than backtracking, so adjacent runs (`{{seq}}{{seq}}`) cannot make it
/// exponential: at most tokens x len x len steps, and file names are short.
fn match_from(tokens: &[Token], s: &[char]) -> bool {
    // reachable[p]: the tokens so far can consume exactly s[..p].
    let mut reachable = vec![false; s.len() + 1];
    reachable[0] = true;
    for token in tokens {
        let mut next = vec![false; s.len() + 1];
        for start in (0..=s.len()).filter(|&p| reachable[p]) {
            let rest = &s[start..];
            match token {
                Token::Literal(lit) => {
                    let lit: Vec<char> = lit.chars().collect();
                    if rest.starts_with(&lit) {
                        next[start + lit.len()] = true;
                    }
                }
                Token::Exact(class, n) => {
                    if rest.len() >= *n && rest[..*n].iter().all(|&c| class.admits(c)) {
                        next[start + n] = true;
                    }
                }
                Token::Run(class) => {
                    for (i, &c) in rest.iter().enumerate() {
                        if !class.admits(c) {
                            break;
                        }
                        next[start + i + 1] = true;
                    }
                }
            }
        }
        if !next.contains(&true) {
            return false;
        }
        reachable = next;
    }
    reachable[s.len()]
}

/// Deletes this connector's output files (and leftover temp files) in `dir` whose mtime is
/// older than `now - max_age`; returns the paths deleted, sorted. A file that vanishes
/// meanwhile is skipped; any other error stops and is returned (files already deleted stay
/// deleted, which is safe: the next run continues).
pub fn rotate(
    dir: &Path,
    file_template: &str,
    connector: &str,
    max_age: Duration,
    now: SystemTime,
) -> std::io::Result<Vec<PathBuf>> {
    let matcher = NameMatcher::new(file_template, connector)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let cutoff = now.checked_sub(max_age).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut deleted = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !matcher.matches_own(&name) {
            continue;
        }
        // DirEntry::metadata does not follow symlinks: a link is never a regular file here.
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !meta.file_type().is_file() || meta.modified()? >= cutoff {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => deleted.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    deleted.sort();
    Ok(deleted)
}
