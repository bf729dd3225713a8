"""`modelport explain`: why a served model predicted what it did, per row and per input element
(feature attributions computed by the server; see server/explain.py for the method)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .cli_common import add_server_options, positive_int

EPILOG = """examples:
  modelport explain --url localhost:8001 --model mlp --input test.npz --rows 3
  modelport explain --url localhost:8001 --model cnn --input test.npz --rows 4 --plot digits.png
  modelport explain --url localhost:8001 --model cnn --input x.npy --target 3 --json

Each row's attributions add up to its explained output minus the base value (the mean output
over the model version's background sample, or over zeros when the version has none): for a
classifier the predicted (or --target) class's probability or logit, for a regressor its output.
A .npy file feeds a single-input model; a .npz file holds one array per input name (or 'x');
other arrays in it (labels 'y') are ignored. --plot draws a bar chart of each row's strongest
features, or a heat map over each image (needs matplotlib: pip install matplotlib).
"""


def configure(p: argparse.ArgumentParser) -> None:
    """The `explain` subcommand's arguments."""
    p.description = "Explain a model's predictions: per-row, per-input-element attributions."
    p.epilog = EPILOG
    add_server_options(p, timeout=120.0)
    p.add_argument("--input", required=True, type=Path, help=".npy (single input) or .npz (named inputs)")
    p.add_argument("--rows", type=positive_int, help="explain only the first N rows of the file (default: all; "
                   "the server allows --explain-max-rows per call)")  # fmt: skip
    p.add_argument("--target", type=int, help="class to explain (default: each row's predicted class; for a "
                   "regressor, the output column)")  # fmt: skip
    p.add_argument("--output-name", help="the model output to explain (default: its first)")
    p.add_argument("--permutations", type=positive_int, help="permutations per row (default: the server's, 16)")
    p.add_argument("--patch-size", type=positive_int, help="images: side of the pixel patches attributed together "
                   "(default: the server's choice, 2 for 8x8 images)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation sampling (default 0)")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw a bar chart of the top features (tabular) "
                   "or a heat map over each image")  # fmt: skip
    p.add_argument("--top", type=positive_int, default=10, help="features shown per row (text, bar chart; default 10)")
    p.add_argument("--feature-names", type=Path, metavar="FILE", help="names of a tabular input's features, one "
                   "per line, for the text and the bar chart")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the rows, ask the server, print (and plot)."""
    from modelport.protocol.arrays import load_arrays, select_inputs
    from modelport.protocol.codec import as_wire_array

    from . import Client

    arrays = load_arrays(args.input)  # before connecting: a missing file is the user's first mistake
    names = None
    if args.feature_names:
        names = [n.strip() for n in args.feature_names.read_text().splitlines() if n.strip()]
    if args.plot is not None:
        from .explain_plot import require_matplotlib

        require_matplotlib()  # before the server's work, not after it
    with Client(args.url, timeout=args.timeout) as client:
        meta = client.model_metadata(args.model, args.model_version)
        chosen = select_inputs(arrays, [t.name for t in meta.inputs], args.input.name)
        inputs = {t.name: as_wire_array(chosen[t.name][: args.rows], t.datatype) for t in meta.inputs}
        explanation = client.explain(
            args.model, inputs, version=args.model_version, target=args.target, output=args.output_name,
            permutations=args.permutations or 0, patch_size=args.patch_size or 0, seed=args.seed,
        )  # fmt: skip
    if args.plot is not None:  # before printing: a closed pipe (| head) must not cost the picture
        from .explain_plot import plot

        plot(explanation, inputs, args.plot, args.top, names)
    if args.json:
        print(json.dumps(explanation.to_dict()))
    else:
        print(describe(explanation, args.top, names))
        if args.plot is not None:
            print(f"wrote {args.plot}")
    return 0


def describe(explanation, top: int = 10, feature_names: list[str] | None = None) -> str:
    """The explanation as text: how, then per row its output, base value and strongest features."""
    lines = [f"{explanation.model} v{explanation.version}, output '{explanation.output_name}' "
             f"({explanation.space}): {explanation.method}"]  # fmt: skip
    if explanation.background == "zeros":
        lines.append("note: this version has no background sample, so attributions are relative to all-zero "
                     "inputs; convert with --sample data to explain against typical inputs")  # fmt: skip
    what = "output" if explanation.space == "raw" else "class"
    for i, row in enumerate(explanation.rows):
        total = sum(float(a.sum()) for a in row.attributions.values())
        lines.append(f"row {i}: {what} {row.target}  output {row.output:.6g} = base {row.base_value:.6g} "
                     f"+ attributions {total:+.6g}")  # fmt: skip
        for label, value in strongest(row.attributions, top, feature_names, explanation.patch_size):
            lines.append(f"  {value:+.4g}  {label}")
    return "\n".join(lines)


def strongest(attributions: dict[str, np.ndarray], top: int, feature_names: list[str] | None = None,
              patch: int = 0) -> list[tuple[str, float]]:  # fmt: skip
    """The `top` features with the largest |attribution|: (label, value), strongest first. Images
    explained by patches (`patch` > 0) are listed by patch (the sum over its pixels)."""
    found = []
    single = len(attributions) == 1
    for name, values in attributions.items():
        units = _patches(name, values, patch) if patch else None
        if units is None:
            flat = values.reshape(-1)
            units = []
            for index in np.argsort(-np.abs(flat))[:top]:
                if single and feature_names and values.ndim == 1 and index < len(feature_names):
                    label = feature_names[index]
                else:
                    label = f"{name}[{', '.join(str(int(p)) for p in np.unravel_index(index, values.shape))}]"
                units.append((label, float(flat[index])))
        found.extend(units)
    return sorted(found, key=lambda item: -abs(item[1]))[:top]


def _patches(name: str, values: np.ndarray, patch: int) -> list[tuple[str, float]] | None:
    """An image's attributions summed per square patch, or None when `values` is no image."""
    from .explain_plot import image_view

    view = image_view(values)
    if view is None:
        return None
    plane = view.sum(axis=2) if view.ndim == 3 else view
    units = []
    for top_row in range(0, plane.shape[0], patch):
        for left in range(0, plane.shape[1], patch):
            bottom, right = min(top_row + patch, plane.shape[0]), min(left + patch, plane.shape[1])
            label = f"{name} rows {top_row}-{bottom - 1}, columns {left}-{right - 1}"
            units.append((label, float(plane[top_row:bottom, left:right].sum())))
    return units
