//! Tables the parties compute on: a typed schema, CSV parsing, and the split of every column
//! into three parties' replicated shares.
//!
//! Column types (schema syntax `name:type,...`):
//! * `int` — signed integers, |v| < 2^31;
//! * `fixed(D)` — decimals with `D` digits after the point (0–6), stored as `v·10^D`;
//! * `cat(A|B|C)` — a category from a fixed list (or `cat` alone: the distinct values found,
//!   sorted), stored one-hot: one 0/1 column per category, so equality tests and group-by cost
//!   no communication.
//!
//! An empty CSV cell is NULL. A numeric column with NULLs gets a hidden 0/1 `col.valid` column;
//! aggregates skip NULLs and comparisons with NULL are false (as in SQL). What is public: the
//! schema, the category lists, the row count, and per numeric column its magnitude rounded up to
//! a byte (used to refuse variances that could overflow).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zerocopy::IntoBytes;

use crate::error::{MpcError, Result};
use crate::ring::Z64;
use crate::shares::{deal, Shares};

/// Largest magnitude of a stored numeric value (after fixed-point scaling).
pub const MAX_ABS: i64 = (1 << 31) - 1;

/// Type of a column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Signed integer.
    Int,
    /// Fixed-point with this many decimals.
    Fixed(u32),
    /// Category from this list.
    Cat(Vec<String>),
}

/// A column's public description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// Whether any value is NULL (then `name.valid` is stored).
    pub nullable: bool,
    /// Bits of magnitude, rounded up to a multiple of 8 (numeric columns).
    pub bits: u32,
}

impl Column {
    /// Decimal scale (10^decimals).
    pub fn scale(&self) -> i64 {
        match self.ty {
            ColumnType::Fixed(d) => 10i64.pow(d),
            _ => 1,
        }
    }

    /// Whether the column is numeric.
    pub fn numeric(&self) -> bool {
        !matches!(self.ty, ColumnType::Cat(_))
    }
}

/// A table's public description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// Columns in order.
    pub columns: Vec<Column>,
    /// Number of rows.
    pub rows: u64,
}

impl Schema {
    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Names of the stored columns, sorted: what [`encode_csv`] stores and every
    /// [`TableShare`] holds (a refresh deals a zero-sharing of each).
    pub fn stored_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.columns {
            match &c.ty {
                ColumnType::Cat(cats) => out.extend(cats.iter().map(|k| onehot_name(&c.name, k))),
                ColumnType::Int | ColumnType::Fixed(_) => {
                    out.push(c.name.clone());
                    if c.nullable {
                        out.push(valid_name(&c.name));
                    }
                }
            }
        }
        out.sort();
        out
    }
}

/// Name of the stored one-hot column of category `cat` of `col`.
pub fn onehot_name(col: &str, cat: &str) -> String {
    format!("{col}={cat}")
}

/// Name of the stored validity column of `col`.
pub fn valid_name(col: &str) -> String {
    format!("{col}.valid")
}

fn valid_ident(s: &str) -> bool {
    let mut ch = s.chars();
    matches!(ch.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && ch.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A schema spec as given on the command line, before the data is seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaSpec {
    /// (name, type; `Cat(empty)` means "categories from the data").
    pub columns: Vec<(String, ColumnType)>,
}

/// Parses `name:type,name:type,...` (see the module docs).
pub fn parse_schema(spec: &str) -> Result<SchemaSpec> {
    let bad = |m: String| MpcError::Invalid(format!("schema: {m}"));
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in spec.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&spec[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&spec[start..]);
    let mut columns: Vec<(String, ColumnType)> = Vec::new();
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (name, ty) = p
            .split_once(':')
            .ok_or_else(|| bad(format!("{p:?}: expected name:type")))?;
        let (name, ty) = (name.trim(), ty.trim());
        if !valid_ident(name) {
            return Err(bad(format!("{name:?} is not a valid column name")));
        }
        if columns.iter().any(|(n, _)| n == name) {
            return Err(bad(format!("column {name} given twice")));
        }
        let t = if ty == "int" {
            ColumnType::Int
        } else if let Some(d) = ty.strip_prefix("fixed(").and_then(|r| r.strip_suffix(')')) {
            let d: u32 = d
                .trim()
                .parse()
                .map_err(|_| bad(format!("{ty:?}: fixed(D) takes a number of decimals")))?;
            if d > 6 {
                return Err(bad(format!("{ty:?}: at most 6 decimals")));
            }
            ColumnType::Fixed(d)
        } else if ty == "cat" {
            ColumnType::Cat(Vec::new())
        } else if let Some(l) = ty.strip_prefix("cat(").and_then(|r| r.strip_suffix(')')) {
            let cats: Vec<String> = l
                .split(['|', ','])
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if cats.is_empty() {
                return Err(bad(format!("{ty:?}: empty category list")));
            }
            let mut sorted = cats.clone();
            sorted.sort();
            sorted.dedup();
            if sorted.len() != cats.len() {
                return Err(bad(format!("{ty:?}: a category is listed twice")));
            }
            ColumnType::Cat(cats)
        } else {
            return Err(bad(format!(
                "{name}: unknown type {ty:?} (int, fixed(D), cat or cat(A|B|...))"
            )));
        };
        columns.push((name.to_string(), t));
    }
    if columns.is_empty() {
        return Err(bad("no columns".into()));
    }
    Ok(SchemaSpec { columns })
}

/// Splits one CSV line (commas; double quotes around a field may contain commas; `""` is a
/// quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_string()).collect()
}

