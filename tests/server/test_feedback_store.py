"""The feedback store shared by replicas: a real redis-server, two QualityMonitors standing for two
replicas (the cluster test with real server processes is tests/test_quality_cluster.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from modelport.server.errors import InvalidInput, StoreUnavailable
from modelport.server.feedback_store import MemoryStore, Prediction, open_store
from modelport.server.quality import QualityMonitor
from modelport.server.redis_store import RedisStore
from tests import models
from tests.redis_server import RedisServer
from tests.server.inproc import request, serving

WEIGHTS = np.array([[1.0, -0.5, 0.2], [0.3, 1.0, -1.0], [-0.7, 0.4, 1.0], [0.2, 0.1, 0.3]], np.float32)


def test_redis_store_pairs_once_and_bounds_the_window(redis_server) -> None:
    async def run():
        a, b = RedisStore(redis_server.url, window=5, ttl=60), RedisStore(redis_server.url, window=5, ttl=60)
        try:
            prediction = Prediction(2, "classes", [1, 0], time=time.time())
            await a.put("store-m", [("r1", prediction)])
            assert await b.peek("store-m", "r1") == prediction  # written by one replica, read by another
            taken = await asyncio.gather(a.take("store-m", "r1"), b.take("store-m", "r1"))
            assert sorted(taken) == [False, True]  # two replicas, one report: paired once
            assert await b.peek("store-m", "r1") is None
            await a.add_pairs("store-m", 2, "classification", [(float(i % 3), 1.0) for i in range(8)])
            await b.add_pairs("store-m", 2, "regression", [(1.0, 1.0)])  # the first kind stays
            kind, pairs = await b.window("store-m", 2)
            assert kind == "classification" and len(pairs) == 5 and pairs[-1] == (1.0, 1.0)
            assert await a.versions("store-m") == [2] and await a.kind("store-m", 2) == "classification"
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


def test_predictions_expire_after_the_ttl(redis_server) -> None:
    async def run():
        store = RedisStore(redis_server.url, window=5, ttl=1)
        try:
            await store.put("ttl-m", [("r1", Prediction(1, "values", [0.5], time=time.time()))])
            assert await store.peek("ttl-m", "r1") is not None
            deadline = time.monotonic() + 10
            while await store.peek("ttl-m", "r1") is not None:  # Redis expires it (EX 1)
                assert time.monotonic() < deadline, "never expired"
                await asyncio.sleep(0.05)
        finally:
            await store.close()

    asyncio.run(run())


def test_two_replicas_share_predictions_labels_and_quality(tmp_path: Path, redis_server) -> None:
    """A prediction remembered by replica A, its label reported to replica B: paired once, and both
    answer the same per-version quality; a regressor's float targets give MAE/RMSE/R2."""
    models.save(models.softmax_classifier(WEIGHTS), tmp_path, "share-clf")
    models.save(models.scale(2.0, width=1), tmp_path, "share-reg")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 4)).astype(np.float32)
    predicted = (x @ WEIGHTS).argmax(axis=1)
    truth = np.array([predicted[0], predicted[1], (predicted[2] + 1) % 3, predicted[3]])
    xr = rng.normal(size=(5, 1)).astype(np.float32)
    targets = (2 * xr[:, 0] + rng.normal(scale=0.1, size=5)).astype(np.float64)

    async def run():
        a = QualityMonitor(open_store(redis_server.url, 100, 100, 60))
        b = QualityMonitor(open_store(redis_server.url, 100, 100, 60), served=lambda: ["share-clf"])
        async with serving(tmp_path, observers=[a]) as dp:
            await dp.infer(request("share-clf", {"x": x}, request_id="c1"))
            await dp.infer(request("share-reg", {"x": xr}, request_id="g1"))
            await a.flush()  # what the flusher does within 0.25 s
        with pytest.raises(InvalidInput, match="'c1' had 4 rows but 3 labels"):
            await b.report("share-clf", "c1", [0, 1, 2], [])
        with pytest.raises(InvalidInput, match="finite"):
            await b.report("share-reg", "g1", [], [1.0, float("nan"), 1.0, 1.0, 1.0])
        both = await asyncio.gather(b.report("share-clf", "c1", truth.tolist(), []),
                                    a.report("share-clf", "c1", truth.tolist(), []))  # fmt: skip
        assert sorted(both) == [False, True]
        assert await a.report("share-reg", "g1", [], targets.tolist())
        qa, qb = await a.quality("share-clf"), await b.quality("share-clf")
        reg = (await b.quality("share-reg")).versions["1"]
        for monitor in (a, b):
            await monitor.close()
        return qa, qb, reg

    qa, qb, reg = asyncio.run(run())
    assert qa == qb and qa.versions["1"].count == 4 and qa.versions["1"].accuracy == 0.75
    error = 2 * xr[:, 0].astype(np.float64) - targets
    assert reg.kind == "regression" and reg.count == 5
    assert reg.mae == pytest.approx(np.mean(np.abs(error)), rel=1e-5)
    assert reg.rmse == pytest.approx(np.sqrt(np.mean(error**2)), rel=1e-5)
    assert reg.r2 == pytest.approx(1 - np.sum(error**2) / np.sum((targets - targets.mean()) ** 2), rel=1e-5)


