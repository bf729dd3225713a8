"""The request path without the network: the microseconds of Python one ModelInfer costs in
modelport's servicer (wired exactly as `modelport serve` wires it: tolerant parsing, error
mapping, codec, data plane, statistics, observers) and in the minimal stub's (decode, run inline,
encode), on the same model and request, plus a cProfile of modelport's share.

gRPC's own work (HTTP/2, the completion queue, the poller thread) is the same for both servers
and is left out, so the ratio here shows what modelport's layers add and where; the served
ratio (benchmarks/suite.py, mlp_vs_stub) dilutes it with that common cost.

    python benchmarks/request_path.py                       # seed-shaped MLP, batch 1
    python benchmarks/request_path.py --requests 50000 --profile 30
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models as bench_models  # noqa: E402  (benchmarks/models.py)
from minimal_stub import StubServicer  # noqa: E402

from modelport.protocol import codec  # noqa: E402
from modelport.protocol.generated import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from modelport.server.app import add_services, build_dataplane  # noqa: E402
from modelport.server.loader import LoaderSettings  # noqa: E402
from modelport.server.registry import ModelRegistry  # noqa: E402
from modelport.server.settings import ServerSettings  # noqa: E402

SERVICE = "inference.GRPCInferenceService"


class Capture:
    """Stands in for grpc.aio.Server while services are added: keeps the method handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict] = {}

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.handlers[service] = handlers

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass


class Context:
    """The little of grpc.aio.ServicerContext that ModelInfer uses on success."""

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code, details):
        raise RuntimeError(f"{code}: {details}")


async def calls(handler, data: bytes, n: int) -> float:
    """Seconds for `n` ModelInfer calls through `handler`: parse, handle, serialize."""
    context = Context()
    parse, handle, serialize = handler.request_deserializer, handler.unary_unary, handler.response_serializer
    start = time.perf_counter()
    for _ in range(n):
        serialize(await handle(parse(data), context))
    return time.perf_counter() - start


async def modelport_handler(repository: Path):
    settings = ServerSettings(model_repository=repository, grpc_port=0, metrics_port=0)
    registry = ModelRegistry(repository, LoaderSettings.of(settings))
    await registry.load_all()
    dataplane, quality = build_dataplane(settings, registry)
    capture = Capture()
    add_services(capture, dataplane, quality)
    threads = registry.get("mlp").scheduler.instances[0].model.options.intra_op_threads
    return capture.handlers[SERVICE]["ModelInfer"], threads, registry


def stub_handler(model: Path, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    capture = Capture()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(StubServicer("mlp", session, None), capture)
    return capture.handlers[SERVICE]["ModelInfer"]


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        path = bench_models.save(bench_models.mlp(), repository, "mlp")
        ours, threads, registry = await modelport_handler(repository)
        stub = stub_handler(path, threads)
        x = np.random.default_rng(0).standard_normal((args.batch, 30)).astype(np.float32)
        data = codec.build_request("mlp", {"x": x}).SerializeToString()
        await calls(ours, data, 2000)  # warm both up
        await calls(stub, data, 2000)
        times: dict[str, list[float]] = {"modelport": [], "stub": []}
        for _ in range(args.rounds):  # alternate, so drift of the machine hits both
            times["modelport"].append(await calls(ours, data, args.requests) / args.requests)
            times["stub"].append(await calls(stub, data, args.requests) / args.requests)
        best = {name: min(values) * 1e6 for name, values in times.items()}
        print(f"seed MLP, batch {args.batch}, {args.requests} requests x {args.rounds} rounds, "
              f"intra-op threads {threads}")
        print(f"  modelport  {best['modelport']:7.2f} us/request   (rounds: "
              + ", ".join(f"{t * 1e6:.2f}" for t in times["modelport"]) + ")")
        print(f"  stub       {best['stub']:7.2f} us/request   (rounds: "
              + ", ".join(f"{t * 1e6:.2f}" for t in times["stub"]) + ")")
        print(f"  modelport adds {best['modelport'] - best['stub']:.2f} us per request "
              f"({best['modelport'] / best['stub']:.2f}x the stub's Python work)")
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await calls(ours, data, args.requests)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.profile)
            print(out.getvalue())
        await registry.close()


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20000, help="requests per round (default 20000)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best is reported (default 3)")
    p.add_argument("--batch", type=int, default=1, help="rows per request (default 1)")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's top N functions by own time")
    asyncio.run(main_async(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
