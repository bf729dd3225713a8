"""Benchmark models: small ones built with onnx.helper (no TensorFlow), ResNet-50 from torchvision.

    python benchmarks/models.py --model-repository /tmp/bench-models                 # mlp (the default)
    python benchmarks/models.py --model-repository /tmp/bench-models --name all      # mlp, cnn, resnet50 (+ batched)

| name | what |
|---|---|
| `mlp` | the seed-1 tabular classifier's shape: x FP32 [N,30] -> 64 ReLU -> 32 ReLU -> 1 sigmoid |
| `cnn` | the seed-2 digits CNN as Keras exports it: x FP32 [N,8,8,1] (NHWC) -> conv 32 -> pool -> conv 64 -> pool -> dense 64 -> softmax 10 |
| `resnet50` | `torchvision.models.resnet50(weights=None)`: input FP32 [N,3,224,224] -> logits [N,1000] (needs torch + torchvision) |

Weights are random and seeded: the numbers mean nothing, the cost is that of the real model.
Besides `<name>/1/model.onnx`, `cnn` and `resnet50` also write folders for the batching targets,
the same model.onnx with a `config.pbtxt` (see `BATCHED`): `cnn_batched` and `resnet50_gpu_batched`.
"""  # noqa: E501 (a markdown table's rows cannot be wrapped)

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# onnx >= 1.23 writes IR version 14 by default; onnxruntime 1.31 reads up to 13.
IR_VERSION = 10
OPSET = 17

# Dynamic batching configs of the batching targets (suite.py). The delays were chosen by measuring
# (see suite.py's docstring): under closed-loop load the queue fills while a batch runs, so a short
# delay is enough, and a long one only adds latency when the load is light.
BATCHED = {
    # cnn_dynamic_batching: batch-1 requests at concurrency 32.
    "cnn_batched": ("cnn", "max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 500 }\n"),
    # resnet50_gpu: batch-1 requests at concurrency 64; batches of 32 leave a second batch to
    # form while one runs on the GPU (64 would take every outstanding request at once). The long
    # delay keeps every batch at 32 under that load: ONNX Runtime's CUDA provider spends ~100 ms
    # whenever the input shape changes (measured on an H100, whatever cudnn_conv_algo_search), so
    # with a 2 ms delay batches of varying size ran at ~160 ms each instead of ~10 ms.
    "resnet50_gpu_batched": ("resnet50",
                             "max_batch_size: 32\ndynamic_batching { max_queue_delay_microseconds: 100000 }\n"),
}


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


