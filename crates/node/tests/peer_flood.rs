//! A peer that floods the node while nothing drains its queues cannot make it queue without
//! bound: the bounded queue fills, the connection task stops reading, and TCP flow control
//! stalls the flooding peer (issue 10: bounded driver inbox and photon-link inbox). Both tests
//! use the queue constructors the node itself uses, so a larger bound there fails them. Likewise
//! application calls beyond the driver's cap are refused at once rather than queued.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kagi_control::Topology;
use kagi_km::PeerMsg;
use kagi_node::admission::{Admission, Limits};
use kagi_node::driver::{peer_queue, PEER_INBOX};
use kagi_node::loopback::{prepare, scratch_dir};
use kagi_node::peer::{accept_loop, link_inbox, LinkInboxes, KIND_LINK, LINK_INBOX};
use kagi_node::tls;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// 64 KiB of payload per frame: far more than the socket buffers and a full queue hold.
const FRAME_BODY: usize = 64 << 10;

/// Starts a's peer listener with `inbox` and `links` (nobody reads either), connects as b with
/// b's node certificate and writes `frame` up to `count` times. Returns how many writes went
/// through before they stalled for 10 s (`None` when all of them went through).
async fn flood(
    tag: &str,
    inbox: mpsc::Sender<kagi_node::driver::PeerInput>,
    links: LinkInboxes,
    frame: &[u8],
    count: usize,
) -> Option<usize> {
    let dir = scratch_dir(tag).unwrap();
    let mut topo = Topology::line("flood", &["a", "b"], 10.0, |n| vec![format!("sae-{n}")]);
    let cfgs = prepare(&dir, &mut topo, |_| {}).unwrap();
    let (a, b) = (&cfgs[0], &cfgs[1]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(accept_loop(
        listener,
        tls::peer_server_config(&a.tls).unwrap(),
        Arc::new(vec!["b".to_string()]),
        inbox,
        links,
        None,
        Admission::new("peer", Limits::PEERS),
        None,
    ));
    let connector = tokio_rustls::TlsConnector::from(tls::peer_client_config(&b.tls).unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = connector.connect(name, tcp).await.unwrap();
    let mut sent = 0;
    let stalled = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..count {
            conn.write_all(frame).await.unwrap();
            sent += 1;
        }
        conn.flush().await.unwrap();
    })
    .await
    .is_err();
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
    stalled.then_some(sent)
}

/// A peer frame: length (kind byte included), kind, body.
fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    f.push(kind);
    f.extend_from_slice(body);
    f
}

#[tokio::test]
async fn a_flooding_peer_is_stalled_by_the_bounded_core_inbox() {
    // The core's peer queue, with nobody reading it: a core busy with something else.
    let (tx, rx) = peer_queue();
    let msg = PeerMsg::LinkMissing {
        blocks: (0..FRAME_BODY as u64 / 8).collect(),
    }
    .encode();
    let count = 20 * PEER_INBOX;
    let sent = flood("peer-flood", tx, Default::default(), &frame(0, &msg), count).await;
    let Some(sent) = sent else {
        panic!("the flood of {count} messages went through: nothing pushed back");
    };
    // Only the inbox's worth (plus what the socket buffers hold) was accepted.
    let queued = rx.max_capacity() - rx.capacity();
    assert_eq!(queued, PEER_INBOX, "the inbox is full, not more");
    assert!(
        sent < 3 * PEER_INBOX,
        "{sent} messages were accepted while the core read none"
    );
}

#[tokio::test]
async fn a_flooding_photon_link_is_stalled_by_its_bounded_inbox() {
    // b's photon link at a, with its post-processing task not reading.
    let (link_tx, link_rx) = link_inbox();
    let links: LinkInboxes = Arc::new(BTreeMap::from([("b".to_string(), link_tx)]));
    let (core_tx, _core_rx) = peer_queue();
    let count = 4096;
    let f = frame(KIND_LINK, &vec![7; FRAME_BODY]);
    let Some(sent) = flood("photon-flood", core_tx, links, &f, count).await else {
        panic!("the flood of {count} photon frames went through: nothing pushed back");
    };
    let queued = link_rx.max_capacity() - link_rx.capacity();
    assert_eq!(queued, LINK_INBOX, "the link inbox is full, not more");
    // Loopback socket buffers hold a few MiB: some hundred frames of 64 KiB, not thousands.
    assert!(
        sent < 1024,
        "{sent} photon frames were accepted while the link read none"
    );
}

#[tokio::test]
async fn application_calls_beyond_the_cap_are_refused_at_once() {
    use kagi_km::{AppCall, Refusal};
    use kagi_node::driver::{km_config, Driver, MAX_APP_CALLS};
    use kagi_node::service::KeyService;

    let dir = scratch_dir("app-flood").unwrap();
    let mut topo = Topology::line("flood", &["a", "b"], 10.0, |n| vec![format!("sae-{n}")]);
    let cfgs = prepare(&dir, &mut topo, |_| {}).unwrap();
    let cfg = &cfgs[0];
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let db = cfg.data_dir.join("a.db");
    let seals = kagi_node::seal::node::unseal_node(cfg, &db, None).unwrap();
    // A driver whose core never runs: every call waits for an answer that does not come.
    let driver = Driver::new(
        km_config(cfg, Arc::new(topo)),
        &db,
        cfg.store.synchronous,
        seals.store.clone(),
    );
    let handle = driver.handle();
    let status = || AppCall::Status {
        master: "sae-a".into(),
        slave: "sae-b".into(),
    };
    let waiting: Vec<_> = (0..MAX_APP_CALLS)
        .map(|_| {
            let h = handle.clone();
            tokio::spawn(async move { h.call(status()).await })
        })
        .collect();
    // Let every call take its slot.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = tokio::time::timeout(Duration::from_secs(2), handle.call(status())).await;
    assert!(
        matches!(&r, Ok(Err(Refusal::Unavailable(m))) if m.contains("busy")),
        "call {} beyond the cap was not refused at once: {r:?}",
        MAX_APP_CALLS + 1
    );
    for w in waiting {
        w.abort();
    }
    drop(driver);
    let _ = std::fs::remove_dir_all(&dir);
}
