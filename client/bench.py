"""Closed-loop load generation against ModelInfer, in the spirit of Triton's perf_analyzer.

For each concurrency level C, C requests are outstanding at all times: every worker sends the same
pre-serialized ModelInferRequest, waits for the answer, and sends again. After a warm-up, only the
requests that complete inside the measurement window count, so throughput is completions / window
and latencies are those of the window's requests.

The client must not be the bottleneck: requests are serialized once and sent as bytes on raw
grpc.aio calls (responses are not decoded), several channels each carry a bounded share of the
outstanding requests, and `processes > 1` spreads the concurrency over worker processes that send
their latency samples back.

    request = infer_request("mlp", random_inputs(meta.inputs, batch=8))
    results = sweep("localhost:8001", request, [1, 8, 32], seconds=5, warmup=1, batch=8)
    results = sweep("http://localhost:8000", request, [16], seconds=5)   # the HTTP/REST binding

Over HTTP/REST (an http:// URL) the same loop runs on keep-alive connections of aiohttp's client,
one per outstanding request, with the request's binary-extension body made once (bench_http.py).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import multiprocessing.connection
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from modelport.protocol import codec, datatypes
from modelport.protocol.arrays import load_arrays, select_inputs
from modelport.protocol.generated import grpc_service_pb2 as pb
from modelport.protocol.types import TensorSpec

from ._common import is_http

METHOD = "/inference.GRPCInferenceService/ModelInfer"
REQUESTS_PER_CHANNEL = 8
# How long outstanding requests may finish after a window closes before they are cancelled.
DRAIN_SECONDS = 5.0
_PROGRESS_EVERY = 0.25

# Each channel gets its own connection: channels with equal arguments would otherwise share one
# subchannel (and one TCP connection) through gRPC's global subchannel pool.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.use_local_subchannel_pool", 1),
)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class ErrorSummary:
    """Failed requests of one gRPC status code within a level's window."""

    code: str
    count: int
    first_message: str


@dataclass(frozen=True)
class Progress:
    """A snapshot of a running level, for live displays."""

    concurrency: int
    elapsed: float  # seconds since the level started (warm-up included)
    warmup: float
    seconds: float
    requests: int  # successes inside the measurement window so far
    errors: int  # failures inside the measurement window so far

    @property
    def measuring(self) -> bool:
        """True once the warm-up is over."""
        return self.elapsed >= self.warmup


