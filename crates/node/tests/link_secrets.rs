//! A node refuses a simulated link without a per-link secret, naming the link and the way out,
//! unless the topology says `insecure_demo_links = true`.

use std::time::Duration;

use kagi_control::Topology;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_without_a_secret_is_refused_unless_the_topology_is_a_demo() {
    let dir = kagi_node::loopback::scratch_dir("linksecrets").unwrap();
    let (mut topo, cfgs) =
        kagi_node::loopback::line_network(&dir, &["a", "b"], 3, 4096, |_| {}).unwrap();
    let a = cfgs[0].clone();
    // The secret kagi up / loopback provisioned is there; remove it from a's store.
    assert!(kagi_node::seal::links::read_node(&a)
        .unwrap()
        .contains_key("b"));
    let conn = kagi_node::store::open_db(&a.data_dir.join("a.db"), a.store.synchronous).unwrap();
    assert_eq!(kagi_node::seal::links::delete_all(&conn).unwrap(), 1);
    drop(conn);

    let e = kagi_node::run_node(a.clone(), async {})
        .await
        .expect_err("a node without its link secret must not start")
        .to_string();
    assert!(
        e.contains("link a-b")
            && e.contains("no per-link secret")
            && e.contains("insecure_demo_links = true"),
        "{e}"
    );

    // An explicit demo topology starts (on the public seed, with a warning).
    topo.insecure_demo_links = true;
    let text = topo.to_toml();
    assert!(text.contains("insecure_demo_links = true"), "{text}");
    std::fs::write(&a.topology, text).unwrap();
    assert!(
        Topology::from_toml(&std::fs::read_to_string(&a.topology).unwrap())
            .unwrap()
            .insecure_demo_links
    );
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        kagi_node::run_node(a, tokio::time::sleep(Duration::from_millis(500))),
    )
    .await
    .expect("node stops");
    assert!(r.is_ok(), "demo topology should start: {r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
