//! The engine's protocols against the clear, three parties in threads.

use std::time::Duration;

use kagi_mpc::circuits::{b2a, less_than, msb};
use kagi_mpc::its::{ItsTransport, MemoryPads};
use kagi_mpc::shares::{deal, reconstruct};
use kagi_mpc::sim::{run3, run3_with};
use kagi_mpc::transport::local::ring;
use kagi_mpc::{LinkStats, MpcError, Peer, Security, Transport, Z2, Z64};

fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

fn both_modes() -> [Security; 2] {
    [Security::SemiHonest, Security::Malicious]
}

#[test]
fn multiplication_and_and_gates_match_the_clear() {
    let mut r = rng(1);
    let x: Vec<u64> = (0..1000).map(|_| r()).collect();
    let y: Vec<u64> = (0..1000).map(|_| r()).collect();
    let xs = deal::<Z64>(&x, &mut r);
    let ys = deal::<Z64>(&y, &mut r);
    let xb = deal::<Z2>(&x, &mut r);
    let yb = deal::<Z2>(&y, &mut r);
    for sec in both_modes() {
        let out = run3(sec, |p| {
            let i = p.id();
            let z = p.mul(&xs[i], &ys[i])?;
            let w = p.mul(&xb[i], &yb[i])?;
            let d = p.dot(&xs[i], &ys[i])?;
            let z = p.reveal(&z)?;
            let w = p.reveal(&w)?;
            let d = p.reveal(&d)?;
            Ok((z, w, d))
        });
        let out: Vec<_> = out.into_iter().map(|r| r.unwrap()).collect();
        let z =
            reconstruct::<Z64>(&[out[0].0.clone(), out[1].0.clone(), out[2].0.clone()]).unwrap();
        let w = reconstruct::<Z2>(&[out[0].1.clone(), out[1].1.clone(), out[2].1.clone()]).unwrap();
        let d =
            reconstruct::<Z64>(&[out[0].2.clone(), out[1].2.clone(), out[2].2.clone()]).unwrap();
        for k in 0..x.len() {
            assert_eq!(z[k], x[k].wrapping_mul(y[k]));
            assert_eq!(w[k], x[k] & y[k]);
        }
        let dot = x
            .iter()
            .zip(&y)
            .fold(0u64, |a, (p, q)| a.wrapping_add(p.wrapping_mul(*q)));
        assert_eq!(d[0], dot, "{sec:?}");
    }
}

#[test]
fn open_random_and_shares_alone_reveal_nothing_obvious() {
    let out = run3(Security::Malicious, |p| {
        let r = p.random::<Z64>(64);
        let v = p.open(&r)?;
        p.check()?;
        Ok((r, v))
    });
    let out: Vec<_> = out.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(out[0].1, out[1].1);
    assert_eq!(out[1].1, out[2].1);
    let rec = reconstruct::<Z64>(&[out[0].0.clone(), out[1].0.clone(), out[2].0.clone()]).unwrap();
    assert_eq!(rec, out[0].1);
}

#[test]
fn comparisons_and_b2a_match_the_clear() {
    let mut r = rng(7);
    let n = 300;
    let x: Vec<u64> = (0..n)
        .map(|k| {
            let v = (r() % 2001) as i64 - 1000;
            if k == 0 {
                (1i64 << 40) as u64
            } else {
                v as u64
            }
        })
        .collect();
    let c: Vec<u64> = (0..n)
        .map(|k| ((k as i64 % 50) * 13 - 300) as u64)
        .collect();
    let xs = deal::<Z64>(&x, &mut r);
    for sec in both_modes() {
        let out = run3(sec, |p| {
            let i = p.id();
            let lt = less_than(p, &xs[i], &c)?;
            let sign = msb(p, &xs[i])?;
            let a = b2a(p, &lt, n)?;
            let count = a.sum();
            Ok((
                p.reveal(&lt)?,
                p.reveal(&sign)?,
                p.reveal(&a)?,
                p.reveal(&count)?,
            ))
        });
        let out: Vec<_> = out.into_iter().map(|r| r.unwrap()).collect();
        let lt =
            reconstruct::<Z2>(&[out[0].0.clone(), out[1].0.clone(), out[2].0.clone()]).unwrap();
        let sign =
            reconstruct::<Z2>(&[out[0].1.clone(), out[1].1.clone(), out[2].1.clone()]).unwrap();
        let a =
            reconstruct::<Z64>(&[out[0].2.clone(), out[1].2.clone(), out[2].2.clone()]).unwrap();
        let count =
            reconstruct::<Z64>(&[out[0].3.clone(), out[1].3.clone(), out[2].3.clone()]).unwrap();
        let mut want = 0;
        for k in 0..n {
            let expect = (x[k] as i64) < (c[k] as i64);
            assert_eq!((lt[k / 64] >> (k % 64)) & 1 == 1, expect, "row {k} {sec:?}");
            assert_eq!((sign[k / 64] >> (k % 64)) & 1 == 1, (x[k] as i64) < 0);
            assert_eq!(a[k], expect as u64);
            want += expect as u64;
        }
        assert_eq!(count[0], want);
    }
}

