//! The data owner's side: put, get, list, refresh and repair, driving the sites. The owner
//! routes the sites' sealed messages to each other but cannot read them (they are padded with
//! keys shared between the sites).

use kagi_keymat::its_mac::{tag, MacKey, MAC_KEY_LEN};
use kagi_keymat::Key;
use kagi_sharing::{recover, recover_correcting, split, OsRandom, Params, RandomSource, Share};
use serde::Serialize;

use crate::envelope::{open, seal, Envelope};
use crate::error::{Result, VaultError};
use crate::keys::KeySupply;
use crate::site::{check_object_id, Manifest, Site};

/// What a put did.
#[derive(Clone, Debug, Serialize)]
pub struct PutReport {
    /// The new object's ID.
    pub object: String,
    /// Object bytes.
    pub len: u64,
    /// Sites holding shares, in share order.
    pub sites: Vec<String>,
    /// QKD key the owner spent (one-time pads and MAC keys).
    pub key_bytes: u64,
}

/// What a get did.
#[derive(Debug)]
pub struct GetReport {
    /// The object.
    pub data: Key,
    /// Its manifest.
    pub manifest: Manifest,
    /// Sites that answered with a share.
    pub answered: Vec<String>,
    /// Sites that did not (wiped, unreachable, unknown object).
    pub missing: Vec<String>,
    /// Sites whose share was found corrupted by Reed–Solomon decoding.
    pub corrupted: Vec<String>,
    /// QKD key spent by the owner and the sites together.
    pub key_bytes: u64,
}

fn object_tag(key: &[u8], object: &str, data: &[u8]) -> Result<String> {
    let mk = MacKey::from_bytes(key).map_err(|e| VaultError::Keys(e.to_string()))?;
    let mut msg = Vec::with_capacity(object.len() + data.len());
    msg.extend_from_slice(object.as_bytes());
    msg.extend_from_slice(data);
    Ok(tag(mk, &msg).0.iter().map(|b| format!("{b:02x}")).collect())
}

fn total_keys<K: KeySupply, S: KeySupply>(owner: &K, sites: &[Site<S>]) -> u64 {
    owner.key_bytes_used() + sites.iter().map(|s| s.key_bytes_used()).sum::<u64>()
}

/// Splits `data` k-of-n over the first `n` of `sites` and stores one share at each, every
/// transfer one-time-pad encrypted and authenticated. Nothing becomes visible unless every
/// site stored its share.
pub fn put<K: KeySupply, S: KeySupply>(
    owner: &mut K,
    sites: &mut [Site<S>],
    name: &str,
    data: &[u8],
    k: usize,
    n: usize,
) -> Result<PutReport> {
    let params = Params::new(k, n)?;
    if sites.len() < n {
        return Err(VaultError::NotEnoughSites {
            object: name.to_string(),
            needed: n,
            got: sites.len(),
        });
    }
    let before = owner.key_bytes_used();
    let object = uuid::Uuid::new_v4().to_string();
    // The whole-object MAC key is shared along with the data: data ‖ key.
    let mut secret = Key::zeroed(data.len() + MAC_KEY_LEN);
    secret.expose_mut()[..data.len()].copy_from_slice(data);
    OsRandom::default().fill(&mut secret.expose_mut()[data.len()..])?;
    let manifest = Manifest {
        object: object.clone(),
        name: name.to_string(),
        len: data.len() as u64,
        k: k as u8,
        n: n as u8,
        sites: sites[..n].iter().map(|s| s.id().to_string()).collect(),
        object_tag: object_tag(&secret.expose()[data.len()..], &object, data)?,
        epoch: 0,
    };
    let shares = split(secret.expose(), params, &mut OsRandom::default())?;
    drop(secret);
    let info = serde_json::to_value(&manifest).map_err(|e| VaultError::Malformed(e.to_string()))?;
    for (share, site) in shares.iter().zip(sites.iter_mut()) {
        let env = seal(
            owner,
            site.id(),
            "put-share",
            &object,
            info.clone(),
            share.to_bytes().expose(),
        )?;
        site.receive_share(&env)?;
    }
    for site in sites[..n].iter_mut() {
        site.commit(&object)?;
    }
    Ok(PutReport {
        object,
        len: data.len() as u64,
        sites: manifest.sites,
        key_bytes: owner.key_bytes_used() - before,
    })
}

/// Fetches one site's share of `object`, sealed for the owner.
fn fetch<K: KeySupply, S: KeySupply>(
    owner: &mut K,
    site: &mut Site<S>,
    object: &str,
) -> Result<(Manifest, Share)> {
    let env = site.send_share(object, owner.sae())?;
    let (h, payload) = open(owner, &env.0)?;
    let manifest: Manifest =
        serde_json::from_value(h.info).map_err(|e| VaultError::Malformed(e.to_string()))?;
    let share = Share::from_bytes(payload.expose())?;
    if manifest.index_of(site.id()) != Some(share.index() as usize) || h.from != site.id() {
        return Err(VaultError::Malformed("share from the wrong site".into()));
    }
    Ok((manifest, share))
}

