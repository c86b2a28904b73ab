"""Profile A and Profile B: ours and the reference servers (benchmark/peers/)
side by side, each server on core 0 and the generator on core 1, a fresh
server process per step. Run through benchmark/run-profile-a.sh and
benchmark/run-profile-b.sh, which build everything first.

    profiles.py a [--quick] [--servers NAME,...]
    profiles.py b [--quick] [--servers NAME,...]

Profile A (high-concurrency latency): for each server, 1,000, 5,000, 10,000
and 19,000 joined connections, each offered the same deliveries per second
(senders x rate x (N - 1) = DELIVERIES); the generator sends on a fixed
schedule and stamps each chat with the time it was due (no coordinated
omission), and measures latency in HDR histograms. Then the knee at 1,000
connections: senders are added (9 chats/s each) until p99 passes 50 ms or the
delivery ratio falls below 0.999; the highest load held is the knee.

Profile B (the suite's k6 table): the k6 scenarios steady, burst and churn
against each server; the table takes the suite's columns from the statistics
block each server prints at exit (throughput, messages, peak connections,
drop rate: the share of chats the rate limit dropped) and k6's errors.

Each run writes benchmark/results/DATE-profile-X.json and .md (a --quick
run: target/tmp/profiles/); charts.py
draws the SVGs beside them. Progress goes to stderr.
"""
import argparse
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADGEN = os.path.join(ROOT, "target/release/loadgen")
SIZES = [1000, 5000, 10000, 19000]
# Offered deliveries per second at every size: 7 senders x 8.6/s at 1,000
# connections, one sender at 3.2/s at 19,000. Chosen so that the generator
# stays well under its core (25-50 % here); a server that cannot keep up
# shows it in latency and the delivery ratio.
DELIVERIES = 60_000
KNEE_SENDERS = [1, 2, 5, 10, 20, 50, 100, 150, 200, 300, 400, 600]
PIN_SERVER = ["taskset", "-c", "0"] if (os.cpu_count() or 1) >= 2 else []
PIN_LOADGEN = ["taskset", "-c", "1"] if (os.cpu_count() or 1) >= 2 else []