/// A transport that adds 1 to the first word of the `nth` message party `who` sends to `to`.
struct Cheat<T> {
    inner: T,
    nth: usize,
    sent: usize,
    to: Peer,
}

impl<T: Transport> Transport for Cheat<T> {
    fn send(&mut self, to: Peer, mut msg: Vec<u64>) -> kagi_mpc::Result<()> {
        if to == self.to {
            if self.sent == self.nth && !msg.is_empty() {
                msg[0] = msg[0].wrapping_add(1);
            }
            self.sent += 1;
        }
        self.inner.send(to, msg)
    }
    fn recv(&mut self, from: Peer) -> kagi_mpc::Result<Vec<u64>> {
        self.inner.recv(from)
    }
    fn stats(&self) -> LinkStats {
        self.inner.stats()
    }
}

fn cheating_run(
    cheater: usize,
    nth: usize,
    to: Peer,
    sec: Security,
) -> [kagi_mpc::Result<Vec<u64>>; 3] {
    let mut r = rng(3);
    let x: Vec<u64> = (0..200).map(|_| r() % 1000).collect();
    let y: Vec<u64> = (0..200).map(|_| r() % 1000).collect();
    let xs = deal::<Z64>(&x, &mut r);
    let ys = deal::<Z64>(&y, &mut r);
    let ts: Vec<Cheat<_>> = ring(Duration::from_secs(20))
        .into_iter()
        .enumerate()
        .map(|(i, t)| Cheat {
            inner: t,
            // Message 0 to prev is the seed; 1 is the multiplication; later ones checks.
            nth: if i == cheater { nth } else { usize::MAX },
            sent: 0,
            to,
        })
        .collect();
    let ts: [Cheat<_>; 3] = ts.try_into().ok().unwrap();
    run3_with(ts, sec, |p| {
        let i = p.id();
        let z = p.mul(&xs[i], &ys[i])?;
        let lt = less_than(p, &z, &vec![500_000; 200])?;
        let a = b2a(p, &lt, 200)?;
        let s = p.reveal(&a.sum())?;
        Ok(s.a)
    })
}

#[test]
fn a_cheating_party_is_caught_and_nothing_is_revealed() {
    // Each party in turn adds an error to one of its multiplication messages (message 1 is the
    // first product, later ones are inside the comparison and the conversion).
    for cheater in 0..3 {
        for nth in [1, 2, 5, 9] {
            let out = cheating_run(cheater, nth, Peer::Prev, Security::Malicious);
            for (i, r) in out.iter().enumerate() {
                if i == cheater {
                    continue;
                }
                assert!(
                    matches!(
                        r,
                        Err(MpcError::CheatingDetected(_)) | Err(MpcError::Channel { .. })
                    ),
                    "party {i} must abort when party {cheater} cheats in message {nth}: {:?}",
                    r.as_ref().map(|_| ())
                );
            }
            assert!(
                out.iter()
                    .any(|r| matches!(r, Err(MpcError::CheatingDetected(_)))),
                "someone detects the cheat"
            );
        }
    }
    // The same cheat in semi-honest mode goes through unnoticed (and gives a wrong answer):
    // the checks, not luck, catch it.
    let out = cheating_run(1, 1, Peer::Prev, Security::SemiHonest);
    assert!(out.iter().all(|r| r.is_ok()));
}

fn additive_run(cheater: usize, skip: usize, sec: Security) -> [kagi_mpc::Result<Vec<u64>>; 3] {
    let mut r = rng(4);
    let x: Vec<u64> = (0..200).map(|_| r() % 1000).collect();
    let xs = deal::<Z64>(&x, &mut r);
    run3(sec, |p| {
        let i = p.id();
        if i == cheater {
            p.inject_additive_error(skip, 1 << 20);
        }
        let sq = p.mul(&xs[i], &xs[i])?;
        let lt = less_than(p, &sq, &[250_000; 200])?;
        let a = b2a(p, &lt, 200)?;
        let s = p.reveal(&a.sum())?;
        Ok(s.a)
    })
}

#[test]
fn a_consistent_additive_attack_is_caught_by_the_triple_checks() {
    // The cheater adds an error to a product share and keeps it consistent (its own copy and
    // the copy it sends agree), so only the multiplication checks can see it.
    for cheater in 0..3 {
        // skip 0: the first product (Z_2^64); 1..=7: gates of the comparison (Z_2); 8, 9: the
        // conversion back (Z_2^64).
        for skip in [0, 1, 4, 8, 9] {
            let out = additive_run(cheater, skip, Security::Malicious);
            assert!(
                out.iter().all(|r| r.is_err()),
                "cheater {cheater}, skip {skip}: every party must abort"
            );
            assert!(out
                .iter()
                .any(|r| matches!(r, Err(MpcError::CheatingDetected(_)))));
        }
    }
    let out = additive_run(0, 0, Security::SemiHonest);
    assert!(
        out.iter().all(|r| r.is_ok()),
        "undetected without the checks"
    );
}

