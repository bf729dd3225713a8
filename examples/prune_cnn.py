"""Pruning + int8 on the seed CNN: train it with magnitude pruning (tensorflow-model-optimization,
which works on tf-keras models), convert it (the pruning wrappers are stripped), quantize it
int8-static, and compare with the dense CNN.

    python examples/prune_cnn.py [--sparsity 0.7]

ONNX stores pruned weights densely (as zeros), so pruning alone does not shrink model.onnx; int8
shrinks the file about 4x, and the zeros make it compress much further for transport and storage
(the gzip column).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK, REPOSITORY = ROOT / ".demo" / "pruned_cnn", ROOT / "models"


def train(sparsity: float, epochs: int = 12):
    """The seed CNN in tf-keras, pruned to `sparsity` during training; returns (model, test data)."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    model = keras.Sequential([
        keras.layers.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax", name="digit"),
    ])  # fmt: skip
    steps = epochs * int(np.ceil(len(x_train) / 32))
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=int(steps * 0.7))
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    pruned.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    accuracy = pruned.evaluate(x_test, y_test, verbose=0)[1]
    print(f"pruned CNN: test accuracy {accuracy:.4f}")
    return pruned, x_train, x_test, y_test


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", type=float, default=0.7)
    args = parser.parse_args()
    from modelport.converter import convert_keras
    from modelport.converter.compress import compress

    model, x_train, x_test, y_test = train(args.sparsity)
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(WORK / "test.npz", x=x_test, y=y_test)
    np.savez(WORK / "calib.npz", x=x_train[:256])
    result = convert_keras(model, str(REPOSITORY), "cnn_pruned", sample={"image": x_test}, progress=lambda m: None)
    print(f"converted: version {result.version}, weight sparsity {result.record['weights']['sparsity']:.1%}")
    version, report = compress(REPOSITORY, "cnn_pruned", "int8-static", from_version=result.version,
                               calibration=WORK / "calib.npz", eval_data=WORK / "test.npz", progress=lambda m: None)
    print("\n".join(report.lines()))
    rows = [("pruned fp32", REPOSITORY / "cnn_pruned" / str(result.version) / "model.onnx"),
            ("pruned + int8", REPOSITORY / "cnn_pruned" / str(version) / "model.onnx")]
    dense = REPOSITORY / "cnn" / "1" / "model.onnx"
    if dense.exists():
        rows.insert(0, ("dense fp32 (make demo)", dense))
    base = rows[0][1].stat().st_size
    print("| model | model.onnx | vs first | gzip -9 |")
    print("|---|---|---|---|")
    for label, path in rows:
        size, packed = path.stat().st_size, len(gzip.compress(path.read_bytes(), 9))
        print(f"| {label} | {size / 1024:.1f} KiB | {size / base:.2f}x | {packed / 1024:.1f} KiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
