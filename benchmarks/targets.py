"""The targets of the suite: what each measures, its reference, and how it fills its rows.

A target is a function run(ctx, row) (or run(ctx, {name: row}) when one measurement fills several
rows); TARGETS lists them in the order they run, with each row's title and goal, and run_target
runs one, recording a failure or a skip in its rows instead of raising.
"""

from __future__ import annotations

import contextlib
import re
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from compare import Server  # benchmarks/compare.py
from context import SMALL_CPUS, Ctx, batched_config, repository
from machine import cpu_text, ort_providers
from measure import (
    alternate,
    inprocess,
    load,
    median_run,
    modelport_command,
    modelport_threads,
    redis_server,
    serving,
    stub_command,
)
from report import Row, cpu_note, errors_note, log, rps

from modelport.client import bench


class Skip(Exception):
    """The target cannot run here; the message says why."""


def _ratio_rows(row: Row, runs: dict[str, list[tuple[bench.LevelResult, dict]]], ours: str, ref: str,
                items: bool = False) -> tuple[bench.LevelResult, bench.LevelResult]:  # fmt: skip
    """Fill `row` from alternating runs: the ratio of the median runs of `ours` and `ref` (req/s, or
    items/s with `items`), every run, and the CPU and error notes of the medians; the two medians."""
    mine, theirs = median_run([r for r, _ in runs[ours]]), median_run([r for r, _ in runs[ref]])
    value = (lambda r: r.items_per_s) if items else (lambda r: r.requests_per_s)
    row.ratio = value(mine) / value(theirs) if value(theirs) else float("nan")
    row.measured, row.reference = rps(mine, items), f"{ref}: {rps(theirs, items)}"
    if len(runs[ours]) > 1:
        for label in (ours, ref):
            row.notes.append(f"{label} runs " + ", ".join(f"{value(r):,.0f}" for r, _ in runs[label])
                             + f" (median of {len(runs[label])})")
    for label, median in ((ours, mine), (ref, theirs)):
        cpu = next(c for r, c in runs[label] if r is median)
        row.notes += [cpu_note(label, cpu)] + errors_note(label, median)
    row.details["runs"] = {label: [dict(r.to_dict(), cpu=c) for r, c in found] for label, found in runs.items()}
    return mine, theirs


def t_mlp_vs_stub(ctx: Ctx, row: Row) -> None:
    """The seed-sized MLP at batch 1, concurrency 16 against minimal_stub.py (and its --inline mode)."""
    cpus = ctx.pair()
    repo = repository(ctx, "mlp", {"mlp": ("mlp", None, None)})
    model = repo / "mlp" / "1" / "model.onnx"
    sides = [
        ("modelport", lambda: serving(modelport_command(repo), "modelport", cpus, ctx.log_path(row.name, "modelport"))),
        ("stub", lambda: serving(stub_command(model, "mlp"), "stub", cpus, ctx.log_path(row.name, "stub"))),
        ("stub --inline", lambda: serving(stub_command(model, "mlp", "--inline", "--intra-op-threads", "1"),
                                          "stub --inline", cpus, ctx.log_path(row.name, "stub-inline"))),
    ]
    runs = alternate(ctx, row, sides, "mlp", batch=1, concurrency=16, client_cpus=cpus, repeat=ctx.repeat)
    _ratio_rows(row, runs, "modelport", "stub")
    # modelport runs this model inline on the event loop (its warm-up run is under 50 us) with one
    # intra-op thread; the stub doing the same is the stricter reference, reported beside the target.
    inline = median_run([r for r, _ in runs["stub --inline"]])
    mine = median_run([r for r, _ in runs["modelport"]])
    row.details["vs_stub_inline"] = mine.requests_per_s / inline.requests_per_s if inline.requests_per_s else None
    row.notes.append(f"stub --inline (session on the event loop, 1 intra-op thread, as modelport runs this model): "
                     f"{rps(inline)}, modelport / it = {row.details['vs_stub_inline']:.2f}; runs "
                     + ", ".join(f"{r.requests_per_s:,.0f}" for r, _ in runs["stub --inline"]))
    where = (f"servers and client on CPUs {cpu_text(cpus)}" if cpus
             else "no pinning (fewer than 4 CPUs): servers and client share them all")
    row.notes.insert(0, f"batch 1, concurrency 16, 1 client process; {where}; "
                        "modelport defaults (metrics, validation on)")


