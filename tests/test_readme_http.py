"""README's curl examples run, unchanged but for the port, against a real server serving a model
shaped like the demo's `mlp` (30 features in, one probability out): JSON in, JSON out."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from modelport.server.background import BackgroundServer
from tests.models import graph_model, save

README = Path(__file__).resolve().parents[1] / "README.md"


def curl_examples() -> str:
    text = README.read_text()
    block = re.search(r"<!-- curl-examples -->\n```sh\n(.*?)```\n<!-- /curl-examples -->", text, re.S)
    assert block, "README has no curl-examples block"
    return block.group(1)


def mlp_like() -> tuple:
    weights = np.random.default_rng(0).standard_normal((30, 1)).astype(np.float32) / 100
    model = graph_model(
        [helper.make_node("MatMul", ["features", "w"], ["logit"]),
         helper.make_node("Sigmoid", ["logit"], ["malignant"])],  # fmt: skip
        [("features", TensorProto.FLOAT, [None, 30])],
        [("malignant", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(weights, "w")],
    )
    return model, weights


def json_values(text: str) -> list:
    """Every JSON value in `text` (curl prints them back to back)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values


def test_readme_curl_examples_run(tmp_path: Path) -> None:
    assert shutil.which("curl"), "README's examples need curl (Debian: apt-get install curl)"
    model, weights = mlp_like()
    save(model, tmp_path, "mlp")
    with BackgroundServer(tmp_path) as server:
        script = curl_examples().replace("http://localhost:8000", server.http_url)
        script = script.replace("localhost:8000", server.http_url.removeprefix("http://"))
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status, metadata, answer, index = json_values(done.stdout)
    assert status == 200
    assert metadata["name"] == "mlp" and metadata["inputs"][0]["shape"] == [-1, 30]
    assert answer["id"] == "req-1" and answer["outputs"][0]["name"] == "malignant"
    features = np.array(re.search(r'"data": \[(.*?)\]\}', script, re.S).group(1).replace("\n", " ").split(", "),
                        dtype=np.float32)  # fmt: skip
    expected = 1 / (1 + np.exp(-(features @ weights)))
    np.testing.assert_allclose(answer["outputs"][0]["data"], expected, rtol=1e-5)
    assert index == [{"name": "mlp", "version": "1", "state": "READY", "reason": ""}]
