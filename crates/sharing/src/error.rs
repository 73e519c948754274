//! Errors of the sharing library.

/// Everything that can go wrong when sharing, recovering, repairing, refreshing or checking
/// shares. None of these is a panic: bad input always comes back as one of these values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharingError {
    /// The threshold `k` was zero.
    #[error("threshold k must be at least 1")]
    ZeroThreshold,
    /// The threshold is larger than the number of shares.
    #[error("threshold k = {k} exceeds the number of shares n = {n}")]
    ThresholdExceedsShares {
        /// Requested threshold.
        k: usize,
        /// Requested number of shares.
        n: usize,
    },
    /// GF(2^8) has only 255 non-zero points, so at most 255 shares.
    #[error("at most 255 shares are possible over GF(2^8), asked for {0}")]
    TooManyShares(usize),
    /// No shares at all (for XOR sharing: `n = 0`).
    #[error("at least one share is needed")]
    NoShares,
    /// Fewer shares than the threshold were given.
    #[error("need at least {needed} shares, got {got}")]
    NotEnoughShares {
        /// Shares needed.
        needed: usize,
        /// Shares given.
        got: usize,
    },
    /// Shares (or pieces) of different lengths were mixed.
    #[error("share {index} holds {got} bytes, expected {expected}")]
    LengthMismatch {
        /// Index of the offending share (0 where not applicable).
        index: u8,
        /// Length of the first share.
        expected: usize,
        /// Length of this share.
        got: usize,
    },
    /// A share index (an evaluation point) outside `1..=n`.
    #[error("unknown share index {index}: indices run from 1 to {n}")]
    UnknownIndex {
        /// The index given.
        index: usize,
        /// Number of shares in the sharing.
        n: u8,
    },
    /// The same share index appeared twice.
    #[error("share index {0} appears more than once")]
    DuplicateIndex(u8),
    /// Shares from different sharings (different k or n) were mixed.
    #[error("shares disagree on parameters: ({k1}, {n1}) vs ({k2}, {n2})")]
    ParameterMismatch {
        /// Threshold of the first share.
        k1: u8,
        /// Share count of the first share.
        n1: u8,
        /// Threshold of the mismatching share.
        k2: u8,
        /// Share count of the mismatching share.
        n2: u8,
    },
    /// A serialized share is shorter than its header says.
    #[error("truncated share: need {needed} bytes, have {got}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// A serialized share does not start with the kagi share header, or has bad header fields.
    #[error("not a kagi share encoding: {0}")]
    BadEncoding(&'static str),
    /// More shares are corrupted than Reed–Solomon decoding can correct.
    #[error("too many corrupted shares: {m} shares with threshold {k} can correct at most {max}")]
    TooManyErrors {
        /// Shares given.
        m: usize,
        /// Threshold.
        k: usize,
        /// Maximum correctable, ⌊(m−k)/2⌋.
        max: usize,
    },
    /// An integrity tag did not verify.
    #[error("tag check failed: share {holder} as checked by party {verifier}")]
    BadTag {
        /// Index of the share.
        holder: u8,
        /// Index of the verifying party.
        verifier: u8,
    },
    /// A repair or refresh message was addressed to someone else or is for another operation.
    #[error("message mismatch: {0}")]
    MessageMismatch(&'static str),
    /// An algebraic-manipulation-detection codeword failed its check: it was altered.
    #[error("the rebuilt secret failed its manipulation check (a share was altered)")]
    Manipulated,
    /// The random source failed; nothing was produced.
    #[error("random source failed: {0}")]
    Random(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, SharingError>;
