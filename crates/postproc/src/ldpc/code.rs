//! Quasi-cyclic LDPC parity-check matrices, built deterministically from a seed.
//!
//! A base graph of `NB` = 256 columns and `mb` rows is lifted by circulant permutations of
//! size `z` (n = 256·z). The last `mb` columns form a ring staircase of degree 2 (as in
//! IRA / 802.11n codes); the other columns have degree 3 or a higher degree `dh` with rows
//! filled evenly. Circulant shifts are drawn at random, avoiding 4-cycles in the lifted
//! graph. Check (r, q) of the lifted graph is connected to variable (j, (q + s) mod z) for
//! each base edge (r, j, s).
//!
//! Puncturing candidates are chosen greedily (lowest degree first) so that each punctured
//! variable keeps a *survivor* check with no other punctured neighbour: every punctured
//! symbol is one-step recoverable (Elkouss et al., "Untainted puncturing for irregular LDPC
//! codes", 2012), and Alice can set it to make its survivor's syndrome bit zero (see
//! [`super`]).

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Base-graph columns.
pub(crate) const NB: usize = 256;

/// One lifted QC-LDPC code with its puncturing pattern.
#[derive(Debug)]
pub(crate) struct QcCode {
    /// Circulant size.
    pub z: usize,
    /// Base rows.
    pub mb: usize,
    /// Base edges of row r are `row_start[r]..row_start[r + 1]`.
    pub row_start: Vec<usize>,
    /// Base column of each edge.
    pub cols: Vec<u32>,
    /// Circulant shift of each edge.
    pub shifts: Vec<u32>,
    /// Puncturable variables with their survivor checks, in puncturing order.
    pub punct: Vec<(u32, u32)>,
    /// Every variable: the puncturable ones first (same order), the rest in seeded random order.
    pub order: Vec<u32>,
    /// Largest base-row degree.
    pub max_row_deg: usize,
}

/// Information-column degree mix for a base graph with `mb` rows: (fraction of heavy columns,
/// heavy degree). Chosen by density evolution of BP on the BSC for this construction
/// (staircase + degrees 3 and 12): threshold f ≈ 1.06 at rate 0.75, ≈ 1.11 at rate 0.9.
fn degree_mix(_mb: usize) -> (f64, usize) {
    (0.3, 12)
}

impl QcCode {
    /// Code length n.
    pub fn n(&self) -> usize {
        NB * self.z
    }

    /// Number of checks m.
    pub fn m(&self) -> usize {
        self.mb * self.z
    }

    /// Builds the code with `mb` base rows and circulant size `z` (a multiple of 64).
    pub fn build(z: usize, mb: usize, seed: u64) -> Self {
        let (frac, dh) = degree_mix(mb);
        Self::build_with(z, mb, seed, frac, dh, 3, true)
    }

