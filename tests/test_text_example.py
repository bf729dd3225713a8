"""The transformer text example end to end: examples/train_text.py trains (fewer epochs than its
default), converts through the parity gate on real token ids, a real server on port 0 serves it,
and examples/text_client.py classifies raw strings. Rows of different lengths, each sent alone at
its own length and padded together in one batch, give what Keras gives for the unpadded row.
TensorFlow trains the model: marked slow."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tritonclient.grpc as triton

from modelport.client import Client
from modelport.server.background import BackgroundServer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3  # enough to pass the accuracy bar; the script's default trains longer
TOLERANCE = 1e-5


def example(name: str) -> ModuleType:
    """examples/<name>.py as a module (examples/ is no package); registered in sys.modules, where
    dataclasses look their module up."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_text() -> ModuleType:
    return example("train_text")


@pytest.fixture(scope="module")
def client_example() -> ModuleType:
    return example("text_client")


@pytest.fixture(scope="module")
def trained(train_text: ModuleType, tmp_path_factory: pytest.TempPathFactory):
    """The trained example, saved as the script saves it; (result, output folder)."""
    result = train_text.train(epochs=EPOCHS)
    out = tmp_path_factory.mktemp("text")
    train_text.save(result, out)
    return result, out


@pytest.fixture(scope="module")
def repo(train_text: ModuleType, trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model repository the module's `server` serves: the example converted as "text"."""
    repository = tmp_path_factory.mktemp("models")
    train_text.publish(trained[1], repository)
    return repository


def keras_probabilities(train_text: ModuleType, model, ids: np.ndarray) -> np.ndarray:
    """Keras' answer for one row of token ids without its padding."""
    return train_text.predict(model, ids[ids != 0][None, :])[0]


def test_trains_converts_and_publishes_what_the_client_needs(train_text: ModuleType, trained, repo: Path) -> None:
    result, out = trained
    assert result.accuracy >= 0.85, f"held-out accuracy {result.accuracy:.3f}"
    assert result.labels == ["numpy", "scikit-learn", "keras"]
    assert train_text.padding_gap(result.model, result.x_test[:16]) <= 1e-6
    for name in ("model.keras", "tokenizer.json", "labels.txt", "test.npz"):
        assert (out / name).is_file(), name
    folder = repo / "text"
    assert (folder / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    assert (folder / "labels.txt").read_text().split() == result.labels
    record = json.loads((folder / "1" / "conversion.json").read_text())
    gate = record["parity"]
    assert gate["passed"] and gate["sample"] == "test.npz" and gate["rows"] == len(result.y_test)


def test_client_classifies_raw_strings(
    train_text: ModuleType, client_example: ModuleType, trained, repo: Path, server: BackgroundServer
) -> None:
    result, _ = trained
    texts = [result.texts_test[i] for i in (0, 7, 42)] + ["Compute the arithmetic mean along the specified axis."]
    ids = client_example.token_ids(client_example.load_tokenizer(repo / "text" / "tokenizer.json"), texts)[0]
    expected = [result.labels[int(keras_probabilities(train_text, result.model, row).argmax())] for row in ids]
    for flags in ([], ["--one-per-string"]):
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "text_client.py"), "--url", server.address, "--model", "text",
             "--model-repository", str(repo), *flags, *texts],
            capture_output=True, text=True, check=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
        lines = [line.split("\t") for line in done.stdout.splitlines()]
        assert [line[2] for line in lines] == texts
        assert [line[0] for line in lines] == expected, flags


def test_rows_of_different_lengths_match_keras(
    train_text: ModuleType, client_example: ModuleType, trained, repo: Path, server: BackgroundServer
) -> None:
    result, _ = trained
    tokenizer = client_example.load_tokenizer(repo / "text" / "tokenizer.json")
    texts = distinct_lengths(tokenizer, result.texts_test, count=6)
    alone = client_example.token_ids(tokenizer, texts, one_per_string=True)
    assert len({row.shape[1] for row in alone}) == len(texts) == 6
    # One batch with a longer row last, so that every chosen row travels padded.
    longest = max(result.texts_test, key=lambda t: len(tokenizer.encode(t).ids))
    (batch,) = client_example.token_ids(tokenizer, [*texts, longest])
    assert all(row.shape[1] < batch.shape[1] for row in alone)
    expected = np.stack([keras_probabilities(train_text, result.model, row[0]) for row in alone])
    with Client(server.address, timeout=30) as client:
        served_alone = client_example.probabilities(client, "text", alone)
        served_batch = client.model("text").predict(batch)[: len(texts)]
    np.testing.assert_allclose(served_alone, expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(served_batch, expected, rtol=0, atol=TOLERANCE)


def distinct_lengths(tokenizer, texts: list[str], count: int) -> list[str]:
    """`count` texts of different token lengths, from the shortest to the longest spread evenly."""
    by_length = {len(tokenizer.encode(t).ids): t for t in texts}
    lengths = sorted(by_length)
    picks = sorted({lengths[round(i * (len(lengths) - 2) / (count - 1))] for i in range(count)})
    return [by_length[n] for n in picks]


def test_classification_extension_names_the_library(trained, repo: Path, server: BackgroundServer) -> None:
    """labels.txt beside config.pbtxt: the upstream Triton client's class_count gets the names."""
    result, _ = trained
    ids = result.x_test[:5]
    tensor = triton.InferInput("token_ids", list(ids.shape), "INT32")
    tensor.set_data_from_numpy(ids)
    peer = triton.InferenceServerClient(server.address)
    try:
        answer = peer.infer("text", [tensor], outputs=[triton.InferRequestedOutput("probabilities", class_count=1)])
    finally:
        peer.close()
    with Client(server.address, timeout=30) as client:
        best = client.model("text").predict(ids).argmax(axis=1)
    got = [row[0].decode().split(":") for row in answer.as_numpy("probabilities")]
    assert [(int(index), label) for _, index, label in got] == [(int(b), result.labels[b]) for b in best]
