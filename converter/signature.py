"""A model's versions are interchangeable: they share the tensor names, datatypes and shapes that the
model's config.pbtxt establishes, and publishing one never stops another from loading.

- `differences`: a new ONNX model against the model's config.pbtxt, by position (count, datatype,
  dims; -1 matches any size, dims exclude the batch dimension when max_batch_size > 0);
- `rename`: the new graph's inputs and outputs renamed to the config's names, everywhere a name is
  used (nodes, value_info, initializers, subgraphs);
- `load_problem` / `newly_broken`: whether a version loads under a config, checked as the server
  does (server/config.py), so the converter can tell which earlier versions a new config.pbtxt
  would break. (The converter does not import the server: this mirrors its checks.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from modelport.protocol.datatypes import CONFIG_TO_DATATYPE, ONNX_ELEMENT_TO_DATATYPE
from modelport.protocol.generated import model_config_pb2 as mc
from modelport.protocol.repository import CONFIG_FILE, MODEL_FILE, version_folders

from . import onnx_files

FLAG = "--replace-signature"


class SignatureMismatch(ValueError):
    """The new version's inputs or outputs differ from the model's established ones (or publishing
    it would stop earlier versions from loading); nothing was published."""


@dataclass(frozen=True)
class Tensor:
    """A graph input or output: protocol datatype and full shape (-1: any size)."""

    name: str
    datatype: str
    dims: tuple[int, ...]


def graph_tensors(model: onnx.ModelProto) -> tuple[list[Tensor], list[Tensor]]:
    """The graph's inputs (initializers excluded, as ONNX Runtime lists them) and outputs."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [_tensor(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [_tensor(v) for v in model.graph.output]


def _tensor(value: onnx.ValueInfoProto) -> Tensor:
    kind = value.type.tensor_type
    datatype = ONNX_ELEMENT_TO_DATATYPE.get(kind.elem_type, f"ONNX type {kind.elem_type}")
    return Tensor(value.name, datatype, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim))


def is_established(config: mc.ModelConfig | None) -> bool:
    """Whether a config.pbtxt names the model's inputs or outputs (a conversion wrote them, or a user)."""
    return config is not None and bool(config.input or config.output)


def _datatype(data_type: int) -> str:
    name = mc.DataType.Name(data_type) if data_type in mc.DataType.values() else str(data_type)
    return CONFIG_TO_DATATYPE.get(name, name)


def _dims_match(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == -1 or y == -1 or x == y for x, y in zip(a, b))


def _describe(name: str, datatype: str, dims: Sequence[int]) -> str:
    return f"'{name}' {datatype} {list(dims)}"


def _sections(config: mc.ModelConfig, model: onnx.ModelProto) -> Iterator[tuple[str, Sequence, list[Tensor]]]:
    """(kind, config entries, graph tensors) for the sections the config establishes (a section it
    leaves empty is completed by the server from each version's own graph, so nothing binds it)."""
    inputs, outputs = graph_tensors(model)
    for kind, entries, tensors in (("input", config.input, inputs), ("output", config.output, outputs)):
        if entries:
            yield kind, entries, tensors


def differences(config: mc.ModelConfig, model: onnx.ModelProto) -> list[str]:
    """How `model`'s inputs and outputs differ from the ones `config` establishes, by position
    (names aside: those are what `renames` maps). Empty when they match."""
    batch = config.max_batch_size > 0
    found = []
    for kind, entries, tensors in _sections(config, model):
        own = [(t.name, t.datatype, t.dims[1:] if batch else t.dims) for t in tensors]
        theirs = [(e.name, _datatype(e.data_type), tuple(e.dims)) for e in entries]
        if len(own) != len(theirs):
            found.append(
                f"{kind}s: {len(own)} in this version ({', '.join(_describe(*t) for t in own)}) vs "
                f"{len(theirs)} in the model ({', '.join(_describe(*t) for t in theirs)})"
            )
            continue
        for i, (mine, model_s) in enumerate(zip(own, theirs)):
            if mine[1] != model_s[1] or not _dims_match(mine[2], model_s[2]):
                found.append(f"{kind} {i}: {_describe(*mine)} vs the model's {_describe(*model_s)}")
    return found


def renames(config: mc.ModelConfig, model: onnx.ModelProto) -> dict[str, str]:
    """{name in the new graph: the model's name at the same position}, for names that differ
    (call when `differences` is empty)."""
    mapping: dict[str, str] = {}
    for _kind, entries, tensors in _sections(config, model):
        for tensor, entry in zip(tensors, entries):
            if mapping.setdefault(tensor.name, entry.name) != entry.name:
                raise SignatureMismatch(
                    f"'{tensor.name}' is both an input and an output of the new version, but the model names "
                    f"them '{mapping[tensor.name]}' and '{entry.name}'; it cannot take both names"
                )
    return {old: new for old, new in mapping.items() if old != new}


