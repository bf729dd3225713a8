"""Quality-gated rollouts with real servers (no TensorFlow here; tests/test_rollout_seed.py runs the
seed MLP's versions on two replicas): the traffic split, rollback of a worse version, promotion of
a sound one through every step, holding without enough labels, exit codes, history and metrics."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from modelport.client import Client
from modelport.client.cli import main
from modelport.protocol.rollout import read_rollout
from modelport.server.background import BackgroundServer
from tests import models

GOOD = np.array([[1.0, -0.5, 0.2], [0.3, 1.0, -1.0], [-0.7, 0.4, 1.0], [0.2, 0.1, 0.3]], np.float32)
BAD = np.array([[-1.0, 0.5, 0.2], [0.3, -1.0, 1.0], [0.7, 0.4, -1.0], [0.2, 0.1, 0.3]], np.float32)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    for version, weights in ((1, GOOD), (2, BAD), (3, GOOD * 1.01)):
        models.save(models.softmax_classifier(weights), tmp_path, "m", version)
    return tmp_path


def rollout(capsys, *argv) -> tuple[int, dict]:
    code = main(["rollout", *map(str, argv), "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def labelled_traffic(client: Client, rows: int, prefix: str) -> None:
    """Unversioned requests with ids, each labelled with the good model's class (the truth here)."""
    rng = np.random.default_rng(len(prefix))
    for i in range(rows // 4):
        x = rng.normal(size=(4, 4)).astype(np.float32)
        client.infer("m", {"x": x}, request_id=f"{prefix}{i}")
        assert client.report_label("m", f"{prefix}{i}", (x @ GOOD).argmax(axis=1))


def test_split_rollback_and_promotion(repo: Path, capsys) -> None:
    with BackgroundServer(repo) as server:
        url = server.address
        with Client(url) as client:
            assert client.model_metadata("m").versions == ("3",)  # latest 1 before any rollout
            code, started = rollout(capsys, "start", "--model-repository", repo, "--name", "m", "--candidate", 2,
                                    "--stable", 1, "--weight", 0.5, "--steps", "0.5,1.0", "--url", url)  # fmt: skip
            assert code == 0 and started["servers_told"] == [url]
            assert client.model_metadata("m").versions == ("1", "2", "3")  # both kept loaded
            # The split: within 3 points of the weight over 4,000 requests; an id sticks to its version.
            versions = [version_of(client, "") for _ in range(4000)]
            assert abs(versions.count("2") / 4000 - 0.5) <= 0.03 and set(versions) == {"1", "2"}
            for request_id in ("a", "b", "c", "order-17"):
                assert len({version_of(client, request_id) for _ in range(5)}) == 1
            assert version_of(client, "", version="3") == "3"  # named versions are never rerouted
            # Not enough labels yet: hold (exit 10).
            code, held = rollout(capsys, "step", "--model-repository", repo, "--name", "m", "--url", url,
                                 "--min-labels", 100)  # fmt: skip
            assert code == 10 and held["decision"] == "hold" and "not enough labelled rows" in held["reason"]
            labelled_traffic(client, 800, "r")
            code, decided = rollout(capsys, "step", "--model-repository", repo, "--name", "m", "--url", url,
                                    "--min-labels", 100)  # fmt: skip
            assert code == 12 and decided["decision"] == "rollback", decided
            assert decided["delta_high"] < -0.01 and decided["candidate"]["f1"] < decided["stable"]["f1"]
            assert {version_of(client, "") for _ in range(300)} == {"1"}  # nothing unversioned reaches 2
            assert client.model_metadata("m").versions == ("1", "2", "3")  # kept for inspection
            # A sound candidate: advances through its steps, then is promoted.
            code, _ = rollout(capsys, "start", "--model-repository", repo, "--name", "m", "--candidate", 3,
                              "--weight", 0.5, "--steps", "0.5,1.0", "--url", url)  # fmt: skip
            assert code == 0 and read_rollout(repo / "m").stable == 1  # what served unversioned traffic
            decisions = []
            for round_ in range(3):
                labelled_traffic(client, 800, f"s{round_}-")
                code, decided = rollout(capsys, "step", "--model-repository", repo, "--name", "m", "--url", url,
                                        "--min-labels", 100)  # fmt: skip
                decisions.append((code, decided["decision"]))
                if decided["decision"] == "promote":
                    break
            assert decisions == [(0, "advance"), (11, "promote")], decisions
            assert {version_of(client, "") for _ in range(300)} == {"3"}  # every unversioned request: 3
            code, status = rollout(capsys, "status", "--url", url, "--model", "m")
            assert status["rollout"]["state"] == "promoted" and status["decision_now"]["decision"] == "hold"
            history = [r["decision"] for r in read_rollout(repo / "m").history]
            assert history == ["start", "advance", "promote"]
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.running.metrics_port}/metrics").read().decode()
            assert 'modelport_rollout_weight{model="m",version="3"} 1.0' in metrics
            assert 'modelport_rollout_decisions_total{decision="promote",model="m"} 1.0' in metrics


def version_of(client: Client, request_id: str, version: str = "") -> str:
    """The version that answered one request (ModelInferResponse.model_version)."""
    from modelport.protocol import codec

    request = codec.build_request("m", {"x": np.ones((1, 4), np.float32)}, version=version, request_id=request_id)
    return client._call(client._stub.ModelInfer, request, None).model_version


def test_pushing_a_rollout_needs_the_admin_scope(repo: Path, tmp_path: Path, capsys) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("reader-token inference\nadmin-token admin\n")
    (tmp_path / "reader").write_text("reader-token\n")
    (tmp_path / "admin").write_text("admin-token\n")
    with BackgroundServer(repo, auth_token_file=tokens) as server:
        start = ("start", "--model-repository", repo, "--name", "m", "--candidate", 2, "--stable", 1,
                 "--url", server.address)  # fmt: skip
        code, told = rollout(capsys, *start, "--token-file", tmp_path / "reader")
        assert code == 0 and told["servers_told"] == []  # written, but the server was not told
        main(["rollout", "abort", "--model-repository", str(repo), "--name", "m"])
        capsys.readouterr()
        code, told = rollout(capsys, *start, "--token-file", tmp_path / "admin")
        assert code == 0 and told["servers_told"] == [server.address]
        with Client(server.address, token="admin-token") as client:
            assert client.model_metadata("m").versions == ("1", "2", "3")
