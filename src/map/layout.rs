//! The record plan: how a map's fields make one record and come back out of one. A plain
//! map's plan is its fields in order; a copybook's is its tree: REDEFINES alternatives (one
//! chosen per record, by a `layout_when` rule or by which alternative the map names),
//! variable-length tables (as many elements as their count field says), SYNC slack bytes.
//!
//! Invariant: encode and decode walk the same plan in the same order, so a record decodes
//! into exactly the fields it was encoded from; a decoded record is never longer or shorter
//! than its layout says (a short record is an error naming the field it cuts).

use super::copybook::Node;
use super::decimal::Decimal;
use super::encoding::Encoding;
use super::field::{BadBytes, Field, Kind};

/// The compiled layout of one record.
#[derive(Debug, Clone)]
pub struct Plan {
    pub nodes: Vec<Node>,
    pub sets: Vec<PlanSet>,
    pub tables: Vec<PlanTable>,
    /// Bytes of the longest record.
    pub len: usize,
    /// Bytes of the shortest record.
    pub min_len: usize,
}

/// A REDEFINES set and how a record picks its alternative.
#[derive(Debug, Clone)]
pub struct PlanSet {
    pub alts: Vec<PlanAlt>,
    pub width: usize,
    /// Alternatives are whole 01 records (a record is as long as its own layout).
    pub records: bool,
    /// `Some(a)`: always alternative `a` (the map names no other); `None`: the rules decide.
    pub fixed: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct PlanAlt {
    pub name: String,
    pub nodes: Vec<Node>,
    pub len: usize,
    /// The `layout_when` rule (all tests must hold).
    pub rule: Vec<Test>,
}

/// One test of a rule: field `field` holds one of `values`.
#[derive(Debug, Clone)]
pub struct Test {
    pub field: usize,
    /// Where the field sits in every record that can hold it (checked by the compiler).
    pub offset: usize,
    pub values: Vec<Match>,
}

#[derive(Debug, Clone)]
pub enum Match {
    /// The field's bytes are exactly these (a value laid out like the field).
    Bytes(Vec<u8>),
    /// The field's number is in this range (a level-88 `THRU`).
    Range(Decimal, Decimal),
}

/// `OCCURS min TO max DEPENDING ON object`.
#[derive(Debug, Clone)]
pub struct PlanTable {
    pub name: String,
    pub object: usize,
    pub min: usize,
    pub max: usize,
    pub elems: Vec<Vec<Node>>,
}

/// A record that does not fit its layout: which field, where in the record, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    /// The field (or table / REDEFINES set) it is about.
    pub field: String,
    pub offset: usize,
    pub message: String,
}

/// Where the decoded values of a record go, field by field in record order.
pub trait Sink {
    /// Field `i` holds `bytes` (exactly its width).
    fn field(&mut self, i: usize, f: &Field, bytes: &[u8], enc: Encoding) -> Result<(), BadBytes>;
}

/// The path one record took through its plan.
#[derive(Debug, Default, Clone)]
pub struct Walk {
    /// Where each field the record holds starts in it.
    pub offsets: Vec<Option<u32>>,
    /// The alternatives the record took, as (set, alternative).
    pub chosen: Vec<(usize, usize)>,
}

/// The decoded values of one record: per field, its text in `text` (absent fields: `None`).
#[derive(Debug, Default, Clone)]
pub struct Slots {
    pub text: String,
    pub spans: Vec<Option<(u32, u32)>>,
}

impl Slots {
    pub fn get(&self, field: usize) -> Option<&str> {
        let (a, b) = self.spans.get(field).copied().flatten()?;
        self.text.get(a as usize..b as usize)
    }

    pub fn clear(&mut self, n_fields: usize) {
        self.text.clear();
        self.spans.clear();
        self.spans.resize(n_fields, None);
    }
}

impl Sink for Slots {
    fn field(&mut self, i: usize, f: &Field, bytes: &[u8], enc: Encoding) -> Result<(), BadBytes> {
        let a = self.text.len();
        f.kind.decode(bytes, enc, &mut self.text)?;
        // Records are far shorter than 4 GiB of text.
        self.spans[i] = Some((a as u32, self.text.len() as u32));
        Ok(())
    }
}

impl Plan {
    /// A plain map: every field once, in order.
    pub fn flat(fields: &[Field]) -> Plan {
        let len = fields.iter().map(|f| f.kind.width().unwrap_or(0)).sum();
        Plan {
            nodes: (0..fields.len()).map(Node::Field).collect(),
            sets: Vec::new(),
            tables: Vec::new(),
            len,
            min_len: len,
        }
    }

    /// Whether every record has the same length.
    pub fn is_fixed_len(&self) -> bool {
        self.len == self.min_len
    }

