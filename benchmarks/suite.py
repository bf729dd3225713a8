"""Every throughput target of the project in one run: modelport against its references, same
machine, same run, written to `DIR/results.json` and `DIR/results.md` as each target finishes.

    python benchmarks/suite.py --out /tmp/suite                  # 16-core box: everything but the GPU (~5 min)
    python benchmarks/suite.py --out /tmp/suite --gpu            # ... and ResNet-50 on CUDA
    python benchmarks/suite.py --out /tmp/suite --quick          # a laptop: ~2 s per level, smoke-test sizes
    python benchmarks/suite.py --out /tmp/suite --only mlp_vs_stub,drift_cost

Targets (ratio = modelport / reference, both measured in this run; goal = the issue's):

| target | load | reference | goal |
|---|---|---|---|
| mlp_vs_stub | seed-1 MLP, batch 1, concurrency 16; servers and the client on the same 2 CPUs | minimal_stub.py, same load | >= 0.9 req/s |
| resnet50_cpu_vs_inprocess | ResNet-50, batch 8, concurrency 4; server on CPUs 0-7, client on 8-15 | in-process ORT on 0-7, same intra-op threads, batch 8 | >= 0.85 items/s |
| cnn_vs_stub, cnn_vs_inprocess | seed-2 CNN, batch 8, concurrency 4 | the stub / in-process ORT | report |
| cnn_dynamic_batching | CNN, batch-1 requests, concurrency 32 | the same model without dynamic batching | >= 1.3 items/s |
| mlp_workers | MLP, batch 1, concurrency 128 from 8 client processes (CPUs 8-15); server on 0-7 | --workers 1 | >= 5 req/s |
| resnet50_gpu (--gpu) | ResNet-50 fp32, batch-1 requests, concurrency 64, cuda + dynamic batching (32); server on 0-7, 4 client processes on 8-15 | in-process ORT CUDA, batch 32 | >= 0.6 items/s |
| resnet50_gpu_workers (--gpu) | the same with --workers 4 and concurrency 256 (64 per worker) | in-process ORT CUDA, batch 32 | report |
| drift_cost | MLP as mlp_vs_stub, conversion.json with input statistics (drift on) | the same model without them | report |

A target that fails is recorded with its error; the others still run. Targets that need 16 CPUs
(resnet50_cpu_vs_inprocess, mlp_workers) are skipped on smaller machines, except that with --quick
resnet50_cpu_vs_inprocess runs the CNN instead, unpinned, as a smoke test (`--allow-small` runs
both scaled down to the CPUs there are: for testing the suite, not for numbers). ResNet-50 needs
torch + torchvision (exported once into DIR/models).

Choices made by measuring (models.BATCHED): cnn_batched waits up to 500 us for a batch to fill
(0-5000 us gave the same throughput within noise on 2 cores: the event loop, not the wait, limits
it; --cnn-delay-us tries others). resnet50_gpu_batched: max_batch_size 32 at concurrency 64 (one
batch forms while the other runs) and a 100 ms delay that keeps every batch at 32 rows: ONNX
Runtime's CUDA provider spends ~100 ms whenever the input shape changes (H100, any
cudnn_conv_algo_search), so with a 2 ms delay mixed batch sizes ran at ~160 ms per batch instead
of ~10 ms (127 vs 1,056 items/s).

The notes of each row say how busy the server's and the client's CPUs were (from /proc) and, for
modelport, what its own /metrics say of the level: rows per ONNX Runtime run, ms per run, the
share of the time a session ran, queue time per request.

This file is the command line; the work is in its neighbours:

- targets.py: each target, the TARGETS table (names, titles, goals) and run_target
- measure.py: servers (`modelport serve`, minimal_stub.py) pinned and always stopped, the load
  from `modelport bench`'s generator, in-process ORT references, the server's own /metrics
- context.py: Ctx (sizes, folders, CPU layout, results) and the models and repositories in WORK
- machine.py: the machine's description and the busy cores of server and client (/proc)
- report.py: result rows, results.json / results.md, progress lines

Exact commands (16-core GPU box, ~5 min; a 2-core laptop, ~1.5 min):

    python benchmarks/suite.py --out /tmp/suite --work /tmp/suite-work --gpu
    python benchmarks/suite.py --out /tmp/suite --quick
"""  # noqa: E501 (a markdown table's rows cannot be wrapped)

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the neighbours below, also when this file is imported from elsewhere

from context import Ctx  # noqa: E402  (benchmarks/context.py)
from machine import machine_info  # noqa: E402
from report import Results, Row, log, utc_now  # noqa: E402
from targets import NAMES, TARGETS, run_target  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description="Run every modelport throughput target; "
                                            "write DIR/results.json and results.md.",
                                epilog=f"targets: {', '.join(NAMES)}")  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="output folder: results.json, results.md, logs/")
    p.add_argument("--work", type=Path,
                   help="folder for the models and repositories (default: OUT; ResNet-50 is ~100 MB)")
    p.add_argument("--quick", action="store_true",
                   help="short levels (2 s after 0.5 s warm-up) and small-box stand-ins: "
                        "a smoke test, not the numbers")
    p.add_argument("--only", help="comma-separated target names (default: all)")
    p.add_argument("--gpu", action="store_true", help="also run resnet50_gpu (onnxruntime-gpu with CUDA)")
    p.add_argument("--seconds", type=float, help="measured seconds per level (default 5; 2 with --quick)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per level (default 1; 0.5 with --quick)")
    p.add_argument("--repeat", type=int,
                   help="alternating rounds of mlp_vs_stub, cnn_dynamic_batching and drift_cost (default 3)")
    p.add_argument("--allow-small", action="store_true",
                   help="run the 16-CPU targets scaled down to this machine's CPUs "
                        "(tests the suite; numbers mean little)")
    p.add_argument("--cnn-delay-us", type=int,
                   help="cnn_dynamic_batching's max_queue_delay_microseconds (default: models.BATCHED's)")
    args = p.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(NAMES)
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")

    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers on SIGTERM too
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    repeat = args.repeat or 3
    started = time.perf_counter()
    machine = machine_info()
    log(f"machine: {machine['summary']}")
    log(f"software: {machine['software']}")
    header = {
        "started_at": utc_now(), "finished_at": None, "quick": args.quick, "seconds": seconds, "warmup": warmup,
        "repeat": repeat, "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine,
    }  # fmt: skip
    results = Results(args.out, header)
    ctx = Ctx(args.out, args.work or args.out, args.quick, seconds, warmup, repeat, args.allow_small, args.gpu,
              sorted(os.sched_getaffinity(0)), results, cnn_delay_us=args.cnn_delay_us)  # fmt: skip
    plan = []
    for target in TARGETS:
        rows = {name: results.add(Row(name, title, goal)) for name, title, goal in target.rows if name in only}
        if rows:
            plan.append((target, rows))
    results.write()
    try:
        for target, rows in plan:
            run_target(ctx, target, rows)
    except KeyboardInterrupt:
        log("interrupted; results so far are written")
        for row in results.rows.values():
            if row.status in ("pending", "running"):
                row.status, row.error = "error", "interrupted"
        return 130
    finally:
        header["finished_at"] = utc_now()
        header["elapsed_s"] = round(time.perf_counter() - started, 1)
        results.write()
        log(f"done in {header['elapsed_s']:.0f} s: {args.out / 'results.md'}")
    print((args.out / "results.md").read_text())
    return 1 if any(r.status == "error" for r in results.rows.values()) else 0


def _interrupt(signum: int, _frame: object) -> None:
    """SIGTERM as Ctrl-C: the servers' context managers stop them and main() writes the results."""
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
