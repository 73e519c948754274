//! Layered belief-propagation decoding in 16-bit fixed point: normalized min-sum, or the
//! sum-product rule as box-plus sums with a piecewise-linear correction ([`CheckRule`]).
//!
//! Messages are stored per base edge as `z` consecutive `i16` lanes (check q of the layer in
//! lane q). Min-sum runs a layer in groups of up to 128 checks over a padded copy of the
//! a-posteriori LLRs, each variable block followed by a copy of its first values, so the rotated run a group reads or writes is always contiguous; sum-product
//! copies each rotated block into a scratch row first. Either way the arithmetic runs on whole
//! aligned runs with no scalar tails, and gives the same integers as the plain scalar
//! definition (`ldpc::tests::kernels_equal_the_scalar_layered_reference`). The loops are
//! written so the compiler vectorizes them; [`crate::ldpc_simd_unsafe`] compiles the same code
//! for AVX2 and AVX-512BW and picks one at run time. Buffers are reused between frames.

use super::code::QcCode;

/// Fixed-point units per nat of log-likelihood ratio.
pub(crate) const LLR_SCALE: f64 = 16.0;
/// LLR of a symbol known for sure (shortened or revealed).
pub(crate) const LLR_KNOWN: i16 = 8000;
/// Largest check-to-variable message magnitude before normalization.
pub(super) const MSG_MAX: i16 = 2047;
/// Normalization factor α of min-sum, in sixteenths (0.75; 0.625–0.875 tried, 0.75 best).
pub(super) const ALPHA: i16 = 12;

/// Reusable decoder state for one code size (one per thread).
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// Give an attempt up once this many iterations pass without fewer unsatisfied checks
    /// than its best so far (0: always run to `max_iter`). Meant for attempts that can be
    /// resumed ([`Decoder::resume`]): a stalled decode rarely recovers by iterating alone.
    pub stall: usize,
    /// Iterations the last [`Decoder::decode`] or [`Decoder::resume`] ran, successful or not.
    pub spent: usize,
    pub app: Vec<i16>,
    msgs: Vec<i16>,
    tmp: Vec<i16>,
    fwd: Vec<i16>,
    min1: Vec<i16>,
    min2: Vec<i16>,
    papp: Vec<i16>,
    sgn: Vec<i16>,
    synd: Vec<i16>,
}

/// The buffers of one decode, borrowed separately.
pub(crate) struct Bufs<'a> {
    pub app: &'a mut [i16],
    pub msgs: &'a mut [i16],
    pub tmp: &'a mut [i16],
    pub fwd: &'a mut [i16],
    pub min1: &'a mut [i16],
    pub min2: &'a mut [i16],
    /// Padded LLRs (min-sum; see `min_sum_impl`).
    pub papp: &'a mut [i16],
    pub sgn: &'a mut [i16],
    pub synd: &'a [i16],
    /// [`Decoder::stall`].
    pub stall: usize,
    /// Set to the iterations run, whether or not the decode succeeds.
    pub spent: &'a mut usize,
}

impl Decoder {
    /// Decodes: `llr` are the channel LLRs (positive: bit 0), `synd` the packed target
    /// syndrome. Returns the iterations used when every check is satisfied; the hard
    /// decisions are then `app < 0`.
    pub fn decode(
        &mut self,
        code: &QcCode,
        llr: &[i16],
        synd: &[u64],
        max_iter: usize,
        simd: crate::ldpc_simd_unsafe::Simd,
        rule: CheckRule,
    ) -> Option<usize> {
        let n = code.n();
        self.app.clear();
        self.app.extend_from_slice(&llr[..n]);
        self.msgs.clear();
        self.msgs.resize(code.cols.len() * code.z, 0);
        self.run(code, synd, max_iter, simd, rule)
    }

