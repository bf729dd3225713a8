"""Render every kustomize target once per session, in parallel (kubectl runs outside the GIL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from .render import TARGETS, Target, render


@pytest.fixture(scope="session")
def rendered() -> dict[Target, tuple[dict, ...]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(TARGETS, pool.map(render, TARGETS)))
