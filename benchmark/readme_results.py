"""Writes the README's Results tables from the newest full runs of Profile A
and Profile B (benchmark/results/*-profile-a.json, *-profile-b.json),
between the README's `<!-- results: begin -->` and `<!-- results: end -->`.

    python3 benchmark/readme_results.py
"""
import glob
import json
import os
import re

from profiles import missed  # the knee's rule, in one place

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def newest(profile):
    runs = sorted(glob.glob(os.path.join(ROOT, f"benchmark/results/*-profile-{profile}.json")))
    if not runs:
        raise SystemExit(f"no full run of profile {profile} in benchmark/results/")
    return runs[-1], json.load(open(runs[-1]))


def n(value, digits=0):
    return "-" if value is None else f"{value:,.{digits}f}"


def link(path):
    return os.path.relpath(path, ROOT)


def profile_a(path, run):
    base = link(path)[: -len(".json")]
    rows = [r for r in run["results"] if r["step"] == "sizes"]
    names = list(dict.fromkeys(r["server"] for r in rows))
    sizes = sorted({r["size"] for r in rows})
    out = [f"**Profile A: high-concurrency latency** ([{os.path.basename(base)}.md]({base}.md)). "
           f"Every size offered {run['deliveries_per_sec_offered']:,} deliveries/s; latency from the time each "
           "chat was due to its receipt (open loop, HDR histograms).", "",
           f"![Latency against connections]({base}-latency.svg)", "",
           "p50 / p99 / p99.9 latency in ms, and the delivery ratio where it is under 1:", "",
           "| Server | " + " | ".join(f"{s:,} connections" for s in sizes) + " |",
           "| --- |" + " --- |" * len(sizes)]
    for name in names:
        cells = []
        for size in sizes:
            r = next((r for r in rows if r["server"] == name and r["size"] == size), None)
            if r is None:
                cells.append("-")
                continue
            cell = f"{n(r['latency_p50_ms'], 1)} / {n(r['latency_p99_ms'], 1)} / {n(r['latency_p99_9_ms'], 1)}"
            if r["delivery_ratio"] < 0.9995:
                cell += f" (ratio {r['delivery_ratio']:.3f})"
            cells.append(cell)
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", f"![CPU and memory against connections]({base}-cost.svg)", "",
            "Server CPU per 1,000 deliveries (ms) and server memory per joined connection (bytes):", "",
            "| Server | " + " | ".join(f"{s:,}" for s in sizes) + " |", "| --- |" + " --- |" * len(sizes)]
    for name in names:
        cells = []
        for size in sizes:
            r = next((r for r in rows if r["server"] == name and r["size"] == size), None)
            cells.append("-" if r is None else
                         f"{n(r.get('server_cpu_ms_per_1000_deliveries'), 1)} ms, {n(r.get('server_bytes_per_connection'))} B")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    spent = [r.get("loadgen_cpu_percent", 0) for r in rows]
    out += ["", f"The generator used {min(spent):.0f}-{max(spent):.0f} % of its core in these steps."]
    knees = [r for r in run["results"] if r["step"] == "knee"]
    if knees:
        out += ["", f"![The knee at 1,000 connections]({base}-knee.svg)", "",
                "The knee at 1,000 connections: senders (9 chats/s each) added until p99 passes 50 ms or the "
                "delivery ratio falls under 0.999 (a step missed is run once more with a fresh process: the knee is a "
                "load missed twice, not one spike of a shared machine).", "",
                "| Server | Highest load held | p99 there | The next step | Generator CPU there |",
                "| --- | --- | --- | --- | --- |"]
        for name in dict.fromkeys(r["server"] for r in knees):
            mine = [r for r in knees if r["server"] == name]
            held = [r for r in mine if not missed(r)]
            best = max(held, key=lambda r: r["offered_deliveries_per_sec"]) if held else None
            after = next((r for r in mine if best is None or r["offered_deliveries_per_sec"] > best["offered_deliveries_per_sec"]), None)
            nxt = "-" if after is None else (f"{n(after['offered_deliveries_per_sec'])}/s: p99 {n(after['latency_p99_ms'], 1)} ms, "
                                             f"ratio {after['delivery_ratio']:.3f}")
            out.append(f"| {name} | {n(best['offered_deliveries_per_sec']) + ' deliveries/s' if best else 'not the lightest step'} | "
                       f"{n(best['latency_p99_ms'], 1) + ' ms' if best else '-'} | {nxt} | "
                       f"{n(best.get('loadgen_cpu_percent')) + ' %' if best else '-'} |")
    return out


def profile_b(path, run):
    base = link(path)[: -len(".json")]
    out = [f"**Profile B: the suite's k6 table** ([{os.path.basename(base)}.md]({base}.md)). Throughput, messages, "
           "peak connections and drop rate are each server's own statistics block (the suite's columns: "
           "throughput is chats relayed per second of the server's run, the drop rate is the share the 10/s "
           "rate limit dropped); k6 errors are failed upgrades and checks; the sessions k6 completed and its "
           "receive rate beside them (churn sends no chats: its sessions are the figure).", "",
           f"![Profile B]({base}.svg)", "",
           "| Server | Scenario | Throughput msg/s | Messages | Peak connections | Drop rate | k6 errors | k6 sessions | "
           "k6 received/s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in run["results"]:
        out.append(f"| {r['server']} | {r['scenario']} | {n(r['throughput_msg_per_sec'], 1)} | {n(r['messages'])} | "
                   f"{n(r['peak_connections'])} | {n(r['drop_rate_percent'], 2)} % | {n(r['k6_errors'])} | "
                   f"{n(r.get('k6_sessions'))} | {n(r['k6_received_per_sec'])} |")
    out += ["", f"![What each server takes to run]({base}-sizes.svg)", "",
            "| Server | What it takes to run |", "| --- | --- |"]
    out += [f"| {s['name']} | {s['runs_on']} |" for s in run["servers"]]
    return out


def main():
    a_path, a = newest("a")
    b_path, b = newest("b")
    m = a["machine"]
    versions = ", ".join(f"{k}: {v}" for k, v in a["versions"].items())
    block = [f"From `{a['command']}` ({a['date'][:10]}) and `{b['command']}` ({b['date'][:10]}) on {m['nproc']} cores "
             f"({m['cpu']}), Linux {m['kernel']}; each server pinned to core 0 and the generator (our loadgen for A, "
             f"k6 for B) to core 1, a fresh server process per step. Versions: {versions}.", ""]
    block += profile_a(a_path, a) + [""] + profile_b(b_path, b)
    readme = os.path.join(ROOT, "README.md")
    text = open(readme).read()
    new, count = re.subn(r"(<!-- results: begin -->\n).*?(<!-- results: end -->)",
                         lambda m: m.group(1) + "\n".join(block) + "\n" + m.group(2), text, flags=re.S)
    if count != 1:
        raise SystemExit("README.md has no <!-- results: begin --> ... <!-- results: end --> block")
    open(readme, "w").write(new)
    print(f"README.md: Results from {link(a_path)} and {link(b_path)}")


main()
