"""The core RPCs end to end: a real server on port 0, the modelport client and tritonclient."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from modelport.client import AsyncClient, Client, InferenceServerError
from modelport.server.background import BackgroundServer
from tests import models


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    models.save(models.add_mul(), root, "add_mul")
    for version, factor in ((1, 2.0), (2, 3.0), (3, 4.0)):
        models.save(models.scale(factor), root, "scale", version)
    models.save(models.scale(5.0), root, "scale_all", 1, config='version_policy: { all: {} }\n')
    models.save(models.scale(6.0), root, "scale_all", 2)
    models.save(models.matmul_chain(10), root, "slow")
    return root


@pytest.fixture(scope="module")
def server(repo: Path):
    with BackgroundServer(repo) as running:
        yield running


def reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same model run in-process by ONNX Runtime."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_health_and_metadata_both_clients(server) -> None:
    client = Client(server.address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("add_mul") and not client.is_model_ready("missing")
    meta = client.server_metadata()
    assert meta.name == "modelport" and "classification" in meta.extensions
    peer = triton.InferenceServerClient(server.address)
    assert peer.is_server_live() and peer.is_server_ready() and peer.is_model_ready("add_mul")
    assert peer.get_server_metadata().name == "modelport"
    upstream_meta = peer.get_model_metadata("add_mul")
    assert upstream_meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in upstream_meta.inputs] == [
        ("a", "FP32", [-1, 4]),
        ("b", "FP32", [-1, 4]),
    ]
    ours = client.model_metadata("add_mul")
    assert [(t.name, t.shape) for t in ours.outputs] == [("sum", (-1, 4)), ("prod", (-1, 4))]


def test_outputs_equal_in_process_onnxruntime(server, repo: Path) -> None:
    rng = np.random.default_rng(0)
    feeds = {"a": rng.normal(size=(5, 4)).astype(np.float32), "b": rng.normal(size=(5, 4)).astype(np.float32)}
    expected = reference(repo / "add_mul" / "1" / "model.onnx", feeds)
    ours = Client(server.address).infer("add_mul", feeds)
    peer = triton.InferenceServerClient(server.address)
    inputs = []
    for name, array in feeds.items():
        tensor = triton.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = peer.infer("add_mul", inputs)
    for name, array in expected.items():
        np.testing.assert_array_equal(ours[name], array)
        np.testing.assert_array_equal(result.as_numpy(name), array)


def test_versions_latest_policy_and_explicit(server) -> None:
    client = Client(server.address)
    x = np.ones((1, 3), np.float32)
    assert client.model_metadata("scale").versions == ("3",)  # default policy: latest 1
    np.testing.assert_array_equal(client.predict("scale", x), 4 * x)
    np.testing.assert_array_equal(client.predict("scale", x, version="3"), 4 * x)
    with pytest.raises(InferenceServerError) as err:
        client.predict("scale", x, version="1")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert "served versions: 3" in err.value.message
    assert client.model_metadata("scale_all").versions == ("1", "2")
    np.testing.assert_array_equal(client.predict("scale_all", x, version="1"), 5 * x)
    np.testing.assert_array_equal(client.predict("scale_all", x), 6 * x)
    assert client.is_model_ready("scale_all", "1") and not client.is_model_ready("scale", "1")
    response = triton.InferenceServerClient(server.address).infer("scale_all", [_triton_input("x", x)],
                                                                  model_version="1")
    assert response.get_response().model_version == "1"


def _triton_input(name: str, array: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def test_model_handle_predict_and_chunks(server) -> None:
    model = Client(server.address).model("scale")
    x = np.arange(30, dtype=np.float64).reshape(10, 3)  # float64 is cast to the model's FP32
    np.testing.assert_array_equal(model.predict(x, batch_size=3), (4 * x).astype(np.float32))
    assert model.is_ready() and model.metadata().name == "scale"
    with pytest.raises(ValueError, match="one input and one output"):
        Client(server.address).predict("add_mul", x)


def test_async_client(server) -> None:
    async def calls():
        async with AsyncClient(server.address, timeout=10) as client:
            ready = await client.is_server_ready()
            results = await asyncio.gather(*(client.predict("scale", np.full((1, 3), i)) for i in range(20)))
            meta = await client.model("scale").metadata()
            try:
                await client.infer("nope", {"x": np.zeros((1, 3), np.float32)})
            except InferenceServerError as exc:
                code = exc.code
            return ready, results, meta, code

    ready, results, meta, code = asyncio.run(calls())
    assert ready and meta.versions == ("3",) and code == grpc.StatusCode.NOT_FOUND
    for i, y in enumerate(results):
        np.testing.assert_array_equal(y, np.full((1, 3), 4 * i, np.float32))


def test_deadline_is_sent(server) -> None:
    """A call slower than its deadline ends DEADLINE_EXCEEDED; the client default applies too."""
    x = np.ones((600, 600), np.float32)  # ten 600x600 matmuls: tens of milliseconds
    with pytest.raises(InferenceServerError) as err:
        Client(server.address).infer("slow", {"x": x}, timeout=0.002)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(InferenceServerError) as err:
        Client(server.address, timeout=0.002).infer("slow", {"x": x})
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert Client(server.address, timeout=30).infer("slow", {"x": x})["y"].shape == (600, 600)


def test_grpc_health_overall_and_per_model(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "add_mul", "scale"):
            assert (stub.Check(health_pb2.HealthCheckRequest(service=service)).status
                    == health_pb2.HealthCheckResponse.SERVING)
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no_such_model"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_services(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(database)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        assert "ModelInfer" in [m.name for m in service.methods]
        request = pool.FindMessageTypeByName("inference.ModelInferRequest")
        assert request.fields_by_name["raw_input_contents"].number == 7


def test_failed_model_makes_server_unready_but_others_serve(tmp_path: Path, start_server) -> None:
    models.save(models.scale(2.0), tmp_path, "good")
    broken = tmp_path / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    address = start_server(tmp_path)
    client = Client(address)
    assert not client.is_server_ready()
    assert client.is_model_ready("good") and not client.is_model_ready("broken")
    np.testing.assert_array_equal(client.predict("good", np.ones((1, 3))), np.full((1, 3), 2, np.float32))
    with pytest.raises(InferenceServerError) as err:
        client.predict("broken", np.ones((1, 3)))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "broken" in err.value.message
    # Health: readiness ("") says NOT_SERVING, liveness stays SERVING (no restart loop in Kubernetes).
    status = health_pb2.HealthCheckResponse
    with grpc.insecure_channel(address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        assert check(health_pb2.HealthCheckRequest(service="")).status == status.NOT_SERVING
        assert check(health_pb2.HealthCheckRequest(service="modelport.liveness")).status == status.SERVING


def test_unsupported_extensions_answer_unimplemented(server) -> None:
    peer = triton.InferenceServerClient(server.address)
    with pytest.raises(Exception, match="UNIMPLEMENTED"):
        peer.get_system_shared_memory_status()


def test_declared_rpcs_modelport_lacks_name_themselves_and_the_alternative(server, caplog) -> None:
    """perf_analyzer's `--shared-memory system` calls SystemSharedMemoryRegister: UNIMPLEMENTED with
    a message naming the RPC and what to do instead, and one log line per call, no traceback."""
    peer = triton.InferenceServerClient(server.address)
    calls = {
        "SystemSharedMemoryRegister": lambda: peer.register_system_shared_memory("r", "/shm", 64),
        "SystemSharedMemoryStatus": peer.get_system_shared_memory_status,
        "CudaSharedMemoryRegister": lambda: peer.register_cuda_shared_memory("r", b"", 0, 64),
        "TraceSetting": peer.get_trace_settings,
        "LogSettings": peer.get_log_settings,
    }
    with caplog.at_level("INFO", logger="modelport"):
        for name, call in calls.items():
            with pytest.raises(triton.InferenceServerException) as err:
                call()
            assert err.value.status() == "StatusCode.UNIMPLEMENTED", name
            assert name in err.value.message() and "modelport" in err.value.message()
        with grpc.insecure_channel(server.address) as channel:
            from modelport.protocol.generated import grpc_service_pb2 as pb
            from modelport.protocol.generated import grpc_service_pb2_grpc as pb_grpc

            with pytest.raises(grpc.RpcError) as rpc:
                pb_grpc.GRPCInferenceServiceStub(channel).SystemSharedMemoryRegister(
                    pb.SystemSharedMemoryRegisterRequest(name="r", key="/shm", byte_size=64))
            assert rpc.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "send the tensors in the request" in rpc.value.details()
    lines = [r for r in caplog.records if "UNIMPLEMENTED" in r.getMessage()]
    assert len(lines) == len(calls) + 1 and not any(r.exc_info for r in caplog.records)
