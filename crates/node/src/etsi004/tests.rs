//! Streams of two or three nodes in one process: a key manager stand-in that hands each key out
//! once per side (as `kagi-km` does) and a network that delivers stream messages between the
//! nodes' [`Streams`] (or drops them, to test timeouts). The real key manager and peer channels
//! are exercised by `crates/cli/tests/etsi004.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kagi_control::Topology;
use kagi_keymat::Key;
use kagi_km::app::{AppCall, AppReply, DeliveredKey, Refusal};
use uuid::Uuid;

use super::msgs::{Role, StreamMsg};
use super::streams::{StreamNet, Streams};
use super::wire::{GetKey, MetadataIn, OpenConnect, QosIn, Status};
use crate::config::Etsi004Config;
use crate::service::KeyService;

const TOPO: &str = r#"
name = "t"
seed = 1
[[nodes]]
id = "a"
saes = ["sa", "sa2"]
[[nodes]]
id = "b"
saes = ["sb"]
[[nodes]]
id = "c"
saes = ["sc"]
[[links]]
a = "a"
b = "b"
length_km = 10.0
"#;

/// A key handed out: (master, slave, bytes, served to the slave).
type Issued = (String, String, Vec<u8>, bool);

/// Keys by ID.
#[derive(Clone, Default)]
struct Km {
    keys: Arc<Mutex<HashMap<Uuid, Issued>>>,
    dry: Arc<AtomicBool>,
}

impl KeyService for Km {
    async fn call(&self, call: AppCall) -> Result<AppReply, Refusal> {
        match call {
            AppCall::EncKeys {
                master,
                slave,
                size_bits,
                ..
            } => {
                if self.dry.load(Ordering::SeqCst) {
                    return Err(Refusal::Unavailable("no key".into()));
                }
                let id = Uuid::new_v4();
                let bytes: Vec<u8> = (0..size_bits.unwrap_or(256) / 8)
                    .map(|_| rand::random())
                    .collect();
                self.keys
                    .lock()
                    .unwrap()
                    .insert(id, (master, slave, bytes.clone(), false));
                Ok(AppReply::Keys(vec![DeliveredKey {
                    id,
                    key: Key::from_vec(bytes),
                    paths: None,
                }]))
            }
            AppCall::DecKeys {
                slave,
                master,
                key_ids,
            } => {
                let mut k = self.keys.lock().unwrap();
                let e = k
                    .get_mut(&key_ids[0])
                    .filter(|e| e.0 == master && e.1 == slave && !e.3)
                    .ok_or_else(|| Refusal::BadRequest(Refusal::KEYS_NOT_FOUND.into()))?;
                e.3 = true;
                Ok(AppReply::Keys(vec![DeliveredKey {
                    id: key_ids[0],
                    key: Key::from_slice(&e.2),
                    paths: None,
                }]))
            }
            AppCall::Status { .. } => Err(Refusal::BadRequest("no".into())),
        }
    }
}

type Node = Streams<Km, Net>;

#[derive(Clone)]
struct Net {
    me: String,
    nodes: Arc<Mutex<HashMap<String, Arc<Node>>>>,
    up: Arc<AtomicBool>,
}

impl StreamNet for Net {
    fn send(&self, to: &str, msg: &StreamMsg) {
        if !self.up.load(Ordering::SeqCst) {
            return;
        }
        // Through the wire encoding, as the peer channel carries it.
        let msg = StreamMsg::decode(&msg.encode()).expect("round trip");
        let node = self.nodes.lock().unwrap().get(to).cloned();
        if let Some(n) = node {
            n.on_msg(&self.me, msg);
        }
    }
}

struct World {
    km: Km,
    up: Arc<AtomicBool>,
    nodes: HashMap<String, Arc<Node>>,
}

fn world(tune: impl Fn(&mut Etsi004Config)) -> World {
    let topo = Arc::new(Topology::from_toml(TOPO).unwrap());
    let km = Km::default();
    let up = Arc::new(AtomicBool::new(true));
    let reg = Arc::new(Mutex::new(HashMap::new()));
    let mut nodes = HashMap::new();
    for id in ["a", "b", "c"] {
        let mut cfg = Etsi004Config::new("127.0.0.1:0");
        tune(&mut cfg);
        let net = Net {
            me: id.into(),
            nodes: reg.clone(),
            up: up.clone(),
        };
        let s = Streams::new(id, topo.clone(), cfg, km.clone(), net);
        reg.lock().unwrap().insert(id.to_string(), s.clone());
        nodes.insert(id.to_string(), s);
    }
    World { km, up, nodes }
}

fn open(src: &str, dst: &str, ksid: Option<Uuid>, qos: QosIn) -> OpenConnect {
    OpenConnect {
        source: format!("qkd://{src}"),
        destination: format!("qkd://{dst}"),
        qos,
        key_stream_id: ksid,
    }
}

