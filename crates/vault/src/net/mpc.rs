//! Computation on shared tables between site processes ([`crate::tables`], [`kagi_mpc`]).
//!
//! The owner asks each of a table's three sites to open a party listener
//! (`POST /v1/mpc/open` → `{"session", "port"}`), then tells all three at once to run the query
//! (`POST /v1/tables/{id}/mpc/run`, a [`RunRequest`]). Party `i` connects to party `i+1`'s
//! listener and accepts party `i−1` on its own, both with mutual TLS in kagi's node-to-node
//! profile (TLS 1.3, X25519MLKEM768; each side checks the other's site ID). With
//! [`Channel::Its`] every party message is additionally one-time-padded with QKD key the two
//! sites fetch from their own nodes over ETSI 014, with a Wegman–Carter tag
//! ([`kagi_mpc::its`]). Each site answers with its shares of the result sealed for the owner (an
//! envelope: one-time pad with owner–site key), so only the owner can rebuild it; the owner
//! checks that the two copies of every result share agree.
//!
//! A site that fails or dies mid-query makes its neighbours' channels fail, every site answers
//! with an error, and the owner gets no result; nothing is stored, so a retry starts afresh.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kagi_keymat::Key;
use kagi_mpc::its::{ItsTransport, KeyId, PadSupply};
use kagi_mpc::party::PartyStats;
use kagi_mpc::query::{decode, execute, plan, Query};
use kagi_mpc::shares::reconstruct;
use kagi_mpc::{LinkStats, MpcError, Party, Peer, Security, Shares, Transport, Z64};
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use zerocopy_bytes::{from_words, to_words};

use super::{EtsiKeys, RemoteSite};
use crate::envelope::{open, seal};
use crate::error::{Result, VaultError};
use crate::keys::KeySupply;
use crate::tables::{self, TableManifest};

/// How party messages are protected beyond TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Mutual TLS (post-quantum hybrid key exchange): computationally secure.
    Tls,
    /// Also one-time pad + Wegman–Carter tag with QKD key: information-theoretically secure.
    Its,
}

/// What the owner asks a site to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRequest {
    /// The session from `/v1/mpc/open` at this site.
    pub session: String,
    /// Listener addresses of the three parties (`host:port`), in party order.
    pub addrs: Vec<String>,
    /// The query.
    pub query: Query,
    /// Security mode.
    pub security: Security,
    /// Channel protection.
    pub channel: Channel,
    /// Minimum rows behind a released aggregate.
    pub min_group: u64,
    /// The refresh epoch of the shares the owner expects (absent: any). A site at another
    /// epoch refuses, so that no query mixes shares from before and after a refresh.
    #[serde(default)]
    pub epoch: Option<u64>,
}

/// Largest party message (words) a site accepts from a neighbour.
const MAX_MESSAGE_WORDS: u64 = 1 << 27;
/// How long a party waits for a neighbour's message or connection.
const PARTY_TIMEOUT: Duration = Duration::from_secs(120);
/// Open sessions a site keeps at most.
const MAX_SESSIONS: usize = 16;

/// A site's side of computation on tables.
pub struct MpcSite {
    /// The site's SAE ID.
    pub id: String,
    /// The site's data directory.
    pub dir: PathBuf,
    /// Server TLS for party links (requires client certificates).
    pub server_tls: Arc<rustls::ServerConfig>,
    /// Client TLS for party links.
    pub client_tls: Arc<rustls::ClientConfig>,
    /// Host to bind party listeners on.
    pub bind_host: String,
    /// A fresh ETSI 014 key supply of the site's SAE.
    pub keys: Arc<dyn Fn() -> Result<EtsiKeys> + Send + Sync>,
    /// The site's policy: the smallest `min_group` it accepts.
    pub min_group_floor: u64,
    sessions: Mutex<HashMap<String, (std::net::TcpListener, Instant)>>,
}

