"""The models a server knows: which versions serve, the state of every version, and the
load / unload / reload operations that change them without dropping a request.

A reload loads and warms the new version beside the old one (on a worker thread, while traffic
flows), swaps the served set in one step on the event loop, and closes what it replaced only
after the requests already running on it have finished. A version that fails to load leaves
whatever served before serving, and says why in its state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelport.protocol.repository import version_folders
from modelport.protocol.rollout import Rollout, read_rollout, to_candidate

from . import config as cfg
from .errors import ModelLoadError, ModelNotFound, ModelNotReady, ModelportError
from .loader import LoaderSettings, load_version
from .logs import event
from .repository import model_stamp, scan, version_stamp
from .settings import ServerSettings
from .versions import ModelVersion

log = logging.getLogger(__name__)

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"
KEEP = object()  # load(source=KEEP): read the model's files where they are read now


@dataclass
class VersionState:
    """What RepositoryIndex says of one version."""

    state: str
    reason: str = ""


@dataclass
class ModelEntry:
    """One model of the repository: the versions it serves and the state of each."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)  # served, by version
    states: dict[int, VersionState] = field(default_factory=dict)
    error: str = ""  # a problem of the whole model (config), "" when none
    wanted: bool = False  # loaded on purpose (start-up, poll or RepositoryModelLoad)
    seen: tuple = ()  # the model folder's files at the last load attempt
    rollout: Rollout | None = None  # <model>/rollout.json as last loaded
    source: Path | None = None  # an uploaded model's folder (server/uploads.py); None: <repository>/<name>
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def ready(self) -> bool:
        """Serving at least one version."""
        return bool(self.versions)


