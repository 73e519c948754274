//! kagi-km
pub mod app;
