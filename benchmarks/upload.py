"""Uploading a model (RepositoryModelLoad with `file:` parameters) against loading the same files
from the repository, measured in the same run on the same server.

For each size, one ONNX model y = x @ W (W float32, `--sizes` MiB, as external data in
model.onnx.data) is written into the server's repository as model "ref" and kept in memory for
the uploads. A real `modelport serve` (explicit mode, its own process) then
  1. loads "ref" by name (RepositoryModelLoad without files: the files are already on disk);
  2. receives the files as "stub" from a minimal gRPC stub sending the serialized request (the
     transfer's floor: no client-side protobuf work);
  3. receives them as "up" from tritonclient.grpc's load_model(name, files=...), and as "mp" from
     modelport's Client.load_model(name, files=...);
timing each call, reading the server's own split (writing the files, then loading them) from its
`model_uploaded` log line, and sampling its resident memory (peak less before) during each call:

    .venv/bin/python benchmarks/upload.py --work /tmp/bench-upload --sizes 64,512,1536

The ratio upload / repository load is what sending the files costs on top of loading them; the
memory is what the server holds for the message while it writes the files.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from large_model import Sampler, _wait_for, modelport, status_kib  # noqa: E402

MIB = 2**20
WIDTH = 1024


def build(folder: Path, mib: int) -> dict[str, bytes]:
    """Write model.onnx + model.onnx.data (W is WIDTH x columns float32, `mib` MiB) into `folder`;
    return the upload's parameters."""
    columns = mib * MIB // (4 * WIDTH)
    weights = np.random.default_rng(0).standard_normal((WIDTH, columns), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, columns])],
        [numpy_helper.from_array(weights, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)  # fmt: skip
    return {f"file:1/{p.name}": p.read_bytes() for p in sorted(folder.iterdir())}


def timed(pid: int, call) -> tuple[float, int]:
    """(seconds, the server's peak resident memory during `call` less before it)."""
    before = status_kib(pid, "VmRSS")
    sampler = Sampler(pid)
    start = time.perf_counter()
    call()
    seconds = time.perf_counter() - start
    time.sleep(0.1)
    return seconds, max(sampler.stop() - before, 0)


def measure(work: Path, mib: int) -> dict:
    repo = work / f"repo-{mib}"
    shutil.rmtree(repo, ignore_errors=True)
    files = build(repo / "ref" / "1", mib)
    size = sum(len(data) for data in files.values())
    log_path = work / f"serve-{mib}.log"
    with open(log_path, "w") as log:
        command = [*modelport(), "serve", "--model-repository", str(repo), "--grpc-port", "0", "--http-port", "0",
                   "--metrics-port", "0", "--host", "127.0.0.1", "--model-control-mode", "explicit"]  # fmt: skip
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            port = _wait_for(log_path, r"listening on 127\.0\.0\.1:(\d+)", 120)
            import tritonclient.grpc as triton

            peer = triton.InferenceServerClient(f"127.0.0.1:{port}")
            ref_s, ref_mem = timed(server.pid, lambda: peer.load_model("ref"))
            stub_s, _ = timed(server.pid, _stub_upload(f"127.0.0.1:{port}", "stub", files))
            up_s, up_mem = timed(server.pid, lambda: peer.load_model("up", files=files))
            from modelport.client import Client

            with Client(f"127.0.0.1:{port}") as client:
                mp_s, _ = timed(server.pid, lambda: client.load_model("mp", files=files))
            x = np.ones((1, WIDTH), np.float32)
            tensor = triton.InferInput("x", [1, WIDTH], "FP32")
            tensor.set_data_from_numpy(x)
            same = np.array_equal(peer.infer("up", [tensor]).as_numpy("y"), peer.infer("ref", [tensor]).as_numpy("y"))
            peer.close()
        finally:
            server.terminate()
            server.wait(60)
    shutil.rmtree(repo, ignore_errors=True)
    server_side = re.findall(r"model_uploaded model=stub .*write_seconds=([\d.]+) seconds=([\d.]+)",
                             log_path.read_text())[0]  # fmt: skip
    return {"files_mib": round(size / MIB, 1), "repository_load_s": round(ref_s, 3),
            "minimal_stub_upload_s": round(stub_s, 3), "server_write_s": float(server_side[0]),
            "server_write_and_load_s": float(server_side[1]), "tritonclient_upload_s": round(up_s, 3),
            "modelport_client_upload_s": round(mp_s, 3), "stub_over_load": round(stub_s / ref_s, 2),
            "tritonclient_over_stub": round(up_s / stub_s, 2), "modelport_over_stub": round(mp_s / stub_s, 2),
            "stub_mib_per_s": round(size / MIB / stub_s, 1),
            "repository_load_peak_extra_rss_mib": round(ref_mem / MIB, 1),
            "upload_peak_extra_rss_mib": round(up_mem / MIB, 1), "upload_peak_over_files": round(up_mem / size, 2),
            "same_answers": same}  # fmt: skip


def _stub_upload(address: str, name: str, files: dict[str, bytes]):
    """A call sending RepositoryModelLoad as bytes serialized beforehand (the minimal gRPC stub)."""
    import grpc

    from modelport.protocol.generated import grpc_service_pb2 as pb

    request = pb.RepositoryModelLoadRequest(model_name=name)
    for key, data in files.items():
        request.parameters[key].bytes_param = data
    wire = request.SerializeToString()
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)])
    call = channel.unary_unary("/inference.GRPCInferenceService/RepositoryModelLoad")
    return lambda: call(wire)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-upload"))
    parser.add_argument("--sizes", default="64,512", help="weight sizes in MiB, comma-separated")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = [measure(args.work, int(size)) for size in args.sizes.split(",")]
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
