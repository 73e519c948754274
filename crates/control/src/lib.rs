//! kagi-control
