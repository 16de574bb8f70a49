"""Writes models/testdata/reference_embeddings.json from Python onnxruntime.

Run after `murmur-models fetch`:
    python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install -r models/tools/requirements.txt
    /tmp/pyref/bin/python models/tools/reference_embeddings.py
Each sentence is embedded alone (no padding), the cleanest reference for the Rust side.
"""

import hashlib
import json
import os
import sys

import onnxruntime
import tokenizers

sys.path.insert(0, os.path.dirname(__file__))
from pyembed import MAX_TOKENS, PyEmbedder, model_dir  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TESTDATA = os.path.join(HERE, "..", "testdata")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    with open(os.path.join(TESTDATA, "reference_sentences.json"), encoding="utf-8") as f:
        sentences = json.load(f)
    embedder = PyEmbedder()
    rows = [{"text": s, "vector": [float(x) for x in embedder.embed([s])[0]]} for s in sentences]
    out = {
        "generator": "models/tools/reference_embeddings.py",
        "onnxruntime": onnxruntime.__version__,
        "tokenizers": tokenizers.__version__,
        "model_sha256": sha256(os.path.join(model_dir(), "model.onnx")),
        "tokenizer_sha256": sha256(os.path.join(model_dir(), "tokenizer.json")),
        "max_tokens": MAX_TOKENS,
        "pooling": "mean",
        "normalize": True,
        "embeddings": rows,
    }
    with open(os.path.join(TESTDATA, "reference_embeddings.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(rows)} reference embeddings")


if __name__ == "__main__":
    main()