def _cnn_stand_in(ctx: Ctx, row: Row) -> bool:
    """resnet50_cpu_vs_inprocess on a small box: True when it runs the CNN instead (--quick)."""
    if ctx.big or ctx.allow_small:
        return False
    if ctx.quick:
        return True
    raise Skip(f"needs {SMALL_CPUS} CPUs (server on 0-7, client on 8-15); this machine has {len(ctx.cpus)} usable "
               "(--quick runs the CNN instead as a smoke test)")  # fmt: skip


def t_resnet50_cpu(ctx: Ctx, row: Row) -> None:
    """ResNet-50 on CPU, batch 8, concurrency 4, against in-process ORT with the same threads."""
    stand_in = _cnn_stand_in(ctx, row)
    name = "cnn" if stand_in else "resnet50"
    server_cpus, client_cpus = (None, None) if stand_in else ctx.halves()
    repo = repository(ctx, name, {name: (name, None, None)})
    threads = modelport_threads(server_cpus)
    with serving(modelport_command(repo), "modelport", server_cpus, ctx.log_path(row.name, "modelport")) as server:
        ours, cpu = load(ctx, server, name, batch=8, concurrency=4, client_cpus=client_cpus)
    ref = inprocess(ctx, repo / name / "1" / "model.onnx", batch=8, threads=threads, cpus=server_cpus)
    row.ratio = ours.items_per_s / ref["items_per_s"]
    row.measured = rps(ours, items=True)
    row.reference = f"in-process: {ref['items_per_s']:,.0f} items/s (p99 {ref['p99_ms']:.1f} ms)"
    if stand_in:
        row.notes.append(f"SMALL BOX (--quick, {len(ctx.cpus)} CPUs): the CNN stands in for ResNet-50, nothing pinned")
    else:
        row.notes.append(f"ResNet-50; server on CPUs {cpu_text(server_cpus)}, client on {cpu_text(client_cpus)}")
    row.notes.append(f"batch 8, concurrency 4; in-process: {threads} intra-op threads (as modelport's session), "
                     f"1 calling thread (modelport runs one batch at a time per instance)")  # fmt: skip
    row.notes += errors_note("modelport", ours) + [cpu_note("modelport", cpu)]
    row.details.update(model=name, modelport=dict(ours.to_dict(), cpu=cpu), inprocess=ref)


def t_cnn(ctx: Ctx, rows: dict[str, Row]) -> None:
    """The seed-2 CNN, batch 8, concurrency 4, against the stub and in-process ORT (two rows)."""
    server_cpus, client_cpus = ctx.halves() if ctx.big or ctx.allow_small else (None, None)
    repo = repository(ctx, "cnn", {"cnn": ("cnn", None, None)})
    model = repo / "cnn" / "1" / "model.onnx"
    threads = modelport_threads(server_cpus)
    results = {}
    for label, command in (("modelport", modelport_command(repo)), ("stub", stub_command(model, "cnn"))):
        with serving(command, label, server_cpus, ctx.log_path("cnn", label)) as server:
            results[label] = load(ctx, server, "cnn", batch=8, concurrency=4, client_cpus=client_cpus)
    ref = inprocess(ctx, model, batch=8, threads=threads, cpus=server_cpus)
    ours, cpu = results["modelport"]
    stub, stub_cpu = results["stub"]
    where = (f"server on CPUs {cpu_text(server_cpus)}, client on {cpu_text(client_cpus)}" if server_cpus
             else "no pinning (fewer than 16 CPUs)")  # fmt: skip
    common = [f"batch 8, concurrency 4; {where}", cpu_note("modelport", cpu)] + errors_note("modelport", ours)
    if "cnn_vs_stub" in rows:
        row = rows["cnn_vs_stub"]
        row.ratio = ours.items_per_s / stub.items_per_s
        row.measured, row.reference = rps(ours, items=True), f"stub: {rps(stub, items=True)}"
        row.notes += common + [cpu_note("stub", stub_cpu)] + errors_note("stub", stub)
        row.details.update(modelport=dict(ours.to_dict(), cpu=cpu), stub=dict(stub.to_dict(), cpu=stub_cpu))
    if "cnn_vs_inprocess" in rows:
        row = rows["cnn_vs_inprocess"]
        row.ratio = ours.items_per_s / ref["items_per_s"]
        row.measured = rps(ours, items=True)
        row.reference = f"in-process: {ref['items_per_s']:,.0f} items/s (p99 {ref['p99_ms']:.2f} ms)"
        row.notes += common + [f"in-process: {threads} intra-op threads, 1 calling thread"]
        row.details.update(modelport=dict(ours.to_dict(), cpu=cpu), inprocess=ref)


