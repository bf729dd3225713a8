"""Interventional Shapley values by antithetic permutation sampling: the maths, no I/O.

The players are groups of input elements (every element of a tabular row; square pixel patches
of an image). A coalition S is scored by v(S) = mean over the background rows b of f(x_S, b_rest):
the row's own values on S, the background's elsewhere (the "interventional" value shap's
PermutationExplainer with an Independent masker computes). For a permutation of the players, each
one's marginal contribution is v(prefix with it) - v(prefix without it); the attribution is the
mean over permutations. Whatever permutations are drawn, a row's attributions add up to
v(all) - v(none) = f(x) - E_b[f(b)] (the contributions telescope), and for an additive model every
permutation gives every player exactly w_i (x_i - E[b_i]), so both hold to float precision. Each
permutation is paired with its reverse (antithetic sampling, as shap does), which cancels much of
the sampling error for the rest; with few players every permutation is enumerated and the values
are exact.

`plan` numbers the coalitions a row needs; the caller evaluates them (model rows =
coalitions x background rows, built chunk by chunk with `rows`) and `attribute` turns their values
into attributions.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

DEFAULT_PERMUTATIONS = 16  # 8 antithetic pairs: shap's default budget for ~30 features
MAX_PERMUTATIONS = 1024
# Images: at most this many patches along each side (8x8 = 64 players), patches at least
# MIN_PATCH pixels wide: 8x8 digits -> 2x2 patches (16 players), 28x28 -> 4x4 (49), 224x224 -> 28x28 (64).
MAX_PATCHES_PER_SIDE = 8
MIN_PATCH = 2
MAX_IMAGE_CHANNELS = 4


@dataclass(frozen=True)
class Players:
    """How input elements form players: per input, the player of each element of one row."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]  # one row's shape per input
    groups: tuple[np.ndarray, ...]  # per input: player index of each element (flat, row-major)
    count: int  # players in all
    patch: int  # patch side used for image inputs (0: none)

    def sizes(self) -> np.ndarray:
        """Elements per player (all inputs together)."""
        return np.bincount(np.concatenate(self.groups), minlength=self.count)

    def spread(self, phi: np.ndarray) -> list[np.ndarray]:
        """Player attributions back onto the elements, shaped like one row of each input: a
        player's share divided evenly among its elements (so the elements still add up)."""
        per_element = phi / self.sizes()
        return [per_element[g].reshape(shape) for g, shape in zip(self.groups, self.shapes)]


