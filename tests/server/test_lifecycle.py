"""Model lifecycle: zero-downtime swaps under load, control modes, a corrupt version that leaves
the old one serving, unload while requests run, warmup, and the repository/config/statistics
RPCs through tritonclient."""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from modelport.client import Client, InferenceServerError
from modelport.protocol import codec
from modelport.protocol.generated import grpc_service_pb2_grpc as pb_grpc
from modelport.server.background import BackgroundServer
from tests import models
from tests.hold import hold

X = np.arange(3, dtype=np.float32).reshape(1, 3) + 1


def publish(repository: Path, name: str, version: int, model: onnx.ModelProto | bytes) -> None:
    """Write a version elsewhere and rename it in, as the converter does."""
    staging = repository / name / f".tmp-{version}"
    staging.mkdir(parents=True)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    (staging / "model.onnx").write_bytes(data)
    os.rename(staging, repository / name / str(version))


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def index(address: str) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m.name, m.version): (m.state, m.reason) for m in Client(address).repository_index()}


class Load:
    """Several clients sending requests back to back until stopped, recording every outcome."""

    def __init__(self, address: str, model: str, clients: int = 4) -> None:
        self.results: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(address, model)) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, address: str, model: str) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = codec.build_request(model, {"x": X})
            while not self._stop.is_set():
                try:
                    response = stub.ModelInfer(request, timeout=30)
                    self.results.put((response.model_version, codec.decode_response(response)["y"]))
                except grpc.RpcError as exc:
                    self.results.put(("error", f"{exc.code().name}: {exc.details()}"))

    def stop(self) -> list[tuple[str, object]]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return list(self.results.queue)


def test_publish_swap_unload_under_load_loses_nothing(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "m", 1)
    with BackgroundServer(tmp_path, model_control_mode="poll", repository_poll_secs=0.1) as server:
        load = Load(server.address, "m")
        try:
            wait_for(lambda: load.results.qsize() > 50)
            publish(tmp_path, "m", 2, models.scale(3.0))
            wait_for(lambda: index(server.address).get(("m", "1")) == ("UNAVAILABLE", "unloaded"))
            seen = load.results.qsize()
            wait_for(lambda: load.results.qsize() > seen + 50)
        finally:
            outcomes = load.stop()
        assert Client(server.address).model_metadata("m").versions == ("2",)
    errors = [detail for version, detail in outcomes if version == "error"]
    assert errors == []
    factors = {"1": 2.0, "2": 3.0}
    for version, y in outcomes:
        np.testing.assert_array_equal(y, factors[version] * X)  # the answer matches the version that gave it
    versions = [version for version, _ in outcomes]
    assert versions[0] == "1" and versions[-1] == "2"
    assert "1" not in versions[versions.index("2") + 200 :], "old version answered long after the swap"


def test_corrupt_new_version_leaves_old_serving(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "m", 1)
    with BackgroundServer(tmp_path, model_control_mode="poll", repository_poll_secs=0.1) as server:
        load = Load(server.address, "m", clients=2)
        try:
            publish(tmp_path, "m", 2, b"this is not an onnx model")
            wait_for(lambda: ("m", "2") in index(server.address))
            registry = server.running.dataplane.registry
            seen = registry.polls
            wait_for(lambda: registry.polls >= seen + 3)  # a few more polls: an unchanged failure is not retried
            assert registry.load_failures[("m", 2)] == 1
        finally:
            outcomes = load.stop()
        state, reason = index(server.address)[("m", "2")]
        assert state == "UNAVAILABLE" and "ONNX Runtime cannot load" in reason
        assert index(server.address)[("m", "1")] == ("READY", "")
        client = Client(server.address)
        assert client.is_model_ready("m") and client.is_model_ready("m", "1") and not client.is_model_ready("m", "2")
        assert client.is_server_ready()
        np.testing.assert_array_equal(client.predict("m", X), 2 * X)
    assert [o for o in outcomes if o[0] == "error"] == []
    assert {o[0] for o in outcomes} == {"1"}


def test_failing_reload_of_same_version_keeps_previous_files(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "m", 1)
    with BackgroundServer(tmp_path, model_control_mode="poll", repository_poll_secs=0.1) as server:
        (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"corrupt")
        wait_for(lambda: "reload failed" in index(server.address)[("m", "1")][1])
        assert index(server.address)[("m", "1")][0] == "READY"
        np.testing.assert_array_equal(Client(server.address).predict("m", X), 2 * X)