@dataclass
class LevelResult:
    """One concurrency level: throughput, latency percentiles (ms) and errors."""

    concurrency: int
    batch: int
    seconds: float
    requests: int
    errors: int
    requests_per_s: float
    items_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    avg_ms: float
    min_ms: float
    max_ms: float
    client_processes: int
    channels: int
    error_summary: list[ErrorSummary] = field(default_factory=list)
    latencies_ms: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    @classmethod
    def from_samples(
        cls,
        concurrency: int,
        batch: int,
        seconds: float,
        latencies_s: np.ndarray,
        errors: Mapping[str, tuple[int, str]],
        client_processes: int = 1,
        channels: int = 1,
    ) -> LevelResult:
        """Summarise the latencies (seconds) of a window's successful requests and its errors."""
        ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
        if ms.size:
            p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
            avg, low, high = float(ms.mean()), float(ms.min()), float(ms.max())
        else:
            p50 = p90 = p99 = avg = low = high = math.nan
        summary = [ErrorSummary(code, count, message) for code, (count, message) in sorted(errors.items())]
        return cls(
            concurrency=concurrency,
            batch=batch,
            seconds=seconds,
            requests=int(ms.size),
            errors=sum(e.count for e in summary),
            requests_per_s=ms.size / seconds,
            items_per_s=ms.size * batch / seconds,
            p50_ms=p50,
            p90_ms=p90,
            p99_ms=p99,
            avg_ms=avg,
            min_ms=low,
            max_ms=high,
            client_processes=client_processes,
            channels=channels,
            error_summary=summary,
            latencies_ms=ms,
        )

    def to_dict(self) -> dict[str, Any]:
        """Every number (NaN as None, so the result is strict JSON), without the raw samples."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name == "latencies_ms":
                continue
            value = getattr(self, name)
            if name == "error_summary":
                value = [{"code": e.code, "count": e.count, "first_message": e.first_message} for e in value]
            elif isinstance(value, float) and math.isnan(value):
                value = None
            out[name] = value
        return out


# ---------------------------------------------------------------- inputs


def resolve_shape(info: TensorSpec, batch: int, override: Sequence[int] | None = None) -> tuple[int, ...]:
    """The concrete shape sent for one input.

    A dynamic leading dimension is the batch dimension and becomes `batch`. `override` (Triton's
    `--shape`) gives the dimensions after the batch dimension when there is one, else the whole
    shape; without it, other dynamic dimensions become 1.
    """
    dims = list(info.shape)
    batched = bool(dims) and dims[0] == -1
    rest = dims[1:] if batched else dims
    if override is not None:
        override = [int(d) for d in override]
        if any(o < 0 for o in override):
            raise ValueError(f"--shape for input '{info.name}': dimensions must be >= 0, got {override}")
        if len(override) != len(rest) or any(d != -1 and d != o for d, o in zip(rest, override)):
            what = "the dimensions after the batch dimension" if batched else "the whole shape"
            raise ValueError(
                f"--shape for input '{info.name}' must give {what} of {list(info.shape)} "
                f"({len(rest)} values, fixed ones unchanged); got {override}"
            )
        rest = override
    rest = [1 if d == -1 else d for d in rest]
    return tuple([batch, *rest] if batched else rest)


def random_inputs(
    inputs: Sequence[TensorSpec],
    batch: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    zeros: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """One array per model input (from ModelMetadata), batch dimension `batch`: random
    (modelport.protocol.datatypes.random_array), or all zeros with `zeros`."""
    shapes = dict(shapes or {})
    unknown = set(shapes) - {t.name for t in inputs}
    if unknown:
        raise ValueError(f"--shape names unknown inputs {sorted(unknown)}; the model has {[t.name for t in inputs]}")
    if batch > 1 and not any(t.shape and t.shape[0] == -1 for t in inputs):
        raise ValueError(f"no input has a dynamic batch dimension ({[list(t.shape) for t in inputs]}); use --batch 1")
    rng = np.random.default_rng(seed)
    arrays = {}
    for t in inputs:
        shape = resolve_shape(t, batch, shapes.get(t.name))
        arrays[t.name] = datatypes.zeros(t.datatype, shape) if zeros else datatypes.random_array(t.datatype, shape, rng)
    return arrays


def load_inputs(path: Path | str, inputs: Sequence[TensorSpec] | None = None) -> dict[str, np.ndarray]:
    """Arrays from an .npz (named by input) or .npy (single-input model), cast to the model's
    datatypes when its metadata is known."""
    path = Path(path)
    if path.suffix != ".npz" and (inputs is None or len(inputs) != 1):
        raise ValueError(f"{path.name}: a .npy file feeds a single-input model; pass an .npz named by input")
    arrays = load_arrays(path)
    if not arrays:
        raise ValueError(f"{path.name} holds no arrays")
    if inputs is None:
        return arrays  # no metadata: sent as they are
    types = {t.name: t.datatype for t in inputs}
    selected = select_inputs(arrays, list(types), path.name)
    return {n: codec.as_wire_array(a, types[n]) for n, a in selected.items()}


def batch_of(inputs: Mapping[str, np.ndarray]) -> int:
    """Items per request: the leading dimension of the first input (1 for scalars)."""
    first = next(iter(inputs.values()))
    return int(first.shape[0]) if first.ndim else 1


def infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    version: str = "",
    datatypes: Mapping[str, str] | None = None,
    outputs: Sequence[str] | None = None,
    request_id: str = "",
) -> bytes:
    """A serialized ModelInferRequest (raw tensors) to send over and over."""
    request = codec.build_request(
        model, inputs, version=version, datatypes=datatypes, outputs=outputs, request_id=request_id
    )
    return request.SerializeToString()


# ---------------------------------------------------------------- one process's load


class _Window:
    """Samples of one level in one process: what completed inside [start, end]."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self.latencies: list[float] = []
        self.errors: dict[str, list] = {}  # code -> [count, first message]
        self.error_count = 0

    def success(self, sent: float, done: float) -> None:
        if self.start <= done <= self.end:
            self.latencies.append(done - sent)

    def failure(self, done: float, code: str, message: str) -> None:
        if self.start <= done <= self.end:
            self.error_count += 1
            entry = self.errors.setdefault(code, [0, message])
            entry[0] += 1

    def share(self) -> _Share:
        return _Share(np.asarray(self.latencies, dtype=np.float64), {c: (n, m) for c, (n, m) in self.errors.items()})


