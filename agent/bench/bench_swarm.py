#!/usr/bin/env python3
"""Swarm propagation benchmark: N real agent processes on loopback in one private swarm.

Writes memories at a steady rate on random agents (vectors given, so embedding is not what is
measured) and reports, for each memory, how long until every other agent holds it (its GET
answers 200: stored, indexed in the same step), bytes sent per memory per peer, and CPU and RSS
per agent idle and under load. The ideal beside it is the network's shortest-path delay: half a
loopback HTTP round trip, measured in the same run.

Usage: bench_swarm.py BINARY [--agents 20] [--memories 100] [--rate 2] [--config FILE]

--config: a TOML file every agent runs with (for example `[swarm.gossip]` settings, to compare
gossip tunings in one run).
"""

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def http(method, url, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, raw
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_file(path, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return open(path).read().strip()
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {path}")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid):
    return int(open(f"/proc/{pid}/statm").read().split()[1]) * PAGE / 2**20


def wire_bytes_sent(agents):
    """TCP payload bytes the agents' swarm sockets have sent (kernel counters, from `ss`):
    everything on the wire between agents, relays and libp2p framing included, API traffic
    excluded."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True).stdout.splitlines()
    by_pid = {a["pid"]: a["api_port"] for a in agents}
    total = 0
    for head, detail in zip(out, out[1:]):
        if "users:((" not in head:
            continue
        pid = next((int(p.split(",")[0]) for p in head.split("pid=")[1:]), None)
        if pid not in by_pid:
            continue
        local_port = int(head.split()[3].rsplit(":", 1)[1])
        if local_port == by_pid[pid]:
            continue
        for field in detail.split():
            if field.startswith("bytes_sent:"):
                total += int(field.split(":")[1])
    return total


def swarm_bytes_out(url):
    status, raw = http("GET", url + "/metrics")
    total = 0
    for line in raw.decode().splitlines():
        if line.startswith("murmur_agent_swarm_bytes_total{") and 'direction="out"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def sample(agents, seconds):
    before = [cpu_seconds(a["pid"]) for a in agents]
    time.sleep(seconds)
    after = [cpu_seconds(a["pid"]) for a in agents]
    cpu = [(b - a) / seconds * 100 for a, b in zip(before, after)]
    rss = [rss_mib(a["pid"]) for a in agents]
    return cpu, rss


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--memories", type=int, default=100)
    ap.add_argument("--rate", type=float, default=2.0, help="memories per second")
    ap.add_argument("--config", help="a TOML config file for every agent")
    args = ap.parse_args()

    root = tempfile.mkdtemp(prefix="murmur-swarm-bench-")
    key = secrets.token_hex(32)
    agents = []
    procs = []
    try:
        for i in range(args.agents):
            d = os.path.join(root, f"a{i}")
            os.makedirs(d)
            cmd = [args.binary, "run", "--data-dir", d, "--api-addr", "127.0.0.1:0",
                   "--swarm-listen", "/ip4/127.0.0.1/tcp/0", "--swarm-key", key, "--no-mdns"]
            if args.config:
                cmd += ["--config", args.config]
            # Each agent knows the first and one random earlier agent: not a star, not a mesh.
            for j in sorted({0, random.Random(i).randrange(max(i, 1))}):
                if j < i:
                    cmd += ["--swarm-bootstrap", agents[j]["swarm"]]
            log = open(os.path.join(d, "agent.log"), "w")
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
            procs.append(p)
            url = "http://" + wait_file(os.path.join(d, "api.addr"))
            swarm = wait_file(os.path.join(d, "swarm.addr")).splitlines()[0]
            agents.append({"pid": p.pid, "url": url, "swarm": swarm, "api_port": int(url.rsplit(":", 1)[1])})
            print(f"started agent {i + 1}/{args.agents}", file=sys.stderr)

        rng = random.Random(7)

        def vector():
            return [rng.uniform(-1, 1) for _ in range(384)]

        def holds(agent, mid):
            return http("GET", f"{agent['url']}/v1/memories/{mid}", timeout=10)[0] == 200

        # Warm-up: one memory must reach everyone (connections and gossip meshes formed).
        warm = json.loads(http("POST", agents[0]["url"] + "/v1/memories", {"text": "warm-up", "vector": vector()})[1])["id"]
        deadline = time.time() + 300
        while not all(holds(a, warm) for a in agents):
            if time.time() > deadline:
                sys.exit("the swarm did not form")
            time.sleep(0.5)
        time.sleep(3)

        # Traffic with nothing written (gossipsub heartbeats and IHAVE, anti-entropy rounds,
        # pings), so the per-memory cost can be told apart from what time alone costs.
        idle_wire_start, idle_start = wire_bytes_sent(agents), time.time()
        idle_cpu, idle_rss = sample(agents, 10)
        idle_wire_per_s = (wire_bytes_sent(agents) - idle_wire_start) / (time.time() - idle_start)
        bytes_before = sum(swarm_bytes_out(a["url"]) for a in agents)
        wire_before = wire_bytes_sent(agents)

        # Ideal: half a loopback round trip (the shortest path between any two agents here).
        rtts = []
        for _ in range(50):
            t = time.perf_counter()
            http("GET", agents[0]["url"] + "/healthz")
            rtts.append(time.perf_counter() - t)
        ideal_ms = statistics.median(rtts) / 2 * 1000

        latencies = []
        load_cpu_start = [cpu_seconds(a["pid"]) for a in agents]
        load_start = time.time()
        for n in range(args.memories):
            writer = rng.randrange(len(agents))
            started = time.perf_counter()
            status, raw = http("POST", agents[writer]["url"] + "/v1/memories",
                               {"text": f"load memory {n}", "vector": vector()})
            assert status == 201, raw
            acked = time.perf_counter()
            mid = json.loads(raw)["id"]
            seen = {}

            def watch(i, agent):
                while not holds(agent, mid):
                    time.sleep(0.005)
                seen[i] = time.perf_counter()

            threads = [threading.Thread(target=watch, args=(i, a)) for i, a in enumerate(agents) if i != writer]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            latencies.append((max(seen.values()) - acked) * 1000)
            pause = (n + 1) / args.rate - (time.time() - load_start)
            if pause > 0:
                time.sleep(pause)
        load_seconds = time.time() - load_start
        load_cpu = [(cpu_seconds(a["pid"]) - s) / load_seconds * 100 for a, s in zip(agents, load_cpu_start)]
        load_rss = [rss_mib(a["pid"]) for a in agents]
        bytes_after = sum(swarm_bytes_out(a["url"]) for a in agents)
        wire_after = wire_bytes_sent(agents)
        peers = len(agents) - 1
        per_memory_per_peer = (bytes_after - bytes_before) / args.memories / peers
        wire_per_memory_per_peer = (wire_after - wire_before) / args.memories / peers
        idle_per_memory_per_peer = idle_wire_per_s * load_seconds / args.memories / peers
        payload = 2 * 384 + len("load memory 50")

        p50, p95, mx = pct(latencies, 50), pct(latencies, 95), max(latencies)
        tuning = f", config {os.path.basename(args.config)}" if args.config else ""
        print(f"# swarm propagation: {args.agents} agents, {args.memories} memories at {args.rate}/s{tuning}\n")
        print("| measure | value | ideal (loopback one-way delay) | ratio |")
        print("|---|---|---|---|")
        print(f"| time until held by all peers, p50 | {p50:.1f} ms | {ideal_ms:.3f} ms | {p50 / ideal_ms:.0f} |")
        print(f"| time until held by all peers, p95 | {p95:.1f} ms | {ideal_ms:.3f} ms | {p95 / ideal_ms:.0f} |")
        print(f"| time until held by all peers, max | {mx:.1f} ms | {ideal_ms:.3f} ms | {mx / ideal_ms:.0f} |")
        print(f"| bytes on the wire per memory per peer (TCP payload from all agents' swarm sockets) | {wire_per_memory_per_peer:.0f} B | raw payload {payload} B | {wire_per_memory_per_peer / payload:.2f} |")
        print(f"| of which idle traffic (the swarm's {idle_wire_per_s / 1024:.1f} KiB/s with nothing written, over the load's {load_seconds:.0f} s) | {idle_per_memory_per_peer:.0f} B | - | - |")
        beyond = wire_per_memory_per_peer - idle_per_memory_per_peer
        print(f"| bytes per memory per peer beyond idle traffic | {beyond:.0f} B | raw payload {payload} B | {beyond / payload:.2f} |")
        print(f"| of which sync messages the engines sent (origin pushes + anti-entropy, no relays) | {per_memory_per_peer:.0f} B | - | - |")
        print(f"| CPU per agent idle, mean / max | {statistics.mean(idle_cpu):.2f}% / {max(idle_cpu):.2f}% of a core | - | - |")
        print(f"| CPU per agent under load, mean / max | {statistics.mean(load_cpu):.2f}% / {max(load_cpu):.2f}% of a core | - | - |")
        print(f"| RSS per agent idle, mean / max | {statistics.mean(idle_rss):.0f} / {max(idle_rss):.0f} MiB | - | - |")
        print(f"| RSS per agent after load, mean / max | {statistics.mean(load_rss):.0f} / {max(load_rss):.0f} MiB | - | - |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
