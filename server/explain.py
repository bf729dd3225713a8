"""Explanations: per-row, per-input-element attributions of a served model's output, computed in
the serving process on the model's own instances. No protobuf here (explain_service.py is the
gRPC face).

Method: interventional Shapley values by antithetic permutation sampling over the version's
background sample (shapley.py has the maths and why). It needs nothing but the model's outputs,
so it explains any served model, and the attributions of every row add up to its output minus
the base value (the mean output over the background) to float precision.

What is explained, per model: the explained output is the request's named output, else the
model's first, and it must be floating point.
  * regressors (config `quality_kind: regression`, or one output value per row outside [0, 1]):
    the raw value (space "raw"); `target` picks the column (default 0);
  * classifiers with one value per row (sigmoid): the predicted (or requested) class's
    probability, p for class 1 and 1 - p for class 0 (space "probability"), or the logit and its
    negative when the values leave [0, 1] (space "logit");
  * classifiers with C >= 2 values per row: the predicted (argmax) or requested class's score,
    in space "probability" when every score the explanation saw (the rows and the background) lies
    in [0, 1] (softmax or sigmoid outputs), else "logit".
A regressor whose outputs happen to lie in [0, 1] needs `quality_kind: regression` in its
config.pbtxt to be explained as one.

Background: `<version>/conversion.json`'s `background` entry names an .npz of rows per input that
the converter kept (converter/background.py); a version without one is explained against a single
row of zeros, and the answer says so (`background: zeros`).

Cost: each call explains at most --explain-max-rows rows; each model runs at most
--explain-concurrency explanations at once (others wait within their time budget); a call that
outlives --explain-timeout (or its own deadline) ends in DEADLINE_EXCEEDED. The perturbed rows go
to the model's instances through its scheduler, in chunks sized to run about CHUNK_NS each, so
inference requests queue behind at most one chunk; while inference requests reach the version, an
explanation's work (building chunks and running them) takes at most --explain-share of the time: it
pauses in between. (On one instance a chunk that runs is inference that waits, so the share, not
the chunk size, is what inference gives up; measured in benchmarks/explain.py.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelport.protocol.repository import CONVERSION_FILE
from modelport.protocol.types import InferenceRequest

from . import shapley
from .dataplane import DataPlane
from .errors import DeadlineExceeded, InvalidInput, ModelportError, NotAllowed, QueueFull, Unimplemented
from .logs import event
from .scheduler import BatchingScheduler
from .settings import ServerSettings
from .validation import validate
from .versions import ModelVersion

log = logging.getLogger(__name__)

# A chunk of perturbed rows is sized to run this long (from the instance's warm-up timing): an
# inference request that arrives meanwhile waits at most about this for the instance.
CHUNK_NS = 2_000_000
CHUNK_ROWS_UNTIMED = 256  # chunk size when the instance has no warm-up timing
MAX_CHUNK_ROWS = 16384  # most rows of one chunk on a model without dynamic batching
# Chunks of perturbed rows at least this large are built on a worker thread, so that the event
# loop keeps serving requests meanwhile (numpy releases the GIL); smaller ones are not worth the hop.
OFF_LOOP_ELEMENTS = 65536
MAX_BACKGROUND_ROWS = 100  # a hand-made background file larger than this is cut to its first rows
WAITING_PER_SLOT = 8  # explanations queued per concurrency slot before RESOURCE_EXHAUSTED
FLOAT_OUTPUTS = ("FP16", "FP32", "FP64")
# Explanation durations: a row of a tiny MLP to a batch of images on a busy model.
DURATION_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass(frozen=True)
class ExplainLimits:
    """The server settings of the same names."""

    allowed: bool = True
    max_rows: int = 16
    timeout: float = 60.0
    concurrency: int = 1
    share: float = 0.05

    @classmethod
    def of(cls, settings: ServerSettings) -> ExplainLimits:
        """From the server's settings."""
        return cls(settings.allow_explain, settings.explain_max_rows, settings.explain_timeout,
                   settings.explain_concurrency, settings.explain_share)  # fmt: skip