def test_poll_mode_adds_changes_and_removes_models(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "a", 1)
    with BackgroundServer(tmp_path, model_control_mode="poll", repository_poll_secs=0.1) as server:
        client = Client(server.address)
        models.save(models.scale(5.0), tmp_path, "b", 1)
        wait_for(lambda: client.is_model_ready("b"))
        np.testing.assert_array_equal(client.predict("b", X), 5 * X)
        # A policy change applies on reload: keep both versions once there are two.
        models.save(models.scale(7.0), tmp_path, "a", 2)
        (tmp_path / "a" / "config.pbtxt").write_text("version_policy: { all: {} }\n")
        wait_for(lambda: client.is_model_ready("a", "2"))
        wait_for(lambda: client.model_metadata("a").versions == ("1", "2"))
        np.testing.assert_array_equal(client.predict("a", X, version="1"), 2 * X)
        np.testing.assert_array_equal(client.predict("a", X), 7 * X)
        # Removing the folder unloads the model.
        (tmp_path / "b").rename(tmp_path / ".b-removed")
        wait_for(lambda: not client.is_model_ready("b"))
        with pytest.raises(InferenceServerError) as err:
            client.predict("b", X)
        assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
        assert client.is_server_ready()


def test_none_mode_refuses_load_and_unload(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "m", 1)
    with BackgroundServer(tmp_path) as server:
        peer = triton.InferenceServerClient(server.address)
        for call in (peer.load_model, peer.unload_model):
            with pytest.raises(InferenceServerException) as err:
                call("m")
            assert "FAILED_PRECONDITION" in str(err.value.status()) and "explicit" in err.value.message()
        assert peer.is_model_ready("m")
        # A new folder is not picked up without poll mode.
        models.save(models.scale(3.0), tmp_path, "later", 1)
        assert server.running.poller is None  # nothing looks at the repository again
        assert not peer.is_model_ready("later")


def test_explicit_mode_load_unload_through_tritonclient(tmp_path: Path) -> None:
    for name, factor in (("a", 2.0), ("b", 3.0)):
        models.save(models.scale(factor), tmp_path, name, 1)
    with BackgroundServer(tmp_path, model_control_mode="explicit", load_model=("a",)) as server:
        peer = triton.InferenceServerClient(server.address)
        assert peer.is_model_ready("a") and not peer.is_model_ready("b")
        rows = {(m.name, m.version): m.state for m in peer.get_model_repository_index().models}
        assert rows[("a", "1")] == "READY" and rows[("b", "")] == "UNAVAILABLE"
        peer.load_model("b")
        assert peer.is_model_ready("b") and peer.is_server_ready()
        peer.unload_model("a")
        assert not peer.is_model_ready("a")
        wait_for(lambda: index(server.address).get(("a", "1")) == ("UNAVAILABLE", "unloaded"))
        assert peer.is_server_ready()  # an unloaded model is not missing
        ready_only = {m.name for m in Client(server.address).repository_index(ready_only=True)}
        assert ready_only == {"b"}
        with pytest.raises(InferenceServerException) as err:
            peer.load_model("nope")
        assert "NOT_FOUND" in str(err.value.status())
        peer.load_model("a")  # and back again
        assert peer.is_model_ready("a")


def test_unload_while_requests_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models.save(models.matmul_chain(10), tmp_path, "slow", 1)
    with BackgroundServer(tmp_path, model_control_mode="explicit", load_model=("*",)) as server:
        client = Client(server.address, timeout=60)
        x = np.ones((800, 800), np.float32) / 800
        expected = client.infer("slow", {"x": x})["y"]
        model = server.running.dataplane.registry.get("slow")
        # The only instance holds its run until the unload has been asked for: the three
        # requests are certainly in flight then, however fast the machine.
        held = hold(model.scheduler.instances[0], monkeypatch)
        results: list = []

        def call() -> None:
            try:
                results.append(client.infer("slow", {"x": x})["y"])
            except InferenceServerError as exc:
                results.append(exc)

        threads = [threading.Thread(target=call) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: model.in_flight >= 3)  # all three are running or queued on version 1
            client.unload_model("slow")
            assert not client.is_model_ready("slow")
        finally:
            held.release()
            for thread in threads:
                thread.join()
        assert len(results) == 3
        for y in results:
            assert not isinstance(y, Exception), y
            np.testing.assert_allclose(y, expected, rtol=1e-5)
        wait_for(lambda: index(server.address)[("slow", "1")] == ("UNAVAILABLE", "unloaded"))


