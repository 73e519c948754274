//! External keys as kagi vault objects. The proxy is an SAE of a trusted node and the owner of
//! its key objects:
//!
//! * **create**: 32 bytes of QKD key from the node (ETSI 014 `enc_keys`, addressed to the
//!   first storage site's SAE; its key ID is never sent anywhere, so nobody else ever fetches it)
//!   XOR 32 bytes from the operating system's generator — as strong as the better of the two —
//!   then split k-of-n and stored one share per site, each transfer one-time-padded with QKD key
//!   ([`kagi_vault::client::put_with`]); the bytes are dropped (zeroized) at once;
//! * **rebuild**: k shares fetched (each one-time-padded for the owner), recombined and checked
//!   against the object's MAC, in memory only;
//! * **destroy** (revoke): every site deletes its share; with fewer than k shares left anywhere
//!   the key is gone for good;
//! * **health**: the node answers ETSI 014 status, and each site its health call.
//!
//! Methods block on the runtime `handle` given at construction: call them from outside async
//! context (the proxy uses `spawn_blocking`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kagi_keymat::Key;
use kagi_node::config::TlsConfig;
use kagi_vault::api::SiteApi;
use kagi_vault::keys::KeySupply;
use kagi_vault::net::{EtsiKeys, RemoteSite};
use kagi_vault::{client, VaultError};
use tokio::runtime::Handle;

use crate::backend::{Backend, BackendError, Created};
use crate::config::VaultConfig;
use crate::wire::FleetMember;

/// How long creating a key may wait for QKD key (a network just started is still filling).
const CREATE_WAIT: Duration = Duration::from_secs(120);

/// External keys stored as vault objects.
pub struct VaultBackend {
    cfg: VaultConfig,
    handle: Handle,
    site_tls: Arc<rustls::ClientConfig>,
    /// Connections kept between rebuilds (one rebuild at a time uses them).
    conns: Mutex<Option<(EtsiKeys, Vec<RemoteSite>)>>,
}

fn map_err(e: VaultError) -> BackendError {
    match e {
        VaultError::UnknownObject(o) => BackendError::NotFound(o),
        VaultError::NotEnoughSites { object, detail, .. } if detail.is_empty() => {
            BackendError::NotFound(format!("{object}: fewer than k sites hold shares"))
        }
        e @ (VaultError::KeyShortage { .. }
        | VaultError::Site { .. }
        | VaultError::Keys(_)
        | VaultError::NotEnoughSites { .. }) => BackendError::Unavailable(e.to_string()),
        e => BackendError::Other(e.to_string()),
    }
}

impl VaultBackend {
    /// The backend for `cfg` (paths absolute), blocking on `handle`.
    pub fn new(cfg: VaultConfig, handle: Handle) -> anyhow::Result<Self> {
        let site_tls = kagi_node::tls::peer_client_config(&TlsConfig {
            ca: cfg.ca.clone(),
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
        })?;
        Ok(Self {
            cfg,
            handle,
            site_tls,
            conns: Mutex::new(None),
        })
    }

    fn owner(&self) -> Result<EtsiKeys, BackendError> {
        self.owner_waiting(Duration::from_millis(self.cfg.key_wait_ms))
    }

    fn owner_waiting(&self, wait: Duration) -> Result<EtsiKeys, BackendError> {
        EtsiKeys::new(
            &self.cfg.owner_sae,
            &self.cfg.etsi014_url,
            &self.cfg.ca,
            &self.cfg.cert,
            &self.cfg.key,
            self.handle.clone(),
            wait,
        )
        .map_err(map_err)
    }

    fn sites(&self) -> Result<Vec<RemoteSite>, BackendError> {
        self.sites_waiting(Duration::from_millis(self.cfg.key_wait_ms))
    }

    fn sites_waiting(&self, wait: Duration) -> Result<Vec<RemoteSite>, BackendError> {
        self.cfg
            .sites
            .iter()
            .map(|s| {
                RemoteSite::new(
                    &s.id,
                    &s.url,
                    self.site_tls.clone(),
                    self.handle.clone(),
                    wait,
                )
                .map_err(map_err)
            })
            .collect()
    }
}

