"""Compress the seed CNN (digits) every way modelport can, behind the accuracy gate.

    python examples/compress_cnn.py            # after `make demo` (uses .demo/cnn and ./models)

Trains and converts the CNN first if `make demo` has not; then publishes int8-static (calibrated on
256 training images), int8-dynamic, fp16 and optimize versions, each gated on the held-out test
set (at most 1 point of accuracy lost), and prints the table of size, accuracy and in-process
speed at batch 1 and 32 on this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
WORK, REPOSITORY = ROOT / ".demo" / "cnn", ROOT / "models"


def main() -> int:
    from modelport.converter import convert
    from modelport.converter.compress import AccuracyGateError, compress
    from modelport.protocol.repository import version_folders as versions

    if not (WORK / "calib.npz").exists():
        subprocess.run([sys.executable, str(ROOT / "examples" / "train_cnn.py"), "--out", str(WORK)], check=True)
    if not versions(REPOSITORY / "cnn"):
        convert(str(WORK / "model.keras"), str(REPOSITORY), "cnn", sample=str(WORK / "test.npz"))
    source = versions(REPOSITORY / "cnn")[0]
    rows = []
    for method in ("int8-static", "int8-dynamic", "fp16", "optimize"):
        print(f"\n== {method}", flush=True)
        try:
            version, report = compress(
                REPOSITORY, "cnn", method, from_version=source, calibration=WORK / "calib.npz",
                eval_data=WORK / "test.npz", max_accuracy_drop=0.01, progress=lambda m: None,
            )
        except AccuracyGateError as exc:
            print(f"refused: {exc}")
            continue
        print("\n".join(report.lines()))
        b1, b32 = report.speed_after
        a1, a32 = report.speed_before
        rows.append(
            f"| {method} | {version} | {report.size_after / 1024:.1f} KiB "
            f"({report.size_after / report.size_before:.2f}x) "
            f"| {report.before:.4f} → {report.after:.4f} | {b1.items_per_s / a1.items_per_s:.2f}x "
            f"| {b32.items_per_s / a32.items_per_s:.2f}x |"
        )
    print(f"\nsource: version {source}, {report.size_before / 1024:.1f} KiB")
    print("| method | version | size | accuracy | batch-1 items/s vs fp32 | batch-32 items/s vs fp32 |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
