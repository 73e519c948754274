//! The data owner's side: put, get, list, refresh and repair, driving the sites. The owner
//! routes the sites' sealed messages to each other but cannot read them (they are padded with
//! keys shared between the sites).

use kagi_keymat::its_mac::{tag, MacKey, MAC_KEY_LEN};
use kagi_keymat::Key;
use kagi_sharing::{recover, recover_correcting, split, OsRandom, Params, RandomSource, Share};
use serde::Serialize;

use crate::api::SiteApi;
use crate::envelope::{open, seal, Envelope};
use crate::error::{Result, VaultError};
use crate::keys::KeySupply;
use crate::site::{check_object_id, Manifest};

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

fn total_keys<K: KeySupply, S: SiteApi>(owner: &K, sites: &[S]) -> u64 {
    owner.key_bytes_used() + sites.iter().map(|s| s.key_bytes_used()).sum::<u64>()
}

/// Splits `data` k-of-n over the first `n` of `sites` and stores one share at each, every
/// transfer one-time-pad encrypted and authenticated. Nothing becomes visible unless every
/// site stored its share: if a site fails before the commit, or a commit fails, the put is
/// rolled back at every site that can still be reached (a site that cannot drops its pending
/// share when it restarts) and the error is returned.
pub fn put<K: KeySupply + Send, S: SiteApi + Send>(
    owner: &mut K,
    sites: &mut [S],
    name: &str,
    data: &[u8],
    k: usize,
    n: usize,
) -> Result<PutReport> {
    put_with(std::slice::from_mut(owner), sites, name, data, k, n)
}

/// [`put`] with one key-supply handle per site (all the same owner SAE): the `n` share
/// transfers then run at once, each waiting only on its own end-to-end key pool. With a single
/// handle they run one after the other.
pub fn put_with<K: KeySupply + Send, S: SiteApi + Send>(
    owners: &mut [K],
    sites: &mut [S],
    name: &str,
    data: &[u8],
    k: usize,
    n: usize,
) -> Result<PutReport> {
    let params = Params::new(k, n)?;
    let Some(first) = owners.first() else {
        return Err(VaultError::Keys("no key supply".into()));
    };
    let owner_sae = first.sae().to_string();
    if sites.len() < n {
        return Err(VaultError::NotEnoughSites {
            object: name.to_string(),
            needed: n,
            got: sites.len(),
            detail: String::new(),
        });
    }
    let before: u64 = owners.iter().map(KeySupply::key_bytes_used).sum();
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
        owner: owner_sae,
    };
    let shares = split(secret.expose(), params, &mut OsRandom::default())?;
    drop(secret);
    let info = serde_json::to_value(&manifest).map_err(|e| VaultError::Malformed(e.to_string()))?;
    // One transfer: seal the share for the site with fresh key, send it.
    let transfer = |owner: &mut K, share: &Share, site: &mut S| -> Result<()> {
        let env = seal(
            owner,
            site.id(),
            "put-share",
            &object,
            info.clone(),
            share.to_bytes().expose(),
        )?;
        site.receive_share(&env).map_err(|e| at_site(site.id(), e))
    };
    let results: Vec<Result<()>> = if owners.len() >= n && n > 1 {
        std::thread::scope(|scope| {
            let handles: Vec<_> = owners
                .iter_mut()
                .zip(shares.iter())
                .zip(sites[..n].iter_mut())
                .map(|((o, sh), site)| scope.spawn(move || transfer(o, sh, site)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(VaultError::Malformed("transfer panicked".into())))
                })
                .collect()
        })
    } else {
        let owner = &mut owners[0];
        let mut out = Vec::new();
        for (share, site) in shares.iter().zip(sites[..n].iter_mut()) {
            let r = transfer(owner, share, site);
            let failed = r.is_err();
            out.push(r);
            if failed {
                break;
            }
        }
        out
    };
    let mut outcome: Result<()> = Ok(());
    for r in results {
        if let Err(e) = r {
            // The first failure is the one to report (a key shortage, a dead site…).
            if outcome.is_ok() {
                outcome = Err(e);
            }
        }
    }
    if outcome.is_ok() {
        for site in sites[..n].iter_mut() {
            if let Err(e) = site.commit(&object) {
                outcome = Err(at_site(site.id(), e));
                break;
            }
        }
    }
    if let Err(e) = outcome {
        // Roll back everywhere (a site may have stored a share even if its answer was lost;
        // aborting what is not there is a no-op).
        for site in sites[..n].iter_mut() {
            let _ = site.abort(&object);
        }
        return Err(e);
    }
    Ok(PutReport {
        object,
        len: data.len() as u64,
        sites: manifest.sites,
        key_bytes: owners.iter().map(KeySupply::key_bytes_used).sum::<u64>() - before,
    })
}

/// Names the site in an error that does not already (a key shortage stays what it is).
fn at_site(site: &str, e: VaultError) -> VaultError {
    match e {
        e @ (VaultError::Site { .. } | VaultError::KeyShortage { .. }) => e,
        e => VaultError::Site {
            site: site.to_string(),
            reason: e.to_string(),
        },
    }
}

