"""Python onnxruntime peer of models/benches/embed_throughput.rs: same files, sentences, method.

    python3 models/tools/bench_embed.py [--seconds S] [--batches 1,8,32] [--device cuda]
"""

import argparse
import json
import os
import sys
import time

started = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyembed import PyEmbedder  # noqa: E402  (imports onnxruntime: part of load time)

HERE = os.path.dirname(os.path.abspath(__file__))


def proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return None


def measure(embedder, sentences, batch, budget):
    embedder.embed(sentences[:batch])
    begin = time.perf_counter()
    done = 0
    while True:
        for i in range(0, len(sentences), batch):
            chunk = sentences[i : i + batch]
            embedder.embed(chunk)
            done += len(chunk)
            if done >= len(sentences) and time.perf_counter() - begin >= budget:
                return done / (time.perf_counter() - begin)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    with open(os.path.join(HERE, "..", "testdata", "bench_sentences.txt"), encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f if line.strip()]
    embedder = PyEmbedder(device=args.device)
    if args.device == "cuda" and "CUDAExecutionProvider" not in embedder.session.get_providers():
        sys.exit("CUDAExecutionProvider did not load: " + ",".join(embedder.session.get_providers()))
    load_seconds = time.perf_counter() - started
    rss_after_load = proc_status_kib("VmRSS:")
    throughput = {b: measure(embedder, sentences, int(b), args.seconds) for b in args.batches.split(",")}
    print(
        json.dumps(
            {
                "implementation": "python" if args.device == "cpu" else "python-cuda",
                "sentences": len(sentences),
                "load_seconds": load_seconds,
                "rss_after_load_kib": rss_after_load,
                "peak_rss_kib": proc_status_kib("VmHWM:"),
                "sentences_per_second": throughput,
            }
        )
    )


if __name__ == "__main__":
    main()
