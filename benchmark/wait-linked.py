#!/usr/bin/env python3
"""Waits (10 s at most) until each instance on 127.0.0.1:PORT says in /stats
that its Redis backplane is up; exits 1 naming the first that never did.

    benchmark/wait-linked.py PORT...
"""
import json
import sys
import time
import urllib.request

deadline = time.time() + 10
for port in sys.argv[1:]:
    while True:
        try:
            stats = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=1))
            if stats["backplane"]["state"] == "up":
                break
        except OSError:
            pass
        if time.time() > deadline:
            sys.exit(f"wait-linked: the instance on {port} never linked to Redis")
        time.sleep(0.05)