impl Backend for VaultBackend {
    fn create(&self, id: &str) -> Result<Created, BackendError> {
        let n = usize::from(self.cfg.n);
        let first = self
            .cfg
            .sites
            .first()
            .ok_or_else(|| BackendError::Other("no storage sites configured".into()))?;
        // Creation is an operator's command, not a KMS call: it may wait for key.
        let mut owners = (0..n)
            .map(|_| self.owner_waiting(CREATE_WAIT))
            .collect::<Result<Vec<_>, _>>()?;
        let mut sites = self.sites_waiting(CREATE_WAIT)?;
        // QKD part of the material.
        let batch = owners[0].enc_keys(&first.id, 32).map_err(map_err)?;
        let mut material = Key::zeroed(32);
        aws_lc_rs::rand::fill(material.expose_mut())
            .map_err(|_| BackendError::Other("no operating-system randomness".into()))?;
        material.xor_in_place(&batch.key.expose()[..32]);
        drop(batch);
        let r = client::put_with(
            &mut owners,
            &mut sites,
            &format!("xks-key:{id}"),
            material.expose(),
            usize::from(self.cfg.k),
            n,
        )
        .map_err(map_err)?;
        let spent = owners.iter().map(KeySupply::key_bytes_used).sum::<u64>()
            + sites.iter().map(SiteApi::key_bytes_used).sum::<u64>();
        Ok(Created {
            object: r.object,
            k: self.cfg.k,
            n: self.cfg.n,
            sites: r.sites,
            qkd_key_bytes: spent,
        })
    }

    fn rebuild(&self, object: &str) -> Result<Key, BackendError> {
        let mut slot = self
            .conns
            .lock()
            .map_err(|_| BackendError::Other("poisoned".into()))?;
        let (owner, sites) = match slot.as_mut() {
            Some(c) => c,
            None => slot.insert((self.owner()?, self.sites()?)),
        };
        match client::get(owner, sites, object) {
            Ok(g) => Ok(g.data),
            Err(e) => {
                // Start afresh next time (a site may have restarted under a kept connection).
                *slot = None;
                Err(map_err(e))
            }
        }
    }

    fn destroy(&self, object: &str) -> Result<Vec<String>, BackendError> {
        let mut sites = self.sites()?;
        let mut gone = Vec::new();
        let mut failed = Vec::new();
        for s in sites.iter_mut() {
            match s.abort(object) {
                Ok(()) => gone.push(s.id().to_string()),
                Err(e) => failed.push(format!("{}: {e}", s.id())),
            }
        }
        if !failed.is_empty() {
            return Err(BackendError::Unavailable(format!(
                "shares destroyed at {} site(s); not at: {}",
                gone.len(),
                failed.join("; ")
            )));
        }
        Ok(gone)
    }

    fn health(&self) -> Vec<FleetMember> {
        let mut out = Vec::new();
        let peer = self
            .cfg
            .sites
            .first()
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let node_ok = kagi_node::client::Etsi014Client::from_files(
            &self.cfg.etsi014_url,
            &self.cfg.ca,
            &self.cfg.cert,
            &self.cfg.key,
        )
        .ok()
        .map(|c| c.with_timeout(Duration::from_secs(2)))
        .is_some_and(|c| self.handle.block_on(c.status(&peer)).is_ok());
        out.push(FleetMember {
            id: format!("kagi-node:{}", self.cfg.etsi014_url),
            model: format!(
                "kagi trusted node (ETSI GS QKD 014) {}",
                env!("CARGO_PKG_VERSION")
            ),
            health_status: if node_ok { "ACTIVE" } else { "UNAVAILABLE" }.into(),
        });
        if let Ok(mut sites) = self.sites() {
            for s in sites.iter_mut().take(9) {
                let ok = s.health().is_ok();
                out.push(FleetMember {
                    id: format!("kagi-vault-site:{}", s.id()),
                    model: format!("kagi vault site {}", env!("CARGO_PKG_VERSION")),
                    health_status: if ok { "ACTIVE" } else { "UNAVAILABLE" }.into(),
                });
            }
        }
        // Fewer than k sites up: the node cannot rebuild keys, say DEGRADED on the node entry.
        let up = out
            .iter()
            .skip(1)
            .filter(|m| m.health_status == "ACTIVE")
            .count();
        if node_ok && up < usize::from(self.cfg.k) {
            out[0].health_status = "DEGRADED".into();
        }
        out
    }
}
