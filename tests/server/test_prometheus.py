"""A real Prometheus (Debian's `prometheus`, installed by `make test`) scrapes a running server;
its HTTP API must see the counters and answer a histogram quantile."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from modelport.client import Client, InferenceServerError
from modelport.server.background import BackgroundServer
from tests import models


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query(port: int, expression: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_for_value(port: int, expression: str, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = query(port, expression)
            if result:
                return float(result[0]["value"][1])
        except OSError:
            pass  # Prometheus is still starting
        assert time.monotonic() < deadline, f"Prometheus never answered {expression}"
        time.sleep(0.5)


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the `prometheus` binary is missing: run `make test` (it installs Debian's prometheus)")
    return binary


def test_prometheus_scrapes_counters_and_histograms(tmp_path: Path, prometheus_binary: str) -> None:
    models.save(models.scale(2.0), tmp_path / "repo", "m")
    with BackgroundServer(tmp_path / "repo") as server:
        client = Client(server.address)
        for _ in range(30):
            client.predict("m", np.ones((1, 3)))
        for _ in range(4):
            with pytest.raises(InferenceServerError):
                client.infer("m", {"x": np.ones((1, 5), np.float32)})
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n"
            "scrape_configs:\n  - job_name: modelport\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{server.running.metrics_port}']\n"
        )
        port = free_port()
        prometheus = subprocess.Popen(
            [prometheus_binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            success = 'modelport_inference_request_success_total{model="m",version="1"}'
            assert wait_for_value(port, success) == 30
            failure = 'modelport_inference_request_failure_total{model="m",code="INVALID_ARGUMENT"}'
            assert wait_for_value(port, failure) == 4
            assert wait_for_value(port, 'modelport_model_state{model="m",state="READY"}') == 1
            p50 = wait_for_value(
                port, 'histogram_quantile(0.5, sum by (le) (modelport_request_duration_seconds_bucket{model="m"}))'
            )
            assert 0 < p50 < 1
            assert wait_for_value(port, 'sum(modelport_queue_duration_seconds_count{model="m"})') == 30
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)
