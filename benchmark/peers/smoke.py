"""One smoke check of the chat protocol's core, for every server in
target/peers/servers.tsv (ours and the reference servers), with the
`websockets` client (not any server's code):

    smoke.py target/peers/servers.tsv

Each server is started on a free loopback port and must: answer /health;
relay a chat to every other joined client, stamped with the sender's joined
name (whatever `user` the chat claims), with `text` and `ts` as sent, and
never back to the sender; answer a JSON ping with a pong carrying its `ts`;
let a burst of 25 chats through as 10 (the 10 chats/s bucket); answer
`leave` with close 1000; close everyone with 1001 at SIGTERM (a connection
that never joined too), exit 0 and print the statistics block. Exits 1 on the first server that fails.
"""
import asyncio
import json
import shlex
import socket
import subprocess
import sys
import time
import urllib.request

import websockets


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(command):
    port = free_port()
    proc = subprocess.Popen(
        shlex.split(command.replace("{port}", str(port))),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no /health on {port}: {proc.stdout.read()}")


async def recv_json(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def sync(ws, token):
    """Pings and returns what came before the pong (which must carry `token`)."""
    await ws.send(json.dumps({"type": "ping", "ts": token}))
    before = []
    while True:
        msg = await recv_json(ws)
        if msg == {"type": "pong", "ts": token}:
            return before
        before.append(msg)


async def check(port):
    url = f"ws://127.0.0.1:{port}/ws"
    async with websockets.connect(url) as alice, websockets.connect(url) as bob, \
            websockets.connect(url) as carol:
        for ws, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
            await ws.send(json.dumps({"type": "join", "room": "public", "user": name}))
            assert await sync(ws, 1) == [], name
        await alice.send(json.dumps({"type": "chat", "text": "hi \"there\"", "ts": 1234, "user": "mallory"}))
        for ws in (bob, carol):
            got = await recv_json(ws)
            assert (got["type"], got["user"], got["text"], got["ts"]) == \
                ("chat", "alice", "hi \"there\"", 1234), got
        assert await sync(alice, 2) == [], "a chat came back to its sender"
        # The bucket: 25 at once, 10 through.
        for i in range(25):
            await bob.send(json.dumps({"type": "chat", "text": f"burst {i}"}))
        assert await sync(bob, 3) == []
        await asyncio.sleep(0.2)
        got = [m["text"] for m in await sync(carol, 4)]
        assert got == [f"burst {i}" for i in range(10)], got
        await carol.send(json.dumps({"type": "leave"}))
        await asyncio.wait_for(carol.wait_closed(), 5)
        assert carol.close_code == 1000, carol.close_code
        return alice, bob


async def shutdown(proc, port):
    url = f"ws://127.0.0.1:{port}/ws"
    async with websockets.connect(url) as dave, websockets.connect(url) as eve:
        await dave.send(json.dumps({"type": "join", "user": "dave"}))
        await sync(dave, 5)
        await sync(eve, 6)  # Eve never joins.
        proc.terminate()
        for ws in (dave, eve):
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1001, ws.close_code


def main():
    failed = False
    for line in open(sys.argv[1]):
        name, command, _ = line.rstrip("\n").split("\t")
        proc, port = start(command)
        try:
            asyncio.run(check(port))
            asyncio.run(shutdown(proc, port))
            out, _ = proc.communicate(timeout=10)
            assert proc.returncode == 0, (proc.returncode, out)
            assert "--- Statistics ---" in out and "Total messages: " in out, out
            print(f"ok: {name} speaks the protocol's core")
        except Exception as e:  # noqa: BLE001 (report which server and go on)
            failed = True
            print(f"FAILED: {name}: {e!r}", file=sys.stderr)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    sys.exit(1 if failed else 0)


main()