def t_cnn_batching(ctx: Ctx, row: Row) -> None:
    """The CNN with batch-1 requests at concurrency 32, dynamic batching on against off."""
    server_cpus, client_cpus = ctx.halves() if ctx.big or ctx.allow_small else (None, None)
    processes = 2 if ctx.big else 1
    repo_plain = repository(ctx, "cnn", {"cnn": ("cnn", None, None)})
    config = batched_config("cnn_batched")
    if ctx.cnn_delay_us is not None:
        config = re.sub(r"max_queue_delay_microseconds:\s*\d+", f"max_queue_delay_microseconds: {ctx.cnn_delay_us}",
                        config)
    repo_batched = repository(ctx, "cnn_batched", {"cnn": ("cnn", config, None)})
    sides = [(label, lambda repo=repo, label=label: serving(modelport_command(repo), label, server_cpus,
                                                           ctx.log_path(row.name, label.replace(" ", "-"))))
             for label, repo in (("batching", repo_batched), ("no batching", repo_plain))]
    runs = alternate(ctx, row, sides, "cnn", batch=1, concurrency=32, client_cpus=client_cpus, repeat=ctx.repeat,
                     processes=processes)
    ours, ref = _ratio_rows(row, runs, "batching", "no batching", items=True)
    delay = re.search(r"max_queue_delay_microseconds:\s*(\d+)", config)
    where = (f"server on CPUs {cpu_text(server_cpus)}, {processes} client process(es) on {cpu_text(client_cpus)}"
             if server_cpus else "no pinning")  # fmt: skip
    row.notes[:0] = [
        "batch-1 requests, concurrency 32; max_batch_size 64, "
        f"max_queue_delay {delay.group(1) if delay else '?'} us; {where}",
        f"p99 {ours.p99_ms:.1f} ms with batching vs {ref.p99_ms:.1f} ms without",
    ]