def rename(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    """Rename tensors everywhere `model` uses them (graph inputs and outputs, node inputs and
    outputs, value_info, initializers, subgraphs), all at once (so names may swap). A tensor
    inside the graph that already has one of the new names gets a fresh name first."""
    if not mapping:
        return
    taken = set(_names(model.graph))
    targets = set(mapping.values())
    full = dict(mapping)
    for name in sorted((taken & targets) - set(mapping)):
        fresh, i = f"{name}__internal", 1
        while fresh in taken or fresh in targets or fresh in full.values():
            fresh, i = f"{name}__internal_{i}", i + 1
        full[name] = fresh
    _rename_graph(model.graph, full)
    onnx_files.check(model)  # in memory; one with external data is checked by path once saved


def _subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield attribute.g
            yield from attribute.graphs


def _names(graph: onnx.GraphProto) -> Iterator[str]:
    for values in (graph.input, graph.output, graph.value_info, graph.initializer):
        yield from (v.name for v in values)
    yield from (s.values.name for s in graph.sparse_initializer)
    for node in graph.node:
        yield from node.input
        yield from node.output
    for subgraph in _subgraphs(graph):
        yield from _names(subgraph)


def _rename_graph(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    def new(name: str) -> str:
        return mapping.get(name, name) if name else name  # "" is an omitted optional input

    for values in (graph.input, graph.output, graph.value_info, graph.initializer):
        for value in values:
            value.name = new(value.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = new(sparse.values.name)
        sparse.indices.name = new(sparse.indices.name)
    for annotation in graph.quantization_annotation:
        annotation.tensor_name = new(annotation.tensor_name)
    for node in graph.node:
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
    for subgraph in _subgraphs(graph):
        _rename_graph(subgraph, mapping)


def load_problem(config: mc.ModelConfig, inputs: Sequence[Tensor], outputs: Sequence[Tensor]) -> str | None:
    """Why the server would refuse a version with these inputs and outputs under `config` (the
    checks of server/config.py that depend on the version), or None when it would load it."""
    batch = config.max_batch_size > 0
    if config.HasField("dynamic_batching") and not batch:
        return "dynamic_batching needs max_batch_size > 0"
    for kind, entries, tensors, required_all in (
        ("input", config.input, inputs, True),
        ("output", config.output, outputs, False),
    ):
        by_name = {t.name: t for t in tensors}
        for entry in entries:
            problem = _entry_problem(kind, entry, by_name.get(entry.name), sorted(by_name), batch)
            if problem is not None:
                return problem
        named = {entry.name for entry in entries}
        missing = [t for t in tensors if t.name not in named]
        if entries and missing and required_all:
            extra = [t.name for t in missing]
            return f"{CONFIG_FILE} lists {kind}s {sorted(named)} but the ONNX model also has {extra}"
        for tensor in missing:  # completed from the graph, which then needs a batch dimension too
            if batch and (not tensor.dims or tensor.dims[0] != -1):
                return _batch_problem(kind, tensor)
    return None


def _entry_problem(kind: str, entry, tensor: Tensor | None, names: list[str], batch: bool) -> str | None:
    if tensor is None:
        return f"{CONFIG_FILE} {kind} '{entry.name}' is not in the ONNX model; it has {names}"
    if entry.HasField("reshape"):
        return f"{kind} '{entry.name}': reshape is not supported"
    if _datatype(entry.data_type) != tensor.datatype:
        return (f"{kind} '{entry.name}' is {_datatype(entry.data_type)} in {CONFIG_FILE} but {tensor.datatype} "
                "in the ONNX model")  # fmt: skip
    dims = tensor.dims
    if batch:
        if not dims or dims[0] != -1:
            return _batch_problem(kind, tensor)
        dims = dims[1:]
    if not _dims_match(entry.dims, dims):
        return (f"{kind} '{entry.name}' has dims {list(entry.dims)} in {CONFIG_FILE} but {list(dims)} in the ONNX "
                f"model{' (batch dimension excluded)' if batch else ''}")  # fmt: skip
    return None


def _batch_problem(kind: str, tensor: Tensor) -> str:
    return (f"max_batch_size > 0 needs a dynamic first dimension, but {kind} '{tensor.name}' has shape "
            f"{list(tensor.dims)} in the ONNX model")  # fmt: skip


def newly_broken(model_dir: Path, before: mc.ModelConfig | None, after: mc.ModelConfig) -> dict[int, str]:
    """{version: why it would not load}: the published versions that load under config.pbtxt
    `before` (None: no config.pbtxt) but would not under `after`. Versions already broken, or
    whose model file cannot be read, are left out: a new config does not change that."""
    before = before if before is not None else mc.ModelConfig()
    broken = {}
    for version, inputs, outputs in _published(model_dir, after.default_model_filename or MODEL_FILE):
        problem = load_problem(after, inputs, outputs)
        if problem is not None and load_problem(before, inputs, outputs) is None:
            broken[version] = problem
    return broken


def _published(model_dir: Path, filename: str) -> Iterable[tuple[int, list[Tensor], list[Tensor]]]:
    for version in version_folders(model_dir):
        try:
            model = onnx.load(str(model_dir / str(version) / filename), load_external_data=False)
        except Exception:  # noqa: BLE001 - a missing or unreadable file does not load today either
            continue
        yield version, *graph_tensors(model)


def describe_broken(broken: dict[int, str]) -> str:
    """'version 1 (why); version 2 (why)'."""
    return "; ".join(f"version {v} ({why})" for v, why in sorted(broken.items()))