fn get(ksid: Uuid, index: Option<u32>) -> GetKey {
    GetKey {
        key_stream_id: ksid,
        index,
        metadata: None,
    }
}

/// Lets spawned message handlers run.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
}

fn qos_ms(timeout: u32) -> QosIn {
    QosIn {
        timeout: Some(timeout),
        ..Default::default()
    }
}

#[tokio::test]
async fn two_nodes_get_the_same_stream_in_either_order() {
    let w = world(|_| {});
    let (a, b) = (&w.nodes["a"], &w.nodes["b"]);
    let o = a
        .open("sa", open("sa", "sb", None, qos_ms(2000)))
        .await
        .unwrap();
    assert_eq!(o.status, Status::PeerNotConnected);
    assert_eq!(o.qos.key_chunk_size, 32);
    settle().await;
    // GET_KEY before the peer opens: status 3.
    let e = a.get_key("sa", get(o.ksid, None)).await.unwrap_err();
    assert_eq!(e.failure.status, Status::PeerNotConnectedGetKey);
    let o2 = b
        .open("sb", open("sa", "sb", Some(o.ksid), qos_ms(2000)))
        .await
        .unwrap();
    assert_eq!(o2.status, Status::Successful);
    settle().await;
    // Destination first for chunk 0, source first for chunk 1; explicit index 5 on both.
    let d0 = b.get_key("sb", get(o.ksid, None)).await.unwrap();
    let s0 = a.get_key("sa", get(o.ksid, None)).await.unwrap();
    let s1 = a.get_key("sa", get(o.ksid, None)).await.unwrap();
    let d1 = b.get_key("sb", get(o.ksid, None)).await.unwrap();
    let s5 = a.get_key("sa", get(o.ksid, Some(5))).await.unwrap();
    let d5 = b.get_key("sb", get(o.ksid, Some(5))).await.unwrap();
    for (s, d, i) in [(&s0, &d0, 0), (&s1, &d1, 1), (&s5, &d5, 5)] {
        assert_eq!((s.index, d.index), (i, i));
        assert_eq!(s.key, d.key);
        assert_eq!(s.key_id, d.key_id);
        assert_eq!(s.key.len(), 32);
    }
    assert_ne!(s0.key, s1.key);
    // A chunk is read once per side; skipped chunks are gone.
    for (n, sae) in [(a, "sa"), (b, "sb")] {
        for i in [0, 3, 5] {
            let e = n.get_key(sae, get(o.ksid, Some(i))).await.unwrap_err();
            assert_eq!(e.failure.status, Status::BadRequest, "{sae} {i}");
        }
    }
    // Next default index follows the last read.
    assert_eq!(a.get_key("sa", get(o.ksid, None)).await.unwrap().index, 6);
    // Another node, another SAE: not its stream.
    let e = w.nodes["c"]
        .get_key("sc", get(o.ksid, None))
        .await
        .unwrap_err();
    assert_eq!(e.failure.status, Status::UnknownStream);
    let e = a.get_key("sa2", get(o.ksid, None)).await.unwrap_err();
    assert_eq!(e.failure.status, Status::UnknownStream);
    // Close both sides: the stream is gone at both nodes.
    a.close("sa", o.ksid).await.unwrap();
    settle().await;
    assert_eq!(
        a.get_key("sa", get(o.ksid, None))
            .await
            .unwrap_err()
            .failure
            .status,
        Status::UnknownStream
    );
    b.close("sb", o.ksid).await.unwrap();
    settle().await;
    assert!(a.is_empty() && b.is_empty(), "{} {}", a.len(), b.len());
    assert_eq!(
        b.close("sb", o.ksid).await.unwrap_err().status,
        Status::UnknownStream
    );
}

