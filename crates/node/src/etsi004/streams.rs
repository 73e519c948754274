//! The key streams of one node: OPEN_CONNECT, GET_KEY and CLOSE for its own applications, and
//! the messages from other nodes about streams whose other end is theirs.
//!
//! A stream is `(Key_stream_ID, source SAE, destination SAE)`. Its chunks are ETSI 014 keys of
//! `key_chunk_size` bytes for the pair (master = source, slave = destination), drawn by the
//! source's node (the owner) through the same [`KeyService`] as ETSI 014 and SKIP, so they come
//! from the same pools and assignments. The owner keeps `index → key ID` and the source's copy
//! of each chunk until the source reads it; the destination's node learns the key ID of a chunk
//! from the owner ([`StreamMsg::Want`] / [`StreamMsg::Assigned`]) and fetches its copy from the
//! key manager (`DecKeys`), which serves it once.
//!
//! Bounds: streams per SAE and per node, GET_KEY calls waiting per SAE, and how far one side may
//! read ahead of the other (`window` chunks: the key the owner holds in memory per stream). A
//! stream ends when both sides have closed or its TTL runs out; held key is zeroized then. Nothing
//! here is persisted: after a restart, streams are gone (GET_KEY answers status 9 and the
//! applications open a new stream), while keys already handed out stay handed out once.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use kagi_control::Topology;
use kagi_keymat::Key;
use kagi_km::app::{AppCall, AppReply, Refusal};
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use super::msgs::{Role, StreamMsg};
use super::wire::{sae_of_uri, Failure, GetKey, OpenConnect, Qos, Status};
use crate::config::Etsi004Config;
use crate::service::KeyService;

/// How often a waiting GET_KEY re-asks the owner, and how long it sleeps between tries for key.
const RETRY: Duration = Duration::from_millis(200);

/// Sends key-stream messages to other nodes: the peer channels in a node, anything in tests.
pub trait StreamNet: Clone + Send + Sync + 'static {
    /// Sends `msg` to node `to` (best effort; lost messages are re-sent by the waiting side).
    fn send(&self, to: &str, msg: &StreamMsg);
}

impl StreamNet for crate::peer::Peers {
    fn send(&self, to: &str, msg: &StreamMsg) {
        self.send_stream(to, msg.encode());
    }
}

/// The answer to OPEN_CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// 0, or 1 when the peer application has not opened its end yet.
    pub status: Status,
    /// The stream.
    pub ksid: Uuid,
    /// The QoS granted.
    pub qos: Qos,
}

/// A refused OPEN_CONNECT: the failure and, for status 7, the counter-proposal.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenFailed {
    /// Status and reason.
    pub failure: Failure,
    /// Status 7's counter-proposal.
    pub counter: Option<Qos>,
}

impl From<Failure> for OpenFailed {
    fn from(failure: Failure) -> Self {
        Self {
            failure,
            counter: None,
        }
    }
}

/// One delivered chunk.
#[derive(Debug)]
pub struct Chunk {
    /// Its index in the stream.
    pub index: u32,
    /// The key bytes.
    pub key: Key,
    /// The key manager's ID for it (metadata).
    pub key_id: Uuid,
}

/// A refused GET_KEY: the failure and, for status 8, the metadata size needed.
#[derive(Debug, Clone, PartialEq)]
pub struct GetFailed {
    /// Status and reason.
    pub failure: Failure,
    /// Status 8: bytes of metadata the caller must accept.
    pub metadata_needed: Option<u32>,
}

impl From<Failure> for GetFailed {
    fn from(failure: Failure) -> Self {
        Self {
            failure,
            metadata_needed: None,
        }
    }
}

/// The metadata GET_KEY returns for a chunk (JSON, `application/json`).
pub fn metadata(ksid: Uuid, index: u32, key_id: Uuid) -> String {
    serde_json::json!({"key_stream_id": ksid, "index": index, "key_id": key_id}).to_string()
}

