"""Drift against the converter's reference statistics, and the predicted-class distribution."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from modelport.client import Client
from modelport.server.background import BackgroundServer
from modelport.server.drift import InputDrift, Reference
from tests import models

RNG = np.random.default_rng(3)
MEAN = np.linspace(-2, 5, 12)
STD = np.linspace(0.5, 3, 12)


def scrape(server: BackgroundServer) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.running.metrics_port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    # A 3-class "classifier": softmax over the first three features.
    model = models.graph_model(
        [models.helper.make_node("Slice", ["x", "s", "e", "a"], ["head"]),
         models.helper.make_node("Softmax", ["head"], ["probs"], axis=1)],
        [("x", TensorProto.FLOAT, [None, 12])],
        [("probs", TensorProto.FLOAT, [None, 3])],
        [models.helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("s", 0), ("e", 3), ("a", 1))],
    )
    models.save(model, tmp_path, "clf")
    stats = {"x": {"count": 5000, "mean": MEAN.tolist(), "std": STD.tolist(),
                   "min": (MEAN - 4 * STD).tolist(), "max": (MEAN + 4 * STD).tolist()}}
    (tmp_path / "clf" / "1" / "conversion.json").write_text(json.dumps({"input_statistics": stats}))
    return tmp_path


def reference_rows(n: int, shift: float = 0.0) -> np.ndarray:
    return (MEAN + STD * (RNG.standard_normal((n, 12)) + shift)).astype(np.float32)


def test_drift_stays_near_zero_on_reference_data_and_rises_when_shifted(repo: Path) -> None:
    with BackgroundServer(repo, drift_window=400, drift_sample_rate=1.0) as server:
        client = Client(server.address)
        for _ in range(40):
            client.infer("clf", {"x": reference_rows(10)})
        key = 'modelport_drift_score{input="x",model="clf",version="1"}'
        calm = scrape(server)[key]
        assert calm < 0.15, calm  # sampling noise of a 400-row window is ~1/20 std per feature
        for _ in range(40):  # the window slides: old rows leave block by block
            client.infer("clf", {"x": reference_rows(10, shift=1.5)})
        metrics = scrape(server)
        assert 1.3 < metrics[key] < 1.7, metrics[key]
        assert metrics['modelport_drift_window_rows{input="x",model="clf",version="1"}'] <= 400
        classes = {k: v for k, v in metrics.items() if k.startswith("modelport_predicted_class_total")}
        assert sum(classes.values()) == 800 and len(classes) >= 2


def test_sampling_rate_reduces_the_rows_tracked(repo: Path) -> None:
    with BackgroundServer(repo, drift_sample_rate=0.25) as server:
        client = Client(server.address)
        for _ in range(40):
            client.infer("clf", {"x": reference_rows(1)})
        assert scrape(server)['modelport_drift_window_rows{input="x",model="clf",version="1"}'] == 10


def test_window_forgets_old_blocks() -> None:
    drift = InputDrift(Reference(np.zeros(2), np.ones(2)), window=100)
    drift.add(np.full((100, 2), 5.0))
    assert drift.score() == (5.0, 100)
    for _ in range(10):
        drift.add(np.zeros((10, 2)))
    assert drift.score() == (0.0, 100)
    drift.add(np.zeros((3, 5)))  # wrong width: ignored, not an error
    assert drift.score()[1] == 100


def test_no_reference_no_drift_series(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "m")
    with BackgroundServer(tmp_path) as server:
        Client(server.address).predict("m", np.ones((1, 3)))
        assert not any(k.startswith("modelport_drift_score{") for k in scrape(server))
