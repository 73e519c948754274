"""An ETSI GS QKD 004 (V2.1.1) application, written from the standard's text and kagi's
documented JSON mapping (crates/node/src/etsi004/mod.rs), with the Python standard library only.

OPEN_CONNECT(source, destination, QoS, Key_stream_ID) -> (Key_stream_ID, QoS, status)
GET_KEY(Key_stream_ID, index, Metadata)              -> (status, Key_buffer, index, Metadata)
CLOSE(Key_stream_ID)                                  -> status

Usage: etsi004_client.py CA SRC_URL SRC_ID SRC_CERT SRC_KEY DST_URL DST_ID DST_CERT DST_KEY OTHER_ID
Prints one JSON line with what it checked; exits non-zero on the first mismatch.
"""

import base64
import http.client
import json
import ssl
import sys
import time
import uuid

SUCCESSFUL, PEER_NOT_CONNECTED, INSUFFICIENT_KEY, GET_KEY_PEER_NOT_CONNECTED = 0, 1, 2, 3
NO_QKD_CONNECTION, KSID_IN_USE, TIMEOUT, QOS_NOT_MET, METADATA_TOO_SMALL = 4, 5, 6, 7, 8
UNKNOWN_STREAM, BAD_REQUEST, UNAUTHORIZED = 9, 10, 11  # kagi's, above the standard's range
RETRYABLE = {INSUFFICIENT_KEY, NO_QKD_CONNECTION, TIMEOUT}

seen_http = []


class App:
    """One application (SAE) talking to its own node's 004 listener."""

    def __init__(self, url, sae, ca, cert, key):
        host, port = url.removeprefix("https://").rsplit(":", 1)
        self.host, self.port, self.sae = host, int(port), sae
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.load_cert_chain(cert, key)

    def raw(self, method, path, body):
        c = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=30)
        c.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        reply = json.loads(data)
        seen_http.append((r.status, reply.get("status")))
        # Never a 5xx other than 503, and 503 only for the retryable statuses.
        assert r.status in (200, 400, 401, 404, 405, 503), (r.status, reply)
        assert r.status != 503 or reply["status"] in RETRYABLE, reply
        assert (r.status == 200) == (reply["status"] in (SUCCESSFUL, PEER_NOT_CONNECTED)), (r.status, reply)
        return r.status, reply

    def call(self, name, args):
        return self.raw("POST", "/etsi004/v2/" + name, json.dumps(args))[1]

    def open_connect(self, source, destination, qos=None, key_stream_id=None):
        return self.call("open_connect", {
            "source": "qkd://" + source, "destination": "qkd://" + destination,
            "qos": qos or {}, "key_stream_id": key_stream_id})

    def get_key(self, ksid, index=None, metadata_size=None):
        args = {"key_stream_id": ksid, "index": index}
        if metadata_size is not None:
            args["metadata"] = {"size": metadata_size}
        return self.call("get_key", args)

    def close(self, ksid):
        return self.call("close", {"key_stream_id": ksid})


def expect(reply, status, what):
    assert reply["status"] == status, (what, reply)
    if status not in (SUCCESSFUL, PEER_NOT_CONNECTED):
        assert isinstance(reply.get("message"), str) and reply["message"], (what, reply)
    return reply


def get_key_retrying(app, ksid, index=None, deadline_s=90):
    """GET_KEY, retrying while the network's end-to-end pool fills (status 2)."""
    end = time.time() + deadline_s
    while True:
        r = app.get_key(ksid, index)
        if r["status"] != INSUFFICIENT_KEY or time.time() > end:
            return r
        time.sleep(0.5)


