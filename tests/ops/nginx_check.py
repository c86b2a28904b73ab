"""Clients through the real nginx (deploy/nginx.conf) in front of two instances.

    nginx_check.py NGINX_PORT INSTANCE_PORT INSTANCE_PORT

The instances share the room through Redis, trust nginx (--trusted-proxy
127.0.0.1) and allow one connection per client address
(--max-conns-per-ip 1). Clients connect from distinct loopback addresses
(127.0.0.X), as distinct machines would.
"""
import asyncio
import json
import socket
import sys
import urllib.request

import websockets
from prometheus_client.parser import text_string_to_metric_families

nginx, ports = int(sys.argv[1]), sys.argv[2:]


async def connect(source, name):
    """A client from `source` through nginx; joined as `name`, or None if refused."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", nginx))
    try:
        ws = await websockets.connect(f"ws://127.0.0.1:{nginx}/ws", sock=sock, open_timeout=5)
    except websockets.exceptions.InvalidStatus as e:
        return e.response.status_code
    await ws.send(json.dumps({"type": "join", "user": name}))
    await ws.send(json.dumps({"type": "ping", "ts": 0}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong"
    return ws


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        return json.load(response)


async def main():
    # Clients through nginx land on both instances and chat as one room.
    people = [await connect(f"127.0.0.{10 + i}", f"p{i}") for i in range(4)]
    assert all(not isinstance(p, int) for p in people), people
    joined = [stats(port)["joined"] for port in ports]
    assert all(j >= 1 for j in joined) and sum(joined) == 4, joined
    for i, speaker in enumerate(people):
        await speaker.send(json.dumps({"type": "chat", "text": f"hello from p{i}"}))
        for j, other in enumerate(people):
            if j != i:
                got = json.loads(await asyncio.wait_for(other.recv(), 5))
                assert (got["user"], got["text"]) == (f"p{i}", f"hello from p{i}"), got
    print(f"ok: four clients through nginx, on both instances ({joined}), each got every other's chat")

    # The per-address cap sees each client, not nginx: a third connection from
    # one address finds an instance that already has it (two instances, cap 1).
    tries = [await connect("127.0.0.2", f"same{i}") for i in range(3)]
    refused = [t for t in tries if isinstance(t, int)]
    assert refused and all(code == 429 for code in refused), tries
    assert len(refused) <= 2, tries
    other = await connect("127.0.0.3", "other")
    assert not isinstance(other, int), other
    total = sum(stats(port)["refused_per_ip"] for port in ports)
    assert total == len(refused), total
    print(f"ok: the per-address cap counts clients behind nginx ({len(refused)} of 3 from one address refused, another address let in)")

    # Each instance's /metrics has the backplane.
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
        assert families["websocket_public_chat_backplane_up"].samples[0].value == 1
        assert families["websocket_public_chat_backplane_published"].samples[0].value >= 1
    print("ok: each instance's /metrics says its Redis backplane is up")
    for ws in people + [t for t in tries if not isinstance(t, int)] + [other]:
        await ws.close()


asyncio.run(main())
