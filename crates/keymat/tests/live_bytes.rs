//! `live_bytes` accounting with keys that share their bytes. Its own test binary: the counter is
//! process-wide, so no other test may create keys while this one reads it.

use kagi_keymat::{live_bytes, Key};

#[test]
fn shared_bytes_are_counted_once_and_released_by_the_last_holder() {
    let base = live_bytes();
    let mut k = Key::from_slice(&[7; 100]);
    assert_eq!(live_bytes(), base + 100);
    let mut c = k.clone();
    assert_eq!(live_bytes(), base + 100, "a clone shares, it does not copy");
    c.expose_mut()[0] = 1;
    assert_eq!(
        live_bytes(),
        base + 200,
        "a write gives the clone its own copy"
    );
    let front = k.take_front(30);
    assert_eq!(live_bytes(), base + 200, "30 bytes moved out, none added");
    let shared = k.clone();
    let rest = k.take_front(10);
    // `k` shared its 70 bytes with `shared`: it now holds its own copy of the last 60.
    assert_eq!(live_bytes(), base + 100 + 30 + 70 + 10 + 60);
    drop(shared);
    assert_eq!(live_bytes(), base + 100 + 30 + 10 + 60);
    k.extend_from(&rest);
    assert_eq!(live_bytes(), base + 100 + 30 + 10 + 70);
    drop((k, c, front, rest));
    assert_eq!(live_bytes(), base);
}
