//! One party's view of replicated secret shares.
//!
//! A value `x` is split as `x = x_0 + x_1 + x_2` (in the ring); party `i` holds the pair
//! `(x_i, x_{i+1})`, so every share is held by exactly two parties and any two parties can
//! rebuild `x` while one party alone learns nothing. [`Shares`] is that pair for a vector of
//! words: `a[k]` is party `i`'s `x_i` of element `k`, `b[k]` its `x_{i+1}`. Linear operations are
//! local; multiplication needs a round ([`crate::Party::mul`]).

use std::marker::PhantomData;

use crate::ring::Ring;

/// A party's replicated shares of a vector (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shares<R: Ring> {
    /// This party's first share `x_i` of each element.
    pub a: Vec<u64>,
    /// This party's second share `x_{i+1}` of each element.
    pub b: Vec<u64>,
    _ring: PhantomData<R>,
}

impl<R: Ring> Shares<R> {
    /// Shares from their two halves (equal lengths).
    pub fn from_parts(a: Vec<u64>, b: Vec<u64>) -> Self {
        debug_assert_eq!(a.len(), b.len());
        Self {
            a,
            b,
            _ring: PhantomData,
        }
    }

    /// `n` shares of zero.
    pub fn zeros(n: usize) -> Self {
        Self::from_parts(vec![0; n], vec![0; n])
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.a.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.a.is_empty()
    }

    /// Elements `range` as new shares.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        Self::from_parts(self.a[range.clone()].to_vec(), self.b[range].to_vec())
    }

    /// Appends `other`.
    pub fn extend(&mut self, other: &Self) {
        self.a.extend_from_slice(&other.a);
        self.b.extend_from_slice(&other.b);
    }

    /// The concatenation of `parts`.
    pub fn concat(parts: &[&Self]) -> Self {
        let n = parts.iter().map(|p| p.len()).sum();
        let mut out = Self::from_parts(Vec::with_capacity(n), Vec::with_capacity(n));
        for p in parts {
            out.extend(p);
        }
        out
    }

    /// `self + other`, elementwise.
    pub fn add(&self, other: &Self) -> Self {
        Self::from_parts(
            zip(&self.a, &other.a, R::add),
            zip(&self.b, &other.b, R::add),
        )
    }

    /// `self - other`, elementwise.
    pub fn sub(&self, other: &Self) -> Self {
        Self::from_parts(
            zip(&self.a, &other.a, R::sub),
            zip(&self.b, &other.b, R::sub),
        )
    }

    /// `-self`.
    pub fn neg(&self) -> Self {
        Self::from_parts(
            self.a.iter().map(|&x| R::neg(x)).collect(),
            self.b.iter().map(|&x| R::neg(x)).collect(),
        )
    }

    /// Each element times the public word `c[k]` (a public vector of the same length).
    pub fn mul_public(&self, c: &[u64]) -> Self {
        Self::from_parts(zip(&self.a, c, R::mul), zip(&self.b, c, R::mul))
    }

    /// Each element times the public constant `c`.
    pub fn scale(&self, c: u64) -> Self {
        Self::from_parts(
            self.a.iter().map(|&x| R::mul(x, c)).collect(),
            self.b.iter().map(|&x| R::mul(x, c)).collect(),
        )
    }

    /// Adds the public vector `c` (share `x_0` absorbs it: party 0's `a`, party 2's `b`).
    pub fn add_public(&self, party: usize, c: &[u64]) -> Self {
        let mut out = self.clone();
        match party {
            0 => out.a = zip(&out.a, c, R::add),
            2 => out.b = zip(&out.b, c, R::add),
            _ => {}
        }
        out
    }

    /// Adds the public constant `c` to every element.
    pub fn add_const(&self, party: usize, c: u64) -> Self {
        let mut out = self.clone();
        match party {
            0 => out.a.iter_mut().for_each(|x| *x = R::add(*x, c)),
            2 => out.b.iter_mut().for_each(|x| *x = R::add(*x, c)),
            _ => {}
        }
        out
    }

    /// The sum of all elements, as shares of one element.
    pub fn sum(&self) -> Self {
        let s = |v: &[u64]| v.iter().fold(0u64, |acc, &x| R::add(acc, x));
        Self::from_parts(vec![s(&self.a)], vec![s(&self.b)])
    }

    /// Elements picked by `idx` (a gather).
    pub fn gather(&self, idx: &[usize]) -> Self {
        Self::from_parts(
            idx.iter().map(|&i| self.a[i]).collect(),
            idx.iter().map(|&i| self.b[i]).collect(),
        )
    }
}

#[inline]
fn zip(x: &[u64], y: &[u64], f: impl Fn(u64, u64) -> u64) -> Vec<u64> {
    debug_assert_eq!(x.len(), y.len());
    x.iter().zip(y).map(|(&p, &q)| f(p, q)).collect()
}

/// Splits public values into the three parties' replicated shares using `rand` words for the
/// randomness (the dealer's side: a data owner sharing a table, or a test).
pub fn deal<R: Ring>(values: &[u64], rand: &mut impl FnMut() -> u64) -> [Shares<R>; 3] {
    let n = values.len();
    let mut s = [
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    ];
    for &v in values {
        let s0 = rand();
        let s1 = rand();
        let s2 = R::sub(R::sub(v, s0), s1);
        s[0].push(s0);
        s[1].push(s1);
        s[2].push(s2);
    }
    [
        Shares::from_parts(s[0].clone(), s[1].clone()),
        Shares::from_parts(s[1].clone(), s[2].clone()),
        Shares::from_parts(s[2].clone(), s[0].clone()),
    ]
}

/// Rebuilds values from the three parties' shares, checking that the two copies of every share
/// agree. `None` if they do not.
pub fn reconstruct<R: Ring>(parts: &[Shares<R>; 3]) -> Option<Vec<u64>> {
    let n = parts[0].len();
    if parts.iter().any(|p| p.len() != n) {
        return None;
    }
    for i in 0..3 {
        // Party i's b is share i+1, which party i+1 holds as its a.
        if parts[i].b != parts[(i + 1) % 3].a {
            return None;
        }
    }
    Some(
        (0..n)
            .map(|k| R::add(R::add(parts[0].a[k], parts[1].a[k]), parts[2].a[k]))
            .collect(),
    )
}
