//! Identities and roles against real `kagi node` processes on loopback (issue 10, "identity and
//! roles"): the ETSI 014 listener refuses a client without a certificate and one from another
//! CA, and answers 401 to an SAE asking for keys that are not its own; the peer port refuses an
//! SAE certificate even when its CN names a node, while a node certificate stays connected.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Nodes;
use kagi_node::client::{ClientError, Etsi014Client};
use kagi_node::config::TlsConfig;
use kagi_node::etsi014::wire::KeyRequest;
use kagi_node::pki::{IssuedCert, Pki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one_key() -> KeyRequest {
    KeyRequest {
        number: Some(1),
        size: Some(256),
        ..KeyRequest::default()
    }
}

/// Writes `c` as `<name>.pem` / `<name>.key` under `dir`; returns (cert, key) paths.
fn write(dir: &Path, name: &str, c: &IssuedCert) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, &c.cert_pem).unwrap();
    std::fs::write(&key, &c.key_pem).unwrap();
    (cert, key)
}

/// Whether the peer listener at `addr` closes a connection made with this certificate within a
/// few seconds (a refused identity) rather than keeping it open for frames.
async fn peer_port_closes(addr: &str, tls: &TlsConfig) -> bool {
    let client = kagi_node::tls::peer_client_config(tls).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let Ok(mut s) = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
    else {
        return true;
    };
    let _ = s.flush().await;
    let mut one = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut one)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_get_no_keys_and_an_sae_certificate_is_no_node() {
    let net = Nodes::line("ids", &["a", "b"]);
    let pki = Pki::open_or_create(&net.dir.join("pki")).unwrap();
    let (ka, kb) = (net.client("a"), net.client("b"));
    // Keys flow a → b first (pools fill after start).
    let until = Instant::now() + Duration::from_secs(90);
    let keys = loop {
        match ka.enc_keys("sae-b", &one_key()).await {
            Ok(k) => break k,
            Err(e) if Instant::now() < until => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("no keys a → b: {e}"),
        }
    };
    let ids: Vec<_> = keys.iter().map(|k| k.id).collect();
    let etsi_b = format!(
        "https://{}",
        net.topo.node("b").unwrap().etsi014_addr.clone().unwrap()
    );

    // No client certificate: the handshake fails, no HTTP answer at all.
    let roots = kagi_node::tls::load_roots(&pki.ca_cert_path()).unwrap();
    let cfg =
        tokio_rustls::rustls::ClientConfig::builder_with_provider(kagi_node::tls::etsi_provider())
            .with_protocol_versions(&[&tokio_rustls::rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let anon = Etsi014Client::new(&etsi_b, Arc::new(cfg))
        .unwrap()
        .with_timeout(Duration::from_secs(10));
    let err = anon.dec_keys("sae-a", &ids).await.unwrap_err();
    assert!(!matches!(err, ClientError::Refused { .. }), "{err}");

    // A certificate for sae-b from another CA: refused the same way.
    let other = net.dir.join("other-pki");
    let foreign = Pki::open_or_create(&other).unwrap();
    let (cert, key) = write(&other, "sae-b", &foreign.issue_sae("sae-b").unwrap());
    let forged = Etsi014Client::from_files(&etsi_b, &pki.ca_cert_path(), &cert, &key)
        .unwrap()
        .with_timeout(Duration::from_secs(10));
    let err = forged.dec_keys("sae-a", &ids).await.unwrap_err();
    assert!(!matches!(err, ClientError::Refused { .. }), "{err}");

    // SAEs asking for keys that are not theirs: 401 from the key manager.
    let own = net.dir.join("own-certs");
    std::fs::create_dir_all(&own).unwrap();
    let sae_a = pki.sae_paths("sae-a");
    let a_at_b = Etsi014Client::from_files(&etsi_b, &pki.ca_cert_path(), &sae_a.cert, &sae_a.key)
        .unwrap()
        .with_timeout(Duration::from_secs(10));
    // sae-a at b: b holds the key, and sae-a is neither attached to b nor its slave.
    match a_at_b.dec_keys("sae-a", &ids).await {
        Err(ClientError::Refused { status: 401, .. }) => {}
        other => panic!("sae-a at b: expected 401, got {other:?}"),
    }
    let (cert, key) = write(&own, "mallory", &pki.issue_client("mallory").unwrap());
    let mallory = Etsi014Client::from_files(&etsi_b, &pki.ca_cert_path(), &cert, &key)
        .unwrap()
        .with_timeout(Duration::from_secs(10));
    match mallory.dec_keys("sae-a", &ids).await {
        Err(ClientError::Refused { status: 401, .. }) => {}
        other => panic!("mallory: expected 401, got {other:?}"),
    }
    // The slave still gets its key, once.
    assert_eq!(kb.dec_keys("sae-a", &ids).await.unwrap(), keys);

    // The peer port: an SAE certificate whose CN is "b" (the CA signed it, the CN names a
    // node) is refused; b's real node certificate is kept.
    let peer_a = net.topo.node("a").unwrap().peer_addr.clone().unwrap();
    let (cert, key) = write(&own, "sae-named-b", &pki.issue_sae("b").unwrap());
    let sae_as_node = TlsConfig {
        ca: pki.ca_cert_path(),
        cert,
        key,
    };
    assert!(
        peer_port_closes(&peer_a, &sae_as_node).await,
        "a's peer port kept a connection from an SAE certificate named \"b\""
    );
    let b = pki.node_paths("b");
    let node_b = TlsConfig {
        ca: pki.ca_cert_path(),
        cert: b.cert,
        key: b.key,
    };
    assert!(
        !peer_port_closes(&peer_a, &node_b).await,
        "a's peer port closed a connection from b's node certificate"
    );
    // Counted and logged with its reason (rate-limited like every refusal).
    let log = net.log("a");
    assert!(
        log.lines()
            .any(|l| l.contains("not_a_node") && l.contains("refused")),
        "a did not log the refused SAE certificate:\n{log}"
    );
}
