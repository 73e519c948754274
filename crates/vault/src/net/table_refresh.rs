//! Refreshing a shared table from the owner's side ([`crate::tables`] holds the site's half):
//! settle any interrupted refresh, deal a fresh zero-sharing of every stored column, have all
//! three sites prepare the new epoch, then commit it everywhere.
//!
//! The commit order makes an interruption recoverable, as for Shamir objects
//! ([`crate::client::roll_forward`]): commits start only once all three sites have prepared, so
//! if any site has committed epoch `E + 1` the others hold it prepared, and the next refresh (or
//! query retry after one) rolls them forward; if none has, the prepared epoch is discarded.

use kagi_mpc::table::{os_words, zero_sharing};
use serde::Deserialize;

use super::RemoteSite;
use crate::error::{Result, VaultError};
use crate::keys::KeySupply;
use crate::tables::{seal_refresh, TableManifest};

/// A site's epochs of a table (`GET /v1/tables/{id}/state`).
#[derive(Debug, Deserialize)]
struct State {
    epoch: u64,
    prepared: Option<u64>,
}

fn state(site: &mut RemoteSite, object: &str) -> Result<State> {
    let b = site.request("GET", &format!("/v1/tables/{object}/state"), Vec::new())?;
    serde_json::from_slice(&b).map_err(|e| VaultError::Malformed(format!("table state: {e}")))
}

fn step(site: &mut RemoteSite, object: &str, what: &str) -> Result<()> {
    site.request("POST", &format!("/v1/tables/{object}/{what}"), Vec::new())
        .map(|_| ())
}

/// Brings the table's three sites to one committed epoch with nothing prepared, and returns it.
pub fn settle(sites: &mut [RemoteSite], object: &str) -> Result<u64> {
    let states: Vec<State> = sites
        .iter_mut()
        .map(|s| state(s, object))
        .collect::<Result<_>>()?;
    let newest = states.iter().map(|s| s.epoch).max().unwrap_or(0);
    let behind = states.iter().any(|s| s.epoch != newest);
    for (site, st) in sites.iter_mut().zip(&states) {
        if st.epoch == newest {
            if st.prepared.is_some() {
                step(site, object, "refresh-abort")?;
            }
        } else if behind && st.epoch + 1 == newest && st.prepared == Some(newest) {
            step(site, object, "refresh-commit")?;
        } else {
            return Err(VaultError::Site {
                site: site.id().to_string(),
                reason: format!(
                    "table {object} is at epoch {} here and {newest} elsewhere, without the \
                     refresh prepared: this share cannot be brought forward",
                    st.epoch
                ),
            });
        }
    }
    Ok(newest)
}

/// Refreshes table `m` at its three sites (`sites` in party order): afterwards every share is
/// re-randomised, the table's values are unchanged and shares of earlier epochs no longer
/// combine with the new ones. Returns the new epoch.
pub fn refresh_table(
    sites: &mut [RemoteSite],
    owner: &mut impl KeySupply,
    m: &TableManifest,
) -> Result<u64> {
    if sites.len() != 3 || sites.iter().zip(&m.sites).any(|(s, id)| s.id() != id) {
        return Err(VaultError::Malformed(
            "the table's three sites, in order, are needed".into(),
        ));
    }
    let epoch = settle(sites, &m.object)?;
    let next = TableManifest {
        epoch: epoch + 1,
        ..m.clone()
    };
    let zero = zero_sharing(&m.schema.stored_names(), m.schema.rows, &mut os_words());
    let path = format!("/v1/tables/{}/refresh", m.object);
    let mut prepare = || -> Result<()> {
        for (site, z) in sites.iter_mut().zip(&zero) {
            let env = seal_refresh(owner, &next, z)?;
            site.request("POST", &path, env.0)?;
        }
        Ok(())
    };
    if let Err(e) = prepare() {
        for site in sites.iter_mut() {
            let _ = step(site, &m.object, "refresh-abort");
        }
        return Err(e);
    }
    for site in sites.iter_mut() {
        step(site, &m.object, "refresh-commit")?;
    }
    Ok(next.epoch)
}