/// Opens a share sealed by `site` for the owner and checks it is that site's.
fn open_share<K: KeySupply, S: SiteApi>(
    owner: &mut K,
    site: &S,
    env: &Envelope,
) -> Result<(Manifest, Share)> {
    let (h, payload) = open(owner, &env.0)?;
    let manifest: Manifest =
        serde_json::from_value(h.info).map_err(|e| VaultError::Malformed(e.to_string()))?;
    let share = Share::from_bytes(payload.expose())?;
    if manifest.index_of(site.id()) != Some(share.index() as usize) || h.from != site.id() {
        return Err(VaultError::Malformed("share from the wrong site".into()));
    }
    Ok((manifest, share))
}

/// Runs `f` on the sites at `idx` at once (one thread each; inline for one), results in `idx`
/// order.
fn par_each<S: SiteApi + Send, T: Send>(
    sites: &mut [S],
    idx: &[usize],
    f: impl Fn(&mut S) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    if idx.len() == 1 {
        return vec![f(&mut sites[idx[0]])];
    }
    let mut picked: Vec<(usize, &mut S)> = sites
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| idx.contains(i))
        .collect();
    picked.sort_by_key(|(i, _)| idx.iter().position(|j| j == i));
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = picked
            .into_iter()
            .map(|(_, site)| scope.spawn(move || f(site)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(VaultError::Malformed("site call panicked".into())))
            })
            .collect()
    })
}

/// Rebuilds `object`. Key is scarce, so it first fetches only `k` shares (of the newest refresh
/// epoch that at least `k` sites hold) and checks the whole-object MAC; only if that fails does it
/// fetch the remaining shares and let Reed–Solomon decoding find and correct the bad ones.
pub fn get<K: KeySupply, S: SiteApi + Send>(
    owner: &mut K,
    sites: &mut [S],
    object: &str,
) -> Result<GetReport> {
    check_object_id(object)?;
    roll_forward(sites, object)?;
    let before = total_keys(owner, sites);
    // Metadata first (no key spent): who holds which epoch.
    let mut failed: Vec<String> = Vec::new();
    let manifests: Vec<Option<Manifest>> = sites
        .iter_mut()
        .map(|s| match s.state(object) {
            Ok(st) => st.committed,
            Err(e) => {
                failed.push(format!("{}: {e}", s.id()));
                None
            }
        })
        .collect();
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
            detail: failed.join("; "),
        });
    };
    let holders = holders_of(epoch);
    let mut manifest: Option<Manifest> = None;
    let mut fetched: Vec<(Share, String)> = Vec::new();
    let mut failed_ids: Vec<String> = Vec::new();
    let mut next = 0;
    let mut result = None;
    let mut corrupted = Vec::new();
    for round in 0..2 {
        // Round 0: just enough shares; round 1: all the rest.
        while next < holders.len() && (round == 1 || fetched.len() < k) {
            // The sites seal their shares at once (each waits on its own key pool); the owner
            // then opens them one by one.
            let want = if round == 0 {
                k - fetched.len()
            } else {
                holders.len() - next
            };
            let batch: Vec<usize> = holders[next..(next + want).min(holders.len())].to_vec();
            next += batch.len();
            let owner_sae = owner.sae().to_string();
            let sealed = par_each(sites, &batch, |site| site.send_share(object, &owner_sae));
            for (i, env) in batch.into_iter().zip(sealed) {
                match env.and_then(|env| open_share(owner, &sites[i], &env)) {
                    Ok((m, s)) if m.epoch == epoch => {
                        manifest.get_or_insert(m);
                        fetched.push((s, sites[i].id().to_string()));
                    }
                    // Key ran out (after waiting): say so, do not blame the site.
                    Err(e @ VaultError::KeyShortage { .. }) => return Err(e),
                    Ok(_) => {
                        failed.push(format!("{}: share of another refresh epoch", sites[i].id()));
                        failed_ids.push(sites[i].id().to_string());
                    }
                    Err(e) => {
                        failed.push(format!("{}: {e}", sites[i].id()));
                        failed_ids.push(sites[i].id().to_string());
                    }
                }
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
            detail: failed.join("; "),
        });
    };
    let Some(data) = result else {
        if fetched.len() < k {
            return Err(VaultError::NotEnoughSites {
                object: object.to_string(),
                needed: k,
                got: fetched.len(),
                detail: failed.join("; "),
            });
        }
        return Err(VaultError::ObjectCorrupt(object.to_string()));
    };
    let answered: Vec<String> = fetched.iter().map(|(_, id)| id.clone()).collect();
    let missing = manifest
        .sites
        .iter()
        .filter(|s| !holders.iter().any(|&i| sites[i].id() == s.as_str()) || failed_ids.contains(s))
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

/// Every object any site holds, by the site's manifest (newest epoch wins), with the sites
/// holding it. Sites that cannot be reached are skipped (see [`list_reporting`]).
pub fn list<S: SiteApi>(sites: &mut [S]) -> Result<Vec<(Manifest, Vec<String>)>> {
    Ok(list_reporting(sites)?.0)
}

