"""The HTTP/REST binding through the real upstream `tritonclient.http` (unchanged) and plain HTTP:
health, metadata, config, statistics, repository, inference with JSON and binary tensors of
every datatype, requested outputs, classification, deadlines, errors and auth — the cases the
gRPC conformance tests cover, on the same server and data plane."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from onnx import TensorProto
from tritonclient.utils import InferenceServerException

from modelport.server.background import BackgroundServer
from tests import models
from tests.server.test_datatypes import LABELS, ONNX_TYPES, assert_exact, model_name, values

A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.array([[2, 2, 2, 2], [0, 1, 0, 1]], dtype=np.float32)
JSON_TYPES = [dt for dt in ONNX_TYPES if dt != "FP16"]  # tritonclient sends FP16 binary only


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("http-repo")
    for datatype, onnx_type in ONNX_TYPES.items():
        models.save(models.identity(onnx_type), root, model_name(datatype))
    models.save(models.add_mul(), root, "add_mul")
    models.save(models.scale(1.0, width=3), root, "classifier")
    (root / "classifier" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return root


@pytest.fixture(scope="module")
def peer(server: BackgroundServer) -> Iterator[triton.InferenceServerClient]:
    upstream = triton.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=30)
    yield upstream
    upstream.close()


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> triton.InferInput:
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def call(url: str, method: str = "GET", body: dict | bytes | None = None, headers: dict | None = None):
    """(status, parsed JSON body or raw bytes) of one plain HTTP request."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw


# ---------------------------------------------------------------- health, metadata, config, stats


def test_health_metadata_config_and_repository(peer: triton.InferenceServerClient) -> None:
    assert peer.is_server_live() and peer.is_server_ready()
    assert peer.is_model_ready("add_mul") and peer.is_model_ready("add_mul", "1")
    assert not peer.is_model_ready("nope")
    server = peer.get_server_metadata()
    assert server["name"] == "modelport" and "classification" in server["extensions"]
    meta = peer.get_model_metadata("add_mul")
    assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "a", "datatype": "FP32", "shape": [-1, 4]},
                              {"name": "b", "datatype": "FP32", "shape": [-1, 4]}]  # fmt: skip
    assert peer.get_model_metadata("add_mul", "1") == meta
    config = peer.get_model_config("add_mul")
    assert config["name"] == "add_mul" and [i["name"] for i in config["input"]] == ["a", "b"]
    index = {entry["name"]: entry for entry in peer.get_model_repository_index()}
    assert index["add_mul"] == {"name": "add_mul", "version": "1", "state": "READY", "reason": ""}


def test_statistics_count_http_requests(peer: triton.InferenceServerClient) -> None:
    before = peer.get_inference_statistics("add_mul")["model_stats"][0]
    peer.infer("add_mul", [tensor("a", A, "FP32"), tensor("b", B, "FP32")])
    after = peer.get_inference_statistics("add_mul", "1")["model_stats"][0]
    assert after["inference_count"] == before["inference_count"] + 1  # no batching: one inference a request
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert isinstance(after["inference_stats"]["success"]["ns"], int) and after["version"] == "1"
    everything = peer.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} >= {"add_mul", "classifier"}


# ---------------------------------------------------------------- inference


@pytest.mark.parametrize("datatype", list(ONNX_TYPES))
def test_binary_round_trip_every_datatype(peer: triton.InferenceServerClient, datatype: str) -> None:
    x = values(datatype)
    result = peer.infer(model_name(datatype), [tensor("x", x, datatype)],
                        outputs=[triton.InferRequestedOutput("y", binary_data=True)])  # fmt: skip
    assert_exact(result.as_numpy("y"), x)


