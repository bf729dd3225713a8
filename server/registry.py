"""Loaded models: which versions of which model are served, and the state of each."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from modelport.client._proto import model_config_pb2 as mc

from . import config as cfg
from .errors import ModelLoadError, ModelNotFound, ModelNotReady, ModelportError
from .repository import ModelDirectory, scan
from .cpus import intra_op_threads, usable_cpus
from .runtime import OnnxModel, SessionOptions
from .scheduler import BatchingScheduler, DirectScheduler, Instance
from .signature import Signature

log = logging.getLogger(__name__)


@dataclass
class ModelVersion:
    """One served version: its session, signature and effective config."""

    name: str
    version: int
    spec: cfg.ModelSpec
    config: mc.ModelConfig
    signature: Signature
    scheduler: DirectScheduler | BatchingScheduler

    @property
    def label(self) -> str:
        """How messages name this version."""
        return f"model '{self.name}' version {self.version}"


@dataclass
class ModelEntry:
    """A model of the repository: its served versions, or why it has none."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)  # version (0: the whole model) -> reason

    @property
    def ready(self) -> bool:
        """Serving at least one version, with none of the wanted ones failed."""
        return bool(self.versions) and not self.errors


class ModelRegistry:
    """Every model the server knows, loaded from a Triton-layout repository."""

    def __init__(
        self, root: Path, providers: tuple[str, ...] = ("cpu",), device_id: int = 0, workers: int = 1
    ) -> None:
        self.root = root
        self.providers = providers
        self.device_id = device_id
        self.workers = workers
        self.cpus = usable_cpus()
        self._models: dict[str, ModelEntry] = {}

    def load_all(self) -> None:
        """Load every model of the repository; a model that fails is recorded, not fatal."""
        for directory in scan(self.root).values():
            self._models[directory.name] = self._load(directory)

    def _load(self, directory: ModelDirectory) -> ModelEntry:
        entry = ModelEntry(directory.name)
        try:
            spec = cfg.model_spec(directory.name, cfg.read_config(directory.path))
        except ModelLoadError as exc:
            log.error("model load failed: %s", exc)
            entry.errors[0] = exc.message
            return entry
        wanted = spec.version_policy.select(directory.versions)
        if not wanted:
            entry.errors[0] = f"model '{directory.name}': no version folder matches its version policy"
            log.error("model load failed: %s", entry.errors[0])
        for version in wanted:
            try:
                entry.versions[version] = self._load_version(directory, spec, version)
                log.info("model loaded: name=%s version=%d", directory.name, version)
            except ModelLoadError as exc:
                log.error("model load failed: %s", exc)
                entry.errors[version] = exc.message
        return entry

    def _load_version(self, directory: ModelDirectory, spec: cfg.ModelSpec, version: int) -> ModelVersion:
        label = f"model '{spec.name}' version {version}"
        path = directory.path / str(version) / spec.model_filename
        if not path.is_file():
            raise ModelLoadError(f"{label}: {path} does not exist")
        instances = [
            Instance(OnnxModel(path, self._session_options(spec, kind), f"{label}"), i)
            for i, kind in enumerate(spec.instances)
        ]
        config, signature = cfg.complete(spec, instances[0].model.signature, directory.path, version)
        if spec.batching is None:
            scheduler: DirectScheduler | BatchingScheduler = DirectScheduler(label, instances)
        else:
            scheduler = BatchingScheduler(label, instances, spec.batching, [t.name for t in signature.outputs])
        return ModelVersion(spec.name, version, spec, config, signature, scheduler)

    def _session_options(self, spec: cfg.ModelSpec, kind: str) -> SessionOptions:
        """Session options of one instance: threads from the config, else the usable CPUs shared
        among worker processes and all instances of this model."""
        threads = spec.intra_op_threads or intra_op_threads(self.cpus, self.workers, len(spec.instances))
        providers, device = self.providers, self.device_id
        if kind == "cpu":
            providers = ("cpu",)
        elif kind.startswith("gpu:"):
            providers, device = tuple(p for p in self.providers if p != "cpu") or ("cuda",), int(kind[4:])
        return SessionOptions(threads, spec.inter_op_threads, spec.graph_level, providers, device)

    # ------------------------------------------------------------ lookups

    def names(self) -> list[str]:
        """Names of all models, served or failed."""
        return sorted(self._models)

    def entries(self) -> list[ModelEntry]:
        """All model entries, by name."""
        return [self._models[n] for n in self.names()]

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The served version asked for ('' = the newest served one)."""
        entry = self._models.get(name)
        if entry is None:
            known = ", ".join(f"'{n}'" for n in self.names()) or "none"
            raise ModelNotFound(f"model '{name}' is not found; models in the repository: {known}")
        if not entry.versions:
            reason = "; ".join(entry.errors.values()) or "no version loaded"
            raise ModelNotReady(f"model '{name}' is not ready: {reason}")
        if not version:
            return entry.versions[max(entry.versions)]
        served = ", ".join(str(v) for v in sorted(entry.versions))
        if not version.isdigit() or int(version) not in entry.versions:
            raise ModelNotFound(f"model '{name}' has no served version '{version}'; served versions: {served}")
        return entry.versions[int(version)]

    def is_ready(self, name: str, version: str = "") -> bool:
        """Whether `name` (and `version`) can take requests now."""
        try:
            self.get(name, version)
        except ModelportError:
            return False
        return True

    def all_ready(self) -> bool:
        """Every model of the repository is serving (Triton's strict readiness)."""
        return all(entry.ready for entry in self._models.values())

    def versions(self, name: str) -> list[int]:
        """Served versions of `name`, ascending (empty when unknown)."""
        entry = self._models.get(name)
        return sorted(entry.versions) if entry else []

    async def close(self) -> None:
        """Stop every model's instances once their running work is done."""
        for entry in self._models.values():
            for version in entry.versions.values():
                await version.scheduler.close()
