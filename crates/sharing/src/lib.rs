//! kagi-sharing
