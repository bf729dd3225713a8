"""What a model version takes and returns: its input and output specs, in the model's order."""

from __future__ import annotations

from dataclasses import dataclass, field

from modelport.protocol.types import TensorSpec


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of one model version, in the model's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # By name, for lookups on the request path.
    input_names: frozenset[str] = field(init=False, repr=False, compare=False)
    _inputs: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    _outputs: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_names", frozenset(t.name for t in self.inputs))
        object.__setattr__(self, "_inputs", {t.name: t for t in self.inputs})
        object.__setattr__(self, "_outputs", {t.name: t for t in self.outputs})

    def input(self, name: str) -> TensorSpec | None:
        """The input called `name`, if any."""
        return self._inputs.get(name)

    def output(self, name: str) -> TensorSpec | None:
        """The output called `name`, if any."""
        return self._outputs.get(name)