    /// Restores a saved state (`app`, `msgs` of an earlier decode of the same frame, taken
    /// back with [`Decoder::take_state`]) with `delta` added to the a-posteriori LLRs of
    /// symbols whose channel LLR changed (revealed bits): `app` stays the channel LLR plus the
    /// sum of the check messages, as in a fresh decode, so [`Decoder::resume`] carries the
    /// layers on where the last attempt stopped.
    pub fn restore(&mut self, state: (Vec<i16>, Vec<i16>), delta: &[(u32, i16)]) {
        (self.app, self.msgs) = state;
        for &(v, d) in delta {
            let a = &mut self.app[v as usize];
            *a = a.saturating_add(d);
        }
    }

    /// Continues decoding from the state [`Decoder::restore`] set.
    pub fn resume(
        &mut self,
        code: &QcCode,
        synd: &[u64],
        max_iter: usize,
        simd: crate::ldpc_simd_unsafe::Simd,
        rule: CheckRule,
    ) -> Option<usize> {
        self.run(code, synd, max_iter, simd, rule)
    }

    /// Takes the a-posteriori LLRs and check messages of the last decode (to resume it later).
    pub fn take_state(&mut self) -> (Vec<i16>, Vec<i16>) {
        (
            std::mem::take(&mut self.app),
            std::mem::take(&mut self.msgs),
        )
    }

    /// The layers over `app` and `msgs` as they stand.
    fn run(
        &mut self,
        code: &QcCode,
        synd: &[u64],
        max_iter: usize,
        simd: crate::ldpc_simd_unsafe::Simd,
        rule: CheckRule,
    ) -> Option<usize> {
        let (m, z) = (code.m(), code.z);
        self.tmp.resize(code.max_row_deg * z, 0);
        if rule == CheckRule::BoxPlus {
            self.fwd.resize(code.max_row_deg * z, 0);
        }
        self.papp.resize(code.n() / z * (z + MAX_L), 0);
        for v in [&mut self.min1, &mut self.min2, &mut self.sgn] {
            v.resize(z, 0);
        }
        self.synd.clear();
        self.synd
            .extend((0..m).map(|c| -(((synd[c / 64] >> (c % 64)) & 1) as i16)));
        let b = Bufs {
            app: &mut self.app,
            msgs: &mut self.msgs,
            tmp: &mut self.tmp,
            fwd: &mut self.fwd,
            min1: &mut self.min1,
            min2: &mut self.min2,
            papp: &mut self.papp,
            sgn: &mut self.sgn,
            synd: &self.synd,
            stall: self.stall,
            spent: &mut self.spent,
        };
        *b.spent = 0;
        crate::ldpc_simd_unsafe::decode(simd, code, b, max_iter, rule)
    }

    /// Hard decisions of the last decode, packed.
    pub fn hard(&self) -> Vec<u64> {
        self.app
            .chunks(64)
            .map(|c| {
                c.iter()
                    .enumerate()
                    .fold(0u64, |w, (i, &a)| w | (((a < 0) as u64) << i))
            })
            .collect()
    }
}

/// The check-node update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckRule {
    /// Normalized min-sum (α = 0.75): fastest, ≈ 0.1 of efficiency f above sum-product.
    #[default]
    MinSum,
    /// Sum-product as box-plus sums with a piecewise-linear correction: lower f, several
    /// times the CPU per iteration.
    BoxPlus,
}

/// Up to `max_iter` layered iterations with `rule`; `Some(iterations)` once all checks hold.
#[inline(always)]
pub(crate) fn decode_impl(
    code: &QcCode,
    b: Bufs<'_>,
    max_iter: usize,
    rule: CheckRule,
) -> Option<usize> {
    match rule {
        CheckRule::MinSum => min_sum_impl(code, b, max_iter),
        CheckRule::BoxPlus => box_plus_impl(code, b, max_iter),
    }
}