def say(text):
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def servers(only):
    rows = []
    for line in open(os.path.join(ROOT, "target/peers/servers.tsv")):
        name, command, runs_on = line.rstrip("\n").split("\t")
        if not only or name in only:
            rows.append({"name": name, "command": command, "runs_on": runs_on})
    return rows


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """One server process on core 0, with the open-file limit at the hard limit."""

    def __init__(self, command):
        self.port = free_port()
        argv = shlex.split(command.replace("{port}", str(self.port)))
        # exec keeps the PID: what the generator samples is the server itself.
        self.proc = subprocess.Popen(
            PIN_SERVER + ["bash", "-c", 'ulimit -n "$(ulimit -Hn)"; exec "$@"', "server"] + argv,
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{command} did not start")

    def url(self):
        return f"ws://127.0.0.1:{self.port}/ws"

    def stop(self):
        """SIGTERM, then what it printed (its statistics block)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out or ""


def loadgen(server, args):
    cmd = PIN_LOADGEN + [LOADGEN, "--url", server.url(), "--server-pid", str(server.proc.pid),
                         "--spread-sources", "--json"] + args
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"loadgen {args}: {done.stderr.strip()[-300:]}")
    return json.loads(lines[-1])


class Progress:
    def __init__(self, total):
        self.total, self.done, self.started = total, 0, time.monotonic()

    def step(self, what):
        self.done += 1
        spent = time.monotonic() - self.started
        left = spent / max(self.done - 1, 1) * (self.total - self.done + 1) if self.done > 1 else 0
        say(f"step {self.done} of {self.total}: {what}" + (f" (about {left / 60:.0f} min left)" if left else ""))


def plan(size):
    """Senders and rate offering DELIVERIES deliveries/s at `size` connections."""
    per_sec = DELIVERIES / (size - 1)
    senders = max(1, -(-per_sec // 9.5))
    return int(senders), per_sec / senders


def missed(r):
    """A knee step the server did not hold: p99 over 50 ms or deliveries lost."""
    return r["latency_p99_ms"] > 50 or r["delivery_ratio"] < 0.999


def profile_a(args):
    rows = servers(args.servers)
    sizes = [500] if args.quick else SIZES
    duration = "2" if args.quick else "10"
    # --quick: one knee step, so the knee's chart is drawn in the test command too.
    knee = [1] if args.quick else KNEE_SENDERS
    knee_size = sizes[0] if args.quick else 1000
    progress = Progress(len(rows) * (len(sizes) + len(knee)))
    results = []
    for row in rows:
        def fanout(connections, senders, rate):
            """One step: a fresh server process, one loadgen fanout run."""
            server = Server(row["command"])
            try:
                return loadgen(server, ["fanout", "--connections", str(connections), "--senders", str(senders),
                                        "--rate", f"{rate:.4f}", "--duration", duration])
            finally:
                server.stop()

        for size in sizes:
            senders, rate = plan(size)
            progress.step(f"{row['name']}: {size} connections, {senders} senders x {rate:.2f}/s")
            r = fanout(size, senders, rate)
            r.update(server=row["name"], step="sizes", size=size)
            results.append(r)
        for senders in knee:
            progress.step(f"{row['name']}: knee, {knee_size} connections, {senders} senders x 9/s")
            r = fanout(knee_size, senders, 9)
            r.update(server=row["name"], step="knee", size=knee_size)
            if missed(r) and not args.quick:
                # Once more, with a fresh process: a knee is a load the server
                # fails twice, not one spike of a shared machine.
                progress.total += 1
                progress.step(f"{row['name']}: knee, {senders} senders again (p99 {r['latency_p99_ms']:.0f} ms)")
                r = fanout(knee_size, senders, 9)
                r.update(server=row["name"], step="knee", size=knee_size, retried=True)
            results.append(r)
            if missed(r):
                # Past the knee: the rest would be further past it.
                progress.total -= len(knee) - knee.index(senders) - 1
                break
    return results


K6_SCENARIOS = {
    # script, settings for a full run, for --quick
    "steady": ("steady.js", {}, {"VUS": "10", "HOLD": "2"}),
    "burst": ("burst.js", {}, None),
    "churn": ("churn.js", {}, None),
}


def k6_binary():
    return subprocess.run([os.path.join(ROOT, "k6/install.sh")], capture_output=True, text=True,
                          check=True).stdout.strip()


def statistics(block):
    """The figures of a statistics block, by name."""
    figures = {}
    for line in block.splitlines():
        name, _, value = line.partition(": ")
        number = value.strip().rstrip("%").split(" ")[0].rstrip("sm")
        try:
            figures[name.strip()] = float(number)
        except ValueError:
            pass
    return figures


def profile_b(args):
    rows = servers(args.servers)
    k6 = k6_binary()
    scenarios = [(n, s, q) for n, (s, f, q) in K6_SCENARIOS.items() if not args.quick or q is not None]
    progress = Progress(len(rows) * len(scenarios))
    results = []
    work = os.path.join(ROOT, "target/tmp/profile-b")
    os.makedirs(work, exist_ok=True)
    for row in rows:
        for name, script, quick_env in scenarios:
            progress.step(f"{row['name']}: k6 {name}")
            server = Server(row["command"])
            summary = os.path.join(work, "summary.json")
            env = dict(os.environ, WS_URL=server.url(), **(quick_env if args.quick else {}))
            started = time.monotonic()
            k6_run = subprocess.run(PIN_LOADGEN + [k6, "run", "--quiet", "--summary-export", summary,
                                                   os.path.join("k6", script)],
                                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
            seconds = time.monotonic() - started
            block = server.stop()
            m = json.load(open(summary))["metrics"]
            get = lambda metric, key: m.get(metric, {}).get(key, 0)
            stats = statistics(block)
            results.append({
                "server": row["name"], "scenario": name, "runs_on": row["runs_on"],
                "throughput_msg_per_sec": stats.get("Throughput"),
                "messages": stats.get("Total messages"),
                "peak_connections": stats.get("Peak connections"),
                "drop_rate_percent": stats.get("Message drop rate"),
                "k6_errors": get("ws_errors", "count") + get("checks", "fails"),
                "k6_exit": k6_run.returncode,
                "k6_sessions": get("ws_sessions", "count"),
                "k6_chats_sent": get("chats_sent", "count"),
                "k6_chats_received": get("chats_received", "count"),
                "k6_received_per_sec": get("chats_received", "count") / seconds,
                "k6_latency_p95_ms": get("chat_latency", "p(95)"),
                "statistics": block.strip(),
            })
    return results


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.machine())
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release()}


def versions():
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    return {
        "rustc": run(["rustc", "--version"]),
        "go": run(["go", "version"]),
        "node": run(["node", "--version"]),
        "python": run([sys.executable, "--version"]),
        "k6": run([k6_binary(), "version"]),
    }


def write(profile, args, results):
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime()) + f"-profile-{profile}" + ("-quick" if args.quick else "")
    # Quick runs (the test command's) go to target/tmp, not among the results.
    folder = os.path.join(ROOT, "target/tmp/profiles" if args.quick else "benchmark/results")
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, stamp)
    run = {
        "date": stamp,
        "profile": profile,
        "quick": args.quick,
        "command": f"benchmark/run-profile-{profile}.sh" + (" --quick" if args.quick else ""),
        "machine": machine(),
        "versions": versions(),
        "servers": servers(args.servers),
        "deliveries_per_sec_offered": DELIVERIES if profile == "a" else None,
        "results": results,
    }
    json.dump(run, open(base + ".json", "w"), indent=1)
    open(base + ".md", "w").write(markdown(run))
    say(f"written: {base}.json, {base}.md")
    return base


def fmt(value, digits=1):
    if value is None or value == "":
        return "-"
    if isinstance(value, float) and not value.is_integer() or abs(value) < 10:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}"


def markdown(run):
    out = [f"# Profile {run['profile'].upper()}, {run['date']}", "",
           f"`{run['command']}` on {run['machine']['nproc']} cores ({run['machine']['cpu']}), kernel "
           f"{run['machine']['kernel']}; each server on core 0, the generator on core 1, a fresh server per step. "
           + ", ".join(f"{k} {v}" for k, v in run["versions"].items()) + ".", ""]
    out += ["| Server | What it runs on |", "| --- | --- |"]
    out += [f"| {s['name']} | {s['runs_on']} |" for s in run["servers"]]
    out.append("")
    if run["profile"] == "a":
        out += [f"Each size offered {run['deliveries_per_sec_offered']:,} deliveries/s (senders x rate x (N - 1)); "
                "latency from the time each chat was due (open loop, HDR histograms).", "",
                "| Server | Connections | Senders x rate | Delivered/s | Ratio | p50 ms | p90 ms | p99 ms | p99.9 ms | "
                "max ms | Late sends | Server CPU ms / 1,000 | Server B / connection | Generator CPU % |",
                "| --- |" + " --- |" * 13]
        for r in run["results"]:
            if r["step"] != "sizes":
                continue
            out.append(f"| {r['server']} | {r['size']:,} | {r['senders']:.0f} x {r['offered_deliveries_per_sec'] / max(r['senders'] * (r['connections'] - 1), 1):.2f} | "
                       f"{fmt(r['deliveries_per_sec'])} | {r['delivery_ratio']:.4f} | {fmt(r['latency_p50_ms'])} | "
                       f"{fmt(r['latency_p90_ms'])} | {fmt(r['latency_p99_ms'])} | {fmt(r['latency_p99_9_ms'])} | "
                       f"{fmt(r['latency_max_ms'])} | {fmt(r.get('late_sends'))} | "
                       f"{fmt(r.get('server_cpu_ms_per_1000_deliveries'), 3)} | {fmt(r.get('server_bytes_per_connection'))} | "
                       f"{fmt(r.get('loadgen_cpu_percent'))} |")
        knees = [r for r in run["results"] if r["step"] == "knee"]
        if knees:
            out += ["", f"The knee at {knees[0]['size']:,} connections (9 chats/s per sender; held: p99 <= 50 ms and ratio >= 0.999; a step missed is run once more with a fresh process, and the knee is where it misses twice):",
                    "", "| Server | Senders | Offered/s | Delivered/s | Ratio | p99 ms | Held | Generator CPU % |",
                    "| --- |" + " --- |" * 7]
            for r in knees:
                held = not missed(r)
                out.append(f"| {r['server']} | {r['senders']:.0f} | {fmt(r['offered_deliveries_per_sec'])} | "
                           f"{fmt(r['deliveries_per_sec'])} | {r['delivery_ratio']:.4f} | {fmt(r['latency_p99_ms'])} | "
                           f"{'yes' if held else 'no'} | {fmt(r.get('loadgen_cpu_percent'))} |")
            out += ["", f"| Server | Highest load held at {knees[0]['size']:,} connections |", "| --- | --- |"]
            for name in dict.fromkeys(r["server"] for r in knees):
                held = [r["offered_deliveries_per_sec"] for r in knees
                        if r["server"] == name and not missed(r)]
                out.append(f"| {name} | {fmt(max(held)) + ' deliveries/s' if held else 'none of the steps'} |")
    else:
        out += ["The suite's columns come from the statistics block each server prints at exit (throughput: "
                "chats relayed per second of the server's run; drop rate: the share of chats the 10/s rate limit "
                "dropped), k6 errors from k6 (failed upgrades and checks).", "",
                "| Server | Scenario | Throughput msg/s | Messages | Peak connections | Drop rate % | k6 errors | "
                "k6 sessions | k6 received/s | k6 p95 ms |", "| --- |" + " --- |" * 9]
        for r in run["results"]:
            out.append(f"| {r['server']} | {r['scenario']} | {fmt(r['throughput_msg_per_sec'])} | {fmt(r['messages'])} | "
                       f"{fmt(r['peak_connections'])} | {fmt(r['drop_rate_percent'], 2)} | {fmt(r['k6_errors'])} | "
                       f"{fmt(r.get('k6_sessions'))} | {fmt(r['k6_received_per_sec'])} | {fmt(r['k6_latency_p95_ms'])} |")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", choices=["a", "b"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--servers", type=lambda s: s.split(","), default=None)
    args = parser.parse_args()
    results = profile_a(args) if args.profile == "a" else profile_b(args)
    print(write(args.profile, args, results))


if __name__ == "__main__":
    main()
