"""Writes models/testdata/tiny-model/tiny.onnx: a 16-dimensional toy sentence model.

It stands in for "a user's own ONNX model" in tests: another dimension (16), another pooling
(CLS), no token_type_ids input, an output not called last_hidden_state, and a symbolic output
size the embedder must discover. Every token position of its output holds the same vector:
    sum over unmasked tokens t of TABLE[input_ids[t] % 64]
with TABLE[i][j] = sin(i * 16 + j), so a test can compute the expected embedding by hand.

    pip install onnx numpy && python3 models/tools/make_tiny_model.py
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper

ROWS, DIM = 64, 16
HERE = os.path.dirname(os.path.abspath(__file__))

table = np.sin(np.arange(ROWS * DIM, dtype=np.float64)).reshape(ROWS, DIM).astype(np.float32)
nodes = [
    helper.make_node("Mod", ["input_ids", "rows"], ["row_ids"]),
    helper.make_node("Gather", ["table", "row_ids"], ["token_vectors"]),  # [b, s, 16]
    helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
    helper.make_node("Unsqueeze", ["mask_f", "last_axis"], ["mask_3d"]),  # [b, s, 1]
    helper.make_node("Mul", ["token_vectors", "mask_3d"], ["masked"]),
    helper.make_node("ReduceSum", ["masked", "token_axis"], ["summed"], keepdims=1),  # [b, 1, 16]
    helper.make_node("Shape", ["masked"], ["shape_of_masked"]),
    helper.make_node("Expand", ["summed", "shape_of_masked"], ["sentence_tokens"]),  # [b, s, 16]
]

graph = helper.make_graph(
    nodes,
    "murmur_tiny_sentence_model",
    inputs=[
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
    ],
    outputs=[helper.make_tensor_value_info("sentence_tokens", TensorProto.FLOAT, ["batch", "tokens", "dim"])],
    initializer=[
        helper.make_tensor("table", TensorProto.FLOAT, [ROWS, DIM], table.flatten().tolist()),
        helper.make_tensor("rows", TensorProto.INT64, [], [ROWS]),
        helper.make_tensor("last_axis", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("token_axis", TensorProto.INT64, [1], [1]),
    ],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="murmur")
model.ir_version = 8
onnx.checker.check_model(model)
out = os.path.join(HERE, "..", "testdata", "tiny-model", "tiny.onnx")
os.makedirs(os.path.dirname(out), exist_ok=True)
onnx.save(model, out)
print("wrote", out, os.path.getsize(out), "bytes")
