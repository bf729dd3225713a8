"""The reference modelport measures itself against: the least a grpc.aio server can do to serve
one ONNX model over the KServe v2 protocol.

It implements ModelInfer (plus ServerLive/ServerReady/ModelReady/ModelMetadata so that
`modelport bench` and the clients can drive it) for ONE model: raw inputs are read with
np.frombuffer, the ONNX Runtime session runs in a thread pool (run_in_executor, as modelport
runs most models off the event loop) or, with --inline, on the event loop itself (as modelport
runs models whose warm-up run takes under 50 us), outputs go back raw. No validation, no metrics, no typed contents,
no BYTES. The gap between this and `modelport serve` is the cost of modelport's own layers.

    python benchmarks/minimal_stub.py --model models/mlp/1/model.onnx --name mlp --port 0
    # listening on 127.0.0.1:PORT
    modelport bench --url 127.0.0.1:PORT --model mlp --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnxruntime as ort

from modelport.protocol.generated import grpc_service_pb2 as pb
from modelport.protocol.generated import grpc_service_pb2_grpc as pb_grpc

DATATYPES = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
}  # fmt: skip
NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip
WIRE = {np.dtype(v): k for k, v in NUMPY.items()}
MIB = 1024 * 1024


class StubServicer(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService for one session; everything else is UNIMPLEMENTED."""

    def __init__(self, name: str, session: ort.InferenceSession, executor: ThreadPoolExecutor | None) -> None:
        self.name, self.session, self.executor = name, session, executor  # no executor: run inline
        self.outputs = [o.name for o in session.get_outputs()]
        tensor = pb.ModelMetadataResponse.TensorMetadata
        shape = lambda arg: [d if isinstance(d, int) else -1 for d in arg.shape]  # noqa: E731
        self.metadata = pb.ModelMetadataResponse(
            name=name,
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=[tensor(name=a.name, datatype=DATATYPES[a.type], shape=shape(a)) for a in session.get_inputs()],
            outputs=[tensor(name=a.name, datatype=DATATYPES[a.type], shape=shape(a)) for a in session.get_outputs()],
        )

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name == self.name)

    async def ModelMetadata(self, request, context):
        if request.name != self.name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model '{request.name}' is not found")
        return self.metadata

    async def ModelInfer(self, request, context):
        if request.model_name != self.name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model '{request.model_name}' is not found")
        feed = {
            t.name: np.frombuffer(raw, dtype=NUMPY[t.datatype]).reshape(t.shape)
            for t, raw in zip(request.inputs, request.raw_input_contents)
        }
        names = [o.name for o in request.outputs] or self.outputs
        try:
            if self.executor is None:
                results = self.session.run(names, feed)
            else:
                results = await asyncio.get_running_loop().run_in_executor(self.executor, self.session.run, names, feed)
        except Exception as exc:  # noqa: BLE001 - a reference server still answers
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        response = pb.ModelInferResponse(model_name=self.name, model_version="1", id=request.id)
        for name, array in zip(names, results):
            response.outputs.add(name=name, datatype=WIRE[array.dtype], shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response


def _cpus() -> int:
    """The CPUs modelport would give one model instance: affinity capped by the cgroup quota."""
    try:
        from modelport.server.cpus import usable_cpus
    except ImportError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return usable_cpus()


PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


async def serve(
    model: str, name: str, host: str, port: int, threads: int, intra_op_threads: int, provider: str = "cpu",
    inline: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM; prints 'listening on HOST:PORT' once bound."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(model, sess_options=options, providers=PROVIDERS[provider])
    executor = None if inline else ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stub-session")
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", 64 * MIB), ("grpc.max_send_message_length", 64 * MIB)]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(StubServicer(name, session, executor), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    if executor is not None:
        executor.shutdown(wait=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description="Minimal grpc.aio KServe v2 server for one ONNX model "
                                            "(benchmark reference).")
    p.add_argument("--model", required=True, help="path to model.onnx")
    p.add_argument("--name", required=True, help="model name clients use")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    p.add_argument("--threads", type=int, default=1,
                   help="session.run threads (default 1, as one modelport model instance)")
    p.add_argument("--intra-op-threads", type=int, default=_cpus(),
                   help="ONNX Runtime intra-op threads (default: the usable CPUs, as modelport sizes one instance)")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu",
                   help="ONNX Runtime execution provider (default cpu)")
    p.add_argument("--inline", action="store_true",
                   help="run the session on the event loop instead of a thread "
                        "(modelport does so for sub-50-us models)")
    args = p.parse_args(argv)
    asyncio.run(serve(args.model, args.name, args.host, args.port, args.threads, args.intra_op_threads,
                      args.provider, args.inline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
