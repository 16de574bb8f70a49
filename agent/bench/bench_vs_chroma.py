"""Murmur's agent against ChromaDB (embedded, persistent) on the same texts and model files.

    bash scripts/bench-agent.sh            # N=10000 QUERIES=200 by default

Both embed with all-MiniLM-L6-v2 int8 through ONNX Runtime 1.32.0: Murmur in Rust inside the
agent, Chroma through an embedding function running Python onnxruntime (models/tools/pyembed.py,
given the same length-sorted batching Murmur uses, so the comparison is of the stores). Ground
truth for recall is exact cosine top-10 over Python's embeddings of the stored texts.
Figures: ingest memories/s (embedding included), search latency p50/p99 (query embedding
included; Murmur over loopback HTTP, Chroma in-process), recall@10, disk bytes per memory,
peak RSS of the process holding the store and the model.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "models", "tools"))
from disk import du  # noqa: E402
from pyembed import PyEmbedder, cache_dir  # noqa: E402

BATCH = 64
K = 10


def load_texts(n, queries):
    path = os.path.join(cache_dir(), "corpus", "debian-texts.txt")
    with open(path, encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f if line.strip()]
    if len(texts) < n + queries:
        sys.exit(f"corpus has {len(texts)} texts; need {n + queries}")
    # Spread both sets over the whole (name-sorted) corpus.
    step = len(texts) / (n + queries)
    picked = [texts[int(i * step)] for i in range(n + queries)]
    return picked[queries:], picked[:queries]


def sorted_embed(embedder, texts, chunk=32):
    """Length-sorted batches, results in input order: what Murmur's embedder does."""
    order = sorted(range(len(texts)), key=lambda i: len(embedder.tokenizer.encode(texts[i]).ids))
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        out[idx] = embedder.embed([texts[i] for i in idx])
    return out


def percentile(values, p):
    return float(np.percentile(np.array(values) * 1000.0, p))


def recall(results, truth):
    return sum(len(set(r[:K]) & set(t)) for r, t in zip(results, truth)) / (K * len(truth))


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def run_murmur(agent_bin, stored, queries, vectors=None):
    data = tempfile.mkdtemp(prefix="murmur-bench-")
    proc = subprocess.Popen(
        [agent_bin, "run", "--data-dir", data, "--api-addr", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(data, "..", os.path.basename(data) + ".log"), "w"),
        env={**os.environ, "RUST_LOG": "warn"},
    )
    try:
        addr_file = os.path.join(data, "api.addr")
        deadline = time.time() + 120
        while not (os.path.exists(addr_file) and os.path.getsize(addr_file) > 0):
            if time.time() > deadline or proc.poll() is not None:
                sys.exit("agent did not start")
            time.sleep(0.05)
        base = "http://" + open(addr_file).read().strip()
        ids = {}
        started = time.perf_counter()
        for start in range(0, len(stored), BATCH):
            chunk = stored[start : start + BATCH]
            if vectors is None:
                memories = [{"text": t} for t in chunk]
            else:
                memories = [{"text": t, "vector": v.tolist()} for t, v in zip(chunk, vectors[start : start + BATCH])]
            reply = post(base + "/v1/memories/batch", {"memories": memories})
            for i, memory_id in enumerate(reply["ids"]):
                ids[memory_id] = start + i
        ingest = len(stored) / (time.perf_counter() - started)
        latencies, results = [], []
        for q in queries:
            t0 = time.perf_counter()
            reply = post(base + "/v1/search", {"query": q, "k": K})
            latencies.append(time.perf_counter() - t0)
            results.append([ids[r["id"]] for r in reply["results"]])
        rss = peak_rss_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    disk = du(data)
    shutil.rmtree(data, ignore_errors=True)
    return {"ingest_per_s": ingest, "latencies": latencies, "results": results, "disk": disk, "peak_rss_kib": rss}


