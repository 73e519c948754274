//! kagi-node