impl MpcSite {
    /// A site's MPC configuration.
    pub fn new(
        id: String,
        dir: PathBuf,
        server_tls: Arc<rustls::ServerConfig>,
        client_tls: Arc<rustls::ClientConfig>,
        bind_host: String,
        keys: Arc<dyn Fn() -> Result<EtsiKeys> + Send + Sync>,
    ) -> Self {
        Self {
            id,
            dir,
            server_tls,
            client_tls,
            bind_host,
            keys,
            min_group_floor: kagi_mpc::query::DEFAULT_MIN_GROUP,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a party listener; returns (session, port).
    pub fn open_session(&self) -> Result<(String, u16)> {
        let l = std::net::TcpListener::bind((self.bind_host.as_str(), 0))?;
        l.set_nonblocking(true)?;
        let port = l.local_addr()?.port();
        let session = uuid::Uuid::new_v4().to_string();
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(300));
        if s.len() >= MAX_SESSIONS {
            return Err(VaultError::KeyShortage {
                needed: 1,
                available: 0,
            });
        }
        s.insert(session.clone(), (l, Instant::now()));
        Ok((session, port))
    }

    fn take_session(&self, session: &str) -> Result<std::net::TcpListener> {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.remove(session)
            .map(|(l, _)| l)
            .ok_or_else(|| VaultError::Malformed(format!("no open MPC session {session:?}")))
    }
}

/// Little-endian word/byte conversions (no unsafe).
mod zerocopy_bytes {
    pub(super) fn to_words(b: &[u8]) -> Vec<u64> {
        b.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect()
    }
    pub(super) fn from_words(w: &[u64]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
}

/// A party's transport over two TLS streams, driven by tokio tasks.
struct NetTransport {
    tx: [tokio::sync::mpsc::UnboundedSender<Vec<u64>>; 2],
    rx: [Receiver<Vec<u64>>; 2],
    stats: LinkStats,
}

fn spawn_link<S>(
    stream: S,
    name: &'static str,
) -> (
    tokio::sync::mpsc::UnboundedSender<Vec<u64>>,
    Receiver<Vec<u64>>,
)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u64>>();
    let (in_tx, in_rx) = std::sync::mpsc::channel::<Vec<u64>>();
    tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let mut buf = Vec::with_capacity(8 + 8 * m.len());
            buf.extend_from_slice(&(m.len() as u64).to_le_bytes());
            buf.extend_from_slice(&from_words(&m));
            if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        loop {
            let mut len = [0u8; 8];
            if rd.read_exact(&mut len).await.is_err() {
                return;
            }
            let n = u64::from_le_bytes(len);
            if n > MAX_MESSAGE_WORDS {
                eprintln!("mpc link {name}: message of {n} words refused");
                return;
            }
            let mut b = vec![0u8; 8 * n as usize];
            if rd.read_exact(&mut b).await.is_err() {
                return;
            }
            if in_tx.send(to_words(&b)).is_err() {
                return;
            }
        }
    });
    (out_tx, in_rx)
}

