"""The chat protocol's core (docs/protocol.md: join, chats stamped with the
joined name and relayed to everyone else, JSON ping/pong, leave, 10 chats/s
per connection, /health, close 1001 at SIGTERM) on Python's asyncio and the
`websockets` library, the way its docs show a chat room ("Broadcasting"):
a set of connections and `websockets.broadcast()`, which serializes nothing
again and skips a connection whose write buffer is full (it does not wait
for slow clients). Prints the statistics block the compared servers print
at exit.

    python server.py --port PORT
"""
import asyncio
import http
import json
import signal
import sys
import time

import websockets
from websockets.asyncio.server import broadcast, serve

STATS = {"relayed": 0, "rate_limited": 0, "connections": 0, "open": 0, "peak": 0}
JOINED = {}  # connection -> name


def valid_name(name):
    return (
        isinstance(name, str)
        and 1 <= len(name) <= 64
        and name == name.strip()
        and not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name)
    )


def health(connection, request):
    if request.path == "/health":
        return connection.respond(http.HTTPStatus.OK, "ok\n")
    if request.path != "/ws":
        return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
    return None


async def handler(ws):
    STATS["connections"] += 1
    STATS["open"] += 1
    STATS["peak"] = max(STATS["peak"], STATS["open"])
    tokens, at = 10.0, time.monotonic()
    try:
        async for data in ws:
            if not isinstance(data, str):
                continue
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            kind = msg.get("type")
            if kind == "join" and ws not in JOINED and valid_name(msg.get("user")):
                JOINED[ws] = msg["user"]
            elif kind == "chat" and ws in JOINED and isinstance(msg.get("text"), str):
                now = time.monotonic()
                tokens, at = min(10.0, tokens + (now - at) * 10), now
                if tokens < 1:
                    STATS["rate_limited"] += 1
                    continue
                tokens -= 1
                chat = {"type": "chat", "room": "public", "user": JOINED[ws], "text": msg["text"]}
                if "ts" in msg:
                    chat["ts"] = msg["ts"]
                STATS["relayed"] += 1
                broadcast([c for c in JOINED if c is not ws], json.dumps(chat, separators=(",", ":")))
            elif kind == "ping":
                pong = {"type": "pong"}
                if "ts" in msg:
                    pong["ts"] = msg["ts"]
                await ws.send(json.dumps(pong, separators=(",", ":")))
            elif kind == "leave":
                await ws.close(1000, "bye")
                break
    except websockets.ConnectionClosed:
        pass
    finally:
        JOINED.pop(ws, None)
        STATS["open"] -= 1


def print_stats(secs):
    total, limited = STATS["relayed"], STATS["rate_limited"]
    offered = total + limited
    print("--- Statistics ---")
    print(f"Total messages: {total}")
    print(f"Processing time: {secs:.3f}s")
    print(f"Average latency: {secs * 1000 / total if total else 0:.3f}ms")
    print(f"Throughput: {total / secs if secs else 0:.2f} messages/sec")
    print(f"Total connections: {STATS['connections']}")
    print(f"Message drop rate: {100 * limited / offered if offered else 0:.2f}%")
    print(f"Peak connections: {STATS['peak']}", flush=True)


async def main():
    port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 8080
    started = time.monotonic()
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, process_request=health, max_size=65536) as server:
        print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        await stop
        # Closes the listener and every connection with 1001.
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), 3)
        except TimeoutError:
            pass
    print_stats(time.monotonic() - started)


if __name__ == "__main__":
    asyncio.run(main())
