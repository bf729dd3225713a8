"""The rollout acceptance test: the seed MLP (examples/train_mlp.py) as version 1, a deliberately
worse version 2 (trained with 60 % of its labels shuffled) and a sound version 3 (retrained with
another seed), served by two replicas in poll mode that share a Redis feedback store. A rollout of
2 at weight 0.5 with labelled traffic ends in rollback; a rollout of 3 advances through its steps
and is promoted. TensorFlow trains the three versions: marked slow."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from modelport.client import Client
from modelport.protocol import codec
from tests.redis_server import RedisServer
from tests.test_cli import CLI, ServerProcess

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
STEP = ("--min-labels", "150", "--max-drop", "0.03")  # a few hundred rows per version: a wider tolerance


def train_versions(repository: Path) -> tuple[np.ndarray, np.ndarray]:
    """Versions 1-3 of "mlp" converted with the real converter; the data (x, y)."""
    spec = importlib.util.spec_from_file_location("train_mlp", ROOT / "examples" / "train_mlp.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    import keras

    from modelport.converter import convert_keras

    data = load_breast_cancer()
    x, y = data.data.astype(np.float32), (data.target == 0).astype(np.int64)
    for version, seed, shuffled in ((1, 0, 0.0), (2, 1, 0.6), (3, 2, 0.0)):
        keras.utils.set_random_seed(seed)
        labels = y.copy()
        if shuffled:  # a share of the labels permuted: a model that learned partly wrong answers
            rng = np.random.default_rng(seed)
            chosen = rng.choice(len(y), int(shuffled * len(y)), replace=False)
            labels[chosen] = rng.permutation(labels[chosen])
        model = example.build(x)
        model.fit(x, labels, epochs=25, batch_size=32, verbose=0)
        convert_keras(model, repository, "mlp", version=version, sample={"x": x}, progress=lambda _: None)
    return x, y


def rollout(*argv: str) -> tuple[int, dict]:
    done = subprocess.run([*CLI, "rollout", *argv, "--json"], capture_output=True, text=True)
    assert done.returncode in (0, 10, 11, 12), done.stderr
    return done.returncode, json.loads(done.stdout)


def version_of(client: Client, x: np.ndarray, request_id: str = "") -> str:
    request = codec.build_request("mlp", {"features": x}, request_id=request_id)
    return client._call(client._stub.ModelInfer, request, None).model_version


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def labelled_traffic(client: Client, x: np.ndarray, y: np.ndarray, prefix: str) -> None:
    """Every row once, unversioned, with an id; its label reported right after."""
    for i in range(len(x)):
        client.infer("mlp", {"features": x[i : i + 1]}, request_id=f"{prefix}{i}")
    for i in range(len(x)):
        deadline = time.monotonic() + 10
        while not client.report_label("mlp", f"{prefix}{i}", [int(y[i])]):  # its batch may be in flight
            assert time.monotonic() < deadline, f"{prefix}{i} never paired"
            time.sleep(0.05)


def steps(client: Client, x: np.ndarray, y: np.ndarray, repo: tuple, urls: list[str], prefix: str) -> list:
    """Rounds of labelled traffic, each followed by `rollout step`, until the rollout ends (at most 6)."""
    decisions = []
    for round_ in range(6):
        labelled_traffic(client, x, y, f"{prefix}{round_}-")
        code, decided = rollout("step", *repo, *urls, *STEP)
        decisions.append((code, decided["decision"]))
        if decided["decision"] in ("promote", "rollback"):
            break
    return decisions


def test_seed_mlp_rollouts_on_two_replicas(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    x, y = train_versions(repository)
    redis = RedisServer(tmp_path).start()
    poll = ("--model-control-mode", "poll", "--repository-poll-secs", "0.5", "--feedback-store", redis.url)
    replicas = [ServerProcess(repository, *poll) for _ in range(2)]
    urls = [f"--url={r.address}" for r in replicas]
    repo = ("--model-repository", str(repository), "--name", "mlp")
    try:
        clients = [Client(r.address, timeout=30) for r in replicas]
        both = Client([r.address for r in replicas], timeout=30)
        assert {version_of(c, x[:1]) for c in clients} == {"3"}  # latest 1 before any rollout
        code, _ = rollout("start", *repo, "--candidate", "2", "--stable", "1", "--weight", "0.5")
        assert code == 0  # no --url: the replicas find it at their next poll
        wait_until(lambda: all(c.model_metadata("mlp").versions == ("1", "2", "3") for c in clients),
                   "both replicas serve the rollout")  # fmt: skip
        wait_until(lambda: {version_of(both, x[:1]) for _ in range(50)} == {"1", "2"}, "traffic is split")
        versions = [version_of(both, x[i % len(x) : i % len(x) + 1]) for i in range(4000)]
        assert abs(versions.count("2") / 4000 - 0.5) <= 0.03, versions.count("2")
        for request_id in ("a", "b", "order-17", "x" * 40):  # an id lands on one version, on every replica
            assert len({version_of(c, x[:1], request_id) for c in clients for _ in range(3)}) == 1
        code, held = rollout("step", *repo, *urls, *STEP)
        assert code == 10 and "not enough labelled rows" in held["reason"]
        decisions = steps(both, x, y, repo, urls, "r")  # each round adds labels until the evidence suffices
        assert decisions[-1] == (12, "rollback") and set(decisions[:-1]) <= {(10, "hold")}, decisions
        assert all({version_of(c, x[:1]) for _ in range(200)} == {"1"} for c in clients)  # none reaches 2
        code, _ = rollout("start", *repo, "--candidate", "3", "--weight", "0.5", "--steps", "0.5,1.0", *urls)
        decisions = steps(both, x, y, repo, urls, "s")
        assert decisions[-1] == (11, "promote") and (0, "advance") in decisions, decisions
        assert (12, "rollback") not in decisions
        assert all({version_of(c, x[:1]) for _ in range(200)} == {"3"} for c in clients)  # all of it: 3
        for client in (*clients, both):
            client.close()
    finally:
        for replica in replicas:
            replica.stop()
        redis.stop()