def t_mlp_workers(ctx: Ctx, row: Row) -> None:
    """The MLP under many connections, --workers 8 (16-core layout) against --workers 1."""
    if not ctx.big and not ctx.allow_small:
        raise Skip(f"needs {SMALL_CPUS} CPUs (server on 0-7, 8 client processes on 8-15); "
                   f"this machine has {len(ctx.cpus)} usable")
    server_cpus, client_cpus = ctx.halves()
    many = 8 if ctx.big else max(2, len(server_cpus))
    processes = 8 if ctx.big else len(client_cpus)
    concurrency = 128 if ctx.big else 32
    repo = repository(ctx, "mlp", {"mlp": ("mlp", None, None)})
    found = {}
    for workers in (many, 1):
        label = f"workers-{workers}"
        with serving(modelport_command(repo, "--workers", str(workers)), label, server_cpus,
                     ctx.log_path(row.name, label), listeners=workers) as server:  # fmt: skip
            # One request per channel: many connections, so SO_REUSEPORT spreads them evenly.
            found[workers] = load(ctx, server, "mlp", batch=1, concurrency=concurrency, processes=processes,
                                  client_cpus=client_cpus, requests_per_channel=1)  # fmt: skip
    (ours, cpu), (ref, ref_cpu) = found[many], found[1]
    row.ratio = ours.requests_per_s / ref.requests_per_s
    row.measured, row.reference = f"--workers {many}: {rps(ours)}", f"--workers 1: {rps(ref)}"
    if not ctx.big:
        row.notes.append(f"SMALL BOX (--allow-small, {len(ctx.cpus)} CPUs): scaled down, not the target's numbers")
    row.notes += [
        f"batch 1, concurrency {concurrency} from {processes} client processes (1 request per connection) on CPUs "
        f"{cpu_text(client_cpus)}; server on {cpu_text(server_cpus)}",
        cpu_note(f"--workers {many}", cpu), cpu_note("--workers 1", ref_cpu),
    ] + errors_note(f"--workers {many}", ours) + errors_note("--workers 1", ref)
    row.details.update(workers_many=dict(ours.to_dict(), cpu=cpu, workers=many),
                       workers_1=dict(ref.to_dict(), cpu=ref_cpu))


def t_resnet50_gpu(ctx: Ctx, rows: dict[str, Row]) -> None:
    """ResNet-50 on CUDA with dynamic batching (1 and 4 workers) against in-process ORT CUDA at batch 32."""
    if not ctx.gpu:
        raise Skip("pass --gpu (needs onnxruntime-gpu and a CUDA GPU)")
    providers = ort_providers()
    if "CUDAExecutionProvider" not in providers:
        raise RuntimeError(f"onnxruntime has no CUDAExecutionProvider here (providers: {', '.join(providers)})")
    server_cpus, client_cpus = ctx.halves() if ctx.big or ctx.allow_small else (None, None)
    processes = 4 if ctx.big else 1
    config = batched_config("resnet50_gpu_batched")
    repo = repository(ctx, "resnet50_gpu", {"resnet50": ("resnet50", config, None)})
    prewarm = 2.0 if ctx.quick else 5.0
    # resnet50_gpu: the target as the issue states it; resnet50_gpu_workers: the same per worker
    # process (64 outstanding requests each), the way to use more of the GPU than one event loop can.
    plans = [(name, workers, 64 * workers) for name, workers in (("resnet50_gpu", 1), ("resnet50_gpu_workers", 4))
             if name in rows]
    found = {}
    for name, workers, concurrency in plans:
        label = f"modelport-cuda-w{workers}"
        command = modelport_command(repo, "--execution-provider", "cuda", "--workers", str(workers))
        with serving(command, label, server_cpus, ctx.log_path(name, label), listeners=workers) as server:
            result = load(ctx, server, "resnet50", batch=1, concurrency=concurrency, processes=processes,
                          client_cpus=client_cpus, prewarm=prewarm,
                          requests_per_channel=1 if workers > 1 else 8)  # fmt: skip
            fallback = [line.strip() for line in server.lines if "CPU fallback" in line]
            fallback += [line.strip() for line in server.lines if "not available in this onnxruntime" in line]
        found[name] = (workers, concurrency, result, fallback)
    ref = inprocess(ctx, repo / "resnet50" / "1" / "model.onnx", batch=32, threads=modelport_threads(server_cpus),
                    cpus=server_cpus, provider="cuda")  # fmt: skip
    delay = re.search(r"max_queue_delay_microseconds:\s*(\d+)", config)
    for name, (workers, concurrency, (ours, cpu), fallback) in found.items():
        row = rows[name]
        row.ratio = ours.items_per_s / ref["items_per_s"]
        row.measured = f"modelport cuda, --workers {workers}: {rps(ours, items=True)}"
        row.reference = f"in-process CUDA batch 32: {ref['items_per_s']:,.0f} items/s (p99 {ref['p99_ms']:.1f} ms)"
        row.details.update(modelport=dict(ours.to_dict(), cpu=cpu, workers=workers), inprocess=ref,
                           server_fallback_lines=fallback, cuda=not fallback)  # fmt: skip
        row.notes += [
            "server on CUDAExecutionProvider: "
            + ("yes (no CPU-fallback line in its log)" if not fallback else f"NO: {fallback[0]}"),
            f"in-process session on {ref['provider']}",
            f"batch-1 requests, concurrency {concurrency} from {processes} client process(es)"
            + (f" on CPUs {cpu_text(client_cpus)}, server on {cpu_text(server_cpus)}" if server_cpus else "")
            + f"; --workers {workers}, max_batch_size 32, max_queue_delay {delay.group(1) if delay else '?'} us; "
            f"{prewarm:g} s unmeasured pre-warm",
            cpu_note("modelport", cpu),
        ] + errors_note("modelport", ours)
        if fallback or ref["provider"] != "CUDAExecutionProvider":
            row.judge()
            row.status = "error"
            row.error = "not on CUDA: " + (fallback[0] if fallback else f"in-process session on {ref['provider']}")


