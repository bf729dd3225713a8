"""What every target of the suite works with: `Ctx` (sizes, folders, the CPU layout, the
results) and the models and model repositories it writes into its work folder."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import models as bench_models  # benchmarks/models.py
from report import Results, log

SMALL_CPUS = 16  # the CPU layout (server 0-7, client 8-15) of the 16-core targets


@dataclass
class Ctx:
    """What every target needs: sizes, folders, the CPUs and the results."""

    out: Path
    work: Path  # models and repositories
    quick: bool
    seconds: float
    warmup: float
    repeat: int
    allow_small: bool
    gpu: bool
    cpus: list[int]
    results: Results
    counter: int = 0
    written: set[str] = field(default_factory=set)  # models written into WORK/models in this run
    cnn_delay_us: int | None = None  # overrides cnn_batched's max_queue_delay_microseconds

    @property
    def big(self) -> bool:
        """Enough CPUs for the 16-core layout."""
        return len(self.cpus) >= SMALL_CPUS

    def halves(self) -> tuple[set[int], set[int]]:
        """Server CPUs (first 8, or first half) and client CPUs (next 8, or second half)."""
        if self.big:
            return set(self.cpus[:8]), set(self.cpus[8:16])
        half = max(1, len(self.cpus) // 2)
        return set(self.cpus[:half]), set(self.cpus[half:] or self.cpus[:half])

    def pair(self) -> set[int] | None:
        """Two CPUs for server and client together (mlp_vs_stub); None (no pinning) on a 2-3 CPU box."""
        return set(self.cpus[:2]) if len(self.cpus) >= 4 else None

    def log_path(self, target: str, label: str) -> Path:
        """OUT/logs/NN-<target>-<label>.log, numbered in the order of the run."""
        self.counter += 1
        return self.out / "logs" / f"{self.counter:02d}-{target}-{label}.log"


def model_file(ctx: Ctx, name: str) -> Path:
    """WORK/models/<name>/1/model.onnx, written on first use (ResNet-50 is kept between runs)."""
    store = ctx.work / "models"
    path = store / name / "1" / "model.onnx"
    if name == "resnet50" and path.is_file():
        return path
    if name not in ctx.written:
        t0 = time.perf_counter()
        log(f"  writing model {name} ...")
        bench_models.write(store, name)
        ctx.written.add(name)
        log(f"  model {name} written in {time.perf_counter() - t0:.1f} s")
    return path


def repository(ctx: Ctx, label: str, entries: dict[str, tuple[str, str | None, dict | None]]) -> Path:
    """A model repository WORK/repos/<label> with {served name: (model, config.pbtxt text, conversion.json)}."""
    root = ctx.work / "repos" / label
    shutil.rmtree(root, ignore_errors=True)
    for served, (model, config, conversion) in entries.items():
        folder = root / served / "1"
        folder.mkdir(parents=True)
        try:
            os.link(model_file(ctx, model), folder / "model.onnx")
        except OSError:
            shutil.copyfile(model_file(ctx, model), folder / "model.onnx")
        if config:
            (root / served / "config.pbtxt").write_text(f'name: "{served}"\n{config}')
        if conversion:
            (folder / "conversion.json").write_text(json.dumps(conversion))
    return root


def batched_config(name: str) -> str:
    """The config.pbtxt text (max_batch_size, dynamic_batching) of models.BATCHED[name]."""
    return bench_models.BATCHED[name][1]