#[tokio::test]
async fn open_connect_refusals_carry_the_standards_statuses() {
    let w = world(|c| c.max_streams_per_sae = 2);
    let a = &w.nodes["a"];
    let st = |r: Result<_, super::streams::OpenFailed>| r.unwrap_err().failure.status;
    // Not the caller's stream, same SAE twice, unknown SAE, bad URI.
    assert_eq!(
        st(a.open("sa2", open("sa", "sb", None, QosIn::default()))
            .await),
        Status::Unauthorized
    );
    assert_eq!(
        st(a.open("sa", open("sa", "sa", None, QosIn::default())).await),
        Status::BadRequest
    );
    assert_eq!(
        st(a.open("sa", open("sa", "nobody", None, QosIn::default()))
            .await),
        Status::BadRequest
    );
    let mut r = open("sa", "sb", None, QosIn::default());
    r.source = "http://sa".into();
    assert_eq!(st(a.open("sa", r).await), Status::BadRequest);
    // No QKD path to c (no link).
    assert_eq!(
        st(a.open("sa", open("sa", "sc", None, QosIn::default())).await),
        Status::NoQkdConnection
    );
    // QoS out of range: 7 with a counter-proposal that is then granted.
    let big = QosIn {
        key_chunk_size: Some(1 << 20),
        ..Default::default()
    };
    let e = a.open("sa", open("sa", "sb", None, big)).await.unwrap_err();
    assert_eq!(e.failure.status, Status::QosNotMet);
    let c = e.counter.unwrap();
    assert_eq!(c.key_chunk_size, 1024);
    let ok = a
        .open(
            "sa",
            open(
                "sa",
                "sb",
                None,
                QosIn {
                    key_chunk_size: Some(c.key_chunk_size),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    // KSID in use: the same application again, or another pair naming it.
    assert_eq!(
        st(
            a.open("sa", open("sa", "sb", Some(ok.ksid), QosIn::default()))
                .await
        ),
        Status::KsidInUse
    );
    assert_eq!(
        st(
            a.open("sa2", open("sa2", "sb", Some(ok.ksid), QosIn::default()))
                .await
        ),
        Status::KsidInUse
    );
    settle().await;
    // The destination must use the source's chunk size: 7 with the source's.
    let e = w.nodes["b"]
        .open("sb", open("sa", "sb", Some(ok.ksid), QosIn::default()))
        .await
        .unwrap_err();
    assert_eq!(e.failure.status, Status::QosNotMet);
    assert_eq!(e.counter.unwrap().key_chunk_size, 1024);
    // Streams per SAE are bounded.
    a.open("sa", open("sa", "sb", None, QosIn::default()))
        .await
        .unwrap();
    assert_eq!(
        st(a.open("sa", open("sa", "sb", None, QosIn::default())).await),
        Status::BadRequest
    );
}

#[tokio::test]
async fn waiting_calls_timeouts_windows_and_metadata_are_bounded() {
    let w = world(|c| {
        c.max_waiting_per_sae = 2;
        c.window = 4;
    });
    let (a, b) = (w.nodes["a"].clone(), w.nodes["b"].clone());
    let o = a
        .open("sa", open("sa", "sb", None, qos_ms(300)))
        .await
        .unwrap();
    settle().await;
    b.open("sb", open("sa", "sb", Some(o.ksid), qos_ms(300)))
        .await
        .unwrap();
    settle().await;
    // Metadata buffer too small: 8 with the size needed; big enough: returned.
    let mut g = get(o.ksid, None);
    g.metadata = Some(MetadataIn { size: 4 });
    let e = a.get_key("sa", g.clone()).await.unwrap_err();
    assert_eq!(e.failure.status, Status::MetadataTooSmall);
    let need = e.metadata_needed.unwrap();
    g.metadata = Some(MetadataIn { size: need });
    a.get_key("sa", g).await.unwrap();
    // The source may run `window` chunks ahead of the destination, no further.
    for _ in 1..4 {
        a.get_key("sa", get(o.ksid, None)).await.unwrap();
    }
    let e = a.get_key("sa", get(o.ksid, None)).await.unwrap_err();
    assert_eq!(e.failure.status, Status::InsufficientKey);
    b.get_key("sb", get(o.ksid, None)).await.unwrap();
    a.get_key("sa", get(o.ksid, None)).await.unwrap();
    // Reading ahead of the window from the destination: 2 as well.
    let e = b.get_key("sb", get(o.ksid, Some(9))).await.unwrap_err();
    assert_eq!(e.failure.status, Status::InsufficientKey, "{e:?}");
    // No key in the network: 2 after the timeout; at most 2 calls wait, the third is refused at once.
    w.km.dry.store(true, Ordering::SeqCst);
    let o = a
        .open("sa", open("sa", "sb", None, qos_ms(300)))
        .await
        .unwrap();
    settle().await;
    b.open("sb", open("sa", "sb", Some(o.ksid), qos_ms(300)))
        .await
        .unwrap();
    settle().await;
    let t0 = std::time::Instant::now();
    let calls: Vec<_> = (0..2)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { b.get_key("sb", get(o.ksid, Some(i))).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let e = b.get_key("sb", get(o.ksid, Some(2))).await.unwrap_err();
    assert_eq!(e.failure.status, Status::InsufficientKey);
    assert!(
        e.failure.message.contains("waiting"),
        "{}",
        e.failure.message
    );
    for c in calls {
        let e = c.await.unwrap().unwrap_err();
        assert_eq!(e.failure.status, Status::InsufficientKey, "{e:?}");
        assert!(
            !e.failure.message.contains("waiting"),
            "{}",
            e.failure.message
        );
    }
    assert!(t0.elapsed() >= std::time::Duration::from_millis(250));
    // The owner unreachable: 6.
    w.km.dry.store(false, Ordering::SeqCst);
    w.up.store(false, Ordering::SeqCst);
    let e = b.get_key("sb", get(o.ksid, Some(3))).await.unwrap_err();
    assert_eq!(e.failure.status, Status::Timeout);
}

#[tokio::test]
async fn a_stream_within_one_node_and_ttl_expiry() {
    let w = world(|_| {});
    let a = &w.nodes["a"];
    let q = QosIn {
        ttl: Some(1),
        ..Default::default()
    };
    let o = a
        .open("sa", open("sa", "sa2", None, q.clone()))
        .await
        .unwrap();
    assert_eq!(o.status, Status::PeerNotConnected);
    let o2 = a
        .open("sa2", open("sa", "sa2", Some(o.ksid), q))
        .await
        .unwrap();
    assert_eq!(o2.status, Status::Successful);
    let d = a.get_key("sa2", get(o.ksid, None)).await.unwrap();
    let s = a.get_key("sa", get(o.ksid, None)).await.unwrap();
    assert_eq!(s.key, d.key);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    a.expire().await;
    assert!(a.is_empty());
    let e = a.get_key("sa", get(o.ksid, None)).await.unwrap_err();
    assert_eq!(e.failure.status, Status::UnknownStream);
}

/// A node speaks only for the applications it serves: node c, which serves neither end of a
/// stream between a and b, sends every kind of stream message about it, and none has an effect.
#[tokio::test]
async fn stream_messages_from_a_node_that_serves_neither_side_are_ignored() {
    let w = world(|c| c.window = 4);
    let (a, b) = (w.nodes["a"].clone(), w.nodes["b"].clone());
    let k = a
        .open("sa", open("sa", "sb", None, qos_ms(300)))
        .await
        .unwrap()
        .ksid;
    settle().await;
    b.open("sb", open("sa", "sb", Some(k), qos_ms(300)))
        .await
        .unwrap();
    settle().await;
    // A real key ID of the same pair, which c would like b to take for chunk 0.
    let forged = match w
        .km
        .call(AppCall::EncKeys {
            master: "sa".into(),
            slave: "sb".into(),
            number: Some(1),
            size_bits: Some(256),
            additional_slaves: Vec::new(),
            route: None,
        })
        .await
        .unwrap()
    {
        AppReply::Keys(k) => k[0].id,
        other => panic!("{other:?}"),
    };
    let drawn = w.km.keys.lock().unwrap().len();
    a.on_msg(
        "c",
        StreamMsg::Left {
            ksid: k,
            role: Role::Destination,
        },
    );
    b.on_msg(
        "c",
        StreamMsg::Left {
            ksid: k,
            role: Role::Source,
        },
    );
    b.on_msg(
        "c",
        StreamMsg::Assigned {
            ksid: k,
            index: 0,
            key_id: forged,
        },
    );
    b.on_msg(
        "c",
        StreamMsg::Refused {
            ksid: k,
            index: 1,
            status: Status::NoQkdConnection.code(),
        },
    );
    a.on_msg(
        "c",
        StreamMsg::Want {
            ksid: k,
            index: 3,
            next: 0,
        },
    );
    settle().await;
    assert_eq!(
        w.km.keys.lock().unwrap().len(),
        drawn,
        "a drew a chunk because c asked for it"
    );
    // Both ends still open (no forged Left), chunk 0 is a's (no forged Assigned), chunk 1 is
    // served (no forged Refused).
    for i in 0..2 {
        let s = a.get_key("sa", get(k, Some(i))).await.unwrap();
        let d = b.get_key("sb", get(k, Some(i))).await.unwrap();
        assert_eq!((s.key_id, &s.key), (d.key_id, &d.key), "chunk {i}");
        assert_ne!(d.key_id, forged);
    }
    // The destination has read up to 2: the source may read 2..=5, not 6, whatever c says.
    a.on_msg("c", StreamMsg::Read { ksid: k, next: 50 });
    settle().await;
    for i in 2..6 {
        assert_eq!(a.get_key("sa", get(k, None)).await.unwrap().index, i);
    }
    let e = a.get_key("sa", get(k, None)).await.unwrap_err();
    assert_eq!(e.failure.status, Status::InsufficientKey, "{e:?}");
    // c cannot open sa's side of a new stream at b.
    let k2 = Uuid::new_v4();
    b.on_msg(
        "c",
        StreamMsg::Joined {
            ksid: k2,
            source: "sa".into(),
            destination: "sb".into(),
            role: Role::Source,
            chunk: 32,
            ttl: 60,
            reply: false,
        },
    );
    settle().await;
    let o = b
        .open("sb", open("sa", "sb", Some(k2), qos_ms(300)))
        .await
        .unwrap();
    assert_eq!(o.status, Status::PeerNotConnected, "c opened sa's side");
}
