"""Logging: one line per event (model loaded/unloaded/failed, request error), never one per
successful request. Text lines are logfmt (`event key=value ...`, values quoted when needed);
`--log-format json` writes one JSON object per line for log pipelines."""

from __future__ import annotations

import json
import logging
import time
from typing import Any


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log the event `name` with its fields, structured in both formats."""
    if logger.isEnabledFor(level):
        text = " ".join([name, *(f"{key}={_logfmt(value)}" for key, value in fields.items())])
        logger.log(level, text, extra={"event": name, "fields": fields})


def _logfmt(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, event and fields (or message)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        if hasattr(record, "event"):
            data["event"] = record.event
            data.update(
                {k: v if isinstance(v, (int, float, bool)) or v is None else str(v) for k, v in record.fields.items()}
            )
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


def configure(level: str, fmt: str = "text", prefix: str = "") -> None:
    """Set up the root logger for the server process."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