/// Normalized min-sum layers.
///
/// Runs over a padded copy of `app` (`papp`: each variable block followed by a copy of its
/// first `L` values), so that every rotated group of `L` lanes is one contiguous load. `L` is
/// the group width, the widest up to [`MAX_L`] with z ≥ 2L (128 lanes for 2^16-bit frames,
/// 64 for 2^15, 32 for 2^14); wider groups spend less of the work on per-edge addressing.
#[inline(always)]
fn min_sum_impl(code: &QcCode, b: Bufs<'_>, max_iter: usize) -> Option<usize> {
    let z = code.z;
    let Bufs {
        app,
        msgs,
        tmp,
        papp,
        synd,
        stall,
        spent,
        ..
    } = b;
    let bufs = (code, app, msgs, tmp, papp, synd);
    if z >= 2 * MAX_L {
        min_sum_padded::<MAX_L>(bufs, (stall, spent), max_iter)
    } else if z >= 128 {
        min_sum_padded::<64>(bufs, (stall, spent), max_iter)
    } else {
        min_sum_padded::<32>(bufs, (stall, spent), max_iter)
    }
}

/// The code and the buffers [`min_sum_padded`] works on: `app`, `msgs`, `tmp`, `papp`, `synd`.
type PaddedBufs<'a> = (
    &'a QcCode,
    &'a mut [i16],
    &'a mut [i16],
    &'a mut [i16],
    &'a mut [i16],
    &'a [i16],
);

/// [`min_sum_impl`] with groups of `L` lanes: pads, runs the layers, unpads.
#[inline(always)]
fn min_sum_padded<const L: usize>(
    (code, app, msgs, tmp, papp, synd): PaddedBufs<'_>,
    (stall, spent): (usize, &mut usize),
    max_iter: usize,
) -> Option<usize> {
    let z = code.z;
    let sz = z + L;
    // z ≥ 2L: a group's rotated run then writes either the pad or the first L values of its
    // block, never both, which the write-back below relies on.
    debug_assert!(z.is_power_of_two() && z >= 2 * L);
    for (p, a) in papp.chunks_exact_mut(sz).zip(app.chunks_exact(z)) {
        p[..z].copy_from_slice(a);
        p[z..].copy_from_slice(&a[..L]);
    }
    let result = min_sum_layers::<L>(code, msgs, tmp, papp, synd, (stall, spent), max_iter);
    for (a, p) in app.chunks_exact_mut(z).zip(papp.chunks_exact(sz)) {
        a.copy_from_slice(&p[..z]);
    }
    result
}

