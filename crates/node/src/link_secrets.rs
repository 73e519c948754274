//! Per-link secrets of simulated links: what stands in for the quantum channel.
//!
//! A simulated link's two ends derive identical key blocks from a secret only they hold. `kagi up`
//! (and [`crate::loopback::prepare`]) draws 32 random bytes per link and writes them into the
//! data directories of that link's two nodes only, as `<data_dir>/<node_id>-links.toml`
//! (mode 0600). The shared topology file holds no secret: whoever reads it cannot compute a
//! link key. A topology may still say `insecure_demo_links = true` to derive link keys from
//! its public seed (old demos); the node then warns at start.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use kagi_keymat::Key;
use rand::RngCore;

/// Link-secret file failures.
#[derive(Debug, thiserror::Error)]
pub enum LinkSecretError {
    /// I/O.
    #[error("link secrets {path}: {err}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        err: std::io::Error,
    },
    /// Not a link-secret file.
    #[error("link secrets {path}: {why}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    /// Peer node ID → base64 of 32 secret bytes.
    #[serde(default)]
    links: BTreeMap<String, String>,
}

/// Where a node keeps its link secrets.
pub fn path(data_dir: &Path, node_id: &str) -> PathBuf {
    data_dir.join(format!("{node_id}-links.toml"))
}

fn read(p: &Path) -> Result<File, LinkSecretError> {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => zeroize::Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(File::default()),
        Err(err) => {
            return Err(LinkSecretError::Io {
                path: p.display().to_string(),
                err,
            })
        }
    };
    toml::from_str(&text).map_err(|e| LinkSecretError::Malformed {
        path: p.display().to_string(),
        why: e.to_string(),
    })
}

/// The node's link secrets, by peer.
pub fn load(data_dir: &Path, node_id: &str) -> Result<BTreeMap<String, Key>, LinkSecretError> {
    let p = path(data_dir, node_id);
    let f = read(&p)?;
    let mut out = BTreeMap::new();
    for (peer, b64) in f.links {
        let k = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| LinkSecretError::Malformed {
                path: p.display().to_string(),
                why: format!("the secret for {peer} is not 32 base64-encoded bytes"),
            })?;
        out.insert(peer, Key::from_vec(k));
    }
    Ok(out)
}

fn store(data_dir: &Path, node_id: &str, peer: &str, secret: &Key) -> Result<(), LinkSecretError> {
    let p = path(data_dir, node_id);
    let io = |err| LinkSecretError::Io {
        path: p.display().to_string(),
        err,
    };
    let mut f = read(&p)?;
    f.links.insert(
        peer.to_string(),
        base64::engine::general_purpose::STANDARD.encode(secret.expose()),
    );
    let text = zeroize::Zeroizing::new(toml::to_string(&f).map_err(|e| {
        LinkSecretError::Malformed {
            path: p.display().to_string(),
            why: e.to_string(),
        }
    })?);
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let tmp = p.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut w = o.open(&tmp).map_err(io)?;
    w.write_all(text.as_bytes()).map_err(io)?;
    w.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &p).map_err(io)?;
    Ok(())
}

/// Gives the link `a`–`b` a secret known to both ends: kept when both already hold the same one,
/// otherwise a fresh random one written to both (`a_dir`, `b_dir` are their data directories).
/// Returns true when a new secret was drawn.
pub fn provision(a_dir: &Path, a: &str, b_dir: &Path, b: &str) -> Result<bool, LinkSecretError> {
    let at_a = load(a_dir, a)?.remove(b);
    let at_b = load(b_dir, b)?.remove(a);
    if let (Some(x), Some(y)) = (&at_a, &at_b) {
        if x == y {
            return Ok(false);
        }
    }
    let mut s = Key::zeroed(32);
    rand::rngs::OsRng.fill_bytes(s.expose_mut());
    store(a_dir, a, b, &s)?;
    store(b_dir, b, a, &s)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_get_the_same_secret_and_only_they() {
        let d = crate::loopback::scratch_dir("links").unwrap();
        let (da, db, dc) = (d.join("a"), d.join("b"), d.join("c"));
        assert!(provision(&da, "a", &db, "b").unwrap());
        assert!(provision(&db, "b", &dc, "c").unwrap());
        assert!(!provision(&da, "a", &db, "b").unwrap(), "kept on a re-run");
        let a = load(&da, "a").unwrap();
        let b = load(&db, "b").unwrap();
        let c = load(&dc, "c").unwrap();
        assert_eq!(a["b"], b["a"]);
        assert_eq!(b["c"], c["b"]);
        assert_ne!(a["b"], b["c"]);
        assert!(!a.contains_key("c") && !c.contains_key("a"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(path(&da, "a")).unwrap().permissions().mode();
            assert_eq!(m & 0o077, 0, "{m:o}");
        }
        // One end lost its file: both get a new secret.
        std::fs::remove_file(path(&dc, "c")).unwrap();
        assert!(provision(&db, "b", &dc, "c").unwrap());
        assert_eq!(load(&db, "b").unwrap()["c"], load(&dc, "c").unwrap()["b"]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
