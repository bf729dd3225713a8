"""Seed model 2: the CNN (Conv 32 -> pool -> Conv 64 -> pool -> Dense 64 -> Dense 10 softmax) on
scikit-learn's 8x8 digits (1797 images, 10 classes). Pixels (0..16) are scaled inside the model.
8x8 is too small for two unpadded 3x3 convolutions and two poolings, so the convolutions use
padding="same".

    python examples/train_cnn.py --out .demo/cnn
writes model.keras, test.npz (held-out `x` [N, 8, 8, 1], `y`) and calib.npz (256 training images,
for int8 calibration).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402


def build() -> keras.Model:
    """The seed's CNN for 8x8x1 images."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Rescaling(1 / 16, name="scale")(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_32")(x)
    x = keras.layers.MaxPooling2D(2, name="pool_1")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv_64")(x)
    x = keras.layers.MaxPooling2D(2, name="pool_2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="dense_64")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="digit")(x)
    model = keras.Model(inputs, outputs, name="cnn")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".demo/cnn"))
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = digits.images.astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    model = build()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "model.keras")
    np.savez(args.out / "test.npz", x=x_test, y=y_test)
    np.savez(args.out / "calib.npz", x=x_train[:256])  # representative inputs for int8 calibration
    print(f"cnn: test accuracy {accuracy:.4f} on {len(y_test)} examples; saved {args.out / 'model.keras'}")


if __name__ == "__main__":
    main()
