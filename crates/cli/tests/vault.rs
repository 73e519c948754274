//! `kagi vault` against a real local network (`kagi up`: six node processes, mutual TLS, ETSI
//! GS QKD 014): put, list, destroy two sites, get byte-identical; `kill -9` in the middle of a put
//! leaves no object that reads as valid and a retry completes; bad input gives clear errors.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `kagi up`, stopped on drop (SIGTERM, then SIGKILL).
struct Up(Child);
impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kagi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kagi"))
}

fn vault(dir: &Path, args: &[&str]) -> Output {
    kagi()
        .arg("vault")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn ls_count(dir: &Path) -> usize {
    let v: serde_json::Value = serde_json::from_str(&ok(vault(dir, &["ls", "--json"]))).unwrap();
    v.as_array().unwrap().len()
}

#[test]
fn vault_over_a_real_network() {
    let dir = std::env::temp_dir().join(format!("kagi-vault-net-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = TempDir(dir.clone());
    let log = std::fs::File::create(dir.join("up.log")).unwrap();
    let mut up = Up(kagi()
        .args(["up", "--data-dir"])
        .arg(&dir)
        .args(["--rate-multiplier", "4", "--wait-secs", "300"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap());
    let start = Instant::now();
    while !dir.join("network.json").exists() {
        if let Ok(Some(st)) = up.0.try_wait() {
            panic!(
                "kagi up exited ({st}): {}",
                std::fs::read_to_string(dir.join("up.log")).unwrap()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(320),
            "network did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

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
    let sites: Vec<String> = ok(vault(&dir, &["sites"]))
        .lines()
        .map(|l| l.split_whitespace().last().unwrap().to_string())
        .collect();
    assert_eq!(sites.len(), 5);
    std::fs::remove_dir_all(&sites[1]).unwrap();
    std::fs::remove_dir_all(&sites[3]).unwrap();
    let restored = dir.join("restored");
    ok(vault(&dir, &["get", &id, "-o", restored.to_str().unwrap()]));
    assert_eq!(
        std::fs::read(&restored).unwrap(),
        std::fs::read(&file).unwrap()
    );

    // kill -9 in the middle of a put (a file large enough to need several key requests).
    let big = dir.join("big.bin");
    std::fs::write(
        &big,
        (0..400_000u32)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let mut child = kagi()
        .args(["vault", "put", big.to_str().unwrap(), "--data-dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    assert_eq!(
        ls_count(&dir),
        1,
        "the killed put left no object that reads as valid"
    );
    let out = ok(vault(
        &dir,
        &["put", big.to_str().unwrap(), "--json", "--wait-secs", "300"],
    ));
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let big_id = v["object"].as_str().unwrap().to_string();
    assert!(v["qkd_key_bytes"].as_u64().unwrap() >= 5 * 400_000);
    let big_out = dir.join("big.out");
    ok(vault(
        &dir,
        &["get", &big_id, "-o", big_out.to_str().unwrap()],
    ));
    assert_eq!(
        std::fs::read(&big_out).unwrap(),
        std::fs::read(&big).unwrap()
    );
    assert_eq!(ls_count(&dir), 2);

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
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown object"),
        "{o:?}"
    );
    let o = vault(
        &dir,
        &["put", file.to_str().unwrap(), "--k", "6", "--n", "5"],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("k = 6 exceeds"),
        "{o:?}"
    );
    let o = vault(
        &dir,
        &["put", file.to_str().unwrap(), "--k", "0", "--n", "5"],
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("at least 1"),
        "{o:?}"
    );
}
