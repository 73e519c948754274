//! `live_bytes` accounting with lazy keys: only produced bytes count. Its own test binary: the
//! counter is process-wide, so no other test may create keys while this one reads it.

use std::sync::Arc;

use kagi_keymat::{live_bytes, Key, LazyKeySource};

/// Byte `o` is `o mod 251`.
struct Ramp;

impl LazyKeySource for Ramp {
    fn fill(&self, offset: u64, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            *b = ((offset + i as u64) % 251) as u8;
        }
    }
}

#[test]
fn only_produced_bytes_of_lazy_keys_are_counted() {
    let base = live_bytes();
    let k = Key::lazy(Arc::new(Ramp), 10, 1000);
    let c = k.clone();
    let mut half = k.copy_range(0..500);
    let front = half.take_front(100);
    assert_eq!(
        live_bytes(),
        base,
        "lengths, clones and ranges produce nothing"
    );
    assert_eq!(front.expose()[..3], [10, 11, 12]);
    assert_eq!(live_bytes(), base + 100, "a read produces the range once");
    let _ = front.expose();
    assert_eq!(live_bytes(), base + 100);
    // `k` and `c` share one lazy range: produced once for both.
    let _ = (k.expose(), c.expose());
    assert_eq!(live_bytes(), base + 1100);
    // A write to a shared, produced range gives the writer its own copy.
    let mut w = k.clone();
    w.expose_mut()[0] = 0;
    assert_eq!(live_bytes(), base + 2100);
    // A write to a range nobody shares takes its bytes over: no copy.
    let mut own = half.copy_range(0..50);
    let _ = own.expose();
    assert_eq!(live_bytes(), base + 2150);
    own.expose_mut()[0] = 0;
    assert_eq!(live_bytes(), base + 2150);
    // Extending from a lazy key produces its bytes into the extended key only.
    let mut e = Key::zeroed(4);
    e.extend_from(&half);
    assert_eq!(live_bytes(), base + 2150 + 404);
    // The shared range's produced bytes go with its last holder.
    drop((k, c));
    assert_eq!(live_bytes(), base + 100 + 1000 + 50 + 404);
    drop((w, own, e, front, half));
    assert_eq!(live_bytes(), base);
}