/// Rebuilds `object`. Key is scarce, so it first fetches only `k` shares (of the newest refresh
/// epoch that at least `k` sites hold) and checks the whole-object MAC; only if that fails does it
/// fetch the remaining shares and let Reed–Solomon decoding find and correct the bad ones.
pub fn get<K: KeySupply, S: KeySupply>(
    owner: &mut K,
    sites: &mut [Site<S>],
    object: &str,
) -> Result<GetReport> {
    check_object_id(object)?;
    roll_forward(sites, object)?;
    let before = total_keys(owner, sites);
    // Metadata first (no key spent): who holds which epoch.
    let manifests: Vec<Option<Manifest>> = sites.iter().map(|s| s.manifest(object)).collect();
    let mut epochs: Vec<u64> = manifests.iter().flatten().map(|m| m.epoch).collect();
    if epochs.is_empty() {
        return Err(VaultError::UnknownObject(object.to_string()));
    }
    epochs.sort_unstable();
    epochs.dedup();
    let holders_of = |e: u64| -> Vec<usize> {
        (0..manifests.len())
            .filter(|&i| manifests[i].as_ref().is_some_and(|m| m.epoch == e))
            .collect()
    };
    let k = manifests
        .iter()
        .flatten()
        .map(|m| m.k as usize)
        .max()
        .unwrap_or(1);
    let Some(epoch) = epochs
        .iter()
        .rev()
        .copied()
        .find(|&e| holders_of(e).len() >= k)
    else {
        let best = epochs
            .iter()
            .map(|&e| holders_of(e).len())
            .max()
            .unwrap_or(0);
        return Err(VaultError::NotEnoughSites {
            object: object.to_string(),
            needed: k,
            got: best,
        });
    };
    let holders = holders_of(epoch);
    let mut manifest: Option<Manifest> = None;
    let mut fetched: Vec<(Share, String)> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut next = 0;
    let mut result = None;
    let mut corrupted = Vec::new();
    for round in 0..2 {
        // Round 0: just enough shares; round 1: all the rest.
        while next < holders.len() && (round == 1 || fetched.len() < k) {
            let i = holders[next];
            next += 1;
            match fetch(owner, &mut sites[i], object) {
                Ok((m, s)) if m.epoch == epoch => {
                    manifest.get_or_insert(m);
                    fetched.push((s, sites[i].id().to_string()));
                }
                _ => failed.push(sites[i].id().to_string()),
            }
        }
        let Some(m) = manifest.as_ref() else { break };
        if fetched.len() < k {
            break;
        }
        let shares: Vec<Share> = fetched.iter().map(|(s, _)| s.clone()).collect();
        let (secret, bad) = if shares.len() > k {
            match recover_correcting(&shares) {
                Ok(c) => (c.secret, c.bad),
                Err(_) => continue,
            }
        } else {
            (recover(&shares)?, Vec::new())
        };
        let len = m.len as usize;
        if secret.len() == len + MAC_KEY_LEN
            && object_tag(&secret.expose()[len..], object, &secret.expose()[..len])? == m.object_tag
        {
            corrupted = bad
                .iter()
                .map(|&i| m.sites[i as usize - 1].clone())
                .collect();
            result = Some(Key::from_slice(&secret.expose()[..len]));
            break;
        }
        if next >= holders.len() {
            break;
        }
    }
    let Some(manifest) = manifest else {
        return Err(VaultError::NotEnoughSites {
            object: object.to_string(),
            needed: k,
            got: 0,
        });
    };
    let Some(data) = result else {
        if fetched.len() < k {
            return Err(VaultError::NotEnoughSites {
                object: object.to_string(),
                needed: k,
                got: fetched.len(),
            });
        }
        return Err(VaultError::ObjectCorrupt(object.to_string()));
    };
    let answered: Vec<String> = fetched.iter().map(|(_, id)| id.clone()).collect();
    let missing = manifest
        .sites
        .iter()
        .filter(|s| !holders.iter().any(|&i| sites[i].id() == s.as_str()) || failed.contains(s))
        .cloned()
        .collect();
    Ok(GetReport {
        data,
        answered,
        missing,
        corrupted,
        key_bytes: total_keys(owner, sites) - before,
        manifest,
    })
}

/// Every object any site holds, by the site's manifest (newest epoch wins).
pub fn list<S: KeySupply>(sites: &[Site<S>]) -> Result<Vec<(Manifest, Vec<String>)>> {
    let mut all: Vec<(Manifest, Vec<String>)> = Vec::new();
    for site in sites {
        for m in site.list()? {
            match all.iter_mut().find(|(x, _)| x.object == m.object) {
                Some((x, holders)) => {
                    holders.push(site.id().to_string());
                    if m.epoch > x.epoch {
                        *x = m;
                    }
                }
                None => all.push((m, vec![site.id().to_string()])),
            }
        }
    }
    Ok(all)
}

fn site_index<S: KeySupply>(sites: &[Site<S>], id: &str) -> Result<usize> {
    sites
        .iter()
        .position(|s| s.id() == id)
        .ok_or_else(|| VaultError::UnknownSite(id.to_string()))
}

