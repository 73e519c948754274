//! kagi-km
