"""Pictures of an explanation (`modelport explain --plot`): a heat map of the attributions over
each image, or a bar chart of each row's strongest features. matplotlib is optional; without it
--plot fails before the server does any work, saying how to install it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_PLOTTED_ROWS = 8
IMAGE_CHANNELS = 4


class MissingMatplotlib(ImportError):
    """--plot without matplotlib installed."""

    exit_code = 2


def require_matplotlib() -> None:
    """Raise MissingMatplotlib, with the fix, unless matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingMatplotlib("--plot needs matplotlib, which is not installed: pip install matplotlib "
                                "(or leave out --plot)") from None  # fmt: skip


def image_view(row: np.ndarray) -> np.ndarray | None:
    """One row as an [H, W] or [H, W, C] picture when it is an image ([H, W, C] or [C, H, W] with
    C <= 4, or [H, W]), else None."""
    if row.ndim == 2 and min(row.shape) >= 4:
        return row
    if row.ndim != 3:
        return None
    if row.shape[2] <= IMAGE_CHANNELS:
        return row
    if row.shape[0] <= IMAGE_CHANNELS:
        return np.moveaxis(row, 0, -1)
    return None


def plot(explanation, inputs: dict[str, np.ndarray], path: Path, top: int = 10,
         feature_names: list[str] | None = None) -> None:  # fmt: skip
    """Write the picture to `path` (PNG, or whatever the suffix names)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    name = next((n for n, a in inputs.items() if len(a) and image_view(a[0]) is not None), None)
    figure = _heat_maps(explanation, inputs, name) if name else _bars(explanation, top, feature_names)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)


def _title(explanation, row) -> str:
    what = "output" if explanation.space == "raw" else "class"
    number = ".3f" if explanation.space == "probability" else ".3g"
    return f"{what} {row.target}: {row.output:{number}}\n(base {row.base_value:{number}})"


def _heat_maps(explanation, inputs: dict[str, np.ndarray], name: str):
    """Per row: the image above, its attributions below (red raises the explained output, blue
    lowers it; one colour scale per row, symmetric about zero)."""
    import matplotlib.pyplot as plt

    rows = explanation.rows[:MAX_PLOTTED_ROWS]
    figure, axes = plt.subplots(2, len(rows), figsize=(2.1 * len(rows) + 0.4, 4.6), squeeze=False,
                                layout="constrained")
    for i, row in enumerate(rows):
        picture = image_view(np.asarray(inputs[name][i], np.float64))
        heat = image_view(row.attributions[name])
        if heat.ndim == 3:
            heat = heat.sum(axis=2)  # a pixel's channels together
        gray = picture if picture.ndim == 2 or picture.shape[2] != 1 else picture[..., 0]
        axes[0, i].imshow(gray, cmap="gray_r" if gray.ndim == 2 else None)
        axes[0, i].set_title(_title(explanation, row), fontsize=8)
        limit = float(np.abs(heat).max()) or 1.0
        shown = axes[1, i].imshow(heat, cmap="bwr", vmin=-limit, vmax=limit)
        figure.colorbar(shown, ax=axes[1, i], location="bottom", shrink=0.9).ax.tick_params(labelsize=6)
        for axis in axes[:, i]:
            axis.set_xticks([])
            axis.set_yticks([])
    axes[1, 0].set_ylabel("attribution", fontsize=8)
    figure.suptitle(f"{explanation.model} v{explanation.version}: {explanation.method}\n"
                    "red raises the explained output, blue lowers it", fontsize=7, wrap=True)
    return figure


def _bars(explanation, top: int, feature_names: list[str] | None):
    """Per row: the `top` features by |attribution|, strongest on top."""
    import matplotlib.pyplot as plt

    from .explain_cli import strongest

    rows = explanation.rows[:MAX_PLOTTED_ROWS]
    figure, axes = plt.subplots(len(rows), 1, figsize=(7, 0.32 * top * len(rows) + 0.9 * len(rows)), squeeze=False)
    for axis, row in zip(axes[:, 0], rows):
        found = strongest(row.attributions, top, feature_names, explanation.patch_size)[::-1]
        values = [v for _, v in found]
        axis.barh([label for label, _ in found], values, color=["tab:red" if v > 0 else "tab:blue" for v in values])
        axis.axvline(0, color="black", linewidth=0.6)
        axis.set_title(_title(explanation, row).replace("\n", " "), fontsize=9)
        axis.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel(f"attribution ({explanation.space})")
    figure.suptitle(f"{explanation.model} v{explanation.version}: {explanation.method}", fontsize=7, wrap=True)
    figure.tight_layout()
    return figure