/// Settles a refresh of `object` that was interrupted. If some site already committed the
/// prepared epoch, or every holder prepared it, the refresh is finished (the protocol commits only
/// after all sites prepared, so this is safe); otherwise the partial preparation is discarded and
/// the old shares stay valid. Returns the number of sites changed.
pub fn roll_forward<S: KeySupply>(sites: &mut [Site<S>], object: &str) -> Result<usize> {
    let prepared: Vec<usize> = (0..sites.len())
        .filter(|&i| sites[i].has_prepared_refresh(object).is_some())
        .collect();
    if prepared.is_empty() {
        return Ok(0);
    }
    let next = prepared
        .iter()
        .filter_map(|&i| sites[i].has_prepared_refresh(object))
        .max();
    let committed: Vec<Option<u64>> = sites.iter().map(|s| s.committed_epoch(object)).collect();
    let holders = committed.iter().filter(|e| e.is_some()).count();
    let finish = committed.iter().any(|e| e.is_some() && *e == next) || prepared.len() == holders;
    for &i in &prepared {
        if finish {
            sites[i].refresh_commit(object)?;
        } else {
            sites[i].refresh_abort(object)?;
        }
    }
    Ok(prepared.len())
}

/// Proactive refresh of `object` among all its sites (all must hold their share: repair lost
/// ones first). Returns the key spent by the sites.
pub fn refresh<S: KeySupply>(sites: &mut [Site<S>], object: &str) -> Result<u64> {
    roll_forward(sites, object)?;
    let (manifest, holding) = list(sites)?
        .into_iter()
        .find(|(m, _)| m.object == object)
        .ok_or_else(|| VaultError::UnknownObject(object.to_string()))?;
    if holding.len() < manifest.sites.len() {
        return Err(VaultError::NotEnoughSites {
            object: object.to_string(),
            needed: manifest.sites.len(),
            got: holding.len(),
        });
    }
    let before: u64 = sites.iter().map(|s| s.key_bytes_used()).sum();
    let idx = manifest
        .sites
        .iter()
        .map(|id| site_index(sites, id))
        .collect::<Result<Vec<_>>>()?;
    let mut inbox: Vec<Vec<Envelope>> = vec![Vec::new(); sites.len()];
    for &i in &idx {
        for env in sites[i].refresh_deal(object)? {
            let to = crate::envelope::peek(&env.0)?.to;
            inbox[site_index(sites, &to)?].push(env);
        }
    }
    for &i in &idx {
        let msgs = std::mem::take(&mut inbox[i]);
        sites[i].refresh_apply(object, &msgs)?;
    }
    for &i in &idx {
        sites[i].refresh_commit(object)?;
    }
    Ok(sites.iter().map(|s| s.key_bytes_used()).sum::<u64>() - before)
}

/// Rebuilds the share of site `target` (e.g. after its data was destroyed) from `k` other sites
/// without reconstructing the object anywhere. Returns the key spent by the sites.
pub fn repair<S: KeySupply>(sites: &mut [Site<S>], object: &str, target: &str) -> Result<u64> {
    let before: u64 = sites.iter().map(|s| s.key_bytes_used()).sum();
    let all = list(sites)?;
    let (manifest, holders) = all
        .into_iter()
        .find(|(m, _)| m.object == object)
        .ok_or_else(|| VaultError::UnknownObject(object.to_string()))?;
    let t_index = manifest
        .index_of(target)
        .ok_or_else(|| VaultError::UnknownSite(target.to_string()))?;
    let helper_ids: Vec<String> = manifest
        .sites
        .iter()
        .filter(|s| *s != target && holders.contains(s))
        .take(manifest.k as usize)
        .cloned()
        .collect();
    if helper_ids.len() < manifest.k as usize {
        return Err(VaultError::NotEnoughSites {
            object: object.to_string(),
            needed: manifest.k as usize,
            got: helper_ids.len(),
        });
    }
    let hs: Vec<u8> = helper_ids
        .iter()
        .filter_map(|h| manifest.index_of(h))
        .map(|i| i as u8)
        .collect();
    let hidx = helper_ids
        .iter()
        .map(|id| site_index(sites, id))
        .collect::<Result<Vec<_>>>()?;
    let target_i = site_index(sites, target)?;
    let mut inbox: Vec<Vec<Envelope>> = vec![Vec::new(); sites.len()];
    for &i in &hidx {
        for env in sites[i].repair_contribute(object, t_index, &hs)? {
            let to = crate::envelope::peek(&env.0)?.to;
            inbox[site_index(sites, &to)?].push(env);
        }
    }
    let mut sums = Vec::new();
    for &i in &hidx {
        let msgs = std::mem::take(&mut inbox[i]);
        sums.push(sites[i].repair_aggregate(object, &msgs)?);
    }
    sites[target_i].repair_receive(&manifest, &sums)?;
    Ok(sites.iter().map(|s| s.key_bytes_used()).sum::<u64>() - before)
}
