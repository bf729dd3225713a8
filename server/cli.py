"""`modelport serve`: one flag per ServerSettings field, generated from the settings model (so
flags, help texts, defaults and MODELPORT_* variables cannot disagree), with Triton's flag
names where Triton has the same flag."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from .settings import ServerSettings

EPILOG = """example:
  modelport serve --model-repository ./models --grpc-port 8001
  # then: modelport predict --url localhost:8001 --model mlp --input x.npy

Every flag can also be set as an environment variable MODELPORT_<FIELD> (e.g. MODELPORT_GRPC_PORT=9001;
--grpc-max-message-size is MODELPORT_MAX_MESSAGE_BYTES, --execution-provider MODELPORT_EXECUTION_PROVIDERS,
--exit-timeout-secs MODELPORT_SHUTDOWN_GRACE_SECONDS); flags win over the environment.
"""


def boolean(text: str) -> bool:
    """true/false, yes/no, on/off, 1/0."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def flag_of(name: str, field: FieldInfo) -> str:
    """The command-line flag of a settings field."""
    return _extra(field).get("flag") or "--" + name.replace("_", "-")


def shown_default(field: FieldInfo) -> str:
    """The default as help texts and README's flag table show it."""
    extra = _extra(field)
    if "shown" in extra:
        return extra["shown"]
    if field.is_required():
        return "(required)"
    value = field.default
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    return "none" if value is None else str(value)


def configure(p: argparse.ArgumentParser) -> None:
    """The `serve` subcommand's arguments: one per settings field."""
    p.description = ("Load every model of a Triton-layout repository into ONNX Runtime and serve it over gRPC "
                     "(inference.GRPCInferenceService, grpc.health.v1, server reflection).")  # fmt: skip
    p.epilog = EPILOG
    for name, field in ServerSettings.model_fields.items():
        p.add_argument(flag_of(name, field), dest=name, **_argument(field))
    p.set_defaults(func=run)


def _argument(field: FieldInfo) -> dict[str, Any]:
    """add_argument's keywords for a field. Defaults stay None: an absent flag leaves the
    environment's value (or the field's default) in place."""
    kind, repeated = _kind(field.annotation)
    required = field.is_required()
    default = "" if required else f" (default {shown_default(field)})"
    # argparse formats help texts with %: a literal one ("less 10%") must be doubled.
    kwargs: dict[str, Any] = {"help": f"{field.description}{default}".replace("%", "%%"), "required": required}
    if repeated:
        kwargs["action"] = "append"
    if typing.get_origin(kind) is typing.Literal:
        kwargs["choices"] = list(typing.get_args(kind))
    elif kind is bool:
        kwargs.update(type=boolean, metavar="true|false")
    elif kind in (int, float):
        kwargs["type"] = kind
    if "metavar" in _extra(field):
        kwargs["metavar"] = _extra(field)["metavar"]
    return kwargs


def _kind(annotation: Any) -> tuple[Any, bool]:
    """(the type one flag value has, whether the flag repeats) for a field's annotation."""
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0], True
    if isinstance(annotation, types.UnionType):  # X | None
        return next(a for a in typing.get_args(annotation) if a is not type(None)), False
    return annotation, False


def settings_from(args: argparse.Namespace) -> ServerSettings:
    """The flags given, over MODELPORT_* variables, over the defaults; a bad value is a ValueError
    naming the flag, the variable and what was expected."""
    given = {name: getattr(args, name) for name in ServerSettings.model_fields if getattr(args, name, None) is not None}
    try:
        return ServerSettings(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            field = ServerSettings.model_fields.get(name)
            where = f"{flag_of(name, field)} / MODELPORT_{name.upper()}" if field else name
            problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
        raise ValueError("bad server settings: " + "; ".join(problems)) from None


def _extra(field: FieldInfo) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def run(args: argparse.Namespace) -> int:
    """Build settings from flags (over environment) and serve until stopped."""
    from .app import run as serve
    from .logs import configure

    settings = settings_from(args)
    if not settings.model_repository.is_dir():
        raise FileNotFoundError(f"the model repository {settings.model_repository} is not a directory")
    configure(settings.log_level, settings.log_format)
    if settings.workers > 1:
        from .workers import supervise

        return supervise(settings)
    from .loop import run as run_loop

    run_loop(serve(settings), settings.event_loop)
    return 0


