"""Draws a profile run's charts with matplotlib, as SVG files beside its JSON.

    charts.py benchmark/results/DATE-profile-a.json   (or -profile-b.json)

Profile A: latency percentiles against connections (one line per server,
log scale), server CPU per 1,000 deliveries and memory per connection
against connections, p99 against offered deliveries/s at 1,000 connections
(the knee). Profile B: throughput per scenario and server, and what each
server takes to run (binary sizes).
"""
import json
import re
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

# Fonts as text, not outlines: small files that diff.
plt.rcParams["svg.fonttype"] = "none"
plt.rcParams["svg.hashsalt"] = "websocket-public-chat"
plt.rcParams["figure.dpi"] = 100
plt.rcParams["font.size"] = 9


def servers_in(results):
    return list(dict.fromkeys(r["server"] for r in results))


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)
    print(path)


def profile_a(run, base):
    rows = [r for r in run["results"] if r["step"] == "sizes"]
    names = servers_in(rows)
    title = f"{run['deliveries_per_sec_offered']:,} deliveries/s offered at each size"

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), sharey=True)
    for ax, (key, label) in zip(axes, [("latency_p50_ms", "p50"), ("latency_p99_ms", "p99"),
                                       ("latency_p99_9_ms", "p99.9")]):
        for name in names:
            mine = [r for r in rows if r["server"] == name]
            ax.plot([r["size"] for r in mine], [max(r[key], 0.01) for r in mine], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("joined connections")
        ax.set_title(f"{label} latency")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms, send to receipt (log)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Profile A: latency against connections ({title})")
    save(fig, base + "-latency.svg")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for name in names:
        mine = [r for r in rows if r["server"] == name]
        axes[0].plot([r["size"] for r in mine], [r.get("server_cpu_ms_per_1000_deliveries", 0) for r in mine],
                     marker="o", label=name)
        axes[1].plot([r["size"] for r in mine], [r.get("server_bytes_per_connection", 0) for r in mine],
                     marker="o", label=name)
    axes[0].set_title("server CPU per 1,000 deliveries")
    axes[0].set_ylabel("ms")
    axes[1].set_title("server memory per joined connection")
    axes[1].set_ylabel("bytes (RSS growth / connections, log)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("joined connections")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Profile A: what each delivery and each connection costs the server")
    save(fig, base + "-cost.svg")

    knees = [r for r in run["results"] if r["step"] == "knee"]
    if knees:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        for name in servers_in(knees):
            mine = [r for r in knees if r["server"] == name]
            ax.plot([r["offered_deliveries_per_sec"] for r in mine], [max(r["latency_p99_ms"], 0.01) for r in mine],
                    marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(50, color="grey", linestyle="--", linewidth=1)
        # x in axes fraction, y in data: the label sits on the line at the left edge.
        ax.text(0.01, 55, "p99 = 50 ms", color="grey", fontsize=8, transform=ax.get_yaxis_transform())
        ax.set_xlabel(f"offered deliveries/s ({knees[0]['size']:,} connections, 9 chats/s per sender)")
        ax.set_ylabel("p99 latency, ms (log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"Profile A: the knee at {knees[0]['size']:,} connections")
        save(fig, base + "-knee.svg")


def profile_b(run, base):
    rows = run["results"]
    names = servers_in(rows)
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(3.6 * len(scenarios), 3.6), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        mine = [next((r for r in rows if r["server"] == n and r["scenario"] == scenario), {}) for n in names]
        # A scenario without chats (churn) is drawn by the sessions k6 completed.
        key, label = ("k6_received_per_sec", "chats received by k6 per second")
        if not any(r.get(key) for r in mine):
            key, label = ("k6_sessions", "sessions k6 completed")
        values = [r.get(key, 0) for r in mine]
        errors = [next((r["k6_errors"] for r in rows if r["server"] == n and r["scenario"] == scenario), 0)
                  for n in names]
        bars = ax.bar(names, values, color=["C%d" % i for i in range(len(names))])
        for bar, error in zip(bars, errors):
            if error:
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{error:.0f} errors",
                        ha="center", va="bottom", fontsize=7, color="red")
        ax.set_title(f"k6 {scenario}")
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Profile B: the k6 scenarios against each server")
    save(fig, base + ".svg")

    sizes = []
    for server in run["servers"]:
        numbers = [int(n.replace(",", "")) for n in re.findall(r"[\d,]{4,}(?= B)", server["runs_on"])]
        kib = [int(n) * 1024 for n in re.findall(r"(\d+) KiB", server["runs_on"])]
        sizes.append((server["name"], sum(numbers) + sum(kib)))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.barh([n for n, _ in sizes], [s / 1e6 for _, s in sizes], color=["C%d" % i for i in range(len(sizes))])
    for i, (_, s) in enumerate(sizes):
        ax.text(s / 1e6, i, f" {s / 1e6:.2f} MB", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("MB on disk to run it: the stripped binary, or the runtime and the library (log)")
    ax.invert_yaxis()
    ax.set_title("What each server takes to run")
    save(fig, base + "-sizes.svg")


def main():
    path = sys.argv[1]
    run = json.load(open(path))
    base = path[: -len(".json")]
    (profile_a if run["profile"] == "a" else profile_b)(run, base)


main()