/// The iterations of [`min_sum_impl`] on the padded LLRs.
#[inline(always)]
fn min_sum_layers<const L: usize>(
    code: &QcCode,
    msgs: &mut [i16],
    tmp: &mut [i16],
    papp: &mut [i16],
    synd: &[i16],
    (stall, spent): (usize, &mut usize),
    max_iter: usize,
) -> Option<usize> {
    let z = code.z;
    let sz = z + L;
    // z is a power of two: a mask, not a division, per edge.
    let zmask = z - 1;
    if padded_unsatisfied::<L>(code, papp, synd, true) == 0 {
        return Some(0);
    }
    let mut progress = Progress::new(stall);
    for it in 1..=max_iter {
        *spent = it;
        for r in 0..code.mb {
            let (e0, e1) = (code.row_start[r], code.row_start[r + 1]);
            // Lane group by lane group: a row's checks touch disjoint variables (one
            // circulant per base column), so each group of checks can run its whole update,
            // reads and write-backs, before the next group starts, with the minima, index and
            // sign in registers and the edge values in an L1-sized scratch.
            for q0 in (0..z).step_by(L) {
                let mut m1: [i16; L] = [i16::MAX; L];
                let mut m2: [i16; L] = [i16::MAX; L];
                let mut ix: [i16; L] = [0; L];
                let mut sg: [i16; L] = lane(&synd[r * z + q0..]);
                for (k, e) in (e0..e1).enumerate() {
                    let start = (q0 + code.shifts[e] as usize) & zmask;
                    let col = code.cols[e] as usize;
                    let mut t: [i16; L] = lane(&papp[col * sz + start..]);
                    let m: [i16; L] = lane(&msgs[e * z + q0..]);
                    let kk = k as i16;
                    for i in 0..L {
                        // t = app[(q + s) mod z] − msg[q]
                        t[i] = t[i].saturating_sub(m[i]);
                        let mag = t[i].max(0i16.saturating_sub(t[i]));
                        let lt = mag < m1[i];
                        m2[i] = if lt { m1[i] } else { m2[i].min(mag) };
                        ix[i] = if lt { kk } else { ix[i] };
                        m1[i] = m1[i].min(mag);
                        sg[i] ^= t[i];
                    }
                    tmp[k * L..(k + 1) * L].copy_from_slice(&t);
                }
                for (k, e) in (e0..e1).enumerate() {
                    let mut t: [i16; L] = lane(&tmp[k * L..]);
                    let mo: &mut [i16] = &mut msgs[e * z + q0..e * z + q0 + L];
                    let kk = k as i16;
                    for i in 0..L {
                        // Branch-free select: a plain `if` here became per-lane loads.
                        let own = -i16::from(ix[i] == kk);
                        let mag = (m2[i] & own) | (m1[i] & !own);
                        let mag = (mag.min(MSG_MAX) * ALPHA) >> 4;
                        mo[i] = if (sg[i] ^ t[i]) < 0 { -mag } else { mag };
                        t[i] = t[i].saturating_add(mo[i]);
                    }
                    let start = (q0 + code.shifts[e] as usize) & zmask;
                    let col = code.cols[e] as usize;
                    let blk = &mut papp[col * sz..(col + 1) * sz];
                    blk[start..start + L].copy_from_slice(&t);
                    // Keep the pad equal to the block's first L values.
                    let (head, pad) = blk.split_at_mut(z);
                    if start + L > z {
                        head[..L].copy_from_slice(pad);
                    } else if start < L {
                        pad.copy_from_slice(&head[..L]);
                    }
                }
            }
        }
        if padded_unsatisfied::<L>(code, papp, synd, true) == 0 {
            return Some(it);
        }
        if progress.stalled(it, || padded_unsatisfied::<L>(code, papp, synd, false)) {
            return None;
        }
    }
    None
}

/// Checks the hard decisions of the padded LLRs do not meet; with `any`, stops at the first
/// row group that has one (the count is then only non-zero).
#[inline(always)]
fn padded_unsatisfied<const L: usize>(
    code: &QcCode,
    papp: &[i16],
    synd: &[i16],
    any: bool,
) -> usize {
    let z = code.z;
    let sz = z + L;
    let zmask = z - 1;
    let mut count = 0;
    for r in 0..code.mb {
        for q0 in (0..z).step_by(L) {
            let mut acc: [i16; L] = lane(&synd[r * z + q0..]);
            for e in code.row_start[r]..code.row_start[r + 1] {
                let start = (q0 + code.shifts[e] as usize) & zmask;
                let a: [i16; L] = lane(&papp[code.cols[e] as usize * sz + start..]);
                for i in 0..L {
                    acc[i] ^= a[i];
                }
            }
            count += acc.iter().map(|&x| usize::from(x < 0)).sum::<usize>();
            if any && count > 0 {
                return count;
            }
        }
    }
    count
}

/// Widest lane group of the min-sum kernel: four AVX-512 registers of i16 (eight AVX2 ones),
/// used for circulant sizes 128 and 256; 128 lanes measured ≈ 8 % faster than 64 and ≈ 20 %
/// faster than 32 (3·10^6 bits at 3 %, one thread).
pub(crate) const MAX_L: usize = 128;

/// The first `L` values of `x`.
#[inline(always)]
fn lane<const L: usize>(x: &[i16]) -> [i16; L] {
    let mut v = [0; L];
    v.copy_from_slice(&x[..L]);
    v
}