@pytest.mark.parametrize("datatype", JSON_TYPES)
def test_json_round_trip_every_datatype(peer: triton.InferenceServerClient, datatype: str) -> None:
    x = values(datatype)
    if datatype == "BYTES":
        x = np.array([t.encode() for t in ["", "plain", "héllo", "日本語", "🙂", "Ωμέγα"]], dtype=object).reshape(2, 3)
    if datatype in ("FP32", "FP64"):
        x = np.nan_to_num(x, nan=0.5, posinf=1e30, neginf=-1e30)  # JSON has no NaN or infinities
    result = peer.infer(model_name(datatype), [tensor("x", x, datatype, binary=False)],
                        outputs=[triton.InferRequestedOutput("y", binary_data=False)])  # fmt: skip
    got = result.as_numpy("y")
    if datatype == "BYTES":
        assert [v.encode() if isinstance(v, str) else bytes(v) for v in got.reshape(-1)] == list(x.reshape(-1))
    else:
        assert_exact(got, x)


def test_requested_outputs_mixed_binary_and_json(peer: triton.InferenceServerClient) -> None:
    inputs = [tensor("a", A, "FP32"), tensor("b", B, "FP32", binary=False)]
    only_sum = peer.infer("add_mul", inputs, outputs=[triton.InferRequestedOutput("sum", binary_data=False)])
    assert [o["name"] for o in only_sum.get_response()["outputs"]] == ["sum"]
    np.testing.assert_array_equal(only_sum.as_numpy("sum"), A + B)
    both = peer.infer("add_mul", inputs, request_id="http-7", outputs=[
        triton.InferRequestedOutput("prod", binary_data=True), triton.InferRequestedOutput("sum", binary_data=False)])
    assert both.get_response()["id"] == "http-7"
    np.testing.assert_array_equal(both.as_numpy("prod"), A * B)
    np.testing.assert_array_equal(both.as_numpy("sum"), A + B)


def test_classification_extension(peer: triton.InferenceServerClient) -> None:
    x = np.array([[1.0, 4.0, 2.0], [8.0, 0.5, 0.25]], dtype=np.float32)
    for binary in (True, False):
        result = peer.infer("classifier", [tensor("x", x, "FP32")],
                            outputs=[triton.InferRequestedOutput("y", binary_data=binary, class_count=2)])  # fmt: skip
        got = [[v.encode() if isinstance(v, str) else v for v in row] for row in result.as_numpy("y").tolist()]
        assert got == [[b"4.000000:1:dog", b"2.000000:2:bird"], [b"8.000000:0:cat", b"0.500000:1:dog"]]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("model", "inputs", "outputs", "status", "words"),
    [
        ("nope", [("a", A, "FP32"), ("b", B, "FP32")], None, 404, ["'nope'", "not found"]),
        ("add_mul", [("a", A, "FP32")], None, 400, ["model 'add_mul' version 1", "missing input 'b'"]),
        ("add_mul", [("a", A.astype(np.float64), "FP64"), ("b", B.astype(np.float64), "FP64")], None, 400,
         ["input 'a'", "FP64", "FP32"]),
        ("add_mul", [("a", np.ones((2, 5), np.float32), "FP32"), ("b", np.ones((2, 5), np.float32), "FP32")], None,
         400, ["input 'a'", "[2, 5]", "[-1, 4]"]),
        ("add_mul", [("a", A, "FP32"), ("b", B, "FP32")], ["nope"], 400, ["output 'nope'"]),
    ],
    ids=["unknown_model", "missing_input", "wrong_datatype", "wrong_shape", "unknown_output"],
)
def test_errors_have_triton_statuses_and_clear_messages(peer, model, inputs, outputs, status, words) -> None:
    requested = [triton.InferRequestedOutput(name) for name in outputs] if outputs else None
    with pytest.raises(InferenceServerException) as caught:
        peer.infer(model, [tensor(*item) for item in inputs], outputs=requested)
    assert caught.value.status() == str(status), caught.value
    for word in words:
        assert word in caught.value.message(), caught.value.message()
    np.testing.assert_array_equal(  # the server keeps serving
        peer.infer("add_mul", [tensor("a", A, "FP32"), tensor("b", B, "FP32")]).as_numpy("sum"), A + B)