    /// The name a record's type goes by: the 01 record it is, else the first alternative a
    /// rule chose.
    pub fn record_type(&self, chosen: &[(usize, usize)]) -> Option<&str> {
        let pick = chosen
            .iter()
            .find(|(s, _)| self.sets[*s].records)
            .or_else(|| chosen.iter().find(|(s, _)| self.sets[*s].fixed.is_none()))?;
        Some(&self.sets[pick.0].alts[pick.1].name)
    }

    /// Writes one record (without framing): `render(i, out)` writes field `i`.
    pub fn encode<E, R>(
        &self,
        fields: &[Field],
        enc: Encoding,
        out: &mut Vec<u8>,
        render: &mut R,
        misfit: &dyn Fn(Misfit) -> E,
    ) -> Result<(), E>
    where
        R: FnMut(usize, &mut Vec<u8>) -> Result<(), E>,
    {
        self.encode_nodes(&self.nodes, fields, enc, out, render, misfit)
    }

    fn encode_nodes<E, R>(
        &self,
        nodes: &[Node],
        fields: &[Field],
        enc: Encoding,
        out: &mut Vec<u8>,
        render: &mut R,
        misfit: &dyn Fn(Misfit) -> E,
    ) -> Result<(), E>
    where
        R: FnMut(usize, &mut Vec<u8>) -> Result<(), E>,
    {
        for node in nodes {
            match node {
                Node::Field(i) => render(*i, out)?,
                Node::Slack(n) => out.resize(out.len() + n, enc.space()),
                Node::Choice(s) => {
                    let set = &self.sets[*s];
                    let start = out.len();
                    let a = match set.fixed {
                        Some(a) => a,
                        None => {
                            let mut scratch = Vec::new();
                            let mut pick = None;
                            'alts: for (a, alt) in set.alts.iter().enumerate() {
                                if alt.rule.is_empty() {
                                    continue;
                                }
                                for t in &alt.rule {
                                    scratch.clear();
                                    // A field that cannot be made for this event does not match.
                                    if render(t.field, &mut scratch).is_err()
                                        || !t.holds(&scratch, &fields[t.field].kind, enc)
                                    {
                                        continue 'alts;
                                    }
                                }
                                pick = Some(a);
                                break;
                            }
                            pick.ok_or_else(|| misfit(self.no_rule(set, fields, start)))?
                        }
                    };
                    self.encode_nodes(&set.alts[a].nodes, fields, enc, out, render, misfit)?;
                    if !set.records {
                        let end = start + set.width;
                        if out.len() < end {
                            out.resize(end, enc.space());
                        }
                    }
                }
                Node::Table(t) => {
                    let table = &self.tables[*t];
                    let mut scratch = Vec::new();
                    render(table.object, &mut scratch)?;
                    let n =
                        count_of(&fields[table.object].kind, &scratch, enc).ok_or_else(|| {
                            misfit(Misfit {
                                field: fields[table.object].name.clone(),
                                offset: out.len(),
                                message: format!(
                                    "the count of table {} is not a whole number",
                                    table.name
                                ),
                            })
                        })?;
                    if n < table.min || n > table.max {
                        return Err(misfit(Misfit {
                            field: fields[table.object].name.clone(),
                            offset: out.len(),
                            message: format!(
                                "the count of table {} is outside OCCURS {} TO {}",
                                table.name, table.min, table.max
                            ),
                        }));
                    }
                    for el in &table.elems[..n] {
                        self.encode_nodes(el, fields, enc, out, render, misfit)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn no_rule(&self, set: &PlanSet, fields: &[Field], offset: usize) -> Misfit {
        let mut tested: Vec<&str> = Vec::new();
        for t in set.alts.iter().flat_map(|a| &a.rule) {
            let name = fields[t.field].name.as_str();
            if !tested.contains(&name) {
                tested.push(name);
            }
        }
        let names: Vec<&str> = set.alts.iter().map(|a| a.name.as_str()).collect();
        Misfit {
            field: tested.join(", "),
            offset,
            message: format!(
                "no layout_when rule matches: the record is none of {}",
                names.join(", ")
            ),
        }
    }

    /// Reads one record (without framing), giving each field it holds to `sink`. With
    /// `exact`, bytes left over after the layout are an error (variable-length framing);
    /// fixed-length records may be padded.
    pub fn decode(
        &self,
        fields: &[Field],
        enc: Encoding,
        rec: &[u8],
        exact: bool,
        walk: &mut Walk,
        sink: &mut dyn Sink,
    ) -> Result<(), Misfit> {
        walk.offsets.clear();
        walk.offsets.resize(fields.len(), None);
        walk.chosen.clear();
        let mut pos = 0;
        let mut r = Reader {
            plan: self,
            fields,
            enc,
            rec,
            walk,
            sink,
        };
        r.nodes(&self.nodes, &mut pos)?;
        if exact && pos < rec.len() {
            return Err(Misfit {
                field: "(record)".into(),
                offset: pos,
                message: format!(
                    "the record is {} bytes; its layout ends after {pos}",
                    rec.len()
                ),
            });
        }
        Ok(())
    }
}

/// One record being read.
struct Reader<'a> {
    plan: &'a Plan,
    fields: &'a [Field],
    enc: Encoding,
    rec: &'a [u8],
    walk: &'a mut Walk,
    sink: &'a mut dyn Sink,
}

impl Reader<'_> {
    fn nodes(&mut self, nodes: &[Node], pos: &mut usize) -> Result<(), Misfit> {
        let (fields, enc, rec) = (self.fields, self.enc, self.rec);
        for node in nodes {
            match node {
                Node::Field(i) => {
                    let f = &fields[*i];
                    let w = f.kind.width().unwrap_or(0);
                    let Some(bytes) = rec.get(*pos..*pos + w) else {
                        return Err(Misfit {
                            field: f.name.clone(),
                            offset: *pos,
                            message: format!(
                                "the record ends after {} bytes; {} needs bytes {} to {}",
                                rec.len(),
                                f.name,
                                *pos + 1,
                                *pos + w
                            ),
                        });
                    };
                    // Records are far shorter than 4 GiB.
                    self.walk.offsets[*i] = Some(*pos as u32);
                    if f.fill.is_none() {
                        self.sink.field(*i, f, bytes, enc).map_err(|b| Misfit {
                            field: f.name.clone(),
                            offset: *pos + b.at,
                            message: b.message,
                        })?;
                    }
                    *pos += w;
                }
                Node::Slack(n) => *pos += n,
                Node::Choice(s) => {
                    let set = &self.plan.sets[*s];
                    let start = *pos;
                    let a = match set.fixed {
                        Some(a) => a,
                        None => set
                            .alts
                            .iter()
                            .position(|alt| {
                                !alt.rule.is_empty()
                                    && alt.rule.iter().all(|t| {
                                        let w = fields[t.field].kind.width().unwrap_or(0);
                                        rec.get(t.offset..t.offset + w)
                                            .is_some_and(|b| t.holds(b, &fields[t.field].kind, enc))
                                    })
                            })
                            .ok_or_else(|| self.plan.no_rule(set, fields, start))?,
                    };
                    self.walk.chosen.push((*s, a));
                    self.nodes(&set.alts[a].nodes, pos)?;
                    if !set.records {
                        *pos = start + set.width;
                    }
                }
                Node::Table(t) => {
                    let table = &self.plan.tables[*t];
                    let obj = &fields[table.object];
                    let n = self.walk.offsets[table.object]
                        .and_then(|at| {
                            let w = obj.kind.width().unwrap_or(0);
                            rec.get(at as usize..at as usize + w)
                        })
                        .and_then(|b| count_of(&obj.kind, b, enc))
                        .filter(|n| (table.min..=table.max).contains(n))
                        .ok_or_else(|| Misfit {
                            field: obj.name.clone(),
                            offset: *pos,
                            message: format!(
                                "the count of table {} is outside OCCURS {} TO {}",
                                table.name, table.min, table.max
                            ),
                        })?;
                    for el in &table.elems[..n] {
                        self.nodes(el, pos)?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Test {
    /// Whether the field's `bytes` hold one of the test's values.
    fn holds(&self, bytes: &[u8], kind: &Kind, enc: Encoding) -> bool {
        let mut number = None;
        self.values.iter().any(|m| match m {
            Match::Bytes(b) => b == bytes,
            Match::Range(lo, hi) => {
                let n = number.get_or_insert_with(|| {
                    let mut s = String::new();
                    kind.decode(bytes, enc, &mut s).ok()?;
                    Decimal::parse(&s).ok()
                });
                n.is_some_and(|n| cmp(*lo, n).is_le() && cmp(n, *hi).is_le())
            }
        })
    }
}

/// Orders two decimals (both within 38 digits).
pub fn cmp(a: Decimal, b: Decimal) -> std::cmp::Ordering {
    let s = a.scale.max(b.scale);
    let up = |d: Decimal| {
        10i128
            .checked_pow(s - d.scale)
            .and_then(|p| d.mantissa.checked_mul(p))
    };
    match (up(a), up(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        // Past 38 digits only the integer parts can differ enough to matter.
        _ => (a.mantissa / 10i128.pow(a.scale)).cmp(&(b.mantissa / 10i128.pow(b.scale))),
    }
}

/// The whole number a count field's bytes hold.
fn count_of(kind: &Kind, bytes: &[u8], enc: Encoding) -> Option<usize> {
    let mut s = String::new();
    kind.decode(bytes, enc, &mut s).ok()?;
    s.parse().ok()
}
