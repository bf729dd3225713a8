"""The `modelport` command as a user runs it: a server process, the predict command, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from modelport.client import Client, InferenceServerError
from tests import models

CLI = [sys.executable, "-m", "modelport.client.cli"]


class ServerProcess:
    """`modelport serve` on port 0; the port is read from its 'listening on' log line."""

    def __init__(self, repository: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "serve", "--model-repository", str(repository), "--grpc-port", "0", "--http-port", "0",
             "--metrics-port", "0", "--host", "127.0.0.1", *extra],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self.address = self._wait_for_port()

    def _wait_for_port(self) -> str:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            match = re.search(r"listening on ([^:\s]+):(\d+)", line)
            if match:
                threading.Thread(target=self._drain, daemon=True).start()
                return f"{match.group(1)}:{match.group(2)}"
        raise AssertionError("server exited before listening:\n" + "".join(self.log))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    models.save(models.add_mul(), tmp_path, "add_mul")
    models.save(models.scale(2.0), tmp_path, "scale")
    models.save(models.matmul_chain(10), tmp_path, "slow")
    return tmp_path


@pytest.fixture
def server(repo: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(repo)
    yield process
    process.stop()


def test_help_texts_have_examples() -> None:
    for command in ([], ["serve"], ["predict"], ["convert"], ["bench"], ["models"]):
        out = subprocess.run([*CLI, *command, "--help"], capture_output=True, text=True, check=True).stdout
        assert "example" in out, command


def test_cli_imports_no_heavy_packages() -> None:
    """The client-only install and the server image have no TensorFlow: the CLI must not need it."""
    code = (
        "import sys; from modelport.client.cli import build_parser; build_parser(); "
        "heavy = [m for m in ('tensorflow', 'tf2onnx', 'onnxruntime') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_serve_two_models_and_predict_command(server: ServerProcess, tmp_path: Path) -> None:
    client = Client(server.address)
    assert client.is_server_ready()
    assert client.is_model_ready("add_mul") and client.is_model_ready("scale")
    np.save(tmp_path / "x.npy", np.arange(6, dtype=np.float64).reshape(2, 3))
    out = subprocess.run(
        [*CLI, "predict", "--url", server.address, "--model", "scale", "--input", str(tmp_path / "x.npy")],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "y float32 [2, 3]" in out and "10." in out
    np.savez(tmp_path / "in.npz", a=np.ones((1, 4), np.float32), b=np.full((1, 4), 2, np.float32))
    subprocess.run(
        [*CLI, "predict", "--url", server.address, "--model", "add_mul", "--input", str(tmp_path / "in.npz"),
         "--output", str(tmp_path / "out.npz")],
        check=True, capture_output=True,
    )
    with np.load(tmp_path / "out.npz") as out_npz:
        np.testing.assert_array_equal(out_npz["sum"], np.full((1, 4), 3, np.float32))
        np.testing.assert_array_equal(out_npz["prod"], np.full((1, 4), 2, np.float32))


def test_metrics_endpoint_counts_requests(server: ServerProcess) -> None:
    import urllib.request

    client = Client(server.address)
    for _ in range(3):
        client.predict("scale", np.ones((2, 3)))
    port = next(re.search(r"metrics on http://[^:]+:(\d+)/metrics", line).group(1)
                for line in server.log if "metrics on" in line)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'modelport_inference_request_success_total{model="scale",version="1"} 3.0' in text
    assert 'modelport_model_state{model="scale",state="READY",version="1"} 1.0' in text
    assert "modelport_queue_duration_seconds_bucket" in text and "process_resident_memory_bytes" in text


def test_predict_command_reports_server_errors(server: ServerProcess, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((2, 5)))
    done = subprocess.run(
        [*CLI, "predict", "--url", server.address, "--model", "scale", "--input", str(tmp_path / "x.npy")],
        capture_output=True, text=True,
    )
    assert done.returncode == 1
    assert "INVALID_ARGUMENT" in done.stderr and "input 'x'" in done.stderr


def test_sigterm_finishes_in_flight_requests(repo: Path) -> None:
    server = ServerProcess(repo, "--exit-timeout-secs", "30")
    client = Client(server.address, timeout=60)
    x = np.ones((1000, 1000), np.float32) / 1000
    expected = client.infer("slow", {"x": x})["y"]  # also warms the session up
    results: list[np.ndarray] = []
    # Six requests queue on the one instance. SIGTERM goes once all six have reached the server
    # (answered + pending = 7 with the warm-up) and some are still pending.
    threads = [threading.Thread(target=lambda: results.append(client.infer("slow", {"x": x})["y"])) for _ in range(6)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: _received(server) == (7, True), poll=0.01)
    sent = _pending(server)
    server.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    assert server.proc.wait(timeout=60) == 0
    assert len(results) == 6, f"{len(results)} of 6 answered ({sent:g} were pending at SIGTERM)"
    for y in results:
        np.testing.assert_allclose(y, expected, rtol=1e-5)
    assert any("shutting down" in line for line in server.log)


def _metric(server: ServerProcess, name: str) -> float:
    """A metric summed over its series, from the server's /metrics."""
    import urllib.request

    port = next(re.search(r"metrics on http://[^:]+:(\d+)/metrics", line).group(1)
                for line in server.log if "metrics on" in line)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(name + "{"))


