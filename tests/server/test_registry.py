"""The model registry in process: loading a repository, version policies, index rows and states,
failed loads beside serving models, reloads and unloads that let running requests finish, polling
for new / changed / removed models, and closing."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from modelport.server.errors import ModelLoadError, ModelNotFound, ModelNotReady
from modelport.server.registry import ModelRegistry
from tests import models
from tests.hold import hold
from tests.server.inproc import loaded, request, serving, until, within

X = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
GARBAGE = b"this is not an onnx model"


def rewrite(path: Path, data: bytes) -> None:
    """Replace a file's bytes and make sure its stamp changes (mtime one second on)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_bytes(data)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def rows(registry: ModelRegistry) -> dict[tuple[str, str], tuple[str, str]]:
    return {(name, version): (state, reason) for name, version, state, reason in registry.index()}


async def y_of(registry: ModelRegistry, name: str, version: str = "") -> np.ndarray:
    """What the version serves for X (scale models: X times their factor)."""
    results, _ = await registry.get(name, version).scheduler.submit({"x": ("FP32", X)}, ["y"])
    return results["y"]


def test_load_all_serves_every_model_folder(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "a", 1)
    models.save(models.scale(3.0), tmp_path, "a", 2)
    models.save(models.add_mul(), tmp_path, "b")
    models.save(models.scale(9.0), tmp_path, ".tmp-c")  # a half-written model: hidden, ignored
    (tmp_path / "README.txt").write_text("not a model")
    (tmp_path / "empty").mkdir()  # a model folder without a version

    async def run():
        async with loaded(tmp_path) as registry:
            assert registry.names() == ["a", "b", "empty"]
            assert registry.versions("a") == [2] and registry.versions("b") == [1] and registry.versions("nope") == []
            assert registry.get("a").version == 2 and registry.get("a", "2") is registry.get("a")
            assert sorted((v.name, v.version) for v in registry.served()) == [("a", 2), ("b", 1)]
            assert registry.is_ready("a") and registry.is_ready("b", "1") and not registry.is_ready("a", "1")
            assert not registry.is_ready("empty") and not registry.all_ready()
            assert registry.index() == [
                ("a", "2", "READY", ""),
                ("b", "1", "READY", ""),
                ("empty", "", "UNAVAILABLE", "model 'empty': no version folder matches its version policy"),
            ]
            np.testing.assert_array_equal(await y_of(registry, "a"), 3 * X)

    asyncio.run(run())


@pytest.mark.parametrize(
    "policy, served",
    [
        ("", [5]),
        ("version_policy: { latest: { num_versions: 2 } }", [3, 5]),
        ("version_policy: { all: {} }", [1, 2, 3, 5]),
        ("version_policy: { specific: { versions: [1, 3, 4] } }", [1, 3]),
    ],
)
def test_version_policy_selects_the_served_versions(tmp_path: Path, policy: str, served: list[int]) -> None:
    for version in (1, 2, 3, 5):
        models.save(models.scale(float(version)), tmp_path, "m", version, config=policy)

    async def run():
        async with loaded(tmp_path) as registry:
            assert registry.versions("m") == served
            assert registry.get("m").version == max(served)  # '' is the newest served version
            assert registry.index() == [("m", str(v), "READY", "") for v in served]
            for version in served:  # each version runs its own file
                np.testing.assert_array_equal(await y_of(registry, "m", str(version)), version * X)
            for unserved in sorted({1, 2, 3, 4, 5} - set(served)):  # on disk or not
                with pytest.raises(ModelNotFound) as caught:
                    registry.get("m", str(unserved))
                assert f"served versions: {', '.join(map(str, served))}" in caught.value.message

    asyncio.run(run())


def test_a_policy_that_matches_no_version_makes_the_model_unavailable(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "m", 1, config="version_policy: { specific: { versions: [7] } }")

    async def run():
        registry = ModelRegistry(tmp_path)
        try:
            with pytest.raises(ModelLoadError):
                await registry.load("m")
            with pytest.raises(ModelNotReady) as caught:
                registry.get("m")
            assert "no version folder matches its version policy" in caught.value.message
            assert registry.index() == [
                ("m", "", "UNAVAILABLE", "model 'm': no version folder matches its version policy")
            ]
        finally:
            await registry.close()

    asyncio.run(run())


