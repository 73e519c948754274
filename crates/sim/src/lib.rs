//! kagi-sim