    /// Builds with an explicit design: a fraction `frac` of the information columns has
    /// degree `dh`, the rest degree `dl`; `staircase` adds the degree-2 ring.
    pub fn build_with(
        z: usize,
        mb: usize,
        seed: u64,
        frac: f64,
        dh: usize,
        dl: usize,
        staircase: bool,
    ) -> Self {
        debug_assert!(z.is_multiple_of(64) && (3..NB).contains(&mb));
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((mb as u64) << 32) ^ z as u64);
        let k = if staircase { NB - mb } else { NB };
        // shift[r][j] = -1 where no edge.
        let mut sh = vec![-1i32; mb * NB];
        let mut row_deg = vec![0usize; mb];
        let mut col_rows: Vec<Vec<usize>> = vec![Vec::new(); NB];
        // Staircase ring: column k + i connects rows i and i + 1 (mod mb).
        for i in 0..if staircase { mb } else { 0 } {
            let c = k + i;
            let (r0, r1) = (i, (i + 1) % mb);
            sh[r0 * NB + c] = 0;
            sh[r1 * NB + c] = if r1 == 0 { 1 } else { 0 };
            for r in [r0, r1] {
                row_deg[r] += 1;
                col_rows[c].push(r);
            }
        }
        let heavy = (frac * k as f64).round() as usize;
        let mut rows_all: Vec<usize> = (0..mb).collect();
        for c in 0..k {
            let d = if c < heavy { dh } else { dl }.min(mb);
            for _ in 0..d {
                // Least-filled row not yet in this column, ties at random.
                rows_all.shuffle(&mut rng);
                let r = *rows_all
                    .iter()
                    .filter(|&&r| sh[r * NB + c] < 0)
                    .min_by_key(|&&r| row_deg[r])
                    .expect("d <= mb");
                let s = pick_shift(&sh, &col_rows, r, c, z, &mut rng);
                sh[r * NB + c] = s as i32;
                row_deg[r] += 1;
                col_rows[c].push(r);
            }
        }
        let mut row_start = vec![0];
        let (mut cols, mut shifts) = (Vec::new(), Vec::new());
        for r in 0..mb {
            for c in 0..NB {
                let s = sh[r * NB + c];
                if s >= 0 {
                    cols.push(c as u32);
                    shifts.push(s as u32);
                }
            }
            row_start.push(cols.len());
        }
        let max_row_deg = row_deg.iter().copied().max().unwrap_or(0);
        let mut code = Self {
            z,
            mb,
            row_start,
            cols,
            shifts,
            punct: Vec::new(),
            order: Vec::new(),
            max_row_deg,
        };
        code.choose_punctures(&col_rows, &mut rng);
        code
    }

    /// Greedy one-step-recoverable puncturing (see the module docs), lowest degree first.
    fn choose_punctures(&mut self, col_rows: &[Vec<usize>], rng: &mut ChaCha8Rng) {
        let (z, n, m) = (self.z, self.n(), self.m());
        // Column adjacency with shifts: (row, shift).
        let mut col_adj: Vec<Vec<(usize, usize)>> = vec![Vec::new(); NB];
        for r in 0..self.mb {
            for e in self.row_start[r]..self.row_start[r + 1] {
                col_adj[self.cols[e] as usize].push((r, self.shifts[e] as usize));
            }
        }
        let mut vars: Vec<u32> = (0..n as u32).collect();
        vars.shuffle(rng);
        vars.sort_by_key(|&v| col_rows[v as usize / z].len());
        let mut punct_count = vec![0u16; m];
        let mut claimed = vec![false; m];
        let mut is_punct = vec![false; n];
        // Never puncture more than a quarter of the checks' worth of symbols.
        let cap = m / 4;
        let mut checks = Vec::with_capacity(16);
        for &v in &vars {
            if self.punct.len() >= cap {
                break;
            }
            let (j, t) = (v as usize / z, v as usize % z);
            checks.clear();
            checks.extend(col_adj[j].iter().map(|&(r, s)| r * z + (t + z - s) % z));
            if checks.iter().any(|&c| claimed[c]) {
                continue;
            }
            let Some(&c) = checks.iter().find(|&&c| punct_count[c] == 0) else {
                continue;
            };
            claimed[c] = true;
            for &c2 in &checks {
                punct_count[c2] += 1;
            }
            is_punct[v as usize] = true;
            self.punct.push((v, c as u32));
        }
        let mut rest: Vec<u32> = (0..n as u32).filter(|&v| !is_punct[v as usize]).collect();
        rest.shuffle(rng);
        self.order = self.punct.iter().map(|&(v, _)| v).chain(rest).collect();
    }

    /// The syndrome H·x of a packed n-bit word, as m packed bits.
    pub fn syndrome(&self, x: &[u64]) -> Vec<u64> {
        let w = self.z / 64;
        let mut s = vec![0u64; self.m() / 64];
        for r in 0..self.mb {
            let out = &mut s[r * w..(r + 1) * w];
            for e in self.row_start[r]..self.row_start[r + 1] {
                let j = self.cols[e] as usize;
                xor_rotated(out, &x[j * w..(j + 1) * w], self.shifts[e] as usize);
            }
        }
        s
    }
}

