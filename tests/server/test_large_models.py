"""Large models on the server: external-data weights, the memory limit checked before a load,
the load's time and memory (metric and log line), the old version's memory freed after a hot swap,
and large requests within the default limits."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modelport.client import Client
from modelport.server.dataplane import DataPlane
from modelport.server.feedback_store import MemoryStore
from modelport.server.loader import LoaderSettings
from modelport.server.memory_budget import MIB, container_limit, default_limit, resident_bytes
from modelport.server.metrics import MetricsEndpoint
from modelport.server.quality import QualityMonitor
from modelport.server.settings import ServerSettings
from tests.models import graph_model, save
from tests.server.inproc import loaded, request, until

WIDTH = 1024


def projection(rows: int, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """y = x @ W with W of `rows` x WIDTH float32 (rows * 4 KiB of weights) and x [batch, rows]."""
    weights = np.random.default_rng(seed).standard_normal((rows, WIDTH)).astype(np.float32)
    model = graph_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [("x", TensorProto.FLOAT, [None, rows])],
        [("y", TensorProto.FLOAT, [None, WIDTH])],
        [numpy_helper.from_array(weights, "w")],
    )
    return model, weights


def save_external(model: onnx.ModelProto, repository: Path, name: str, version: int = 1) -> Path:
    """<repository>/<name>/<version>/model.onnx with its weights in model.onnx.data beside it."""
    folder = repository / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=1024)  # fmt: skip
    return folder


def loader(memory_limit: int) -> LoaderSettings:
    return LoaderSettings(("cpu",), 0, 1, 2, 100, 0.0, memory_limit)


def test_external_data_version_loads_serves_and_reports_its_footprint(tmp_path: Path) -> None:
    model, weights = projection(16 * 1024)  # 64 MiB of weights outside model.onnx
    folder = save_external(model, tmp_path, "big")
    assert (folder / "model.onnx").stat().st_size < 4096 and (folder / "model.onnx.data").stat().st_size == 64 * MIB
    x = np.random.default_rng(1).standard_normal((2, 16 * 1024)).astype(np.float32)

    async def scenario() -> None:
        async with loaded(tmp_path, loader(0)) as registry:
            version = registry.get("big")
            response = await DataPlane(registry).infer(request("big", {"x": x}))
            np.testing.assert_allclose(response.outputs["y"][1], x @ weights, rtol=1e-4, atol=1e-3)
            cost = version.footprint
            assert cost.file_bytes >= 64 * MIB and cost.seconds > 0
            assert 32 * MIB < cost.memory_bytes < 4 * 64 * MIB, cost  # the weights, about once
            quality = QualityMonitor(MemoryStore(10, 10, 60.0))
            text = generate_latest(MetricsEndpoint(registry, DataPlane(registry), quality).collectors).decode()
            samples = {(s.name, s.labels.get("model")): s.value
                       for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip
            assert samples["modelport_model_file_bytes", "big"] == cost.file_bytes
            assert samples["modelport_model_memory_bytes", "big"] == cost.memory_bytes
            assert samples["modelport_model_load_duration_seconds", "big"] == pytest.approx(cost.seconds)

    asyncio.run(scenario())


def test_memory_limit_refuses_a_version_that_would_not_fit_and_others_keep_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_external(projection(16 * 1024)[0], tmp_path, "big")  # 64 MiB
    small, weights = projection(4)
    save(small, tmp_path, "small")
    limit = resident_bytes() + 32 * MIB  # room for the small model, not for the big one

    async def scenario() -> None:
        with caplog.at_level(logging.ERROR, logger="modelport.server.registry"):
            async with loaded(tmp_path, loader(limit)) as registry:
                state = registry.entries()[0].states[1]
                assert state.state == "UNAVAILABLE"
                assert "model 'big' version 1 needs about 64.0 MiB" in state.reason
                assert "--model-memory-limit" in state.reason and "refused before loading" in state.reason
                assert registry.load_failures[("big", 1)] == 1
                x = np.ones((1, 4), np.float32)
                response = await DataPlane(registry).infer(request("small", {"x": x}))
                np.testing.assert_allclose(response.outputs["y"][1], x @ weights, rtol=1e-5)
        assert any("model_load_failed" in r.getMessage() and "'big'" in r.getMessage() for r in caplog.records)

    asyncio.run(scenario())


def test_a_hot_swap_frees_the_old_versions_weights(tmp_path: Path) -> None:
    rows = 32 * 1024  # 128 MiB of weights per version
    repo = tmp_path / "repo"
    save_external(projection(rows, seed=0)[0], repo, "big", 1)
    new, weights = projection(rows, seed=1)
    save_external(new, tmp_path / "later", "big", 2)
    expected = np.ones((1, rows), np.float32) @ weights
    del new, weights  # the test's own copies must not count as the server's
    x = np.ones((1, rows), np.float32)

    async def scenario() -> None:
        async with loaded(repo, loader(0)) as registry:
            first = registry.get("big")
            await DataPlane(registry).infer(request("big", {"x": x}))
            serving_one = resident_bytes()
            (tmp_path / "later" / "big" / "2").rename(repo / "big" / "2")
            await registry.load("big")  # latest 1: version 2 loads beside 1, swaps in, 1 retires
            await until(lambda: first.scheduler.instances[0].model._session is None, "version 1 released")
            await registry.wait_retired()
            response = await DataPlane(registry).infer(request("big", {"x": x}))
            np.testing.assert_allclose(response.outputs["y"][1], expected, rtol=1e-4, atol=1e-2)
            # One version's weights more would be +128 MiB; allow allocator slack, not a second copy.
            assert resident_bytes() - serving_one < 64 * MIB, (resident_bytes() - serving_one) / MIB

    asyncio.run(scenario())


def test_memory_limit_setting_parses_sizes_and_defaults_to_the_container(tmp_path: Path) -> None:
    import argparse

    from modelport.server.cli import configure, settings_from

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["--model-repository", str(tmp_path), "--model-memory-limit", "1.5GiB"])
    assert settings_from(args).model_memory_limit == int(1.5 * 1024 * MIB)
    with pytest.raises(ValueError, match="--model-memory-limit"):
        settings_from(parser.parse_args(["--model-repository", str(tmp_path), "--model-memory-limit", "lots"]))
    assert LoaderSettings.of(ServerSettings(model_repository=tmp_path, model_memory_limit=0)).memory_limit == 0
    assert LoaderSettings.of(ServerSettings(model_repository=tmp_path)).memory_limit == default_limit(1)
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text("4294967296\n")
    assert container_limit(cgroup) == 4 * 1024 * MIB
    assert default_limit(2, cgroup) == (4 * 1024 * MIB - int(0.4 * 1024 * MIB)) // 2
    (cgroup / "memory.max").write_text("max\n")
    assert container_limit(cgroup) is None


def test_large_batches_and_external_data_metadata_within_the_default_limits(tmp_path: Path, start_server) -> None:
    """A 64-sequence x 512-token batch (token ids in, per-token values out) and an external-data
    model's metadata, through a real server and client with every limit at its default."""
    tokens = graph_model(
        [helper.make_node("Cast", ["ids"], ["as_float"], to=TensorProto.FLOAT)],
        [("ids", TensorProto.INT64, [None, None])],
        [("as_float", TensorProto.FLOAT, [None, None])],
    )
    save(tokens, tmp_path, "tokens")
    save_external(projection(16 * 1024)[0], tmp_path, "big")
    client = Client(start_server(tmp_path))
    ids = np.random.default_rng(0).integers(1, 30522, (64, 512), dtype=np.int64)
    np.testing.assert_array_equal(client.model("tokens").predict(ids), ids.astype(np.float32))
    metadata = client.model("big").metadata()
    assert metadata.inputs[0].shape == (-1, 16 * 1024)
