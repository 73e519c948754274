//! One party of the three-party engine: the protocols on replicated shares.
//!
//! A [`Party`] owns its [`Transport`] to its two neighbours and two pseudorandom streams, one
//! keyed by the seed it shares with its next neighbour and one by the seed it shares with its
//! previous one (correlated randomness: zero-sharings and random sharings cost no messages).
//! Every protocol is a method; each message round is "compute, send to neighbours, receive".
//!
//! **Security modes.** In [`Security::SemiHonest`] the parties follow the protocol and nothing
//! is checked. In [`Security::Malicious`] (security with abort, honest majority) every value a
//! party receives that another party could also have computed is folded into a running hash and
//! compared ([`Party::check`]); every multiplication is recorded and later verified against
//! multiplication triples that were themselves verified by cut-and-choose and bucketing
//! ([`crate::verify`], after Araki et al., IEEE S&P 2017, and Furukawa et al., Eurocrypt 2017).
//! [`Party::reveal`] runs all outstanding checks first, so a party that sent a wrong value makes
//! every honest party stop with [`MpcError::CheatingDetected`] before any output exists.

use aws_lc_rs::digest::{Context, SHA256};
use kagi_keymat::Key;
use zerocopy::IntoBytes;

use crate::error::{MpcError, Result};
use crate::prg::{Prg, SEED_LEN};
use crate::ring::{Ring, Z2, Z64};
use crate::shares::Shares;
use crate::transport::{LinkStats, Peer, Transport};

/// Security against what a corrupted party may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Security {
    /// Parties follow the protocol; one party alone still learns nothing.
    SemiHonest,
    /// A party that deviates is caught and the computation aborts without output.
    Malicious,
}

/// The two seeds of a party: `own` is shared with the previous party (which calls it its
/// `next`), `next` with the next party.
pub struct Seeds {
    /// Seed `k_i`.
    pub own: Key,
    /// Seed `k_{i+1}`.
    pub next: Key,
}

impl Seeds {
    /// Seeds from pairwise keys already shared with the neighbours (for example QKD keys).
    pub fn from_keys(own: Key, next: Key) -> Self {
        Self { own, next }
    }

    /// Makes the seeds over the transport: draws `k_i` from the OS, sends it to the previous
    /// party and receives `k_{i+1}` from the next (the transport must be confidential: TLS, or
    /// one-time pad).
    pub fn exchange<T: Transport>(t: &mut T) -> Result<Self> {
        let mut own = Key::zeroed(SEED_LEN);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, own.expose_mut());
        let words: Vec<u64> = own
            .expose()
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        t.send(Peer::Prev, words)?;
        let mut got = t.recv(Peer::Next)?;
        if got.len() * 8 != SEED_LEN {
            return Err(MpcError::Malformed {
                peer: "next".into(),
                reason: "seed length".into(),
            });
        }
        let next = Key::from_slice(got.as_bytes());
        got.iter_mut().for_each(|w| *w = 0);
        Ok(Self { own, next })
    }
}

/// Unverified multiplications `z = x·y` of one ring, concatenated.
#[derive(Default)]
pub(crate) struct MulLog {
    pub(crate) x: (Vec<u64>, Vec<u64>),
    pub(crate) y: (Vec<u64>, Vec<u64>),
    pub(crate) z: (Vec<u64>, Vec<u64>),
}

impl MulLog {
    fn push<R: Ring>(&mut self, x: &Shares<R>, y: &Shares<R>, z: &Shares<R>) {
        self.x.0.extend_from_slice(&x.a);
        self.x.1.extend_from_slice(&x.b);
        self.y.0.extend_from_slice(&y.a);
        self.y.1.extend_from_slice(&y.b);
        self.z.0.extend_from_slice(&z.a);
        self.z.1.extend_from_slice(&z.b);
    }
    pub(crate) fn len(&self) -> usize {
        self.x.0.len()
    }
}

/// Counters of one party's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartyStats {
    /// Multiplications in Z_2^64 (elements).
    pub mults: u64,
    /// AND gates (bits).
    pub ands: u64,
    /// Communication rounds.
    pub rounds: u64,
    /// Multiplications verified (both rings, in words).
    pub verified_words: u64,
}

/// One of the three parties (see the module docs).
pub struct Party<T: Transport> {
    id: usize,
    t: T,
    own: Prg,
    next: Prg,
    security: Security,
    /// Hash of what the next party must also have (sent at [`Party::check`]).
    to_next: Context,
    /// Hash of what the previous party must also have.
    expect: Context,
    pub(crate) logs: [MulLog; 2],
    stats: PartyStats,
    failed: bool,
    /// Fault injection for tests: (multiplication calls to skip, error to add).
    cheat: Option<(usize, u64)>,
}

