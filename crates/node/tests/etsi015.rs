//! The ETSI GS QKD 015 view of real nodes (in one process, real mutual TLS, real SQLite; line
//! a–b–c with ETSI 004 served): every document checked against the `etsi-qkd-sdn-node` YANG
//! module (V2.1.1, revision 2022-01-30) as encoded below from the standard's text, against the
//! nodes' live status, and against the ETSI 004 key streams open at them; RESTCONF error
//! documents for bad requests.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kagi_node::client::{Etsi014Client, RawResponse};
use kagi_node::config::{Etsi004Config, ManagementConfig};
use kagi_node::mgmt::Role;
use kagi_node::pki::Pki;
use serde_json::{json, Value};

/// The `etsi-qkd-sdn-node` data tree of `qkd_node`, leaf types from `etsi-qkd-node-types`.
mod yang {
    use serde_json::Value;

    /// Leaf types.
    #[derive(Debug, Clone, Copy)]
    pub enum T {
        Uuid,
        U32,
        Str,
        Bool,
        /// `inet:uri`.
        Uri,
        /// `yang:date-and-time`.
        DateTime,
        /// `decimal64` (RFC 7951: a JSON string).
        Dec64,
        /// An identityref: the identities derived from its base.
        Ident(&'static [&'static str]),
    }

    /// Schema nodes.
    #[derive(Debug, Clone, Copy)]
    pub enum S {
        Leaf(T),
        LeafList(T),
        Container(&'static [(&'static str, S)]),
        /// Entries with their key leaf.
        List(&'static str, &'static [(&'static str, S)]),
    }
    use S::*;
    use T::*;

    const QKDN_STATUS: T = Ident(&["NEW", "OPERATING", "DOWN", "FAILURE", "OUT"]);
    const TECHNOLOGY: T = Ident(&["CV-QKD", "DV-QKD", "DV-QKD-COW", "DV-QKD-2Ws"]);
    const LINK_TYPE: T = Ident(&["VIRT", "PHYS"]);
    const ROLE: T = Ident(&["TRANSMITTER", "RECEIVER", "TRANSCEIVER"]);
    const APP_TYPE: T = Ident(&["CLIENT", "INTERNAL"]);
    const PERF_TYPE: T = Ident(&["QBER", "SNR"]);
    const LINK_STATUS: T = Ident(&["ACTIVE", "PASSIVE", "PENDING", "OFF"]);
    const IFACE_STATUS: T = Ident(&["ENABLED", "DISABLED", "FAILED"]);
    const APP_STATUS: T = Ident(&["ON", "DISCONNECTED", "OUT-OF-TIME", "ZOMBIE"]);

    const APP: &[(&str, S)] = &[
        ("app_id", Leaf(Uuid)),
        ("app_status", Leaf(APP_STATUS)),
        ("app_type", Leaf(APP_TYPE)),
        ("server_app_id", Leaf(Uri)),
        ("client_app_id", LeafList(Uri)),
        ("app_priority", Leaf(U32)),
        ("creation_time", Leaf(DateTime)),
        ("expiration_time", Leaf(DateTime)),
        (
            "app_statistics",
            Container(&[(
                "statistics",
                List(
                    "end_time",
                    &[
                        ("end_time", Leaf(DateTime)),
                        ("start_time", Leaf(DateTime)),
                        ("consumed_bits", Leaf(U32)),
                    ],
                ),
            )]),
        ),
        (
            "app_qos",
            Container(&[
                ("max_bandwidth", Leaf(U32)),
                ("min_bandwidth", Leaf(U32)),
                ("jitter", Leaf(U32)),
                ("ttl", Leaf(U32)),
                ("clients_shared_path_enable", Leaf(Bool)),
                ("clients_shared_keys_required", Leaf(Bool)),
            ]),
        ),
        ("backing_qkdl_id", LeafList(Uuid)),
        ("local_qkdn_id", Leaf(Uuid)),
        ("remote_qkdn_id", Leaf(Uuid)),
    ];
    const INTERFACE: &[(&str, S)] = &[
        ("qkdi_id", Leaf(U32)),
        ("qkdi_model", Leaf(Str)),
        ("qkdi_type", Leaf(TECHNOLOGY)),
        (
            "qkdi_att_point",
            Container(&[("device", Leaf(Str)), ("port", Leaf(U32))]),
        ),
        (
            "qkdi_capabilities",
            Container(&[
                ("role_support", Leaf(ROLE)),
                ("wavelength_range", Leaf(Str)),
                ("max_absorption", Leaf(Dec64)),
            ]),
        ),
        ("qkdi_status", Leaf(IFACE_STATUS)),
    ];
    const END: &[(&str, S)] = &[("qkdn_id", Leaf(Uuid)), ("qkdi_id", Leaf(U32))];
    const LINK: &[(&str, S)] = &[
        ("qkdl_id", Leaf(Uuid)),
        ("qkdl_status", Leaf(LINK_STATUS)),
        ("qkdl_enable", Leaf(Bool)),
        ("qkdl_local", Container(END)),
        ("qkdl_remote", Container(END)),
        ("qkdl_type", Leaf(LINK_TYPE)),
        ("qkdl_applications", LeafList(Uuid)),
        ("virt_prev_hop", Leaf(Uuid)),
        ("virt_next_hop", LeafList(Uuid)),
        ("virt_bandwidth", Leaf(U32)),
        ("phys_channel_att", Leaf(Dec64)),
        ("phys_wavelength", Leaf(Str)),
        ("phys_qkd_role", Leaf(ROLE)),
        (
            "qkdl_performance",
            Container(&[
                ("expected_consumption", Leaf(U32)),
                ("skr", Leaf(U32)),
                ("eskr", Leaf(U32)),
                (
                    "phys_perf",
                    List(
                        "perf_type",
                        &[("perf_type", Leaf(PERF_TYPE)), ("value", Leaf(Dec64))],
                    ),
                ),
            ]),
        ),
    ];
    /// `container qkd_node`.
    pub const QKD_NODE: &[(&str, S)] = &[
        ("qkdn_id", Leaf(Uuid)),
        ("qkdn_status", Leaf(QKDN_STATUS)),
        ("qkdn_version", Leaf(Str)),
        ("qkdn_location_id", Leaf(Str)),
        (
            "qkdn_capabilities",
            Container(&[
                ("link_stats_support", Leaf(Bool)),
                ("application_stats_support", Leaf(Bool)),
                ("key_relay_mode_enable", Leaf(Bool)),
            ]),
        ),
        (
            "qkd_applications",
            Container(&[("qkd_app", List("app_id", APP))]),
        ),
        (
            "qkd_interfaces",
            Container(&[("qkd_interface", List("qkdi_id", INTERFACE))]),
        ),
        (
            "qkd_links",
            Container(&[("qkd_link", List("qkdl_id", LINK))]),
        ),
    ];

    fn leaf(t: T, v: &Value, at: &str) -> Result<(), String> {
        let ok = match t {
            Uuid => v.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok()),
            U32 => v.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)),
            Str => v.is_string(),
            Bool => v.is_boolean(),
            Uri => v.as_str().is_some_and(|s| {
                s.split_once("://")
                    .is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty())
            }),
            DateTime => v
                .as_str()
                .is_some_and(|s| s.len() >= 20 && s.as_bytes()[10] == b'T' && s.ends_with('Z')),
            Dec64 => v.as_str().is_some_and(|s| s.parse::<f64>().is_ok()),
            Ident(names) => v.as_str().is_some_and(|s| {
                s.strip_prefix("etsi-qkd-node-types:")
                    .is_some_and(|n| names.contains(&n))
            }),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{at}: {v} is not a valid {t:?}"))
        }
    }

    fn node(s: S, v: &Value, at: &str) -> Result<(), String> {
        match s {
            Leaf(t) => leaf(t, v, at),
            LeafList(t) => {
                let a = v
                    .as_array()
                    .ok_or(format!("{at}: a leaf-list is an array"))?;
                if a.is_empty() {
                    return Err(format!("{at}: an empty leaf-list is left out"));
                }
                a.iter().try_for_each(|x| leaf(t, x, at))
            }
            Container(children) => object(children, v, at),
            List(key, children) => {
                let a = v.as_array().ok_or(format!("{at}: a list is an array"))?;
                if a.is_empty() {
                    return Err(format!("{at}: an empty list is left out"));
                }
                let mut keys = std::collections::BTreeSet::new();
                for (i, e) in a.iter().enumerate() {
                    let here = format!("{at}[{i}]");
                    object(children, e, &here)?;
                    let k = e.get(key).ok_or(format!("{here}: no key {key}"))?;
                    if !keys.insert(k.to_string()) {
                        return Err(format!("{here}: key {key} {k} repeated"));
                    }
                }
                Ok(())
            }
        }
    }

    fn object(children: &[(&str, S)], v: &Value, at: &str) -> Result<(), String> {
        let o = v.as_object().ok_or(format!("{at}: not an object"))?;
        for (k, x) in o {
            let (_, s) = children
                .iter()
                .find(|(n, _)| n == k)
                .ok_or(format!("{at}: {k} is not in the model"))?;
            node(*s, x, &format!("{at}/{k}"))?;
        }
        Ok(())
    }

    /// Checks a `GET .../etsi-qkd-sdn-node:qkd_node` document: names, nesting, value types,
    /// list keys, the mandatory `qkdn_id`, and the `when` conditions on link kinds.
    pub fn check(doc: &Value) -> Result<(), String> {
        let top = doc.as_object().ok_or("not an object")?;
        if top.len() != 1 {
            return Err("one top-level member".into());
        }
        let n = top
            .get("etsi-qkd-sdn-node:qkd_node")
            .ok_or("no etsi-qkd-sdn-node:qkd_node")?;
        object(QKD_NODE, n, "qkd_node")?;
        if n.get("qkdn_id").is_none() {
            return Err("qkd_node: qkdn_id is mandatory".into());
        }
        for l in n["qkd_links"]["qkd_link"].as_array().into_iter().flatten() {
            let virt = l["qkdl_type"] == "etsi-qkd-node-types:VIRT";
            for (k, _) in l.as_object().into_iter().flatten() {
                if (k.starts_with("virt_") && !virt) || (k.starts_with("phys_") && virt) {
                    return Err(format!(
                        "qkd_link {}: {k} on a link of the other type",
                        l["qkdl_id"]
                    ));
                }
            }
            if virt && l["qkdl_performance"].get("phys_perf").is_some() {
                return Err("phys_perf on a virtual link".into());
            }
        }
        Ok(())
    }
}

