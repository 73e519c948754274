//! Node-to-node channels: mutual TLS 1.3 with the X25519MLKEM768 hybrid group only, one
//! outbound connection per peer for what this node sends and inbound connections for what it
//! receives. Frames are a 4-byte big-endian length, a kind byte and the payload: a
//! postcard-encoded [`PeerMsg`] for the key manager core, or a photon link's post-processing
//! message (authenticated by the link protocol itself), which bypasses the core.

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

use crate::tls;

/// Messages queued per peer while its connection is (re)established; beyond this they are
/// dropped (the core treats that as loss and times out).
const QUEUE: usize = 4096;
/// Largest photon-link frame (a block's sifting message carries every detection).
pub const MAX_LINK_FRAME: usize = 256 << 20;
const KIND_CORE: u8 = 0;
const KIND_LINK: u8 = 1;

/// What goes to a peer.
pub enum Outgoing {
    /// A key manager message.
    Core(PeerMsg),
    /// A photon link's post-processing frame.
    Link(Vec<u8>),
}

impl Outgoing {
    fn kind_and_bytes(self) -> (u8, Vec<u8>) {
        match self {
            Outgoing::Core(m) => (KIND_CORE, m.encode()),
            Outgoing::Link(b) => (KIND_LINK, b),
        }
    }
}

/// Where inbound photon-link frames go, per peer.
pub type LinkInboxes = Arc<BTreeMap<String, mpsc::Sender<Vec<u8>>>>;

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
        let mut out = BTreeMap::new();
        for (id, addr) in peers {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(outbound(
                id.clone(),
                addr,
                client.clone(),
                rx,
                inbox.clone(),
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
) {
    let connector = TlsConnector::from(client);
    let mut backoff = Duration::from_millis(50);
    let mut was_up = false;
    let mut carry: Option<Outgoing> = None;
    loop {
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
                        peer: id.clone(),
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
                        peer: id.clone(),
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

/// Accepts inbound peer connections and feeds their messages to the driver (core messages)
/// or to the photon link of the sending peer (link frames).
pub async fn accept_loop(
    listener: TcpListener,
    server: Arc<rustls::ServerConfig>,
    known: Arc<Vec<String>>,
    inbox: mpsc::UnboundedSender<crate::driver::DriverMsg>,
    links: LinkInboxes,
) {
    let acceptor = TlsAcceptor::from(server);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let known = known.clone();
        let inbox = inbox.clone();
        let links = links.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let Some(from) = tls::peer_identity(tls.get_ref().1.peer_certificates()) else {
                return;
            };
            if !known.contains(&from) {
                tracing::warn!(%from, "peer certificate names no node of this network");
                return;
            }
            let mut len = [0u8; 4];
            let mut buf = Vec::new();
            loop {
                if tls.read_exact(&mut len).await.is_err() {
                    return;
                }
                let n = u32::from_be_bytes(len) as usize;
                let mut kind = [0u8; 1];
                if n == 0 || tls.read_exact(&mut kind).await.is_err() {
                    return;
                }
                let n = n - 1;
                let max = if kind[0] == KIND_LINK {
                    MAX_LINK_FRAME
                } else {
                    MAX_MSG_LEN
                };
                if n > max || kind[0] > KIND_LINK {
                    tracing::warn!(%from, n, kind = kind[0], "oversized or unknown peer frame; closing");
                    return;
                }
                buf.resize(n, 0);
                if tls.read_exact(&mut buf).await.is_err() {
                    return;
                }
                if kind[0] == KIND_LINK {
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
                match PeerMsg::decode(&buf) {
                    Ok(msg) => {
                        if inbox
                            .send(crate::driver::DriverMsg::Input(Input::Peer {
                                from: from.clone(),
                                msg,
                            }))
                            .is_err()
                        {
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
