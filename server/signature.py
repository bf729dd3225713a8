"""What a model version takes and returns: its input and output specs, in the model's order."""

from __future__ import annotations

from dataclasses import dataclass

from modelport.protocol.types import TensorSpec


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of one model version, in the model's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec | None:
        """The input called `name`, if any."""
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        """The output called `name`, if any."""
        return next((t for t in self.outputs if t.name == name), None)