struct Held {
    key_id: Uuid,
    /// The owner's copy for the source application, until it reads it.
    key: Option<Key>,
}

#[derive(Default)]
struct State {
    /// Sides opened by applications at this node, with their QoS.
    local: [Option<Qos>; 2],
    /// Sides opened at the other node, with their chunk size.
    remote: [Option<u32>; 2],
    /// First unread index per side (at the owner, the destination's as last reported).
    next: [u32; 2],
    /// Owner: chunks drawn. Destination's node: key IDs learnt from the owner.
    chunks: BTreeMap<u32, Held>,
    /// Destination's node: the owner's latest refusal per index.
    refused: BTreeMap<u32, Status>,
    /// When each side last got a chunk (pacing to `max_bps`).
    last: [Option<Instant>; 2],
    /// The stream was removed (closed by both sides or expired).
    gone: bool,
}

impl State {
    fn open(&self, r: Role) -> bool {
        self.local[r.idx()].is_some() || self.remote[r.idx()].is_some()
    }
    fn chunk_of(&self, r: Role) -> Option<u32> {
        self.local[r.idx()]
            .as_ref()
            .map(|q| q.key_chunk_size)
            .or(self.remote[r.idx()])
    }
    /// Forgets chunks both sides have passed (zeroizing any held copy).
    fn collect(&mut self) {
        let low = self.next[0].min(self.next[1]);
        self.chunks = self.chunks.split_off(&low);
        self.refused = self.refused.split_off(&low);
    }
}

struct Stream {
    ksid: Uuid,
    sae: [String; 2],
    node: [String; 2],
    /// Wall-clock time the stream became known here (shown to operators).
    created: SystemTime,
    expires: Instant,
    st: tokio::sync::Mutex<State>,
    changed: Notify,
}

impl Stream {
    fn role_of(&self, sae: &str) -> Option<Role> {
        [Role::Source, Role::Destination]
            .into_iter()
            .find(|r| self.sae[r.idx()] == sae)
    }
}

/// What operators see of one key stream (no key material): the ETSI 015 view lists each as an
/// application.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// Key_stream_ID.
    pub ksid: Uuid,
    /// Source and destination SAE.
    pub sae: [String; 2],
    /// The nodes serving the source and the destination.
    pub node: [String; 2],
    /// QoS granted to the sides opened at this node (source, destination).
    pub local: [Option<Qos>; 2],
    /// Which sides are open, here or at the other node (source, destination).
    pub open: [bool; 2],
    /// When the stream became known at this node.
    pub created: SystemTime,
    /// When its TTL runs out.
    pub expires: SystemTime,
}

/// A snapshot of a node's key streams, for the management listener (object-safe, so the
/// listener need not know the key service's type).
pub trait StreamsView: Send + Sync {
    /// Every stream tracked here, ordered by Key_stream_ID.
    fn snapshot(&self) -> Pin<Box<dyn Future<Output = Vec<StreamInfo>> + Send + '_>>;
}

impl<S: KeyService, N: StreamNet> StreamsView for Streams<S, N> {
    fn snapshot(&self) -> Pin<Box<dyn Future<Output = Vec<StreamInfo>> + Send + '_>> {
        Box::pin(self.infos())
    }
}

/// The node's key streams (see the module docs).
pub struct Streams<S, N> {
    me: String,
    topology: Arc<Topology>,
    cfg: Etsi004Config,
    service: S,
    net: N,
    table: Mutex<HashMap<Uuid, Arc<Stream>>>,
    waiting: Mutex<HashMap<String, usize>>,
}

/// Counts one waiting GET_KEY of an SAE until dropped.
struct Waiting<'a> {
    map: &'a Mutex<HashMap<String, usize>>,
    sae: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.sae) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.sae);
            }
        }
    }
}

fn refusal(r: Refusal) -> Failure {
    match r {
        Refusal::BadRequest(m) => Failure::new(Status::BadRequest, m),
        Refusal::Unauthorized(m) => Failure::new(Status::Unauthorized, m),
        Refusal::Unavailable(m) => Failure::new(Status::InsufficientKey, m),
    }
}

