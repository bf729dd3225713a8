"""A rollout: unversioned traffic of one model split between a stable and a candidate version.

It lives in the model repository, `<model>/rollout.json` (written atomically by `modelport
rollout`; Triton ignores the file), so every replica agrees and it survives restarts. Servers read
it when they (re)load the model; `modelport rollout` decides and writes it.

A request that names a version is never rerouted. Otherwise, while the rollout runs, a request goes
to the candidate with probability `weight`: by a hash of its id when it carries one (the same id
always lands on the same version, on every replica), at random when it does not.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROLLOUT_FILE = "rollout.json"
STATES = ("running", "promoted", "rolled_back", "aborted")
DECISIONS = ("hold", "advance", "promote", "rollback")


@dataclass
class Rollout:
    """The rollout of one model and its history of decisions (newest last)."""

    stable: int
    candidate: int
    weight: float  # the candidate's share of unversioned traffic while running
    steps: list[float]
    state: str = "running"
    started: float = 0.0
    history: list[dict] = field(default_factory=list)

    @property
    def running(self) -> bool:
        """Whether traffic is split now."""
        return self.state == "running"

    def default_version(self) -> int:
        """The version unversioned traffic gets when not sent to the candidate."""
        return self.candidate if self.state == "promoted" else self.stable

    def kept_loaded(self) -> set[int]:
        """Versions the servers keep loaded whatever the version policy says: both while running,
        and the candidate after a rollback or an abort (for inspection)."""
        return {self.candidate} if self.state == "promoted" else {self.stable, self.candidate}

    def candidate_share(self) -> float:
        """The candidate's share of unversioned traffic now."""
        return self.weight if self.running else (1.0 if self.state == "promoted" else 0.0)

    def to_json(self) -> str:
        """The file's text."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Rollout:
        """From the file's text; ValueError naming what is wrong."""
        try:
            data = json.loads(text)
            rollout = cls(**data)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{ROLLOUT_FILE} is not a rollout: {exc}") from None
        if rollout.state not in STATES or not 0.0 <= rollout.weight <= 1.0 or rollout.stable == rollout.candidate:
            raise ValueError(f"{ROLLOUT_FILE}: state {rollout.state!r}, weight {rollout.weight}, stable "
                             f"{rollout.stable}, candidate {rollout.candidate} do not make a rollout")  # fmt: skip
        return rollout


def read_rollout(model_dir: Path) -> Rollout | None:
    """The model's rollout, or None when it has none; ValueError for an unreadable file."""
    path = model_dir / ROLLOUT_FILE
    if not path.is_file():
        return None
    return Rollout.from_json(path.read_text())


def write_rollout(model_dir: Path, rollout: Rollout) -> Path:
    """Write `<model_dir>/rollout.json` atomically (a reader sees the old file or the new one)."""
    path = model_dir / ROLLOUT_FILE
    fd, staging = tempfile.mkstemp(prefix=".rollout-", dir=model_dir)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(rollout.to_json())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def to_candidate(model: str, request_id: str, weight: float, rng: random.Random | None = None) -> bool:
    """Whether an unversioned request goes to the candidate: by the id's hash (stable across
    replicas and restarts: CRC-32, not Python's salted hash), else at random."""
    if weight <= 0.0:
        return False
    if weight >= 1.0:
        return True
    if request_id:
        return zlib.crc32(f"{model}\0{request_id}".encode()) < weight * 2**32
    return (rng or random).random() < weight
