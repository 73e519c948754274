//! Randomness behind a trait, so that a hardware or true random source can be plugged in.
//!
//! Everything in this crate that needs randomness takes `&mut impl RandomSource`. Any
//! [`rand_core`] generator that is marked cryptographic (`RngCore + CryptoRng`: `OsRng`,
//! `ChaCha20Rng`, a QRNG driver implementing those traits) is a `RandomSource` automatically; a
//! device that does not speak `rand_core` implements [`RandomSource::fill`] directly and reports
//! failures (an unplugged QRNG, a failed health test) as errors rather than panics.

use crate::error::{Result, SharingError};

/// A source of uniformly random bytes suitable for secret sharing.
pub trait RandomSource {
    /// Fills `dest` entirely with uniformly random bytes, or fails without claiming success.
    fn fill(&mut self, dest: &mut [u8]) -> Result<()>;
}

impl<R: rand_core::RngCore + rand_core::CryptoRng> RandomSource for R {
    fn fill(&mut self, dest: &mut [u8]) -> Result<()> {
        self.try_fill_bytes(dest)
            .map_err(|e| SharingError::Random(e.to_string()))
    }
}

/// The operating system's generator (`getrandom`).
pub type OsRandom = rand_core::OsRng;

#[cfg(test)]
mod tests {
    use super::*;

    struct Broken;
    impl RandomSource for Broken {
        fn fill(&mut self, _dest: &mut [u8]) -> Result<()> {
            Err(SharingError::Random("health test failed".into()))
        }
    }

    #[test]
    fn os_random_fills() {
        let mut a = [0u8; 64];
        OsRandom::default().fill(&mut a).unwrap();
        assert!(a.iter().any(|&b| b != 0));
    }

    #[test]
    fn custom_source_errors_propagate() {
        let e =
            crate::split(b"secret", crate::Params::new(2, 3).unwrap(), &mut Broken).unwrap_err();
        assert!(matches!(e, SharingError::Random(_)));
    }
}
