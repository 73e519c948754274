//! Queries on shared tables: parsing, checking against the schema, running at each party, and
//! decoding the result for the owner.
//!
//! ```text
//! query   := aggs [WHERE pred] [GROUP BY column]
//! aggs    := agg (',' agg)*  |  HISTOGRAM '(' column ',' lo ',' hi ',' bins ')'
//! agg     := COUNT ['(' ('*' | column) ')'] | (SUM | MEAN | AVG | VAR | VARIANCE | STDDEV) '(' column ')'
//! pred    := conj (OR conj)* ;  conj := atom (AND atom)* ;  atom := NOT atom | '(' pred ')' | test
//! test    := column (< | <= | > | >= | = | != | <>) literal  |  column [NOT] IN '(' literal, ... ')'
//! ```
//! Numeric columns compare with numbers; categorical columns test (in)equality with a category
//! (quoted or bare). Everything is checked against the schema before any party runs, so a
//! malformed query spends no key.
//!
//! **Only aggregates leave the computation**, and each only if it covers at least `min_group`
//! rows: the parties compare every group's row count with `min_group` *inside* the computation
//! and multiply each result by that bit, so a too-small group yields zeros and a "suppressed"
//! flag — the sites never learn counts, and the owner learns nothing about small groups. A query
//! without GROUP BY (or HISTOGRAM) whose only group is too small is refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::circuits::{b2a, msb};
use crate::error::{MpcError, Result};
use crate::party::Party;
use crate::ring::Z64;
use crate::shares::Shares;
use crate::table::{onehot_name, valid_name, Column, ColumnType, Schema, TableShare};
use crate::transport::Transport;

/// Default minimum number of rows behind any released aggregate.
pub const DEFAULT_MIN_GROUP: u64 = 10;

/// An aggregate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Agg {
    /// Rows matching.
    Count,
    /// Non-NULL values of a column among the rows matching.
    CountCol(String),
    /// Sum.
    Sum(String),
    /// Mean.
    Mean(String),
    /// Sample variance.
    Var(String),
    /// Sample standard deviation.
    Std(String),
    /// Counts of `col` in `bins` equal bins over `[lo, hi)`.
    Histogram {
        /// Column.
        col: String,
        /// Lower edge.
        lo: f64,
        /// Upper edge.
        hi: f64,
        /// Number of bins.
        bins: u32,
    },
}

impl Agg {
    /// Its label in results (`count`, `mean(hba1c)`, …).
    pub fn label(&self) -> String {
        match self {
            Agg::Count => "count".into(),
            Agg::CountCol(c) => format!("count({c})"),
            Agg::Sum(c) => format!("sum({c})"),
            Agg::Mean(c) => format!("mean({c})"),
            Agg::Var(c) => format!("var({c})"),
            Agg::Std(c) => format!("stddev({c})"),
            Agg::Histogram { col, .. } => format!("histogram({col})"),
        }
    }
}

/// Comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `=`
    Eq,
    /// `!=`
    Ne,
}

/// A literal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Lit {
    /// A number.
    Num(f64),
    /// A category (quoted or bare word).
    Text(String),
}

/// A row predicate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Pred {
    /// `col op lit`
    Cmp(String, Op, Lit),
    /// `col [NOT] IN (...)`
    In(String, Vec<Lit>, bool),
    /// Both.
    And(Box<Pred>, Box<Pred>),
    /// Either.
    Or(Box<Pred>, Box<Pred>),
    /// Negation.
    Not(Box<Pred>),
}

/// A parsed query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// What to compute.
    pub aggs: Vec<Agg>,
    /// Which rows.
    pub filter: Option<Pred>,
    /// Grouping column (categorical).
    pub group_by: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Num(f64),
    Str(String),
    Sym(&'static str),
}