def main():
    ca, su, sid, sc, sk, du, did, dc, dk, other = sys.argv[1:11]
    src, dst = App(su, sid, ca, sc, sk), App(du, did, ca, dc, dk)
    qos = {"key_chunk_size": 32, "max_bps": 1_000_000, "min_bps": 0, "jitter": 10,
           "priority": 0, "timeout": 5000, "ttl": 600, "metadata_mimetype": "application/json"}

    # OPEN_CONNECT at the source: a new Key_stream_ID, peer not yet connected.
    o = expect(src.open_connect(sid, did, qos), PEER_NOT_CONNECTED, "source opens")
    ksid = o["key_stream_id"]
    uuid.UUID(ksid)
    assert o["qos"] == qos, o
    # GET_KEY before the destination opens: status 3.
    expect(src.get_key(ksid), GET_KEY_PEER_NOT_CONNECTED, "get_key before peer")
    # The destination joins with the Key_stream_ID it was given.
    o2 = expect(dst.open_connect(sid, did, qos, ksid), SUCCESSFUL, "destination opens")
    assert o2["key_stream_id"] == ksid, o2

    # Matching key streams, in both orders, by implicit and explicit index.
    pairs = []
    for i in range(4):
        first, second = (src, dst) if i % 2 == 0 else (dst, src)
        a = expect(get_key_retrying(first, ksid), SUCCESSFUL, f"chunk {i} first")
        b = expect(get_key_retrying(second, ksid), SUCCESSFUL, f"chunk {i} second")
        assert a["index"] == b["index"] == i, (a, b)
        assert a["key_buffer"] == b["key_buffer"], i
        assert len(base64.b64decode(a["key_buffer"])) == 32
        pairs.append(a["key_buffer"])
    assert len(set(pairs)) == len(pairs)
    a = expect(get_key_retrying(src, ksid, 7), SUCCESSFUL, "explicit index at source")
    b = expect(get_key_retrying(dst, ksid, 7), SUCCESSFUL, "explicit index at destination")
    assert a["index"] == b["index"] == 7 and a["key_buffer"] == b["key_buffer"]
    # Metadata: too small -> 8 with the size needed; then returned, naming the same key at both.
    m = expect(src.get_key(ksid, None, 4), METADATA_TOO_SMALL, "metadata too small")
    need = m["metadata"]["size"]
    assert need > 4, m
    a = expect(get_key_retrying(src, ksid), SUCCESSFUL, "metadata")
    b = dst.get_key(ksid, 8, need)
    expect(b, SUCCESSFUL, "metadata at destination")
    assert json.loads(b["metadata"]["buffer"])["index"] == 8 and b["metadata"]["size"] >= len(b["metadata"]["buffer"])
    assert a["key_buffer"] == b["key_buffer"]
    # A chunk is delivered once per side: re-reading index 0 is refused.
    expect(src.get_key(ksid, 0), BAD_REQUEST, "re-read at source")
    expect(dst.get_key(ksid, 0), BAD_REQUEST, "re-read at destination")

    # OPEN_CONNECT refusals.
    expect(src.open_connect(sid, did, qos, ksid), KSID_IN_USE, "KSID in use")
    r = expect(src.open_connect(sid, did, dict(qos, key_chunk_size=1 << 20)), QOS_NOT_MET, "QoS")
    assert 0 < r["qos"]["key_chunk_size"] < 1 << 20, r
    expect(src.open_connect(sid, did, dict(qos, min_bps=10, max_bps=5)), QOS_NOT_MET, "min > max")
    expect(src.open_connect(other, did, qos), UNAUTHORIZED, "not the caller's stream")
    expect(src.open_connect(sid, "nobody", qos), BAD_REQUEST, "unknown SAE")
    expect(src.open_connect(sid, sid, qos), BAD_REQUEST, "same SAE")
    expect(src.get_key(str(uuid.uuid4())), UNKNOWN_STREAM, "unknown stream")
    expect(dst.get_key(ksid, 1 << 40), BAD_REQUEST, "index out of range")

    # The source may run a window ahead of the destination, then status 2.
    ahead, end = 0, time.time() + 120
    while True:
        r = src.get_key(ksid)
        if r["status"] == INSUFFICIENT_KEY and "ahead" in r["message"]:
            break
        if r["status"] == INSUFFICIENT_KEY and time.time() < end:
            time.sleep(0.5)  # the pool is refilling
            continue
        expect(r, SUCCESSFUL, "reading ahead")
        ahead += 1
        assert ahead <= 64, "no window"

    # Malformed input: kagi's status 10 in a JSON 400, never a 5xx.
    for path, body in [
        ("open_connect", "{"), ("open_connect", "[]"),
        ("open_connect", json.dumps(["qkd://" + sid, "qkd://" + did, {}, None])), ("open_connect", '{"source": 1}'),
        ("open_connect", json.dumps({"source": "qkd://" + sid, "destination": "qkd://" + did, "extra": 1})),
        ("open_connect", json.dumps({"source": "http://x", "destination": "qkd://" + did})),
        ("get_key", '{"key_stream_id": "not-a-uuid"}'), ("get_key", '{"key_stream_id": null}'),
        ("get_key", json.dumps({"key_stream_id": ksid, "index": -1})),
        ("close", "{}"), ("close", "\xff\xfe"), ("get_key", "x" * 20000),
    ]:
        st, r = src.raw("POST", "/etsi004/v2/" + path, body.encode("utf-8", "surrogateescape"))
        assert st == 400 and r["status"] == BAD_REQUEST, (path, body[:40], st, r)
    st, r = src.raw("GET", "/etsi004/v2/get_key", None)
    assert st == 405, (st, r)
    st, r = src.raw("POST", "/etsi004/v2/nothing", "{}")
    assert st == 404, (st, r)

    # Streams per SAE are bounded (16 by default).
    extra = []
    while True:
        r = src.open_connect(sid, did, qos)
        if r["status"] != PEER_NOT_CONNECTED:
            expect(r, BAD_REQUEST, "stream limit")
            assert "limit" in r["message"], r
            break
        extra.append(r["key_stream_id"])
        assert len(extra) <= 16, "no stream limit"
    assert len(extra) == 15, len(extra)
    for k in extra:
        expect(src.close(k), SUCCESSFUL, "close extra")

    # CLOSE at both ends; the stream is gone.
    expect(src.close(ksid), SUCCESSFUL, "close at source")
    expect(dst.close(ksid), SUCCESSFUL, "close at destination")
    expect(src.get_key(ksid), UNKNOWN_STREAM, "after close")
    expect(dst.close(ksid), UNKNOWN_STREAM, "close twice")
    print(json.dumps({"ksid": ksid, "chunks": len(pairs) + 2, "ahead": ahead,
                      "streams_before_limit": len(extra) + 1, "http": sorted(set(seen_http))}))


main()
