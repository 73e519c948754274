//! A peer that floods the node with valid core messages while the core is busy cannot make it
//! queue without bound: the bounded peer inbox fills, the connection task stops reading, and TCP
//! flow control stalls the flooding peer (issue 10: bounded driver inbox).

use std::sync::Arc;
use std::time::Duration;

use kagi_control::Topology;
use kagi_km::PeerMsg;
use kagi_node::admission::{Admission, Limits};
use kagi_node::driver::PEER_INBOX;
use kagi_node::loopback::{prepare, scratch_dir};
use kagi_node::peer::accept_loop;
use kagi_node::tls;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[tokio::test]
async fn a_flooding_peer_is_stalled_by_the_bounded_core_inbox() {
    let dir = scratch_dir("peer-flood").unwrap();
    let mut topo = Topology::line("flood", &["a", "b"], 10.0, |n| vec![format!("sae-{n}")]);
    let cfgs = prepare(&dir, &mut topo, |_| {}).unwrap();
    let (a, b) = (&cfgs[0], &cfgs[1]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The core's peer inbox, with nobody reading it: a core busy with something else.
    let (tx, rx) = mpsc::channel(PEER_INBOX);
    let server = tokio::spawn(accept_loop(
        listener,
        tls::peer_server_config(&a.tls).unwrap(),
        Arc::new(vec!["b".to_string()]),
        tx,
        Arc::new(Default::default()),
        None,
        Admission::new("peer", Limits::PEERS),
        None,
    ));
    let connector = tokio_rustls::TlsConnector::from(tls::peer_client_config(&b.tls).unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = connector.connect(name, tcp).await.unwrap();
    // 64 KiB messages: far more than the socket buffers and the inbox together can hold.
    let msg = PeerMsg::LinkMissing {
        blocks: (0..8192).collect(),
    }
    .encode();
    let mut frame = ((msg.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(0);
    frame.extend_from_slice(&msg);
    let flood = 20 * PEER_INBOX;
    let mut sent = 0;
    let stalled = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..flood {
            conn.write_all(&frame).await.unwrap();
            sent += 1;
        }
        conn.flush().await.unwrap();
    })
    .await
    .is_err();
    assert!(
        stalled,
        "the flood of {flood} messages went through: nothing pushed back"
    );
    // Only the inbox's worth (plus what the socket buffers hold) was accepted.
    let queued = PEER_INBOX - rx.capacity();
    assert_eq!(queued, PEER_INBOX, "the inbox is full, not more");
    assert!(
        sent < 3 * PEER_INBOX,
        "{sent} messages were accepted while the core read none"
    );
    server.abort();
    drop(rx);
    let _ = std::fs::remove_dir_all(&dir);
}
