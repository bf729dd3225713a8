"""Where a model instance runs: inline on the event loop for runs shorter than a thread hop,
on its own thread otherwise (long runs, unknown cost, dynamic batching)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from modelport.server.registry import ModelRegistry
from modelport.server.scheduler import INLINE_MAX_NS
from tests import models


def _instance(tmp_path: Path, model, config: str | None = None):
    models.save(model, tmp_path, "m", config=config)
    registry = ModelRegistry(tmp_path)
    asyncio.run(registry.load_all())
    assert registry.is_ready("m"), registry.index()
    return registry, registry.get("m").scheduler.instances[0]


def _threads_used(instance, monkeypatch: pytest.MonkeyPatch, rows: int, width: int) -> set[str]:
    """Names of the threads the instance ran three requests of `rows` rows on."""
    seen: set[str] = set()
    real_run = instance.model.run

    def spy(inputs, outputs):
        seen.add(threading.current_thread().name)
        return real_run(inputs, outputs)

    monkeypatch.setattr(instance.model, "run", spy)

    async def go() -> None:
        for _ in range(3):
            results, _, elapsed = await instance.run({"x": ("FP32", np.ones((rows, width), np.float32))}, ["y"])
            assert results["y"].shape == (rows, width) and elapsed > 0

    asyncio.run(go())
    return seen


def test_a_tiny_model_runs_inline_and_a_big_batch_of_it_on_the_thread(tmp_path: Path, monkeypatch) -> None:
    registry, instance = _instance(tmp_path, models.scale(2.0, width=3), "max_batch_size: 8")
    assert instance.predicted_ns(1) < INLINE_MAX_NS  # from the warm-up
    assert _threads_used(instance, monkeypatch, 1, 3) == {threading.current_thread().name}
    rows = next(r for r in (2**k for k in range(40)) if instance.predicted_ns(r) >= INLINE_MAX_NS)
    used = _threads_used(instance, monkeypatch, rows, 3)
    assert used and all(n.startswith("model 'm'") for n in used), used
    asyncio.run(registry.close())


def test_without_a_warmup_estimate_every_run_uses_the_thread(tmp_path: Path, monkeypatch) -> None:
    registry, instance = _instance(tmp_path, models.matmul_chain(2))  # free dims: no default warm-up
    assert instance.predicted_ns(1) is None
    used = _threads_used(instance, monkeypatch, 2, 2)
    assert used and all(n.startswith("model 'm'") for n in used), used
    asyncio.run(registry.close())


def test_dynamic_batching_runs_batches_on_the_thread(tmp_path: Path, monkeypatch) -> None:
    registry, instance = _instance(tmp_path, models.scale(2.0, width=3), "max_batch_size: 8\ndynamic_batching { }")
    used = _threads_used(instance, monkeypatch, 1, 3)
    assert used and all(n.startswith("model 'm'") for n in used), used
    asyncio.run(registry.close())


def test_a_fixed_cost_per_call_is_not_mistaken_for_a_cheap_row(tmp_path: Path) -> None:
    from modelport.server.scheduler import Instance

    registry, instance = _instance(tmp_path, models.scale(2.0, width=3), "max_batch_size: 8")
    probe = Instance(instance.model, 9)
    probe.expect(0.000300, 64)  # 300 us for 64 rows, no single-row timing
    assert probe.predicted_ns(1) >= 300_000  # assumed as dear as the warm-up run: never inline
    probe.expect(0.000300, 64, one_row_seconds=0.000200)  # 200 us of it is per call
    assert 199_000 < probe.predicted_ns(1) < 201_000 and 299_000 < probe.predicted_ns(64) < 301_000
    probe.expect(0.000064, 64, one_row_seconds=0.000001)  # 1 us per row, nothing fixed
    assert probe.predicted_ns(1) < 2_000 and probe.predicted_ns(32) < INLINE_MAX_NS
    probe.close()
    asyncio.run(registry.close())


def test_timing_noise_never_makes_rows_free(tmp_path: Path) -> None:
    """A one-row warm-up that happened to run slower than the large one: the cost per row is taken
    at its upper bound, so a large enough batch still leaves the event loop."""
    from modelport.server.scheduler import Instance

    registry, instance = _instance(tmp_path, models.scale(2.0, width=3), "max_batch_size: 8")
    probe = Instance(instance.model, 9)
    probe.expect(0.000010, 64, one_row_seconds=0.000012)  # 10 us for 64 rows, 12 us for one
    assert probe.cost_ns[1] > 0 and 11_000 < probe.predicted_ns(1) < 13_000
    assert probe.predicted_ns(1024) >= INLINE_MAX_NS
    probe.close()
    asyncio.run(registry.close())
