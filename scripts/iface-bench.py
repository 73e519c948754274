#!/usr/bin/env python3
"""Latency and throughput of the key-consumer interfaces of a running `kagi up` network:
Cisco SKIP (a key at one node, the same key by ID at the other) and ETSI GS QKD 004 (GET_KEY on
one stream at both ends). Python standard library only; one keep-alive mutual-TLS connection
per application, calls made one after another (the latency an application sees).

Usage: scripts/iface-bench.py DATA_DIR [NODE_A NODE_B] [--calls N]
       (defaults: koganei ueno, 300 calls; start the network first with `kagi up --data-dir DIR`)
Prints one JSON object.
"""

import argparse
import http.client
import json
import os
import ssl
import statistics
import time
import uuid


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(ms):
    return {"calls": len(ms), "p50_ms": round(pct(ms, 50), 2), "p99_ms": round(pct(ms, 99), 2),
            "max_ms": round(max(ms), 2), "mean_ms": round(statistics.mean(ms), 2)}


class Conn:
    """One application's keep-alive HTTPS connection with its client certificate."""

    def __init__(self, url, ca, cert, key):
        host, port = url.removeprefix("https://").rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
        self.c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)

    def call(self, method, path, body=None):
        t = time.perf_counter()
        self.c.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = self.c.getresponse()
        data = r.read()
        return r.status, json.loads(data), (time.perf_counter() - t) * 1000


def retry(f, what, deadline_s=120):
    """Calls f until it is not a retryable 503 (the pools are still filling)."""
    end = time.time() + deadline_s
    while True:
        s, v, ms = f()
        if s != 503 or time.time() > end:
            if s != 200:
                raise SystemExit(f"{what}: {s} {v}")
            return v, ms
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("a", nargs="?", default="koganei")
    ap.add_argument("b", nargs="?", default="ueno")
    ap.add_argument("--calls", type=int, default=300)
    o = ap.parse_args()
    net = json.load(open(os.path.join(o.dir, "network.json")))
    p = lambda x: os.path.join(o.dir, x)
    ca = p(net["ca"])
    nodes = {n["id"]: n for n in net["nodes"]}
    na, nb = nodes[o.a], nodes[o.b]
    sa, sb = na["saes"][0], nb["saes"][0]
    out = {"from": o.a, "to": o.b, "calls": o.calls}

    # SKIP: a key at A for B's router, then the same key by ID at B.
    ra = Conn(na["skip_url"], ca, p(sa["cert"]), p(sa["key"]))
    rb = Conn(nb["skip_url"], ca, p(sb["cert"]), p(sb["key"]))
    retry(lambda: ra.call("GET", f"/key?remoteSystemID={sb['id']}&size=256"), "SKIP warm-up")
    new, by_id, retries = [], [], 0
    t0 = time.perf_counter()
    for _ in range(o.calls):
        while True:
            s, k, ms = ra.call("GET", f"/key?remoteSystemID={sb['id']}&size=256")
            if s != 503:
                break
            retries += 1
        assert s == 200, (s, k)
        new.append(ms)
        s, same, ms = rb.call("GET", f"/key/{k['keyId']}?remoteSystemID={sa['id']}")
        assert s == 200 and same == k, (s, same)
        by_id.append(ms)
    wall = time.perf_counter() - t0
    out["skip"] = {"new_key": summary(new), "key_by_id": summary(by_id),
                   "key_pairs_per_s": round(o.calls / wall, 1), "retried_503": retries}

    # ETSI 004: one stream, GET_KEY at the source then at the destination.
    src = Conn(na["etsi004_url"], ca, p(sa["cert"]), p(sa["key"]))
    dst = Conn(nb["etsi004_url"], ca, p(sb["cert"]), p(sb["key"]))
    qos = {"key_chunk_size": 32, "timeout": 5000, "ttl": 600}  # max_bps: the most kagi grants
    body = {"source": "qkd://" + sa["id"], "destination": "qkd://" + sb["id"], "qos": qos,
            "key_stream_id": str(uuid.uuid4())}
    retry(lambda: src.call("POST", "/etsi004/v2/open_connect", json.dumps(body)), "OPEN_CONNECT")
    retry(lambda: dst.call("POST", "/etsi004/v2/open_connect", json.dumps(body)), "OPEN_CONNECT")
    ksid = body["key_stream_id"]
    get = json.dumps({"key_stream_id": ksid, "index": None})
    retry(lambda: src.call("POST", "/etsi004/v2/get_key", get), "GET_KEY warm-up")
    retry(lambda: dst.call("POST", "/etsi004/v2/get_key", get), "GET_KEY warm-up")
    s_ms, d_ms, retries = [], [], 0
    t0 = time.perf_counter()
    for _ in range(o.calls):
        for c, acc in ((src, s_ms), (dst, d_ms)):
            while True:
                s, v, ms = c.call("POST", "/etsi004/v2/get_key", get)
                if s != 503:
                    break
                retries += 1
            assert s == 200, (s, v)
            acc.append(ms)
    wall = time.perf_counter() - t0
    out["etsi004"] = {"source_get_key": summary(s_ms), "destination_get_key": summary(d_ms),
                      "chunks_per_s": round(o.calls / wall, 1), "retried_503": retries}
    for c in (src, dst):
        c.call("POST", "/etsi004/v2/close", json.dumps({"key_stream_id": ksid}))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
