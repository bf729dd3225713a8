"""What the suite says: progress lines on stderr, the rows of results, and their files.

`Results` rewrites `DIR/results.json` and `DIR/results.md` after every change (atomically, so a
reader never sees half a file and an interrupted run keeps what it measured). `rps`,
`errors_note` and `cpu_note` are the phrases the targets put into a row.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelport.client import bench


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[suite {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def utc_now() -> str:
    """The time now, UTC, to the second (ISO 8601)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- results


@dataclass
class Row:
    """One line of results.md."""

    name: str
    title: str
    goal: float | None = None
    status: str = "pending"  # pending, running, pass, short, report, skipped, error
    measured: str = ""
    reference: str = ""
    ratio: float | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    elapsed_s: float | None = None

    def judge(self) -> None:
        """pass/short against the goal; report when there is none."""
        if self.ratio is None or not math.isfinite(self.ratio):
            self.status = "error"
            self.error = self.error or "no ratio measured"
        elif self.goal is None:
            self.status = "report"
        else:
            self.status = "pass" if self.ratio >= self.goal else "short"


class Results:
    """Every row, written to results.json and results.md after each change."""

    def __init__(self, out: Path, header: dict[str, Any]) -> None:
        self.out, self.header, self.rows = out, header, {}

    def add(self, row: Row) -> Row:
        """Add `row` (keyed by its name) and return it."""
        self.rows[row.name] = row
        return row

    def write(self) -> None:
        """Rewrite results.json and results.md from the header and the rows."""
        self.header["updated_at"] = utc_now()
        document = {"suite": self.header, "targets": [_row_dict(r) for r in self.rows.values()]}
        _write_atomic(self.out / "results.json", json.dumps(document, indent=2, default=_json_default) + "\n")
        _write_atomic(self.out / "results.md", self.markdown())

    def markdown(self) -> str:
        """results.md: the run and the machine, one table line per row, then every error in full."""
        h, m = self.header, self.header["machine"]
        mode = "quick" if h["quick"] else "full"
        lines = [
            "# modelport benchmark suite",
            "",
            f"- run: {h['started_at']} to {h.get('finished_at') or '(running)'}, {mode} mode: {h['seconds']:g} s per "
            f"level after {h['warmup']:g} s warm-up; `{h['command']}`",
            f"- machine: {m['summary']}",
            f"- software: {m['software']}",
            "- ratio = modelport / reference, both measured in this run on this machine; pass = ratio >= goal",
            "",
            "| target | measured | reference | ratio | goal | result | notes |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows.values():
            ratio = f"{r.ratio:.2f}" if r.ratio is not None and math.isfinite(r.ratio) else ""
            goal = f">= {r.goal:g}" if r.goal is not None else "report"
            notes = "; ".join(r.notes + ([f"error: {r.error.splitlines()[-1] if r.error else ''}"]
                                         if r.status == "error" else []))
            lines.append(f"| {r.name} | {r.measured} | {r.reference} | {ratio} | {goal} | {r.status} | "
                         f"{_cell(notes)} |")
        errors = [r for r in self.rows.values() if r.error]
        if errors:
            lines += ["", "## Errors", ""]
            for r in errors:
                lines += [f"### {r.name}", "", "```", r.error.strip()[-3000:], "```", ""]
        return "\n".join(lines) + "\n"


def _row_dict(row: Row) -> dict[str, Any]:
    return {k: getattr(row, k) for k in row.__dataclass_fields__}


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------- phrases of a row


def rps(r: bench.LevelResult, items: bool = False) -> str:
    """A level's rate as "1,234 req/s (p99 5.6 ms)" (items/s with `items`)."""
    value = r.items_per_s if items else r.requests_per_s
    return f"{value:,.0f} {'items' if items else 'req'}/s (p99 {r.p99_ms:.1f} ms)"


def errors_note(label: str, r: bench.LevelResult) -> list[str]:
    """A note on the failed requests of a level ([] when none failed)."""
    if not r.errors:
        return []
    return [f"{label}: {r.errors} failed requests "
            f"({', '.join(f'{e.code}: {e.first_message[:80]}' for e in r.error_summary)})"]


def cpu_note(label: str, cpu: dict[str, float]) -> str:
    """Busy cores of server and client, and what the server's /metrics said of the level when scraped."""
    text = f"{label} busy cores server {cpu['server_cores']:g} / client {cpu['client_cores']:g}"
    if cpu.get("rows_per_exec") is not None:
        text += (f", {cpu['rows_per_exec']:g} rows per ORT run of {cpu['ort_ms_per_exec']:g} ms, ORT busy "
                 f"{cpu['ort_busy']:.0%} of the time, server queue {cpu['queue_ms']:g} ms/request")  # fmt: skip
    return text