def test_corrupt_model_is_unavailable_while_others_serve(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "good")
    (tmp_path / "bad" / "1").mkdir(parents=True)
    rewrite(tmp_path / "bad" / "1" / "model.onnx", GARBAGE)

    async def run():
        registry = ModelRegistry(tmp_path)
        await registry.load_all()  # logs the failure, raises nothing
        try:
            state, reason = rows(registry)[("bad", "1")]
            assert state == "UNAVAILABLE" and "model 'bad' version 1: ONNX Runtime cannot load model.onnx" in reason
            assert rows(registry)[("good", "1")] == ("READY", "")
            assert registry.load_failures == {("bad", 1): 1}
            with pytest.raises(ModelNotReady) as caught:
                registry.get("bad")
            assert ("model 'bad' is not ready: version 1: " in caught.value.message
                    and "ONNX Runtime" in caught.value.message)
            assert not registry.all_ready() and registry.is_ready("good")
            np.testing.assert_array_equal(await y_of(registry, "good"), 2 * X)

            with pytest.raises(ModelLoadError):  # asked for explicitly, the failure is raised
                await registry.load("bad")
            assert registry.load_failures == {("bad", 1): 2}
            await registry.poll()  # unchanged files: not retried
            assert registry.load_failures == {("bad", 1): 2}

            models.save(models.scale(5.0), tmp_path, "bad")  # fixed
            await registry.poll()
            assert rows(registry)[("bad", "1")] == ("READY", "") and registry.all_ready()
            np.testing.assert_array_equal(await y_of(registry, "bad"), 5 * X)
            assert registry.load_failures == {("bad", 1): 2}  # a counter of what happened
        finally:
            await registry.close()

    asyncio.run(run())


def test_failing_reload_keeps_the_previous_files_serving(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "m")

    async def run():
        async with loaded(tmp_path) as registry:
            before = registry.get("m")
            rewrite(tmp_path / "m" / "1" / "model.onnx", GARBAGE)
            with pytest.raises(ModelLoadError):
                await registry.load("m")
            state, reason = rows(registry)[("m", "1")]
            assert state == "READY" and reason.startswith("reload failed, previous files still serving: ")
            assert registry.get("m") is before and registry.all_ready()
            np.testing.assert_array_equal(await y_of(registry, "m"), 2 * X)
            assert registry.load_failures == {("m", 1): 1}

    asyncio.run(run())


def test_reload_swaps_while_the_replaced_version_finishes(tmp_path: Path, monkeypatch) -> None:
    models.save(models.scale(2.0), tmp_path, "m")

    async def run():
        async with serving(tmp_path) as dp:
            registry = dp.registry
            old = registry.get("m")
            held = hold(old.scheduler.instances[0], monkeypatch)
            try:
                running = asyncio.ensure_future(dp.infer(request("m", {"x": X})))
                await asyncio.to_thread(held.wait_entered)
                rewrite(tmp_path / "m" / "1" / "model.onnx", models.scale(3.0).SerializeToString())  # new files
                await registry.load("m")  # loads beside the old one and swaps while `running` runs
                new = registry.get("m")
                assert new is not old and rows(registry)[("m", "1")] == ("READY", "")
                fresh = await within(dp.infer(request("m", {"x": X})))  # the new version is not held
                np.testing.assert_array_equal(fresh.outputs["y"][1], 3 * X)
                assert not running.done() and old.in_flight == 1 and new.in_flight == 0
            finally:
                held.release()
            answer = await running
            assert answer.version == "1"
            np.testing.assert_array_equal(answer.outputs["y"][1], 2 * X)  # the old files, to the end
            await registry.wait_retired()
            assert old.in_flight == 0 and registry.get("m") is new
            np.testing.assert_array_equal((await dp.infer(request("m", {"x": X}))).outputs["y"][1], 3 * X)

    asyncio.run(run())


