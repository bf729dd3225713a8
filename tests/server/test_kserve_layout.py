"""KServe's storage initializer leaves one model's files in /mnt/models: the model file itself, a
model folder with version folders, or a whole repository. `serving_root` (server/repository.py)
presents the first two to the registry as a one-model repository; real servers on port 0 serve
each layout under the name the rule gives (k8s/README.md, "KServe")."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from modelport.client import Client
from modelport.server.background import BackgroundServer
from modelport.server.repository import layout, scan, serving_root
from tests import models

CONFIG = 'name: "scaler"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'


def bare_model(root: Path, config: str | None = CONFIG, filename: str = "model.onnx") -> Path:
    """/mnt/models/model.onnx (+ config.pbtxt): storageUri names a folder holding the model file."""
    root.mkdir(parents=True)
    models.save(models.scale(3.0), root.parent / ".build", "m")
    (root.parent / ".build" / "m" / "1" / "model.onnx").rename(root / filename)
    if config is not None:
        (root / "config.pbtxt").write_text(config)
    return root


def model_folder(root: Path, config: str | None = CONFIG) -> Path:
    """/mnt/models/<version>/model.onnx (+ config.pbtxt): one model's folder, two versions."""
    root.mkdir(parents=True)
    for version, factor in ((1, 2.0), (2, 5.0)):
        folder = root / str(version)
        folder.mkdir()
        models.save(models.scale(factor), root.parent / ".build", "m", version)
        (root.parent / ".build" / "m" / str(version) / "model.onnx").rename(folder / "model.onnx")
    if config is not None:
        (root / "config.pbtxt").write_text(config)
    return root


def repository(root: Path) -> Path:
    """/mnt/models/<name>/<version>/model.onnx: a whole repository (what Triton's runtime takes)."""
    models.save(models.scale(7.0), root, "scaler", config=CONFIG)
    return root


X = np.ones((2, 3), np.float32)


@pytest.mark.parametrize(
    ("make", "kind", "factor"),
    [(bare_model, "file", 3.0), (model_folder, "model", 5.0), (repository, "repository", 7.0)],
    ids=["model-file", "model-folder", "repository"],
)
def test_each_kserve_layout_is_served(tmp_path: Path, start_server, make, kind, factor) -> None:
    root = make(tmp_path / "models")
    assert layout(root) == kind
    served = serving_root(root)
    assert (served == root) == (kind == "repository"), "a repository is served as it is"
    assert set(scan(served)) == {"scaler"}, "the registry sees a one-model repository"
    with Client(start_server(served)) as client:
        assert client.is_server_ready()
        np.testing.assert_allclose(client.infer("scaler", {"x": X})["y"], factor * X)
        assert client.model_config("scaler").max_batch_size == 8, "config.pbtxt beside the model applies"
        assert client.model_metadata("scaler").versions == (("2",) if kind == "model" else ("1",))


@pytest.mark.parametrize("make", [bare_model, model_folder], ids=["model-file", "model-folder"])
def test_the_given_name_wins_over_config_and_folder(tmp_path: Path, start_server, make) -> None:
    """KServe's runtime passes the InferenceService's name ({{.Name}}); a converter's config.pbtxt
    names the model it converted. The given name serves, the config's other settings stay."""
    root = make(tmp_path / "models")
    with Client(start_server(serving_root(root, "iris-cpu"))) as client:
        assert client.infer("iris-cpu", {"x": X})["y"].shape == (2, 3)
        config = client.model_config("iris-cpu")
        assert (config.name, config.max_batch_size) == ("iris-cpu", 8)
        assert [e.name for e in client.repository_index()] == ["iris-cpu"]
    assert "scaler" in (root / "config.pbtxt").read_text(), "the original files are never written"


def test_without_a_name_the_config_names_the_model_else_the_folder(tmp_path: Path) -> None:
    assert set(scan(serving_root(bare_model(tmp_path / "a" / "models")))) == {"scaler"}
    assert set(scan(serving_root(model_folder(tmp_path / "b" / "models", config=None)))) == {"models"}
    unnamed = 'platform: "onnxruntime_onnx"\n'
    assert set(scan(serving_root(bare_model(tmp_path / "c" / "mnist", config=unnamed)))) == {"mnist"}


def test_a_model_file_of_another_name_and_its_neighbours(tmp_path: Path) -> None:
    """storageUri naming `resnet.onnx` leaves /mnt/models/resnet.onnx; labels.txt and the
    converter's conversion.json beside it are the model's labels and its drift reference."""
    root = bare_model(tmp_path / "models", config=None, filename="resnet.onnx")
    (root / "labels.txt").write_text("cat\ndog\nbird\n")
    stats = {"x": {"count": 100, "mean": [0.0] * 3, "std": [1.0] * 3, "min": [-4.0] * 3, "max": [4.0] * 3}}
    (root / "conversion.json").write_text(json.dumps({"input_statistics": stats}))
    with BackgroundServer(serving_root(root, "resnet"), drift_sample_rate=1.0) as server:
        np.testing.assert_allclose(Client(server.address).predict("resnet", X), 3 * X)
        peer = triton.InferenceServerClient(server.address)
        x = np.array([[1.0, 4.0, 2.0]], np.float32)
        tensor = triton.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        top = peer.infer("resnet", [tensor], outputs=[triton.InferRequestedOutput("y", class_count=1)])
        assert top.as_numpy("y").tolist() == [[b"12.000000:1:dog"]], "labels.txt beside the model file"
        url = f"http://127.0.0.1:{server.running.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'modelport_drift_score{input="x",model="resnet",version="1"}' in text, "conversion.json's reference"


def test_layout_detection(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert layout(empty) == "repository", "poll mode may start from an empty repository"
    waiting = tmp_path / "waiting"
    (waiting / "mlp").mkdir(parents=True)
    assert layout(waiting) == "repository", "a model folder without versions yet is still a repository"
    digits = repository(tmp_path / "digits")
    models.save(models.scale(1.0), digits, "1")
    assert layout(digits) == "repository", "a model named by digits beside another model's folder"
    stray = repository(tmp_path / "stray")
    (stray / "model.onnx").write_bytes(b"")
    assert layout(stray) == "repository", "a stray model.onnx beside model folders"
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.onnx").write_bytes(b"")
    (two / "b.onnx").write_bytes(b"")
    assert layout(two) == "repository", "two model files: no telling which is the model"
    with pytest.raises(FileNotFoundError):
        layout(tmp_path / "absent")
    assert serving_root(tmp_path / "absent", "m") == tmp_path / "absent", "left to the registry to report"
    with pytest.raises(ValueError, match="cannot name a model"):
        serving_root(bare_model(tmp_path / "x" / "models"), ".hidden")


def test_serve_takes_the_model_name_setting(tmp_path: Path, start_server) -> None:
    """`modelport serve --model-repository /mnt/models --model-name NAME`, as the ServingRuntime runs it."""
    root = model_folder(tmp_path / "models")
    with Client(start_server(root, model_name="iris")) as client:
        np.testing.assert_allclose(client.infer("iris", {"x": X})["y"], 5 * X)
