//! `kagi vault` against a real local network (`kagi up --vault`: six node processes and five
//! storage-site processes, mutual TLS, ETSI GS QKD 014): put, list, destroy two sites' data, get
//! byte-identical, repair and refresh among the sites; `kill -9` of a site process in the middle
//! of a put leaves no object that reads as valid and a retry completes; key shortage fails
//! cleanly; bad input gives clear errors.

mod common;

use common::{err, kagi, ok, read_pid, TempDir, Up};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn vault(dir: &Path, args: &[&str]) -> Output {
    kagi()
        .arg("vault")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

fn pending(site_dir: &Path) -> usize {
    std::fs::read_dir(site_dir.join("pending"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn committed(site_dir: &Path) -> usize {
    std::fs::read_dir(site_dir.join("objects"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn ls_count(dir: &Path) -> usize {
    let v: serde_json::Value = serde_json::from_str(&ok(vault(dir, &["ls", "--json"]))).unwrap();
    v.as_array().unwrap().len()
}

#[test]
fn vault_over_a_real_network() {
    let tmp = TempDir::new("vault-net");
    let dir = tmp.0.clone();
    let up = Up::start(&dir, &["--vault"]);
    let net: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("network.json")).unwrap()).unwrap();
    let sites: Vec<(String, PathBuf, String)> = net["vault_sites"]
        .as_array()
        .expect("vault_sites in network.json")
        .iter()
        .map(|s| {
            let d = s["data_dir"].as_str().unwrap();
            assert!(Path::new(d).is_relative(), "{d}");
            (
                s["id"].as_str().unwrap().to_string(),
                dir.join(d),
                s["url"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(sites.len(), 5);
    // Each site is its own process (pid file beside its config).
    let pids: Vec<u32> = sites
        .iter()
        .map(|(id, _, _)| read_pid(&dir.join("vault").join(format!("{id}.pid"))).unwrap())
        .collect();
    assert!(pids.iter().all(|&p| p != up.child.id()));

    // Synthetic records; store one file, destroy two sites, get it back identical.
    ok(vault(
        &dir,
        &[
            "demo-records",
            "--out",
            dir.join("records").to_str().unwrap(),
            "--patients",
            "2",
        ],
    ));
    let mut files = Vec::new();
    let mut stack = vec![dir.join("records")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p)
            } else {
                files.push(p)
            }
        }
    }
    let file = files
        .iter()
        .find(|p| p.to_string_lossy().contains("ADT-00"))
        .unwrap()
        .clone();
    let out = ok(vault(
        &dir,
        &["put", file.to_str().unwrap(), "--k", "3", "--n", "5"],
    ));
    let id = out.lines().last().unwrap().trim().to_string();
    assert!(
        uuid::Uuid::try_parse(&id).is_ok(),
        "last line is the object ID: {out:?}"
    );
    assert_eq!(ls_count(&dir), 1);
    // Every site holds exactly one share, and none holds the plaintext.
    let plain = std::fs::read(&file).unwrap();
    for (_, d, _) in &sites {
        assert_eq!(committed(d), 1);
        let share = std::fs::read(d.join("objects").join(&id).join("share.0.bin")).unwrap();
        assert!(!share.windows(16).any(|w| plain.windows(16).any(|p| p == w)));
    }
    std::fs::remove_dir_all(&sites[1].1).unwrap();
    std::fs::remove_dir_all(&sites[3].1).unwrap();
    let restored = dir.join("restored");
    ok(vault(&dir, &["get", &id, "-o", restored.to_str().unwrap()]));
    assert_eq!(std::fs::read(&restored).unwrap(), plain);
    // Repair one wiped site from three others (site to site, one-time pads), then refresh all
    // five shares; the object still reads back.
    ok(vault(&dir, &["repair", &id, "--site", &sites[1].0]));
    ok(vault(&dir, &["repair", &id, "--site", &sites[3].0]));
    let before = std::fs::read(sites[0].1.join("objects").join(&id).join("share.0.bin")).unwrap();
    ok(vault(&dir, &["refresh", &id]));
    let after = std::fs::read(sites[0].1.join("objects").join(&id).join("share.1.bin")).unwrap();
    assert_ne!(before, after);
    assert!(!sites[0]
        .1
        .join("objects")
        .join(&id)
        .join("share.0.bin")
        .exists());
    ok(vault(&dir, &["get", &id, "-o", restored.to_str().unwrap()]));
    assert_eq!(std::fs::read(&restored).unwrap(), plain);

    // kill -9 of a site process in the middle of a put: the first site to hold its (pending)
    // share dies while the other transfers are still waiting for key.
    let big = dir.join("big.bin");
    let big_data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&big, &big_data).unwrap();
    let child = kagi()
        .args(["vault", "put", big.to_str().unwrap(), "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let victim_i = loop {
        if let Some(i) = sites.iter().position(|(_, d, _)| pending(d) > 0) {
            break i;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "put never reached a site"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let victim = &sites[victim_i];
    let pid_file = dir.join("vault").join(format!("{}.pid", victim.0));
    let old_pid = read_pid(&pid_file).unwrap();
    assert!(Command::new("kill")
        .arg("-KILL")
        .arg(old_pid.to_string())
        .status()
        .unwrap()
        .success());
    let others_pending = sites.iter().filter(|(_, d, _)| pending(d) > 0).count();
    assert!(others_pending < 5, "the put was still under way");
    let o = child.wait_with_output().unwrap();
    let e = err(&o);
    assert!(e.contains(&victim.0), "the error names the site: {e}");
    assert_eq!(
        ls_count(&dir),
        1,
        "the interrupted put left no object that reads as valid"
    );
    for (i, (_, d, _)) in sites.iter().enumerate() {
        assert_eq!(committed(d), 1, "only the first object is committed");
        if i != victim_i {
            assert_eq!(
                pending(d),
                0,
                "the owner rolled back the put at reachable sites"
            );
        }
    }
    // `kagi up` restarts the site; it drops the uncommitted put it held.
    let t = Instant::now();
    let port: u16 = victim.2.rsplit(':').next().unwrap().parse().unwrap();
    loop {
        let restarted = read_pid(&pid_file).is_some_and(|p| p != old_pid);
        if restarted && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "site not restarted");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(pending(&victim.1), 0);
    let out = ok(vault(
        &dir,
        &["put", big.to_str().unwrap(), "--json", "--wait-secs", "300"],
    ));
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let big_id = v["object"].as_str().unwrap().to_string();
    assert!(v["qkd_key_bytes"].as_u64().unwrap() >= 5 * 2_000_000);
    let big_out = dir.join("big.out");
    ok(vault(
        &dir,
        &["get", &big_id, "-o", big_out.to_str().unwrap()],
    ));
    assert_eq!(std::fs::read(&big_out).unwrap(), big_data);
    assert_eq!(ls_count(&dir), 2);

    // Key shortage: 2 MiB needs far more key than the nodes' 64 KiB pools refill in 2 s. The
    // put says so and fails; nothing is stored anywhere, and nothing went out unpadded.
    let huge = dir.join("huge.bin");
    std::fs::write(&huge, vec![0x5au8; 2 << 20]).unwrap();
    let o = vault(&dir, &["put", huge.to_str().unwrap(), "--wait-secs", "2"]);
    let e = err(&o);
    assert!(e.contains("not enough QKD key"), "{e}");
    assert_eq!(ls_count(&dir), 2);
    for (_, d, _) in &sites {
        assert_eq!(pending(d), 0);
    }

    // Bad input: clear errors, non-zero exit.
    let o = vault(
        &dir,
        &[
            "get",
            "00000000-0000-4000-8000-000000000000",
            "-o",
            "/dev/null",
        ],
    );
    assert!(err(&o).contains("unknown object"), "{o:?}");
    let o = vault(&dir, &["get", "not-an-id", "-o", "/dev/null"]);
    assert!(err(&o).contains("unknown object"), "{o:?}");
    let f = file.to_str().unwrap();
    let o = vault(&dir, &["put", f, "--k", "6", "--n", "5"]);
    assert!(err(&o).contains("k = 6 exceeds"), "{o:?}");
    let o = vault(&dir, &["put", f, "--k", "0", "--n", "5"]);
    assert!(err(&o).contains("at least 1"), "{o:?}");
    let o = vault(&dir, &["put", f, "--k", "3", "--n", "300"]);
    assert!(err(&o).contains("255"), "{o:?}");
    let o = vault(&dir, &["put", f, "--k", "3", "--n", "6"]);
    assert!(err(&o).contains("the network has 5"), "{o:?}");
    let o = vault(&dir, &["ls", "--sae", "sae-nowhere"]);
    assert!(err(&o).contains("unknown SAE"), "{o:?}");
    let o = vault(&dir, &["repair", &id, "--site", "sae-nowhere"]);
    assert!(err(&o).contains("unknown site"), "{o:?}");
    // Another SAE of the network cannot see or read the owner's objects.
    let other = net["nodes"][0]["saes"][1]["id"].as_str().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&ok(vault(&dir, &["ls", "--json", "--sae", other]))).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 0);
    let o = vault(&dir, &["get", &id, "-o", "/dev/null", "--sae", other]);
    assert!(err(&o).contains("unknown object"), "{o:?}");
    // Truncated shares at three of five sites: the get names them and fails cleanly.
    for (_, d, _) in &sites[..3] {
        let p = d.join("objects").join(&id).join("share.1.bin");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    }
    let o = vault(&dir, &["get", &id, "-o", "/dev/null"]);
    let e = err(&o);
    assert!(e.contains("only 2 of the 3 needed sites"), "{e}");
    assert!(e.contains(&sites[0].0), "{e}");
}
