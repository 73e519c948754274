//! Node-to-node channels: mutual TLS 1.3 with the X25519MLKEM768 hybrid group only, one
//! outbound connection per peer for what this node sends and inbound connections for what it
//! receives. Frames are a 4-byte big-endian length and a postcard-encoded [`PeerMsg`].

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

/// Senders to every peer's outbound task.
#[derive(Clone)]
pub struct Peers {
    out: Arc<BTreeMap<String, mpsc::Sender<PeerMsg>>>,
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
    mut rx: mpsc::Receiver<PeerMsg>,
    inbox: mpsc::UnboundedSender<crate::driver::DriverMsg>,
) {
    let connector = TlsConnector::from(client);
    let mut backoff = Duration::from_millis(50);
    let mut was_up = false;
    let mut carry: Option<PeerMsg> = None;
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
                let mut w = BufWriter::new(stream);
                loop {
                    let msg = match carry.take() {
                        Some(m) => m,
                        None => match rx.recv().await {
                            Some(m) => m,
                            None => return,
                        },
                    };
                    let bytes = msg.encode();
                    let res = async {
                        w.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
                        w.write_all(&bytes).await?;
                        // Write out everything queued now, then flush once.
                        while let Ok(m) = rx.try_recv() {
                            let b = m.encode();
                            w.write_all(&(b.len() as u32).to_be_bytes()).await?;
                            w.write_all(&b).await?;
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

/// Accepts inbound peer connections and feeds their messages to the driver.
pub async fn accept_loop(
    listener: TcpListener,
    server: Arc<rustls::ServerConfig>,
    known: Arc<Vec<String>>,
    inbox: mpsc::UnboundedSender<crate::driver::DriverMsg>,
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
                if n > MAX_MSG_LEN {
                    tracing::warn!(%from, n, "oversized peer frame; closing");
                    return;
                }
                buf.resize(n, 0);
                if tls.read_exact(&mut buf).await.is_err() {
                    return;
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
