"""The image recipes keep their promises (the build itself is `make image-test`, not part of
`make test`): pinned multi-stage bases, the right extra and no TensorFlow in server images, a
non-root user, the ports and command the manifests expect, and a build context without local
state."""

from __future__ import annotations

import re

import pytest

from .render import K8S, ROOT

IMAGES = K8S / "images"
SERVERS = {"Dockerfile.cpu": "server", "Dockerfile.gpu": "gpu"}
# The extras each lock is compiled with (the Makefile's LOCK_EXTRAS_*): the server images also get
# the feedback store's client (the redis extra), the converter does not.
LOCK_EXTRAS = {"server": ("server", "redis"), "gpu": ("gpu", "redis"), "convert": ("convert",)}
# The Python each image runs: the CPU base's tag; Ubuntu 22.04's python3.11 package is 3.11.0.
IMAGE_PYTHON = {"server": None, "gpu": "3.11.0", "convert": None}


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (IMAGES / name).read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.convert"])
def test_multi_stage_on_a_pinned_base(name):
    steps = instructions(name)
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    froms = [a for i, a in steps if i == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder"), "builder stage, then runtime stage"
    (base_arg,) = {re.match(r"\$\{(\w+)\}", f).group(1) for f in froms}
    base = args[base_arg]
    assert re.search(r":[\w.-]*\d[\w.-]*(@sha256:[0-9a-f]{64})?$", base), f"{base} is not pinned"
    assert not base.endswith(":latest")
    if "python" in base:
        assert re.search(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$", base)
    else:
        assert re.search(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu22\.04$", base)
    assert any(i == "COPY" and a.startswith("--from=builder ") for i, a in steps)


@pytest.mark.parametrize("name,extra", sorted(SERVERS.items()))
def test_server_images(name, extra):
    steps = instructions(name)
    text = (IMAGES / name).read_text()
    # Dependencies install from the extra's hash-pinned lock, modelport itself without dependencies.
    assert f"k8s/images/requirements-{extra}.lock" in text and "--require-hashes" in text
    assert "--no-deps /wheels/modelport-" in text
    pins = _pins(extra)
    assert ("onnxruntime-gpu" if extra == "gpu" else "onnxruntime") in pins
    assert "redis" in pins, "the feedback store's client (redis-py) is in server images"
    # The builder's smoke test imports what `serve` needs, the Redis client included.
    (smoke,) = re.findall(r'/opt/modelport/bin/python -c "([^"]*)"', text)
    imported = {m.strip() for m in re.match(r"import ([\w., ]+);", smoke).group(1).split(",")}
    assert {"modelport.server.app", "onnxruntime", "redis.asyncio"} <= imported, smoke
    assert not any(p.startswith(("tensorflow", "tf2onnx", "keras")) for p in pins), "no TensorFlow in server images"
    assert "tensorflow" not in text.lower().replace("no tensorflow", "")
    users = [a for i, a in steps if i == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "runs as a non-root user"
    assert ("ENTRYPOINT", '["modelport"]') in steps
    assert ("CMD", '["serve", "--model-repository", "/models"]') in steps
    assert ("EXPOSE", "8000 8001 8002") in steps


def test_converter_image():
    text = (IMAGES / "Dockerfile.convert").read_text()
    assert "k8s/images/requirements-convert.lock" in text and "--require-hashes" in text
    assert "--no-deps /wheels/modelport-" in text
    pins = _pins("convert")
    assert {"tensorflow-cpu", "tf2onnx", "onnxruntime", "onnx", "tf-keras"} <= set(pins)
    assert ("ENTRYPOINT", '["modelport"]') in instructions("Dockerfile.convert")


def _pins(extra: str) -> dict[str, str]:
    lock = (IMAGES / f"requirements-{extra}.lock").read_text()
    pins = dict(re.findall(r"^([a-z0-9_.-]+)==(\S+) \\$", lock, re.M))
    assert pins and lock.count("--hash=sha256:") >= len(pins), "every pin carries hashes"
    return pins


@pytest.mark.parametrize("lock", sorted(LOCK_EXTRAS))
def test_locks_satisfy_pyproject(lock):
    """Every requirement of the lock's extras (and of the base) is pinned in it at a version the
    requirement allows: a pyproject.toml edit without `make lock` fails here."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {canonicalize_name(k): v for k, v in _pins(lock).items()}
    wanted = list(project["dependencies"])
    for extra in LOCK_EXTRAS[lock]:
        assert extra in project["optional-dependencies"], f"pyproject.toml has no extra {extra!r}"
        wanted += project["optional-dependencies"][extra]
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements-{lock}.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements-{lock}.lock pins {name}=={pins[name]}, pyproject.toml wants {requirement}: run `make lock`"
        )
    header = (IMAGES / f"requirements-{lock}.lock").read_text().split("\n\n", 1)[0]
    assert {f"--extra={extra}" for extra in LOCK_EXTRAS[lock]} == set(re.findall(r"--extra=\S+", header))


def test_makefile_compiles_the_locks_with_these_extras():
    makefile = (ROOT / "Makefile").read_text()
    assert set(re.search(r"^LOCKS := (.*)$", makefile, re.M).group(1).split()) == set(LOCK_EXTRAS)
    for lock, extras in LOCK_EXTRAS.items():
        line = re.search(rf"^LOCK_EXTRAS_{lock} := (.*)$", makefile, re.M)
        assert line and tuple(line.group(1).split()) == extras, f"the Makefile's LOCK_EXTRAS_{lock}"


@pytest.mark.parametrize("lock", sorted(LOCK_EXTRAS))
def test_locks_hold_what_the_images_python_needs(lock):
    """pip-compile evaluates environment markers on the Python that runs it (a recent 3.11); each
    image runs its own. Every dependency that a pinned package declares for the image's Python is
    pinned too (checked for the pins installed here at the same version, redis-py among them:
    below 3.11.3 it needs async-timeout, which the GPU lock gets from requirements-gpu.in)."""
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    python = IMAGE_PYTHON[lock]
    if python is None:
        base = re.search(r"python:(\d+\.\d+\.\d+)-slim", (IMAGES / "Dockerfile.cpu").read_text())
        python = base.group(1)
    else:
        gpu = (IMAGES / "Dockerfile.gpu").read_text()
        assert "ubuntu22.04" in gpu and "python3.11 " in gpu, "IMAGE_PYTHON['gpu'] assumes Ubuntu 22.04's python3.11"
    environment = {"python_version": python.rsplit(".", 1)[0], "python_full_version": python,
                   "implementation_name": "cpython", "platform_python_implementation": "CPython",
                   "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
                   "platform_machine": "x86_64", "extra": ""}
    pins = {canonicalize_name(k): v for k, v in _pins(lock).items()}
    checked = set()
    for name, version in pins.items():
        try:
            if importlib.metadata.version(name) != version:
                continue
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        checked.add(name)
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                assert canonicalize_name(requirement.name) in pins, (
                    f"{name}=={version} needs {requirement} on Python {python}: not in requirements-{lock}.lock"
                )
    if lock != "convert":
        assert "redis" in checked, "redis-py (pinned in the server locks) is installed here at the pinned version"


def test_build_context_leaves_local_state_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "models"} <= ignored
    copied = {a.split()[0] for name in (*SERVERS, "Dockerfile.convert")
              for i, a in instructions(name) if i == "COPY" and not a.startswith("--from")}
    assert not copied & ignored, "a COPY source is excluded from the context"


def test_image_test_target_runs_the_script():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^image-test:", makefile, re.M)
    assert "k8s/images/image_test.sh" in makefile
    test_target = re.search(r"^test:.*$", makefile, re.M).group(0)
    assert "image-test" not in test_target
