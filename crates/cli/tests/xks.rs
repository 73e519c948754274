//! The XKS proxy on a live network (`kagi up --xks`: six node processes, five vault-site
//! processes, the proxy process), driven by independent clients:
//!
//! * `curl --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy"` exactly as the spec's Appendix D, for
//!   every endpoint and every error case (bad signature, skew, unknown key, disabled key,
//!   tampered ciphertext / tag / IV / AAD / metadata, oversized and malformed JSON, unknown
//!   fields, GET, unknown paths), credential rotation without restart, the second credential set;
//! * a Python client signing with botocore's `SigV4Auth` (botocore from the system or installed
//!   into a venv under the test's directory; the test says so loudly when neither works);
//! * `kagi xks key disable|enable|revoke`: a revoked key decrypts nothing, even when its registry
//!   entry is put back, because its shares are gone.

mod common;

use common::{kagi, python_with, TempDir, Up};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Net {
    dir: PathBuf,
    url: String,
    ak: String,
    sk: String,
    key: String,
}

impl Net {
    fn ca(&self) -> PathBuf {
        self.dir.join("pki/ca.pem")
    }

    /// curl as in the spec's Appendix D; returns (status, JSON body).
    fn curl_as(&self, user: &str, op_path: &str, body: &str) -> (u16, Value) {
        let f = self.dir.join("req.json");
        std::fs::write(&f, body).unwrap();
        let o = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(self.ca())
            .args([
                "--aws-sigv4",
                "aws:amz:us-east-1:kms-xks-proxy",
                "--user",
                user,
            ])
            .args([
                "-X",
                "POST",
                "-H",
                "Content-Type:application/json",
                "--data",
            ])
            .arg(format!("@{}", f.display()))
            .args(["-w", "\n%{http_code}"])
            .arg(format!("{}{op_path}", self.url))
            .output()
            .unwrap();
        parse_curl(&o)
    }

    fn curl(&self, op_path: &str, body: &str) -> (u16, Value) {
        self.curl_as(&format!("{}:{}", self.ak, self.sk), op_path, body)
    }

