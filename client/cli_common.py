"""What the client's subcommands share: argument types, the server and model options (one
declaration, perf_analyzer's short flags), and the progress line on stderr."""

from __future__ import annotations

import argparse
import time
from typing import TextIO


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A float > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_server_options(
    parser: argparse.ArgumentParser, *, model: bool = True, version: bool = True, timeout: float = 60.0
) -> None:
    """-u/--url, and -m/--model, -x/--model-version and --timeout (Triton perf_analyzer's short flags)."""
    parser.add_argument("-u", "--url", default="localhost:8001",
                        help="server address: host:port for gRPC, or http://host:port for the HTTP/REST "
                             "binding (default localhost:8001)")
    if model:
        parser.add_argument("-m", "--model", required=True, help="model name")
    if version:
        parser.add_argument("-x", "--model-version", default="", help="model version (default: newest served)")
    parser.add_argument("--timeout", type=positive_float, default=timeout,
                        help=f"deadline of each call in seconds (default {timeout:g})")  # fmt: skip


class ProgressLine:
    """Progress on stderr: on a terminal, one line rewritten in place (at most every
    `min_interval` seconds unless forced); elsewhere (logs, CI) only the plain lines asked for."""

    def __init__(self, stream: TextIO, min_interval: float = 0.1) -> None:
        self.stream = stream
        self.live = hasattr(stream, "isatty") and stream.isatty()
        self.min_interval = min_interval
        self._last = 0.0
        self._shown = False

    def show(self, text: str, force: bool = False) -> None:
        """Rewrite the live line (terminals only)."""
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._shown = True

    def say(self, text: str) -> None:
        """A plain line where there is no live line (so logs get a few milestones)."""
        if not self.live:
            print(text, file=self.stream, flush=True)

    def clear(self) -> None:
        """Remove the live line before other output."""
        if self.live and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
