//! Errors of the vault.

/// What can go wrong storing, fetching, refreshing or repairing an object.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// Secret sharing failed (bad parameters, too few or inconsistent shares…).
    #[error(transparent)]
    Sharing(#[from] kagi_sharing::SharingError),
    /// The key network could not supply enough key; nothing was sent unencrypted.
    #[error("not enough QKD key: need {needed} bytes, {available} available")]
    KeyShortage {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// Key could not be fetched (unknown IDs, node unreachable, refused).
    #[error("key supply: {0}")]
    Keys(String),
    /// A transfer's Wegman–Carter tag did not verify: altered in transit or wrong keys.
    #[error("transfer from {from} failed authentication")]
    BadTransfer {
        /// Sender.
        from: String,
    },
    /// A malformed message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The reconstructed object failed its whole-object ITS MAC.
    #[error("object {0} failed its integrity check")]
    ObjectCorrupt(String),
    /// No such object (or not committed at enough sites).
    #[error("unknown object {0}")]
    UnknownObject(String),
    /// No such site.
    #[error("unknown site {0}")]
    UnknownSite(String),
    /// Fewer sites hold the object than needed.
    #[error("object {object}: only {got} of the {needed} needed sites answered{}", if detail.is_empty() { String::new() } else { format!(" ({detail})") })]
    NotEnoughSites {
        /// Object ID.
        object: String,
        /// Sites needed.
        needed: usize,
        /// Sites that answered with a valid share.
        got: usize,
        /// What the other sites said (empty when nothing to add).
        detail: String,
    },
    /// A storage site could not be reached, or answered with an error it did not explain.
    #[error("site {site}: {reason}")]
    Site {
        /// The site's SAE ID.
        site: String,
        /// Why.
        reason: String,
    },
    /// Storage I/O at a site.
    #[error("site storage: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, VaultError>;
