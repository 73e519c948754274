//! SIGUSR1 is a tamper signal (`[tamper] sigusr1`, on by default): a real node in this test
//! process (alone in its own test binary, so no other test's node sees the signal) fences
//! itself, every ETSI 014 call gets 503 naming the signal, and the trail records it.

mod common;

use std::time::Duration;

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_fences_the_node_and_is_audited() {
    let dir = kagi_node::loopback::scratch_dir("tamper-sigusr1").unwrap();
    let mut topo = common::pair_now();
    let cfgs = kagi_node::loopback::prepare(&dir, &mut topo, |_| {}).unwrap();
    let cfg = cfgs.into_iter().find(|c| c.node_id == "a").unwrap();
    assert!(cfg.tamper.sigusr1, "on by default");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let node = tokio::spawn(kagi_node::run_node(cfg.clone(), async move {
        let _ = stop_rx.wait_for(|v| *v).await;
    }));
    let sae = kagi_node::loopback::sae_client(&dir, &topo, "sae-a").unwrap();
    let path = "/api/v1/keys/sae-b/status";
    common::wait_until_answers(&sae, path, "a").await;

    let kill = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -USR1 {}", std::process::id()))
        .status()
        .unwrap();
    assert!(kill.success());
    let mut fenced = None;
    for _ in 0..100 {
        let r = sae.request("GET", path, None, false).await.unwrap();
        if r.status == 503 {
            fenced = Some(String::from_utf8_lossy(&r.body).into_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let msg = fenced.expect("node a was not fenced within 5 s of SIGUSR1");
    assert!(
        msg.contains("tamper signal") && msg.contains("SIGUSR1"),
        "{msg}"
    );
    let _ = stop_tx.send(true);
    let r = tokio::time::timeout(Duration::from_secs(10), node).await;
    assert!(matches!(r, Ok(Ok(Ok(())))), "{r:?}");
    let trail = kagi_node::audit::trail_path(&cfg.data_dir, "a");
    let text = std::fs::read_to_string(&trail).unwrap();
    assert!(
        text.contains("\"event\":\"node.tamper\",\"actor\":\"signal\""),
        "tamper not audited"
    );
    let report = kagi_node::audit::verify::check_file(&trail);
    assert!(report.problem.is_none(), "{report:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