def t_drift_cost(ctx: Ctx, row: Row) -> None:
    """The MLP as in mlp_vs_stub with drift tracking (input statistics in conversion.json) against without."""
    cpus = ctx.pair()
    features = 30
    stats = {"x": {"count": 1000, "mean": [0.0] * features, "std": [1.0] * features,
                   "min": [-4.0] * features, "max": [4.0] * features}}  # fmt: skip
    plain = repository(ctx, "mlp", {"mlp": ("mlp", None, None)})
    drift = repository(ctx, "mlp_drift", {"mlp": ("mlp", None, {"input_statistics": stats})})
    scraped: list[str] = []

    @contextlib.contextmanager
    def with_drift() -> Iterator[Server]:
        with serving(modelport_command(drift), "drift on", cpus, ctx.log_path(row.name, "drift-on")) as server:
            yield server
            scraped.append(_scrape_drift_rows(server))

    sides = [
        ("drift on", with_drift),
        ("drift off",
         lambda: serving(modelport_command(plain), "drift off", cpus, ctx.log_path(row.name, "drift-off"))),
    ]
    runs = alternate(ctx, row, sides, "mlp", batch=1, concurrency=16, client_cpus=cpus, repeat=ctx.repeat)
    _ratio_rows(row, runs, "drift on", "drift off")
    where = f"server and client on CPUs {cpu_text(cpus)}" if cpus else "no pinning"
    cost = (1 - row.ratio) * 100 if row.ratio else float("nan")
    row.notes.insert(0, f"cost {cost:.1f}% of req/s (claim: < 5%); MLP batch 1, concurrency 16; {where}; "
                        "drift tracking confirmed by /metrics: "
                        f"{scraped[-1] if scraped else 'not scraped'}")  # fmt: skip


def t_quality_cost(ctx: Ctx, row: Row) -> None:
    """The MLP as in mlp_vs_stub, every request with an id (online quality remembers each
    prediction) against none: with the memory:// store and with a real Redis."""
    cpus = ctx.pair()
    repo = repository(ctx, "mlp", {"mlp": ("mlp", None, None)})
    with redis_server(ctx.work / "redis") as url:
        def start(label: str, *extra: str):
            return lambda: serving(modelport_command(repo, *extra), label, cpus, ctx.log_path(row.name, label))

        sides = [("no id", start("no id")), ("id, memory", start("id, memory")),
                 ("id, redis", start("id, redis", "--feedback-store", url))]  # fmt: skip
        ids = {"id, memory": "bench", "id, redis": "bench"}
        runs = alternate(ctx, row, sides, "mlp", batch=1, concurrency=16, client_cpus=cpus, repeat=ctx.repeat,
                         request_ids=ids)  # fmt: skip
    memory, _ = _ratio_rows(row, {k: runs[k] for k in ("id, memory", "no id")}, "id, memory", "no id")
    redis, plain = _ratio_rows(row, {k: runs[k] for k in ("id, redis", "no id")}, "id, redis", "no id")
    ratio = {label: r.requests_per_s / plain.requests_per_s for label, r in (("memory", memory), ("redis", redis))}
    row.notes.insert(0, f"id + memory:// {memory.requests_per_s:,.0f} req/s ({ratio['memory']:.2f}), "
                        f"id + redis:// {redis.requests_per_s:,.0f} req/s ({ratio['redis']:.2f}) "
                        f"against no id {plain.requests_per_s:,.0f}; MLP batch 1, concurrency 16; every request "
                        "carries the same id, so each overwrites one prediction (the write costs the same)")