impl<T: Transport> Party<T> {
    /// Party `id` (0, 1 or 2) on transport `t`.
    pub fn new(id: usize, t: T, seeds: Seeds, security: Security) -> Result<Self> {
        if id > 2 {
            return Err(MpcError::ApiMisuse(format!("party index {id}")));
        }
        Ok(Self {
            id,
            t,
            own: Prg::new(&seeds.own)?,
            next: Prg::new(&seeds.next)?,
            security,
            to_next: Context::new(&SHA256),
            expect: Context::new(&SHA256),
            logs: [MulLog::default(), MulLog::default()],
            stats: PartyStats::default(),
            failed: false,
            cheat: None,
        })
    }

    /// Makes seeds over `t` ([`Seeds::exchange`]) and returns the party.
    pub fn connect(id: usize, mut t: T, security: Security) -> Result<Self> {
        let seeds = Seeds::exchange(&mut t)?;
        Self::new(id, t, seeds, security)
    }

    /// This party's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The security mode.
    pub fn security(&self) -> Security {
        self.security
    }

    /// Work counters.
    pub fn stats(&self) -> PartyStats {
        self.stats
    }

    /// What the transport carried (bytes and key per neighbour).
    pub fn link_stats(&self) -> LinkStats {
        self.t.stats()
    }

    /// The transport (to take it back after a computation).
    pub fn into_transport(self) -> T {
        self.t
    }

    /// Fault injection (tests of the malicious mode only): after `skip` more multiplication
    /// calls, the next one adds `error` to this party's first product share, both the copy it
    /// keeps and the one it sends — the consistent "additive attack" that opening checks alone
    /// cannot see.
    #[doc(hidden)]
    pub fn inject_additive_error(&mut self, skip: usize, error: u64) {
        self.cheat = Some((skip, error));
    }

    fn guard(&self) -> Result<()> {
        if self.failed {
            return Err(MpcError::ApiMisuse(
                "this party already failed; start a new computation".into(),
            ));
        }
        Ok(())
    }

    fn fail<X>(&mut self, e: MpcError) -> Result<X> {
        self.failed = true;
        Err(e)
    }

