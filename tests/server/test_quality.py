"""Online quality: labelled feedback paired with predictions by request id, rolling metrics equal
to scikit-learn's over the window, bounded memory, unknown ids counted."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from modelport.client import Client, InferenceServerError
from modelport.server.background import BackgroundServer
from modelport.server.feedback_store import MemoryStore, Prediction
from tests import models

WEIGHTS = np.array([[1.0, -0.5, 0.2], [0.3, 1.0, -1.0], [-0.7, 0.4, 1.0], [0.2, 0.1, 0.3]], np.float32)


def scrape(server: BackgroundServer) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.running.metrics_port}/metrics", timeout=10).read().decode()
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in text.splitlines()
            if line and line[0] != "#"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    models.save(models.softmax_classifier(WEIGHTS), tmp_path, "clf")
    return tmp_path


def test_rolling_quality_equals_sklearn_over_the_window(repo: Path) -> None:
    rng = np.random.default_rng(5)
    session = ort.InferenceSession(str(repo / "clf" / "1" / "model.onnx"))
    window = 60
    with BackgroundServer(repo, quality_window=window) as server:
        client = Client(server.address)
        predicted, truth = [], []
        for i in range(50):
            x = rng.normal(size=(2, 4)).astype(np.float32)
            client.infer("clf", {"x": x}, request_id=f"r{i}")
            predicted.extend(session.run(None, {"x": x})[0].argmax(axis=1))
            labels = rng.integers(0, 3, size=2)
            truth.extend(labels)
            assert client.report_label("clf", f"r{i}", labels)
        assert not client.report_label("clf", "r3", [0, 1])  # already reported
        assert not client.report_label("clf", "never-sent", [1])
        metrics = scrape(server)
    p, t = np.array(predicted[-window:]), np.array(truth[-window:])
    precision, recall, f1, _ = precision_recall_fscore_support(t, p, average="macro", zero_division=0)
    assert metrics['modelport_quality_window{model="clf",version="1"}'] == window
    assert metrics['modelport_quality_accuracy{model="clf",version="1"}'] == pytest.approx(accuracy_score(t, p))
    assert metrics['modelport_quality_precision{model="clf",version="1"}'] == pytest.approx(precision)
    assert metrics['modelport_quality_recall{model="clf",version="1"}'] == pytest.approx(recall)
    assert metrics['modelport_quality_f1{model="clf",version="1"}'] == pytest.approx(f1)
    assert metrics['modelport_feedback_labels_total{model="clf"}'] == 100
    assert metrics['modelport_feedback_unknown_total{model="clf"}'] == 2


def test_label_count_must_match_rows(repo: Path) -> None:
    with BackgroundServer(repo) as server:
        client = Client(server.address)
        client.infer("clf", {"x": np.zeros((3, 4), np.float32)}, request_id="a")
        with pytest.raises(InferenceServerError) as err:
            client.report_label("clf", "a", [1, 2])
        assert "INVALID_ARGUMENT" in str(err.value) and "'a'" in err.value.message
        assert client.report_label("clf", "a", [1, 2, 0])  # still waiting, and now paired


def test_memory_is_bounded() -> None:
    """The memory:// store: at most max_pending ids wait per model (the oldest forgotten first), a
    window keeps the last N pairs, an expired prediction is unknown, and a prediction pairs once."""
    store = MemoryStore(window=5, max_pending=3, ttl=60)

    async def run():
        await store.put("m", [(f"id{i}", Prediction(1, "classes", [1], time=time.time())) for i in range(10)])
        assert await store.peek("m", "id0") is None  # forgotten: only the newest 3 wait
        for i in (7, 8, 9):
            assert await store.peek("m", f"id{i}") is not None
            assert await store.take("m", f"id{i}") and not await store.take("m", f"id{i}")  # once
        await store.add_pairs("m", 1, "classification", [(float(i % 2), 1.0) for i in range(8)])
        kind, pairs = await store.window("m", 1)
        assert kind == "classification" and len(pairs) == 5 and await store.versions("m") == [1]
        await store.put("m", [("old", Prediction(1, "classes", [1], time=time.time() - 120))])
        assert await store.peek("m", "old") is None  # older than the TTL

    asyncio.run(run())