fn lex(s: &str) -> Result<Vec<Tok>> {
    let bad = |m: String| MpcError::Invalid(format!("query: {m}"));
    let mut out = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let st = i;
            while i < cs.len() && (cs[i].is_ascii_alphanumeric() || cs[i] == '_' || cs[i] == '.') {
                i += 1;
            }
            out.push(Tok::Word(cs[st..i].iter().collect()));
        } else if c.is_ascii_digit()
            || (c == '-'
                && cs
                    .get(i + 1)
                    .is_some_and(|d| d.is_ascii_digit() || *d == '.'))
            || c == '.'
        {
            let st = i;
            i += 1;
            while i < cs.len() && (cs[i].is_ascii_digit() || cs[i] == '.') {
                i += 1;
            }
            let t: String = cs[st..i].iter().collect();
            out.push(Tok::Num(
                t.parse().map_err(|_| bad(format!("bad number {t:?}")))?,
            ));
        } else if c == '\'' || c == '"' {
            let st = i + 1;
            i += 1;
            while i < cs.len() && cs[i] != c {
                i += 1;
            }
            if i >= cs.len() {
                return Err(bad("unterminated string".into()));
            }
            out.push(Tok::Str(cs[st..i].iter().collect()));
            i += 1;
        } else {
            let two: String = cs[i..(i + 2).min(cs.len())].iter().collect();
            let sym = match two.as_str() {
                "<=" => Some("<="),
                ">=" => Some(">="),
                "!=" | "<>" => Some("!="),
                "==" => Some("="),
                _ => None,
            };
            if let Some(s) = sym {
                out.push(Tok::Sym(s));
                i += 2;
                continue;
            }
            let sym = match c {
                '<' => "<",
                '>' => ">",
                '=' => "=",
                '(' => "(",
                ')' => ")",
                ',' => ",",
                '*' => "*",
                _ => return Err(bad(format!("unexpected character {c:?}"))),
            };
            out.push(Tok::Sym(sym));
            i += 1;
        }
    }
    Ok(out)
}

struct Parser {
    t: Vec<Tok>,
    i: usize,
}