fn parse_fixed(s: &str, d: u32) -> Option<i64> {
    let v: f64 = s.parse().ok()?;
    if !v.is_finite() {
        return None;
    }
    let scaled = (v * 10f64.powi(d as i32)).round();
    (scaled.abs() <= MAX_ABS as f64).then_some(scaled as i64)
}

/// A table in the clear, column-encoded: what the owner shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedTable {
    /// Public description.
    pub schema: Schema,
    /// Stored columns (numeric values as two's complement words; one-hot and validity 0/1).
    pub stored: BTreeMap<String, Vec<u64>>,
}

/// Parses CSV text (a header row, then one row per line) against `spec`.
pub fn encode_csv(text: &str, spec: &SchemaSpec) -> Result<EncodedTable> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines
        .next()
        .ok_or_else(|| MpcError::Invalid("CSV: empty file".into()))?;
    let header = csv_fields(header.trim_start_matches('\u{feff}'));
    let mut idx = Vec::new();
    for (name, _) in &spec.columns {
        let i = header.iter().position(|h| h == name).ok_or_else(|| {
            MpcError::Invalid(format!(
                "CSV: column {name} of the schema is not in the header ({})",
                header.join(",")
            ))
        })?;
        idx.push(i);
    }
    let mut raw: Vec<Vec<Option<String>>> = vec![Vec::new(); spec.columns.len()];
    let mut rows = 0u64;
    for (ln, line) in lines {
        let f = csv_fields(line);
        if f.len() != header.len() {
            return Err(MpcError::Invalid(format!(
                "CSV line {}: {} fields, the header has {}",
                ln + 1,
                f.len(),
                header.len()
            )));
        }
        for (c, &i) in idx.iter().enumerate() {
            let v = &f[i];
            raw[c].push(if v.is_empty() { None } else { Some(v.clone()) });
        }
        rows += 1;
    }
    let mut columns = Vec::new();
    let mut stored = BTreeMap::new();
    for ((name, ty), vals) in spec.columns.iter().zip(raw) {
        let nullable = vals.iter().any(Option::is_none);
        match ty {
            ColumnType::Int | ColumnType::Fixed(_) => {
                let d = if let ColumnType::Fixed(d) = ty { *d } else { 0 };
                let mut words = Vec::with_capacity(vals.len());
                let mut max = 0i64;
                for (r, v) in vals.iter().enumerate() {
                    let x = match v {
                        None => 0,
                        Some(s) => {
                            let x = if d == 0 {
                                s.parse::<i64>().ok().filter(|x| x.abs() <= MAX_ABS)
                            } else {
                                parse_fixed(s, d)
                            };
                            x.ok_or_else(|| {
                                MpcError::Invalid(format!(
                                    "CSV row {}: column {name}: {s:?} is not a {} within ±{MAX_ABS}",
                                    r + 1,
                                    if d == 0 { "whole number" } else { "number" }
                                ))
                            })?
                        }
                    };
                    max = max.max(x.abs());
                    words.push(x as u64);
                }
                let bits = (64 - (max as u64).leading_zeros()).div_ceil(8) * 8;
                if nullable {
                    stored.insert(
                        valid_name(name),
                        vals.iter().map(|v| v.is_some() as u64).collect(),
                    );
                }
                stored.insert(name.clone(), words);
                columns.push(Column {
                    name: name.clone(),
                    ty: ty.clone(),
                    nullable,
                    bits,
                });
            }
            ColumnType::Cat(list) => {
                let cats = if list.is_empty() {
                    let mut c: Vec<String> = vals.iter().flatten().cloned().collect();
                    c.sort();
                    c.dedup();
                    c
                } else {
                    list.clone()
                };
                if cats.len() > 64 {
                    return Err(MpcError::Invalid(format!(
                        "column {name}: {} categories, at most 64",
                        cats.len()
                    )));
                }
                for (r, v) in vals.iter().enumerate() {
                    if let Some(s) = v {
                        if !cats.contains(s) {
                            return Err(MpcError::Invalid(format!(
                                "CSV row {}: column {name}: {s:?} is not one of {}",
                                r + 1,
                                cats.join("|")
                            )));
                        }
                    }
                }
                for c in &cats {
                    stored.insert(
                        onehot_name(name, c),
                        vals.iter()
                            .map(|v| (v.as_deref() == Some(c.as_str())) as u64)
                            .collect(),
                    );
                }
                columns.push(Column {
                    name: name.clone(),
                    ty: ColumnType::Cat(cats),
                    nullable,
                    bits: 0,
                });
            }
        }
    }
    Ok(EncodedTable {
        schema: Schema { columns, rows },
        stored,
    })
}