def test_a_new_version_replaces_the_old_one_after_its_requests_finish(tmp_path: Path, monkeypatch) -> None:
    models.save(models.scale(2.0), tmp_path, "m", 1)

    async def run():
        async with serving(tmp_path) as dp:
            registry = dp.registry
            old = registry.get("m")
            held = hold(old.scheduler.instances[0], monkeypatch)
            try:
                running = asyncio.ensure_future(dp.infer(request("m", {"x": X})))
                await asyncio.to_thread(held.wait_entered)
                models.save(models.scale(3.0), tmp_path, "m", 2)
                await registry.load("m")
                assert registry.versions("m") == [2]
                assert rows(registry) == {("m", "1"): ("UNLOADING", ""), ("m", "2"): ("READY", "")}
                with pytest.raises(ModelNotFound):  # no new request reaches the retiring version
                    registry.get("m", "1")
                assert (await within(dp.infer(request("m", {"x": X})))).version == "2"
            finally:
                held.release()
            answer = await running
            assert answer.version == "1"
            np.testing.assert_array_equal(answer.outputs["y"][1], 2 * X)
            await registry.wait_retired()
            assert rows(registry) == {("m", "1"): ("UNAVAILABLE", "unloaded"), ("m", "2"): ("READY", "")}

    asyncio.run(run())


def test_unload_lets_running_requests_finish(tmp_path: Path, monkeypatch) -> None:
    models.save(models.scale(2.0), tmp_path, "m")
    models.save(models.scale(4.0), tmp_path, "other")
    changed: list[str] = []

    async def run():
        async with serving(tmp_path) as dp:
            registry = dp.registry
            registry.listeners.append(changed.append)
            version = registry.get("m")
            held = hold(version.scheduler.instances[0], monkeypatch)
            try:
                running = asyncio.ensure_future(dp.infer(request("m", {"x": X})))
                await asyncio.to_thread(held.wait_entered)
                await registry.unload("m")
                assert not registry.is_ready("m") and registry.is_ready("other")
                assert registry.all_ready()  # an unloaded model is not a missing one
                assert rows(registry)[("m", "1")] == ("UNLOADING", "")
                with pytest.raises(ModelNotReady):
                    await within(dp.infer(request("m", {"x": X})))
                assert changed == ["m"]
            finally:
                held.release()
            np.testing.assert_array_equal((await running).outputs["y"][1], 2 * X)
            await registry.wait_retired()
            assert rows(registry)[("m", "1")] == ("UNAVAILABLE", "unloaded") and version.in_flight == 0
            assert changed == ["m", "m"]  # unloaded, then closed
            with pytest.raises(ModelNotReady) as caught:
                registry.get("m")
            assert caught.value.message == "model 'm' is not ready: version 1: unloaded"
            with pytest.raises(ModelNotFound):
                await registry.unload("nope")
            await registry.load("m")  # and back
            np.testing.assert_array_equal((await dp.infer(request("m", {"x": X}))).outputs["y"][1], 2 * X)

    asyncio.run(run())


def test_unload_of_a_batching_model_lets_queued_requests_run_too(tmp_path: Path, monkeypatch) -> None:
    models.save(models.batch_probe(), tmp_path, "m", config="max_batch_size: 8\ndynamic_batching { }")

    async def run():
        async with serving(tmp_path) as dp:
            version = dp.registry.get("m")
            held = hold(version.scheduler.instances[0], monkeypatch)
            try:
                running = asyncio.ensure_future(dp.infer(request("m", {"x": X})))
                await asyncio.to_thread(held.wait_entered)
                queued = asyncio.ensure_future(dp.infer(request("m", {"x": 2 * X})))
                await until(lambda: version.in_flight == 2, "one request runs and one waits in the batcher")
                await dp.registry.unload("m")
            finally:
                held.release()
            answers = await within(asyncio.gather(running, queued))
            await dp.registry.wait_retired()
            return answers

    running, queued = asyncio.run(run())
    np.testing.assert_array_equal(running.outputs["y"][1], 2 * X)
    np.testing.assert_array_equal(queued.outputs["y"][1], 4 * X)  # not failed by the unload


