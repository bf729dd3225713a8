"""Build one servable model version from disk: sessions, signature, scheduler, warmup.

Runs on a worker thread (loading can take seconds); nothing here touches the event loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from modelport.protocol import codec
from modelport.protocol.datatypes import CONFIG_TO_DATATYPE, random_array, zeros
from modelport.protocol.generated import model_config_pb2 as mc

from . import config as cfg
from .cpus import intra_op_threads, usable_cpus
from .drift import DriftTracker, read_references
from .errors import ModelLoadError, ModelportError, ModelTooLarge
from .logs import event
from .memory_budget import MemoryBudget, default_limit, folder_bytes, resident_bytes
from .model_files import check_keys, open_model
from .observers import Sampler
from .repository import version_stamp
from .runtime import InMemoryModel, OnnxModel, SessionOptions
from .scheduler import BatchingScheduler, DirectScheduler, Instance, rows_of
from .settings import ServerSettings
from .signature import Signature
from .statistics import VersionStats
from .versions import LoadFootprint, ModelVersion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoaderSettings:
    """Server-wide facts every model's sessions depend on: the server settings of the same
    names, and the CPUs this process may use."""

    providers: tuple[str, ...]
    device_id: int
    workers: int
    cpus: int
    drift_window: int
    drift_sample_rate: float
    memory_limit: int = 0  # bytes the models of this process may take (memory_budget); 0: no check
    verify_keys: tuple[Path, ...] = ()  # --verify-key: versions must be signed by one of these (model_files)
    decrypt_keys: tuple[Path, ...] = ()  # --decrypt-key-file: encrypted versions are decrypted in memory

    @classmethod
    def of(cls, settings: ServerSettings) -> LoaderSettings:
        """From the server's settings (ServerSettings.defaults() for the defaults); the key files
        are read once here, so a bad one stops the server (ValueError, OSError) before any load."""
        verify, decrypt = tuple(settings.verify_key or ()), tuple(settings.decrypt_key_file or ())
        check_keys(verify, decrypt)
        return cls(
            settings.execution_providers, settings.device_id, settings.workers, usable_cpus(),
            settings.drift_window, settings.drift_sample_rate, _memory_limit(settings), verify, decrypt,
        )  # fmt: skip


def _memory_limit(settings: ServerSettings) -> int:
    """--model-memory-limit, or by default the container's allowance shared among the workers."""
    given = settings.model_memory_limit
    return default_limit(settings.workers) if given is None else int(given)


def load_version(model_dir: Path, spec: cfg.ModelSpec, version: int, settings: LoaderSettings) -> ModelVersion:
    """Load, check against the config, and warm up; ModelLoadError with the reason otherwise.
    The version's files must fit in the memory limit first (refused before any byte is read);
    the version records how long it took and the resident memory it added."""
    where = f"model '{spec.name}' version {version}"
    path = model_dir / str(version) / spec.model_filename
    if not path.is_file():
        raise ModelLoadError(f"{where}: {path} does not exist")
    files = folder_bytes(path.parent)
    refusal = MemoryBudget(settings.memory_limit).refusal(where, files, len(spec.instances))
    if refusal is not None:
        raise ModelTooLarge(refusal)
    start, resident = time.perf_counter(), resident_bytes()
    # Signature checked and encrypted files decrypted (in memory) first; the plaintext is dropped
    # when _load returns: ONNX Runtime copied what it needs into the sessions.
    memory = open_model(path, where, settings.verify_keys, settings.decrypt_keys)
    loaded = _load(model_dir, spec, version, settings, path, where, memory)
    loaded.footprint = LoadFootprint(time.perf_counter() - start, max(resident_bytes() - resident, 0), files)
    return loaded


def _load(
    model_dir: Path, spec: cfg.ModelSpec, version: int, settings: LoaderSettings, path: Path, where: str,
    memory: InMemoryModel | None = None,
) -> ModelVersion:
    stamp = version_stamp(model_dir, version)
    models = [OnnxModel(path, _options(spec, kind, settings), where, memory) for kind in spec.instances]
    config, signature = cfg.complete(spec, models[0].signature, model_dir, version)
    instances = []
    for i, model in enumerate(models):
        timed = warm_up(where, model_dir, config, signature, spec.max_batch_size, model)
        if _needs_one_thread(spec, model, timed):
            model = OnnxModel(path, replace(model.options, intra_op_threads=1), where, memory)
            timed = warm_up(where, model_dir, config, signature, spec.max_batch_size, model)
            if i == 0:
                event(log, logging.INFO, "model_threads", model=spec.name, version=version, intra_op_threads=1,
                      reason="a warmup run takes under 1 ms: too short to share among threads")
        instance = Instance(model, i, inline=spec.batching is None)
        if timed is not None:
            one_row = _time_one_row(signature, model) if timed[1] > 1 and spec.max_batch_size > 0 else None
            instance.expect(*timed, one_row)
        if spec.batching is not None and spec.batching.pads(instance.on_gpu):
            _warm_pad_sizes(where, signature, spec.batching.pad_sizes(), model)
        instances.append(instance)
    stats = VersionStats()
    if spec.batching is None:
        scheduler: DirectScheduler | BatchingScheduler = DirectScheduler(where, instances, stats)
    else:
        scheduler = BatchingScheduler(where, instances, stats, spec.batching, [t.name for t in signature.outputs])
    drift = DriftTracker(read_references(model_dir / str(version)), settings.drift_window)
    sampler = Sampler(settings.drift_sample_rate)
    return ModelVersion(spec.name, version, spec, config, signature, scheduler, stats, stamp, sampler, drift)