def image_layout(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(height axis, width axis, channel axis) of one row that looks like an image — [H, W, C]
    (Keras) or [C, H, W] with C <= 4 and H, W >= 4 — else None."""
    if len(shape) != 3:
        return None
    if shape[2] <= MAX_IMAGE_CHANNELS and min(shape[0], shape[1]) >= 4:
        return 0, 1, 2
    if shape[0] <= MAX_IMAGE_CHANNELS and min(shape[1], shape[2]) >= 4:
        return 1, 2, 0
    return None


def auto_patch(height: int, width: int) -> int:
    """The patch side for an image: at most MAX_PATCHES_PER_SIDE patches along its longer side,
    and at least MIN_PATCH pixels."""
    return max(MIN_PATCH, math.ceil(max(height, width) / MAX_PATCHES_PER_SIDE))


def players(names: list[str], shapes: list[tuple[int, ...]], patch: int = 0) -> Players:
    """Players of a row: square patches of `patch` pixels (0: auto_patch) for image-like inputs,
    all channels of a pixel together; every element for the rest."""
    groups, offset, used = [], 0, 0
    for shape in shapes:
        layout = image_layout(shape)
        if layout is None:
            size = int(np.prod(shape, dtype=np.int64))
            groups.append(np.arange(offset, offset + size))
            offset += size
            continue
        h_axis, w_axis, _ = layout
        height, width = shape[h_axis], shape[w_axis]
        side = patch or auto_patch(height, width)
        across = math.ceil(width / side)
        rows_of = np.arange(height)[:, None] // side
        cols_of = np.arange(width)[None, :] // side
        grid = rows_of * across + cols_of  # [H, W] patch index
        per_element = np.expand_dims(grid, axis=[a for a in range(3) if a not in (h_axis, w_axis)][0])
        per_element = np.broadcast_to(per_element, shape).reshape(-1)
        groups.append(offset + per_element)
        offset += int(math.ceil(height / side) * across)
        used = side
    return Players(tuple(names), tuple(tuple(s) for s in shapes), tuple(groups), offset, used)


def enumerates(count: int, wanted: int) -> bool:
    """Whether `wanted` permutations cover all of `count` players' (the values are then exact)."""
    return count <= 8 and math.factorial(count) <= wanted  # 8! = 40320 > MAX_PERMUTATIONS


def permutations(count: int, wanted: int, rng: np.random.Generator) -> np.ndarray:
    """[P, count] permutations: all of them when there are no more than `wanted`, else `wanted`
    (rounded up to even) random ones, each followed by its reverse."""
    if enumerates(count, wanted):
        return np.array(list(itertools.permutations(range(count))), dtype=np.int64).reshape(-1, count)
    pairs = (wanted + 1) // 2
    forward = np.argsort(rng.random((pairs, count)), axis=1)
    return np.stack([forward, forward[:, ::-1]], axis=1).reshape(2 * pairs, count)


# With this few players, permutations share many prefixes: each distinct coalition is evaluated
# once. With more, repeats are rare and finding them costs more than it saves.
DISTINCT_PLAYERS = 16
EMPTY, FULL = -1, -2


@dataclass(frozen=True)
class Plan:
    """The coalitions one row needs, numbered 0..count-1. `steps[p, k]` is the coalition holding
    the first k players of permutation p (EMPTY and FULL: the empty and the full coalition, whose
    values are known without evaluating them)."""

    order: np.ndarray  # [P, M] the permutations
    ranks: np.ndarray  # [P, M] each player's place in each permutation
    steps: np.ndarray  # [P, M + 1] into the coalitions, or EMPTY / FULL
    count: int  # coalitions to evaluate
    distinct: np.ndarray | None  # [count, M] their masks, when deduplicated

    def masks(self, first: int, last: int) -> np.ndarray:
        """[last - first, M] player masks of coalitions first..last-1 (made on demand: a plan
        for many players and permutations holds no P x M x M array)."""
        if self.distinct is not None:
            return self.distinct[first:last]
        inner = self.order.shape[1] - 1
        permutation, prefix = np.divmod(np.arange(first, last), inner)
        return self.ranks[permutation] < (prefix + 1)[:, None]


def plan(order: np.ndarray) -> Plan:
    """The proper, non-empty prefix coalitions of the permutations `order` (distinct ones only
    for few players)."""
    count, players_ = order.shape
    ranks = np.empty_like(order)
    ranks[np.arange(count)[:, None], order] = np.arange(players_)[None, :]
    inner = players_ - 1
    ends = (np.full((count, 1), EMPTY), None, np.full((count, 1), FULL))
    if inner == 0:
        return Plan(order, ranks, np.concatenate([ends[0], ends[2]], axis=1), 0, None)
    if players_ > DISTINCT_PLAYERS:
        numbered = np.arange(count * inner).reshape(count, inner)
        return Plan(order, ranks, np.concatenate([ends[0], numbered, ends[2]], axis=1), count * inner, None)
    # prefix k of permutation p holds the players whose rank is below k
    masks = ranks[:, None, :] < np.arange(1, players_)[None, :, None]  # [P, M-1, M]
    distinct, inverse = np.unique(masks.reshape(-1, players_), axis=0, return_inverse=True)
    steps = np.concatenate([ends[0], inverse.reshape(count, inner), ends[2]], axis=1)
    return Plan(order, ranks, steps, len(distinct), distinct)


def rows(
    x: list[np.ndarray], background: list[np.ndarray], who: Players, p: Plan, start: int, stop: int
) -> list[np.ndarray]:
    """Model rows start..stop of the evaluation (row i: coalition i // B over background row
    i % B, B background rows): per input, the row's values on the coalition's players and the
    background's elsewhere, shaped [stop - start, *row shape]."""
    b = len(background[0])
    first, last = start // b, (stop - 1) // b + 1
    chosen = p.masks(first, last)  # whole coalitions, by broadcasting; then the rows asked for
    skip = start - first * b
    built = []
    for values, base, groups, shape in zip(x, background, who.groups, who.shapes):
        on = chosen[:, groups]  # [k, E]
        flat = np.where(on[:, None, :], values.reshape(1, 1, -1), base.reshape(1, b, -1))  # [k, B, E]
        built.append(flat.reshape(-1, *shape)[skip : skip + stop - start])
    return built


def attribute(p: Plan, values: np.ndarray, empty: float, full: float) -> np.ndarray:
    """Attributions [M] from the coalitions' values, v(empty) and v(full): the mean marginal
    contribution of each player over the permutations."""
    table = np.concatenate([np.asarray(values, np.float64), [full, empty]])  # index -2: full, -1: empty
    v = table[p.steps]  # [P, M + 1]
    contributions = np.diff(v, axis=1)  # [P, M]: column k belongs to player order[:, k]
    phi = np.zeros(p.order.shape[1])
    np.add.at(phi, p.order, contributions)
    return phi / len(p.order)
