"""README's `modelport serve` flag table says what `serve --help` says: the same flags, the same
defaults (both come from the settings model, so a field added without a row fails here)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from modelport.client.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_flags() -> dict[str, str]:
    """{flag: default} from the table headed `| flag | default | meaning |`."""
    lines = README.read_text().splitlines()
    start = lines.index("| flag | default | meaning |") + 2
    flags = {}
    for line in lines[start:]:
        if not line.startswith("| `"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        flag = re.match(r"`(--[\w-]+)", cells[0]).group(1)
        assert flag not in flags, f"{flag} has two rows"
        flags[flag] = cells[1]
    return flags


def help_flags() -> dict[str, str]:
    """{flag: default} from the `serve` parser's help texts."""
    parser = build_parser("serve")
    serve = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    flags = {}
    for action in serve._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        if not long or long[0] == "--help":
            continue
        match = re.search(r"\(default (.*)\)$", (action.help or "").replace("%%", "%"))  # argparse escaping
        flags[long[0]] = match.group(1) if match else "(required)"
    return flags


def test_readme_flag_table_matches_serve_help() -> None:
    documented, actual = readme_flags(), help_flags()
    assert sorted(documented) == sorted(actual), (
        f"in --help only: {sorted(set(actual) - set(documented))}; "
        f"in README only: {sorted(set(documented) - set(actual))}"
    )
    differ = {flag: (documented[flag], actual[flag]) for flag in actual if documented[flag] != actual[flag]}
    assert not differ, f"defaults (README, --help) differ: {differ}"
