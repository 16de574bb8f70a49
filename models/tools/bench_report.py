"""Summarises bench_embed.py / embed_throughput.rs JSON results as a Markdown table (medians)."""

import json
import statistics
import sys

LABELS = {
    "rust": "Rust, default (length bucketing)",
    "rust-plain": "Rust, bucketing off",
    "python": "Python onnxruntime",
}


def main(paths):
    runs = {}
    for path in paths:
        with open(path) as f:
            result = json.load(f)
        # The same table for a GPU run: "rust-cuda" is the Rust side, and so on.
        runs.setdefault(result["implementation"].removesuffix("-cuda"), []).append(result)
    python = runs["python"]
    rusts = [k for k in ("rust", "rust-plain") if k in runs]
    median = statistics.median

    def figure(results, get):
        return median(get(r) for r in results)

    print(
        f"rounds: {len(python)} (medians of interleaved runs); {python[0]['sentences']} sentences\n"
    )
    header = "| figure | " + " | ".join(LABELS[k] for k in rusts) + " | Python onnxruntime | "
    header += " | ".join(f"{LABELS[k]} / Python" for k in rusts) + " |"
    print(header)
    print("|---" * (2 + 2 * len(rusts)) + "|")
    rows = [
        (f"sentences/s, batch {b}", (lambda r, b=b: r["sentences_per_second"][b]), 1, "")
        for b in python[0]["sentences_per_second"]
    ]
    rows += [
        ("model load time", lambda r: r["load_seconds"], 1000, " ms"),
        ("RSS after load", lambda r: r["rss_after_load_kib"], 1 / 1024, " MiB"),
        ("peak RSS", lambda r: r["peak_rss_kib"], 1 / 1024, " MiB"),
    ]
    for label, get, scale, unit in rows:
        p = figure(python, get) * scale
        values = [figure(runs[k], get) * scale for k in rusts]
        cells = [f"{v:.1f}{unit}" for v in values] + [f"{p:.1f}{unit}"] + [f"{v / p:.2f}" for v in values]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
