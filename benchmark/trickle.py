#!/usr/bin/env python3
"""What a request head trickled one byte at a time costs the server.

    benchmark/trickle.py SERVER_BINARY [--connections 200] [--head-bytes 7000]

Starts the server on a free loopback port, opens CONNECTIONS connections and
sends each a HEAD_BYTES request head one byte per round (one byte per
connection per round, round-robin, so the server reads them one by one).
Then, on CONNECTIONS upgraded connections, sends the same number of bytes
one per round as the payload of one masked text frame. Prints the server's
CPU time (from /proc) for each phase and their ratio: a head parsed again
from the start on every read costs far more than the same bytes inside a
WebSocket frame; a head looked at only where new bytes arrive costs about
the same. On-demand benchmark, not a test: the figures depend on the machine.
Under callgrind (`--wrap 'valgrind --tool=callgrind' --only heads`, then
`--only frames`) the instruction counts of the two phases are exact.
"""

import argparse
import os
import socket
import subprocess
import time


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connect(port, count):
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    return socks


def trickle(socks, data):
    """Sends `data` to every socket, one byte per socket per round."""
    for i in range(len(data)):
        byte = data[i : i + 1]
        for s in socks:
            s.send(byte)


def head(size):
    lines = [b"GET /ws HTTP/1.1", b"Host: 127.0.0.1", b"Upgrade: websocket", b"Connection: Upgrade",
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13"]
    body = b"\r\n".join(lines) + b"\r\n"
    filler = 0
    while len(body) + 4 < size:
        line = b"X-Filler-%d: %s\r\n" % (filler, b"y" * min(120, max(1, size - len(body) - 20)))
        body += line
        filler += 1
    return body + b"\r\n"


def frame(payload):
    mask = b"\x11\x22\x33\x44"
    header = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask
    return header + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--head-bytes", type=int, default=7000)
    parser.add_argument("--only", choices=["heads", "frames"], help="run one phase only (e.g. to count instructions per phase)")
    parser.add_argument("--wrap", default="", help="run the server under this command, e.g. 'valgrind --tool=callgrind'")
    args = parser.parse_args()
    # A trickled head takes longer than the default 10 s handshake timeout.
    command = args.wrap.split() + [args.server, "--host", "127.0.0.1", "--port", "0", "--handshake-timeout", "600"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[2].rsplit(":", 1)[1])
        request = head(args.head_bytes)

        head_cpu = frame_cpu = 0.0
        if args.only != "frames":
            socks = connect(port, args.connections)
            before = cpu_seconds(server.pid)
            trickle(socks, request)
            for s in socks:
                assert s.recv(12) == b"HTTP/1.1 101", "not upgraded"
            head_cpu = cpu_seconds(server.pid) - before
            for s in socks:
                s.close()
        if args.only != "heads":
            socks = connect(port, args.connections)
            for s in socks:
                s.sendall(head(200))
                assert s.recv(4096).startswith(b"HTTP/1.1 101")
            message = frame(b'{"type":"pong","pad":"' + b"x" * (len(request) - 30) + b'"}')
            before = cpu_seconds(server.pid)
            trickle(socks, message)
            time.sleep(0.2)
            frame_cpu = cpu_seconds(server.pid) - before
            for s in socks:
                s.close()

        total = args.connections * len(request)
        print(f"{args.connections} connections × {len(request)} bytes, one byte per read")
        print(f"request heads:     {head_cpu:.2f} s server CPU ({1e9 * head_cpu / total:.0f} ns per byte)")
        print(f"a WebSocket frame: {frame_cpu:.2f} s server CPU ({1e9 * frame_cpu / total:.0f} ns per byte)")
        if head_cpu and frame_cpu:
            print(f"heads / frames:    {head_cpu / frame_cpu:.2f}")
    finally:
        server.send_signal(2)  # SIGINT: a clean exit, so a wrapper (callgrind) writes its report
        server.wait()


if __name__ == "__main__":
    main()
