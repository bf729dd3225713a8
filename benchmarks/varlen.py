"""Variable-length batching: text requests of mixed lengths, dynamic batching with padding
(config parameters pad_inputs / pad_outputs / pad_buckets) against no dynamic batching.

A transformer-ish encoder built with onnx.helper (no TensorFlow): token embedding (vocab 30522)
plus position embedding and LayerNorm, `--blocks` BERT encoder blocks (4-head self-attention
with the attention mask as an additive bias, residual, LayerNorm, a GELU feed-forward of 4x
hidden, residual, LayerNorm), a per-token head (`token_logits` [batch, seq, 8]) and masked mean
pooling into a 2-class head (`logits`): BERT-tiny is hidden 128 with 2 blocks, BERT-mini hidden
256 with 4. Weights are random (seeded): the numbers mean nothing, the cost is that of the shape.

Each side is a `modelport serve` subprocess on a free port serving the same model.onnx: `batched`
with dynamic_batching and the pad parameters, `unbatched` without dynamic_batching; both with
the same instances and intra-op threads (`--instances`, `--intra-op-threads`; by default the
server's: one instance with a thread per CPU). The load is
batch-1 requests whose lengths are drawn uniformly from --min-len..--max-len for every call
(requests pre-serialized, one per length), `--concurrency` outstanding over grpc.aio channels
from this process, closed loop; items/s counts answers inside the window after the warm-up.
Sides alternate for `--repeat` rounds and the median round of each is reported, with the CPU
time the server process and this client spent per answer (a measure of cost that other jobs on
the machine disturb far less than items/s) and the load average. `--in-process`
drives the server's data plane in this process instead (no gRPC, no client): the ceiling of what
batching can gain, with the same decode-free inputs on both sides.

    python benchmarks/varlen.py                                   # hidden 256, 2 blocks, 16-128 tokens
    python benchmarks/varlen.py --hidden 128 --instances 2        # 2 instances of 1 thread, both sides
    python benchmarks/varlen.py --hidden 64 --seconds 20 --repeat 3 --json varlen.json
    python benchmarks/varlen.py --hidden 64 --in-process
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import Server  # noqa: E402  (benchmarks/compare.py)

from modelport.client import Client, bench  # noqa: E402
from modelport.protocol.types import InferenceRequest  # noqa: E402
from modelport.server.dataplane import DataPlane  # noqa: E402
from modelport.server.registry import ModelRegistry  # noqa: E402

IR_VERSION, OPSET = 10, 17  # onnxruntime 1.31 reads IR versions up to 13
NAME = "encoder"
METHOD = "/inference.GRPCInferenceService/ModelInfer"


# ---------------------------------------------------------------- the model


class _Graph:
    """Nodes and initializers of a graph being built."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, array) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], scale: float | None = None) -> str:
        scale = np.sqrt(1.0 / shape[0]) if scale is None else scale
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attributes))
        return output