def _pending(server: ServerProcess) -> float:
    return _metric(server, "modelport_inference_pending_requests")


def _received(server: ServerProcess) -> tuple[int, bool]:
    """(requests answered or pending, whether any is still pending)."""
    pending = _pending(server)
    return int(_metric(server, "modelport_inference_request_success_total") + pending), pending > 0


def _worker_pids(supervisor: int) -> list[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]


def _wait_for(predicate, timeout: float = 60.0, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)


def test_workers_share_the_port_and_are_restarted(repo: Path) -> None:
    server = ServerProcess(repo, "--workers", "2")
    try:
        _wait_for(lambda: sum("listening on" in line for line in server.log) == 2)
        assert any("supervisor: 2 workers on" in line for line in server.log)
        for _ in range(10):  # fresh connections land on either worker
            with Client(server.address) as client:
                assert client.predict("scale", np.ones((1, 3)))[0, 0] == 2.0
        _wait_for(lambda: sum("HTTP/REST on" in line for line in server.log) == 2)
        http_ports = {re.search(r"HTTP/REST on \S+:(\d+)", line).group(1) for line in server.log if "HTTP/REST" in line}
        assert len(http_ports) == 1, "the workers share the HTTP port too"
        body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 1, 1]}]}'
        url = f"http://127.0.0.1:{http_ports.pop()}/v2/models/scale/infer"
        for _ in range(10):  # a new connection each time (urllib closes it): either worker answers
            answer = json.loads(urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30).read())
            assert answer["outputs"][0]["data"] == [2.0, 2.0, 2.0]
        pids = _worker_pids(server.proc.pid)
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        _wait_for(lambda: any("restarting" in line for line in server.log))
        _wait_for(lambda: sum("listening on" in line for line in server.log) == 3)
        for _ in range(10):
            with Client(server.address) as client:
                assert client.predict("scale", np.ones((1, 3)))[0, 0] == 2.0
        assert len(_worker_pids(server.proc.pid)) == 2
    finally:
        assert server.stop() == 0
    assert any("workers exited with [0, 0]" in line for line in server.log)


def test_json_logs_one_line_per_event(repo: Path) -> None:
    import json

    broken = repo / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"junk")
    server = ServerProcess(repo, "--log-format", "json")
    try:
        client = Client(server.address)
        for _ in range(20):
            client.predict("scale", np.ones((1, 3)))
        with pytest.raises(InferenceServerError) as caught:
            client.infer("scale", {"x": np.ones((1, 4), np.float32)})
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "input 'x'" in caught.value.message
    finally:
        server.stop()
    records = [json.loads(line) for line in server.log if line.startswith("{")]
    assert len(records) == len(server.log), "every line is JSON"
    events = [r.get("event") for r in records]
    loaded = [r for r in records if r.get("event") == "model_loaded"]
    assert sorted(r["model"] for r in loaded) == ["add_mul", "scale", "slow"]
    failed = [r for r in records if r.get("event") == "model_load_failed"]
    assert len(failed) == 1 and failed[0]["model"] == "broken" and "cannot load" in failed[0]["reason"]
    errors = [r for r in records if r.get("event") == "request_failed"]
    assert len(errors) == 1 and errors[0]["code"] == "INVALID_ARGUMENT" and "input 'x'" in errors[0]["message"]
    assert events.count(None) <= 8  # start-up and shutdown messages; nothing per successful request
