"""`make demo`: the whole path a user walks, end to end, on this machine.

1. train the two seed models on data that ships with scikit-learn (skipped when already trained),
2. convert them to ONNX into ./models (parity-checked against TensorFlow on their test data) and
   measure the Keras model's own test accuracy, the figure the service must match,
3. start `modelport serve` on the repository,
4. call it with the Python client: predictions next to the true labels, accuracy through the service
   next to the Keras accuracy,
5. stop the server (SIGTERM, graceful).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's start-up chatter out of the demo
ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
REPOSITORY = ROOT / "models"
MODELS = {  # name: (training script, saved model file)
    "mlp": ("train_mlp.py", "model.h5"),
    "cnn": ("train_cnn.py", "model.keras"),
}


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def train(name: str, retrain: bool) -> None:
    script, saved = MODELS[name]
    if (WORK / name / saved).exists() and not retrain:
        print(f"{name}: already trained ({WORK / name / saved}); --retrain to train again")
        return
    subprocess.run([sys.executable, str(ROOT / "examples" / script), "--out", str(WORK / name)], check=True)


def convert(name: str) -> None:
    from modelport.converter import convert as run

    folder = REPOSITORY / name
    if folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir()):
        print(f"{name}: already in {folder}; serving its latest version")
        return
    _, saved = MODELS[name]
    run(str(WORK / name / saved), str(REPOSITORY), name, sample=str(WORK / name / "test.npz"))


def keras_accuracy(name: str) -> float:
    """The trained Keras model's accuracy on the test split, decoded as the service's scores are:
    the reference the served ONNX version must reproduce."""
    import keras

    _, saved = MODELS[name]
    with np.load(WORK / name / "test.npz") as data:
        x, y = data["x"], data["y"]
    scores = keras.models.load_model(WORK / name / saved, compile=False).predict(x, batch_size=64, verbose=0)
    return float(np.mean(_classes(scores) == y))


def _classes(scores: np.ndarray) -> np.ndarray:
    # Strictly above 0.5, as Keras' binary accuracy counts it.
    return (scores[:, 0] > 0.5).astype(int) if scores.shape[1] == 1 else scores.argmax(axis=1)


def serve() -> tuple[subprocess.Popen, str]:
    """Start `modelport serve` on a free port; return the process and its address."""
    command = [sys.executable, "-m", "modelport.client.cli", "serve", "--model-repository", str(REPOSITORY),
               "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", "--host", "127.0.0.1"]
    print("$ modelport serve --model-repository models --grpc-port 0 --host 127.0.0.1")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        print(f"   [server] {line.rstrip()}")
        match = re.search(r"listening on ([^:\s]+):(\d+)", line)
        if match:
            threading.Thread(target=_echo, args=(process.stderr,), daemon=True).start()
            return process, f"{match.group(1)}:{match.group(2)}"
    raise SystemExit(f"the server exited with code {process.wait()} before it listened")


def _echo(stream) -> None:
    for line in stream:
        print(f"   [server] {line.rstrip()}")


def call(address: str, reference: dict[str, float]) -> None:
    from modelport.client import Client

    with Client(address, timeout=30) as client:
        for _ in range(300):
            if client.is_server_ready():
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"the server at {address} did not become ready in 30 s")
        for name in MODELS:
            with np.load(WORK / name / "test.npz") as data:
                x, y = data["x"], data["y"]
            meta = client.model_metadata(name)
            print(f"\n{name} v{meta.versions[-1]}: input {meta.inputs[0].name} {list(meta.inputs[0].shape)} "
                  f"-> output {meta.outputs[0].name} {list(meta.outputs[0].shape)}")
            scores = client.model(name).predict(x, batch_size=64)
            predicted = _classes(scores)
            print("   prediction  true label  score")
            for i in range(10):
                score = scores[i, 0] if scores.shape[1] == 1 else scores[i, predicted[i]]
                mark = "" if predicted[i] == y[i] else "   <- wrong"
                print(f"   {predicted[i]:>10}  {y[i]:>10}  {score:.3f}{mark}")
            print(f"   accuracy through the service: {np.mean(predicted == y):.4f} on {len(y)} test examples "
                  f"(Keras: {reference[name]:.4f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retrain", action="store_true", help="train again even if .demo/ has the models")
    args = parser.parse_args()
    step("1/4 training the seed models (scikit-learn data, no download)")
    for name in MODELS:
        train(name, args.retrain)
    step("2/4 converting to ONNX with the parity gate")
    reference = {}
    for name in MODELS:
        convert(name)
        reference[name] = keras_accuracy(name)
        print(f"{name}: Keras test accuracy {reference[name]:.4f}")
    step("3/4 serving ./models")
    process, address = serve()
    try:
        step(f"4/4 calling {address} with modelport.client")
        call(address, reference)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        print(f"\nserver stopped (exit code {code})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