def encoder(vocab: int = 30522, hidden: int = 256, blocks: int = 2, heads: int = 4, max_len: int = 512,
            classes: int = 2, token_classes: int = 8, seed: int = 0) -> onnx.ModelProto:  # fmt: skip
    """input_ids, attention_mask INT64 [batch, seq] -> logits FP32 [batch, classes] (masked mean
    pooling) and token_logits FP32 [batch, seq, token_classes]. Padding with mask 0 changes no
    real position's result: padded keys get -1e9 before the softmax, pooling counts mask-1 tokens."""
    g = _Graph(seed)
    g.const("zero", np.array(0, np.int64))
    g.const("one", np.array(1, np.int64))
    g.const("one_f", np.array(1.0, np.float32))
    g.const("minus_big", np.array(-1e9, np.float32))
    g.const("scale", np.array(1 / np.sqrt(hidden // heads), np.float32))
    g.const("split_heads", np.array([0, 0, heads, hidden // heads], np.int64))
    g.const("merge_heads", np.array([0, 0, hidden], np.int64))
    g.const("gamma", np.ones(hidden, np.float32))
    g.const("beta", np.zeros(hidden, np.float32))
    g.const("half", np.array(0.5, np.float32))
    g.const("sqrt_two", np.array(np.sqrt(2), np.float32))
    # Embeddings: token + position (positions 0..seq-1).
    g.op("Gather", [g.weight("token_embedding", (vocab, hidden), 0.02), "input_ids"], "tokens")
    g.op("Shape", ["input_ids"], "ids_shape")
    g.op("Gather", ["ids_shape", "one"], "seq_len", axis=0)
    g.op("Range", ["zero", "seq_len", "one"], "positions")
    g.op("Gather", [g.weight("position_embedding", (max_len, hidden), 0.02), "positions"], "position_vectors")
    g.op("Add", ["tokens", "position_vectors"], "embedded")
    h = g.op("LayerNormalization", ["embedded", "gamma", "beta"], "embedded_norm", axis=-1)
    # The mask as an additive attention bias [batch, 1, 1, seq]: 0 where real, -1e9 where padded.
    g.op("Cast", ["attention_mask"], "mask", to=TensorProto.FLOAT)
    g.op("Sub", ["one_f", "mask"], "padded")
    g.op("Mul", ["padded", "minus_big"], "bias_2d")
    g.op("Unsqueeze", ["bias_2d", g.const("axes_1_2", np.array([1, 2], np.int64))], "bias")
    for b in range(blocks):
        h = _block(g, f"block{b}_", h, hidden)
    g.op("MatMul", [h, g.weight("token_head", (hidden, token_classes))], "token_logits")
    g.op("Unsqueeze", ["mask", g.const("last_axis", np.array([-1], np.int64))], "mask_3d")
    g.op("Mul", [h, "mask_3d"], "masked")
    seq_axis = g.const("seq_axis", np.array([1], np.int64))
    g.op("ReduceSum", ["masked", seq_axis], "summed", keepdims=0)
    g.op("ReduceSum", ["mask", seq_axis], "count", keepdims=1)
    g.op("Div", ["summed", "count"], "pooled")
    g.op("MatMul", ["pooled", g.weight("classifier", (hidden, classes))], "logits")
    graph = helper.make_graph(
        g.nodes, NAME,
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
         for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
         helper.make_tensor_value_info("token_logits", TensorProto.FLOAT, ["batch", "seq", token_classes])],
        initializer=g.initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def _block(g: _Graph, p: str, h: str, hidden: int) -> str:
    """Self-attention (mask bias), residual, LayerNorm, GELU feed-forward, residual, LayerNorm."""
    projected = {}
    for part, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        g.op("MatMul", [h, g.weight(p + part + "_w", (hidden, hidden))], p + part)
        g.op("Reshape", [p + part, "split_heads"], p + part + "_heads")
        projected[part] = g.op("Transpose", [p + part + "_heads"], p + part + "_t", perm=perm)
    g.op("MatMul", [projected["q"], projected["k"]], p + "scores")
    g.op("Mul", [p + "scores", "scale"], p + "scaled")
    g.op("Add", [p + "scaled", "bias"], p + "biased")
    g.op("Softmax", [p + "biased"], p + "probs", axis=-1)
    g.op("MatMul", [p + "probs", projected["v"]], p + "context")
    g.op("Transpose", [p + "context"], p + "context_t", perm=[0, 2, 1, 3])
    g.op("Reshape", [p + "context_t", "merge_heads"], p + "context_m")
    g.op("MatMul", [p + "context_m", g.weight(p + "o_w", (hidden, hidden))], p + "attended")
    g.op("Add", [h, p + "attended"], p + "residual1")
    g.op("LayerNormalization", [p + "residual1", "gamma", "beta"], p + "norm1", axis=-1)
    g.op("MatMul", [p + "norm1", g.weight(p + "ff1_w", (hidden, 4 * hidden))], p + "ff1")
    g.op("Add", [p + "ff1", g.const(p + "ff1_bias", np.zeros(4 * hidden, np.float32))], p + "ff1_b")
    # GELU as BERT computes it, x * 0.5 * (1 + erf(x / sqrt 2)) (ONNX Runtime fuses it into one op)
    g.op("Div", [p + "ff1_b", "sqrt_two"], p + "ff1_scaled")
    g.op("Erf", [p + "ff1_scaled"], p + "ff1_erf")
    g.op("Add", [p + "ff1_erf", "one_f"], p + "ff1_erf1")
    g.op("Mul", [p + "ff1_b", p + "ff1_erf1"], p + "ff1_x")
    g.op("Mul", [p + "ff1_x", "half"], p + "ff1_gelu")
    g.op("MatMul", [p + "ff1_gelu", g.weight(p + "ff2_w", (4 * hidden, hidden))], p + "ff2")
    g.op("Add", [p + "norm1", p + "ff2"], p + "residual2")
    return g.op("LayerNormalization", [p + "residual2", "gamma", "beta"], p + "out", axis=-1)


# ---------------------------------------------------------------- repositories and requests


def common_config(args: argparse.Namespace) -> str:
    """What both sides' config.pbtxt share: max_batch_size, instances, intra-op threads."""
    text = f"max_batch_size: {args.max_batch_size}\n"
    if args.instances:
        text += f"instance_group {{ count: {args.instances} kind: KIND_CPU }}\n"
    if args.intra_op_threads:
        text += f'parameters {{ key: "intra_op_thread_count" value {{ string_value: "{args.intra_op_threads}" }} }}\n'
    return text


def batched_config(args: argparse.Namespace) -> str:
    """config.pbtxt of the batched side: dynamic batching with the pad parameters."""
    buckets = f'parameters {{ key: "pad_buckets" value {{ string_value: "{args.buckets}" }} }}\n'
    buckets = buckets if args.buckets else ""
    return (
        common_config(args)
        + f"dynamic_batching {{ max_queue_delay_microseconds: {args.delay_us} }}\n"
        'parameters { key: "pad_inputs" value { string_value: "input_ids:0=0, attention_mask:0=0" } }\n'
        'parameters { key: "pad_outputs" value { string_value: "token_logits:0" } }\n' + buckets
    )


def write_repositories(work: Path, args: argparse.Namespace) -> dict[str, Path]:
    """WORK/{batched,unbatched}/encoder/1/model.onnx (one file, linked) with their configs."""
    model = encoder(hidden=args.hidden, blocks=args.blocks)
    configs = {"batched": batched_config(args), "unbatched": common_config(args)}
    roots, source = {}, None
    for label, config in configs.items():
        folder = work / label / NAME / "1"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.onnx"
        if source is None:
            onnx.save(model, path)
            source = path
        elif not path.exists():
            os.link(source, path)
        (work / label / NAME / "config.pbtxt").write_text(config)
        roots[label] = work / label
    return roots


def request_inputs(lengths: Sequence[int], vocab: int = 30522, seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    """One batch-1 request's inputs per length: random token ids, every token real (mask 1)."""
    rng = np.random.default_rng(seed)
    return {length: {"input_ids": rng.integers(1, vocab, (1, length)).astype(np.int64),
                     "attention_mask": np.ones((1, length), np.int64)} for length in lengths}  # fmt: skip


def serialized_requests(inputs: dict[int, dict[str, np.ndarray]]) -> dict[int, bytes]:
    """The same as ModelInferRequest bytes, to send over and over."""
    return {length: bench.infer_request(NAME, arrays) for length, arrays in inputs.items()}


# ---------------------------------------------------------------- load


@dataclass
class SideResult:
    """One side's round: answers per second inside the window, latency, and what the server did."""

    label: str
    items_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    tokens_per_s: float
    rows_per_run: float  # inference_count / execution_count over the whole round (warm-up included)
    server_cpu_ms: float  # CPU time of the server process per answer in the window (all its threads)
    client_cpu_ms: float  # CPU time of this process per answer in the window (0 in process: all is server)
    load: float  # the machine's 1-minute load average at the end of the round


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of process `pid`, or of this process."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def window_cpu(pid: int | None, warmup: float, seconds: float) -> tuple[float, float]:
    """CPU seconds of the server process (`pid`; None: none) and of this one inside the window."""
    await asyncio.sleep(warmup)
    server, client = (cpu_seconds(pid) if pid else 0.0), cpu_seconds()
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - server if pid else 0.0), cpu_seconds() - client


async def closed_loop(address: str, requests: dict[int, bytes], concurrency: int, warmup: float,
                      seconds: float, seed: int = 1, server_pid: int | None = None,
                      ) -> tuple[list[float], list[int], int, tuple[float, float]]:  # fmt: skip
    """`concurrency` workers each sending a request of a random length as soon as the last one is
    answered; the latencies and lengths of the answers inside the window, the errors, and the CPU
    seconds of the server (`server_pid`) and of this process inside the window."""
    lengths = list(requests)
    channels = [grpc.aio.insecure_channel(address, options=bench.CHANNEL_OPTIONS)
                for _ in range(-(-concurrency // bench.REQUESTS_PER_CHANNEL))]  # fmt: skip
    calls = [channel.unary_unary(METHOD) for channel in channels]
    await asyncio.gather(*(channel.channel_ready() for channel in channels))
    start = time.perf_counter() + warmup
    end = start + seconds
    latencies: list[float] = []
    answered: list[int] = []
    errors = 0

    async def worker(index: int) -> None:
        nonlocal errors
        rng, call = random.Random(seed * 1000 + index), calls[index // bench.REQUESTS_PER_CHANNEL]
        while (sent := time.perf_counter()) < end:
            length = rng.choice(lengths)
            try:
                await call(requests[length], timeout=60)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            done = time.perf_counter()
            if start <= done <= end:
                latencies.append(done - sent)
                answered.append(length)

    cpu = asyncio.ensure_future(window_cpu(server_pid, warmup, seconds))
    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        for channel in channels:
            await channel.close()
    return latencies, answered, errors, await cpu


def run_side(label: str, root: Path, requests: dict[int, bytes], args: argparse.Namespace) -> SideResult:
    """Serve `root` with `modelport serve`, load it, read its statistics, stop it."""
    command = [sys.executable, "-m", "modelport.client.cli", "serve", "--model-repository", str(root),
               "--grpc-port", "0", "--metrics-port", "0", "--host", "127.0.0.1", "--log-level", "INFO"]  # fmt: skip
    with Server(command, label, start_timeout=300) as server:
        try:
            _wait_ready(server)
            latencies, answered, errors, (server_cpu, client_cpu) = asyncio.run(
                closed_loop(server.address, requests, args.concurrency, args.warmup, args.seconds,
                            server_pid=server.proc.pid)
            )
            with Client(server.address, timeout=30) as client:
                stats = client.model_statistics(NAME).model_stats[0]
        except Exception as exc:
            raise RuntimeError(f"{label}: {exc}; the server's last lines:\n" + "".join(server.lines[-30:])) from exc
    if not latencies:
        raise RuntimeError(f"{label}: no request succeeded ({errors} errors)")
    ms = np.asarray(latencies) * 1000
    return SideResult(
        label, len(latencies) / args.seconds, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), errors,
        sum(answered) / args.seconds, stats.inference_count / max(stats.execution_count, 1),
        server_cpu * 1000 / len(latencies), client_cpu * 1000 / len(latencies), os.getloadavg()[0],
    )  # fmt: skip


def run_in_process(label: str, root: Path, inputs: dict[int, dict[str, np.ndarray]],
                   args: argparse.Namespace) -> SideResult:  # fmt: skip
    """The same closed loop against the data plane in this process (no gRPC, no codec)."""

    async def run() -> tuple[list[float], list[int], float, tuple[int, int]]:
        registry = ModelRegistry(root)
        await registry.load_all()
        plane = DataPlane(registry)
        lengths, latencies, answered = list(inputs), [], []
        start = time.perf_counter() + args.warmup
        end = start + args.seconds
        tensors = {n: {k: ("INT64", a) for k, a in arrays.items()} for n, arrays in inputs.items()}

        async def worker(index: int) -> None:
            rng = random.Random(1000 + index)
            while (sent := time.perf_counter()) < end:
                length = rng.choice(lengths)
                await plane.infer(InferenceRequest(NAME, "", "", dict(tensors[length])))
                if start <= (done := time.perf_counter()) <= end:
                    latencies.append(done - sent)
                    answered.append(length)

        try:
            cpu = asyncio.ensure_future(window_cpu(None, args.warmup, args.seconds))
            await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
            stats = plane.model_version(NAME).stats
            return latencies, answered, (await cpu)[1], (stats.inference_count, stats.execution_count)
        finally:
            await registry.close()

    latencies, answered, cpu, (rows, runs) = asyncio.run(run())
    ms = np.asarray(latencies) * 1000
    return SideResult(
        label, len(latencies) / args.seconds, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), 0,
        sum(answered) / args.seconds, rows / max(runs, 1), cpu * 1000 / len(latencies), 0.0, os.getloadavg()[0],
    )  # fmt: skip


def _wait_ready(server: Server, timeout: float = 120.0) -> None:
    with Client(server.address, timeout=10) as client:
        deadline = time.monotonic() + timeout
        while not client.is_model_ready(NAME):
            if time.monotonic() > deadline or server.proc.poll() is not None:
                raise RuntimeError(f"{server.label}: model not ready:\n" + "".join(server.lines[-30:]))
            time.sleep(0.2)


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--hidden", type=int, default=256, help="hidden width (default 256)")
    p.add_argument("--blocks", type=int, default=2, help="encoder blocks (default 2)")
    p.add_argument("--min-len", type=int, default=16, help="shortest request in tokens (default 16)")
    p.add_argument("--max-len", type=int, default=128, help="longest request in tokens (default 128)")
    p.add_argument("--concurrency", type=int, default=16, help="requests outstanding (default 16)")
    p.add_argument("--max-batch-size", type=int, default=16, help="batched side's max_batch_size (default 16)")
    p.add_argument("--delay-us", type=int, default=1000,
                   help="batched side's max_queue_delay_microseconds (default 1000)")
    p.add_argument("--buckets", default="32,64,96,128",
                   help="batched side's pad_buckets ('' for none; default 32,64,96,128)")
    p.add_argument("--instances", type=int, default=0,
                   help="instance_group count of both sides (default: the server's, one)")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="intra_op_thread_count of both sides (default: the server's, CPUs / instances)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round (default 10)")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default 3)")
    p.add_argument("--repeat", type=int, default=2, help="rounds per side, alternating (default 2)")
    p.add_argument("--sides", default="batched,unbatched", help="which sides, in order (default both)")
    p.add_argument("--in-process", action="store_true",
                   help="drive the data plane in this process instead of `modelport serve` over gRPC")
    p.add_argument("--work", type=Path, help="folder for the repositories (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure both sides and print items/s and the ratio."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="varlen-") as tmp:
        roots = write_repositories(args.work or Path(tmp), args)
        inputs = request_inputs(range(args.min_len, args.max_len + 1))
        requests = serialized_requests(inputs)
        sides = [s for s in args.sides.split(",") if s]
        runs: dict[str, list[SideResult]] = {label: [] for label in sides}
        for round_ in range(args.repeat):
            for label in sides:
                if args.in_process:
                    result = run_in_process(label, roots[label], inputs, args)
                else:
                    result = run_side(label, roots[label], requests, args)
                runs[label].append(result)
                print(f"round {round_ + 1} {label:>9}: {result.items_per_s:7.1f} items/s, "
                      f"{result.tokens_per_s:8.0f} tokens/s, p50 {result.p50_ms:6.1f} ms, p99 {result.p99_ms:6.1f} ms, "
                      f"{result.rows_per_run:.2f} rows per run, CPU per item: server {result.server_cpu_ms:.2f} ms, "
                      f"client {result.client_cpu_ms:.2f} ms, load {result.load:.1f}, {result.errors} errors",
                      flush=True)  # fmt: skip
    median = {label: sorted(r, key=lambda x: x.items_per_s)[len(r) // 2] for label, r in runs.items()}
    summary = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "median": {label: asdict(r) for label, r in median.items()},
               "runs": {label: [asdict(r) for r in rs] for label, rs in runs.items()}}  # fmt: skip
    if {"batched", "unbatched"} <= set(median):
        ratio = median["batched"].items_per_s / median["unbatched"].items_per_s
        summary["ratio"] = round(ratio, 3)
        print(f"batched / unbatched: {ratio:.2f}x ({median['batched'].items_per_s:.1f} vs "
              f"{median['unbatched'].items_per_s:.1f} items/s, medians of {args.repeat})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
