//! The boundary between the ETSI 014 HTTP adapter and the key manager driver.

use std::future::Future;

use kagi_km::app::{AppCall, AppReply, Refusal};

/// Something that answers application calls: the node driver in production, anything else in
/// adapter tests. The caller's SAE identity is already inside the [`AppCall`].
pub trait KeyService: Clone + Send + Sync + 'static {
    /// Handles one call.
    fn call(&self, call: AppCall) -> impl Future<Output = Result<AppReply, Refusal>> + Send;
}