def test_load_of_an_unknown_model_leaves_no_trace(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "m")

    async def run():
        registry = ModelRegistry(tmp_path)
        try:
            await registry.load_all(["m"])
            with pytest.raises(ModelNotFound) as caught:
                await registry.load("nope")
            assert "model 'nope' is not in the repository" in caught.value.message
            assert registry.names() == ["m"] and registry.all_ready()
            assert registry.index() == [("m", "1", "READY", "")]
        finally:
            await registry.close()

    asyncio.run(run())


def test_models_not_asked_for_are_listed_as_not_loaded(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "a")
    models.save(models.scale(3.0), tmp_path, "b")

    async def run():
        registry = ModelRegistry(tmp_path)
        try:
            await registry.load_all(["a"])  # explicit mode with --load-model a
            assert registry.index() == [("a", "1", "READY", ""), ("b", "", "UNAVAILABLE", "not loaded")]
            assert registry.all_ready() and not registry.is_ready("b")
            with pytest.raises(ModelNotFound):
                registry.get("b")
        finally:
            await registry.close()

    asyncio.run(run())


def test_poll_picks_up_new_changed_and_removed_models(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "a", 1)

    async def run():
        async with loaded(tmp_path) as registry:
            first = registry.get("a")
            await registry.poll()
            assert registry.get("a") is first  # nothing changed: nothing reloaded

            models.save(models.scale(5.0), tmp_path, "b")  # new model
            models.save(models.scale(9.0), tmp_path, "a", 3)
            os.rename(tmp_path / "a" / "3", tmp_path / "a" / ".tmp-3")  # half-written: hidden
            await registry.poll()
            np.testing.assert_array_equal(await y_of(registry, "b"), 5 * X)
            assert registry.get("a") is first and registry.versions("a") == [1]

            models.save(models.scale(7.0), tmp_path, "a", 2)  # new version
            await registry.poll()
            assert registry.versions("a") == [2]
            np.testing.assert_array_equal(await y_of(registry, "a"), 7 * X)

            (tmp_path / "a" / "config.pbtxt").write_text("version_policy: { all: {} }\n")  # changed config
            await registry.poll()
            assert registry.versions("a") == [1, 2]
            np.testing.assert_array_equal(await y_of(registry, "a", "1"), 2 * X)

            shutil.rmtree(tmp_path / "b")  # removed model
            await registry.poll()
            assert not registry.is_ready("b") and registry.all_ready()
            await registry.wait_retired()
            assert rows(registry) == {
                ("a", "1"): ("READY", ""),
                ("a", "2"): ("READY", ""),
                ("b", "1"): ("UNAVAILABLE", "unloaded"),
            }

    asyncio.run(run())


def test_poll_reloads_a_model_folder_that_comes_back(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "m")

    async def run():
        async with loaded(tmp_path) as registry:
            os.rename(tmp_path / "m", tmp_path / ".m-away")
            await registry.poll()
            assert not registry.is_ready("m")
            os.rename(tmp_path / ".m-away", tmp_path / "m")
            await registry.poll()
            assert registry.is_ready("m"), registry.index()

    asyncio.run(run())


def test_close_waits_for_running_requests_then_stops_everything(tmp_path: Path, monkeypatch) -> None:
    models.save(models.scale(2.0), tmp_path, "a")
    models.save(models.scale(3.0), tmp_path, "b")

    async def run():
        registry = ModelRegistry(tmp_path)
        await registry.load_all()
        version = registry.get("a")
        held = hold(version.scheduler.instances[0], monkeypatch)
        try:
            running = asyncio.ensure_future(version.acquire().scheduler.submit({"x": ("FP32", X)}, ["y"]))
            await asyncio.to_thread(held.wait_entered)
            closing = asyncio.ensure_future(registry.close())
            await until(lambda: registry.served() == [], "nothing is served")
            assert rows(registry)[("a", "1")] == ("UNLOADING", "")  # waits for the running request
            assert not closing.done()
        finally:
            held.release()
        results, _ = await running
        version.release()
        await within(closing)
        np.testing.assert_array_equal(results["y"], 2 * X)
        assert rows(registry) == {
            ("a", "1"): ("UNAVAILABLE", "server stopped"),
            ("b", "1"): ("UNAVAILABLE", "server stopped"),
        }
        with pytest.raises(ModelNotReady):
            registry.get("a")

    asyncio.run(run())
