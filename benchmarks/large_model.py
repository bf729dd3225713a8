"""A model over protobuf's 2 GB limit, end to end: build it in Keras, convert it (external data,
parity gate), serve it, predict, and hot-swap a second version, measuring time and memory.

The model is a recommender-style embedding table with a small head: Embedding(600,000 x 1,024)
float32 (2.46 GB) -> mean over 16 token ids -> Dense(8, softmax). Each step runs in its own
process so its peak resident memory (ru_maxrss / VmHWM) is its own:

    .venv/bin/python benchmarks/large_model.py --workdir /tmp/modelport-large [--rows 600000]

Reports: the Keras file's size, convert wall time and peak RSS, the server's time to ready and
peak RSS while loading (target: <= 1.5x the weights), predictions against TensorFlow's, and the
peak RSS while a second version is hot-swapped in (poll mode) and the RSS after the swap.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

GIB = 1024**3
HERE = Path(__file__).resolve().parent
BUILD = """
import sys, numpy as np, keras
rows, dim, seq, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
keras.utils.set_random_seed(0)
ids = keras.Input((seq,), dtype="int32", name="token_ids")
pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(rows, dim, name="table")(ids))
model = keras.Model(ids, keras.layers.Dense(8, activation="softmax", name="probs")(pooled))
model.save(path)
"""
PREDICT = """
import sys, numpy as np, keras
model = keras.models.load_model(sys.argv[1], compile=False)
x = np.load(sys.argv[2])["token_ids"]
np.save(sys.argv[3], model.predict(x, verbose=0))
"""


def modelport() -> list[str]:
    script = Path(sys.executable).with_name("modelport")
    return [str(script)] if script.exists() else [sys.executable, "-m", "modelport.client.cli"]


def measured(command: list[str], log: Path) -> tuple[float, int]:
    """Run `command` in a child process: (wall seconds, the child's peak RSS in bytes)."""
    wrapper = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")  # fmt: skip
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-c", wrapper, *command], stdout=subprocess.PIPE, stderr=out, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed; see {log}")
    return seconds, int(done.stdout.strip().splitlines()[-1]) * 1024


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """Peak VmRSS of a process, sampled every 20 ms (VmHWM alone cannot be reset per phase)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))
            except OSError:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def build(args: argparse.Namespace, work: Path) -> dict:
    keras_file = work / "emb.keras"
    sample = work / "sample.npz"
    results: dict = {}
    if not keras_file.exists():
        seconds, _ = measured([sys.executable, "-c", BUILD, str(args.rows), str(args.dim), str(args.seq),
                               str(keras_file)], work / "build.log")  # fmt: skip
        results["build_s"] = round(seconds, 1)
    rng = np.random.default_rng(1)
    np.savez(sample, token_ids=rng.integers(0, args.rows, (64, args.seq), dtype=np.int32))
    results["keras_file_bytes"] = keras_file.stat().st_size
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    seconds, peak = measured([*modelport(), "convert", str(keras_file), "--model-repository", str(repo), "--name",
                              "emb", "--sample", str(sample)], work / "convert.log")  # fmt: skip
    files = {p.name: p.stat().st_size for p in (repo / "emb" / "1").iterdir()}
    results.update(convert_s=round(seconds, 1), convert_peak_rss=peak, version_files=files)
    return results


def serve(args: argparse.Namespace, work: Path) -> dict:
    repo = work / "repo"
    weights = sum(size for name, size in ((p.name, p.stat().st_size) for p in (repo / "emb" / "1").iterdir())
                  if name != "conversion.json")  # fmt: skip
    log = open(work / "serve.log", "w")
    start = time.perf_counter()
    server = subprocess.Popen([*modelport(), "serve", "--model-repository", str(repo), "--grpc-port", "0",
                               "--http-port", "0", "--metrics-port", "0", "--host", "127.0.0.1",
                               "--model-control-mode", "poll", "--repository-poll-secs", "1"],
                              stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        address = _wait_for(work / "serve.log", r"listening on 127\.0\.0\.1:(\d+)", 600)
        ready_s = time.perf_counter() - start
        load_peak = status_kib(server.pid, "VmHWM")
        serving_rss = status_kib(server.pid, "VmRSS")
        loaded = _wait_for(work / "serve.log", r"model_loaded model=emb version=1 .*seconds=([\d.]+)", 5)
        from modelport.client import Client

        client = Client(f"127.0.0.1:{address}", timeout=120)
        x = np.load(work / "sample.npz")["token_ids"]
        served = client.predict("emb", x)
        subprocess.run([sys.executable, "-c", PREDICT, str(work / "emb.keras"), str(work / "sample.npz"),
                        str(work / "expected.npy")], check=True, capture_output=True)  # fmt: skip
        difference = float(np.max(np.abs(served - np.load(work / "expected.npy"))))
        swap = _hot_swap(client, server.pid, repo)
        return {"weights_bytes": weights, "ready_s": round(ready_s, 1), "load_s_logged": float(loaded),
                "load_peak_rss": load_peak, "load_peak_over_weights": round(load_peak / weights, 2),
                "serving_rss": serving_rss, "max_abs_difference_vs_tensorflow": difference, **swap}  # fmt: skip
    finally:
        server.terminate()
        server.wait(60)
        log.close()


def _hot_swap(client, pid: int, repo: Path) -> dict:
    """Publish version 2 (a copy of 1, renamed in atomically) and wait until it serves alone."""
    staging = repo / "emb" / ".tmp-2"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(repo / "emb" / "1", staging)
    os.utime(staging / "model.onnx")
    before = status_kib(pid, "VmRSS")
    sampler = Sampler(pid)
    start = time.perf_counter()
    staging.rename(repo / "emb" / "2")
    while [m.version for m in client.repository_index() if m.state == "READY"] != ["2"]:
        if time.perf_counter() - start > 600:
            raise SystemExit("version 2 did not replace version 1 within 600 s")
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    time.sleep(2)  # let the retired version's memory go back
    peak = sampler.stop()
    shutil.rmtree(repo / "emb" / "2")
    return {"swap_s": round(seconds, 1), "swap_rss_before": before, "swap_peak_rss": peak,
            "swap_rss_after": status_kib(pid, "VmRSS")}  # fmt: skip


def _wait_for(log: Path, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text())
        if found:
            return found.group(1)
        time.sleep(0.2)
    raise SystemExit(f"'{pattern}' not in {log} after {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/modelport-large"))
    parser.add_argument("--rows", type=int, default=600_000, help="embedding rows (600,000 x 1,024 = 2.46 GB)")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--skip-convert", action="store_true", help="reuse <workdir>/repo")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {"table": f"{args.rows} x {args.dim} float32 = {args.rows * args.dim * 4 / GIB:.2f} GiB"}
    if not args.skip_convert:
        results.update(build(args, args.workdir))
    results.update(serve(args, args.workdir))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
