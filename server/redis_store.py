"""The feedback store in Redis (redis-py's asyncio client, the `redis` install extra), shared by
every replica: a label reported to any of them pairs, and a replica that dies loses nothing it
had written.

Keys (prefix `modelport:`; model names are length-prefixed so that no name can run into an id):
  pred:<len>:<model>:<id>    a Prediction (JSON), SET with EX = the feedback TTL
  win:<len>:<model>:<ver>    the version's window: a list of JSON [predicted, true], LTRIM-bounded
  kind:<len>:<model>:<ver>   "classification" or "regression", set once (SET NX)
  versions:<len>:<model>     the model's versions that have a window
Pairing takes a prediction with GETDEL, which Redis runs atomically: of two replicas that receive
the same report, exactly one gets it. Any Redis failure becomes StoreUnavailable; redis-py opens a
new connection on the next command, so the store recovers by itself once Redis is back.
"""

from __future__ import annotations

import json

from .errors import StoreUnavailable
from .feedback_store import FeedbackStore, Prediction

PREFIX = "modelport:"
# SET every KEYS[i] to ARGV[i] with the TTL in the last ARGV (redis-py loads it once, by SHA).
PUT_SCRIPT = "local ttl = ARGV[#ARGV] for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i], 'EX', ttl) end"
TIMEOUT_S = 2.0  # a stuck Redis must not hold a label report (or the flusher) for long


class RedisStore(FeedbackStore):
    """FeedbackStore on one Redis database."""

    def __init__(self, url: str, window: int, ttl: float) -> None:
        try:
            import redis.asyncio as redis
            from redis.exceptions import RedisError
        except ImportError as exc:
            raise ImportError(
                "--feedback-store redis:// needs the redis extra: pip install 'modelport[redis]'"
            ) from exc
        self.url = url
        self._redis = redis.from_url(
            url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S, health_check_interval=30
        )
        self._errors = (RedisError, OSError)
        self._window, self._ttl = window, max(1, int(ttl))
        self._put_script = self._redis.register_script(PUT_SCRIPT)

    @property
    def where(self) -> str:
        """The URL without its password, for messages."""
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"

    async def _run(self, what: str, call):
        try:
            return await call
        except self._errors as exc:
            raise StoreUnavailable(f"feedback store {self.where} cannot be reached ({what}): {exc}") from None

    async def put(self, model: str, predictions: list[tuple[str, Prediction]]) -> None:
        # One script call for the batch: a pipeline of SETs costs the event loop ~30 µs per command
        # in redis-py; the script's arguments cost a few.
        keys = [_key("pred", model, request_id) for request_id, _ in predictions]
        values = [prediction.encode() for _, prediction in predictions]
        await self._run("writing predictions", self._put_script(keys=keys, args=[*values, self._ttl]))

    async def peek(self, model: str, request_id: str) -> Prediction | None:
        data = await self._run("reading a prediction", self._redis.get(_key("pred", model, request_id)))
        return None if data is None else Prediction.decode(data)

    async def take(self, model: str, request_id: str) -> bool:
        return await self._run("pairing", self._redis.getdel(_key("pred", model, request_id))) is not None

    async def add_pairs(self, model: str, version: int, kind: str, pairs: list[tuple[float, float]]) -> None:
        window = _key("win", model, str(version))
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(_key("kind", model, str(version)), kind, nx=True)
        pipe.rpush(window, *(json.dumps(list(pair)) for pair in pairs))
        pipe.ltrim(window, -self._window, -1)
        pipe.sadd(_key("versions", model), version)
        await self._run("recording labelled pairs", pipe.execute())

    async def kind(self, model: str, version: int) -> str | None:
        value = await self._run("reading a kind", self._redis.get(_key("kind", model, str(version))))
        return None if value is None else value.decode()

    async def window(self, model: str, version: int) -> tuple[str | None, list[tuple[float, float]]]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(_key("kind", model, str(version)))
        pipe.lrange(_key("win", model, str(version)), 0, -1)
        kind, items = await self._run("reading a window", pipe.execute())
        return (None if kind is None else kind.decode()), [tuple(json.loads(item)) for item in items]

    async def versions(self, model: str) -> list[int]:
        members = await self._run("listing versions", self._redis.smembers(_key("versions", model)))
        return sorted(int(m) for m in members)

    async def close(self) -> None:
        await self._redis.aclose()


def _key(kind: str, model: str, *rest: str) -> str:
    return ":".join((PREFIX + kind, str(len(model)), model, *rest))