@dataclass
class ExplainRequest:
    """One decoded ModelExplainRequest: the rows as an inference request, and the options."""

    request: InferenceRequest
    target: int | None = None
    permutations: int = 0
    patch_size: int = 0
    seed: int = 0


@dataclass(frozen=True)
class RowAttribution:
    """One explained row: attributions per input (shaped like one row of it)."""

    target: int
    output: float
    base_value: float
    attributions: dict[str, np.ndarray]


@dataclass(frozen=True)
class Explanation:
    """The answer to one explanation call."""

    model: str
    version: str
    output_name: str
    space: str
    method: str
    background: str  # "sample", "statistics" or "zeros"
    background_rows: int
    features: int
    permutations: int
    patch_size: int
    rows: list[RowAttribution]


@dataclass
class ExplainStats:
    """Counters of one model version's explanations (metrics.py reads them)."""

    calls: dict[str, int] = field(default_factory=dict)  # by outcome: OK or the gRPC status name
    rows: int = 0  # rows explained
    model_rows: int = 0  # perturbed rows run on the instances
    working: float = 0.0  # seconds spent building and running chunks of perturbed rows
    paused: float = 0.0  # seconds paused to leave the instances to inference (--explain-share)
    # Successful calls' durations: per DURATION_BUCKETS_S bucket (the last: above them), and in all.
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS_S) + 1))
    seconds: float = 0.0

    def record(self, outcome: str, seconds: float) -> None:
        """One finished call."""
        self.calls[outcome] = self.calls.get(outcome, 0) + 1
        if outcome == "OK":
            self.seconds += seconds
            self.buckets[int(np.searchsorted(DURATION_BUCKETS_S, seconds))] += 1


@dataclass(frozen=True)
class Background:
    """Rows per input that attributions are relative to, and where they came from."""

    arrays: dict[str, np.ndarray]
    source: str  # "sample" / "statistics" (the converter's) or "zeros"


@dataclass(frozen=True)
class _Target:
    """How a model's output becomes the explained number per row."""

    kind: str  # "regression", "binary" or "classes"
    space: str
    width: int  # values per row

    def value(self, output: np.ndarray, target: np.ndarray) -> np.ndarray:
        """[n] explained values from [n, width] outputs and a target per row."""
        picked = output[np.arange(len(output)), target if self.kind != "binary" else 0].astype(np.float64)
        if self.kind != "binary":
            return picked
        positive = target == 1
        if self.space == "probability":
            return np.where(positive, picked, 1.0 - picked)
        return np.where(positive, picked, -picked)

    def predicted(self, output: np.ndarray) -> np.ndarray:
        """The default target of each row."""
        if self.kind == "classes":
            return np.argmax(output, axis=1)
        if self.kind == "binary":
            threshold = 0.5 if self.space == "probability" else 0.0
            return (output[:, 0] > threshold).astype(np.int64)  # strictly, as Keras counts class 1
        return np.zeros(len(output), np.int64)


