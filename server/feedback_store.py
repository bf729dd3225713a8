"""Where predictions wait for their labels, and where each model version's window of labelled
pairs lives: in this process (`memory://`, one server) or in Redis (`redis://`, shared by every
replica, so a label reported to any of them pairs; server/redis_store.py).

A prediction is kept for the feedback TTL; pairing takes it out at most once, whoever asks, so a
label reported twice (or to two replicas) pairs once. Windows keep the last N pairs per version.
"""

from __future__ import annotations

import collections
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

KINDS = ("classification", "regression")

@dataclass(frozen=True)
class Prediction:
    """What one request that carried an id predicted, per row: `classes` (integers read from a
    classifier's output) or `values` (one number per row: a regressor, or a sigmoid classifier,
    decided when its truth arrives). `kind` is the version's configured quality kind, or ''."""

    version: int
    read_as: str  # "classes" or "values"
    rows: list
    kind: str = ""
    time: float = 0.0

    def encode(self) -> str:
        """`version|read_as|kind|time|row,row,...`: a few µs, where JSON of a dict costs 15 (every
        request with an id pays it, in the flusher)."""
        return f"{self.version}|{self.read_as}|{self.kind}|{self.time!r}|" + ",".join(map(str, self.rows))

    @classmethod
    def decode(cls, data: bytes | str) -> Prediction:
        """From encode()'s text."""
        text = data.decode() if isinstance(data, bytes) else data
        version, read_as, kind, when, rows = text.split("|", 4)
        number = float if read_as == "values" else int
        return cls(int(version), read_as, [number(v) for v in rows.split(",")] if rows else [], kind, float(when))


class FeedbackStore(ABC):
    """The operations online quality needs; every one may raise StoreUnavailable."""

    url: str

    @abstractmethod
    async def put(self, model: str, predictions: list[tuple[str, Prediction]]) -> None:
        """Keep predictions by request id, each for the TTL (a batch: one round trip)."""

    @abstractmethod
    async def peek(self, model: str, request_id: str) -> Prediction | None:
        """The prediction waiting under `request_id`, left in place (None when there is none)."""

    @abstractmethod
    async def take(self, model: str, request_id: str) -> bool:
        """Remove the prediction; True for exactly one caller, however many ask at once."""

    @abstractmethod
    async def add_pairs(self, model: str, version: int, kind: str, pairs: list[tuple[float, float]]) -> None:
        """Append (predicted, true) pairs to the version's window (the oldest fall out) and record
        the version's kind when it has none yet."""

    @abstractmethod
    async def kind(self, model: str, version: int) -> str | None:
        """The version's recorded kind, if any."""

    @abstractmethod
    async def window(self, model: str, version: int) -> tuple[str | None, list[tuple[float, float]]]:
        """(kind, pairs) of the version's window, oldest first."""

    @abstractmethod
    async def versions(self, model: str) -> list[int]:
        """Versions of `model` with a window, ascending."""

    async def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release connections."""


class MemoryStore(FeedbackStore):
    """One server's store: at most `max_pending` predictions per model wait (the oldest are
    forgotten first), each for at most `ttl` seconds; windows of `window` pairs per version."""

    url = "memory://"

    def __init__(self, window: int, max_pending: int, ttl: float) -> None:
        self._window, self._max_pending, self._ttl = window, max_pending, ttl
        self._pending: dict[str, collections.OrderedDict[str, Prediction]] = {}
        self._windows: dict[tuple[str, int], collections.deque] = {}
        self._kinds: dict[tuple[str, int], str] = {}

    async def put(self, model: str, predictions: list[tuple[str, Prediction]]) -> None:
        pending = self._pending.setdefault(model, collections.OrderedDict())
        for request_id, prediction in predictions:
            pending[request_id] = prediction
            pending.move_to_end(request_id)
        while len(pending) > self._max_pending:
            pending.popitem(last=False)

    async def peek(self, model: str, request_id: str) -> Prediction | None:
        prediction = self._pending.get(model, {}).get(request_id)
        if prediction is not None and time.time() - prediction.time > self._ttl:
            del self._pending[model][request_id]
            return None
        return prediction

    async def take(self, model: str, request_id: str) -> bool:
        return self._pending.get(model, {}).pop(request_id, None) is not None

    async def add_pairs(self, model: str, version: int, kind: str, pairs: list[tuple[float, float]]) -> None:
        key = (model, version)
        self._kinds.setdefault(key, kind)
        self._windows.setdefault(key, collections.deque(maxlen=self._window)).extend(pairs)

    async def kind(self, model: str, version: int) -> str | None:
        return self._kinds.get((model, version))

    async def window(self, model: str, version: int) -> tuple[str | None, list[tuple[float, float]]]:
        return self._kinds.get((model, version)), list(self._windows.get((model, version), ()))

    async def versions(self, model: str) -> list[int]:
        return sorted(v for m, v in self._windows if m == model)


def open_store(url: str, window: int, max_pending: int, ttl: float) -> FeedbackStore:
    """The store a --feedback-store URL names: memory:// or redis://[:password@]host:port/db
    (rediss:// for TLS). ValueError for anything else."""
    if url in ("memory://", "memory", ""):
        return MemoryStore(window, max_pending, ttl)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis_store import RedisStore

        return RedisStore(url, window, ttl)
    raise ValueError(f"--feedback-store {url!r}: expected memory:// or redis://HOST:PORT/DB")