/// One party's shares of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableShare {
    /// Party index (0, 1, 2).
    pub party: u8,
    /// Rows.
    pub rows: u64,
    /// Stored column → this party's two shares.
    pub columns: BTreeMap<String, Shares<Z64>>,
}

const MAGIC: &[u8; 4] = b"KGT1";

#[derive(Serialize, Deserialize)]
struct Header {
    party: u8,
    rows: u64,
    names: Vec<String>,
}

impl TableShare {
    /// Serialises (header JSON, then each column's two share vectors as little-endian words).
    pub fn to_bytes(&self) -> Vec<u8> {
        let h = Header {
            party: self.party,
            rows: self.rows,
            names: self.columns.keys().cloned().collect(),
        };
        let hj = serde_json::to_vec(&h).unwrap_or_default();
        let mut out =
            Vec::with_capacity(8 + hj.len() + self.columns.len() * 16 * self.rows as usize);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(hj.len() as u32).to_le_bytes());
        out.extend_from_slice(&hj);
        for s in self.columns.values() {
            out.extend_from_slice(s.a.as_bytes());
            out.extend_from_slice(s.b.as_bytes());
        }
        out
    }

    /// Parses what [`TableShare::to_bytes`] wrote.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let bad = |m: &str| MpcError::Invalid(format!("table share: {m}"));
        if b.len() < 8 || &b[..4] != MAGIC {
            return Err(bad("not a table share"));
        }
        let hl = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
        let body = b.get(8 + hl..).ok_or_else(|| bad("truncated header"))?;
        let h: Header =
            serde_json::from_slice(&b[8..8 + hl]).map_err(|e| bad(&format!("header: {e}")))?;
        let rows = usize::try_from(h.rows).map_err(|_| bad("rows"))?;
        let need = h
            .names
            .len()
            .checked_mul(rows)
            .and_then(|x| x.checked_mul(16))
            .ok_or_else(|| bad("size"))?;
        if body.len() != need || h.party > 2 {
            return Err(bad("length does not match the header"));
        }
        let words: Vec<u64> = body
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let mut columns = BTreeMap::new();
        for (k, name) in h.names.into_iter().enumerate() {
            let at = 2 * k * rows;
            columns.insert(
                name,
                Shares::from_parts(
                    words[at..at + rows].to_vec(),
                    words[at + rows..at + 2 * rows].to_vec(),
                ),
            );
        }
        Ok(Self {
            party: h.party,
            rows: h.rows,
            columns,
        })
    }

    /// Adds a replicated sharing of zero (party's pair from [`zero_sharing`]): the refresh.
    pub fn refresh(&mut self, zero: &TableShare) -> Result<()> {
        if zero.party != self.party || zero.rows != self.rows {
            return Err(MpcError::Invalid("refresh for another share".into()));
        }
        for (name, s) in self.columns.iter_mut() {
            let z = zero
                .columns
                .get(name)
                .ok_or_else(|| MpcError::Invalid(format!("refresh lacks column {name}")))?;
            *s = s.add(z);
        }
        Ok(())
    }
}

/// Splits an encoded table into the three parties' shares.
pub fn share_table(t: &EncodedTable, rand: &mut impl FnMut() -> u64) -> [TableShare; 3] {
    let mut out: [TableShare; 3] = std::array::from_fn(|i| TableShare {
        party: i as u8,
        rows: t.schema.rows,
        columns: BTreeMap::new(),
    });
    for (name, vals) in &t.stored {
        let parts = deal::<Z64>(vals, rand);
        for (i, p) in parts.into_iter().enumerate() {
            out[i].columns.insert(name.clone(), p);
        }
    }
    out
}

