"""Model quality across a cluster, as the issue's acceptance test: three `modelport serve`
replicas share one real Redis; a round_robin client sends labelled requests to two versions of a
classifier and to a regressor trained on scikit-learn's diabetes data (examples/train_regressor.py);
one replica is killed with SIGKILL; a separate process reports every label to the survivors: every
label pairs, and `modelport quality --json` on each survivor equals scikit-learn's metrics (and
numpy's MAE/RMSE/R²) on the same pairs. TensorFlow trains the regressor: marked slow."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from modelport.client import Client
from tests import models
from tests.redis_server import RedisServer
from tests.test_cli import CLI, ServerProcess

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {
    1: np.array([[1.0, -0.5, 0.2], [0.3, 1.0, -1.0], [-0.7, 0.4, 1.0], [0.2, 0.1, 0.3]], np.float32),
    2: np.array([[0.8, -0.2, 0.1], [0.1, 1.2, -0.8], [-0.5, 0.3, 1.1], [0.4, 0.2, 0.1]], np.float32),
}
ROWS = 2  # rows per request


def regressor(repository: Path) -> tuple[np.ndarray, np.ndarray]:
    """examples/train_regressor.py's model, converted into `repository` as "reg"; its test data."""
    spec = importlib.util.spec_from_file_location("train_regressor", ROOT / "examples" / "train_regressor.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model, x_test, y_test = example.train(epochs=20)
    from modelport.converter import convert_keras

    convert_keras(model, repository, "reg", sample={"x": x_test}, progress=lambda _: None)
    return x_test, y_test


def report(addresses: list[str], reports: list[tuple[str, str, list]]) -> list[bool]:
    """Report every label from a separate process (as a labelling job would), round_robin."""
    code = (
        "import json, sys\n"
        "from modelport.client import Client\n"
        "addresses, reports = json.load(sys.stdin)\n"
        "with Client(addresses, timeout=30) as client:\n"
        "    print(json.dumps([client.report_label(m, i, v) for m, i, v in reports]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps([addresses, reports]),
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout)


def quality_json(address: str, model: str) -> dict:
    done = subprocess.run([*CLI, "quality", "--url", address, "--model", model, "--json"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout)


def test_three_replicas_share_quality_through_redis(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    for version, weights in WEIGHTS.items():
        models.save(models.softmax_classifier(weights), repository, "clf", version,
                    config='name: "clf"\nversion_policy: { all {} }\n')  # fmt: skip
    x_reg, y_reg = regressor(repository)
    redis = RedisServer(tmp_path, password="s3cret").start()
    replicas = [ServerProcess(repository, "--feedback-store", redis.url) for _ in range(3)]
    try:
        rng = np.random.default_rng(11)
        pairs: dict[str, list[tuple[float, float]]] = {"1": [], "2": [], "reg": []}
        reports = []
        with Client([r.address for r in replicas], timeout=30) as client:
            for i in range(60):
                version = "1" if i % 2 else "2"
                x = rng.normal(size=(ROWS, 4)).astype(np.float32)
                probs = client.infer("clf", {"x": x}, version=version, request_id=f"c{i}")["probs"]
                predicted = probs.argmax(axis=1)
                truth = np.where(rng.random(ROWS) < 0.7, predicted, rng.integers(0, 3, ROWS))  # 70 % right
                pairs[version] += list(zip(predicted.tolist(), truth.tolist()))
                reports.append(("clf", f"c{i}", truth.tolist()))
            for i in range(0, len(x_reg) - 1, ROWS):
                rows = x_reg[i : i + ROWS]
                predicted = client.predict("reg", rows).reshape(-1)
                client.infer("reg", {"features": rows}, request_id=f"r{i}")
                pairs["reg"] += list(zip(predicted.tolist(), y_reg[i : i + ROWS].tolist()))
                reports.append(("reg", f"r{i}", y_reg[i : i + ROWS].tolist()))
        time.sleep(1.5)  # more than a second after its last answer: a killed replica has lost nothing
        replicas[0].proc.kill()
        replicas[0].proc.wait(timeout=30)
        survivors = [r.address for r in replicas[1:]]
        assert all(report(survivors, reports)), "every label pairs, whichever replica served its request"
        assert not any(report(survivors, reports[:5])), "a label reported twice pairs once"
        for address in survivors:
            clf, reg = quality_json(address, "clf"), quality_json(address, "reg")
            for version in ("1", "2"):
                assert_classification(clf["versions"][version], pairs[version])
            assert_regression(reg["versions"]["1"], pairs["reg"])
    finally:
        for replica in replicas:
            replica.stop()
        redis.stop()


def assert_classification(answer: dict, pairs: list[tuple[float, float]]) -> None:
    predicted, truth = (np.array(column, np.int64) for column in zip(*pairs))
    labels = sorted(set(predicted) | set(truth))
    p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=labels, average="macro", zero_division=0)
    assert answer["kind"] == "classification" and answer["count"] == len(pairs)
    assert answer["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert (answer["precision"], answer["recall"], answer["f1"]) == pytest.approx((p, r, f))
    assert answer["classes"] == labels
    assert answer["confusion"] == confusion_matrix(truth, predicted, labels=labels).tolist()


def assert_regression(answer: dict, pairs: list[tuple[float, float]]) -> None:
    predicted, truth = (np.array(column, np.float64) for column in zip(*pairs))
    error = predicted - truth
    assert answer["kind"] == "regression" and answer["count"] == len(pairs)
    assert answer["mae"] == pytest.approx(np.mean(np.abs(error)), rel=1e-6)
    assert answer["rmse"] == pytest.approx(np.sqrt(np.mean(error**2)), rel=1e-6)
    assert answer["r2"] == pytest.approx(1 - np.sum(error**2) / np.sum((truth - truth.mean()) ** 2), rel=1e-6)