@dataclass
class _Share:
    """What one process measured in one level (sent back through a pipe)."""

    latencies_s: np.ndarray
    errors: dict[str, tuple[int, str]]
    channels: int = 0


class _LoadGenerator:
    """Channels and workers of one process; channels are kept from level to level."""

    def __init__(self, url: str, request: bytes, timeout: float | None, per_channel: int) -> None:
        self.url, self.request, self.timeout = url, request, timeout
        self.per_channel = max(1, per_channel)
        self._channels: list[grpc.aio.Channel] = []
        self._calls: list[Callable[..., Awaitable[bytes]]] = []

    async def prepare(self, concurrency: int) -> None:
        """Open (and connect) the channels a level of `concurrency` needs, before its clock starts."""
        await self._ensure_channels(math.ceil(concurrency / self.per_channel))

    async def _ensure_channels(self, count: int) -> None:
        new = []
        while len(self._channels) < count:
            channel = grpc.aio.insecure_channel(self.url, options=CHANNEL_OPTIONS)
            self._channels.append(channel)
            # No (de)serializers: the request goes out as the bytes given, the answer stays bytes.
            self._calls.append(channel.unary_unary(METHOD))
            new.append(channel)
        if new:  # connect before the clock starts; an unreachable server shows up as errors
            try:
                await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in new)), 10.0)
            except TimeoutError:
                pass

    async def run(
        self, concurrency: int, start: float, warmup: float, seconds: float, window: _Window | None = None
    ) -> _Share:
        """Keep `concurrency` requests outstanding from `start` (perf_counter) for warm-up +
        seconds; returns the window's samples."""
        channels = math.ceil(concurrency / self.per_channel)
        await self._ensure_channels(channels)
        window = window or _Window(start + warmup, start + warmup + seconds)
        if concurrency == 0:
            return _Share(np.empty(0), {}, 0)
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        workers = [
            asyncio.create_task(self._worker(self._calls[i // self.per_channel], window)) for i in range(concurrency)
        ]
        await asyncio.wait(workers, timeout=max(0.0, window.end - time.perf_counter()) + DRAIN_SECONDS)
        for task in workers:  # still outstanding after the drain: not counted anyway
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        share = window.share()
        share.channels = channels
        return share

    async def _worker(self, call: Callable[..., Awaitable[bytes]], window: _Window) -> None:
        request, timeout, clock = self.request, self.timeout, time.perf_counter
        while (sent := clock()) < window.end:
            try:
                await call(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                window.failure(clock(), exc.code().name, exc.details() or "")
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001 - count anything else, keep the load going
                window.failure(clock(), "CLIENT_ERROR", f"{type(exc).__name__}: {exc}")
            else:
                window.success(sent, clock())

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def load_generator(url: str, request: Any, timeout: float | None, per_channel: int) -> _LoadGenerator:
    """The load generator for `url`'s transport: gRPC channels, or HTTP/REST connections for an
    http(s):// URL (bench_http.py)."""
    if is_http(url):
        from .bench_http import HttpLoadGenerator

        return HttpLoadGenerator(url, request, timeout, per_channel)
    if not isinstance(request, bytes):
        raise TypeError(f"a gRPC load needs a ModelInferRequest (or its bytes), got {type(request).__name__}")
    return _LoadGenerator(url, request, timeout, per_channel)


# ---------------------------------------------------------------- in this process


async def _level_here(
    gen: _LoadGenerator,
    concurrency: int,
    seconds: float,
    warmup: float,
    progress: Callable[[Progress], None] | None,
) -> _Share:
    await gen.prepare(concurrency)
    start = time.perf_counter() + 0.01
    window = _Window(start + warmup, start + warmup + seconds)
    ticker = None
    if progress is not None:

        async def tick() -> None:
            while True:
                await asyncio.sleep(_PROGRESS_EVERY)
                elapsed = min(time.perf_counter() - start, warmup + seconds)
                progress(Progress(concurrency, elapsed, warmup, seconds, len(window.latencies), window.error_count))

        ticker = asyncio.create_task(tick())
    try:
        return await gen.run(concurrency, start, warmup, seconds, window)
    finally:
        if ticker is not None:
            ticker.cancel()


async def sweep_async(
    url: str,
    request: bytes | pb.ModelInferRequest,
    concurrencies: Sequence[int],
    seconds: float,
    warmup: float = 1.0,
    *,
    batch: int = 1,
    timeout: float | None = None,
    requests_per_channel: int = REQUESTS_PER_CHANNEL,
    progress: Callable[[Progress], None] | None = None,
    on_level: Callable[[LevelResult], None] | None = None,
) -> list[LevelResult]:
    """`sweep` with one process, on the running event loop."""
    gen = load_generator(url, _payload(request), timeout, requests_per_channel)
    results = []
    try:
        for concurrency in concurrencies:
            share = await _level_here(gen, concurrency, seconds, warmup, progress)
            result = LevelResult.from_samples(
                concurrency, batch, seconds, share.latencies_s, share.errors, 1, share.channels
            )
            results.append(result)
            if on_level is not None:
                on_level(result)
    finally:
        await gen.close()
    return results


# ---------------------------------------------------------------- worker processes


def _process_main(conn, url: str, request: bytes, timeout: float | None, per_channel: int, counters) -> None:
    """Entry point of a worker process: run the levels the parent asks for, send back samples."""
    try:
        asyncio.run(_process_loop(conn, url, request, timeout, per_channel, counters))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass


async def _process_loop(conn, url: str, request: bytes, timeout: float | None, per_channel: int, counters) -> None:
    gen = load_generator(url, request, timeout, per_channel)
    conn.send("ready")
    try:
        while (command := await asyncio.to_thread(conn.recv)) is not None:
            concurrency, start_wall, warmup, seconds = command
            await gen.prepare(concurrency)
            # Wall clock to share the start between processes, perf_counter to measure.
            start = time.perf_counter() + (start_wall - time.time())
            window = _Window(start + warmup, start + warmup + seconds)
            publisher = asyncio.create_task(_publish(window, counters))
            try:
                share = await gen.run(concurrency, start, warmup, seconds, window)
            except Exception:  # noqa: BLE001 - report to the parent rather than die silently
                share = traceback.format_exc()
            finally:
                publisher.cancel()
            counters[0], counters[1] = len(window.latencies), window.error_count
            conn.send(share)
    finally:
        await gen.close()


async def _publish(window: _Window, counters) -> None:
    """Copy the live counts into shared memory now and then, for the parent's progress line."""
    while True:
        counters[0], counters[1] = len(window.latencies), window.error_count
        await asyncio.sleep(_PROGRESS_EVERY)


class ProcessPool:
    """Worker processes (spawned, so no gRPC state is forked) that each keep their own channels
    and run their share of every level's concurrency."""

    def __init__(
        self,
        processes: int,
        url: str,
        request: bytes | pb.ModelInferRequest,
        *,
        timeout: float | None = None,
        requests_per_channel: int = REQUESTS_PER_CHANNEL,
        start_timeout: float = 120.0,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.per_channel = requests_per_channel
        self._workers = []
        payload = _payload(request)
        for _ in range(processes):
            parent, child = ctx.Pipe()
            counters = ctx.RawArray("q", 2)
            process = ctx.Process(
                target=_process_main,
                args=(child, url, payload, timeout, requests_per_channel, counters),
                daemon=True,
                name="modelport-bench",
            )
            process.start()
            child.close()
            self._workers.append((process, parent, counters))
        for process, conn, _ in self._workers:
            if not conn.poll(start_timeout) or conn.recv() != "ready":
                self.close()
                raise RuntimeError(f"bench worker process {process.pid} did not start")

    @property
    def processes(self) -> int:
        """How many worker processes run the load."""
        return len(self._workers)

    def run_level(
        self,
        concurrency: int,
        seconds: float,
        warmup: float = 1.0,
        *,
        batch: int = 1,
        progress: Callable[[Progress], None] | None = None,
    ) -> LevelResult:
        """One level, its concurrency split as evenly as possible over the processes."""
        count = len(self._workers)
        shares = [concurrency // count + (i < concurrency % count) for i in range(count)]
        start_wall = time.time() + 0.2  # time for every worker to receive the command
        for (_, conn, counters), share in zip(self._workers, shares):
            counters[0] = counters[1] = 0
            conn.send((share, start_wall, warmup, seconds))
        pending = {conn: None for _, conn, _ in self._workers}
        results: list[_Share] = []
        while pending:
            for conn in multiprocessing.connection.wait(list(pending), timeout=_PROGRESS_EVERY):
                answer = conn.recv()
                if isinstance(answer, str):
                    raise RuntimeError(f"bench worker failed:\n{answer}")
                results.append(answer)
                del pending[conn]
            if progress is not None:
                elapsed = min(max(0.0, time.time() - start_wall), warmup + seconds)
                done, failed = (sum(int(c[i]) for _, _, c in self._workers) for i in (0, 1))
                progress(Progress(concurrency, elapsed, warmup, seconds, done, failed))
            if any(not p.is_alive() for p, conn, _ in self._workers if conn in pending):
                raise RuntimeError("a bench worker process died")
        latencies = np.concatenate([r.latencies_s for r in results]) if results else np.empty(0)
        errors: dict[str, tuple[int, str]] = {}
        for r in results:
            for code, (n, message) in r.errors.items():
                before = errors.get(code, (0, message))
                errors[code] = (before[0] + n, before[1])
        channels = sum(r.channels for r in results)
        return LevelResult.from_samples(concurrency, batch, seconds, latencies, errors, count, channels)

    def close(self) -> None:
        """Stop the workers (politely, then by force)."""
        for _process, conn, _ in self._workers:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for process, conn, _ in self._workers:
            process.join(5.0)
            if process.is_alive():
                process.terminate()
                process.join(5.0)
            conn.close()
        self._workers = []

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- public entry points


def sweep(
    url: str,
    request: bytes | pb.ModelInferRequest,
    concurrencies: Sequence[int],
    seconds: float,
    warmup: float = 1.0,
    *,
    batch: int = 1,
    timeout: float | None = None,
    processes: int = 1,
    requests_per_channel: int = REQUESTS_PER_CHANNEL,
    progress: Callable[[Progress], None] | None = None,
    on_level: Callable[[LevelResult], None] | None = None,
) -> list[LevelResult]:
    """Run every concurrency level in turn and return their results.

    `url` is a gRPC address (host:port) or an HTTP/REST one (http://host:port, bench_http.py).
    `request` is sent as is to every call (bytes, or a message serialized once); over HTTP it
    becomes a binary-extension body once, or is a bench_http.HttpInfer made by the caller. `batch` is the
    number of items per request, for items/s. `processes` > 1 runs the load from that many worker
    processes; 1 runs it on an event loop in this process. `progress` is called a few times a
    second while a level runs, `on_level` after each level.
    """
    if seconds <= 0 or warmup < 0:
        raise ValueError("seconds must be > 0 and warmup >= 0")
    if any(c < 1 for c in concurrencies):
        raise ValueError(f"concurrency levels must be >= 1, got {list(concurrencies)}")
    if is_http(url):  # say it here rather than from every worker process
        from .bench_http import require_aiohttp

        require_aiohttp()
    if processes <= 1:
        return asyncio.run(
            sweep_async(
                url,
                request,
                concurrencies,
                seconds,
                warmup,
                batch=batch,
                timeout=timeout,
                requests_per_channel=requests_per_channel,
                progress=progress,
                on_level=on_level,
            )
        )
    results = []
    with ProcessPool(processes, url, request, timeout=timeout, requests_per_channel=requests_per_channel) as pool:
        for concurrency in concurrencies:
            result = pool.run_level(concurrency, seconds, warmup, batch=batch, progress=progress)
            results.append(result)
            if on_level is not None:
                on_level(result)
    return results


def run_level(
    url: str,
    request: bytes | pb.ModelInferRequest,
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    **options: Any,
) -> LevelResult:
    """One concurrency level; `options` as for `sweep`."""
    return sweep(url, request, [concurrency], seconds, warmup, **options)[0]


def _payload(request: bytes | pb.ModelInferRequest | Any) -> Any:
    """What a load generator sends: bytes, or an HTTP request made once (bench_http.HttpInfer)."""
    return request.SerializeToString() if isinstance(request, pb.ModelInferRequest) else request