/// Three parties' shares of an all-zero table with `t`'s stored columns (for a refresh).
pub fn zero_sharing(
    names: &[String],
    rows: u64,
    rand: &mut impl FnMut() -> u64,
) -> [TableShare; 3] {
    let zeros = vec![0u64; rows as usize];
    let mut out: [TableShare; 3] = std::array::from_fn(|i| TableShare {
        party: i as u8,
        rows,
        columns: BTreeMap::new(),
    });
    for name in names {
        let parts = deal::<Z64>(&zeros, rand);
        for (i, p) in parts.into_iter().enumerate() {
            out[i].columns.insert(name.clone(), p);
        }
    }
    out
}

/// A uniformly random word source from the OS, for dealing shares.
pub fn os_words() -> impl FnMut() -> u64 {
    let mut buf = vec![0u64; 4096];
    let mut at = buf.len();
    move || {
        if at == buf.len() {
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, buf.as_mut_bytes());
            at = 0;
        }
        at += 1;
        buf[at - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shares::reconstruct;

    #[test]
    fn schema_csv_shares_and_errors() {
        let spec = parse_schema("age:int, hba1c:fixed(1), dx:cat(E11|I10), sex:cat").unwrap();
        let csv = "id,age,sex,dx,hba1c\n1,70,F,E11,7.25\n2,45,M,I10,\n3,-3,F,,5.0\n";
        let t = encode_csv(csv, &spec).unwrap();
        assert_eq!(t.schema.rows, 3);
        assert_eq!(t.stored["age"], vec![70, 45, (-3i64) as u64]);
        assert_eq!(t.stored["hba1c"], vec![73, 0, 50]);
        assert_eq!(t.stored["hba1c.valid"], vec![1, 0, 1]);
        assert_eq!(t.stored["dx=E11"], vec![1, 0, 0]);
        assert_eq!(t.stored["sex=M"], vec![0, 1, 0]);
        let c = t.schema.column("sex").unwrap();
        assert_eq!(c.ty, ColumnType::Cat(vec!["F".into(), "M".into()]));
        assert_eq!(
            t.schema.stored_names(),
            t.stored.keys().cloned().collect::<Vec<_>>()
        );
        let shares = share_table(&t, &mut os_words());
        let back = TableShare::from_bytes(&shares[1].to_bytes()).unwrap();
        assert_eq!(back, shares[1]);
        let parts = [
            shares[0].columns["age"].clone(),
            shares[1].columns["age"].clone(),
            shares[2].columns["age"].clone(),
        ];
        assert_eq!(reconstruct(&parts).unwrap(), t.stored["age"]);
        assert_ne!(shares[0].columns["age"].a, t.stored["age"]);
        // Refresh changes every share and keeps the values.
        let names: Vec<String> = t.stored.keys().cloned().collect();
        let z = zero_sharing(&names, 3, &mut os_words());
        let mut fresh = shares.clone();
        for i in 0..3 {
            fresh[i].refresh(&z[i]).unwrap();
        }
        assert_ne!(fresh[0].columns["age"], shares[0].columns["age"]);
        let parts = [
            fresh[0].columns["age"].clone(),
            fresh[1].columns["age"].clone(),
            fresh[2].columns["age"].clone(),
        ];
        assert_eq!(reconstruct(&parts).unwrap(), t.stored["age"]);

        for (bad_spec, why) in [
            ("age", "name:type"),
            ("age:float", "unknown type"),
            ("1x:int", "valid column name"),
            ("a:int,a:int", "twice"),
            ("a:fixed(9)", "6 decimals"),
            ("a:cat(X|X)", "twice"),
        ] {
            let e = parse_schema(bad_spec).unwrap_err().to_string();
            assert!(e.contains(why), "{bad_spec}: {e}");
        }
        let e = encode_csv("age\nx\n", &parse_schema("age:int").unwrap()).unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
        let e = encode_csv("a\n1\n", &parse_schema("age:int").unwrap()).unwrap_err();
        assert!(e.to_string().contains("not in the header"), "{e}");
        let e = encode_csv("dx\nZ99\n", &parse_schema("dx:cat(E11)").unwrap()).unwrap_err();
        assert!(e.to_string().contains("not one of"), "{e}");
        assert!(TableShare::from_bytes(&shares[0].to_bytes()[..20]).is_err());
    }
}
