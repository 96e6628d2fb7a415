#!/usr/bin/env python3
"""Resident memory per retained publication in the memory broker's history.

Starts `herald serve` on a free port with one history channel template, publishes N payloads
of SIZE bytes through the HTTP API (spread over CHANNELS channels, every one retained), and
reports the server's RSS growth divided by N, next to the payload size and to what
`/metrics` says history holds. Usage:

    scripts/history-memory.py [--bin target/release/herald] [--n 2000] [--size 61440]
                              [--channels 20] [--budget BYTES]
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def metric(conn, name):
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/herald")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=60 * 1024)
    ap.add_argument("--channels", type=int, default=20)
    ap.add_argument("--budget", type=int, default=None)
    a = ap.parse_args()

    port = free_port()
    broker = f"history_budget_bytes = {a.budget}\n" if a.budget is not None else ""
    cfg = f"""
[server]
listen = "127.0.0.1:{port}"
[auth]
hs256_secret = "s"
[api]
key = "k"
[broker]
kind = "memory"
{broker}
[limits]
max_payload_bytes = {a.size + 1024}
max_frame_bytes = {a.size + 1024}
[[channel]]
name = "mem.{{n}}"
scope = "public"
history = {{ size = {a.n}, ttl = "1h" }}
schema = {{ type = "object" }}
"""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(cfg)
        path = f.name
    proc = subprocess.Popen([a.bin, "serve", "--config", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
        # The payload is one string field: its JSON text is `size` bytes exactly.
        blob = "x" * (a.size - len('{"b":""}'))

        def publish(i):
            body = json.dumps({"channel": f"mem.{i % a.channels}",
                               "data": {"b": blob[:-8] + f"{i:08d}"}})
            conn.request("POST", "/v1/publish", body, headers)
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                sys.exit(f"publish {i}: HTTP {r.status}")

        # Warm up allocator and buffers with a few publications on a channel of its own.
        for i in range(20):
            conn.request("POST", "/v1/publish",
                         json.dumps({"channel": "mem.warmup", "data": {"b": blob}}), headers)
            conn.getresponse().read()
        time.sleep(0.2)
        before = rss_kib(proc.pid)
        for i in range(a.n):
            publish(i)
        time.sleep(0.5)
        after = rss_kib(proc.pid)
        held = metric(conn, "herald_history_bytes")
        per = (after - before) * 1024 / a.n
        print(json.dumps({
            "publications": a.n, "payload_bytes": a.size, "channels": a.channels,
            "rss_before_kib": before, "rss_after_kib": after,
            "rss_per_publication_bytes": round(per),
            "overhead_ratio": round(per / a.size, 3),
            "herald_history_bytes": held,
        }))
    finally:
        proc.terminate()
        proc.wait()
        os.unlink(path)


if __name__ == "__main__":
    main()