impl Parser {
    fn err<X>(&self, m: &str) -> Result<X> {
        let near = match self.t.get(self.i) {
            Some(Tok::Word(w)) => format!("near {w:?}"),
            Some(Tok::Num(n)) => format!("near {n}"),
            Some(Tok::Str(s)) => format!("near '{s}'"),
            Some(Tok::Sym(s)) => format!("near {s:?}"),
            None => "at the end".into(),
        };
        Err(MpcError::Invalid(format!("query: {m} ({near})")))
    }
    fn kw(&mut self, k: &str) -> bool {
        if let Some(Tok::Word(w)) = self.t.get(self.i) {
            if w.eq_ignore_ascii_case(k) {
                self.i += 1;
                return true;
            }
        }
        false
    }
    fn sym(&mut self, s: &str) -> bool {
        if self.t.get(self.i)
            == Some(&Tok::Sym(match s {
                "(" => "(",
                ")" => ")",
                "," => ",",
                "*" => "*",
                _ => return false,
            }))
        {
            self.i += 1;
            return true;
        }
        false
    }
    fn expect(&mut self, s: &str) -> Result<()> {
        if self.sym(s) {
            Ok(())
        } else {
            self.err(&format!("expected {s:?}"))
        }
    }
    fn ident(&mut self) -> Result<String> {
        match self.t.get(self.i) {
            Some(Tok::Word(w)) if !is_keyword(w) => {
                self.i += 1;
                Ok(w.clone())
            }
            _ => self.err("expected a column name"),
        }
    }
    fn number(&mut self) -> Result<f64> {
        match self.t.get(self.i) {
            Some(Tok::Num(n)) => {
                self.i += 1;
                Ok(*n)
            }
            _ => self.err("expected a number"),
        }
    }
    fn literal(&mut self) -> Result<Lit> {
        match self.t.get(self.i).cloned() {
            Some(Tok::Num(n)) => {
                self.i += 1;
                Ok(Lit::Num(n))
            }
            Some(Tok::Str(s)) => {
                self.i += 1;
                Ok(Lit::Text(s))
            }
            Some(Tok::Word(w)) if !is_keyword(&w) => {
                self.i += 1;
                Ok(Lit::Text(w))
            }
            _ => self.err("expected a number or a category"),
        }
    }
    fn agg(&mut self) -> Result<Agg> {
        let one = |p: &mut Parser| -> Result<String> {
            p.expect("(")?;
            let c = p.ident()?;
            p.expect(")")?;
            Ok(c)
        };
        if self.kw("count") {
            if self.sym("(") {
                if self.sym("*") {
                    self.expect(")")?;
                    return Ok(Agg::Count);
                }
                let c = self.ident()?;
                self.expect(")")?;
                return Ok(Agg::CountCol(c));
            }
            return Ok(Agg::Count);
        }
        if self.kw("sum") {
            return Ok(Agg::Sum(one(self)?));
        }
        if self.kw("mean") || self.kw("avg") {
            return Ok(Agg::Mean(one(self)?));
        }
        if self.kw("var") || self.kw("variance") {
            return Ok(Agg::Var(one(self)?));
        }
        if self.kw("stddev") || self.kw("std") {
            return Ok(Agg::Std(one(self)?));
        }
        if self.kw("histogram") {
            self.expect("(")?;
            let col = self.ident()?;
            self.expect(",")?;
            let lo = self.number()?;
            self.expect(",")?;
            let hi = self.number()?;
            self.expect(",")?;
            let bins = self.number()?;
            self.expect(")")?;
            if bins.fract() != 0.0 || !(1.0..=64.0).contains(&bins) {
                return Err(MpcError::Invalid(
                    "query: histogram bins must be a whole number from 1 to 64".into(),
                ));
            }
            return Ok(Agg::Histogram {
                col,
                lo,
                hi,
                bins: bins as u32,
            });
        }
        self.err("expected count, sum, mean, var, stddev or histogram")
    }
    fn pred(&mut self) -> Result<Pred> {
        let mut l = self.conj()?;
        while self.kw("or") {
            let r = self.conj()?;
            l = Pred::Or(Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn conj(&mut self) -> Result<Pred> {
        let mut l = self.atom()?;
        while self.kw("and") {
            let r = self.atom()?;
            l = Pred::And(Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn atom(&mut self) -> Result<Pred> {
        if self.kw("not") {
            return Ok(Pred::Not(Box::new(self.atom()?)));
        }
        if self.sym("(") {
            let p = self.pred()?;
            self.expect(")")?;
            return Ok(p);
        }
        let col = self.ident()?;
        let negated = self.kw("not");
        if self.kw("in") {
            self.expect("(")?;
            let mut lits = vec![self.literal()?];
            while self.sym(",") {
                lits.push(self.literal()?);
            }
            self.expect(")")?;
            return Ok(Pred::In(col, lits, negated));
        }
        if negated {
            return self.err("expected IN after NOT");
        }
        let op = match self.t.get(self.i) {
            Some(Tok::Sym("<")) => Op::Lt,
            Some(Tok::Sym("<=")) => Op::Le,
            Some(Tok::Sym(">")) => Op::Gt,
            Some(Tok::Sym(">=")) => Op::Ge,
            Some(Tok::Sym("=")) => Op::Eq,
            Some(Tok::Sym("!=")) => Op::Ne,
            _ => return self.err("expected a comparison (<, <=, >, >=, =, !=) or IN"),
        };
        self.i += 1;
        Ok(Pred::Cmp(col, op, self.literal()?))
    }
}

fn is_keyword(w: &str) -> bool {
    ["where", "group", "by", "and", "or", "not", "in"]
        .iter()
        .any(|k| w.eq_ignore_ascii_case(k))
}

/// Parses a query (syntax only; see [`plan`] for the checks against a schema).
pub fn parse(text: &str) -> Result<Query> {
    let mut p = Parser {
        t: lex(text)?,
        i: 0,
    };
    let mut aggs = vec![p.agg()?];
    while p.sym(",") {
        aggs.push(p.agg()?);
    }
    let filter = if p.kw("where") { Some(p.pred()?) } else { None };
    let group_by = if p.kw("group") {
        if !p.kw("by") {
            return p.err("expected BY after GROUP");
        }
        Some(p.ident()?)
    } else {
        None
    };
    if p.i != p.t.len() {
        return p.err("unexpected text");
    }
    Ok(Query {
        aggs,
        filter,
        group_by,
    })
}

/// Which rows a group covers.
#[derive(Clone, Debug, PartialEq)]
pub enum Group {
    /// All rows (no grouping).
    All,
    /// Rows of one category.
    Cat(String, String),
    /// Rows with `lo <= col < hi` (stored units).
    Bin(String, i64, i64),
}

/// What is computed per group: row counts ("supports": `None` = matching rows, `Some(c)` =
/// matching rows where `c` is not NULL), each gating the values computed over it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The query.
    pub query: Query,
    /// Groups, in output order.
    pub groups: Vec<Group>,
    /// Supports, in output order.
    pub supports: Vec<Option<String>>,
    /// (column, squared?) sums, each over the support of its column.
    pub sums: Vec<(String, bool)>,
}

impl Plan {
    /// Output words per group.
    pub fn words_per_group(&self) -> usize {
        2 * self.supports.len() + self.sums.len()
    }
}

fn numeric_value(c: &Column, v: f64) -> Result<i64> {
    let x = (v * c.scale() as f64).round();
    if x.abs() > (1u64 << 40) as f64 {
        return Err(MpcError::Invalid(format!(
            "query: {v} is out of range for column {}",
            c.name
        )));
    }
    if (x - v * c.scale() as f64).abs() > 1e-6 {
        return Err(MpcError::Invalid(format!(
            "query: {v} has more decimals than column {} stores",
            c.name
        )));
    }
    Ok(x as i64)
}

fn check_pred(s: &Schema, p: &Pred) -> Result<()> {
    let col = |n: &str| {
        s.column(n)
            .ok_or_else(|| MpcError::Invalid(format!("query: no column {n:?}")))
    };
    match p {
        Pred::And(a, b) | Pred::Or(a, b) => {
            check_pred(s, a)?;
            check_pred(s, b)
        }
        Pred::Not(a) => check_pred(s, a),
        Pred::Cmp(n, op, lit) => {
            let c = col(n)?;
            match (&c.ty, lit) {
                (ColumnType::Cat(cats), Lit::Text(t)) if matches!(op, Op::Eq | Op::Ne) => {
                    if !cats.contains(t) {
                        return Err(MpcError::Invalid(format!(
                            "query: {t:?} is not a category of {n} ({})",
                            cats.join("|")
                        )));
                    }
                    Ok(())
                }
                (ColumnType::Cat(_), _) => Err(MpcError::Invalid(format!(
                    "query: {n} is categorical: use = or != with a category"
                ))),
                (_, Lit::Num(v)) => numeric_value(c, *v).map(|_| ()),
                (_, Lit::Text(t)) => Err(MpcError::Invalid(format!(
                    "query: {n} is numeric, {t:?} is not a number"
                ))),
            }
        }
        Pred::In(n, lits, _) => {
            let c = col(n)?;
            let ColumnType::Cat(cats) = &c.ty else {
                return Err(MpcError::Invalid(format!(
                    "query: IN needs a categorical column, {n} is numeric"
                )));
            };
            for l in lits {
                match l {
                    Lit::Text(t) if cats.contains(t) => {}
                    Lit::Text(t) => {
                        return Err(MpcError::Invalid(format!(
                            "query: {t:?} is not a category of {n} ({})",
                            cats.join("|")
                        )))
                    }
                    Lit::Num(v) => {
                        return Err(MpcError::Invalid(format!(
                            "query: {v} is not a category of {n}"
                        )))
                    }
                }
            }
            Ok(())
        }
    }
}

/// Checks `query` against `schema` and lays out the computation. Every error is a clear
/// message and nothing has run.
pub fn plan(schema: &Schema, query: &Query) -> Result<Plan> {
    let inv = |m: String| MpcError::Invalid(format!("query: {m}"));
    if let Some(f) = &query.filter {
        check_pred(schema, f)?;
    }
    let numeric = |n: &str| -> Result<&Column> {
        let c = schema
            .column(n)
            .ok_or_else(|| inv(format!("no column {n:?}")))?;
        if !c.numeric() {
            return Err(inv(format!(
                "{n} is categorical; aggregate a numeric column"
            )));
        }
        Ok(c)
    };
    let mut groups = vec![Group::All];
    if let Some(g) = &query.group_by {
        let c = schema
            .column(g)
            .ok_or_else(|| inv(format!("no column {g:?} to group by")))?;
        let ColumnType::Cat(cats) = &c.ty else {
            return Err(inv(format!(
                "GROUP BY needs a categorical column; {g} is numeric (use HISTOGRAM)"
            )));
        };
        groups = cats
            .iter()
            .map(|k| Group::Cat(g.clone(), k.clone()))
            .collect();
    }
    let mut supports: Vec<Option<String>> = vec![None];
    let mut sums: Vec<(String, bool)> = Vec::new();
    let add_support = |c: &Column, supports: &mut Vec<Option<String>>| {
        let s = c.nullable.then(|| c.name.clone());
        if !supports.contains(&s) {
            supports.push(s);
        }
    };
    if query.aggs.len() > 16 {
        return Err(inv("at most 16 aggregates".into()));
    }
    for a in &query.aggs {
        match a {
            Agg::Count => {}
            Agg::CountCol(c) => {
                let col = schema
                    .column(c)
                    .ok_or_else(|| inv(format!("no column {c:?}")))?;
                if col.numeric() {
                    add_support(col, &mut supports);
                }
            }
            Agg::Sum(c) | Agg::Mean(c) => {
                let col = numeric(c)?;
                add_support(col, &mut supports);
                if !sums.contains(&(c.clone(), false)) {
                    sums.push((c.clone(), false));
                }
            }
            Agg::Var(c) | Agg::Std(c) => {
                let col = numeric(c)?;
                let rows_bits = 64 - schema.rows.max(1).leading_zeros();
                if 2 * col.bits + rows_bits >= 62 {
                    return Err(inv(format!(
                        "the variance of {c} could overflow 64-bit arithmetic ({} rows of up to {} bits)",
                        schema.rows, col.bits
                    )));
                }
                add_support(col, &mut supports);
                for sq in [false, true] {
                    if !sums.contains(&(c.clone(), sq)) {
                        sums.push((c.clone(), sq));
                    }
                }
            }
            Agg::Histogram { col, lo, hi, bins } => {
                if query.aggs.len() != 1 || query.group_by.is_some() {
                    return Err(inv(
                        "HISTOGRAM must be the only aggregate, without GROUP BY".into(),
                    ));
                }
                let c = numeric(col)?;
                if lo.partial_cmp(hi) != Some(std::cmp::Ordering::Less) {
                    return Err(inv("histogram: lo must be below hi".into()));
                }
                let (l, h) = (numeric_value(c, *lo)?, numeric_value(c, *hi)?);
                let n = i64::from(*bins);
                if (h - l) < n {
                    return Err(inv("histogram: more bins than values in the range".into()));
                }
                groups = (0..n)
                    .map(|k| {
                        Group::Bin(col.clone(), l + (h - l) * k / n, l + (h - l) * (k + 1) / n)
                    })
                    .collect();
            }
        }
    }
    Ok(Plan {
        query: query.clone(),
        groups,
        supports,
        sums,
    })
}

fn col<'a>(t: &'a TableShare, name: &str) -> Result<&'a Shares<Z64>> {
    t.columns
        .get(name)
        .ok_or_else(|| MpcError::Invalid(format!("table share lacks column {name}")))
}

/// Arithmetic 0/1 for a predicate, evaluated at one party.
struct Eval<'a, T: Transport> {
    p: &'a mut Party<T>,
    t: &'a TableShare,
    s: &'a Schema,
    n: usize,
}

impl<T: Transport> Eval<'_, T> {
    fn ones(&self) -> Shares<Z64> {
        self.p.public(&vec![1; self.n])
    }
    fn not(&self, a: &Shares<Z64>) -> Shares<Z64> {
        a.neg().add_const(self.p.id(), 1)
    }
    fn valid(&self, c: &Column) -> Result<Option<Shares<Z64>>> {
        Ok(match &c.ty {
            _ if !c.nullable => None,
            ColumnType::Cat(cats) => {
                let mut acc = Shares::zeros(self.n);
                for k in cats {
                    acc = acc.add(col(self.t, &onehot_name(&c.name, k))?);
                }
                Some(acc)
            }
            _ => Some(col(self.t, &valid_name(&c.name))?.clone()),
        })
    }
    /// `[x < v]` and `[x > v]` as arithmetic 0/1, in one comparison circuit.
    fn lt_gt(&mut self, x: &Shares<Z64>, v: i64) -> Result<(Shares<Z64>, Shares<Z64>)> {
        let n = self.n;
        let id = self.p.id();
        let below = x.add_const(id, (v as u64).wrapping_neg());
        let above = x.neg().add_const(id, v as u64);
        let both = Shares::concat(&[&below, &above]);
        let bits = msb(self.p, &both)?;
        let a = b2a(self.p, &bits, 2 * n)?;
        Ok((a.slice(0..n), a.slice(n..2 * n)))
    }
    /// Evaluates `pred` (negated if `neg`). NOT is pushed down to the tests (De Morgan), and
    /// every test on a column is false where the column is NULL, so NULL behaves as in SQL's
    /// three-valued logic: a row is selected only if the predicate is TRUE.
    fn eval(&mut self, pred: &Pred, neg: bool) -> Result<Shares<Z64>> {
        match pred {
            Pred::And(a, b) | Pred::Or(a, b) => {
                let (x, y) = (self.eval(a, neg)?, self.eval(b, neg)?);
                let xy = self.p.mul(&x, &y)?;
                // AND, or OR when negated (and vice versa).
                if matches!(pred, Pred::And(..)) != neg {
                    Ok(xy)
                } else {
                    Ok(x.add(&y).sub(&xy))
                }
            }
            Pred::Not(a) => self.eval(a, !neg),
            Pred::In(name, lits, negated) => {
                let negated = *negated != neg;
                let c = self
                    .s
                    .column(name)
                    .ok_or_else(|| MpcError::Invalid(name.clone()))?;
                let mut acc = Shares::zeros(self.n);
                for l in lits {
                    if let Lit::Text(k) = l {
                        acc = acc.add(col(self.t, &onehot_name(name, k))?);
                    }
                }
                if negated {
                    let v = self.valid(c)?.unwrap_or_else(|| self.ones());
                    acc = v.sub(&acc);
                }
                Ok(acc)
            }
            Pred::Cmp(name, op, lit) => {
                let op = if neg {
                    match op {
                        Op::Lt => Op::Ge,
                        Op::Ge => Op::Lt,
                        Op::Gt => Op::Le,
                        Op::Le => Op::Gt,
                        Op::Eq => Op::Ne,
                        Op::Ne => Op::Eq,
                    }
                } else {
                    *op
                };
                let c = self
                    .s
                    .column(name)
                    .ok_or_else(|| MpcError::Invalid(name.clone()))?
                    .clone();
                if let (ColumnType::Cat(_), Lit::Text(k)) = (&c.ty, lit) {
                    let oh = col(self.t, &onehot_name(name, k))?.clone();
                    return Ok(match op {
                        Op::Eq => oh,
                        _ => self.valid(&c)?.unwrap_or_else(|| self.ones()).sub(&oh),
                    });
                }
                let Lit::Num(v) = lit else {
                    return Err(MpcError::Invalid(format!("query: {name} is numeric")));
                };
                let v = numeric_value(&c, *v)?;
                let x = col(self.t, name)?.clone();
                let (lt, gt) = self.lt_gt(&x, v)?;
                let id = self.p.id();
                let r = match op {
                    Op::Lt => lt,
                    Op::Gt => gt,
                    Op::Le => self.not(&gt),
                    Op::Ge => self.not(&lt),
                    // lt and gt are never both 1.
                    Op::Eq => lt.add(&gt).neg().add_const(id, 1),
                    Op::Ne => lt.add(&gt),
                };
                match self.valid(&c)? {
                    Some(v) => self.p.mul(&r, &v),
                    None => Ok(r),
                }
            }
        }
    }
}

/// Runs `plan` at one party over its table share and returns this party's shares of the output
/// words (per group: each support's count and its "at least `min_group`" bit, then each sum, all
/// multiplied by their support's bit). In malicious mode the stored shares' two copies are
/// checked between neighbours, and everything is verified before the caller reveals the output
/// ([`Party::reveal`]).
pub fn execute<T: Transport>(
    p: &mut Party<T>,
    table: &TableShare,
    schema: &Schema,
    plan: &Plan,
    min_group: u64,
) -> Result<Shares<Z64>> {
    let n = usize::try_from(schema.rows).map_err(|_| MpcError::Invalid("rows".into()))?;
    if table.rows != schema.rows || usize::from(table.party) != p.id() {
        return Err(MpcError::Invalid(
            "the table share does not belong to this party or table".into(),
        ));
    }
    for s in table.columns.values() {
        if s.len() != n {
            return Err(MpcError::Invalid(
                "a stored column has the wrong length".into(),
            ));
        }
        p.assert_consistent(s);
    }
    let mut ev = Eval {
        p,
        t: table,
        s: schema,
        n,
    };
    let filter = match &plan.query.filter {
        Some(f) => Some(ev.eval(f, false)?),
        None => None,
    };
    // Group selectors.
    let mut selectors: Vec<Option<Shares<Z64>>> = Vec::new();
    let bins: Vec<(String, i64, i64)> = plan
        .groups
        .iter()
        .filter_map(|g| match g {
            Group::Bin(c, l, h) => Some((c.clone(), *l, *h)),
            _ => None,
        })
        .collect();
    let mut bin_sel: Vec<Shares<Z64>> = Vec::new();
    if let Some((cname, _, _)) = bins.first() {
        // [x < edge] for every edge in one circuit; bin k = [x < hi_k] − [x < lo_k].
        let x = col(table, cname)?.clone();
        let mut edges: Vec<i64> = bins.iter().map(|b| b.1).collect();
        edges.push(bins[bins.len() - 1].2);
        let id = ev.p.id();
        let parts: Vec<Shares<Z64>> = edges
            .iter()
            .map(|&e| x.add_const(id, (e as u64).wrapping_neg()))
            .collect();
        let refs: Vec<&Shares<Z64>> = parts.iter().collect();
        let bits = msb(ev.p, &Shares::concat(&refs))?;
        let lt = b2a(ev.p, &bits, n * edges.len())?;
        let c = schema
            .column(cname)
            .ok_or_else(|| MpcError::Invalid(cname.clone()))?
            .clone();
        let valid = ev.valid(&c)?;
        for k in 0..bins.len() {
            let s = lt
                .slice((k + 1) * n..(k + 2) * n)
                .sub(&lt.slice(k * n..(k + 1) * n));
            bin_sel.push(s);
        }
        if let Some(v) = valid {
            let pairs: Vec<(&Shares<Z64>, &Shares<Z64>)> =
                bin_sel.iter().map(|s| (s, &v)).collect();
            bin_sel = ev.p.mul_many(&pairs)?;
        }
    }
    let mut bi = 0;
    for g in &plan.groups {
        selectors.push(match g {
            Group::All => None,
            Group::Cat(c, k) => Some(col(table, &onehot_name(c, k))?.clone()),
            Group::Bin(..) => {
                bi += 1;
                Some(bin_sel[bi - 1].clone())
            }
        });
    }
    // Row selectors: filter × group.
    let rows: Vec<Option<Shares<Z64>>> = match &filter {
        None => selectors,
        Some(f) => {
            let idx: Vec<usize> = (0..selectors.len())
                .filter(|&k| selectors[k].is_some())
                .collect();
            let pairs: Vec<(&Shares<Z64>, &Shares<Z64>)> = idx
                .iter()
                .filter_map(|&k| selectors[k].as_ref().map(|s| (s, f)))
                .collect();
            let prods = ev.p.mul_many(&pairs)?;
            let mut out: Vec<Option<Shares<Z64>>> =
                selectors.iter().map(|_| Some(f.clone())).collect();
            for (k, pr) in idx.into_iter().zip(prods) {
                out[k] = Some(pr);
            }
            out
        }
    };
    // Per group and support: the selector restricted to non-NULL values of the column.
    let mut support_sel: Vec<Vec<Option<Shares<Z64>>>> = Vec::new();
    for r in &rows {
        let mut v = Vec::new();
        for s in &plan.supports {
            let sel = match s {
                None => r.clone(),
                Some(c) => {
                    let cc = schema
                        .column(c)
                        .ok_or_else(|| MpcError::Invalid(c.clone()))?
                        .clone();
                    let valid = ev.valid(&cc)?;
                    match (r, valid) {
                        (Some(r), Some(v)) => Some(ev.p.mul(r, &v)?),
                        (None, v) => v,
                        (r, None) => r.clone(),
                    }
                }
            };
            v.push(sel);
        }
        support_sel.push(v);
    }
    let rows_public = ev.p.public(&[schema.rows]);
    let mut counts: Vec<Shares<Z64>> = Vec::new();
    for g in &support_sel {
        for s in g {
            counts.push(match s {
                Some(s) => s.sum(),
                None => rows_public.clone(),
            });
        }
    }
    // Sums over each column's support.
    let squares: BTreeMap<String, Shares<Z64>> = {
        let mut m = BTreeMap::new();
        for (c, sq) in &plan.sums {
            if *sq && !m.contains_key(c) {
                let x = col(table, c)?;
                m.insert(c.clone(), ev.p.mul(x, x)?);
            }
        }
        m
    };
    let mut sums: Vec<Shares<Z64>> = Vec::new();
    for g in &support_sel {
        for (c, sq) in &plan.sums {
            let cc = schema
                .column(c)
                .ok_or_else(|| MpcError::Invalid(c.clone()))?;
            let si = plan
                .supports
                .iter()
                .position(|s| s.as_deref() == cc.nullable.then_some(c.as_str()))
                .unwrap_or(0);
            let x = if *sq {
                squares[c].clone()
            } else {
                col(table, c)?.clone()
            };
            sums.push(match &g[si] {
                Some(sel) => ev.p.dot(sel, &x)?,
                None => x.sum(),
            });
        }
    }
    // At least `min_group` rows behind every count: [count < min] in one circuit.
    let refs: Vec<&Shares<Z64>> = counts.iter().collect();
    let all_counts = Shares::concat(&refs);
    let id = ev.p.id();
    let small = msb(ev.p, &all_counts.add_const(id, min_group.wrapping_neg()))?;
    let small = b2a(ev.p, &small, all_counts.len())?;
    let ok = small.neg().add_const(id, 1);
    // Mask: counts by their own bit, sums by their support's bit.
    let ns = plan.supports.len();
    let mut vals: Vec<Shares<Z64>> = Vec::new();
    let mut gates: Vec<Shares<Z64>> = Vec::new();
    for (gi, _) in plan.groups.iter().enumerate() {
        for si in 0..ns {
            vals.push(counts[gi * ns + si].clone());
            gates.push(ok.slice(gi * ns + si..gi * ns + si + 1));
        }
        for (k, (c, _)) in plan.sums.iter().enumerate() {
            let cc = schema
                .column(c)
                .ok_or_else(|| MpcError::Invalid(c.clone()))?;
            let si = plan
                .supports
                .iter()
                .position(|s| s.as_deref() == cc.nullable.then_some(c.as_str()))
                .unwrap_or(0);
            vals.push(sums[gi * plan.sums.len() + k].clone());
            gates.push(ok.slice(gi * ns + si..gi * ns + si + 1));
        }
    }
    let vr: Vec<&Shares<Z64>> = vals.iter().collect();
    let gr: Vec<&Shares<Z64>> = gates.iter().collect();
    let masked = ev.p.mul(&Shares::concat(&vr), &Shares::concat(&gr))?;
    // Layout per group: [counts…, ok bits…, sums…].
    let per = plan.words_per_group();
    let mut out = Shares::zeros(0);
    for gi in 0..plan.groups.len() {
        let base = gi * (ns + plan.sums.len());
        out.extend(&masked.slice(base..base + ns));
        out.extend(&ok.slice(gi * ns..(gi + 1) * ns));
        out.extend(&masked.slice(base + ns..base + ns + plan.sums.len()));
    }
    debug_assert_eq!(out.len(), per * plan.groups.len());
    Ok(out)
}

/// Turns the revealed output words into the owner's result (JSON). Fails if a query without
/// groups is suppressed.
pub fn decode(
    schema: &Schema,
    plan: &Plan,
    words: &[u64],
    min_group: u64,
) -> Result<serde_json::Value> {
    let per = plan.words_per_group();
    if words.len() != per * plan.groups.len() {
        return Err(MpcError::Invalid("result has the wrong length".into()));
    }
    let ns = plan.supports.len();
    let mut groups = Vec::new();
    for (gi, g) in plan.groups.iter().enumerate() {
        let w = &words[gi * per..(gi + 1) * per];
        let count = |s: &Option<String>| -> Option<i64> {
            let si = plan.supports.iter().position(|x| x == s)?;
            (w[ns + si] == 1).then_some(w[si] as i64)
        };
        let sum = |c: &str, sq: bool| -> Option<f64> {
            let col = schema.column(c)?;
            let support = col.nullable.then(|| c.to_string());
            count(&support)?;
            let k = plan.sums.iter().position(|(n, s)| n == c && *s == sq)?;
            let scale = col.scale() as f64;
            Some(w[2 * ns + k] as i64 as f64 / if sq { scale * scale } else { scale })
        };
        let mut obj = serde_json::Map::new();
        match g {
            Group::All => {}
            Group::Cat(c, k) => {
                obj.insert(c.clone(), k.clone().into());
            }
            Group::Bin(c, l, h) => {
                let s = schema.column(c).map(|c| c.scale() as f64).unwrap_or(1.0);
                obj.insert("lo".into(), (*l as f64 / s).into());
                obj.insert("hi".into(), (*h as f64 / s).into());
            }
        }
        let mut suppressed = false;
        for a in &plan.query.aggs {
            let v: Option<serde_json::Value> = match a {
                Agg::Count | Agg::Histogram { .. } => count(&None).map(Into::into),
                Agg::CountCol(c) => {
                    let nullable = schema.column(c).is_some_and(|x| x.nullable && x.numeric());
                    count(&nullable.then(|| c.clone())).map(Into::into)
                }
                Agg::Sum(c) => sum(c, false).map(Into::into),
                Agg::Mean(c) => {
                    let n = count(&schema.column(c).and_then(|x| x.nullable.then(|| c.clone())));
                    match (sum(c, false), n) {
                        (Some(s), Some(n)) if n > 0 => Some((s / n as f64).into()),
                        _ => None,
                    }
                }
                Agg::Var(c) | Agg::Std(c) => {
                    let n = count(&schema.column(c).and_then(|x| x.nullable.then(|| c.clone())));
                    match (sum(c, false), sum(c, true), n) {
                        (Some(s), Some(q), Some(n)) if n > 1 => {
                            let n = n as f64;
                            let var = ((q - s * s / n) / (n - 1.0)).max(0.0);
                            Some(
                                if matches!(a, Agg::Std(_)) {
                                    var.sqrt()
                                } else {
                                    var
                                }
                                .into(),
                            )
                        }
                        _ => None,
                    }
                }
            };
            match v {
                Some(v) => {
                    let key = if matches!(a, Agg::Histogram { .. }) {
                        "count".into()
                    } else {
                        a.label()
                    };
                    obj.insert(key, v);
                }
                None => suppressed = true,
            }
        }
        if suppressed {
            obj.insert(
                "suppressed".into(),
                format!("fewer than {min_group} rows").into(),
            );
        }
        groups.push((suppressed, serde_json::Value::Object(obj)));
    }
    match (&plan.groups[0], &plan.query.aggs[0]) {
        (Group::All, _) => {
            let (suppressed, v) = groups.remove(0);
            if suppressed {
                return Err(MpcError::Invalid(format!(
                    "query refused: its result would cover fewer than {min_group} records"
                )));
            }
            Ok(v)
        }
        (_, Agg::Histogram { col, .. }) => Ok(serde_json::json!({
            "histogram": col,
            "bins": groups.into_iter().map(|g| g.1).collect::<Vec<_>>(),
        })),
        _ => Ok(serde_json::json!({
            "group_by": plan.query.group_by,
            "groups": groups.into_iter().map(|g| g.1).collect::<Vec<_>>(),
        })),
    }
}
