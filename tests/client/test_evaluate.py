"""`modelport evaluate` against a real server: every number equals scikit-learn's on predictions
computed here with ONNX Runtime from the same model files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from modelport.client.cli import main
from modelport.server.background import BackgroundServer
from tests import models

BINARY_W = [1.0, -1.0, 0.5, 0.0]
SOFTMAX_W = [[1.0, 0.0, -1.0], [0.0, 1.0, 0.5], [-0.5, 0.5, 1.0], [0.2, -0.3, 0.1]]
PAIR_W = [[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [0.5, 0.0, 1.0]]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    models.save(models.sigmoid_classifier(BINARY_W, bias=0.1), root, "binary")
    models.save(models.sigmoid_classifier(BINARY_W, bias=0.1, extra_logits_output=True), root, "binary2")
    models.save(models.softmax_classifier(SOFTMAX_W), root, "multi")
    models.save(models.two_input_argmax_classifier(PAIR_W), root, "pair")
    return root


@pytest.fixture(scope="module")
def address(repo: Path) -> Iterator[str]:
    with BackgroundServer(repo) as server:
        yield server.address


def reference(repo: Path, name: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    """The model's output computed in-process by ONNX Runtime."""
    session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run([output], {k: v.astype(np.float32) for k, v in inputs.items()})[0]


def noisy(labels: np.ndarray, classes: int, fraction: float, seed: int) -> np.ndarray:
    """`labels` with about `fraction` of them replaced by another class: imperfect true labels."""
    rng = np.random.default_rng(seed)
    out = labels.copy()
    flip = rng.random(len(out)) < fraction
    out[flip] = (out[flip] + rng.integers(1, classes, flip.sum())) % classes
    return out


