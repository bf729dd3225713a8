"""Models pruned with tensorflow-model-optimization (tf-keras) convert: the pruning wrappers are
stripped, outputs match, and the sparsity is reported."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402

from modelport.converter import convert_keras  # noqa: E402


def test_pruned_model_converts_with_sparsity_reported(tmp_path: Path) -> None:
    tf_keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, 20)).astype(np.float32), rng.integers(0, 3, 256)
    model = tf_keras.Sequential([
        tf_keras.layers.Input((20,), name="features"),
        tf_keras.layers.Dense(64, activation="relu"),
        tf_keras.layers.Dense(3, activation="softmax", name="probs"),
    ])  # fmt: skip
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.6, begin_step=0, frequency=1)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    pruned.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    result = convert_keras(pruned, str(tmp_path), "pruned", sample={"features": x}, progress=lambda _: None)
    assert result.record["weights"]["sparsity"] > 0.5
    session = ort.InferenceSession(str(result.path / "model.onnx"))
    assert ([i.name for i in session.get_inputs()] == ["features"]
            and [o.name for o in session.get_outputs()] == ["probs"])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    np.testing.assert_allclose(session.run(None, {"features": x[:8]})[0], stripped(x[:8]).numpy(), atol=1e-5)
