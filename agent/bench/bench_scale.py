"""How one agent's costs grow with what it holds: agent binaries side by side, in one run.

    bash scripts/bench-agent-scale.sh          # SIZES=10000,100000 by default

Each binary gets a fresh data directory and is fed the same memories (synthetic texts of about
200 bytes, given 384-dimension unit vectors, so no embedding runs) in batches over HTTP. At each
size it records: ingest memories/s over the last window before that size, RSS, disk bytes per
memory, /v1/stats and vector-search latency (p50), and the time until the API answers again
after SIGTERM and after SIGKILL. Give two binaries (say, before and after a change) to compare
them on the same machine in the same run.

`--chroma` adds ChromaDB (embedded, persistent, cosine HNSW) as the peer, fed the same memories
and vectors in the same batches in a process of its own: its RSS, every byte under its
directory, `count()` for stats, `query(query_embeddings=...)` for search, and for a restart the
time a fresh process takes to open the store and answer one query.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

from disk import du

WORDS = (
    "forklift battery bay sensor camera pallet aisle robot charge low high door gate dock "
    "temperature humidity motor belt conveyor shelf scanner label order shipment inbound "
    "outbound vehicle route stop driver night shift morning alert fault cleared service"
).split()


def texts(start, count, rng):
    out = []
    for i in range(start, start + count):
        words = rng.choice(WORDS, size=28)
        out.append(f"memory {i}: " + " ".join(words))
    return out


def unit_vectors(count, dim, rng):
    v = rng.standard_normal((count, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.round(v, 4)


def request(url, body=None, timeout=600):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.loads(response.read())


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def p50_ms(values):
    return float(np.percentile(np.array(values) * 1000.0, 50))


class Agent:
    def __init__(self, binary, data, log, rust_log="warn"):
        self.binary, self.data, self.log, self.rust_log = binary, data, log, rust_log
        self.proc = None
        self.base = None

    def start(self):
        """Starts the agent; returns seconds until its API answered."""
        addr_file = os.path.join(self.data, "api.addr")
        if os.path.exists(addr_file):
            os.remove(addr_file)
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [self.binary, "run", "--data-dir", self.data, "--api-addr", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "a"),
            env={**os.environ, "RUST_LOG": self.rust_log},
        )
        deadline = time.time() + 900
        while True:
            if time.time() > deadline or self.proc.poll() is not None:
                sys.exit(f"agent did not start; see {self.log}")
            if os.path.exists(addr_file) and os.path.getsize(addr_file) > 0:
                self.base = "http://" + open(addr_file).read().strip()
                try:
                    request(self.base + "/healthz")
                    return time.perf_counter() - started
                except OSError:
                    pass
            time.sleep(0.02)

    def stop(self, sig):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=600)


def run(binary, sizes, batch, dim, queries, seed):
    data = tempfile.mkdtemp(prefix="murmur-scale-")
    agent = Agent(binary, data, data + ".log")
    agent.start()
    rng = np.random.default_rng(seed)
    query_vectors = unit_vectors(queries, dim, np.random.default_rng(seed + 1))
    held, rows = 0, []
    try:
        for size in sizes:
            # The rate over the last fifth before this size: what a write costs at this size.
            window_from = size - min(size - held, max(size // 5, batch))
            window_start = None
            while held < size:
                if window_start is None and held >= window_from:
                    window_start, window_from = time.perf_counter(), held
                n = min(batch, size - held)
                body = {
                    "memories": [
                        {"text": t, "vector": v.tolist()}
                        for t, v in zip(texts(held, n, rng), unit_vectors(n, dim, rng))
                    ]
                }
                request(agent.base + "/v1/memories/batch", body)
                held += n
            ingest = (held - window_from) / (time.perf_counter() - window_start)
            stats_times, search_times = [], []
            for q in query_vectors:
                t0 = time.perf_counter()
                request(agent.base + "/v1/stats")
                stats_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                request(agent.base + "/v1/search", {"vector": q.tolist(), "k": 10})
                search_times.append(time.perf_counter() - t0)
            stats = request(agent.base + "/v1/stats")
            assert stats["memories"] == held, (stats["memories"], held)
            rss = rss_kib(agent.proc.pid)
            disk = du(data)
            agent.stop(signal.SIGTERM)
            after_term = agent.start()
            agent.stop(signal.SIGKILL)
            after_kill = agent.start()
            rows.append(
                {
                    "memories": held,
                    "ingest_per_s": ingest,
                    "window": held - window_from,
                    "rss_mib": rss / 1024,
                    "disk_bytes_per_memory": disk / held,
                    "stats_p50_ms": p50_ms(stats_times),
                    "search_p50_ms": p50_ms(search_times),
                    "restart_after_sigterm_s": after_term,
                    "restart_after_sigkill_s": after_kill,
                }
            )
            print(json.dumps({"binary": binary, **rows[-1]}), file=sys.stderr, flush=True)
    finally:
        if agent.proc and agent.proc.poll() is None:
            agent.stop(signal.SIGTERM)
        shutil.rmtree(data, ignore_errors=True)
    return rows


def chroma_rows(sizes, batch, dim, queries, seed):
    """ChromaDB through the same sizes, in its own process so its RSS is its own."""
    worker = [sys.executable, __file__, "--chroma-worker", "--sizes", ",".join(map(str, sizes))]
    worker += ["--batch", str(batch), "--dim", str(dim), "--queries", str(queries), "--seed", str(seed)]
    out = subprocess.run(worker, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"chroma worker failed:\n{out.stderr}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def chroma_open_and_query(path, query):
    """In a fresh process: open the store and answer one query (a restart)."""
    import chromadb

    client = chromadb.PersistentClient(path=path)
    client.get_collection("bench").query(query_embeddings=[query], n_results=10)


def chroma_worker(args):
    import chromadb

    sizes = sorted(int(s) for s in args.sizes.split(","))
    path = tempfile.mkdtemp(prefix="chroma-scale-")
    client = chromadb.PersistentClient(path=path)
    collection = client.create_collection("bench", metadata={"hnsw:space": "cosine"})
    rng = np.random.default_rng(args.seed)
    query_vectors = unit_vectors(args.queries, args.dim, np.random.default_rng(args.seed + 1))
    held = 0
    try:
        for size in sizes:
            window_from = size - min(size - held, max(size // 5, args.batch))
            window_start = None
            while held < size:
                if window_start is None and held >= window_from:
                    window_start, window_from = time.perf_counter(), held
                n = min(args.batch, size - held)
                collection.add(
                    ids=[str(held + i) for i in range(n)],
                    documents=texts(held, n, rng),
                    embeddings=unit_vectors(n, args.dim, rng),
                )
                held += n
            ingest = (held - window_from) / (time.perf_counter() - window_start)
            stats_times, search_times = [], []
            for q in query_vectors:
                t0 = time.perf_counter()
                assert collection.count() == held
                stats_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                collection.query(query_embeddings=[q], n_results=10)
                search_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            reopen = [sys.executable, __file__, "--chroma-reopen", path]
            subprocess.run(reopen, check=True, input=json.dumps(query_vectors[0].tolist()), text=True)
            restart = time.perf_counter() - t0
            row = {
                "memories": held,
                "ingest_per_s": ingest,
                "window": held - window_from,
                "rss_mib": rss_kib(os.getpid()) / 1024,
                "disk_bytes_per_memory": du(path) / held,
                "stats_p50_ms": p50_ms(stats_times),
                "search_p50_ms": p50_ms(search_times),
                "restart_after_sigterm_s": restart,
                "restart_after_sigkill_s": 0.0,
            }
            print(json.dumps(row), flush=True)
            print(json.dumps({"binary": "chromadb", **row}), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(path, ignore_errors=True)


COLUMNS = [
    ("ingest/s (last window)", "ingest_per_s", "{:.0f}"),
    ("RSS MiB", "rss_mib", "{:.0f}"),
    ("disk B/memory", "disk_bytes_per_memory", "{:.0f}"),
    ("stats p50 ms", "stats_p50_ms", "{:.2f}"),
    ("search p50 ms", "search_p50_ms", "{:.2f}"),
    ("restart after SIGTERM s", "restart_after_sigterm_s", "{:.2f}"),
    ("restart after SIGKILL s", "restart_after_sigkill_s", "{:.2f}"),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent-bin", action="append", default=[], help="label=path, repeatable")
    parser.add_argument("--chroma", action="store_true", help="add ChromaDB as the peer")
    parser.add_argument("--chroma-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chroma-reopen", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.chroma_reopen:
        return chroma_open_and_query(args.chroma_reopen, json.loads(sys.stdin.read()))
    if args.chroma_worker:
        return chroma_worker(args)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results = []
    for spec in args.agent_bin:
        label, _, path = spec.rpartition("=")
        results.append((label or path, run(path, sizes, args.batch, args.dim, args.queries, args.seed)))
    if args.chroma:
        import chromadb

        label = f"chromadb {chromadb.__version__}"
        results.append((label, chroma_rows(sizes, args.batch, args.dim, args.queries, args.seed)))

    print(f"\nbatches of {args.batch}, {args.dim}-dim vectors given, {args.queries} queries per size\n")
    print("| agent | memories | " + " | ".join(c[0] for c in COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for label, rows in results:
        for row in rows:
            cells = " | ".join(fmt.format(row[key]) for _, key, fmt in COLUMNS)
            print(f"| {label} | {row['memories']:,} | {cells} |")
    # Each agent against the last peer given: ChromaDB when asked for, else the first binary.
    (peer, peer_rows) = results[-1] if args.chroma else results[0]
    for label, rows in results:
        if label == peer:
            continue
        print(f"\nratios {label} / {peer} at each size:\n")
        print("| memories | " + " | ".join(c[0] for c in COLUMNS) + " |")
        print("|---:|" + "---:|" * len(COLUMNS))
        for x, y in zip(peer_rows, rows):
            cells = " | ".join(f"{y[key] / x[key]:.2f}" if x[key] else "-" for _, key, _ in COLUMNS)
            print(f"| {x['memories']:,} | {cells} |")


if __name__ == "__main__":
    main()
