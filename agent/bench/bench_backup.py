"""Backup and restore of one agent at a given size, each against its peer in the same run.

    N=100000 bash scripts/bench-agent-backup.sh

The agent is fed N memories (synthetic texts, given 384-dimension vectors: no embedding) in
batches over HTTP, as bench_scale.py does; that ingest rate is the restore's peer. Then:

- write latency (one memory per POST, p50/p99) with the agent idle, then while
  `murmur-agent backup` runs: what a backup costs the writers; the agent's own
  `writes_paused_ms` (how long its write lock was held) is read from its log;
- backup wall time and bytes against `cp -a` of the stopped data directory (the cold copy a
  user would make without the command, which needs the agent down);
- restore (`murmur-agent restore` into a new directory) memories/s against the ingest rate.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from bench_scale import Agent, request, texts, unit_vectors
from disk import du


def percentile_ms(values, q):
    return float(np.percentile(np.array(values) * 1000.0, q))


def single_writes(agent, rng, dim, stop, out, prefix):
    i = 0
    while not stop.is_set():
        vector = unit_vectors(1, dim, rng)[0].tolist()
        t0 = time.perf_counter()
        request(agent.base + "/v1/memories", {"text": f"{prefix} {i}", "vector": vector})
        out.append(time.perf_counter() - t0)
        i += 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent-bin", required=True)
    parser.add_argument("--memories", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--idle-writes-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="murmur-backup-bench-")
    data = os.path.join(root, "agent")
    log = os.path.join(root, "agent.log")
    # The backup's own log line carries how long it held the write lock.
    agent = Agent(args.agent_bin, data, log, rust_log="warn,murmur_agent::service=info")
    agent.start()
    rng = np.random.default_rng(args.seed)
    try:
        held = 0
        started = time.perf_counter()
        while held < args.memories:
            n = min(args.batch, args.memories - held)
            body = {
                "memories": [
                    {"text": t, "vector": v.tolist()}
                    for t, v in zip(texts(held, n, rng), unit_vectors(n, args.dim, rng))
                ]
            }
            request(agent.base + "/v1/memories/batch", body)
            held += n
        ingest_per_s = held / (time.perf_counter() - started)

        # Writers with the agent idle, then during a backup.
        idle = []
        stop = threading.Event()
        writer = threading.Thread(target=single_writes, args=(agent, rng, args.dim, stop, idle, "idle"))
        writer.start()
        time.sleep(args.idle_writes_s)
        stop.set()
        writer.join()

        during = []
        stop = threading.Event()
        writer = threading.Thread(target=single_writes, args=(agent, rng, args.dim, stop, during, "during"))
        writer.start()
        backups = os.path.join(root, "backups")
        t0 = time.perf_counter()
        out = subprocess.run(
            [args.agent_bin, "backup", "--url", agent.base, backups],
            check=True, capture_output=True, text=True,
        )
        backup_s = time.perf_counter() - t0
        stop.set()
        writer.join()
        backup = json.loads(out.stdout)
        backup_bytes = os.path.getsize(backup["path"])
        paused = [int(m) for m in re.findall(r"writes_paused_ms=(\d+)", open(log).read())]
        memories_at_backup = request(agent.base + "/v1/stats")["memories"]

        agent.stop(signal.SIGTERM)
        copy = os.path.join(root, "copy")
        t0 = time.perf_counter()
        subprocess.run(["cp", "-a", data, copy], check=True)
        copy_s = time.perf_counter() - t0
        copy_bytes = du(copy)
        shutil.rmtree(copy)

        restored_dir = os.path.join(root, "restored")
        t0 = time.perf_counter()
        out = subprocess.run(
            [args.agent_bin, "restore", "--data-dir", restored_dir,
             "--identity-key", os.path.join(data, "identity.key"), backup["path"]],
            check=True, capture_output=True, text=True, env={**os.environ, "RUST_LOG": "warn"},
        )
        restore_s = time.perf_counter() - t0
        restored = json.loads(out.stdout)
        assert restored["memories"] >= held, restored

        result = {
            "memories": held,
            "memories_at_backup": memories_at_backup,
            "ingest_per_s": ingest_per_s,
            "write_idle_p50_ms": percentile_ms(idle, 50),
            "write_idle_p99_ms": percentile_ms(idle, 99),
            "write_during_backup_p50_ms": percentile_ms(during, 50),
            "write_during_backup_p99_ms": percentile_ms(during, 99),
            "write_during_backup_max_ms": max(during) * 1000.0,
            "writes_during_backup": len(during),
            "writes_paused_ms": paused[-1] if paused else None,
            "backup_s": backup_s,
            "backup_bytes": backup_bytes,
            "cold_copy_s": copy_s,
            "cold_copy_bytes": copy_bytes,
            "restore_s": restore_s,
            "restore_per_s": restored["memories"] / restore_s,
            "restore_over_ingest": restored["memories"] / restore_s / ingest_per_s,
        }
        print(json.dumps(result, indent=2))
    finally:
        if agent.proc and agent.proc.poll() is None:
            agent.stop(signal.SIGTERM)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