def test_inference_survives_a_redis_outage_and_the_store_reconnects(tmp_path: Path) -> None:
    """Redis down: requests are answered, predictions wait in the buffer (beyond its bound they
    are counted as lost), label reports are UNAVAILABLE; Redis back: the buffered predictions
    are written and pair."""
    models.save(models.softmax_classifier(WEIGHTS), tmp_path / "repo", "out-clf")
    redis = RedisServer(tmp_path).start()
    x = np.ones((1, 4), np.float32)

    async def run():
        monitor = QualityMonitor(open_store(redis.url, 100, 100, 600))
        async with serving(tmp_path / "repo", observers=[monitor]) as dp:
            await dp.infer(request("out-clf", {"x": x}, request_id="before"))
            await monitor.flush()
            redis.stop()
            answer = await dp.infer(request("out-clf", {"x": x}, request_id="during"))  # inference unaffected
            assert answer.outputs
            await monitor.flush()
            assert monitor.store_errors["put"] >= 1 and monitor._buffer  # kept for the next try
            with pytest.raises(StoreUnavailable):
                await monitor.report("out-clf", "before", [0], [])
            redis.start()  # same port, same data (appendonly)
            await monitor.flush()
            assert not monitor._buffer
            label = int((x @ WEIGHTS).argmax())
            assert await monitor.report("out-clf", "before", [label], [])  # written before the outage: kept
            assert await monitor.report("out-clf", "during", [label], [])  # buffered through it
        await monitor.close()

    try:
        asyncio.run(run())
    finally:
        redis.stop()


def test_memory_store_is_the_default_and_bad_urls_are_refused() -> None:
    assert isinstance(open_store("memory://", 10, 10, 60), MemoryStore)
    with pytest.raises(ValueError, match="memory:// or redis://"):
        open_store("postgres://x", 10, 10, 60)


def test_float_labels_for_a_classifier_pair_when_they_are_whole(tmp_path: Path) -> None:
    """report_label with a float array for a classifier: whole numbers are classes, others refused."""
    models.save(models.softmax_classifier(WEIGHTS), tmp_path, "float-clf")
    x = np.ones((2, 4), np.float32)
    classes = (x @ WEIGHTS).argmax(axis=1).astype(np.float64)

    async def run():
        monitor = QualityMonitor(MemoryStore(100, 100, 60))
        async with serving(tmp_path, observers=[monitor]) as dp:
            await dp.infer(request("float-clf", {"x": x}, request_id="f1"))
            with pytest.raises(InvalidInput, match="integer classes"):
                await monitor.report("float-clf", "f1", [], [0.5, 1.0])
            assert await monitor.report("float-clf", "f1", [], classes.tolist())
            return await monitor.quality("float-clf")

    quality = asyncio.run(run())
    assert quality.versions["1"].kind == "classification" and quality.versions["1"].accuracy == 1.0