def _scrape_drift_rows(server: Server) -> str:
    """modelport_drift_window_rows from the server's /metrics (port from its log)."""
    port = next((m.group(1) for line in server.lines
                 if (m := re.search(r"metrics on http://[^:]+:(\d+)/metrics", line))), None)
    if port is None:
        return "no metrics line in the log"
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    except OSError as exc:
        return f"scrape failed: {exc}"
    rows = [line for line in text.splitlines() if line.startswith("modelport_drift_window_rows")]
    return rows[0] if rows else "no modelport_drift_window_rows series"


@dataclass(frozen=True)
class Target:
    """One measurement of the suite and the rows it fills."""

    rows: tuple[tuple[str, str, float | None], ...]  # (name, title, goal)
    run: Callable[..., None]
    multi: bool = False  # run(ctx, {name: row}) instead of run(ctx, row)


TARGETS = [
    Target((("mlp_vs_stub", "seed-1 MLP vs minimal stub, batch 1, c=16, 2 shared CPUs", 0.9),), t_mlp_vs_stub),
    Target((("resnet50_cpu_vs_inprocess", "ResNet-50 CPU vs in-process ORT, batch 8, c=4", 0.85),), t_resnet50_cpu),
    Target((("cnn_vs_stub", "seed-2 CNN vs minimal stub, batch 8, c=4", None),
            ("cnn_vs_inprocess", "seed-2 CNN vs in-process ORT, batch 8, c=4", None)), t_cnn, multi=True),
    Target((("cnn_dynamic_batching", "CNN batch-1 c=32, dynamic batching vs none", 1.3),), t_cnn_batching),
    Target((("mlp_workers", "MLP --workers 8 vs --workers 1, 16 cores", 5.0),), t_mlp_workers),
    Target((("resnet50_gpu", "ResNet-50 CUDA + dynamic batching vs in-process CUDA batch 32", 0.6),
            ("resnet50_gpu_workers", "the same with --workers 4, 64 requests outstanding per worker", None)),
           t_resnet50_gpu, multi=True),
    Target((("drift_cost", "MLP with drift tracking vs without", None),), t_drift_cost),
    Target((("quality_cost", "MLP requests with an id (Redis feedback store) vs without", None),), t_quality_cost),
]
NAMES = [name for t in TARGETS for name, _, _ in t.rows]


def run_target(ctx: Ctx, target: Target, rows: dict[str, Row]) -> None:
    """Run one target into its rows; errors and skips are recorded, never raised."""
    label = ", ".join(rows)
    log(f"{label}: start")
    for row in rows.values():
        row.status = "running"
    ctx.results.write()
    t0 = time.perf_counter()
    try:
        target.run(ctx, rows) if target.multi else target.run(ctx, next(iter(rows.values())))
        for row in rows.values():
            if row.status == "running":
                row.judge()
    except Skip as exc:
        for row in rows.values():
            row.status, row.notes = "skipped", [str(exc)]
    except Exception:  # noqa: BLE001 - record it, go on with the next target
        error = traceback.format_exc()
        for row in rows.values():
            row.status, row.error = "error", error
        log(f"{label}: ERROR {error.strip().splitlines()[-1]}")
    elapsed = time.perf_counter() - t0
    for row in rows.values():
        row.elapsed_s = round(elapsed, 1)
        ratio = f", ratio {row.ratio:.2f}" if row.ratio is not None else ""
        log(f"{row.name}: {row.status}{ratio} ({elapsed:.0f} s)")
    ctx.results.write()
