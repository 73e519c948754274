//! ETSI 014 requests through the real HTTP handler, with a key service that answers like a
//! conforming key manager.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kagi_control::Topology;
use kagi_keymat::Key;
use kagi_km::app::{AppCall, AppReply, DeliveredKey, Refusal, StatusInfo};
use kagi_node::config::Etsi014Config;
use kagi_node::service::KeyService;

/// Answers like the key manager: keys of the asked number and size, status for known pairs.
#[derive(Clone)]
struct Answering;

impl KeyService for Answering {
    async fn call(&self, call: AppCall) -> Result<AppReply, Refusal> {
        match call {
            AppCall::EncKeys {
                number, size_bits, ..
            } => {
                let n = number.unwrap_or(1).min(64) as usize;
                let bytes = (size_bits.unwrap_or(256) / 8).min(1024) as usize;
                Ok(AppReply::Keys(
                    (0..n)
                        .map(|i| DeliveredKey {
                            id: uuid_for(i as u64),
                            key: Key::from_slice(&vec![i as u8; bytes]),
                            paths: None,
                        })
                        .collect(),
                ))
            }
            AppCall::DecKeys { key_ids, .. } => {
                if key_ids.len() % 2 == 1 {
                    return Err(Refusal::BadRequest(Refusal::KEYS_NOT_FOUND.into()));
                }
                Ok(AppReply::Keys(
                    key_ids
                        .into_iter()
                        .map(|id| DeliveredKey {
                            id,
                            key: Key::from_slice(&[7; 32]),
                            paths: None,
                        })
                        .collect(),
                ))
            }
            AppCall::Status { master, slave } => Ok(AppReply::Status(StatusInfo {
                source_kme_id: "kme-a".into(),
                target_kme_id: "kme-b".into(),
                master_sae_id: master,
                slave_sae_id: slave,
                key_size: 256,
                stored_key_count: 10,
                max_key_count: 100,
                max_key_per_request: 16,
                max_key_size: 1024,
                min_key_size: 64,
                max_sae_id_count: 2,
            })),
        }
    }
}

fn uuid_for(i: u64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(0x1234_5678_9abc_4def, 0x8000_0000_0000_0000 | i)
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    topo: Arc<Topology>,
    params: Etsi014Config,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let topo = Topology::line("fuzz", &["kme-a", "kme-b"], 10.0, |n| {
            let s = n.trim_start_matches("kme-");
            vec![format!("sae-{s}"), format!("sae-{s}2")]
        });
        let mut params = Etsi014Config::default();
        params
            .sae_map
            .insert("gateway.example".into(), "sae-b2".into());
        Fixture {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime"),
            topo: Arc::new(topo),
            params,
        }
    })
}

/// One request: byte 0 picks the method, byte 1 the caller's certificate CN, then the request
/// target up to the first NUL, then the body. The answer must be one the standard allows (200,
/// 400, 401 or 503), JSON, and every error must carry a message.
pub fn etsi014_request(data: &[u8]) {
    let [m, who, rest @ ..] = data else {
        return;
    };
    let method = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"][*m as usize % 6];
    let cn = match who % 5 {
        0 => Some("sae-a".to_owned()),
        1 => Some("sae-b".to_owned()),
        2 => Some("gateway.example".to_owned()),
        3 => Some("intruder".to_owned()),
        _ => None,
    };
    let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let (target, body) = rest.split_at(split);
    let body = body.get(1..).unwrap_or_default();
    let Ok(uri) = hyper::Uri::try_from(target) else {
        return; // hyper refuses such a request line before any handler runs
    };
    let Ok(req) = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::copy_from_slice(body)))
    else {
        return;
    };
    let f = fixture();
    let (status, content_type, body) = f.rt.block_on(async {
        let resp = kagi_node::etsi014::handle_one(&f.params, &f.topo, Answering, cn, req).await;
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .map(|v| v.as_bytes().to_vec());
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, ct, body)
    });
    assert!(
        matches!(status, 200 | 400 | 401 | 503),
        "ETSI 014 answered {status}"
    );
    assert_eq!(content_type.as_deref(), Some(&b"application/json"[..]));
    let v: serde_json::Value = serde_json::from_slice(&body).expect("answer is JSON");
    if status != 200 {
        assert!(v["message"].is_string(), "error without a message: {v}");
    }
}
