"""The Python peer of Murmur's Rust embedder: same files, same pipeline, Python onnxruntime.

Used to produce the committed reference vectors (reference_embeddings.py) and as the
comparison in the embedding benchmark (bench_embed.py). Pipeline, as sentence-transformers
does it for all-MiniLM-L6-v2: WordPiece tokenise, truncate to 256 tokens, pad to the batch's
longest, run the model, mean-pool last_hidden_state over the attention mask, L2-normalise.
"""

import os
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from murmur_cache import cache_dir  # noqa: E402

MAX_TOKENS = 256


def model_dir():
    return os.path.join(cache_dir(), "models", "all-MiniLM-L6-v2-int8")


class PyEmbedder:
    def __init__(self, directory=None, threads=0, device="cpu"):
        directory = directory or model_dir()
        self.tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        padding = self.tokenizer.padding or {}
        self.tokenizer.enable_padding(
            pad_id=padding.get("pad_id", 0), pad_token=padding.get("pad_token", "[PAD]")
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            os.path.join(directory, "model.onnx"), options, providers=(
                ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
            )
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def embed(self, texts):
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        hidden = self.session.run(["last_hidden_state"], {k: feed[k] for k in self.input_names})[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled / norms