def test_config_and_statistics_through_tritonclient(tmp_path: Path) -> None:
    models.save(models.batch_probe(), tmp_path, "m", 1,
                config="max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 1000 }\n")
    with BackgroundServer(tmp_path) as server:
        peer = triton.InferenceServerClient(server.address)
        config = peer.get_model_config("m").config
        assert config.name == "m" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
        assert [i.name for i in config.input] == ["x"] and list(config.input[0].dims) == [3]
        assert config.dynamic_batching.max_queue_delay_microseconds == 1000
        client = Client(server.address)
        for n in (1, 2, 3):
            client.infer("m", {"x": np.ones((n, 3), np.float32)})
        with pytest.raises(InferenceServerError):
            client.infer("m", {"x": np.ones((9, 3), np.float32)})  # over max_batch_size: fails
        stats = peer.get_inference_statistics("m").model_stats
        assert len(stats) == 1 and stats[0].name == "m" and stats[0].version == "1"
        s = stats[0].inference_stats
        assert s.success.count == 3 and s.fail.count == 1 and stats[0].inference_count == 6
        assert stats[0].execution_count == 3 and s.compute_infer.count == 3 and s.compute_infer.ns > 0
        assert s.queue.count == 3 and s.compute_output.count == 3 and stats[0].last_inference > 0
        assert sorted(b.batch_size for b in stats[0].batch_stats) == [1, 2, 3]
        assert peer.get_inference_statistics().model_stats[0].name == "m"  # all models
        with pytest.raises(InferenceServerException) as err:
            peer.get_inference_statistics("nope")
        assert "NOT_FOUND" in str(err.value.status())


def test_stream_infer_through_tritonclient(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "m", 1)
    with BackgroundServer(tmp_path) as server:
        peer = triton.InferenceServerClient(server.address)
        received: queue.Queue = queue.Queue()
        peer.start_stream(callback=lambda result, error: received.put((result, error)))
        for i in range(30):
            x = np.full((1, 3 if i != 7 else 4), i, np.float32)  # request 7 has a wrong shape
            tensor = triton.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            peer.async_stream_infer("m", [tensor], request_id=str(i))
        answers = [received.get(timeout=30) for _ in range(30)]
        peer.stop_stream()
    errors = [error for _, error in answers if error is not None]
    assert len(errors) == 1 and "expected shape [-1, 3]" in str(errors[0])
    good = {r.get_response().id: r.as_numpy("y") for r, e in answers if e is None}
    assert sorted(good, key=int) == [str(i) for i in range(30) if i != 7]
    for request_id, y in good.items():
        np.testing.assert_array_equal(y, np.full((1, 3), 2 * int(request_id), np.float32))


def test_warmup_runs_before_ready_and_failing_warmup_fails_the_load(tmp_path: Path) -> None:
    good = ('max_batch_size: 4\nmodel_warmup [{ name: "ok" batch_size: 2 count: 3 inputs { key: "idx" '
            'value: { data_type: TYPE_INT64 dims: [1] zero_data: true } } }]\n')
    models.save(models.gather_rows(), tmp_path, "good", 1, config=good)
    bad = ('max_batch_size: 4\nmodel_warmup [{ name: "bad row" batch_size: 1 inputs { key: "idx" '
           'value: { data_type: TYPE_INT64 dims: [1] input_data_file: "idx.bin" } } }]\n')
    models.save(models.gather_rows(), tmp_path, "bad", 1, config=bad)
    (tmp_path / "bad" / "warmup").mkdir()
    (tmp_path / "bad" / "warmup" / "idx.bin").write_bytes(np.array([7], np.int64).tobytes())
    with BackgroundServer(tmp_path) as server:
        client = Client(server.address)
        assert client.is_model_ready("good")
        assert not client.is_model_ready("bad") and not client.is_server_ready()
        state, reason = index(server.address)[("bad", "1")]
        assert state == "UNAVAILABLE" and "warmup 'bad row' failed" in reason
        # Warmup runs are not requests: statistics start at zero.
        assert client.model_statistics("good").model_stats[0].inference_stats.success.count == 0


def test_models_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    models.save(models.scale(2.0), tmp_path, "a", 1)
    models.save(models.scale(3.0), tmp_path, "b", 1)
    cli = [sys.executable, "-m", "modelport.client.cli", "models"]
    with BackgroundServer(tmp_path, model_control_mode="explicit") as server:
        out = subprocess.run([*cli, "--url", server.address, "list"], capture_output=True, text=True, check=True).stdout
        assert "MODEL" in out and "not loaded" in out
        out = subprocess.run([*cli, "--url", server.address, "load", "a"], capture_output=True, text=True,
                             check=True).stdout
        assert "loaded a: versions 1" in out
        out = subprocess.run([*cli, "--url", server.address, "list"], capture_output=True, text=True, check=True).stdout
        assert any(line.split()[:3] == ["a", "1", "READY"] for line in out.splitlines())
        subprocess.run([*cli, "--url", server.address, "unload", "a"], check=True, capture_output=True)
        done = subprocess.run([*cli, "--url", server.address, "load", "zzz"], capture_output=True, text=True)
        assert done.returncode == 1 and "NOT_FOUND" in done.stderr
