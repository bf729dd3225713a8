"""Several replicas on loopback, as Kubernetes pods behind a headless Service would be: a client
with round_robin spreads requests evenly, keeps succeeding while one replica is stopped under
load (gRPC retries UNAVAILABLE), and sends traffic to the replica again once it is back."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from modelport.client import Client, InferenceServerError
from tests import models
from tests.test_cli import ServerProcess

X = np.ones((1, 3), np.float32)


def served(process: ServerProcess) -> float:
    """modelport_inference_request_success_total of one replica, from its /metrics."""
    port = next(re.search(r"metrics on http://[^:]+:(\d+)/metrics", line).group(1)
                for line in process.log if "metrics on" in line)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    match = re.search(r'modelport_inference_request_success_total\{model="m",version="1"\} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def wait_until(condition, message: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


def wait_for_metrics_line(process: ServerProcess) -> None:
    wait_until(lambda: any("metrics on" in line for line in process.log), "no metrics line")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    models.save(models.scale(2.0), tmp_path, "m")
    return tmp_path


def test_round_robin_failover_and_recovery(repo: Path) -> None:
    age = ("--grpc-max-connection-age-ms", "1500", "--grpc-max-connection-age-grace-ms", "5000")
    replicas = [ServerProcess(repo, *age) for _ in range(3)]
    try:
        for replica in replicas:
            wait_for_metrics_line(replica)
        client = Client([r.address for r in replicas], timeout=10)
        for _ in range(300):
            client.predict("m", X)
        counts = [served(r) for r in replicas]
        assert sum(counts) == 300 and min(counts) >= 80, f"uneven spread: {counts}"

        failures: list[str] = []
        done = [0]
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    np.testing.assert_array_equal(client.predict("m", X), 2 * X)
                    done[0] += 1
                except InferenceServerError as exc:
                    failures.append(str(exc))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: done[0] >= 50, "no traffic under load")
        port = replicas[0].address.rsplit(":", 1)[1]
        assert replicas[0].stop() == 0  # SIGTERM under load: drains, exits cleanly
        before = done[0]
        wait_until(lambda: done[0] >= before + 100, "traffic stopped with one replica down")
        # The replica comes back on its port and gets traffic again.
        replicas[0] = ServerProcess(repo, *age, "--grpc-port", port)
        wait_for_metrics_line(replicas[0])
        wait_until(lambda: served(replicas[0]) >= 20, "the restarted replica got no traffic", timeout=20)
        stop.set()
        for thread in threads:
            thread.join()
        assert failures == []
        print(f"per-replica counts before the failover: {counts}; restarted replica served {served(replicas[0])}")
    finally:
        for replica in replicas:
            replica.stop()
