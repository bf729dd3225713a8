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


RULES = Path(__file__).resolve().parents[2] / "k8s" / "components" / "quality-rules" / "quality-rules.yaml"
QUALITY_WEIGHTS = np.array([[1.0, -0.5, 0.2], [0.3, 1.0, -1.0], [-0.7, 0.4, 1.0], [0.2, 0.1, 0.3]], np.float32)


def test_recording_rules_give_cluster_wide_quality_equal_to_sklearn(
    tmp_path: Path, prometheus_binary: str, redis_server
) -> None:
    """Three replicas share one Redis; labels go round-robin, so each replica pairs some of them.
    A real Prometheus scrapes all three with k8s/components/quality-rules' rule file: the recorded
    cluster-wide accuracy, macro precision/recall/F1, MAE, RMSE and R² equal scikit-learn's."""
    from sklearn.metrics import (
        accuracy_score,
        mean_absolute_error,
        mean_squared_error,
        precision_recall_fscore_support,
        r2_score,
    )

    models.save(models.softmax_classifier(QUALITY_WEIGHTS), tmp_path / "repo", "prom-clf")
    models.save(models.scale(2.0, width=1), tmp_path / "repo", "prom-reg")
    replicas = [BackgroundServer(tmp_path / "repo", feedback_store=redis_server.url).start() for _ in range(3)]
    rng = np.random.default_rng(21)
    predicted, truth, values, targets = [], [], [], []
    try:
        with Client([r.address for r in replicas], timeout=30) as client:
            for i in range(90):
                x = rng.normal(size=(2, 4)).astype(np.float32)
                classes = client.infer("prom-clf", {"x": x}, request_id=f"c{i}")["probs"].argmax(axis=1)
                labels = np.where(rng.random(2) < 0.6, classes, rng.integers(0, 3, 2))
                xr = rng.normal(size=(2, 1)).astype(np.float32)
                y = client.infer("prom-reg", {"x": xr}, request_id=f"r{i}")["y"].reshape(-1)
                target = 2 * xr[:, 0] + rng.normal(scale=0.3, size=2)
                predicted += classes.tolist()
                truth += labels.tolist()
                values += y.tolist()
                targets += target.tolist()
                pending = [("prom-clf", f"c{i}", labels), ("prom-reg", f"r{i}", target.astype(np.float64))]
                for model, request_id, label in pending:
                    deadline = time.monotonic() + 10
                    while not client.report_label(model, request_id, label):  # its batch may not be written yet
                        assert time.monotonic() < deadline, f"{request_id} never paired"
                        time.sleep(0.05)
        pairing = sum(r.running.quality.labels.get("prom-clf", 0) > 0 for r in replicas)
        assert pairing >= 2, "labels were paired on one replica only: the test would not sum anything"
        config = tmp_path / "prometheus.yml"
        targets_text = ", ".join(f"'127.0.0.1:{r.running.metrics_port}'" for r in replicas)
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\n"
            f"scrape_configs:\n  - job_name: modelport\n    static_configs:\n      - targets: [{targets_text}]\n"
        )
        port = free_port()
        prometheus = subprocess.Popen(
            [prometheus_binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            rows = 'modelport:quality_labelled_rows:sum{model="%s",version="1"}'
            deadline = time.monotonic() + 60
            while (wait_for_value(port, rows % "prom-clf") != len(truth)
                   or wait_for_value(port, rows % "prom-reg") != len(targets)):  # fmt: skip
                assert time.monotonic() < deadline, "Prometheus never saw every pair"
                time.sleep(0.5)
            time.sleep(2.5)  # two more evaluations, so every ratio reads the final sums

            def recorded(name: str, model: str) -> float:
                return wait_for_value(port, f'modelport:{name}{{model="{model}",version="1"}}')

            p, r, f, _ = precision_recall_fscore_support(truth, predicted, average="macro", zero_division=0)
            assert recorded("quality_accuracy:ratio", "prom-clf") == pytest.approx(accuracy_score(truth, predicted))
            assert recorded("quality_precision:macro", "prom-clf") == pytest.approx(p)
            assert recorded("quality_recall:macro", "prom-clf") == pytest.approx(r)
            assert recorded("quality_f1:macro", "prom-clf") == pytest.approx(f)
            assert recorded("quality_mae:ratio", "prom-reg") == pytest.approx(
                mean_absolute_error(targets, values), rel=1e-6)
            assert recorded("quality_rmse:ratio", "prom-reg") == pytest.approx(
                np.sqrt(mean_squared_error(targets, values)), rel=1e-6)
            assert recorded("quality_r2:ratio", "prom-reg") == pytest.approx(r2_score(targets, values), rel=1e-6)
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)
    finally:
        for replica in replicas:
            replica.stop()