class Explainer:
    """Explanations over a data plane's models, within the limits."""

    def __init__(self, dataplane: DataPlane, limits: ExplainLimits | None = None) -> None:
        self._dp = dataplane
        self.limits = limits or ExplainLimits()
        self.stats: dict[tuple[str, int], ExplainStats] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._waiting: dict[str, int] = {}
        self._holding: dict[tuple[str, int], int] = {}  # explanations counted in a version's in_flight
        self._backgrounds: weakref.WeakKeyDictionary[ModelVersion, Background] = weakref.WeakKeyDictionary()

    async def explain(self, call: ExplainRequest) -> Explanation:
        """Explain every row of `call.request`; errors as ModelportError (see the module doc)."""
        if not self.limits.allowed:
            raise Unimplemented("explanations are turned off on this server (modelport serve --allow-explain false)")
        request = call.request
        model = self._dp.registry.resolve(request.model, request.version, request.id)
        deadline = time.monotonic() + self.limits.timeout
        if request.deadline is not None:
            deadline = min(deadline, request.deadline)
        stats = self.stats.setdefault((model.name, model.version), ExplainStats())
        start = time.perf_counter()
        key = (model.name, model.version)
        model.acquire()  # an unload or swap waits for the explanation, as for a request
        self._holding[key] = self._holding.get(key, 0) + 1
        try:
            async with self._slot(model, deadline):
                explanation = await self._explain(model, call, deadline, stats)
        except ModelportError as exc:
            stats.record(exc.code.name, time.perf_counter() - start)
            raise
        except asyncio.CancelledError:
            stats.record("CANCELLED", time.perf_counter() - start)
            raise
        finally:
            self._holding[key] -= 1
            model.release()
        seconds = time.perf_counter() - start
        stats.record("OK", seconds)
        event(log, logging.DEBUG, "explained", model=model.name, version=model.version, rows=len(explanation.rows),
              seconds=round(seconds, 3))  # fmt: skip
        return explanation

    # ------------------------------------------------------------ admission

    def _slot(self, model: ModelVersion, deadline: float) -> _Slot:
        semaphore = self._slots.get(model.name)
        if semaphore is None:
            semaphore = self._slots[model.name] = asyncio.Semaphore(self.limits.concurrency)
        waiting = self._waiting.get(model.name, 0)
        if semaphore.locked() and waiting >= WAITING_PER_SLOT * self.limits.concurrency:
            raise QueueFull(f"{model.where}: {waiting} explanations are already waiting (at most "
                            f"{self.limits.concurrency} run at once, --explain-concurrency); retry later")  # fmt: skip
        return _Slot(self, model, semaphore, deadline)

    # ------------------------------------------------------------ the work

    async def _explain(self, model: ModelVersion, call: ExplainRequest, deadline: float,
                       stats: ExplainStats) -> Explanation:  # fmt: skip
        request = call.request
        names, output_name = self._check(model, request)
        batch = len(request.inputs[names[0]][1])
        datatypes = {name: request.inputs[name][0] for name in names}
        xs = [request.inputs[name][1] for name in names]
        background = self.background(model)
        bg = _aligned(model, names, xs, background)
        who = shapley.players(names, [x.shape[1:] for x in xs], call.patch_size)
        wanted = min(call.permutations or shapley.DEFAULT_PERMUTATIONS, shapley.MAX_PERMUTATIONS)
        holding = self._holding
        runner = _Runner(model, names, datatypes, output_name, deadline, self.limits.share, stats,
                         lambda: model.in_flight > holding.get((model.name, model.version), 0))  # fmt: skip
        # The rows and the background, once: the predicted classes, the base value, the space.
        first = await runner.run([np.concatenate([x, b]) for x, b in zip(xs, bg)])
        target_of = _target_kind(model, output_name, first)
        targets = _targets(model, output_name, target_of, first[:batch], call.target)
        rng = np.random.default_rng(call.seed)
        rows, used = [], 0
        for i in range(batch):
            value = target_of.value(first, np.full(len(first), targets[i]))
            full, empty = float(value[i]), float(value[batch:].mean())
            order = shapley.permutations(who.count, wanted, rng)
            p = await asyncio.to_thread(shapley.plan, order)  # numpy work stays off the event loop
            coalition_values = await runner.coalitions([x[i] for x in xs], bg, who, p, target_of, int(targets[i]))
            phi = shapley.attribute(p, coalition_values, empty, full)
            spread = who.spread(phi)
            rows.append(RowAttribution(int(targets[i]), full, empty, dict(zip(names, spread))))
            used = len(order)
        stats.rows += batch
        method = _method(who, used, background, len(bg[0]))
        return Explanation(model.name, str(model.version), output_name, target_of.space, method, background.source,
                           len(bg[0]), who.count, used, who.patch, rows)  # fmt: skip

    def _check(self, model: ModelVersion, request: InferenceRequest) -> tuple[list[str], str]:
        """What inference would refuse, and what explanations need besides: rows within the
        limit, numeric inputs, a batch dimension, one floating-point output."""
        where = model.where
        if request.error:
            raise InvalidInput(f"{where}: {request.error}")
        validate(where, model.signature, model.spec.max_batch_size, request)
        names = [t.name for t in model.signature.inputs]
        if model.spec.max_batch_size == 0 and any(not t.shape or t.shape[0] != -1 for t in model.signature.inputs):
            raise NotAllowed(f"{where}: explanations need a batch dimension (max_batch_size > 0, or inputs whose "
                             "first dimension is free)")  # fmt: skip
        for spec in model.signature.inputs:
            if spec.datatype == "BYTES":
                raise InvalidInput(f"{where}: input '{spec.name}' is BYTES; explanations need numeric inputs")
        rows = len(request.inputs[names[0]][1])
        if rows < 1:
            raise InvalidInput(f"{where}: no rows to explain; expected 1 to {self.limits.max_rows} rows")
        if rows > self.limits.max_rows:
            raise InvalidInput(f"{where}: {rows} rows to explain; at most {self.limits.max_rows} per call "
                               "(--explain-max-rows): send them in several calls")  # fmt: skip
        if len(request.outputs) > 1:
            raise InvalidInput(f"{where}: name at most one output to explain, got "
                               f"{[o.name for o in request.outputs]}")  # fmt: skip
        output = request.outputs[0].name if request.outputs else model.signature.outputs[0].name
        spec = model.signature.output(output)
        if spec.datatype not in FLOAT_OUTPUTS:
            raise InvalidInput(f"{where}: output '{output}' is {spec.datatype}; explanations need a floating-point "
                               f"output (one of {', '.join(FLOAT_OUTPUTS)})")  # fmt: skip
        return names, output

    def background(self, model: ModelVersion) -> Background:
        """The version's background, read once (kept while the version is served)."""
        found = self._backgrounds.get(model)
        if found is None:
            found = self._backgrounds[model] = read_background(self._dp.registry.root / model.name / str(model.version),
                                                               model.where)  # fmt: skip
        return found