const PATH: &str = "/restconf/data/etsi-qkd-sdn-node:qkd_node";
const MEDIA: &str = "application/yang-data+json";

struct Net {
    dir: std::path::PathBuf,
    mgmt: Vec<String>,
    etsi004: Vec<String>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Net {
    async fn start() -> Self {
        let dir = kagi_node::loopback::scratch_dir("etsi015").unwrap();
        let ports = std::sync::Mutex::new(Vec::new());
        let (_, cfgs) = kagi_node::loopback::line_network(&dir, &["a", "b", "c"], 15, 4096, |c| {
            let mut p = ports.lock().unwrap();
            let mut port = || {
                let x = kagi_node::loopback::free_port_except(&p).unwrap();
                p.push(x);
                format!("127.0.0.1:{x}")
            };
            c.management = Some(ManagementConfig { listen: port() });
            c.etsi004 = Some(Etsi004Config::new(port()));
        })
        .unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (mut mgmt, mut etsi004, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
        for cfg in cfgs {
            mgmt.push(format!(
                "https://{}",
                cfg.management.as_ref().unwrap().listen
            ));
            etsi004.push(format!("https://{}", cfg.etsi004.as_ref().unwrap().listen));
            let mut rx = stop_rx.clone();
            tasks.push(tokio::spawn(kagi_node::run_node(cfg, async move {
                let _ = rx.wait_for(|v| *v).await;
            })));
        }
        Self {
            dir,
            mgmt,
            etsi004,
            stop,
            tasks,
        }
    }

    fn client(&self, url: &str, cert: &std::path::Path, key: &std::path::Path) -> Etsi014Client {
        let pki = Pki::open_or_create(&self.dir.join("pki")).unwrap();
        Etsi014Client::from_files(url, &pki.ca_cert_path(), cert, key)
            .unwrap()
            .with_timeout(Duration::from_secs(10))
    }

    fn observer(&self, node: usize) -> Etsi014Client {
        let pki = Pki::open_or_create(&self.dir.join("pki")).unwrap();
        let p = pki.ensure_operator(Role::Observer).unwrap();
        self.client(&self.mgmt[node], &p.cert, &p.key)
    }

    /// An ETSI 004 client for `sae` at node `node`.
    fn app(&self, node: usize, sae: &str) -> Etsi014Client {
        let pki = Pki::open_or_create(&self.dir.join("pki")).unwrap();
        let p = pki.sae_paths(sae);
        self.client(&self.etsi004[node], &p.cert, &p.key)
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn call(c: &Etsi014Client, method: &str, path: &str, body: Option<Value>) -> RawResponse {
    // Retry while the listener is still starting.
    for _ in 0..100 {
        let b = body.as_ref().map(|b| b.to_string().into_bytes());
        match c.request(method, path, b, false).await {
            Ok(r) => return r,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("{method} {path}: no answer");
}

/// GET the view, checked against the model.
async fn view(c: &Etsi014Client) -> Value {
    let r = call(c, "GET", PATH, None).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    if let Err(e) = yang::check(&v) {
        panic!("not the etsi-qkd-sdn-node model: {e}\n{v:#}");
    }
    v["etsi-qkd-sdn-node:qkd_node"].clone()
}

fn links_of<'a>(n: &'a Value, kind: &str) -> Vec<&'a Value> {
    n["qkd_links"]["qkd_link"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["qkdl_type"] == format!("etsi-qkd-node-types:{kind}"))
        .collect()
}

fn apps_of(n: &Value) -> Vec<Value> {
    n["qkd_applications"]["qkd_app"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// a's view against its live status and against b's view.
async fn check_against_status(net: &Net) {
    let observer = net.observer(0);
    // Wait until a's link to b is up and a routes to c through b.
    let start = Instant::now();
    let st = loop {
        let st = call(&observer, "GET", "/api/v1/status", None).await.json();
        let routed = st["pools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer"] == "c" && p["route"] == json!(["a", "b", "c"]));
        if st["links"][0]["state"] == "up" && routed {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let n = view(&observer).await;
    assert_eq!(n["qkdn_location_id"], "a");
    assert_eq!(n["qkdn_status"], "etsi-qkd-node-types:OPERATING");
    let me = n["qkdn_id"].as_str().unwrap().to_owned();
    let b = view(&net.observer(1)).await;
    let phys = links_of(&n, "PHYS");
    assert_eq!(phys.len(), st["links"].as_array().unwrap().len(), "{n}");
    let l = phys[0];
    assert_eq!(l["qkdl_status"], "etsi-qkd-node-types:ACTIVE", "{l}");
    assert_eq!(l["qkdl_enable"], true);
    assert_eq!(l["qkdl_local"]["qkdn_id"], me);
    assert_eq!(l["qkdl_remote"]["qkdn_id"], b["qkdn_id"]);
    assert_eq!(
        l["qkdl_performance"]["skr"].as_f64().unwrap(),
        st["links"][0]["model_rate_bps"].as_f64().unwrap().round()
    );
    // The same link has the same ID at both ends, and each end names the other's interface.
    let b_phys: Vec<&Value> = links_of(&b, "PHYS")
        .into_iter()
        .filter(|x| x["qkdl_remote"]["qkdn_id"] == me)
        .collect();
    assert_eq!(b_phys.len(), 1);
    assert_eq!(b_phys[0]["qkdl_id"], l["qkdl_id"]);
    assert_eq!(
        b_phys[0]["qkdl_remote"]["qkdi_id"],
        l["qkdl_local"]["qkdi_id"]
    );
    assert_eq!(
        l["qkdl_remote"]["qkdi_id"],
        b_phys[0]["qkdl_local"]["qkdi_id"]
    );
    let b_ifaces: BTreeSet<u64> = b["qkd_interfaces"]["qkd_interface"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["qkdi_id"].as_u64().unwrap())
        .collect();
    assert!(b_ifaces.contains(&l["qkdl_remote"]["qkdi_id"].as_u64().unwrap()));
    // c is reached by relay through b: a virtual link whose next hop is b.
    let virt = links_of(&n, "VIRT");
    assert_eq!(virt.len(), 1, "{n}");
    assert_eq!(virt[0]["virt_next_hop"], json!([b["qkdn_id"]]));
    assert_eq!(virt[0]["qkdl_status"], "etsi-qkd-node-types:ACTIVE");
    let iface = &n["qkd_interfaces"]["qkd_interface"][0];
    assert_eq!(iface["qkdi_id"], l["qkdl_local"]["qkdi_id"]);
    assert_eq!(iface["qkdi_type"], "etsi-qkd-node-types:DV-QKD");
    assert_eq!(iface["qkdi_status"], "etsi-qkd-node-types:ENABLED");
    // Without streams: one application per SAE of the node.
    let apps = apps_of(&n);
    assert_eq!(apps.len(), 1, "{n}");
    assert_eq!(apps[0]["server_app_id"], "qkd://sae-a");
    assert_eq!(apps[0]["local_qkdn_id"], me);
}

/// An ETSI 004 stream from sae-a (node a) to sae-c (node c, two hops) in both nodes' views.
async fn check_streams(net: &Net) {
    let (src, dst) = (net.app(0, "sae-a"), net.app(2, "sae-c"));
    let qos = json!({"key_chunk_size": 32, "max_bps": 4096, "min_bps": 256, "jitter": 7,
                     "priority": 3, "timeout": 2000, "ttl": 600});
    let open = json!({"source": "qkd://sae-a", "destination": "qkd://sae-c", "qos": qos,
                      "key_stream_id": null});
    let r = call(&src, "POST", "/etsi004/v2/open_connect", Some(open.clone())).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let ksid = r.json()["key_stream_id"].as_str().unwrap().to_owned();
    let (a_obs, c_obs) = (net.observer(0), net.observer(2));
    let a = view(&a_obs).await;
    let c_id = view(&c_obs).await["qkdn_id"].clone();
    let app = apps_of(&a)
        .into_iter()
        .find(|x| x["app_id"] == ksid)
        .unwrap_or_else(|| panic!("stream {ksid} not among a's applications: {a:#}"));
    assert_eq!(
        app["app_status"], "etsi-qkd-node-types:DISCONNECTED",
        "{app}"
    );
    assert_eq!(app["app_type"], "etsi-qkd-node-types:CLIENT");
    assert_eq!(app["server_app_id"], "qkd://sae-a");
    assert_eq!(app["client_app_id"], json!(["qkd://sae-c"]));
    assert_eq!(app["local_qkdn_id"], a["qkdn_id"]);
    assert_eq!(app["remote_qkdn_id"], c_id);
    assert_eq!(app["app_priority"], 3);
    assert_eq!(
        app["app_qos"],
        json!({"max_bandwidth": 4096, "min_bandwidth": 256, "jitter": 7, "ttl": 600})
    );
    // Backed by the virtual link to c, which lists it and counts its bandwidth.
    let virt = links_of(&a, "VIRT")[0].clone();
    assert_eq!(app["backing_qkdl_id"], json!([virt["qkdl_id"]]));
    assert_eq!(virt["qkdl_applications"], json!([ksid]));
    assert_eq!(virt["qkdl_performance"]["expected_consumption"], 4096);
    assert!(links_of(&a, "PHYS")[0].get("qkdl_applications").is_none());

    // The destination opens: ON at both ends.
    let mut open_c = open.clone();
    open_c["key_stream_id"] = json!(ksid);
    let r = call(&dst, "POST", "/etsi004/v2/open_connect", Some(open_c)).await;
    // 0 once c has the source's `Joined`; 1 ("peer not connected") while it is still on its way
    // (a and c are not neighbours, so their peer connection opens on demand). Either way both
    // ends must show ON below.
    let status = r.json()["status"].clone();
    assert!(status == 0 || status == 1, "{:?}", r.json());
    let start = Instant::now();
    loop {
        let a = view(&a_obs).await;
        let on = apps_of(&a)
            .iter()
            .any(|x| x["app_id"] == ksid && x["app_status"] == "etsi-qkd-node-types:ON");
        if on {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{a:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = view(&c_obs).await;
    let app_c = apps_of(&c)
        .into_iter()
        .find(|x| x["app_id"] == ksid)
        .unwrap_or_else(|| panic!("{c:#}"));
    assert_eq!(app_c["app_status"], "etsi-qkd-node-types:ON");
    assert_eq!(app_c["remote_qkdn_id"], a["qkdn_id"]);
    assert_eq!(app_c["server_app_id"], "qkd://sae-a");
    let c_virt = links_of(&c, "VIRT")
        .into_iter()
        .find(|l| l["qkdl_remote"]["qkdn_id"] == a["qkdn_id"])
        .unwrap()
        .clone();
    assert_eq!(app_c["backing_qkdl_id"], json!([c_virt["qkdl_id"]]));

    // Closed at both ends: gone from both views.
    for cl in [&src, &dst] {
        let r = call(
            cl,
            "POST",
            "/etsi004/v2/close",
            Some(json!({"key_stream_id": ksid})),
        )
        .await;
        assert_eq!(r.json()["status"], 0);
    }
    let start = Instant::now();
    loop {
        let (a, c) = (view(&a_obs).await, view(&c_obs).await);
        let listed = |n: &Value| apps_of(n).iter().any(|x| x["app_id"] == ksid);
        if !listed(&a) && !listed(&c) {
            assert!(links_of(&a, "VIRT")[0].get("qkdl_applications").is_none());
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{a:#}\n{c:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Bad requests on `/restconf/` get RESTCONF error documents (RFC 8040 §7.1), never a 5xx.
async fn check_errors(net: &Net) {
    let observer = net.observer(0);
    let pki = Pki::open_or_create(&net.dir.join("pki")).unwrap();
    let sae = pki.sae_paths("sae-a");
    let sae_on_mgmt = net.client(&net.mgmt[0], &sae.cert, &sae.key);
    for (c, method, path, status, tag) in [
        (
            &observer,
            "GET",
            "/restconf/data/etsi-qkd-sdn-node:nope",
            404,
            "invalid-value",
        ),
        (&observer, "GET", "/restconf/data", 404, "invalid-value"),
        (&observer, "PUT", PATH, 405, "operation-not-supported"),
        (&observer, "DELETE", PATH, 405, "operation-not-supported"),
        (&observer, "POST", PATH, 405, "operation-not-supported"),
        (&sae_on_mgmt, "GET", PATH, 403, "access-denied"),
    ] {
        let r = call(c, method, path, Some(json!({"x": 1}))).await;
        assert_eq!(r.status, status, "{method} {path}");
        let v = r.json();
        let e = &v["ietf-restconf:errors"]["error"][0];
        assert_eq!(e["error-tag"], tag, "{method} {path}: {v}");
        assert_eq!(e["error-type"], "protocol");
        assert!(e["error-message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // The content type of the view and of its errors.
    let r = call(&observer, "GET", "/restconf/data/x", None).await;
    assert_eq!(r.content_type.as_deref(), Some(MEDIA), "{:?}", r.json());
    let r = call(&observer, "GET", PATH, None).await;
    assert_eq!(r.content_type.as_deref(), Some(MEDIA));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_015_view_follows_the_yang_model_and_shows_live_links_and_004_streams() {
    let net = Net::start().await;
    check_against_status(&net).await;
    check_streams(&net).await;
    check_errors(&net).await;
    net.stop().await;
}