/// Sum-product layers: box-plus sums of the incoming magnitudes, forward partial sums in
/// `fwd` and a backward running sum (in `min2`), so each outgoing message is the box-plus of
/// all other edges.
#[inline(always)]
fn box_plus_impl(code: &QcCode, b: Bufs<'_>, max_iter: usize) -> Option<usize> {
    let z = code.z;
    let Bufs {
        app,
        msgs,
        tmp,
        fwd,
        min1: rot,
        min2: bwd,
        sgn,
        synd,
        stall,
        spent,
        ..
    } = b;
    if checks_hold(code, app, synd, sgn, rot) {
        return Some(0);
    }
    let mut progress = Progress::new(stall);
    for it in 1..=max_iter {
        *spent = it;
        for r in 0..code.mb {
            let (e0, e1) = (code.row_start[r], code.row_start[r + 1]);
            let dc = e1 - e0;
            sgn.copy_from_slice(&synd[r * z..(r + 1) * z]);
            for (k, e) in (e0..e1).enumerate() {
                let m = &msgs[e * z..(e + 1) * z];
                let t = &mut tmp[k * z..(k + 1) * z];
                rotate_in(t, app, code, e);
                // t[q] = app[(q + s) mod z] − msg[q]
                for (t, &m) in t.iter_mut().zip(m) {
                    *t = t.saturating_sub(m);
                }
                // Forward partial box-sums of the magnitudes: fwd[k] = |t_0| ⊞ … ⊞ |t_k|.
                let (done, rest) = fwd.split_at_mut(k * z);
                let f = &mut rest[..z];
                if k == 0 {
                    for ((f, &t), sg) in f.iter_mut().zip(t.iter()).zip(sgn.iter_mut()) {
                        *f = abs(t);
                        *sg ^= t;
                    }
                } else {
                    let prev = &done[(k - 1) * z..];
                    for (((f, &t), &p), sg) in
                        f.iter_mut().zip(t.iter()).zip(prev).zip(sgn.iter_mut())
                    {
                        *f = boxplus(p, abs(t));
                        *sg ^= t;
                    }
                }
            }
            // Backward: `bwd` holds |t_{k+1}| ⊞ … ⊞ |t_{dc−1}|; edge k gets fwd[k − 1] ⊞ bwd.
            bwd.fill(INF);
            for k in (0..dc).rev() {
                let e = e0 + k;
                let m = &mut msgs[e * z..(e + 1) * z];
                let t = &mut tmp[k * z..(k + 1) * z];
                if k == 0 {
                    for (((mo, &t), &b), &sg) in
                        m.iter_mut().zip(t.iter()).zip(bwd.iter()).zip(sgn.iter())
                    {
                        let mag = b.min(MSG_MAX);
                        *mo = if (sg ^ t) < 0 { -mag } else { mag };
                    }
                } else {
                    let prev = &fwd[(k - 1) * z..k * z];
                    for ((((mo, &t), b), &sg), &p) in m
                        .iter_mut()
                        .zip(t.iter())
                        .zip(bwd.iter_mut())
                        .zip(sgn.iter())
                        .zip(prev)
                    {
                        let mag = boxplus(p, *b).min(MSG_MAX);
                        *mo = if (sg ^ t) < 0 { -mag } else { mag };
                        *b = boxplus(*b, abs(t));
                    }
                }
                for (t, &m) in t.iter_mut().zip(m.iter()) {
                    *t = t.saturating_add(m);
                }
                rotate_out(app, t, code, e);
            }
        }
        if checks_hold(code, app, synd, sgn, rot) {
            return Some(it);
        }
        if progress.stalled(it, || unsatisfied(code, app, synd, sgn, rot)) {
            return None;
        }
    }
    None
}

/// "Infinite" magnitude: the identity of [`boxplus`] (its corrections vanish against it).
pub(super) const INF: i16 = 16000;
/// ln 2 ≈ 0.625 nats in fixed point: the correction's value at 0.
const CORR0: i16 = 10;

#[inline(always)]
pub(super) fn abs(t: i16) -> i16 {
    t.max(0i16.saturating_sub(t))
}