#[test]
fn its_channels_pad_every_message_and_count_key() {
    let pads = MemoryPads::new(None);
    let ts: Vec<_> = ring(Duration::from_secs(20))
        .into_iter()
        .enumerate()
        .map(|(i, t)| ItsTransport::new(t, pads.party(i)))
        .collect();
    let ts: [_; 3] = ts.try_into().ok().unwrap();
    let mut r = rng(5);
    let x: Vec<u64> = (0..500).map(|_| r() % 100).collect();
    let xs = deal::<Z64>(&x, &mut r);
    let out = run3_with(ts, Security::Malicious, |p| {
        let i = p.id();
        let sq = p.mul(&xs[i], &xs[i])?;
        let s = p.reveal(&sq.sum())?;
        Ok((s, p.link_stats()))
    });
    let out: Vec<_> = out.into_iter().map(|r| r.unwrap()).collect();
    let s = reconstruct::<Z64>(&[out[0].0.clone(), out[1].0.clone(), out[2].0.clone()]).unwrap();
    assert_eq!(s[0], x.iter().map(|v| v * v).sum::<u64>());
    for (_, st) in &out {
        for k in 0..2 {
            // Every payload byte was padded, plus 32 bytes of MAC key per message.
            // frame = 2 header words + 2 words per key ID (one here) + payload + 2 tag words.
            assert_eq!(st.key_bytes[k], st.bytes_sent[k] - 16 * st.messages_sent[k]);
            assert!(st.key_bytes[k] > 0);
        }
    }
}

#[test]
fn its_channel_rejects_a_tampered_frame_and_runs_dry_cleanly() {
    // Tampering: flip a ciphertext bit of party 0's first message.
    let pads = MemoryPads::new(None);
    let ts: Vec<_> = ring(Duration::from_secs(5))
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            ItsTransport::new(
                Flip {
                    inner: t,
                    on: i == 0,
                },
                pads.party(i),
            )
        })
        .collect();
    let ts: [_; 3] = ts.try_into().ok().unwrap();
    let out = run3_with(ts, Security::SemiHonest, |p| Ok(p.id()));
    assert!(
        matches!(out[2], Err(MpcError::BadTag(_))),
        "{:?}",
        out[2].as_ref().err()
    );
    // A budget too small for the seeds: a clean key error, no unpadded message.
    let pads = MemoryPads::new(Some(100));
    let ts: Vec<_> = ring(Duration::from_secs(5))
        .into_iter()
        .enumerate()
        .map(|(i, t)| ItsTransport::new(t, pads.party(i)))
        .collect();
    let ts: [_; 3] = ts.try_into().ok().unwrap();
    let out = run3_with(ts, Security::SemiHonest, |p| Ok(p.id()));
    assert!(out.iter().any(|r| matches!(r, Err(MpcError::Keys(_)))));
}

struct Flip<T> {
    inner: T,
    on: bool,
}

impl<T: Transport> Transport for Flip<T> {
    fn send(&mut self, to: Peer, mut msg: Vec<u64>) -> kagi_mpc::Result<()> {
        if self.on {
            let n = msg.len();
            msg[n - 3] ^= 1;
            self.on = false;
        }
        self.inner.send(to, msg)
    }
    fn recv(&mut self, from: Peer) -> kagi_mpc::Result<Vec<u64>> {
        self.inner.recv(from)
    }
    fn stats(&self) -> LinkStats {
        self.inner.stats()
    }
}

#[test]
fn a_crashed_party_stops_the_others_with_an_error() {
    let out = run3(Security::SemiHonest, |p| {
        if p.id() == 1 {
            return Err(MpcError::Invalid("crash".into()));
        }
        let mut r = p.random::<Z64>(4);
        for _ in 0..3 {
            r = p.mul(&r, &r)?;
        }
        Ok(())
    });
    assert!(out[0].is_err() && out[2].is_err());
}

#[test]
fn a_bad_triple_is_caught_by_the_sacrifice() {
    // `additive_run` makes 11 multiplication calls (skip 0..=10, see above); the 12th and 13th
    // generate the Z_2^64 and Z_2 triples of the checks. A triple with an error lands, after the
    // shuffle, in a bucket's tail most of the time, where only the sacrifice against the
    // bucket's first triple sees it: without that check this test fails with probability
    // above 1 − 4^-6.
    for cheater in 0..3 {
        for skip in [11, 12] {
            for _ in 0..3 {
                let out = additive_run(cheater, skip, Security::Malicious);
                assert!(
                    out.iter().all(|r| r.is_err()),
                    "cheater {cheater}, skip {skip}: every party must abort"
                );
            }
        }
    }
    // The 14th call does not exist: the same run without a cheat passes.
    assert!(additive_run(0, 13, Security::Malicious)
        .iter()
        .all(|r| r.is_ok()));
}
