"""/metrics against a known workload, read with prometheus_client's own parser.

    metrics_check.py SERVER_BINARY

Starts the server on loopback with --metrics-address, has two `websockets`
clients join, one send 3 chats and a malformed message, and checks that
/metrics (on the metrics address only) parses as Prometheus text format
0.0.4 with HELP and TYPE for every family, and says exactly that.
"""
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import websockets
from prometheus_client.parser import text_string_to_metric_families


def start(binary):
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", "0", "--metrics-address", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    public = line.split()[2]
    metrics = line.split("private listener on ")[1].strip().rstrip(")")
    return proc, public, metrics


async def workload(public):
    url = f"ws://{public}/ws"
    async with websockets.connect(url) as alice, websockets.connect(url) as bob:
        await alice.send(json.dumps({"type": "join", "user": "alice"}))
        await bob.send(json.dumps({"type": "join", "user": "bob"}))
        await bob.send(json.dumps({"type": "ping", "ts": 1}))
        assert json.loads(await asyncio.wait_for(bob.recv(), 5))["type"] == "pong"
        for i in range(3):
            await alice.send(json.dumps({"type": "chat", "text": f"chat {i}"}))
        await alice.send("{not json")
        for i in range(3):
            got = json.loads(await asyncio.wait_for(bob.recv(), 5))
            assert got["text"] == f"chat {i}", got
        await alice.send(json.dumps({"type": "ping", "ts": 2}))
        assert json.loads(await asyncio.wait_for(alice.recv(), 5))["type"] == "pong"
        # What the kernel says is open, with the two clients connected; the
        # scrape's own connection is one more.
        await asyncio.sleep(0.3)
        open_now = len(os.listdir(f"/proc/{proc.pid}/fd"))
        content_type, text = await asyncio.to_thread(fetch, metrics_addr)
        return content_type, text, open_now


def fetch(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as response:
        return response.headers["Content-Type"], response.read().decode()


binary = sys.argv[1]
proc, public, metrics_addr = start(binary)
try:
    content_type, text, open_now = asyncio.run(workload(public))
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # Every family came with # HELP and # TYPE (the parser keeps "untyped" otherwise).
    for family in families.values():
        assert family.documentation, f"{family.name} has no HELP"
        assert family.type in ("counter", "gauge"), f"{family.name} is {family.type}"
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name

    def value(name):
        samples = families[name].samples
        assert len(samples) == 1, samples
        return samples[0].value

    p = "websocket_public_chat"
    want = {
        f"{p}_joins": 2,
        f"{p}_chats_relayed": 3,
        f"{p}_deliveries": 3,
        f"{p}_ignored_malformed": 1,
        f"{p}_ignored": 1,
        f"{p}_websocket_upgrades": 2,
        f"{p}_joined": 2,
        f"{p}_rate_limited": 0,
    }
    for name, expected in want.items():
        assert value(name) == expected, (name, value(name), expected)
    # This request's own connection is open too.
    assert value(f"{p}_open_connections") == 3, value(f"{p}_open_connections")
    assert value(f"{p}_open_connections") <= value(f"{p}_peak_connections")
    assert families[f"{p}_room_info"].samples[0].labels["order"] == "local"
    assert value("process_resident_memory_bytes") > 1 << 20
    # Counted, not listed: the same as /proc/PID/fd, the scrape's connection included.
    assert value("process_open_fds") == open_now + 1, (value("process_open_fds"), open_now)
    assert families["process_cpu_seconds"].type == "counter"
    assert 0 <= value("process_cpu_seconds") < 60
    assert abs(value("process_start_time_seconds") - time.time()) < 60
    # Every /stats counter is there, under its Prometheus name.
    with urllib.request.urlopen(f"http://{metrics_addr}/stats", timeout=5) as response:
        stats = json.load(response)
    for key, v in stats.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            name = {"active_connections": "open_connections"}.get(key, key)
            name = name[: -len("_total")] if name.endswith("_total") else name
            assert f"{p}_{name}" in families, f"/stats {key} is not in /metrics"
    # The public port does not serve it.
    try:
        urllib.request.urlopen(f"http://{public}/metrics", timeout=5)
        raise AssertionError("/metrics on the public port")
    except urllib.error.HTTPError as e:
        assert e.code == 404, e.code
    print(f"ok: /metrics parses ({len(families)} families, HELP and TYPE each) and counts the workload")
finally:
    proc.terminate()
    proc.wait(timeout=10)