def test_malformed_bodies_and_unknown_routes(server: BackgroundServer) -> None:
    base = server.http_url
    status, body = call(f"{base}/v2/models/add_mul/infer", "POST", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"], body
    status, body = call(f"{base}/v2/models/add_mul/infer", "POST", {"inputs": [{"name": "a", "shape": [1, 4],
                        "datatype": "FP32", "data": [1, 2, 3]}, {"name": "b", "shape": [1, 4], "datatype": "FP32",
                        "data": [1, 2, 3, 4]}]})  # fmt: skip
    assert status == 400 and "input 'a': data has 3 elements, expected 4" in body["error"], body
    status, body = call(f"{base}/v2/models/add_mul/infer", "POST", b'{"inputs": []}',
                        {"Inference-Header-Content-Length": "999"})  # fmt: skip
    assert status == 400 and "Inference-Header-Content-Length is 999" in body["error"], body
    status, body = call(f"{base}/v2/nothing/here")
    assert status == 404 and "error" in body
    status, body = call(f"{base}/v2/systemsharedmemory/status")
    assert status == 501 and "shared-memory tensors are not supported" in body["error"]
    status, body = call(f"{base}/v2/repository/models/add_mul/load", "POST", {})
    assert status == 400 and "--model-control-mode explicit" in body["error"], body


def test_timeout_parameter_is_the_deadline(tmp_path: Path) -> None:
    """tritonclient.http's `timeout` (µs, a request parameter) reaches the data plane as the
    request's deadline: a request that waits in the batcher's queue past it gets 504, unrun."""
    models.save(models.scale(2.0), tmp_path, "slow", config='name: "slow"\nmax_batch_size: 8\n'
                'dynamic_batching { max_queue_delay_microseconds: 400000 }\n')  # fmt: skip
    x = np.ones((1, 3), np.float32)
    with BackgroundServer(tmp_path) as server:
        peer = triton.InferenceServerClient(server.http_url.removeprefix("http://"))
        with pytest.raises(InferenceServerException) as caught:
            peer.infer("slow", [tensor("x", x, "FP32")], timeout=50_000)  # 50 ms < the 400 ms queue delay
        assert caught.value.status() == "504" and "deadline" in caught.value.message(), caught.value
        np.testing.assert_array_equal(peer.infer("slow", [tensor("x", x, "FP32")]).as_numpy("y"), 2 * x)


def test_auth_scopes(tmp_path: Path) -> None:
    models.save(models.add_mul(), tmp_path, "add_mul")
    tokens = tmp_path / "tokens"
    tokens.write_text("reader inference\nboss admin\n")
    with BackgroundServer(tmp_path, auth_token_file=tokens, model_control_mode="explicit",
                          load_model=("*",)) as server:  # fmt: skip
        base = server.http_url
        assert call(f"{base}/v2/health/ready")[0] == 200  # open health
        assert call(f"{base}/v2/models/add_mul")[0] == 401
        reader = {"Authorization": "Bearer reader"}
        assert call(f"{base}/v2/models/add_mul", headers=reader)[0] == 200
        assert call(f"{base}/v2/repository/models/add_mul/load", "POST", {}, reader) == (
            403, {"error": "this call needs the 'admin' scope"})
        assert call(f"{base}/v2/repository/models/add_mul/load", "POST", {}, {"Authorization": "Bearer boss"})[0] == 200
        peer = triton.InferenceServerClient(base.removeprefix("http://"))
        result = peer.infer("add_mul", [tensor("a", A, "FP32"), tensor("b", B, "FP32")], headers=reader)
        np.testing.assert_array_equal(result.as_numpy("prod"), A * B)
        with pytest.raises(InferenceServerException) as caught:
            peer.infer("add_mul", [tensor("a", A, "FP32"), tensor("b", B, "FP32")])
        assert caught.value.status() == "401"


def test_http_can_be_turned_off(tmp_path: Path) -> None:
    models.save(models.identity(TensorProto.FLOAT), tmp_path, "m")
    with BackgroundServer(tmp_path, allow_http=False) as server:
        assert server.running.http_port is None
