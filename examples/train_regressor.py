"""A regression model for online quality (MAE, RMSE, R²): a small Keras MLP on scikit-learn's
diabetes data (442 examples, 10 features, disease progression after one year). Normalisation is a
layer inside the model, adapted on the training split, so the served model takes raw features.

    python examples/train_regressor.py --out .demo/regressor
writes model.keras and test.npz (held-out `x`, float targets `y`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_diabetes  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test) of the diabetes data, float32 features, float64 targets."""
    dataset = load_diabetes()
    x, y = dataset.data.astype(np.float32), dataset.target.astype(np.float64)
    return train_test_split(x, y, test_size=0.25, random_state=0)


def build(x_train: np.ndarray) -> keras.Model:
    """Normalisation -> Dense 32 relu -> Dense 1 (linear): one number per row."""
    normalise = keras.layers.Normalization(name="scale")
    normalise.adapt(x_train)
    inputs = keras.Input((x_train.shape[1],), name="features")
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(normalise(inputs))
    output = keras.layers.Dense(1, name="progression")(hidden)
    model = keras.Model(inputs, output, name="regressor")
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse", metrics=["mae"])
    return model


def train(epochs: int = 60) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """The trained model and the held-out (x, y)."""
    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = data()
    model = build(x_train)
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    return model, x_test, y_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".demo/regressor"))
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    model, x_test, y_test = train(args.epochs)
    _, mae = model.evaluate(x_test, y_test, verbose=0)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "model.keras")
    np.savez(args.out / "test.npz", x=x_test, y=y_test)
    print(f"regressor: test MAE {mae:.2f} on {len(y_test)} examples; saved {args.out / 'model.keras'}")


if __name__ == "__main__":
    main()