fn unknown(ksid: Uuid) -> Failure {
    Failure::new(
        Status::UnknownStream,
        format!("no key stream {ksid} is open for this application"),
    )
}

impl<S: KeyService, N: StreamNet> Streams<S, N> {
    /// The streams of node `me`.
    pub fn new(
        me: impl Into<String>,
        topology: Arc<Topology>,
        cfg: Etsi004Config,
        service: S,
        net: N,
    ) -> Arc<Self> {
        Arc::new(Self {
            me: me.into(),
            topology,
            cfg,
            service,
            net,
            table: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Stream>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn node_of(&self, sae: &str) -> Option<String> {
        self.topology.node_of_sae(sae).map(|n| n.id.clone())
    }

    /// Whether the topology links nodes `a` and `b` (through any path).
    fn connected(&self, a: &str, b: &str) -> bool {
        let mut seen = vec![a.to_string()];
        let mut todo = vec![a.to_string()];
        while let Some(n) = todo.pop() {
            if n == b {
                return true;
            }
            for (m, _) in self.topology.neighbours(&n) {
                let m = m.to_string();
                if !seen.contains(&m) {
                    seen.push(m.clone());
                    todo.push(m);
                }
            }
        }
        false
    }

    /// Number of streams tracked (for tests and status).
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Whether no stream is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every stream tracked here, ordered by Key_stream_ID (see [`StreamsView`]).
    pub async fn infos(&self) -> Vec<StreamInfo> {
        let mut list: Vec<Arc<Stream>> = self.table().values().cloned().collect();
        list.sort_by_key(|s| s.ksid);
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut out = Vec::with_capacity(list.len());
        for s in list {
            let st = s.st.lock().await;
            if st.gone {
                continue;
            }
            out.push(StreamInfo {
                ksid: s.ksid,
                sae: s.sae.clone(),
                node: s.node.clone(),
                local: st.local.clone(),
                open: [st.open(Role::Source), st.open(Role::Destination)],
                created: s.created,
                expires: wall + s.expires.saturating_duration_since(now),
            });
        }
        out
    }

    /// OPEN_CONNECT from application `caller`.
    pub async fn open(&self, caller: &str, req: OpenConnect) -> Result<Opened, OpenFailed> {
        let bad = |m: String| Failure::new(Status::BadRequest, m);
        let src = sae_of_uri(&req.source)
            .ok_or_else(|| bad(format!("source {:?} is not qkd://SAE_ID", req.source)))?;
        let dst = sae_of_uri(&req.destination).ok_or_else(|| {
            bad(format!(
                "destination {:?} is not qkd://SAE_ID",
                req.destination
            ))
        })?;
        if src == dst {
            return Err(bad("source and destination are the same application".into()).into());
        }
        let (Some(src_node), Some(dst_node)) = (self.node_of(src), self.node_of(dst)) else {
            return Err(bad("source or destination is not an SAE of this network".into()).into());
        };
        let role = if caller == src {
            Role::Source
        } else if caller == dst {
            Role::Destination
        } else {
            return Err(Failure::new(
                Status::Unauthorized,
                "the caller is neither the source nor the destination",
            )
            .into());
        };
        let qos = Qos::grant(&req.qos, &self.cfg).map_err(|(counter, why)| OpenFailed {
            failure: Failure::new(Status::QosNotMet, why),
            counter: Some(counter),
        })?;
        if !self.connected(&src_node, &dst_node) {
            return Err(Failure::new(
                Status::NoQkdConnection,
                format!("no QKD path between {src_node} and {dst_node}"),
            )
            .into());
        }
        let mine = self
            .table()
            .values()
            .filter(|s| {
                s.role_of(caller).is_some_and(|r| {
                    s.st.try_lock()
                        .map_or(true, |st| st.local[r.idx()].is_some())
                })
            })
            .count();
        if mine >= self.cfg.max_streams_per_sae {
            return Err(bad(format!(
                "this application already has {mine} key streams open (limit {})",
                self.cfg.max_streams_per_sae
            ))
            .into());
        }
        let sae = [src.to_string(), dst.to_string()];
        let stream = {
            let mut t = self.table();
            match req.key_stream_id.and_then(|k| t.get(&k).cloned()) {
                Some(s) if s.sae != sae => {
                    return Err(Failure::new(
                        Status::KsidInUse,
                        "this Key_stream_ID is in use by other applications",
                    )
                    .into())
                }
                Some(s) => s,
                None => {
                    if t.len() >= self.cfg.max_streams {
                        return Err(Failure::new(
                            Status::InsufficientKey,
                            "this node holds as many key streams as it may; retry later",
                        )
                        .into());
                    }
                    let ksid = req.key_stream_id.unwrap_or_else(Uuid::new_v4);
                    let s = Arc::new(Stream {
                        ksid,
                        sae,
                        node: [src_node.clone(), dst_node.clone()],
                        created: SystemTime::now(),
                        expires: Instant::now() + Duration::from_secs(qos.ttl.into()),
                        st: tokio::sync::Mutex::new(State::default()),
                        changed: Notify::new(),
                    });
                    t.insert(ksid, s.clone());
                    s
                }
            }
        };
        let mut st = stream.st.lock().await;
        if st.gone {
            return Err(unknown(stream.ksid).into());
        }
        if st.local[role.idx()].is_some() {
            return Err(Failure::new(
                Status::KsidInUse,
                "this application has already opened this key stream",
            )
            .into());
        }
        if let Some(c) = st.chunk_of(role.other()) {
            if c != qos.key_chunk_size {
                let mut counter = qos.clone();
                counter.key_chunk_size = c;
                return Err(OpenFailed {
                    failure: Failure::new(
                        Status::QosNotMet,
                        format!("the peer application opened with key_chunk_size {c}"),
                    ),
                    counter: Some(counter),
                });
            }
        }
        st.local[role.idx()] = Some(qos.clone());
        let peer_open = st.open(role.other());
        drop(st);
        let other = &stream.node[role.other().idx()];
        if *other != self.me {
            self.net.send(
                other,
                &StreamMsg::Joined {
                    ksid: stream.ksid,
                    source: stream.sae[0].clone(),
                    destination: stream.sae[1].clone(),
                    role,
                    chunk: qos.key_chunk_size,
                    ttl: qos.ttl,
                    reply: true,
                },
            );
        }
        stream.changed.notify_waiters();
        Ok(Opened {
            status: if peer_open {
                Status::Successful
            } else {
                Status::PeerNotConnected
            },
            ksid: stream.ksid,
            qos,
        })
    }

    /// The stream `ksid` and the caller's side of it, if the caller opened it here.
    async fn mine(&self, caller: &str, ksid: Uuid) -> Result<(Arc<Stream>, Role, Qos), Failure> {
        let s = self
            .table()
            .get(&ksid)
            .cloned()
            .ok_or_else(|| unknown(ksid))?;
        let role = s.role_of(caller).ok_or_else(|| unknown(ksid))?;
        let st = s.st.lock().await;
        let qos = st.local[role.idx()].clone().ok_or_else(|| unknown(ksid))?;
        if st.gone {
            return Err(unknown(ksid));
        }
        drop(st);
        Ok((s, role, qos))
    }

    /// CLOSE from application `caller`.
    pub async fn close(&self, caller: &str, ksid: Uuid) -> Result<(), Failure> {
        let (s, role, _) = self.mine(caller, ksid).await?;
        let mut st = s.st.lock().await;
        st.local[role.idx()] = None;
        let empty = st.local.iter().all(Option::is_none) && st.remote.iter().all(Option::is_none);
        if empty {
            st.gone = true;
            st.chunks.clear();
        }
        drop(st);
        if empty {
            self.table().remove(&ksid);
        }
        let other = &s.node[role.other().idx()];
        if *other != self.me {
            self.net.send(other, &StreamMsg::Left { ksid, role });
        }
        s.changed.notify_waiters();
        Ok(())
    }

    /// GET_KEY from application `caller`.
    pub async fn get_key(&self, caller: &str, req: GetKey) -> Result<Chunk, GetFailed> {
        let (s, role, qos) = self.mine(caller, req.key_stream_id).await?;
        let _waiting = {
            let mut m = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(caller.to_string()).or_default();
            if *n >= self.cfg.max_waiting_per_sae {
                return Err(Failure::new(
                    Status::InsufficientKey,
                    format!(
                        "{} GET_KEY calls of this application are already waiting",
                        *n
                    ),
                )
                .into());
            }
            *n += 1;
            Waiting {
                map: &self.waiting,
                sae: caller.to_string(),
            }
        };
        let deadline = Instant::now() + Duration::from_millis(qos.timeout.into());
        let index = {
            let st = s.st.lock().await;
            let next = st.next[role.idx()];
            let i = req.index.unwrap_or(next);
            if i < next {
                return Err(Failure::new(
                    Status::BadRequest,
                    format!("index {i} was already read or skipped (next is {next})"),
                )
                .into());
            }
            if let Some(m) = &req.metadata {
                let need = metadata(s.ksid, i, Uuid::nil()).len() as u32;
                if m.size < need {
                    return Err(GetFailed {
                        failure: Failure::new(
                            Status::MetadataTooSmall,
                            format!("metadata needs {need} bytes"),
                        ),
                        metadata_needed: Some(need),
                    });
                }
            }
            // Pace to max_bps: one chunk per chunk_bits / max_bps seconds.
            if let Some(last) = st.last[role.idx()] {
                let gap = Duration::from_secs_f64(
                    f64::from(qos.key_chunk_size) * 8.0 / f64::from(qos.max_bps.max(1)),
                );
                let at = last + gap;
                if at > deadline {
                    return Err(Failure::new(
                        Status::Timeout,
                        "max_bps allows no chunk before the timeout",
                    )
                    .into());
                }
                drop(st);
                tokio::time::sleep_until(at).await;
            }
            i
        };
        let got = match role {
            Role::Source => self.source_read(&s, index, &qos, deadline).await,
            Role::Destination => self.destination_read(&s, index, deadline).await,
        }?;
        let mut st = s.st.lock().await;
        st.next[role.idx()] = st.next[role.idx()].max(index.saturating_add(1));
        st.last[role.idx()] = Some(Instant::now());
        if s.node[0] == self.me {
            st.collect();
        } else {
            // The destination's node keeps only key IDs it has yet to fetch, and tells the owner.
            let next = st.next[1];
            st.chunks = st.chunks.split_off(&next);
            st.refused = st.refused.split_off(&next);
            self.net
                .send(&s.node[0], &StreamMsg::Read { ksid: s.ksid, next });
        }
        Ok(got)
    }

    /// The source's read at the owner: take the held copy, drawing the chunk first if needed.
    async fn source_read(
        &self,
        s: &Stream,
        index: u32,
        qos: &Qos,
        deadline: Instant,
    ) -> Result<Chunk, GetFailed> {
        loop {
            let why = {
                let mut st = s.st.lock().await;
                if st.gone {
                    return Err(unknown(s.ksid).into());
                }
                match self.draw(s, &mut st, index, qos.key_chunk_size).await {
                    Ok(()) => {
                        let held = st.chunks.get_mut(&index).and_then(|h| {
                            let key = h.key.take()?;
                            Some((h.key_id, key))
                        });
                        match held {
                            Some((key_id, key)) => return Ok(Chunk { index, key, key_id }),
                            None => {
                                return Err(Failure::new(
                                    Status::BadRequest,
                                    format!("index {index} was already read"),
                                )
                                .into())
                            }
                        }
                    }
                    Err(f) if f.status == Status::InsufficientKey => f,
                    Err(f) => return Err(f.into()),
                }
            };
            if Instant::now() + RETRY > deadline {
                return Err(why.into());
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// At the owner, with the stream locked: makes sure chunk `index` is drawn.
    async fn draw(
        &self,
        s: &Stream,
        st: &mut State,
        index: u32,
        chunk: u32,
    ) -> Result<(), Failure> {
        if st.chunks.contains_key(&index) {
            return Ok(());
        }
        let low = st.next[0].min(st.next[1]);
        if u64::from(index) >= u64::from(low) + u64::from(self.cfg.window) {
            return Err(Failure::new(
                Status::InsufficientKey,
                format!(
                    "index {index} is more than {} chunks ahead of the slower application",
                    self.cfg.window
                ),
            ));
        }
        if !st.open(Role::Destination) || !st.open(Role::Source) {
            if *s.node[1] != self.me {
                self.joined_reply(s, st);
            }
            return Err(Failure::new(
                Status::PeerNotConnectedGetKey,
                "the peer application has not opened this key stream",
            ));
        }
        let call = AppCall::EncKeys {
            master: s.sae[0].clone(),
            slave: s.sae[1].clone(),
            number: Some(1),
            size_bits: Some(u64::from(chunk) * 8),
            additional_slaves: Vec::new(),
            route: None,
        };
        match self.service.call(call).await {
            Ok(AppReply::Keys(mut k)) if k.len() == 1 => {
                let k = k.remove(0);
                // A chunk the source skipped is never handed to it: drop its copy now.
                let key = (index >= st.next[0]).then_some(k.key);
                st.chunks.insert(index, Held { key_id: k.id, key });
                Ok(())
            }
            Ok(_) => Err(Failure::new(
                Status::InsufficientKey,
                "the key manager returned no key",
            )),
            Err(r) => Err(refusal(r)),
        }
    }

    /// Asks the other node to say which sides are open there (after a lost message).
    fn joined_reply(&self, s: &Stream, st: &State) {
        for r in [Role::Source, Role::Destination] {
            if let Some(q) = &st.local[r.idx()] {
                let other = &s.node[r.other().idx()];
                if *other != self.me {
                    self.net.send(
                        other,
                        &StreamMsg::Joined {
                            ksid: s.ksid,
                            source: s.sae[0].clone(),
                            destination: s.sae[1].clone(),
                            role: r,
                            chunk: q.key_chunk_size,
                            ttl: q.ttl,
                            reply: true,
                        },
                    );
                }
            }
        }
    }

    /// At the owner: the key ID of chunk `index` for the destination, drawing it if needed.
    async fn assign(&self, s: &Stream, index: u32, dst_next: u32) -> Result<Uuid, Failure> {
        let mut st = s.st.lock().await;
        if st.gone {
            return Err(unknown(s.ksid));
        }
        st.next[1] = st.next[1].max(dst_next);
        st.collect();
        let chunk = st.chunk_of(Role::Source).ok_or_else(|| {
            Failure::new(
                Status::PeerNotConnectedGetKey,
                "the source has not opened this key stream",
            )
        })?;
        self.draw(s, &mut st, index, chunk).await?;
        Ok(st.chunks[&index].key_id)
    }

    /// The destination's read: learn the chunk's key ID from the owner, then fetch the key from
    /// the key manager.
    async fn destination_read(
        &self,
        s: &Stream,
        index: u32,
        deadline: Instant,
    ) -> Result<Chunk, GetFailed> {
        let owner = s.node[0].clone();
        let mut last_why: Option<Failure> = None;
        loop {
            let known = {
                let st = s.st.lock().await;
                if st.gone {
                    return Err(unknown(s.ksid).into());
                }
                if !st.open(Role::Source) && !st.chunks.contains_key(&index) {
                    if owner != self.me {
                        self.joined_reply(s, &st);
                    }
                    return Err(Failure::new(
                        Status::PeerNotConnectedGetKey,
                        "the source application has not opened this key stream",
                    )
                    .into());
                }
                let next = st.next[1];
                let have = st.chunks.get(&index).map(|h| h.key_id);
                match have {
                    Some(id) => Some(id),
                    None if owner == self.me => {
                        drop(st);
                        match self.assign(s, index, next).await {
                            Ok(id) => Some(id),
                            Err(f) if f.status == Status::InsufficientKey => {
                                last_why = Some(f);
                                None
                            }
                            Err(f) => return Err(f.into()),
                        }
                    }
                    None => {
                        if let Some(status) = st.refused.get(&index) {
                            match status {
                                Status::InsufficientKey => {
                                    last_why = Some(Failure::new(
                                        *status,
                                        "not enough key for this stream yet",
                                    ))
                                }
                                other => {
                                    return Err(Failure::new(
                                        *other,
                                        "the source's node refused this chunk",
                                    )
                                    .into())
                                }
                            }
                        }
                        self.net.send(
                            &owner,
                            &StreamMsg::Want {
                                ksid: s.ksid,
                                index,
                                next,
                            },
                        );
                        None
                    }
                }
            };
            if let Some(key_id) = known {
                let call = AppCall::DecKeys {
                    slave: s.sae[1].clone(),
                    master: s.sae[0].clone(),
                    key_ids: vec![key_id],
                };
                match self.service.call(call).await {
                    Ok(AppReply::Keys(mut k)) if k.len() == 1 => {
                        return Ok(Chunk {
                            index,
                            key: k.remove(0).key,
                            key_id,
                        })
                    }
                    Ok(_) => return Err(Failure::new(Status::InsufficientKey, "no key").into()),
                    Err(Refusal::Unavailable(m)) => {
                        last_why = Some(Failure::new(Status::InsufficientKey, m))
                    }
                    Err(r) => return Err(refusal(r).into()),
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(last_why
                    .unwrap_or_else(|| {
                        Failure::new(
                            Status::Timeout,
                            "the source's node did not assign this chunk before the timeout",
                        )
                    })
                    .into());
            }
            let _ = tokio::time::timeout((deadline - now).min(RETRY), s.changed.notified()).await;
        }
    }

    /// Handles a message from node `from` (checked against the stream's nodes: a node speaks
    /// only for the applications it serves).
    pub fn on_msg(self: &Arc<Self>, from: &str, msg: StreamMsg) {
        let ksid = msg.ksid();
        match msg {
            StreamMsg::Joined {
                source,
                destination,
                role,
                chunk,
                ttl,
                reply,
                ..
            } => {
                let sae = [source, destination];
                let (Some(n0), Some(n1)) = (self.node_of(&sae[0]), self.node_of(&sae[1])) else {
                    return;
                };
                let node = [n0, n1];
                if node[role.idx()] != from || node[role.other().idx()] != self.me {
                    tracing::debug!(%from, %ksid, "ETSI 004 Joined from a node that does not serve that side; dropped");
                    return;
                }
                let s = {
                    let mut t = self.table();
                    match t.get(&ksid) {
                        Some(s) if s.sae == sae => s.clone(),
                        Some(_) => return,
                        None if t.len() >= self.cfg.max_streams => return,
                        None => {
                            let ttl = ttl.min(self.cfg.max_ttl_s);
                            let s = Arc::new(Stream {
                                ksid,
                                sae,
                                node,
                                created: SystemTime::now(),
                                expires: Instant::now() + Duration::from_secs(ttl.into()),
                                st: tokio::sync::Mutex::new(State::default()),
                                changed: Notify::new(),
                            });
                            t.insert(ksid, s.clone());
                            s
                        }
                    }
                };
                let me = self.clone();
                tokio::spawn(async move {
                    let mut st = s.st.lock().await;
                    if st.gone {
                        return;
                    }
                    st.remote[role.idx()] = Some(chunk);
                    if reply {
                        if let Some(q) = &st.local[role.other().idx()] {
                            me.net.send(
                                &s.node[role.idx()],
                                &StreamMsg::Joined {
                                    ksid,
                                    source: s.sae[0].clone(),
                                    destination: s.sae[1].clone(),
                                    role: role.other(),
                                    chunk: q.key_chunk_size,
                                    ttl: q.ttl,
                                    reply: false,
                                },
                            );
                        }
                    }
                    drop(st);
                    s.changed.notify_waiters();
                });
            }
            StreamMsg::Left { role, .. } => {
                let Some(s) = self.table().get(&ksid).cloned() else {
                    return;
                };
                if s.node[role.idx()] != from {
                    return;
                }
                let me = self.clone();
                tokio::spawn(async move {
                    let mut st = s.st.lock().await;
                    st.remote[role.idx()] = None;
                    if st.local.iter().all(Option::is_none) && st.remote.iter().all(Option::is_none)
                    {
                        st.gone = true;
                        st.chunks.clear();
                        me.table().remove(&ksid);
                    }
                    drop(st);
                    s.changed.notify_waiters();
                });
            }
            StreamMsg::Want { index, next, .. } => {
                let Some(s) = self.table().get(&ksid).cloned() else {
                    return;
                };
                if s.node[1] != from || s.node[0] != self.me {
                    return;
                }
                let me = self.clone();
                tokio::spawn(async move {
                    let answer = match me.assign(&s, index, next).await {
                        Ok(key_id) => StreamMsg::Assigned {
                            ksid,
                            index,
                            key_id,
                        },
                        Err(f) => StreamMsg::Refused {
                            ksid,
                            index,
                            status: f.status.code(),
                        },
                    };
                    me.net.send(&s.node[1], &answer);
                });
            }
            StreamMsg::Read { next, .. } => {
                let Some(s) = self.table().get(&ksid).cloned() else {
                    return;
                };
                if s.node[1] != from || s.node[0] != self.me {
                    return;
                }
                tokio::spawn(async move {
                    let mut st = s.st.lock().await;
                    st.next[1] = st.next[1].max(next);
                    st.collect();
                });
            }
            StreamMsg::Assigned { index, key_id, .. } => {
                let Some(s) = self.table().get(&ksid).cloned() else {
                    return;
                };
                if s.node[0] != from || s.node[1] != self.me {
                    return;
                }
                let window = self.cfg.window;
                tokio::spawn(async move {
                    let mut st = s.st.lock().await;
                    let next = st.next[1];
                    if index >= next && u64::from(index) < u64::from(next) + u64::from(window) {
                        st.chunks.insert(index, Held { key_id, key: None });
                        st.refused.remove(&index);
                    }
                    drop(st);
                    s.changed.notify_waiters();
                });
            }
            StreamMsg::Refused { index, status, .. } => {
                let Some(s) = self.table().get(&ksid).cloned() else {
                    return;
                };
                let Some(status) = Status::from_code(status) else {
                    return;
                };
                if s.node[0] != from || s.node[1] != self.me {
                    return;
                }
                let window = self.cfg.window;
                tokio::spawn(async move {
                    let mut st = s.st.lock().await;
                    let next = st.next[1];
                    if index >= next && st.refused.len() < window as usize {
                        st.refused.insert(index, status);
                    }
                    drop(st);
                    s.changed.notify_waiters();
                });
            }
        }
    }

    /// Removes streams whose TTL has run out (their held key is zeroized).
    pub async fn expire(&self) {
        let now = Instant::now();
        let old: Vec<Arc<Stream>> = {
            let mut t = self.table();
            let ids: Vec<Uuid> = t
                .iter()
                .filter(|(_, s)| s.expires <= now)
                .map(|(k, _)| *k)
                .collect();
            ids.iter().filter_map(|k| t.remove(k)).collect()
        };
        for s in old {
            let mut st = s.st.lock().await;
            st.gone = true;
            st.chunks.clear();
            drop(st);
            s.changed.notify_waiters();
        }
    }
}
