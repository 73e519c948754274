//! What the owner needs from a storage site, whether the site is a [`Site`] in this process
//! (library tests) or a separate process reached over mutual TLS ([`crate::net::RemoteSite`]).
//! Every share-carrying argument and result is a sealed [`Envelope`]: the transport never sees a
//! share in the clear.

use crate::envelope::Envelope;
use crate::error::Result;
use crate::keys::KeySupply;
use crate::site::{Manifest, Site};

/// A site's view of one object: what it has committed and any refresh it prepared.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectState {
    /// The committed manifest, if the site holds a share of the object.
    pub committed: Option<Manifest>,
    /// The epoch of a prepared, uncommitted refresh, if any.
    pub prepared: Option<u64>,
}

/// The protocol steps of a storage site, as the owner drives them. See [`Site`] for what each
/// step does; remote implementations add only transport errors.
pub trait SiteApi {
    /// The site's SAE ID.
    fn id(&self) -> &str;
    /// QKD key the site has drawn (as sender) on this handle's calls so far.
    fn key_bytes_used(&self) -> u64;
    /// Put, step 1: store a sealed share as pending.
    fn receive_share(&mut self, env: &Envelope) -> Result<()>;
    /// Put, step 2: make the pending share visible.
    fn commit(&mut self, object: &str) -> Result<()>;
    /// Forget the object (rollback of a put that did not reach every site).
    fn abort(&mut self, object: &str) -> Result<()>;
    /// What the site holds of `object` (no key spent).
    fn state(&mut self, object: &str) -> Result<ObjectState>;
    /// Get: the site's share, sealed for `to`.
    fn send_share(&mut self, object: &str, to: &str) -> Result<Envelope>;
    /// Manifests of the committed objects.
    fn list(&mut self) -> Result<Vec<Manifest>>;
    /// Refresh, step 1.
    fn refresh_deal(&mut self, object: &str) -> Result<Vec<Envelope>>;
    /// Refresh, step 2.
    fn refresh_apply(&mut self, object: &str, updates: &[Envelope]) -> Result<()>;
    /// Refresh, step 3.
    fn refresh_commit(&mut self, object: &str) -> Result<()>;
    /// Discard a prepared refresh.
    fn refresh_abort(&mut self, object: &str) -> Result<()>;
    /// Repair, step 1 (helper).
    fn repair_contribute(
        &mut self,
        object: &str,
        target: usize,
        helpers: &[u8],
    ) -> Result<Vec<Envelope>>;
    /// Repair, step 2 (helper).
    fn repair_aggregate(&mut self, object: &str, received: &[Envelope]) -> Result<Envelope>;
    /// Repair, step 3 (the rebuilt site).
    fn repair_receive(&mut self, manifest: &Manifest, sums: &[Envelope]) -> Result<()>;
}

impl<K: KeySupply> SiteApi for Site<K> {
    fn id(&self) -> &str {
        Site::id(self)
    }
    fn key_bytes_used(&self) -> u64 {
        Site::key_bytes_used(self)
    }
    fn receive_share(&mut self, env: &Envelope) -> Result<()> {
        Site::receive_share(self, env)
    }
    fn commit(&mut self, object: &str) -> Result<()> {
        Site::commit(self, object)
    }
    fn abort(&mut self, object: &str) -> Result<()> {
        Site::abort(self, object)
    }
    fn state(&mut self, object: &str) -> Result<ObjectState> {
        Ok(ObjectState {
            committed: self.manifest(object),
            prepared: self.has_prepared_refresh(object),
        })
    }
    fn send_share(&mut self, object: &str, to: &str) -> Result<Envelope> {
        Site::send_share(self, object, to)
    }
    fn list(&mut self) -> Result<Vec<Manifest>> {
        Site::list(self)
    }
    fn refresh_deal(&mut self, object: &str) -> Result<Vec<Envelope>> {
        Site::refresh_deal(self, object)
    }
    fn refresh_apply(&mut self, object: &str, updates: &[Envelope]) -> Result<()> {
        Site::refresh_apply(self, object, updates)
    }
    fn refresh_commit(&mut self, object: &str) -> Result<()> {
        Site::refresh_commit(self, object)
    }
    fn refresh_abort(&mut self, object: &str) -> Result<()> {
        Site::refresh_abort(self, object)
    }
    fn repair_contribute(
        &mut self,
        object: &str,
        target: usize,
        helpers: &[u8],
    ) -> Result<Vec<Envelope>> {
        Site::repair_contribute(self, object, target, helpers)
    }
    fn repair_aggregate(&mut self, object: &str, received: &[Envelope]) -> Result<Envelope> {
        Site::repair_aggregate(self, object, received)
    }
    fn repair_receive(&mut self, manifest: &Manifest, sums: &[Envelope]) -> Result<()> {
        Site::repair_receive(self, manifest, sums)
    }
}