class ModelRegistry:
    """Every model of one Triton-layout repository, and the operations that change them."""

    def __init__(self, root: Path, settings: LoaderSettings | None = None) -> None:
        self.root = root
        self.settings = settings or LoaderSettings.of(ServerSettings.defaults())
        self.load_failures: dict[tuple[str, int], int] = {}  # (model, version) -> failed loads, for metrics
        self.polls = 0  # poll() rounds completed
        self._entries: dict[str, ModelEntry] = {}
        self._retiring: set[asyncio.Task] = set()
        self.listeners: list[Callable[[str], None]] = []  # told the model name after every change
        # Told an uploaded model's folder once nothing serves from it any more (uploads.py removes it).
        self.discard: Callable[[Path], None] = lambda folder: None

    # ------------------------------------------------------------ lookups (event loop)

    def names(self) -> list[str]:
        """Models that were ever asked to load, by name."""
        return sorted(self._entries)

    def entries(self) -> list[ModelEntry]:
        """Their entries, by name."""
        # Also called from the metrics thread: copy before sorting.
        return sorted(list(self._entries.values()), key=lambda entry: entry.name)

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The served version asked for ('' = the newest served one)."""
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(f"'{n}'" for n, e in sorted(self._entries.items()) if e.versions) or "none"
            raise ModelNotFound(f"model '{name}' is not found; models being served: {known}")
        if not entry.versions:
            raise ModelNotReady(f"model '{name}' is not ready: {self._why_not(entry)}")
        if not version:
            return entry.versions[max(entry.versions)]
        if not (version.isascii() and version.isdigit()) or int(version) not in entry.versions:
            served = ", ".join(str(v) for v in sorted(entry.versions))
            raise ModelNotFound(f"model '{name}' has no served version '{version}'; served versions: {served}")
        return entry.versions[int(version)]

    def rollout(self, name: str) -> Rollout | None:
        """The model's rollout as loaded (None without one); NOT_FOUND for an unknown model."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(f"model '{name}' is not found")
        return entry.rollout

    def resolve(self, name: str, version: str, request_id: str) -> ModelVersion:
        """The version a request goes to: the one it names; else, while the model has a rollout,
        the candidate for its share of traffic (by the id's hash) and the stable version for the
        rest; else the newest served."""
        entry = self._entries.get(name)
        rollout = entry.rollout if entry is not None else None
        if version or rollout is None or not entry.versions:
            return self.get(name, version)
        if rollout.running and rollout.candidate in entry.versions and to_candidate(name, request_id, rollout.weight):
            return entry.versions[rollout.candidate]
        default = entry.versions.get(rollout.default_version())
        return default if default is not None else entry.versions[max(entry.versions)]

    @staticmethod
    def _why_not(entry: ModelEntry) -> str:
        reasons = [entry.error] if entry.error else []
        reasons += [f"version {v}: {s.reason}" for v, s in sorted(entry.states.items()) if s.reason]
        return "; ".join(reasons) or ("not loaded" if not entry.wanted else "no version loaded")

    def folder(self, name: str) -> Path:
        """Where `name`'s files are read from: its upload's folder, else the repository's."""
        entry = self._entries.get(name)
        return self._folder(entry) if entry is not None else self.root / name

    def _folder(self, entry: ModelEntry) -> Path:
        return entry.source or self.root / entry.name

    def is_ready(self, name: str, version: str = "") -> bool:
        """Whether `name` (and `version`) can take requests now."""
        try:
            self.get(name, version)
        except ModelportError:
            return False
        return True

    def all_ready(self) -> bool:
        """Every model that should be loaded is serving (Triton's strict readiness)."""
        return all(entry.ready for entry in self._entries.values() if entry.wanted)

    def served(self) -> list[ModelVersion]:
        """Every served version of every model."""
        # Also called from the metrics thread: copy before iterating.
        return [v for entry in list(self._entries.values()) for v in list(entry.versions.values())]

    def versions(self, name: str) -> list[int]:
        """Served versions of `name`, ascending (empty when unknown)."""
        entry = self._entries.get(name)
        return sorted(entry.versions) if entry else []

    def index(self) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) for every model folder and every version with a state."""
        rows = []
        on_disk = set(scan(self.root)) if self.root.is_dir() else set()
        for name in sorted(on_disk | set(self._entries)):
            entry = self._entries.get(name)
            if entry is None or (not entry.states and not entry.error):
                rows.append((name, "", UNAVAILABLE, "not loaded" if entry is None or not entry.wanted else ""))
                continue
            if entry.error:
                rows.append((name, "", UNAVAILABLE, entry.error))
            rows.extend((name, str(v), s.state, s.reason) for v, s in sorted(entry.states.items()))
        return rows

    # ------------------------------------------------------------ changes

    async def load_all(self, names: list[str] | None = None) -> None:
        """Load the named models (default: every model folder); failures are logged, not raised."""
        for name in names if names is not None else sorted(scan(self.root)):
            try:
                await self.load(name)
            except ModelportError:
                pass  # logged where it happened, with the model and version

    async def load(
        self, name: str, *, source: Path | None | object = KEEP, preloaded: dict[int, ModelVersion] | None = None
    ) -> None:
        """Load or reload `name`: versions its policy wants and whose files changed are loaded
        beside what serves, then swapped in; versions no longer wanted retire.

        `source` switches where the model's files are read from (an upload's folder, or None for
        the repository's); by default it stays as it is. `preloaded` versions (from `preload`) are
        served as they are when their files are the ones the folder holds now; those not used are
        closed."""
        entry = self._entries.setdefault(name, ModelEntry(name))
        entry.wanted = True
        preloaded = dict(preloaded or {})
        async with entry.lock:
            dropped = None
            if source is not KEEP and source != entry.source:
                dropped, entry.source = entry.source, source  # type: ignore[assignment]
            try:
                await self._load_locked(entry, preloaded)
            except ModelNotFound:
                if not entry.states and not entry.versions:
                    del self._entries[name]  # never existed: leave no trace
                raise
            finally:
                self._notify(name)
                for unused in preloaded.values():
                    await unused.scheduler.close()
                if dropped is not None:
                    self.discard(dropped)

    async def preload(self, name: str, folder: Path) -> dict[int, ModelVersion]:
        """Load every version that the model in `folder` wants (its config's version policy),
        serving none of them: all or nothing. The first failure is raised (a ModelLoadError naming
        the version and why; logged and counted as any load failure) after closing what loaded."""
        spec, _rollout, wanted = self._plan(name, folder)
        loaded: dict[int, ModelVersion] = {}
        try:
            for version in wanted:
                loaded[version] = await self._load_one(name, folder, spec, version)
        except ModelportError:
            for version in loaded.values():
                await version.scheduler.close()
            raise
        return loaded

    def _plan(self, name: str, directory: Path) -> tuple[cfg.ModelSpec, Rollout | None, list[int]]:
        """The model's spec, rollout and the versions to serve; ModelLoadError when there are none."""
        spec = cfg.model_spec(name, cfg.read_config(directory))
        rollout = _read_rollout(name, directory)
        available = version_folders(directory)
        wanted = spec.version_policy.select(available)
        if rollout is not None:  # both versions of a rollout stay loaded, whatever the policy says
            wanted = sorted(set(wanted) | (rollout.kept_loaded() & set(available)))
        if not wanted:
            raise ModelLoadError(f"model '{name}': no version folder matches its version policy")
        return spec, rollout, wanted

    async def _load_one(self, name: str, directory: Path, spec: cfg.ModelSpec, version: int) -> ModelVersion:
        """Load one version on a worker thread; log it (and count a failure)."""
        try:
            loaded = await asyncio.to_thread(load_version, directory, spec, version, self.settings)
        except ModelLoadError as exc:
            event(log, logging.ERROR, "model_load_failed", model=name, version=version, reason=exc.message)
            key = (name, version)
            self.load_failures[key] = self.load_failures.get(key, 0) + 1
            raise
        cost = loaded.footprint
        event(log, logging.INFO, "model_loaded", model=name, version=version,
              providers=",".join(loaded.scheduler.instances[0].model.providers),
              seconds=round(cost.seconds, 3), memory_bytes=cost.memory_bytes, file_bytes=cost.file_bytes)
        return loaded

    async def _load_locked(self, entry: ModelEntry, preloaded: dict[int, ModelVersion]) -> None:
        directory = self._folder(entry)
        if not directory.is_dir():
            self._retire_all(entry, "removed from the repository")
            event(log, logging.ERROR, "model_load_failed", model=entry.name, version="", reason="not in the repository")
            raise ModelNotFound(f"model '{entry.name}' is not in the repository {self.root}")
        entry.seen = model_stamp(directory)
        try:
            spec, rollout, wanted = self._plan(entry.name, directory)
        except ModelLoadError as exc:
            entry.error = exc.message
            event(log, logging.ERROR, "model_load_failed", model=entry.name, version="", reason=exc.message)
            raise
        entry.error = ""
        served, failures = await self._load_versions(entry, directory, spec, wanted, preloaded)
        if failures:
            # Something wanted failed: what served before keeps serving, even versions the policy
            # would now drop, until a reload succeeds.
            served = {**entry.versions, **served}
        entry.rollout = rollout  # with the swap, in the same event-loop step: requests see both or neither
        self._swap(entry, served, failures)
        if failures:
            raise ModelLoadError("; ".join(failures.values()))

    async def _load_versions(
        self, entry: ModelEntry, directory: Path, spec: cfg.ModelSpec, wanted: list[int],
        preloaded: dict[int, ModelVersion],
    ) -> tuple[dict[int, ModelVersion], dict[int, str]]:
        served: dict[int, ModelVersion] = {}
        failures: dict[int, str] = {}
        for version in wanted:
            stamp = version_stamp(directory, version)
            ready = next((v for v in (entry.versions.get(version), preloaded.get(version))
                          if v is not None and v.stamp == stamp and v.spec == spec), None)  # fmt: skip
            if ready is not None:
                if preloaded.get(version) is ready:
                    del preloaded[version]  # served now: not closed with the unused ones
                served[version] = ready
                continue
            old = entry.versions.get(version)
            if old is None:
                self._set_state(entry, version, VersionState(LOADING))
            try:
                served[version] = await self._load_one(entry.name, directory, spec, version)
            except ModelLoadError as exc:
                failures[version] = exc.message
                if old is not None:
                    served[version] = old  # the previous files keep serving
        return served, failures

    def _swap(self, entry: ModelEntry, served: dict[int, ModelVersion], failures: dict[int, str]) -> None:
        """Make `served` the served set in one step, then retire what it replaced."""
        replaced = [old for v, old in entry.versions.items() if served.get(v) is not old]
        entry.versions = served
        for version in served:
            reason = f"reload failed, previous files still serving: {failures[version]}" if version in failures else ""
            self._set_state(entry, version, VersionState(READY, reason))
        for version, reason in failures.items():
            if version not in served:
                self._set_state(entry, version, VersionState(UNAVAILABLE, reason))
        for old in replaced:
            self._retire(entry, old, "unloaded")

    def _retire(self, entry: ModelEntry, old: ModelVersion, reason: str) -> None:
        if old.version not in entry.versions:
            self._set_state(entry, old.version, VersionState(UNLOADING))

        async def close() -> None:
            await old.close_when_idle()
            if old.version not in entry.versions:
                self._set_state(entry, old.version, VersionState(UNAVAILABLE, reason))
            event(log, logging.INFO, "model_unloaded", model=old.name, version=old.version, reason=reason)
            self._notify(entry.name)

        task = asyncio.get_running_loop().create_task(close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _retire_all(self, entry: ModelEntry, reason: str) -> None:
        old_versions, entry.versions = list(entry.versions.values()), {}
        for old in old_versions:
            self._retire(entry, old, reason)

    async def unload(self, name: str) -> None:
        """Stop serving `name`; requests already running finish first."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(f"model '{name}' is not loaded")
        entry.wanted = False
        async with entry.lock:
            self._retire_all(entry, "unloaded")
            dropped, entry.source = entry.source, None
        self._notify(name)
        if dropped is not None:
            self.discard(dropped)  # an upload lives until it is unloaded

    async def poll(self) -> None:
        """Bring the served set in line with the repository: new and changed models load,
        removed ones unload. Unchanged failures are not retried until their files change."""
        on_disk = scan(self.root)
        for name, directory in on_disk.items():
            entry = self._entries.get(name)
            if entry is not None and entry.source is not None:
                continue  # an upload stands in for the repository's files until it is unloaded
            # An entry no longer wanted was unloaded because its folder went away: the folder is
            # back (perhaps with the very files it had), so it loads again.
            if entry is None or not entry.wanted or model_stamp(directory.path) != entry.seen:
                try:
                    await self.load(name)
                except ModelportError:
                    pass  # logged where it happened
        for name, entry in list(self._entries.items()):
            if name not in on_disk and entry.source is None and (entry.versions or entry.wanted):
                event(log, logging.INFO, "model_removed", model=name)
                await self.unload(name)
        self.polls += 1

    def _set_state(self, entry: ModelEntry, version: int, state: VersionState) -> None:
        entry.states[version] = state

    def _notify(self, name: str) -> None:
        for listener in self.listeners:
            listener(name)

    async def wait_retired(self) -> None:
        """Wait until every retiring version has closed."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    async def close(self) -> None:
        """Stop every model's instances once their running work is done."""
        for entry in self._entries.values():
            self._retire_all(entry, "server stopped")
        await self.wait_retired()


def _read_rollout(name: str, directory: Path) -> Rollout | None:
    try:
        return read_rollout(directory)
    except (ValueError, OSError) as exc:
        raise ModelLoadError(f"model '{name}': {exc}") from None
