"""Regenerate the Python code for protos/*.proto into protos/generated/ (modelport.protocol.generated).

Usage: python protos/generate.py [--out DIR]   (or `make protos`)

Two mechanical rewrites follow protoc, so the generated modules work as a package and live beside
the upstream Triton client in one process:
  * `import x_pb2` becomes `from . import x_pb2` (protoc emits top-level imports);
  * messages are registered in modelport's own descriptor pool (`_pool.POOL`) instead of the
    process-wide default one, because tritonclient registers the same `inference.*` names there.
Nobody edits the output by hand; tests/client/test_generated.py fails when it is stale.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PROTOS = Path(__file__).resolve().parent
DEFAULT_OUT = PROTOS / "generated"
SOURCES = ["model_config.proto", "grpc_service.proto", "feedback.proto", "rollout.proto", "explain.proto"]

POOL_MODULE = '''"""modelport's private descriptor pool (written by protos/generate.py; do not edit).

The upstream Triton client registers `inference.*` messages in protobuf's default pool; ours
live here so both can be imported in one process.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''


def _rewrite(text: str) -> str:
    text = re.sub(r"^import (\w+_pb2) as (\w+)$", r"from . import \1 as \2", text, flags=re.M)
    if "_descriptor_pool.Default()" in text:
        text = text.replace("_descriptor_pool.Default()", "_pool.POOL")
        text = text.replace(
            "# @@protoc_insertion_point(imports)",
            "# @@protoc_insertion_point(imports)\nfrom . import _pool",
            1,
        )
    return text


def generate(out: Path) -> list[Path]:
    """Run protoc on every source and write the rewritten modules into `out`."""
    from grpc_tools import protoc  # dev-only dependency

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTOS}", f"--python_out={tmp}", f"--grpc_python_out={tmp}"]
        if protoc.main(args + [str(PROTOS / s) for s in SOURCES]) != 0:
            raise SystemExit("protoc failed")
        written = []
        for src in sorted(Path(tmp).glob("*.py")):
            if src.name.endswith("_pb2_grpc.py") and "class " not in src.read_text():
                continue  # model_config has no service: skip its empty grpc module
            dst = out / src.name
            dst.write_text(_rewrite(src.read_text()))
            written.append(dst)
    for name, body in {
        "_pool.py": POOL_MODULE,
        "__init__.py": '"""Generated protocol code (protos/generate.py)."""\n',
    }.items():
        (out / name).write_text(body)
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: protos/generated)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
