"""Seed model 1: the MLP (Dense 64 relu -> Dense 32 relu -> Dense 1 sigmoid) on scikit-learn's
breast-cancer data (569 examples, 30 features, binary). Normalisation is a layer inside the
model, adapted on the training split, so the served model takes raw features.

    python examples/train_mlp.py --out .demo/mlp
writes model.h5 (the seed's format) and test.npz (held-out `x`, `y`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402


def build(x_train: np.ndarray) -> keras.Model:
    """The seed's MLP with the scaling built in."""
    normalise = keras.layers.Normalization(name="scale")
    normalise.adapt(x_train)
    inputs = keras.Input((x_train.shape[1],), name="features")
    hidden = keras.layers.Dense(64, activation="relu", name="dense_64")(normalise(inputs))
    hidden = keras.layers.Dense(32, activation="relu", name="dense_32")(hidden)
    output = keras.layers.Dense(1, activation="sigmoid", name="malignant")(hidden)
    model = keras.Model(inputs, output, name="mlp")
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".demo/mlp"))
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    data = load_breast_cancer()
    # In this data set 0 is malignant; predict "malignant" as the positive class.
    x, y = data.data.astype(np.float32), (data.target == 0).astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    model = build(x_train)
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0, validation_split=0.1)
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "model.h5")
    np.savez(args.out / "test.npz", x=x_test, y=y_test)
    print(f"mlp: test accuracy {accuracy:.4f} on {len(y_test)} examples; saved {args.out / 'model.h5'}")


if __name__ == "__main__":
    main()
