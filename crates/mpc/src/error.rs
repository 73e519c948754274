//! Errors of the three-party engine.

/// What can stop a computation. After any error a party's state is unusable (sticky): the
/// caller drops it, and nothing computed so far is revealed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MpcError {
    /// A consistency check failed: some party sent a wrong value, or a share held by two
    /// parties differs between them. The computation aborts and reveals nothing.
    #[error("cheating detected ({0}): computation aborted, nothing revealed")]
    CheatingDetected(String),
    /// A peer closed its channel or went silent.
    #[error("channel to {peer}: {reason}")]
    Channel {
        /// Which peer (`prev`/`next`, or a party name).
        peer: String,
        /// Why.
        reason: String,
    },
    /// A message had the wrong length or shape.
    #[error("malformed message from {peer}: {reason}")]
    Malformed {
        /// Which peer.
        peer: String,
        /// What was wrong.
        reason: String,
    },
    /// A one-time-pad channel's Wegman–Carter tag did not verify.
    #[error("message from {0} failed authentication")]
    BadTag(String),
    /// Key for a one-time-pad channel could not be obtained.
    #[error("key supply: {0}")]
    Keys(String),
    /// The caller used the API wrongly (mismatched lengths, wrong party index…).
    #[error("API misuse: {0}")]
    ApiMisuse(String),
    /// A query or table definition is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, MpcError>;