    pub(crate) fn send(&mut self, to: Peer, msg: Vec<u64>) -> Result<()> {
        match self.t.send(to, msg) {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    pub(crate) fn recv(&mut self, from: Peer, len: usize) -> Result<Vec<u64>> {
        let m = match self.t.recv(from) {
            Ok(m) => m,
            Err(e) => return self.fail(e),
        };
        if m.len() != len {
            return self.fail(MpcError::Malformed {
                peer: from.name().into(),
                reason: format!("expected {len} words, got {}", m.len()),
            });
        }
        Ok(m)
    }

    /// Random shares of `n` uniformly random elements nobody knows (no messages).
    pub fn random<R: Ring>(&mut self, n: usize) -> Shares<R> {
        let mut a = vec![0u64; n];
        let mut b = vec![0u64; n];
        self.own.xor_into(&mut a);
        self.next.xor_into(&mut b);
        Shares::from_parts(a, b)
    }

    /// Shares of a public vector (no messages).
    pub fn public<R: Ring>(&self, v: &[u64]) -> Shares<R> {
        Shares::<R>::zeros(v.len()).add_public(self.id, v)
    }

    /// Multiplies elementwise (one round, one word sent per element). In malicious mode the
    /// product is recorded for [`Party::verify`].
    pub fn mul<R: Ring>(&mut self, x: &Shares<R>, y: &Shares<R>) -> Result<Shares<R>> {
        let z = self.mul_unchecked(x, y)?;
        if self.security == Security::Malicious {
            self.logs[R::INDEX].push(x, y, &z);
        }
        Ok(z)
    }

    /// Several independent multiplications in one round.
    pub fn mul_many<R: Ring>(
        &mut self,
        pairs: &[(&Shares<R>, &Shares<R>)],
    ) -> Result<Vec<Shares<R>>> {
        let xs: Vec<&Shares<R>> = pairs.iter().map(|p| p.0).collect();
        let ys: Vec<&Shares<R>> = pairs.iter().map(|p| p.1).collect();
        let z = self.mul(&Shares::concat(&xs), &Shares::concat(&ys))?;
        let mut out = Vec::with_capacity(pairs.len());
        let mut at = 0;
        for p in pairs {
            out.push(z.slice(at..at + p.0.len()));
            at += p.0.len();
        }
        Ok(out)
    }

    /// The semi-honest multiplication: party `i` computes
    /// `z_i = x_i y_i + x_i y_{i+1} + x_{i+1} y_i + α_i` with `α` a fresh zero-sharing from the
    /// two PRG streams, sends `z_i` to the previous party and receives `z_{i+1}` from the next.
    pub(crate) fn mul_unchecked<R: Ring>(
        &mut self,
        x: &Shares<R>,
        y: &Shares<R>,
    ) -> Result<Shares<R>> {
        self.guard()?;
        let n = x.len();
        if y.len() != n {
            return Err(MpcError::ApiMisuse(format!(
                "multiplying {n} by {} elements",
                y.len()
            )));
        }
        // Chunked so that each piece is computed, copied out and sent while it is in cache,
        // and so that the messages are small allocations the allocator recycles.
        let mut z = vec![0u64; n];
        let mut r = vec![0u64; CHUNK.min(n)];
        let mut chunks = 0usize;
        let cheat = match self.cheat {
            Some((0, e)) => {
                self.cheat = None;
                Some(e)
            }
            Some((k, e)) => {
                self.cheat = Some((k - 1, e));
                None
            }
            None => None,
        };
        for (k, zc) in z.chunks_mut(CHUNK).enumerate() {
            let at = k * CHUNK;
            let m = zc.len();
            if R::INDEX == Z2::INDEX {
                // α_i = F(k_i) ⊕ F(k_{i+1}): both streams XOR straight into the output.
                self.own.xor_into(zc);
                self.next.xor_into(zc);
            } else {
                let rc = &mut r[..m];
                rc.fill(0);
                self.own.xor_into(zc);
                self.next.xor_into(rc);
                for (zi, ri) in zc.iter_mut().zip(rc.iter()) {
                    *zi = R::sub(*zi, *ri);
                }
            }
            mul_local::<R>(
                &x.a[at..at + m],
                &x.b[at..at + m],
                &y.a[at..at + m],
                &y.b[at..at + m],
                zc,
            );
            if let (Some(e), 0) = (cheat, k) {
                zc[0] = R::add(zc[0], e);
            }
            let msg = zc.to_vec();
            self.send(Peer::Prev, msg)?;
            chunks += 1;
        }
        let mut b = Vec::with_capacity(n);
        for k in 0..chunks {
            let m = CHUNK.min(n - k * CHUNK);
            let got = self.recv(Peer::Next, m)?;
            b.extend_from_slice(&got);
        }
        if n == 0 {
            // Keep the round structure for empty inputs: an empty message each way.
            self.send(Peer::Prev, Vec::new())?;
            self.recv(Peer::Next, 0)?;
        }
        self.stats.rounds += 1;
        if R::INDEX == Z64::INDEX {
            self.stats.mults += n as u64;
        } else {
            self.stats.ands += 64 * n as u64;
        }
        Ok(Shares::from_parts(z, b))
    }

    /// Inner product `Σ x_k y_k` in one round with a single word sent (semi-honest mode); in
    /// malicious mode, elementwise products (verified) summed.
    pub fn dot<R: Ring>(&mut self, x: &Shares<R>, y: &Shares<R>) -> Result<Shares<R>> {
        if self.security == Security::Malicious {
            return Ok(self.mul(x, y)?.sum());
        }
        self.guard()?;
        if y.len() != x.len() {
            return Err(MpcError::ApiMisuse("dot of unequal lengths".into()));
        }
        let mut z = [0u64; 1];
        let mut r = [0u64; 1];
        self.own.xor_into(&mut z);
        self.next.xor_into(&mut r);
        let mut acc = R::sub(z[0], r[0]);
        for k in 0..x.len() {
            acc = R::add(
                acc,
                R::add(
                    R::add(R::mul(x.a[k], y.a[k]), R::mul(x.a[k], y.b[k])),
                    R::mul(x.b[k], y.a[k]),
                ),
            );
        }
        self.send(Peer::Prev, vec![acc])?;
        let b = self.recv(Peer::Next, 1)?;
        self.stats.rounds += 1;
        Ok(Shares::from_parts(vec![acc], b))
    }

    /// Opens `x` to all three parties (one round). Party `i` gets its missing share `x_{i+2}`
    /// from the next party; in malicious mode the previous party, which holds the same share,
    /// vouches for it by hash at the next [`Party::check`].
    pub fn open<R: Ring>(&mut self, x: &Shares<R>) -> Result<Vec<u64>> {
        self.open_owned(x.clone())
    }

    /// [`Party::open`] on shares the caller no longer needs (no copy of the message).
    pub fn open_owned<R: Ring>(&mut self, x: Shares<R>) -> Result<Vec<u64>> {
        self.guard()?;
        let n = x.len();
        let (a, b) = (x.a, x.b);
        let mut out = a.clone();
        for (o, &q) in out.iter_mut().zip(&b) {
            *o = R::add(*o, q);
        }
        self.send(Peer::Prev, b)?;
        let missing = self.recv(Peer::Next, n)?;
        self.stats.rounds += 1;
        if self.security == Security::Malicious {
            self.to_next.update(a.as_bytes());
            self.expect.update(missing.as_bytes());
        }
        for (o, &m) in out.iter_mut().zip(&missing) {
            *o = R::add(*o, m);
        }
        Ok(out)
    }

    /// Checks (at the next [`Party::check`], no round of its own) that every element of `w` is
    /// zero: party `i` vouches to the next party that `x_{i+2} = -(x_i + x_{i+1})`, which the next
    /// party holds. Only in malicious mode; a no-op otherwise.
    pub fn assert_zero<R: Ring>(&mut self, w: &Shares<R>) {
        if self.security != Security::Malicious {
            return;
        }
        let implied: Vec<u64> =
            w.a.iter()
                .zip(&w.b)
                .map(|(&p, &q)| R::neg(R::add(p, q)))
                .collect();
        self.to_next.update(implied.as_bytes());
        self.expect.update(w.b.as_bytes());
    }

    /// Compares the hashes of everything opened or asserted since the last check with the
    /// neighbours (one round). Fails with [`MpcError::CheatingDetected`] on any difference.
    pub fn check(&mut self) -> Result<()> {
        self.guard()?;
        if self.security != Security::Malicious {
            return Ok(());
        }
        let mine = std::mem::replace(&mut self.to_next, Context::new(&SHA256)).finish();
        let expect = std::mem::replace(&mut self.expect, Context::new(&SHA256)).finish();
        let words = |d: &[u8]| -> Vec<u64> {
            d.chunks(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect()
        };
        self.send(Peer::Next, words(mine.as_ref()))?;
        let got = self.recv(Peer::Prev, 4)?;
        self.stats.rounds += 1;
        let want = words(expect.as_ref());
        let same = got
            .iter()
            .zip(&want)
            .fold(0u64, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if !same {
            return self.fail(MpcError::CheatingDetected(format!(
                "party {} and its previous neighbour saw different values",
                self.id
            )));
        }
        Ok(())
    }

    /// Verifies every recorded multiplication and every opened value (malicious mode; a no-op
    /// in semi-honest mode).
    pub fn verify(&mut self) -> Result<()> {
        self.guard()?;
        if self.security != Security::Malicious {
            return Ok(());
        }
        let r = crate::verify::verify_all(self);
        if let Err(e) = r {
            return self.fail(e);
        }
        Ok(())
    }

    /// Checks that both copies of every share of `x` agree between neighbours (malicious mode):
    /// for inputs loaded from storage, where a corrupted copy at one site would otherwise go
    /// unnoticed until an opening. Checked at the next [`Party::check`].
    pub fn assert_consistent<R: Ring>(&mut self, x: &Shares<R>) {
        if self.security != Security::Malicious {
            return;
        }
        // The next party holds our `b` as its `a`.
        self.to_next.update(x.b.as_bytes());
        self.expect.update(x.a.as_bytes());
    }

    /// Ends the computation for `x`: runs every outstanding check, then hands this party's two
    /// shares of `x` to the caller for the result's recipient. Nothing is returned if any check
    /// fails.
    pub fn reveal<R: Ring>(&mut self, x: &Shares<R>) -> Result<Shares<R>> {
        self.verify()?;
        self.check()?;
        Ok(x.clone())
    }
}

/// Words per message of a multiplication.
const CHUNK: usize = 8192;

/// `z += x_a y_a + x_a y_b + x_b y_a` (the local part of a multiplication).
#[inline]
fn mul_local<R: Ring>(xa: &[u64], xb: &[u64], ya: &[u64], yb: &[u64], z: &mut [u64]) {
    let n = z.len();
    let (xa, xb, ya, yb) = (&xa[..n], &xb[..n], &ya[..n], &yb[..n]);
    for k in 0..n {
        let t = R::add(R::mul(xa[k], R::add(ya[k], yb[k])), R::mul(xb[k], ya[k]));
        z[k] = R::add(z[k], t);
    }
}