/// `out[q] ^= x[(q + s) mod Z]` on Z-bit blocks packed in words (Z a multiple of 64).
fn xor_rotated(out: &mut [u64], x: &[u64], s: usize) {
    let w = x.len();
    let (q, b) = (s / 64, s % 64);
    for (i, o) in out.iter_mut().enumerate() {
        let lo = x[(i + q) % w];
        *o ^= if b == 0 {
            lo
        } else {
            (lo >> b) | (x[(i + q + 1) % w] << (64 - b))
        };
    }
}

/// A shift for edge (r, c) that closes no 4-cycle with the edges placed so far, if one is
/// found in a few random tries.
fn pick_shift(
    sh: &[i32],
    col_rows: &[Vec<usize>],
    r: usize,
    c: usize,
    z: usize,
    rng: &mut ChaCha8Rng,
) -> usize {
    // A 4-cycle r–c–r2–c2: s(r,c) − s(r,c2) + s(r2,c2) − s(r2,c) ≡ 0 (mod z).
    let mut forbidden = Vec::new();
    for &r2 in &col_rows[c] {
        let b = sh[r2 * NB + c] as i64;
        for c2 in 0..NB {
            let (a, d) = (sh[r * NB + c2], sh[r2 * NB + c2]);
            if c2 != c && a >= 0 && d >= 0 {
                forbidden.push((a as i64 - d as i64 + b).rem_euclid(z as i64) as usize);
            }
        }
    }
    for _ in 0..64 {
        let s = rng.gen_range(0..z);
        if !forbidden.contains(&s) {
            return s;
        }
    }
    rng.gen_range(0..z)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifted_graph_has_no_4_cycles_and_punctures_are_recoverable() {
        let code = QcCode::build(64, 51, 7);
        let (z, n, m) = (code.z, code.n(), code.m());
        let mut var_checks: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut check_vars: Vec<Vec<usize>> = vec![Vec::new(); m];
        for r in 0..code.mb {
            for e in code.row_start[r]..code.row_start[r + 1] {
                let (j, s) = (code.cols[e] as usize, code.shifts[e] as usize);
                for q in 0..z {
                    let v = j * z + (q + s) % z;
                    var_checks[v].push(r * z + q);
                    check_vars[r * z + q].push(v);
                }
            }
        }
        // 4-cycle: two variables sharing two checks.
        let mut four = 0;
        for cv in &check_vars {
            for (i, &a) in cv.iter().enumerate() {
                for &b in &cv[i + 1..] {
                    let shared = var_checks[a]
                        .iter()
                        .filter(|c| var_checks[b].contains(c))
                        .count();
                    four += (shared > 1) as usize;
                }
            }
        }
        assert_eq!(four, 0);
        assert!(code.punct.len() > n / 40, "{} punctured", code.punct.len());
        let punct: std::collections::HashSet<usize> =
            code.punct.iter().map(|&(v, _)| v as usize).collect();
        for &(v, c) in &code.punct {
            assert!(var_checks[v as usize].contains(&(c as usize)));
            let others = check_vars[c as usize]
                .iter()
                .filter(|&&u| u != v as usize && punct.contains(&u))
                .count();
            assert_eq!(
                others, 0,
                "survivor check of {v} has another punctured symbol"
            );
        }
        let mut sorted = code.order.clone();
        sorted.sort_unstable();
        assert!(sorted.iter().enumerate().all(|(i, &v)| i == v as usize));
        // Syndrome of a single set bit is its column.
        let mut x = vec![0u64; n / 64];
        let v = 1234;
        x[v / 64] |= 1 << (v % 64);
        let s = code.syndrome(&x);
        let ones: Vec<usize> = (0..m).filter(|&c| s[c / 64] >> (c % 64) & 1 == 1).collect();
        let mut want = var_checks[v].clone();
        want.sort_unstable();
        assert_eq!(ones, want);
    }
}