def cnn(size: int = 8, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """The seed-2 digits CNN in the layout Keras (via tf2onnx) exports it.

    x FP32 [N,8,8,1] NHWC -> Transpose to NCHW -> Conv 32 3x3 same + ReLU -> MaxPool 2 -> Conv 64
    3x3 same + ReLU -> MaxPool 2 -> Transpose back to NHWC -> Flatten (2*2*64 = 256) -> Gemm 64 +
    ReLU -> Gemm 10 -> Softmax -> y FP32 [N,10]. He-scaled random weights (seeded).
    """
    rng = np.random.default_rng(seed)

    def weight(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    flat = (size // 4) * (size // 4) * 64
    arrays = {
        "conv1_w": weight((32, 1, 3, 3), 9), "conv1_b": np.zeros(32, np.float32),
        "conv2_w": weight((64, 32, 3, 3), 32 * 9), "conv2_b": np.zeros(64, np.float32),
        "dense_w": weight((flat, 64), flat), "dense_b": np.zeros(64, np.float32),
        "out_w": weight((64, classes), 64), "out_b": np.zeros(classes, np.float32),
    }  # fmt: skip
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    pool = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = [
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv1_w", "conv1_b"], ["conv1"], **conv),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], **pool),
        helper.make_node("Conv", ["pool1", "conv2_w", "conv2_b"], ["conv2"], **conv),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("MaxPool", ["relu2"], ["pool2"], **pool),
        # Keras flattens NHWC: back to channels-last first, as tf2onnx's graph does.
        helper.make_node("Transpose", ["pool2"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Flatten", ["nhwc"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "dense_w", "dense_b"], ["dense"]),
        helper.make_node("Relu", ["dense"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "out_w", "out_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, size, size, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, classes])],
        initializer=[numpy_helper.from_array(a, name) for name, a in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def resnet50(seed: int = 0) -> onnx.ModelProto:
    """torchvision's ResNet-50 (random seeded weights, eval mode) through the TorchScript exporter:
    input FP32 [batch,3,224,224] -> logits FP32 [batch,1000], dynamic batch dimension."""
    try:
        import torch
        import torchvision
    except ImportError as exc:
        raise RuntimeError("the resnet50 benchmark model needs torch and torchvision "
                           f"(pip install torch torchvision): {exc}") from exc
    torch.manual_seed(seed)
    model = torchvision.models.resnet50(weights=None).eval()
    dummy = torch.randn(1, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet50.onnx"
        with torch.no_grad():
            torch.onnx.export(
                model, dummy, str(path), dynamo=False, opset_version=OPSET,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )  # fmt: skip
        exported = onnx.load(str(path))
    if exported.ir_version > IR_VERSION:
        exported.ir_version = IR_VERSION
    onnx.checker.check_model(exported)
    return exported


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {"mlp": mlp, "cnn": cnn, "resnet50": resnet50}


def save(model: onnx.ModelProto, repository: Path | str, name: str, version: int = 1) -> Path:
    """Write <repository>/<name>/<version>/model.onnx and return its path.

    The file is written beside and renamed in, so a server polling the repository never reads
    half of it.
    """
    folder = Path(repository) / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    fd, tmp = tempfile.mkstemp(prefix=".model-", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_batched(repository: Path | str, name: str) -> Path:
    """Write the batched twin `name` of BATCHED (same model.onnx, plus its config.pbtxt), from
    the already written base model; returns the config's path."""
    base, config = BATCHED[name]
    repository = Path(repository)
    source = repository / base / "1" / "model.onnx"
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing; write the '{base}' model first")
    folder = repository / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.onnx"
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)  # ResNet-50 is ~100 MB: share it where the file system can
    except OSError:
        shutil.copyfile(source, target)
    path = repository / name / "config.pbtxt"
    path.write_text(f'name: "{name}"\n' + config)
    return path


def check_loads(path: Path | str) -> None:
    """Load `path` in ONNX Runtime (CPU) and run one batch-1 inference; raise if the outputs are not
    finite (random weights that overflow would benchmark NaN arithmetic)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {}
    for arg in session.get_inputs():
        shape = [1 if not isinstance(d, int) or d < 0 else d for d in arg.shape]
        feed[arg.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for output in session.run(None, feed):
        if not np.all(np.isfinite(output)):
            raise ValueError(f"{path}: outputs are not finite")


def write(repository: Path | str, name: str) -> list[Path]:
    """Write model `name` (and its batched twins) into `repository`; returns the files written."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model '{name}'; expected one of {', '.join(BUILDERS)} or all")
    path = save(BUILDERS[name](), repository, name)
    check_loads(path)
    written = [path]
    for batched, (base, _) in BATCHED.items():
        if base == name:
            written.append(save_batched(repository, batched))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Write the benchmark models into a model repository."""
    p = argparse.ArgumentParser(description="Write benchmark ONNX models into a model repository.")
    p.add_argument("--model-repository", required=True, type=Path, help="repository folder (created if missing)")
    p.add_argument("--name", default="mlp", choices=[*BUILDERS, "all"],
                   help="model to write (default mlp); all: every model (resnet50 only when torch is installed)")
    args = p.parse_args(argv)
    names = list(BUILDERS) if args.name == "all" else [args.name]
    status = 0
    for name in names:
        try:
            written = write(args.model_repository, name)
        except RuntimeError as exc:  # resnet50 without torch: say so, write the others
            print(f"{name}: {exc}", file=sys.stderr)
            status = 1
            continue
        for path in written:
            print(path)
    return status


if __name__ == "__main__":
    sys.exit(main())