def assert_matches_sklearn(doc: dict, y_true: np.ndarray, y_pred: np.ndarray, binary: bool) -> None:
    """Every number of the JSON report against scikit-learn's."""
    labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    assert doc["n"] == len(y_true)
    assert doc["labels"] == labels
    assert doc["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    assert list(doc["per_class"]) == [str(label) for label in labels]
    for i, label in enumerate(labels):
        row = doc["per_class"][str(label)]
        assert row["precision"] == pytest.approx(p[i])
        assert row["recall"] == pytest.approx(r[i])
        assert row["f1"] == pytest.approx(f[i])
        assert row["support"] == s[i]
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    assert doc["macro"] == pytest.approx({"precision": mp, "recall": mr, "f1": mf})
    assert doc["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()
    if binary:
        bp, br, bf, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", pos_label=1, zero_division=0)
        assert doc["binary"] is True
        assert doc["positive"] == pytest.approx({"label": 1, "precision": bp, "recall": br, "f1": bf})
    else:
        assert doc["binary"] is False and doc["positive"] is None


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["evaluate", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def evaluate_json(capsys, tmp_path: Path, address: str, model: str, data: Path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / f"{model}.json"
    code, stdout, stderr = run_cli(capsys, "--url", address, "--model", model, "--data", str(data), "--json", str(out),
                                   *extra)
    assert code == 0, stderr
    return json.loads(out.read_text()), stdout


@pytest.fixture(scope="module")
def binary_data(repo: Path, tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """103 examples (not a multiple of the batch sizes used), labels = model at 0.5 with ~20% flipped."""
    x = np.random.default_rng(1).standard_normal((103, 4))  # float64 on purpose: the client casts
    prob = reference(repo, "binary", {"x": x}, "prob")
    y = noisy((prob[:, 0] > 0.5).astype(np.int64), 2, 0.2, seed=2)
    path = tmp_path_factory.mktemp("data") / "binary.npz"
    np.savez(path, x=x, y=y)
    return path, y, prob


# ---------------------------------------------------------------- the command


def test_binary_model_numbers_equal_sklearn(address, binary_data, tmp_path, capsys) -> None:
    data, y, prob = binary_data
    doc, stdout = evaluate_json(capsys, tmp_path, address, "binary", data, "--batch-size", "10")
    y_pred = (prob[:, 0] > 0.5).astype(np.int64)
    assert 0.6 < accuracy_score(y, y_pred) < 0.95  # the labels are imperfect, as meant
    assert_matches_sklearn(doc, y, y_pred, binary=True)
    assert doc["model"] == "binary" and doc["version"] == "1" and doc["output"] == "prob"
    assert doc["mode"] == "sigmoid" and doc["threshold"] == 0.5 and doc["batch_size"] == 10
    latency = doc["latency"]
    assert latency["count"] == 11  # ceil(103 / 10): the last batch holds 3
    assert 0 < latency["min_ms"] <= latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert latency["mean_ms"] > 0 and latency["examples_per_s"] > 0
    assert f"examples   {len(y)}" in stdout
    assert f"accuracy   {accuracy_score(y, y_pred):.4f}" in stdout
    assert "binary (positive class 1)" in stdout and "true\\pred" in stdout and "p99" in stdout


def test_threshold_changes_binary_results(address, binary_data, tmp_path, capsys) -> None:
    data, y, prob = binary_data
    results = {}
    for threshold in (0.5, 0.8):
        doc, _ = evaluate_json(capsys, tmp_path, address, "binary", data, "--threshold", str(threshold))
        y_pred = (prob[:, 0] > threshold).astype(np.int64)
        assert_matches_sklearn(doc, y, y_pred, binary=True)
        assert doc["threshold"] == threshold
        results[threshold] = doc
    assert results[0.5]["confusion_matrix"] != results[0.8]["confusion_matrix"]
    # A higher threshold predicts class 1 less often.
    assert sum(r[1] for r in results[0.8]["confusion_matrix"]) < sum(r[1] for r in results[0.5]["confusion_matrix"])


def test_multiclass_model_numbers_equal_sklearn(address, repo, tmp_path, capsys) -> None:
    x = np.random.default_rng(4).standard_normal((250, 4)).astype(np.float32)
    probs = reference(repo, "multi", {"x": x}, "probs")
    y_pred = probs.argmax(axis=1)
    y = noisy(y_pred, 3, 0.25, seed=5)
    data = tmp_path / "multi.npz"
    np.savez(data, x=x, y=y)
    doc, stdout = evaluate_json(capsys, tmp_path, address, "multi", data, "--batch-size", "64")
    assert len(set(y_pred.tolist())) == 3 and 0.5 < accuracy_score(y, y_pred) < 0.95
    assert_matches_sklearn(doc, y, y_pred, binary=False)
    assert doc["mode"] == "argmax" and doc["threshold"] is None and doc["latency"]["count"] == 4
    assert "binary (positive class 1)" not in stdout
    matrix_header = next(line for line in stdout.splitlines() if line.strip().startswith("true\\pred"))
    assert matrix_header.split()[1:] == ["0", "1", "2"]


def test_integer_label_output_and_multi_input_npz(address, repo, tmp_path, capsys) -> None:
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((40, 3)), rng.standard_normal((40, 3))
    y_pred = reference(repo, "pair", {"a": a, "b": b}, "label")
    y = noisy(y_pred, 3, 0.3, seed=7) + 1  # true labels 1..3: class 0 is never true, class 3 never predicted
    data = tmp_path / "pair.npz"
    np.savez(data, a=a, b=b, y=y)
    doc, _ = evaluate_json(capsys, tmp_path, address, "pair", data, "--batch-size", "7")
    assert doc["mode"] == "labels" and doc["labels"] == [0, 1, 2, 3]
    assert_matches_sklearn(doc, y, y_pred, binary=False)


def test_json_to_stdout_and_output_choice(address, binary_data, capsys) -> None:
    data, y, prob = binary_data
    code, stdout, stderr = run_cli(capsys, "--url", address, "--model", "binary2", "--data", str(data),
                                   "--output", "prob", "--json", "-")  # fmt: skip
    assert code == 0, stderr
    doc = json.loads(stdout)  # stdout holds only the JSON; the report went to stderr
    assert doc["output"] == "prob" and "accuracy" in stderr
    assert_matches_sklearn(doc, y, (prob[:, 0] > 0.5).astype(np.int64), binary=True)


def test_progress_is_a_few_plain_lines_when_not_a_terminal(address, binary_data, capsys) -> None:
    data, _, _ = binary_data
    code, _, stderr = run_cli(capsys, "--url", address, "--model", "binary", "--data", str(data), "--batch-size", "1")
    assert code == 0
    lines = [line for line in stderr.splitlines() if line.startswith("evaluating:")]
    assert len(lines) == 4 and lines[-1] == "evaluating: 103/103 examples (100%)" and "\r" not in stderr


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("arrays", "extra", "message"),
    [
        ({"x": np.zeros((5, 4))}, [], "no array 'y'"),
        ({"x": np.zeros((5, 4)), "y": np.zeros(4, int)}, [], "5 examples but 'y' has 4"),
        ({"features": np.zeros((5, 4)), "y": np.zeros(5, int)}, [], "no array for input"),
        ({"x": np.zeros((5, 4)), "y": np.full(5, 0.5)}, [], "integer class labels"),
        ({"x": np.zeros((5, 4)), "y": np.zeros(5, int)}, ["--output", "nope"], "no output 'nope'"),
    ],
)
def test_bad_input_exits_2(address, tmp_path, capsys, arrays, extra, message) -> None:
    data = tmp_path / "bad.npz"
    np.savez(data, **arrays)
    code, stdout, stderr = run_cli(capsys, "--url", address, "--model", "binary", "--data", str(data), *extra)
    assert code == 2 and message in stderr and not stdout


def test_several_outputs_need_output_flag(address, binary_data, capsys) -> None:
    code, _, stderr = run_cli(capsys, "--url", address, "--model", "binary2", "--data", str(binary_data[0]))
    assert code == 2 and "--output" in stderr and "prob" in stderr and "logits" in stderr


def test_unreadable_data_exits_2(address, tmp_path, capsys) -> None:
    (tmp_path / "junk.npz").write_text("not an npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    for path in (tmp_path / "missing.npz", tmp_path / "junk.npz", tmp_path / "single.npy"):
        code, _, stderr = run_cli(capsys, "--url", address, "--model", "binary", "--data", str(path))
        assert code == 2 and "error:" in stderr, path


def test_unknown_model_exits_1_with_not_found(address, binary_data, capsys) -> None:
    code, stdout, stderr = run_cli(capsys, "--url", address, "--model", "nope", "--data", str(binary_data[0]))
    assert code == 1 and "NOT_FOUND" in stderr and not stdout


def test_help_has_an_example() -> None:
    out = subprocess.run([sys.executable, "-m", "modelport.client.cli", "evaluate", "--help"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "example" in out and "modelport evaluate --url" in out and "--threshold" in out
