"""Explanations of models that went through the real converter (TensorFlow: marked slow):

* a Keras linear regression converted with --sample data: the attributions are the exact ones,
  w_i (x_i - E[x_i]) with E over the background the converter stored, within 1e-3 relative;
* the seed MLP (examples/train_mlp.py) and CNN (examples/train_cnn.py): completeness per row,
  the CNN by 2x2 pixel patches.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits

from modelport.client import Client
from modelport.converter.background import write_background
from modelport.server.background import BackgroundServer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def convert_with_sample(model, repository: Path, name: str, sample: np.ndarray) -> Path:
    """Convert with --sample data; the version folder. Until converter/pipeline.py writes the
    background itself, it is written here as the pipeline will (converter/background.py)."""
    from modelport.converter import convert_keras

    result = convert_keras(model, repository, name, sample=sample, progress=lambda _: None)
    record_path = result.path / "conversion.json"
    record = json.loads(record_path.read_text())
    if "background" not in record:
        input_name = record["inputs"][0]["name"]
        record["background"] = write_background(result.path, {input_name: sample})
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    return result.path


def assert_complete(explanation) -> None:
    for row in explanation.rows:
        total = sum(float(a.sum()) for a in row.attributions.values())
        assert total == pytest.approx(row.output - row.base_value, rel=1e-9, abs=1e-9)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    import keras

    root = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    # linear regression: weights set, not trained, so the exact attributions are known
    inputs = keras.Input((5,), name="features")
    linear = keras.Model(inputs, keras.layers.Dense(1, name="y")(inputs))
    weights = np.array([[1.5], [-2.0], [0.75], [3.0], [-0.5]], np.float32)
    linear.get_layer("y").set_weights([weights, np.array([4.0], np.float32)])
    convert_with_sample(linear, root, "linear", rng.normal(2, 3, (400, 5)).astype(np.float32))
    # the seed MLP and CNN, trained briefly (completeness does not depend on how well)
    data = load_breast_cancer()
    x, y = data.data.astype(np.float32), (data.target == 0).astype(np.int64)
    mlp = example("train_mlp").build(x)
    mlp.fit(x, y, epochs=5, batch_size=32, verbose=0)
    convert_with_sample(mlp, root, "mlp", x[:200])
    digits = load_digits()
    images, labels = digits.images.astype(np.float32)[..., None], digits.target.astype(np.int64)
    cnn = example("train_cnn").build()
    cnn.fit(images, labels, epochs=2, batch_size=64, verbose=0)
    convert_with_sample(cnn, root, "cnn", images[:300])
    np.save(root.parent / "linear-weights.npy", weights[:, 0])
    np.save(root.parent / "digits.npy", images[-6:])
    np.save(root.parent / "cancer.npy", x[-5:])
    return root


@pytest.fixture(scope="module")
def client(repository: Path):
    with BackgroundServer(repository) as server, Client(server.address, timeout=120) as c:
        yield c


def test_linear_regression_attributions_are_exact(repository: Path, client: Client) -> None:
    weights = np.load(repository.parent / "linear-weights.npy")
    with np.load(repository / "linear" / "1" / "background.npz") as stored:
        expectation = stored["features"].astype(np.float64).mean(axis=0)
    x = np.random.default_rng(1).normal(0, 4, (8, 5)).astype(np.float32)
    explanation = client.explain("linear", x)
    assert (explanation.space, explanation.background, explanation.background_rows) == ("raw", "sample", 100)
    worst = 0.0
    for i, row in enumerate(explanation.rows):
        exact = weights * (x[i] - expectation)
        got = row.attributions["features"]
        worst = max(worst, float(np.max(np.abs(got - exact) / np.abs(exact))))
    print(f"linear regression: largest relative error {worst:.3g}")
    assert worst < 1e-3, f"largest relative error {worst:.3g}"
    assert_complete(explanation)


def test_seed_mlp_completeness(repository: Path, client: Client) -> None:
    x = np.load(repository.parent / "cancer.npy")
    explanation = client.explain("mlp", x)
    assert explanation.space == "probability" and explanation.features == 30
    assert all(row.output >= 0.5 for row in explanation.rows)  # the predicted class's probability
    assert_complete(explanation)


def test_seed_cnn_completeness_by_patches(repository: Path, client: Client) -> None:
    images = np.load(repository.parent / "digits.npy")
    explanation = client.explain("cnn", images)
    assert (explanation.space, explanation.patch_size, explanation.features) == ("probability", 2, 16)
    for row in explanation.rows:
        assert row.attributions["image"].shape == (8, 8, 1)
    assert_complete(explanation)