impl Transport for NetTransport {
    fn send(&mut self, to: Peer, msg: Vec<u64>) -> kagi_mpc::Result<()> {
        let s = match to {
            Peer::Prev => 0,
            Peer::Next => 1,
        };
        self.stats.bytes_sent[s] += 8 * msg.len() as u64;
        self.stats.messages_sent[s] += 1;
        self.tx[s].send(msg).map_err(|_| MpcError::Channel {
            peer: to.name().into(),
            reason: "connection closed".into(),
        })
    }
    fn recv(&mut self, from: Peer) -> kagi_mpc::Result<Vec<u64>> {
        let s = match from {
            Peer::Prev => 0,
            Peer::Next => 1,
        };
        match self.rx[s].recv_timeout(PARTY_TIMEOUT) {
            Ok(m) => Ok(m),
            Err(RecvTimeoutError::Timeout) => Err(MpcError::Channel {
                peer: from.name().into(),
                reason: "timed out".into(),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(MpcError::Channel {
                peer: from.name().into(),
                reason: "connection closed (the other site stopped)".into(),
            }),
        }
    }
    fn stats(&self) -> LinkStats {
        self.stats
    }
}

/// One-time-pad key for party links from the site's node (ETSI 014).
struct EtsiPads {
    keys: EtsiKeys,
    /// SAE IDs of the previous and next party.
    peers: [String; 2],
}

impl PadSupply for EtsiPads {
    fn enc(&mut self, to: Peer, bytes: usize) -> kagi_mpc::Result<(Vec<KeyId>, Key)> {
        let peer = &self.peers[if to == Peer::Prev { 0 } else { 1 }];
        let b = self
            .keys
            .enc_keys(peer, bytes)
            .map_err(|e| MpcError::Keys(e.to_string()))?;
        Ok((b.ids.iter().map(|u| *u.as_bytes()).collect(), b.key))
    }
    fn dec(&mut self, from: Peer, ids: &[KeyId]) -> kagi_mpc::Result<Key> {
        let peer = &self.peers[if from == Peer::Prev { 0 } else { 1 }];
        let ids: Vec<uuid::Uuid> = ids.iter().map(|b| uuid::Uuid::from_bytes(*b)).collect();
        self.keys
            .dec_keys(peer, &ids)
            .map_err(|e| MpcError::Keys(e.to_string()))
    }
}

fn mpc_err(e: MpcError) -> VaultError {
    match e {
        MpcError::Invalid(m) => VaultError::Malformed(m),
        other => VaultError::Site {
            site: "mpc".into(),
            reason: other.to_string(),
        },
    }
}

/// Runs a query as this site's party (site side); returns the result envelope for the owner
/// and the QKD key the site spent (party links as sender, and the envelope).
pub async fn run_party(
    m: Arc<MpcSite>,
    manifest: TableManifest,
    caller: &str,
    req: RunRequest,
) -> Result<(Vec<u8>, u64)> {
    if manifest.owner != caller {
        return Err(VaultError::UnknownObject(manifest.object));
    }
    let party = manifest
        .party_of(&m.id)
        .ok_or_else(|| VaultError::Malformed("this site holds no share of the table".into()))?;
    if req.addrs.len() != 3 {
        return Err(VaultError::Malformed(
            "three party addresses expected".into(),
        ));
    }
    if req.min_group < m.min_group_floor {
        return Err(VaultError::Malformed(format!(
            "this site requires a minimum group size of at least {}",
            m.min_group_floor
        )));
    }
    // Check the query here too: a site never runs what it cannot vouch for.
    let planned = plan(&manifest.schema, &req.query).map_err(mpc_err)?;
    let listener = TcpListener::from_std(m.take_session(&req.session)?)?;
    // After taking the session, so that the neighbours' connections fail at once.
    if let Some(e) = req.epoch.filter(|&e| e != manifest.epoch) {
        return Err(VaultError::Malformed(format!(
            "table {} is at refresh epoch {} at this site, the query expects {e}: a refresh is \
             under way or was interrupted (`kagi vault refresh {}` settles it); retry",
            manifest.object, manifest.epoch, manifest.object
        )));
    }
    let next = (party + 1) % 3;
    let prev = (party + 2) % 3;
    let next_name = ServerName::try_from(manifest.sites[next].clone())
        .map_err(|_| VaultError::Malformed("site ID".into()))?;
    let connector = TlsConnector::from(m.client_tls.clone());
    let acceptor = TlsAcceptor::from(m.server_tls.clone());
    let next_addr = req.addrs[next].clone();
    let dial = async {
        // The next site may not be listening for the handshake yet: retry briefly.
        let mut last = String::new();
        for _ in 0..50 {
            match TcpStream::connect(&next_addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return connector
                        .connect(next_name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS to next party: {e}"));
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("cannot reach next party at {next_addr}: {last}"))
    };
    let want_prev = manifest.sites[prev].clone();
    let accept = async {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let s = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("TLS from previous party: {e}"))?;
        let who = kagi_node::tls::peer_identity(s.get_ref().1.peer_certificates());
        if who.as_deref() != Some(want_prev.as_str()) {
            return Err(format!(
                "previous party presented {who:?}, expected {want_prev}"
            ));
        }
        Ok(s)
    };
    let (d, a) = tokio::time::timeout(PARTY_TIMEOUT, async { tokio::join!(dial, accept) })
        .await
        .map_err(|_| VaultError::Site {
            site: m.id.clone(),
            reason: "party links not established in time".into(),
        })?;
    let to_site = |e: String| VaultError::Site {
        site: m.id.clone(),
        reason: e,
    };
    let next_stream = d.map_err(to_site)?;
    let prev_stream = a.map_err(to_site)?;
    let (tx_next, rx_next) = spawn_link(next_stream, "next");
    let (tx_prev, rx_prev) = spawn_link(prev_stream, "prev");
    let transport = NetTransport {
        tx: [tx_prev, tx_next],
        rx: [rx_prev, rx_next],
        stats: LinkStats::default(),
    };
    let mm = m.clone();
    let owner = manifest.owner.clone();
    let peers = [manifest.sites[prev].clone(), manifest.sites[next].clone()];
    tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, u64)> {
        let share = tables::load_share(&mm.dir, &manifest)?;
        let started = Instant::now();
        let schema = &manifest.schema;
        let result = match req.channel {
            Channel::Tls => party_run(
                transport,
                party,
                req.security,
                &share,
                schema,
                &planned,
                req.min_group,
            ),
            Channel::Its => {
                let pads = EtsiPads {
                    keys: (mm.keys)()?,
                    peers,
                };
                party_run(
                    ItsTransport::new(transport, pads),
                    party,
                    req.security,
                    &share,
                    schema,
                    &planned,
                    req.min_group,
                )
            }
        };
        let (out, stats, work) = result.map_err(mpc_err)?;
        let mut payload = from_words(&out.a);
        payload.extend_from_slice(&from_words(&out.b));
        let payload = Key::from_vec(payload);
        let info = serde_json::json!({
            "party": party,
            "stats": stats,
            "work": work,
            "elapsed_s": started.elapsed().as_secs_f64(),
        });
        let mut keys = (mm.keys)()?;
        let env = seal(
            &mut keys,
            &owner,
            "mpc-result",
            &manifest.object,
            info,
            payload.expose(),
        )?;
        Ok((
            env.0,
            keys.key_bytes_used() + stats.key_bytes[0] + stats.key_bytes[1],
        ))
    })
    .await
    .map_err(|e| VaultError::Site {
        site: m.id.clone(),
        reason: e.to_string(),
    })?
}

fn party_run<T: Transport>(
    t: T,
    party: usize,
    security: Security,
    share: &kagi_mpc::table::TableShare,
    schema: &kagi_mpc::table::Schema,
    planned: &kagi_mpc::query::Plan,
    min_group: u64,
) -> kagi_mpc::Result<(Shares<Z64>, LinkStats, PartyStats)> {
    let mut p = Party::connect(party, t, security)?;
    let o = execute(&mut p, share, schema, planned, min_group)?;
    let o = p.reveal(&o)?;
    Ok((o, p.link_stats(), p.stats()))
}

/// What a query gave the owner.
#[derive(Debug)]
pub struct QueryOutcome {
    /// The result ([`kagi_mpc::query::decode`]).
    pub result: serde_json::Value,
    /// QKD key spent per link (`"A-B"`, both directions) and for delivering the result
    /// (`"A->owner"`).
    pub key_spent_bytes: std::collections::BTreeMap<String, u64>,
    /// Bytes sent per link.
    pub bytes_sent: std::collections::BTreeMap<String, u64>,
    /// Wall time of the whole query.
    pub elapsed_s: f64,
    /// What one party computed (AND gates, 64-bit multiplications, rounds; all three do the
    /// same), so that key spent can be set against gates.
    pub work: PartyStats,
}

/// Runs `query` on a table (owner side). `sites` are the table's three sites in party order;
/// `owner` opens their result envelopes. Fails before anything runs if the query does not
/// fit the table, and without any result if a site fails, cheats or holds corrupted shares.
pub fn query_table(
    sites: &mut [RemoteSite],
    owner: &mut EtsiKeys,
    manifest: &TableManifest,
    query: &Query,
    security: Security,
    channel: Channel,
    min_group: u64,
) -> Result<QueryOutcome> {
    let started = Instant::now();
    let planned = plan(&manifest.schema, query).map_err(mpc_err)?;
    if sites.len() != 3 || sites.iter().zip(&manifest.sites).any(|(s, m)| s.id() != m) {
        return Err(VaultError::Malformed(
            "the table's three sites, in order, are needed".into(),
        ));
    }
    let mut sessions = Vec::new();
    let mut addrs = Vec::new();
    for s in sites.iter_mut() {
        let b = s.request("POST", "/v1/mpc/open", Vec::new())?;
        let v: serde_json::Value = serde_json::from_slice(&b)
            .map_err(|e| VaultError::Malformed(format!("open session: {e}")))?;
        let port = v["port"].as_u64().unwrap_or(0);
        let host = s
            .addr()
            .rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .unwrap_or_default();
        sessions.push(v["session"].as_str().unwrap_or("").to_string());
        addrs.push(format!("{host}:{port}"));
    }
    let path = format!("/v1/tables/{}/mpc/run", manifest.object);
    let before: Vec<u64> = sites
        .iter()
        .map(crate::api::SiteApi::key_bytes_used)
        .collect();
    let answers: Vec<Result<bytes::Bytes>> = std::thread::scope(|sc| {
        let hs: Vec<_> = sites
            .iter_mut()
            .zip(&sessions)
            .map(|(s, session)| {
                let req = RunRequest {
                    session: session.clone(),
                    addrs: addrs.clone(),
                    query: query.clone(),
                    security,
                    channel,
                    min_group,
                    epoch: Some(manifest.epoch),
                };
                let path = path.clone();
                sc.spawn(move || {
                    let body = serde_json::to_vec(&req)
                        .map_err(|e| VaultError::Malformed(e.to_string()))?;
                    s.request("POST", &path, body)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(VaultError::Malformed("thread".into())))
            })
            .collect()
    });
    let mut errors: Vec<VaultError> = Vec::new();
    let mut envs = Vec::new();
    for a in answers {
        match a {
            Ok(b) => envs.push(b),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        // The most telling error first: a detected cheat rather than a peer that stopped.
        let k = errors
            .iter()
            .position(|e| e.to_string().contains("cheating"))
            .unwrap_or(0);
        return Err(errors.swap_remove(k));
    }
    let mut parts = Vec::new();
    let mut stats = Vec::new();
    let mut work: Option<PartyStats> = None;
    for env in &envs {
        let (h, payload) = open(owner, env)?;
        if h.kind != "mpc-result" || h.object != manifest.object {
            return Err(VaultError::Malformed("unexpected result envelope".into()));
        }
        let w = to_words(payload.expose());
        let half = w.len() / 2;
        parts.push(Shares::<Z64>::from_parts(
            w[..half].to_vec(),
            w[half..].to_vec(),
        ));
        let st: LinkStats = serde_json::from_value(h.info["stats"].clone()).unwrap_or_default();
        stats.push(st);
        if work.is_none() {
            work = serde_json::from_value(h.info["work"].clone()).ok();
        }
    }
    let parts: [Shares<Z64>; 3] = parts
        .try_into()
        .map_err(|_| VaultError::Malformed("three results expected".into()))?;
    let words = reconstruct(&parts).ok_or_else(|| VaultError::Site {
        site: "mpc".into(),
        reason: "cheating detected: the sites' result shares disagree; no result".into(),
    })?;
    let result = decode(&manifest.schema, &planned, &words, min_group).map_err(mpc_err)?;
    let mut key_spent = std::collections::BTreeMap::new();
    let mut bytes_sent = std::collections::BTreeMap::new();
    for i in 0..3 {
        let j = (i + 1) % 3;
        let name = format!("{}-{}", manifest.sites[i], manifest.sites[j]);
        key_spent.insert(name.clone(), stats[i].key_bytes[1] + stats[j].key_bytes[0]);
        bytes_sent.insert(name, stats[i].bytes_sent[1] + stats[j].bytes_sent[0]);
        let total = crate::api::SiteApi::key_bytes_used(&sites[i]) - before[i];
        key_spent.insert(
            format!("{}->owner", manifest.sites[i]),
            total.saturating_sub(stats[i].key_bytes[0] + stats[i].key_bytes[1]),
        );
    }
    Ok(QueryOutcome {
        result,
        key_spent_bytes: key_spent,
        bytes_sent,
        elapsed_s: started.elapsed().as_secs_f64(),
        work: work.unwrap_or_default(),
    })
}
