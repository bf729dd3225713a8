"""Load-time cost of protected models: plain vs verified (`--verify-key`) vs verified and decrypted
in memory (`--decrypt-key-file`), for a small model and a large external-data one.

Each (model, mode) loads in its own process through the server's loader (server/loader.py:
load_version, the path the registry takes), `--repeat` times; reported: the first load (it imports
model-signing), the median of the others, the verification and decryption parts alone
(model_files.verify / open_model), and the process's peak RSS (VmHWM). The page cache is warm
(every file is read once before timing), as on a server that reloads; a cold cache adds the
disk's read time to every mode alike.

    .venv/bin/python benchmarks/model_keys.py --workdir /tmp/modelport-keys [--large-mb 768]
        [--small PATH/TO/model.onnx]    # e.g. the seed CNN from examples/train_cnn.py

The large model is built with onnx.helper (no TensorFlow): a float32 table of --large-mb MiB in
model.onnx.data, Gather by 16 token ids, mean, MatMul to 8 outputs.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.protection, for the published-like versions

MODES = ("plain", "verify", "verify+decrypt")


def build(workdir: Path, small: Path | None, large_mb: int) -> dict[str, Path]:
    """Three repositories (plain, signed, signed+encrypted), each with `small` and `large`."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from modelport.converter.publish import Protection, Staging
    from tests.protection import key_file, key_pair

    keys = workdir / "keys"
    sign, pub = key_pair(keys, "sign")
    key = key_file(keys, "model.key")
    dim = 1024
    rows = large_mb * 2**20 // (dim * 4)
    table = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    head = np.random.default_rng(1).standard_normal((dim, 8), dtype=np.float32)
    large = helper.make_model(helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"]),
         helper.make_node("ReduceMean", ["rows"], ["pooled"], axes=[1], keepdims=0),
         helper.make_node("MatMul", ["pooled", "head"], ["y"])],
        "large", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(head, "head")],
    ), opset_imports=[helper.make_opsetid("", 17)], ir_version=10)  # fmt: skip
    small_model = onnx.load(str(small)) if small else _dense(np, helper, numpy_helper, TensorProto)
    repos = {}
    for mode, protection in (("plain", Protection()), ("verify", Protection(sign)),
                             ("verify+decrypt", Protection(sign, key))):  # fmt: skip
        repo = workdir / mode.replace("+", "-")
        shutil.rmtree(repo, ignore_errors=True)
        for name, model, external in (("small", small_model, False), ("large", large, True)):
            with Staging(repo / name, 1) as staging:
                if external:
                    # onnx.save moves the tensors out of the model it is given: save a copy each time.
                    onnx.save(copy.deepcopy(model), staging.model_path, save_as_external_data=True,
                              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
                else:
                    staging.write_model(model)
                staging.commit({"source": {"kind": "benchmark"}}, protection)
        repos[mode] = repo
    (workdir / "keys.json").write_text(json.dumps({"pub": str(pub), "key": str(key)}))
    return repos


def _dense(np, helper, numpy_helper, TensorProto):
    w = np.random.default_rng(2).standard_normal((64, 10), dtype=np.float32)
    return helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])], [numpy_helper.from_array(w, "w")],
    ), opset_imports=[helper.make_opsetid("", 17)], ir_version=10)  # fmt: skip


MEASURE = """
import json, statistics, sys, time
from pathlib import Path
from modelport.server import config as cfg, model_files
from modelport.server.loader import LoaderSettings, load_version
from modelport.server.settings import ServerSettings
repo, name, mode, repeat, keys = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
verify = (Path(keys["pub"]),) if mode != "plain" else ()
decrypt = (Path(keys["key"]),) if mode == "verify+decrypt" else ()
settings = LoaderSettings.of(ServerSettings(model_repository=repo, verify_key=verify, decrypt_key_file=decrypt,
                                            model_memory_limit=0))
model_dir = repo / name
spec = cfg.model_spec(name, cfg.read_config(model_dir))
for f in (model_dir / "1").iterdir():
    with open(f, "rb") as file:  # warm the page cache, a chunk at a time (no copy in this process)
        while file.read(16 << 20):
            pass
loads, verifies, decrypts = [], [], []
for _ in range(repeat):
    start = time.perf_counter()
    version = load_version(model_dir, spec, 1, settings)
    loads.append(time.perf_counter() - start)
    for instance in version.scheduler.instances:
        instance.model.release()
    del version
    if verify:
        start = time.perf_counter()
        model_files.verify(model_dir / "1", name, verify)
        verifies.append(time.perf_counter() - start)
    if decrypt:
        start = time.perf_counter()
        m = model_files.open_model(model_dir / "1" / "model.onnx", name, (), decrypt)
        decrypts.append(time.perf_counter() - start)
        del m
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
med = lambda xs: statistics.median(xs) if xs else None
print(json.dumps({"first_s": loads[0], "load_s": med(loads[1:] or loads),
                   "verify_s": med(verifies), "decrypt_s": med(decrypts), "peak_rss": hwm}))
"""


def measure(repos: dict[str, Path], keys: dict, repeat: int) -> list[dict]:
    rows = []
    for name in ("small", "large"):
        for mode in MODES:
            out = subprocess.run([sys.executable, "-c", MEASURE, str(repos[mode]), name, mode, str(repeat),
                                  json.dumps(keys)], capture_output=True, text=True)  # fmt: skip
            if out.returncode:
                raise SystemExit(f"{name} {mode} failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            files = sum(f.stat().st_size for f in (repos[mode] / name / "1").iterdir())
            rows.append({"model": name, "mode": mode, "files": files, **result})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | mode | files | first load | load (median of the others) | of which verify | of which decrypt "
             "| peak RSS |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        part = lambda v: f"{v:.3f} s" if v is not None else "—"  # noqa: E731
        lines.append(f"| {r['model']} | {r['mode']} | {r['files'] / 2**20:.1f} MiB | {r['first_s']:.3f} s | "
                     f"{r['load_s']:.3f} s | "
                     f"{part(r['verify_s'])} | {part(r['decrypt_s'])} | {r['peak_rss'] / 2**20:.0f} MiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/modelport-keys"))
    parser.add_argument("--small", type=Path, help="a model.onnx for the small case (default: a 64x10 dense layer)")
    parser.add_argument("--large-mb", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    repos = build(args.workdir, args.small, args.large_mb)
    print(f"built in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    rows = measure(repos, json.loads((args.workdir / "keys.json").read_text()), args.repeat)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
