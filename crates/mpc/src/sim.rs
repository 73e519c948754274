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