    /// curl with headers we sign ourselves (to send a skewed date).
    fn curl_signed_at(&self, op_path: &str, body: &str, t: i64) -> (u16, Value) {
        let url = format!("{}{op_path}", self.url);
        let rest = url.strip_prefix("https://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let headers = [("host", host), ("content-type", "application/json")];
        let req = kagi_xks::sigv4::Request {
            method: "POST",
            path,
            query: "",
            headers: &headers,
            body: body.as_bytes(),
        };
        let (date, auth) = kagi_xks::sigv4::sign(&req, t, "us-east-1", &self.ak, &self.sk);
        let o = Command::new("curl")
            .args(["-sS", "--http1.1", "--cacert"])
            .arg(self.ca())
            .args(["-X", "POST", "-H", "Content-Type: application/json"])
            .args([
                "-H",
                &format!("X-Amz-Date: {date}"),
                "-H",
                &format!("Authorization: {auth}"),
            ])
            .args(["--data-binary", body, "-w", "\n%{http_code}", &url])
            .output()
            .unwrap();
        parse_curl(&o)
    }

    fn get(&self, op_path: &str) -> (u16, Value) {
        let o = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(self.ca())
            .args([
                "--aws-sigv4",
                "aws:amz:us-east-1:kms-xks-proxy",
                "--user",
                &format!("{}:{}", self.ak, self.sk),
            ])
            .args(["-w", "\n%{http_code}"])
            .arg(format!("{}{op_path}", self.url))
            .output()
            .unwrap();
        parse_curl(&o)
    }

    fn xks(&self, args: &[&str]) -> Output {
        kagi()
            .arg("xks")
            .args(args)
            .arg("--data-dir")
            .arg(&self.dir)
            .output()
            .unwrap()
    }
}

fn parse_curl(o: &Output) -> (u16, Value) {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    let code: u16 = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl: {out} {}", String::from_utf8_lossy(&o.stderr)));
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn meta(op: &str) -> Value {
    json!({
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:us-east-2:123456789012:/key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "kmsOperation": op,
        "kmsRequestId": format!("test-{op}-4112f4d6"),
        "kmsViaService": "ebs"
    })
}

fn err_name(v: &Value) -> &str {
    v["errorName"].as_str().unwrap_or("")
}

/// Runs `f` until it holds or `secs` pass.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

const BOTOCORE_CLIENT: &str = r#"
import base64, json, ssl, sys, urllib.request, urllib.error
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

url, ak, sk, key, ca = sys.argv[1:6]
creds = Credentials(ak, sk)
ctx = ssl.create_default_context(cafile=ca)

def call(op, body):
    data = json.dumps(body).encode()
    req = AWSRequest(method="POST", url=f"{url}{op}", data=data, headers={"Content-Type": "application/json"})
    SigV4Auth(creds, "kms-xks-proxy", "us-east-1").add_auth(req)
    r = urllib.request.Request(req.url, data=data, headers=dict(req.headers.items()), method="POST")
    try:
        with urllib.request.urlopen(r, context=ctx) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())

meta = {"awsPrincipalArn": "arn:aws:iam::123456789012:user/Bob", "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/b",
        "kmsOperation": "Encrypt", "kmsRequestId": "botocore-1"}
n = 0
for i in range(20):
    pt = base64.b64encode(bytes([i]) * (1 + 200 * i)).decode()
    aad = base64.b64encode(f"ctx={i}".encode()).decode()
    s, e = call(f"/keys/{key}/encrypt", {"requestMetadata": meta, "plaintext": pt, "encryptionAlgorithm": "AES_GCM",
                                        "additionalAuthenticatedData": aad, "ciphertextDataIntegrityValueAlgorithm": "SHA_256"})
    assert s == 200, (s, e)
    s, d = call(f"/keys/{key}/decrypt", {"requestMetadata": dict(meta, kmsOperation="Decrypt"), "encryptionAlgorithm": "AES_GCM",
                                        "ciphertext": e["ciphertext"], "ciphertextMetadata": e["ciphertextMetadata"],
                                        "initializationVector": e["initializationVector"], "authenticationTag": e["authenticationTag"],
                                        "additionalAuthenticatedData": aad})
    assert s == 200 and d["plaintext"] == pt, (s, d)
    n += 1
s, h = call("/health", {"requestMetadata": {"kmsOperation": "KmsHealthCheck", "kmsRequestId": "botocore-h"}})
assert s == 200 and h["ekmFleetDetails"], (s, h)
bad = Credentials(ak, sk[:-2] + ("AA" if not sk.endswith("AA") else "BB"))
data = json.dumps({"requestMetadata": {"kmsOperation": "KmsHealthCheck", "kmsRequestId": "x"}}).encode()
req = AWSRequest(method="POST", url=f"{url}/health", data=data, headers={"Content-Type": "application/json"})
SigV4Auth(bad, "kms-xks-proxy", "us-east-1").add_auth(req)
try:
    urllib.request.urlopen(urllib.request.Request(req.url, data=data, headers=dict(req.headers.items()), method="POST"), context=ctx)
    raise SystemExit("bad secret accepted")
except urllib.error.HTTPError as e:
    assert e.code == 401 and json.loads(e.read())["errorName"] == "AuthenticationFailedException"
print(f"botocore: {n} round trips ok")
"#;

#[test]
fn xks_proxy_over_a_live_network() {
    let tmp = TempDir::new("xks-net");
    let dir = tmp.0.clone();
    let up = Up::start(&dir, &["--xks"]);
    let netv: Value =
        serde_json::from_slice(&std::fs::read(dir.join("network.json")).unwrap()).unwrap();
    let x = &netv["xks"];
    assert_eq!(x["region"], "us-east-1");
    let net = Net {
        dir: dir.clone(),
        url: x["url"].as_str().unwrap().to_string(),
        ak: x["access_key_id"].as_str().unwrap().to_string(),
        sk: x["secret_access_key"].as_str().unwrap().to_string(),
        key: x["key_ids"][0]
            .as_str()
            .expect("one key in network.json")
            .to_string(),
    };
    let k = net.key.clone();
    let kp = |op: &str| format!("/keys/{k}/{op}");

    // --- Appendix D, every endpoint -----------------------------------------------------------
    let (s, h) = net.curl("/health", r#"{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"1124f4d6-db54-4af4-ae30-c55a22a8abcd"}}"#);
    assert_eq!(s, 200, "{h}");
    let members = h["ekmFleetDetails"].as_array().unwrap();
    assert!((1..=10).contains(&members.len()) && h["xksProxyFleetSize"].as_u64() >= Some(1));
    assert!(members.iter().all(|m| m["healthStatus"] == "ACTIVE"), "{h}");
    let (s, m) = net.curl(&kp("metadata"), &json!({"requestMetadata": {"awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice", "kmsOperation": "CreateKey", "kmsRequestId": "m1"}}).to_string());
    assert_eq!(
        (s, &m),
        (
            200,
            &json!({"keySpec": "AES_256", "keyUsage": ["ENCRYPT", "DECRYPT"], "keyStatus": "ENABLED"})
        )
    );
    let enc_body = json!({"requestMetadata": meta("GenerateDataKey"), "plaintext": "SGVsbG8gV29ybGQh", "encryptionAlgorithm": "AES_GCM",
        "additionalAuthenticatedData": "cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n", "ciphertextDataIntegrityValueAlgorithm": "SHA_256"});
    // `kagi up` has the proxy rebuild the key from the vault sites before it reports ready, so
    // the very first call answers at once (the rebuild would otherwise wait for QKD key on the
    // channels the key's creation drew from, with a retryable 503).
    let trail = std::fs::read_to_string(dir.join("xks").join("proxy-audit.jsonl")).unwrap();
    assert!(
        trail.lines().any(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_default();
            v["event"] == "xks.material.rebuild"
                && v["target"] == k.as_str()
                && v["outcome"] == "ok"
        }),
        "kagi up reported ready before the proxy rebuilt its key:\n{trail}"
    );
    let (s, e) = net.curl(&kp("encrypt"), &enc_body.to_string());
    assert_eq!(s, 200, "{e}");
    for f in [
        "ciphertext",
        "initializationVector",
        "authenticationTag",
        "ciphertextDataIntegrityValue",
        "ciphertextMetadata",
    ] {
        assert!(e[f].is_string(), "{f} missing: {e}");
    }
    assert_eq!(
        e["ciphertext"].as_str().unwrap().len(),
        "SGVsbG8gV29ybGQh".len()
    );
    // Without AAD or CDIV (the Appendix D request as is).
    let (s, e0) = net.curl(&kp("encrypt"), &json!({"requestMetadata": meta("GenerateDataKey"), "plaintext": "SGVsbG8gV29ybGQh", "encryptionAlgorithm": "AES_GCM"}).to_string());
    assert_eq!(s, 200, "{e0}");
    assert!(e0.get("ciphertextDataIntegrityValue").is_none());
    let dec = |e: &Value, aad: Option<&str>| {
        let mut b = json!({"requestMetadata": meta("Decrypt"), "encryptionAlgorithm": "AES_GCM", "ciphertext": e["ciphertext"],
            "ciphertextMetadata": e["ciphertextMetadata"], "initializationVector": e["initializationVector"], "authenticationTag": e["authenticationTag"]});
        if let Some(a) = aad {
            b["additionalAuthenticatedData"] = json!(a);
        }
        b
    };
    let aad = "cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n";
    let (s, d) = net.curl(&kp("decrypt"), &dec(&e, Some(aad)).to_string());
    assert_eq!(
        (s, d["plaintext"].as_str()),
        (200, Some("SGVsbG8gV29ybGQh")),
        "{d}"
    );
    let (s, d) = net.curl(&kp("decrypt"), &dec(&e0, None).to_string());
    assert_eq!(
        (s, d["plaintext"].as_str()),
        (200, Some("SGVsbG8gV29ybGQh")),
        "{d}"
    );
    // Unknown fields, at the top and in requestMetadata, and unknown kmsOperation: tolerated.
    let mut extra = enc_body.clone();
    extra["someFutureField"] = json!({"x": [1, 2]});
    extra["requestMetadata"]["kmsOperation"] = json!("BulkEncryptFromTheFuture");
    extra["requestMetadata"]["kmsRecipientAttestationPCR0"] = json!("abc");
    assert_eq!(net.curl(&kp("encrypt"), &extra.to_string()).0, 200);

    // --- GET and unknown paths --------------------------------------------------------------
    for p in [
        "/health".to_string(),
        kp("metadata"),
        kp("encrypt"),
        kp("decrypt"),
    ] {
        let (s, v) = net.get(&p);
        assert_eq!(s, 405, "GET {p}: {v}");
        assert!(!err_name(&v).is_empty());
    }
    let (s, v) = net.curl("/keys/x/sign", &enc_body.to_string());
    assert_eq!((s, err_name(&v)), (404, "InvalidUriPathException"));
    let other = net.url.replace("/kms/xks/v1", "/other/kms/xks/v1");
    let o = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(net.ca())
        .args([
            "--aws-sigv4",
            "aws:amz:us-east-1:kms-xks-proxy",
            "--user",
            &format!("{}:{}", net.ak, net.sk),
            "-X",
            "POST",
            "--data",
            "{}",
            "-w",
            "\n%{http_code}",
        ])
        .arg(format!("{other}/health"))
        .output()
        .unwrap();
    assert_eq!(parse_curl(&o).0, 404);

    // --- Authentication ---------------------------------------------------------------------
    let health = r#"{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"a"}}"#;
    let (s, v) = net.curl_as(&format!("{}:{}x", net.ak, net.sk), "/health", health);
    assert_eq!((s, err_name(&v)), (401, "AuthenticationFailedException"));
    let (s, v) = net.curl_as(
        &format!("AAAAAAAAAAAAAAAAAAAAAAAAAA:{}", net.sk),
        "/health",
        health,
    );
    assert_eq!((s, err_name(&v)), (401, "AuthenticationFailedException"));
    let now = kagi_xks::time::now_unix();
    assert_eq!(net.curl_signed_at("/health", health, now).0, 200);
    assert_eq!(net.curl_signed_at("/health", health, now - 240).0, 200);
    let (s, v) = net.curl_signed_at("/health", health, now - 400);
    assert_eq!((s, err_name(&v)), (401, "AuthenticationFailedException"));
    assert_eq!(net.curl_signed_at("/health", health, now + 400).0, 401);
    // Unsigned request.
    let o = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(net.ca())
        .args(["-X", "POST", "--data", health, "-w", "\n%{http_code}"])
        .arg(format!("{}/health", net.url))
        .output()
        .unwrap();
    assert_eq!(parse_curl(&o).0, 401);
    // The second credential set works too; a third added to the file works without a restart;
    // removing it stops it.
    let cpath = dir.join("xks/credentials.json");
    let mut creds: Value = serde_json::from_slice(&std::fs::read(&cpath).unwrap()).unwrap();
    let second = creds["uri_paths"][0]["credentials"][1].clone();
    let user2 = format!(
        "{}:{}",
        second["access_key_id"].as_str().unwrap(),
        second["secret_access_key"].as_str().unwrap()
    );
    assert_eq!(net.curl_as(&user2, "/health", health).0, 200);
    let third = json!({"access_key_id": "ROTATEDKEY234567ROTATEDKEY", "secret_access_key": "c2VjcmV0LXJvdGF0ZWQtMDEyMzQ1Njc4OWFiY2RlZg=="});
    let user3 = "ROTATEDKEY234567ROTATEDKEY:c2VjcmV0LXJvdGF0ZWQtMDEyMzQ1Njc4OWFiY2RlZg==";
    assert_eq!(net.curl_as(user3, "/health", health).0, 401);
    creds["uri_paths"][0]["credentials"]
        .as_array_mut()
        .unwrap()
        .push(third);
    std::fs::write(&cpath, serde_json::to_vec_pretty(&creds).unwrap()).unwrap();
    assert!(
        eventually(5, || net.curl_as(user3, "/health", health).0 == 200),
        "rotated credential not picked up"
    );
    creds["uri_paths"][0]["credentials"]
        .as_array_mut()
        .unwrap()
        .remove(0);
    std::fs::write(&cpath, serde_json::to_vec_pretty(&creds).unwrap()).unwrap();
    assert!(
        eventually(5, || net.curl("/health", health).0 == 401),
        "removed credential still accepted"
    );
    // Back to the original file contents for the rest.
    creds["uri_paths"][0]["credentials"]
        .as_array_mut()
        .unwrap()
        .insert(
            0,
            json!({"access_key_id": net.ak, "secret_access_key": net.sk}),
        );
    std::fs::write(&cpath, serde_json::to_vec_pretty(&creds).unwrap()).unwrap();
    assert!(eventually(5, || net.curl("/health", health).0 == 200));

    // --- Bad input --------------------------------------------------------------------------
    let (s, v) = net.curl(&kp("encrypt"), "{not json");
    assert_eq!((s, err_name(&v)), (400, "ValidationException"));
    let (s, v) = net.curl(&kp("encrypt"), &json!({"requestMetadata": meta("Encrypt"), "plaintext": "SGVsbG8=", "encryptionAlgorithm": "RSA"}).to_string());
    assert_eq!((s, err_name(&v)), (400, "ValidationException"));
    let (s, v) = net.curl(&kp("encrypt"), &json!({"requestMetadata": meta("Encrypt"), "plaintext": "%%%", "encryptionAlgorithm": "AES_GCM"}).to_string());
    assert_eq!((s, err_name(&v)), (400, "ValidationException"));
    let (s, v) = net.curl(&kp("encrypt"), &json!({"requestMetadata": {"kmsOperation": "Encrypt"}, "plaintext": "SGVsbG8=", "encryptionAlgorithm": "AES_GCM"}).to_string());
    assert_eq!((s, err_name(&v)), (400, "ValidationException"));
    let huge = json!({"requestMetadata": meta("Encrypt"), "plaintext": "A".repeat(400_000), "encryptionAlgorithm": "AES_GCM"}).to_string();
    let (s, v) = net.curl(&kp("encrypt"), &huge);
    assert_eq!((s, err_name(&v)), (400, "ValidationException"), "{v}");
    // 4,300 bytes of plaintext and 8,192 bytes of AAD (the spec's minimums) work.
    let big = json!({"requestMetadata": meta("Encrypt"), "plaintext": kagi_xks::wire::encode(&[7u8; 4300]), "encryptionAlgorithm": "AES_GCM",
        "additionalAuthenticatedData": kagi_xks::wire::encode(&[9u8; 8192])});
    let (s, eb) = net.curl(&kp("encrypt"), &big.to_string());
    assert_eq!(s, 200, "{eb}");

    // --- Unknown key, tampering ---------------------------------------------------------------
    let (s, v) = net.curl("/keys/no-such-key/encrypt", &enc_body.to_string());
    assert_eq!((s, err_name(&v)), (404, "KeyNotFoundException"));
    let (s, v) = net.curl("/keys/no-such-key/metadata", &enc_body.to_string());
    assert_eq!((s, err_name(&v)), (404, "KeyNotFoundException"));
    let flip = |b64: &Value| {
        use base64::Engine as _;
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        raw[0] ^= 1;
        json!(kagi_xks::wire::encode(&raw))
    };
    for (field, aad_used) in [
        ("ciphertext", Some(aad)),
        ("authenticationTag", Some(aad)),
        ("initializationVector", Some(aad)),
        ("ciphertextMetadata", Some(aad)),
    ] {
        let mut b = dec(&e, aad_used);
        b[field] = flip(&e[field]);
        let (s, v) = net.curl(&kp("decrypt"), &b.to_string());
        assert_eq!(
            (s, err_name(&v)),
            (400, "InvalidCiphertextException"),
            "tampered {field}"
        );
    }
    for bad_aad in [None, Some("b3RoZXI=")] {
        let (s, v) = net.curl(&kp("decrypt"), &dec(&e, bad_aad).to_string());
        assert_eq!(
            (s, err_name(&v)),
            (400, "InvalidCiphertextException"),
            "AAD {bad_aad:?}"
        );
    }
    let mut short_iv = dec(&e, Some(aad));
    short_iv["initializationVector"] = json!("AAAA");
    assert_eq!(
        err_name(&net.curl(&kp("decrypt"), &short_iv.to_string()).1),
        "InvalidCiphertextException"
    );
    // Metadata moved into the AAD (the spec's length-binding example).
    let mut moved = dec(&e0, Some("AQ=="));
    moved.as_object_mut().unwrap().remove("ciphertextMetadata");
    assert_eq!(
        err_name(&net.curl(&kp("decrypt"), &moved.to_string()).1),
        "InvalidCiphertextException"
    );

    // --- botocore ---------------------------------------------------------------------------
    match python_with(&dir, "botocore.auth", "botocore") {
        Some(py) => {
            let script = dir.join("xks_botocore.py");
            std::fs::write(&script, BOTOCORE_CLIENT).unwrap();
            let o = Command::new(py).arg(&script).args([&net.url, &net.ak, &net.sk, &net.key]).arg(net.ca()).output().unwrap();
            assert!(o.status.success(), "botocore client: {}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            eprintln!("{}", String::from_utf8_lossy(&o.stdout).trim());
        }
        None => eprintln!("\n*** SKIPPED the botocore client: no python3 with botocore, and pip could not install it ***\n"),
    }

    // --- Lifecycle ----------------------------------------------------------------------------
    let o = net.xks(&["key", "disable", &k]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(eventually(5, || net
        .curl(&kp("metadata"), &enc_body.to_string())
        .1["keyStatus"]
        == "DISABLED"));
    let (s, v) = net.curl(&kp("encrypt"), &enc_body.to_string());
    assert_eq!((s, err_name(&v)), (400, "InvalidStateException"));
    let (s, v) = net.curl(&kp("decrypt"), &dec(&e, Some(aad)).to_string());
    assert_eq!((s, err_name(&v)), (400, "InvalidStateException"));
    assert!(net.xks(&["key", "enable", &k]).status.success());
    // Re-enabling rebuilds the material: QKD key for three vault channels, retried as KMS would.
    assert!(eventually(60, || net
        .curl(&kp("decrypt"), &dec(&e, Some(aad)).to_string())
        .0
        == 200));
    // A second key: independent material.
    let o = net.xks(&["key", "create", "--id", "second-key.v1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(eventually(5, || net
        .curl("/keys/second-key.v1/metadata", &enc_body.to_string())
        .0
        == 200));
    let (s, v) = net.curl(
        "/keys/second-key.v1/decrypt",
        &dec(&e, Some(aad)).to_string(),
    );
    assert_eq!(
        (s, err_name(&v)),
        (400, "InvalidCiphertextException"),
        "another key's ciphertext"
    );
    let list: Value = serde_json::from_slice(&net.xks(&["key", "list", "--json"]).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    // Revoke: gone for good.
    let registry = dir.join("xks/keys.json");
    let before = std::fs::read(&registry).unwrap();
    let o = net.xks(&["key", "revoke", &k]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(eventually(30, || err_name(
        &net.curl(&kp("decrypt"), &dec(&e, Some(aad)).to_string()).1
    ) == "KeyNotFoundException"));
    assert_eq!(net.curl(&kp("metadata"), &enc_body.to_string()).0, 404);
    // Even with its registry entry put back as enabled, nothing can rebuild it.
    std::fs::write(&registry, before).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let (s, v) = net.curl(&kp("decrypt"), &dec(&e, Some(aad)).to_string());
    assert_eq!(
        (s, err_name(&v)),
        (404, "KeyNotFoundException"),
        "revoked key rebuilt: {v}"
    );

    // --- Audit --------------------------------------------------------------------------------
    let o = net.xks(&["audit-verify"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let trail = std::fs::read_to_string(dir.join("xks/proxy-audit.jsonl")).unwrap();
    assert!(
        trail.contains("test-GenerateDataKey-4112f4d6")
            && trail.contains("AuthenticationFailedException")
    );
    // No plaintext in the trail or the log ("Hello World!" and its Base64).
    let log = std::fs::read_to_string(dir.join("xks/proxy.log")).unwrap();
    for text in [&trail, &log] {
        assert!(!text.contains("SGVsbG8gV29ybGQh") && !text.contains("Hello World"));
    }
    drop(up);
}
