//! Node-to-node channels: mutual TLS 1.3 with the X25519MLKEM768 hybrid group only, one
//! outbound connection per peer for what this node sends and inbound connections for what it
//! receives. Frames are a 4-byte big-endian length, a kind byte and the payload: a
//! postcard-encoded [`PeerMsg`] for the key manager core, a photon link's post-processing
//! message (authenticated by the link protocol itself), a signed audit checkpoint for the
//! receiving node to witness ([`crate::audit::witness`]), or an ETSI 004 key-stream message
//! (which chunk of a stream is which key ID; no key bytes); all but the first bypass the core.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kagi_km::msgs::MAX_MSG_LEN;
use kagi_km::{Input, PeerMsg};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::admission::{Admission, Refused};
use crate::tls;
use kagi_km::NodeId;

/// Messages queued per peer while its connection is (re)established; beyond this they are
/// dropped (the core treats that as loss and times out).
const QUEUE: usize = 4096;
/// Largest photon-link frame (a block's sifting message carries every detection).
pub const MAX_LINK_FRAME: usize = 256 << 20;
/// Largest ETSI 004 key-stream frame (a stream message names SAEs, a stream and a key ID).
pub const MAX_STREAM_FRAME: usize = 1024;
/// Photon-link frames queued per link: the link protocol has one or two in flight, so more only
/// hold memory (up to [`MAX_LINK_FRAME`] each); a connection whose frame does not fit stops
/// reading and the rest waits in TCP.
pub const LINK_INBOX: usize = 4;
const KIND_CORE: u8 = 0;
/// Frame kind of photon-link post-processing messages.
pub const KIND_LINK: u8 = 1;
const KIND_AUDIT: u8 = 2;
const KIND_STREAM: u8 = 3;

/// What goes to a peer.
pub enum Outgoing {
    /// A key manager message.
    Core(PeerMsg),
    /// A photon link's post-processing frame.
    Link(Vec<u8>),
    /// An audit checkpoint for the peer to witness.
    Audit(Vec<u8>),
    /// An ETSI 004 key-stream message (see [`crate::etsi004`]).
    Stream(Vec<u8>),
}

impl Outgoing {
    fn kind_and_bytes(self) -> (u8, Vec<u8>) {
        match self {
            Outgoing::Core(m) => (KIND_CORE, m.encode()),
            Outgoing::Link(b) => (KIND_LINK, b),
            Outgoing::Audit(b) => (KIND_AUDIT, b),
            Outgoing::Stream(b) => (KIND_STREAM, b),
        }
    }
}

/// Where inbound photon-link frames go, per peer.
pub type LinkInboxes = Arc<BTreeMap<String, mpsc::Sender<Vec<u8>>>>;

/// One photon link's inbound frame queue, bounded at [`LINK_INBOX`].
pub fn link_inbox() -> (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
    mpsc::channel(LINK_INBOX)
}

/// Where inbound ETSI 004 key-stream frames go, with the sending node's ID. Full: the frame is
/// dropped (stream messages are re-sent by whoever waits for an answer).
pub type StreamInbox = Option<mpsc::Sender<(String, Vec<u8>)>>;

/// Senders to every peer's outbound task.
#[derive(Clone)]
pub struct Peers {
    out: Arc<BTreeMap<String, mpsc::Sender<Outgoing>>>,
}

impl Peers {
    /// Starts one outbound task per peer (`(node id, address)`), reporting up/down and nothing
    /// else to `inbox`.
    pub fn start(
        peers: Vec<(String, String)>,
        client: Arc<rustls::ClientConfig>,
        inbox: mpsc::UnboundedSender<crate::driver::DriverMsg>,
    ) -> Self {
        Self::start_with(peers, client, inbox, &Default::default(), Duration::MAX)
    }

    /// Like [`start`](Self::start), but the connection to each peer in `on_demand` is opened
    /// only when there is something to send, and closed after `idle` without a message (not
    /// reported down: the peer is not known to be down, only not needed now).
    pub fn start_with(
        peers: Vec<(String, String)>,
        client: Arc<rustls::ClientConfig>,
        inbox: mpsc::UnboundedSender<crate::driver::DriverMsg>,
        on_demand: &std::collections::BTreeSet<String>,
        idle: Duration,
    ) -> Self {
        let mut out = BTreeMap::new();
        for (id, addr) in peers {
            let (tx, rx) = mpsc::channel(QUEUE);
            let idle = on_demand.contains(&id).then_some(idle);
            tokio::spawn(outbound(
                id.clone(),
                addr,
                client.clone(),
                rx,
                inbox.clone(),
                idle,
            ));
            out.insert(id, tx);
        }
        Self { out: Arc::new(out) }
    }