def chroma_worker(args):
    """Runs in its own process so its RSS is Chroma's (plus the model), not the harness's."""
    import chromadb
    from chromadb import Documents, EmbeddingFunction, Embeddings

    stored, queries = load_texts(args.n, args.queries)
    embedder = PyEmbedder()
    vectors = np.load(args.vectors) if args.vectors else None

    class MiniLM(EmbeddingFunction):
        def __init__(self):
            pass

        def __call__(self, input: Documents) -> Embeddings:
            return [row for row in sorted_embed(embedder, list(input))]

        @staticmethod
        def name():
            return "murmur-minilm-int8"

    path = tempfile.mkdtemp(prefix="chroma-bench-")
    client = chromadb.PersistentClient(path=path)
    collection = client.create_collection("bench", embedding_function=MiniLM(), metadata={"hnsw:space": "cosine"})
    started = time.perf_counter()
    for start in range(0, len(stored), BATCH):
        chunk = stored[start : start + BATCH]
        ids = [str(start + i) for i in range(len(chunk))]
        if vectors is None:
            collection.add(ids=ids, documents=chunk)
        else:
            collection.add(ids=ids, documents=chunk, embeddings=vectors[start : start + BATCH])
    ingest = len(stored) / (time.perf_counter() - started)
    latencies, results = [], []
    for q in queries:
        t0 = time.perf_counter()
        reply = collection.query(query_texts=[q], n_results=K)
        latencies.append(time.perf_counter() - t0)
        results.append([int(i) for i in reply["ids"][0]])
    rss = peak_rss_kib(os.getpid())
    del collection, client
    disk = du(path)
    shutil.rmtree(path, ignore_errors=True)
    print(json.dumps({"ingest_per_s": ingest, "latencies": latencies, "results": results, "disk": disk, "peak_rss_kib": rss}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent-bin")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chroma-worker", action="store_true")
    parser.add_argument(
        "--vectors",
        help="(worker) .npy of the stored texts' vectors: ingest them instead of embedding",
    )
    parser.add_argument(
        "--ingest-vectors",
        action="store_true",
        help="give both stores the precomputed vectors at ingest (store-only throughput)",
    )
    args = parser.parse_args()
    if args.chroma_worker:
        return chroma_worker(args)

    import chromadb

    stored, queries = load_texts(args.n, args.queries)
    print(f"{len(stored)} memories, {len(queries)} queries; computing exact ground truth", file=sys.stderr)
    embedder = PyEmbedder()
    stored_vectors = sorted_embed(embedder, stored)
    query_vectors = sorted_embed(embedder, queries)
    truth = [list(np.argsort(-(stored_vectors @ q))[:K]) for q in query_vectors]

    worker = [sys.executable, __file__, "--chroma-worker", "--n", str(args.n), "--queries", str(args.queries)]
    given = None
    if args.ingest_vectors:
        given = stored_vectors
        vectors_file = os.path.join(tempfile.mkdtemp(prefix="bench-vectors-"), "stored.npy")
        np.save(vectors_file, stored_vectors)
        worker += ["--vectors", vectors_file]
    print("murmur agent ...", file=sys.stderr)
    murmur = run_murmur(args.agent_bin, stored, queries, given)
    print("chromadb ...", file=sys.stderr)
    out = subprocess.run(worker, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"chroma worker failed:\n{out.stderr}")
    chroma = json.loads(out.stdout.strip().splitlines()[-1])

    rows = [
        (
            "ingest, memories/s " + ("(vectors given)" if args.ingest_vectors else "(embedding included)"),
            lambda r: r["ingest_per_s"],
            "{:.1f}",
            True,
        ),
        ("search latency p50, ms", lambda r: percentile(r["latencies"], 50), "{:.2f}", False),
        ("search latency p99, ms", lambda r: percentile(r["latencies"], 99), "{:.2f}", False),
        (f"recall@{K} vs exact", lambda r: recall(r["results"], truth), "{:.4f}", True),
        ("disk bytes per memory", lambda r: r["disk"] / len(stored), "{:.0f}", False),
        ("peak RSS, MiB", lambda r: r["peak_rss_kib"] / 1024, "{:.0f}", False),
    ]
    print(f"\n{len(stored)} memories, {len(queries)} queries, chromadb {chromadb.__version__}\n")
    print("| figure | Murmur agent | ChromaDB | Murmur / Chroma | better |")
    print("|---|---|---|---|---|")
    for label, get, fmt, higher_is_better in rows:
        m, c = get(murmur), get(chroma)
        ratio = m / c if c else float("inf")
        ahead = (m >= c) if higher_is_better else (m <= c)
        print(f"| {label} | {fmt.format(m)} | {fmt.format(c)} | {ratio:.2f} | {'Murmur' if ahead else 'Chroma'} |")


if __name__ == "__main__":
    main()