# Below this run time a model gains nothing from intra-op threads: waking them costs more than the
# work they share (measured: the seed MLP ran 0.5 ms per request with 2 threads against ~0.02 ms
# with 1). Only applies when the config does not set intra_op_thread_count.
SMALL_RUN_S = 0.001


def _needs_one_thread(spec: cfg.ModelSpec, model: OnnxModel, timed: tuple[float, int] | None) -> bool:
    return (
        timed is not None
        and timed[0] < SMALL_RUN_S
        and not spec.intra_op_threads
        and model.options.intra_op_threads > 1
        and model.providers[0] == "CPUExecutionProvider"
    )


def _options(spec: cfg.ModelSpec, kind: str, settings: LoaderSettings) -> SessionOptions:
    """One instance's session options: threads from the config, else the usable CPUs shared
    among worker processes and all instances of this model."""
    threads = spec.intra_op_threads or intra_op_threads(settings.cpus, settings.workers, len(spec.instances))
    providers, device = settings.providers, settings.device_id
    if kind == "cpu":
        providers = ("cpu",)
    elif kind.startswith("gpu:"):
        providers, device = tuple(p for p in settings.providers if p != "cpu") or ("cuda",), int(kind[4:])
    return SessionOptions(threads, spec.inter_op_threads, spec.graph_level, providers, device, spec.session_entries)


def warm_up(
    where: str, model_dir: Path, config: mc.ModelConfig, signature: Signature, max_batch_size: int, model: OnnxModel
) -> tuple[float, int] | None:
    """Run the config's model_warmup samples, or zeros at the largest batch when it has none;
    return the median run time in seconds and the rows of the sample that took it (None when
    nothing ran).

    A configured warmup that fails fails the load. The default one is skipped when the model has
    free dimensions besides the batch one, since no shape can be guessed that it surely accepts.
    """
    samples = [(w.name or f"warmup {i}", max(w.count, 1), _warmup_inputs(where, model_dir, w, max_batch_size))
               for i, w in enumerate(config.model_warmup)]
    if not samples:
        default = _default_inputs(signature, max_batch_size)
        if default is None:
            log.info("%s: no default warmup (dimensions besides the batch are free)", where)
            return None
        samples = [("default zeros", 5, default)]
    outputs = [t.name for t in signature.outputs]
    times = []
    for name, count, inputs in samples:
        for _ in range(count):
            start = time.perf_counter()
            try:
                model.run(inputs, outputs)
            except ModelportError as exc:
                raise ModelLoadError(f"{where}: warmup '{name}' failed: {exc}") from exc
            times.append((time.perf_counter() - start, rows_of(inputs)))
    kept = sorted(times[1:] or times)  # the first run includes one-off allocation
    return kept[len(kept) // 2]



def _time_one_row(signature: Signature, model: OnnxModel, runs: int = 5) -> float | None:
    """Median seconds of a one-row run (after one untimed run), or None when no shape can be guessed."""
    times = _run_zeros(signature, model, 1, runs + 1)
    return None if times is None else sorted(times[1:])[runs // 2]


def _warm_pad_sizes(where: str, signature: Signature, sizes: tuple[int, ...], model: OnnxModel) -> None:
    """Run each size padded batches use once, so no request pays for a first shape."""
    for size in sizes:
        try:
            if _run_zeros(signature, model, size) is None:
                return  # free dimensions besides the batch: no shape to guess
        except ModelportError as exc:
            raise ModelLoadError(f"{where}: warmup at padded batch size {size} failed: {exc}") from exc


def _run_zeros(signature: Signature, model: OnnxModel, rows: int, runs: int = 1) -> list[float] | None:
    """Seconds of `runs` runs on zeros of `rows` rows; None when no shape can be guessed."""
    inputs = _default_inputs(signature, rows)
    if inputs is None:
        return None
    outputs = [t.name for t in signature.outputs]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.run(inputs, outputs)
        times.append(time.perf_counter() - start)
    return times


def _default_inputs(signature: Signature, max_batch_size: int) -> dict | None:
    inputs = {}
    for spec in signature.inputs:
        shape = list(spec.shape)
        if max_batch_size > 0:
            shape[0] = max_batch_size
        elif shape and shape[0] == -1:
            shape[0] = 1  # a free first dimension is the batch one in practice
        if -1 in shape:
            return None
        inputs[spec.name] = (spec.datatype, zeros(spec.datatype, shape))
    return inputs


def _warmup_inputs(where: str, model_dir: Path, warmup: mc.ModelWarmup, max_batch_size: int) -> dict:
    inputs = {}
    rng = np.random.default_rng(0)
    for name, spec in warmup.inputs.items():
        datatype = CONFIG_TO_DATATYPE.get(mc.DataType.Name(spec.data_type))
        if datatype is None:
            raise ModelLoadError(f"{where}: warmup input '{name}' has no data_type")
        shape = ([max(warmup.batch_size, 1)] if max_batch_size > 0 else []) + list(spec.dims)
        kind = spec.WhichOneof("input_data_type")
        if kind == "random_data":
            data = random_array(datatype, shape, rng, int_range=(0, 2))  # small: integers may be indices
        elif kind == "input_data_file":
            data = _from_file(where, model_dir / "warmup" / spec.input_data_file, datatype, shape)
        else:
            data = zeros(datatype, shape)
        inputs[name] = (datatype, data)
    return inputs


def _from_file(where: str, path: Path, datatype: str, shape: list[int]) -> np.ndarray:
    """Triton's input_data_file: raw bytes in the protocol's layout, in <model>/warmup/."""
    try:
        return codec.from_raw(path.read_bytes(), datatype, shape, f"warmup file {path.name}")
    except (OSError, codec.CodecError) as exc:
        raise ModelLoadError(f"{where}: {exc}") from exc
