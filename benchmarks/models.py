"""Benchmark models built with onnx.helper (no TensorFlow): small, deterministic, reproducible.

    python benchmarks/models.py --model-repository /tmp/bench-models     # writes mlp/1/model.onnx
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# onnx >= 1.23 writes IR version 14 by default; onnxruntime 1.31 reads up to 13.
IR_VERSION = 10
OPSET = 17


def mlp(features: int = 30, hidden: Sequence[int] = (64, 32), outputs: int = 1, seed: int = 0) -> onnx.ModelProto:
    """x FP32 [batch, features] -> Dense+ReLU per hidden width -> Dense+sigmoid -> y FP32 [batch, outputs].

    Random (seeded) Glorot-scaled weights: the numbers are meaningless, the cost is that of a
    small tabular classifier like the seed model.
    """
    rng = np.random.default_rng(seed)
    nodes, initializers, previous, width = [], [], "x", features
    for i, size in enumerate([*hidden, outputs]):
        w = (rng.standard_normal((width, size)) * np.sqrt(2.0 / (width + size))).astype(np.float32)
        b = np.zeros(size, dtype=np.float32)
        initializers += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(hidden)
        dense = f"dense{i}"
        nodes.append(helper.make_node("Gemm", [previous, f"w{i}", f"b{i}"], [dense]))
        out = "y" if last else f"h{i}"
        nodes.append(helper.make_node("Sigmoid" if last else "Relu", [dense], [out]))
        previous, width = out, size
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, outputs])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, repository: Path | str, name: str, version: int = 1) -> Path:
    """Write <repository>/<name>/<version>/model.onnx and return its path."""
    folder = Path(repository) / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Write the benchmark models into a model repository."""
    p = argparse.ArgumentParser(description="Write benchmark ONNX models into a model repository.")
    p.add_argument("--model-repository", required=True, type=Path, help="repository folder (created if missing)")
    p.add_argument("--name", default="mlp", help="model name (default mlp)")
    args = p.parse_args(argv)
    print(save(mlp(), args.model_repository, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
