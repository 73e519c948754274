//! The live dashboard in a real browser: `kagi up` starts six `kagi node` processes and serves
//! the dashboard; headless Chromium (Debian's `chromium`, driven over the DevTools protocol)
//! opens the printed URL once and, without reloading, must show every node and link of the
//! topology, count a key fetched over ETSI 014, and turn a node red within seconds of it being
//! killed. A screenshot is saved under the test's output directory.
//!
//! Skips loudly when no Chromium is installed (`.ci/run` installs it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|b| {
            let out = Command::new("which").arg(b).output().ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DevTools protocol session with one page.
struct Cdp {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Cdp {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(tungstenite::Message::text(msg)).unwrap();
        loop {
            let m = self.ws.read().unwrap();
            let tungstenite::Message::Text(t) = m else {
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page and returns its JSON value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    /// Polls `expr` until `ok` holds or `limit` passes; returns the last value and the time.
    fn wait(
        &mut self,
        expr: &str,
        limit: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            let v = self.eval(expr);
            if ok(&v) || start.elapsed() > limit {
                return (v, start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    // DevTools keeps the connection open: read the head, then Content-Length bytes.
    let mut r = BufReader::new(s);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

fn start_chromium(bin: &Path, profile: &Path) -> (Proc, u16) {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--window-size=1400,900",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                let port: u16 = rest.split('/').next().unwrap_or("").parse().unwrap_or(0);
                let _ = tx.send(port);
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("chromium did not open its DevTools port");
    (Proc(child), port)
}

#[test]
fn dashboard_shows_the_live_network_in_chromium() {
    let Some(bin) = chromium() else {
        eprintln!(
            "SKIPPED dashboard browser test: no chromium installed (apt-get install chromium)"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("kagi-dash-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join("up.log")).unwrap();
    let up = Proc(
        Command::new(env!("CARGO_BIN_EXE_kagi"))
            .args(["up", "--data-dir"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let net: Value = loop {
        if let Ok(t) = std::fs::read_to_string(dir.join("network.json")) {
            if let Ok(v) = serde_json::from_str::<Value>(&t) {
                break v;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "kagi up did not come up; see {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let url = net["dashboard_url"]
        .as_str()
        .expect("dashboard_url in network.json")
        .to_owned();
    let up_log = std::fs::read_to_string(dir.join("up.log")).unwrap_or_default();
    assert!(
        up_log.contains(&url),
        "kagi up prints the dashboard URL:\n{up_log}"
    );

    let (_chrome, port) = start_chromium(&bin, &dir.join("chrome-profile"));
    let targets: Value = serde_json::from_str(&http_get(port, "/json/list")).unwrap();
    let page = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page target");
    let ws_url = page["webSocketDebuggerUrl"].as_str().unwrap();
    eprintln!("dashboard test: DevTools page {ws_url}");
    let (ws, _) = tungstenite::connect(ws_url).expect("DevTools websocket");
    // A browser that stops answering fails the test instead of hanging it.
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    let mut cdp = Cdp { ws, next: 0 };
    cdp.call("Page.navigate", json!({"url": url}));
    eprintln!("dashboard test: page opened after {:?}", start.elapsed());

    // Every node and link of the topology is drawn (as Cytoscape elements) once the first
    // live update arrives.
    let nodes: Vec<String> = net["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    let links: Vec<String> = net["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| format!("{}--{}", l["a"].as_str().unwrap(), l["b"].as_str().unwrap()))
        .collect();
    let drawn = "window.kagiDash ? {updates: kagiDash.updates, nodes: kagiDash.cy.nodes().map(n => n.id()), edges: kagiDash.cy.edges().map(e => e.id()), up: kagiDash.last.totals.nodes_up} : null";
    let (v, _) = cdp.wait(drawn, Duration::from_secs(30), |v| {
        v["up"].as_u64() == Some(nodes.len() as u64)
    });
    assert_eq!(
        v["up"].as_u64(),
        Some(nodes.len() as u64),
        "not every node answered the dashboard: {v}"
    );
    let mut got_nodes: Vec<String> = serde_json::from_value(v["nodes"].clone()).unwrap();
    let mut got_edges: Vec<String> = serde_json::from_value(v["edges"].clone()).unwrap();
    let (mut want_nodes, mut want_links) = (nodes.clone(), links.clone());
    for x in [
        &mut got_nodes,
        &mut got_edges,
        &mut want_nodes,
        &mut want_links,
    ] {
        x.sort();
    }
    assert_eq!(got_nodes, want_nodes);
    assert_eq!(got_edges, want_links);

    // The built-in topology gives coordinates: the map puts nodes where they are, north up
    // (Koganei west of Ueno, Chofu south of Hakusan), not where a layout would.
    let pos = cdp.eval(
        "(() => { const p = (id) => kagiDash.cy.getElementById(id).position(); \
         return {kx: p('koganei').x, ux: p('ueno').x, cy: p('chofu').y, hy: p('hakusan').y}; })()",
    );
    let f = |k: &str| pos[k].as_f64().unwrap_or(f64::NAN);
    assert!(
        f("kx") < f("ux") && f("cy") > f("hy"),
        "nodes not placed from their coordinates: {pos}"
    );

    // A key fetched over ETSI 014 moves the "keys delivered" counter, without a reload.
    let counter = "Number(document.getElementById('keys-delivered').textContent)";
    let before = cdp.eval(counter).as_u64().unwrap();
    let sae_node = net["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| !n["saes"].as_array().unwrap().is_empty())
        .unwrap();
    let slave = net["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find_map(|n| n["saes"].as_array().unwrap().first())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sae = &sae_node["saes"][0];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = kagi_node::client::Etsi014Client::from_files(
        sae_node["etsi014_url"].as_str().unwrap(),
        &dir.join(net["ca"].as_str().unwrap()),
        &dir.join(sae["cert"].as_str().unwrap()),
        &dir.join(sae["key"].as_str().unwrap()),
    )
    .unwrap();
    let fetched = rt.block_on(async {
        for _ in 0..150 {
            if client.enc_keys_get(&slave, Some(1), None).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    });
    assert!(fetched, "no key for {slave} within 30 s");
    let (after, took) = cdp.wait(counter, Duration::from_secs(10), |v| {
        v.as_u64() > Some(before)
    });
    assert!(after.as_u64() > Some(before), "counter stayed at {before}");
    eprintln!("dashboard: key counter {before} -> {after} after {took:?}");

    // A failed node turns red within a few seconds (map and table), without a reload. It is
    // frozen (SIGSTOP) rather than killed: `kagi up` restarts a killed node within a second.
    let victim = nodes.last().unwrap().clone();
    let pid = std::fs::read_to_string(dir.join("nodes").join(&victim).join("node.pid")).unwrap();
    Command::new("kill")
        .args(["-STOP", pid.trim()])
        .status()
        .unwrap();
    let red = format!(
        "({{color: kagiDash.cy.getElementById('{victim}').style('background-color'), row: document.querySelector('tr[data-node=\"{victim}\"]').dataset.state}})"
    );
    let (v, took) = cdp.wait(&red, Duration::from_secs(8), |v| v["row"] == "down");
    assert_eq!(v["row"], "down", "node {victim} not shown down: {v}");
    assert_eq!(v["color"], "rgb(211,47,47)", "node {victim} not red: {v}");
    eprintln!("dashboard: {victim} red {took:?} after SIGSTOP");

    // Screenshot of the live network (with the failed node) in the test output directory.
    let shot = cdp.call("Page.captureScreenshot", json!({"format": "png"}));
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    assert!(png.len() > 10_000, "screenshot is {} bytes", png.len());
    eprintln!("dashboard screenshot: {}", out.display());
    Command::new("kill")
        .args(["-CONT", pid.trim()])
        .status()
        .unwrap();
    drop(cdp);
    drop(up);
    let _ = std::fs::remove_dir_all(&dir);
}