class _Slot:
    """Holds one of a model's explanation slots; waits for one until the deadline."""

    def __init__(self, owner: Explainer, model: ModelVersion, semaphore: asyncio.Semaphore, deadline: float) -> None:
        self._owner, self._model, self._semaphore, self._deadline = owner, model, semaphore, deadline

    async def __aenter__(self) -> None:
        name, waiting = self._model.name, self._owner._waiting
        waiting[name] = waiting.get(name, 0) + 1
        try:
            await asyncio.wait_for(self._semaphore.acquire(), max(self._deadline - time.monotonic(), 0))
        except TimeoutError:
            raise DeadlineExceeded(f"{self._model.where}: the explanation's time budget passed while it waited for "
                                   "another explanation of this model to finish (--explain-concurrency, "
                                   "--explain-timeout)") from None  # fmt: skip
        finally:
            waiting[name] -= 1

    async def __aexit__(self, *exc: object) -> None:
        self._semaphore.release()


class _Runner:
    """Runs rows on the model's instances through its scheduler, chunk by chunk, with the time
    budget and the share of the instances that inference leaves."""

    def __init__(
        self, model: ModelVersion, names: list[str], datatypes: dict[str, str], output: str, deadline: float,
        share: float, stats: ExplainStats, inference_pending: Callable[[], bool],
    ) -> None:  # fmt: skip
        self.model, self.names, self.datatypes, self.output = model, names, datatypes, output
        self.deadline, self.share, self.stats = deadline, share, stats
        self.inference_pending = inference_pending  # inference requests admitted to the version, not answered
        self.limit, self.chunk = _chunk_rows(model)

    async def run(self, inputs: list[np.ndarray]) -> np.ndarray:
        """The output for `inputs` (all rows), flattened to [rows, values per row]."""
        total, start, parts = len(inputs[0]), 0, []
        while start < total:
            stop = min(start + self.chunk, total)
            parts.append(await self._chunk(lambda a=start, b=stop: [x[a:b] for x in inputs], False, None))
            start = stop
        return np.concatenate(parts)

    async def coalitions(self, x: list[np.ndarray], bg: list[np.ndarray], who: shapley.Players, p: shapley.Plan,
                         target: _Target, target_index: int) -> np.ndarray:  # fmt: skip
        """v(S) for each coalition of `p`: the mean explained value over the background."""
        b, elements = len(bg[0]), sum(len(g) for g in who.groups)
        total, start = p.count * b, 0
        values = np.empty(total)
        while start < total:
            stop = min(start + self.chunk, total)
            rows = stop - start
            values[start:stop] = await self._chunk(
                lambda a=start, z=stop: shapley.rows(x, bg, who, p, a, z), rows * elements >= OFF_LOOP_ELEMENTS,
                lambda out, n=rows: target.value(out, np.full(n, target_index)),
            )  # fmt: skip
            start = stop
        return values.reshape(p.count, b).mean(axis=1) if p.count else values

    async def _chunk(self, build: Callable[[], list[np.ndarray]], off_loop: bool,
                     reduce: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:  # fmt: skip
        """Build one chunk's rows (on a worker thread when `off_loop`), run them, reduce the
        output; then, when inference reached the version meanwhile, pause so that this work
        (building included, not only the run) keeps to --explain-share of the time."""
        model = self.model
        if time.monotonic() >= self.deadline:
            raise DeadlineExceeded(_over_budget(model))
        seen = model.stats.success.count + model.stats.fail.count
        began = time.perf_counter()
        inputs = await asyncio.to_thread(build) if off_loop else build()
        rows = len(inputs[0])
        tensors = {name: (self.datatypes[name], np.ascontiguousarray(a)) for name, a in zip(self.names, inputs)}
        try:
            results, timing = await model.scheduler.submit(tensors, [self.output], self.deadline)
        except DeadlineExceeded:
            raise DeadlineExceeded(_over_budget(model)) from None
        self.stats.model_rows += rows
        out = np.asarray(results[self.output]).reshape(rows, -1)
        if reduce is not None:
            out = reduce(out)
        ran = timing.infer_ns * rows / max(timing.batch_size, rows)  # this chunk's part of a merged batch
        if ran > 0 and rows == self.chunk:
            # Toward CHUNK_NS of run time per chunk, by what the instance really took (at most x4 per step).
            self.chunk = max(1, min(int(rows * min(CHUNK_NS / ran, 4.0)), self.limit))
        busy = time.perf_counter() - began
        self.stats.working += busy
        inference = model.stats.success.count + model.stats.fail.count != seen or self.inference_pending()
        if inference and self.share < 1:
            pause = busy * (1 - self.share) / self.share
            self.stats.paused += pause
            await asyncio.sleep(pause)
        return out


def _over_budget(model: ModelVersion) -> str:
    return (f"{model.where}: the explanation's time budget passed (--explain-timeout, or the call's deadline); "
            "explain fewer rows or ask for fewer permutations")  # fmt: skip


def _chunk_rows(model: ModelVersion) -> tuple[int, int]:
    """(most rows per chunk, rows of the first chunk): what runs in about CHUNK_NS (the warm-up
    timing for a start, then what the chunks really take), within max_batch_size where it binds:
    the batcher takes no more at once, and GPU providers (TensorRT's profiles, the device's
    memory) are sized for it. On CPU a directly run model takes larger chunks."""
    bound = isinstance(model.scheduler, BatchingScheduler) or model.scheduler.instances[0].on_gpu
    limit = model.spec.max_batch_size if bound and model.spec.max_batch_size > 0 else MAX_CHUNK_ROWS
    cost = getattr(model.scheduler.instances[0], "cost_ns", None)
    if cost is None or cost[1] <= 0:
        return limit, min(CHUNK_ROWS_UNTIMED, limit)
    fixed, per_row = cost
    return limit, max(1, min(int((CHUNK_NS - fixed) / per_row), limit))


def _aligned(model: ModelVersion, names: list[str], xs: list[np.ndarray], background: Background) -> list[np.ndarray]:
    """The background rows per input, as the inputs' dtype; zeros like one row without one."""
    if background.source == "zeros":
        return [np.zeros((1, *x.shape[1:]), x.dtype) for x in xs]
    aligned = []
    for name, x in zip(names, xs):
        rows = background.arrays.get(name)
        if rows is None:
            raise InvalidInput(f"{model.where}: the version's background has no rows for input '{name}' (it has "
                               f"{sorted(background.arrays)}); reconvert the model")  # fmt: skip
        if rows.shape[1:] != x.shape[1:]:
            raise InvalidInput(f"{model.where}: input '{name}' rows are {list(x.shape[1:])}; expected "
                               f"{list(rows.shape[1:])}, the shape of the version's background rows")  # fmt: skip
        aligned.append(rows.astype(x.dtype, copy=False))
    return aligned


def _target_kind(model: ModelVersion, output: str, values: np.ndarray) -> _Target:
    """Regression, binary or multi-class, and the space (see the module doc)."""
    width = values.shape[1]
    kind = model.spec.quality_kind
    in_unit = bool(np.all((values >= 0) & (values <= 1)))
    if kind == "regression":
        return _Target("regression", "raw", width)
    if width == 1:
        if kind == "classification":
            return _Target("binary", "probability" if in_unit else "logit", 1)
        return _Target("binary", "probability", 1) if in_unit else _Target("regression", "raw", 1)
    return _Target("classes", "probability" if in_unit else "logit", width)


def _targets(model: ModelVersion, output: str, kind: _Target, rows: np.ndarray, wanted: int | None) -> np.ndarray:
    """The target of each row: `wanted` when given (checked), else the predicted one."""
    if wanted is None:
        return kind.predicted(rows)
    limit = 2 if kind.kind == "binary" else kind.width
    if not 0 <= wanted < limit:
        what = "output column" if kind.kind == "regression" else "target class"
        raise InvalidInput(f"{model.where}: unknown {what} {wanted} for output '{output}'; expected 0 to "
                           f"{limit - 1}")  # fmt: skip
    return np.full(len(rows), wanted, np.int64)


def _method(who: shapley.Players, permutations: int, background: Background, rows: int) -> str:
    where = {
        "zeros": "a row of zeros (the version has no background sample)",
        "sample": f"{rows} background rows (the converter's sample)",
        "statistics": f"{rows} background rows (drawn from the converter's input statistics)",
    }[background.source]
    patches = f", {who.patch}x{who.patch} pixel patches" if who.patch else ""
    if shapley.enumerates(who.count, permutations):
        how = f"exact (all {permutations} permutations of {who.count} features{patches})"
    else:
        how = f"{permutations} antithetic permutations of {who.count} features{patches}"
    return f"interventional Shapley values, {how}, against {where}"


def read_background(version_dir: Path, where: str = "") -> Background:
    """The background conversion.json names (`background.file`), else zeros. A file that cannot
    be read is logged and treated as absent."""
    path = version_dir / CONVERSION_FILE
    try:
        entry = json.loads(path.read_text()).get("background") if path.is_file() else None
        if not entry:
            return Background({}, "zeros")
        with np.load(version_dir / entry["file"], allow_pickle=False) as data:
            arrays = {name: data[name][:MAX_BACKGROUND_ROWS] for name in data.files}
        source = entry.get("source", "sample")
        return Background(arrays, source if source in ("sample", "statistics") else "sample")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        event(log, logging.WARNING, "explain_background_unreadable", where=where, file=str(path), reason=str(exc))
        return Background({}, "zeros")