/// |a ⊞ b| for magnitudes a, b ≥ 0: min(a, b) + c(a + b) − c(|a − b|), with
/// c(x) = ln(1 + e^−x) ≈ max(0, 0.625 − x/4) nats (Hu, Eleftheriou, Arnold 2001), in the
/// decoder's fixed point (16 per nat).
#[inline(always)]
pub(super) fn boxplus(a: i16, b: i16) -> i16 {
    let corr = |x: i16| (CORR0 - (x >> 2)).max(0);
    (a.min(b) + corr(a.saturating_add(b)) - corr(abs(a.saturating_sub(b)))).max(0)
}

/// Iterations between counts of unsatisfied checks (a count costs about a third of an
/// iteration).
const STALL_PERIOD: usize = 4;

/// Tracks the fewest unsatisfied checks of an attempt, to stop one that no longer improves.
struct Progress {
    stall: usize,
    best: usize,
    best_it: usize,
}

impl Progress {
    fn new(stall: usize) -> Self {
        Self {
            stall,
            best: usize::MAX,
            best_it: 0,
        }
    }

    /// Whether `stall` iterations have passed since the count (`count()`, taken every
    /// [`STALL_PERIOD`] iterations) last fell.
    #[inline(always)]
    fn stalled(&mut self, it: usize, count: impl FnOnce() -> usize) -> bool {
        if self.stall == 0 || !it.is_multiple_of(STALL_PERIOD) {
            return false;
        }
        let u = count();
        if u < self.best {
            self.best = u;
            self.best_it = it;
            return false;
        }
        it - self.best_it >= self.stall
    }
}

/// Number of checks the hard decisions of `app` do not meet (`acc`, `rot`: z-lane scratch).
#[inline(always)]
fn unsatisfied(
    code: &QcCode,
    app: &[i16],
    synd: &[i16],
    acc: &mut [i16],
    rot: &mut [i16],
) -> usize {
    let z = code.z;
    let mut count = 0;
    for r in 0..code.mb {
        acc.copy_from_slice(&synd[r * z..(r + 1) * z]);
        for e in code.row_start[r]..code.row_start[r + 1] {
            rotate_in(rot, app, code, e);
            for (x, &a) in acc.iter_mut().zip(rot.iter()) {
                *x ^= a;
            }
        }
        count += acc.iter().map(|&x| usize::from(x < 0)).sum::<usize>();
    }
    count
}

/// Whether the hard decisions of `app` meet the syndrome (`acc`, `rot`: z-lane scratch).
#[inline(always)]
fn checks_hold(code: &QcCode, app: &[i16], synd: &[i16], acc: &mut [i16], rot: &mut [i16]) -> bool {
    let z = code.z;
    for r in 0..code.mb {
        acc.copy_from_slice(&synd[r * z..(r + 1) * z]);
        for e in code.row_start[r]..code.row_start[r + 1] {
            rotate_in(rot, app, code, e);
            for (x, &a) in acc.iter_mut().zip(rot.iter()) {
                *x ^= a;
            }
        }
        if acc.iter().fold(0i16, |o, &x| o | x) < 0 {
            return false;
        }
    }
    true
}

/// `t[q] = app[(q + s) mod z]` for base edge `e` (column j, shift s): the variable block as
/// its checks see it. Two block copies, so the arithmetic after it runs over whole aligned
/// z-lane slices: rotated element-wise loops left an odd-length scalar tail in every edge.
#[inline(always)]
fn rotate_in(t: &mut [i16], app: &[i16], code: &QcCode, e: usize) {
    let (z, col, s) = (code.z, code.cols[e] as usize, code.shifts[e] as usize);
    let a = &app[col * z..(col + 1) * z];
    t[..z - s].copy_from_slice(&a[s..]);
    t[z - s..].copy_from_slice(&a[..s]);
}

/// The inverse of [`rotate_in`]: `app[(q + s) mod z] = t[q]`.
#[inline(always)]
fn rotate_out(app: &mut [i16], t: &[i16], code: &QcCode, e: usize) {
    let (z, col, s) = (code.z, code.cols[e] as usize, code.shifts[e] as usize);
    let a = &mut app[col * z..(col + 1) * z];
    a[s..].copy_from_slice(&t[..z - s]);
    a[..s].copy_from_slice(&t[z - s..]);
}