/// [`list`], plus the sites that did not answer and why.
#[allow(clippy::type_complexity)]
pub fn list_reporting<S: SiteApi>(
    sites: &mut [S],
) -> Result<(Vec<(Manifest, Vec<String>)>, Vec<String>)> {
    let mut all: Vec<(Manifest, Vec<String>)> = Vec::new();
    let mut unreachable = Vec::new();
    for site in sites.iter_mut() {
        let manifests = match site.list() {
            Ok(m) => m,
            Err(e) => {
                unreachable.push(format!("{}: {e}", site.id()));
                continue;
            }
        };
        for m in manifests {
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
    all.sort_by(|a, b| a.0.object.cmp(&b.0.object));
    Ok((all, unreachable))
}

fn site_index<S: SiteApi>(sites: &[S], id: &str) -> Result<usize> {
    sites
        .iter()
        .position(|s| s.id() == id)
        .ok_or_else(|| VaultError::UnknownSite(id.to_string()))
}

/// Settles a refresh of `object` that was interrupted. If some site already committed the
/// prepared epoch, or every holder prepared it, the refresh is finished (the protocol commits only
/// after all sites prepared, so this is safe); otherwise the partial preparation is discarded and
/// the old shares stay valid. Returns the number of sites changed.
pub fn roll_forward<S: SiteApi>(sites: &mut [S], object: &str) -> Result<usize> {
    check_object_id(object)?;
    // Unreachable sites count as holding nothing: they cannot have committed what is prepared
    // elsewhere unless every site prepared, which the committed epochs below reveal.
    let states: Vec<_> = sites
        .iter_mut()
        .map(|s| s.state(object).unwrap_or_default())
        .collect();
    let prepared: Vec<usize> = (0..sites.len())
        .filter(|&i| states[i].prepared.is_some())
        .collect();
    if prepared.is_empty() {
        return Ok(0);
    }
    let next = prepared.iter().filter_map(|&i| states[i].prepared).max();
    let committed: Vec<Option<u64>> = states
        .iter()
        .map(|s| s.committed.as_ref().map(|m| m.epoch))
        .collect();
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

/// The newest committed manifest of `object` among `sites`, with the sites holding that epoch.
fn holders_of<S: SiteApi>(sites: &mut [S], object: &str) -> Result<(Manifest, Vec<String>)> {
    let mut best: Option<Manifest> = None;
    let mut held: Vec<(String, u64)> = Vec::new();
    for s in sites.iter_mut() {
        if let Ok(st) = s.state(object) {
            if let Some(m) = st.committed {
                held.push((s.id().to_string(), m.epoch));
                if best.as_ref().is_none_or(|b| m.epoch > b.epoch) {
                    best = Some(m);
                }
            }
        }
    }
    let m = best.ok_or_else(|| VaultError::UnknownObject(object.to_string()))?;
    let holders = held
        .into_iter()
        .filter(|(_, e)| *e == m.epoch)
        .map(|(id, _)| id)
        .collect();
    Ok((m, holders))
}

/// Proactive refresh of `object` among all its sites (all must hold their share: repair lost
/// ones first). Returns the key spent by the sites. Every site prepares the new epoch before
/// any site switches to it; a failure before the switch discards the preparation everywhere.
pub fn refresh<S: SiteApi>(sites: &mut [S], object: &str) -> Result<u64> {
    roll_forward(sites, object)?;
    let (manifest, holding) = holders_of(sites, object)?;
    if holding.len() < manifest.sites.len() {
        let lost: Vec<&str> = manifest
            .sites
            .iter()
            .filter(|s| !holding.contains(s))
            .map(String::as_str)
            .collect();
        return Err(VaultError::NotEnoughSites {
            object: object.to_string(),
            needed: manifest.sites.len(),
            got: holding.len(),
            detail: format!("no share at {} (repair first)", lost.join(", ")),
        });
    }
    let before = site_keys(sites);
    let idx = manifest
        .sites
        .iter()
        .map(|id| site_index(sites, id))
        .collect::<Result<Vec<_>>>()?;
    let prepare = |sites: &mut [S]| -> Result<()> {
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
        Ok(())
    };
    if let Err(e) = prepare(sites) {
        for &i in &idx {
            let _ = sites[i].refresh_abort(object);
        }
        return Err(e);
    }
    for &i in &idx {
        sites[i].refresh_commit(object)?;
    }
    Ok(site_keys(sites) - before)
}

fn site_keys<S: SiteApi>(sites: &[S]) -> u64 {
    sites.iter().map(|s| s.key_bytes_used()).sum()
}

/// Rebuilds the share of site `target` (e.g. after its data was destroyed) from `k` other sites
/// without reconstructing the object anywhere. Returns the key spent by the sites.
pub fn repair<S: SiteApi>(sites: &mut [S], object: &str, target: &str) -> Result<u64> {
    check_object_id(object)?;
    roll_forward(sites, object)?;
    let before = site_keys(sites);
    let (manifest, holders) = holders_of(sites, object)?;
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
            detail: String::new(),
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
    Ok(site_keys(sites) - before)
}