    /// Queues a message for `to` (dropped if the queue is full or the peer unknown).
    pub fn send(&self, to: &str, msg: PeerMsg) {
        self.queue(to, Outgoing::Core(msg));
    }

    /// Queues a photon-link frame for `to` (dropped like core messages; the link protocol
    /// times the block out).
    pub fn send_link(&self, to: &str, frame: Vec<u8>) {
        self.queue(to, Outgoing::Link(frame));
    }

    /// Queues an audit checkpoint frame for `to` to witness (dropped like core messages).
    pub fn send_audit(&self, to: &str, frame: Vec<u8>) {
        self.queue(to, Outgoing::Audit(frame));
    }

    /// Queues an ETSI 004 key-stream frame for `to` (dropped like core messages; the waiting
    /// side re-sends).
    pub fn send_stream(&self, to: &str, frame: Vec<u8>) {
        self.queue(to, Outgoing::Stream(frame));
    }

    fn queue(&self, to: &str, msg: Outgoing) {
        match self.out.get(to) {
            Some(tx) => {
                if tx.try_send(msg).is_err() {
                    tracing::warn!(peer = to, "peer queue full; message dropped");
                }
            }
            None => tracing::warn!(peer = to, "no channel to unknown peer"),
        }
    }
}

async fn outbound(
    id: String,
    addr: String,
    client: Arc<rustls::ClientConfig>,
    mut rx: mpsc::Receiver<Outgoing>,
    inbox: mpsc::UnboundedSender<crate::driver::DriverMsg>,
    idle: Option<Duration>,
) {
    let connector = TlsConnector::from(client);
    let mut backoff = Duration::from_millis(50);
    let mut was_up = false;
    let mut carry: Option<Outgoing> = None;
    loop {
        if idle.is_some() && carry.is_none() {
            // An on-demand peer: connect only once there is something to send.
            match rx.recv().await {
                Some(m) => carry = Some(m),
                None => return,
            }
        }
        let conn = async {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("localhost").expect("static name");
            let tls = connector.connect(name, tcp).await?;
            let cn = tls::peer_identity(tls.get_ref().1.peer_certificates());
            if cn.as_deref() != Some(id.as_str()) {
                return Err(std::io::Error::other(format!(
                    "peer at {addr} presented {cn:?}, expected {id}"
                )));
            }
            if let Some(g) = tls.get_ref().1.negotiated_key_exchange_group() {
                tracing::debug!(peer = %id, group = ?g.name(), "peer channel up");
            }
            Ok::<_, std::io::Error>(tls)
        };
        match conn.await {
            Ok(stream) => {
                backoff = Duration::from_millis(50);
                if !was_up {
                    was_up = true;
                    let _ = inbox.send(crate::driver::DriverMsg::Input(Input::PeerUp {
                        peer: NodeId::from(&id),
                    }));
                }
                // The peer never writes on this connection; a read that returns means it
                // closed (e.g. restarted), so reconnect before the next message is lost.
                let (mut r, w) = tokio::io::split(stream);
                let mut w = BufWriter::new(w);
                let mut probe = [0u8; 1];
                loop {
                    let msg = match carry.take() {
                        Some(m) => m,
                        None => tokio::select! {
                            m = rx.recv() => match m {
                                Some(m) => m,
                                None => return,
                            },
                            _ = r.read(&mut probe) => {
                                tracing::debug!(peer = %id, "peer closed the channel");
                                break;
                            }
                            _ = tokio::time::sleep(idle.unwrap_or(Duration::MAX)), if idle.is_some() => {
                                tracing::debug!(peer = %id, "no message for a while; closing the channel until one comes");
                                break;
                            }
                        },
                    };
                    let res = async {
                        write_frame(&mut w, msg).await?;
                        // Write out everything queued now, then flush once.
                        while let Ok(m) = rx.try_recv() {
                            write_frame(&mut w, m).await?;
                        }
                        w.flush().await
                    }
                    .await;
                    if let Err(e) = res {
                        tracing::debug!(peer = %id, error = %e, "peer channel broke");
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(peer = %id, error = %e, "cannot reach peer");
                if was_up {
                    was_up = false;
                    let _ = inbox.send(crate::driver::DriverMsg::Input(Input::PeerDown {
                        peer: NodeId::from(&id),
                    }));
                }
                // Drop what is queued: the core times out and retries on its own terms.
                while let Ok(_m) = rx.try_recv() {}
                carry = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    msg: Outgoing,
) -> std::io::Result<()> {
    let (kind, bytes) = msg.kind_and_bytes();
    w.write_all(&(bytes.len() as u32 + 1).to_be_bytes()).await?;
    w.write_all(&[kind]).await?;
    w.write_all(&bytes).await
}

/// Accepts inbound peer connections and feeds their messages to the driver (core messages),
/// to the photon link of the sending peer (link frames) or to the ETSI 004 server (stream
/// frames).
///
/// Connections count against `admission` (pending handshakes evicted oldest-first, a few
/// authenticated connections per node). A frame's body is read as it arrives, so a length prefix
/// alone never makes the node allocate; lengths above the limit of the frame's kind close the
/// connection. Queues to the driver and to photon links apply back-pressure to the sender's TCP
/// connection instead of growing.
#[allow(clippy::too_many_arguments)] // one destination per frame kind, plus the listener's own
pub async fn accept_loop(
    listener: TcpListener,
    server: Arc<rustls::ServerConfig>,
    known: Arc<Vec<String>>,
    inbox: mpsc::Sender<crate::driver::PeerInput>,
    links: LinkInboxes,
    streams: StreamInbox,
    admission: Admission,
    witness: Option<Arc<crate::audit::witness::Witness>>,
) {
    let acceptor = TlsAcceptor::from(server);
    loop {
        let (tcp, _) = admission.accept(&listener).await;
        let acceptor = acceptor.clone();
        let known = known.clone();
        let inbox = inbox.clone();
        let links = links.clone();
        let streams = streams.clone();
        let admission = admission.clone();
        let witness = witness.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = admission.handshake(acceptor.accept(tcp)).await else {
                return;
            };
            let Some(from) = tls::peer_identity(tls.get_ref().1.peer_certificates()) else {
                admission.refuse(Refused::UnknownIdentity, "");
                return;
            };
            if !known.contains(&from) {
                admission.refuse(Refused::UnknownIdentity, &from);
                return;
            }
            // The role comes from the certificate's extended key usage, not its CN: an SAE
            // certificate named like a node is not that node.
            if !tls::has_node_role(tls.get_ref().1.peer_certificates()) {
                admission.refuse(Refused::NotANode, &from);
                return;
            }
            let Ok(_slot) = admission.admit(&from) else {
                return;
            };
            let mut buf = Vec::new();
            loop {
                let kind = match read_frame(&mut tls, &mut buf).await {
                    Ok(Some(kind)) => kind,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(%from, error = %e, "bad peer frame; closing");
                        return;
                    }
                };
                if kind == KIND_LINK {
                    match links.get(&from) {
                        Some(tx) => {
                            if tx.send(std::mem::take(&mut buf)).await.is_err() {
                                return;
                            }
                        }
                        None => {
                            tracing::warn!(%from, "photon link frame from a peer with no photon link; dropped")
                        }
                    }
                    continue;
                }
                if kind == KIND_AUDIT {
                    match &witness {
                        // A signature check and one appended line: done inline, which also
                        // back-pressures a peer that floods checkpoints.
                        Some(w) => {
                            w.receive(&from, &buf);
                        }
                        None => tracing::debug!(%from, "audit checkpoint with no witness; dropped"),
                    }
                    continue;
                }
                if kind == KIND_STREAM {
                    match &streams {
                        Some(tx) => {
                            if tx
                                .try_send((from.clone(), std::mem::take(&mut buf)))
                                .is_err()
                            {
                                tracing::debug!(%from, "ETSI 004 stream inbox full; frame dropped");
                            }
                        }
                        None => {
                            tracing::debug!(%from, "ETSI 004 stream frame but no ETSI 004 server; dropped")
                        }
                    }
                    continue;
                }
                match PeerMsg::decode(&buf) {
                    Ok(msg) => {
                        // Waits while the core's bounded peer queue is full: this connection
                        // stops reading and TCP slows the sender down.
                        if inbox.send((from.clone(), msg)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%from, error = %e, "malformed peer frame; closing");
                        return;
                    }
                }
            }
        });
    }
}

/// Why an inbound frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is zero (no kind byte).
    #[error("empty frame")]
    Empty,
    /// The kind byte names no known frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The length exceeds the limit for the frame's kind.
    #[error("frame of {len} bytes exceeds the {max}-byte limit for its kind")]
    TooLong {
        /// Announced body length.
        len: usize,
        /// Limit for the kind.
        max: usize,
    },
    /// The connection ended inside a frame.
    #[error("connection ended inside a frame")]
    Truncated,
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Largest body of a frame of `kind`, or `None` for an unknown kind.
pub fn frame_limit(kind: u8) -> Option<usize> {
    match kind {
        KIND_CORE => Some(MAX_MSG_LEN),
        KIND_LINK => Some(MAX_LINK_FRAME),
        KIND_AUDIT => Some(crate::audit::witness::MAX_FRAME),
        KIND_STREAM => Some(MAX_STREAM_FRAME),
        _ => None,
    }
}

/// Reads one frame into `buf` (replacing its contents) and returns its kind, or `None` at a clean
/// end of stream. The body is read as it arrives, so memory follows the bytes actually received,
/// never the announced length.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<u8>, FrameError> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => got += n,
        }
    }
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let kind = head[4];
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let max = frame_limit(kind).ok_or(FrameError::UnknownKind(kind))?;
    let body = len - 1;
    if body > max {
        return Err(FrameError::TooLong { len: body, max });
    }
    buf.clear();
    let read = (&mut *r).take(body as u64).read_to_end(buf).await?;
    if read != body {
        return Err(FrameError::Truncated);
    }
    Ok(Some(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut f = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        f.push(kind);
        f.extend_from_slice(body);
        f
    }

    #[tokio::test]
    async fn frames_round_trip_and_clean_end_is_none() {
        let mut bytes = frame(KIND_CORE, b"abc");
        bytes.extend(frame(KIND_LINK, &[7; 100]));
        let mut r = &bytes[..];
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut r, &mut buf).await.unwrap(), Some(KIND_CORE));
        assert_eq!(buf, b"abc");
        assert_eq!(read_frame(&mut r, &mut buf).await.unwrap(), Some(KIND_LINK));
        assert_eq!(buf, vec![7; 100]);
        assert_eq!(read_frame(&mut r, &mut buf).await.unwrap(), None);
    }

    #[tokio::test]
    async fn announced_length_is_checked_per_kind_and_never_preallocated() {
        let mut buf = Vec::new();
        // A core frame announcing just over its limit is refused before any body is read.
        let over = ((MAX_MSG_LEN + 2) as u32).to_be_bytes();
        let mut r: &[u8] = &[over[0], over[1], over[2], over[3], KIND_CORE];
        assert!(matches!(
            read_frame(&mut r, &mut buf).await,
            Err(FrameError::TooLong { .. })
        ));
        // A link frame may be large, but announcing 200 MiB and sending 3 bytes allocates only
        // what arrived.
        let big = (200u32 << 20).to_be_bytes();
        let mut r: &[u8] = &[big[0], big[1], big[2], big[3], KIND_LINK, 1, 2, 3];
        assert!(matches!(
            read_frame(&mut r, &mut buf).await,
            Err(FrameError::Truncated)
        ));
        assert!(buf.capacity() < 1 << 20, "capacity {}", buf.capacity());
        let mut r: &[u8] = &[0, 0, 0, 0, KIND_CORE];
        assert!(matches!(
            read_frame(&mut r, &mut buf).await,
            Err(FrameError::Empty)
        ));
        let mut r: &[u8] = &frame(9, b"x");
        assert!(matches!(
            read_frame(&mut r, &mut buf).await,
            Err(FrameError::UnknownKind(9))
        ));
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut r, &mut buf).await,
            Err(FrameError::Truncated)
        ));
    }
}
