//! kagi-quantum
