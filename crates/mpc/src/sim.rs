//! Running the three parties in one process, one thread each, over in-process channels.

use std::time::Duration;

use crate::error::{MpcError, Result};
use crate::party::{Party, Security};
use crate::transport::local::{ring, LocalTransport};
use crate::transport::Transport;

/// Runs `f(party)` for parties 0, 1 and 2 in three threads on an in-process ring and returns
/// their results in party order.
pub fn run3<O, F>(security: Security, f: F) -> [Result<O>; 3]
where
    O: Send,
    F: Fn(&mut Party<LocalTransport>) -> Result<O> + Sync,
{
    run3_with(ring(Duration::from_secs(60)), security, f)
}

/// Like [`run3`] on the given transports (for example wrapped to misbehave, or padded).
pub fn run3_with<T, O, F>(transports: [T; 3], security: Security, f: F) -> [Result<O>; 3]
where
    T: Transport,
    O: Send,
    F: Fn(&mut Party<T>) -> Result<O> + Sync,
{
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = transports
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                s.spawn(move || {
                    let mut p = Party::connect(i, t, security)?;
                    f(&mut p)
                })
            })
            .collect();
        let mut out = handles.into_iter().map(|h| {
            h.join().unwrap_or_else(|_| {
                Err(MpcError::Channel {
                    peer: "self".into(),
                    reason: "party thread panicked".into(),
                })
            })
        });
        // Three handles were spawned, so three results come out.
        let a = out
            .next()
            .unwrap_or_else(|| Err(MpcError::ApiMisuse("missing".into())));
        let b = out
            .next()
            .unwrap_or_else(|| Err(MpcError::ApiMisuse("missing".into())));
        let c = out
            .next()
            .unwrap_or_else(|| Err(MpcError::ApiMisuse("missing".into())));
        [a, b, c]
    })
}

/// What a query run in one process returns: the result, and what each party's transport
/// carried.
#[derive(Debug)]
pub struct LocalQuery {
    /// The decoded result.
    pub result: serde_json::Value,
    /// Per party: bytes and key sent to its previous and next neighbour.
    pub links: [crate::LinkStats; 3],
}

/// Runs a planned query on the three parties' table shares in one process (tests, benchmarks,
/// demos), reconstructing the result the way the owner does: both copies of every output share
/// must agree.
pub fn query_local(
    shares: &[crate::table::TableShare; 3],
    schema: &crate::table::Schema,
    plan: &crate::query::Plan,
    security: Security,
    min_group: u64,
) -> Result<LocalQuery> {
    let out = run3(security, |p| {
        let i = p.id();
        let o = crate::query::execute(p, &shares[i], schema, plan, min_group)?;
        let o = p.reveal(&o)?;
        Ok((o, p.link_stats()))
    });
    let mut parts = Vec::new();
    let mut links = [crate::LinkStats::default(); 3];
    let mut errors = Vec::new();
    for (i, r) in out.into_iter().enumerate() {
        match r {
            Ok((o, l)) => {
                parts.push(o);
                links[i] = l;
            }
            Err(e) => errors.push(e),
        }
    }
    // The most telling error: a detected cheat, rather than a peer that stopped because of it.
    if let Some(k) = errors
        .iter()
        .position(|e| matches!(e, MpcError::CheatingDetected(_)))
    {
        return Err(errors.swap_remove(k));
    }
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    let parts: [crate::Shares<crate::Z64>; 3] = match parts.try_into() {
        Ok(p) => p,
        Err(_) => return Err(MpcError::ApiMisuse("three parties".into())),
    };
    let words = crate::shares::reconstruct(&parts)
        .ok_or_else(|| MpcError::CheatingDetected("the parties' result shares disagree".into()))?;
    Ok(LocalQuery {
        result: crate::query::decode(schema, plan, &words, min_group)?,
        links,
    })
}
