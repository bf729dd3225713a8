"""The Grafana dashboard (k8s/components/grafana-dashboard): a ConfigMap Grafana's sidecar loads,
and panels that work. A real Prometheus (Debian's `prometheus`, with the quality recording rules)
scrapes a live server under traffic (requests, failures, labels for a classifier and a regressor,
inputs shifted from the training data, a model that fails to load); the dashboard's variables are
resolved as Grafana resolves them (label_values through Prometheus' API), and every panel's every
query, with them substituted, must be valid PromQL that returns data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from modelport.client import Client, InferenceServerError
from modelport.server.background import BackgroundServer
from tests import models
from tests.k8s.render import K8S, Target, render
from tests.server.test_prometheus import free_port

pytestmark = pytest.mark.slow

COMPONENT = K8S / "components" / "grafana-dashboard"
DASHBOARD = json.loads((COMPONENT / "dashboard.json").read_text())
RULES = K8S / "components" / "quality-rules" / "quality-rules.yaml"
WEIGHTS = np.array([[1.0, -0.5, 0.2], [0.3, 1.0, -1.0], [-0.7, 0.4, 1.0], [0.2, 0.1, 0.3]], np.float32)
# What the Prometheus Operator adds through the ServiceMonitor (components/servicemonitor).
TARGET_LABELS = {"namespace": "modelport", "pod": "modelport-7d9f-abcde", "service": "modelport"}
SUCCESS = "modelport_inference_request_success_total"
RATE_INTERVAL = "15s"  # Grafana's $__rate_interval: at least 4 scrape intervals (1 s here)


def panels() -> list[dict]:
    found = []
    for panel in DASHBOARD["panels"]:
        found += [panel, *panel.get("panels", [])]
    return [p for p in found if p["type"] != "row"]


def variables() -> dict[str, dict]:
    return {v["name"]: v for v in DASHBOARD["templating"]["list"]}


# ---------------------------------------------------------------- the dashboard and its ConfigMap


def test_component_provisions_the_dashboard_for_grafanas_sidecar():
    objects = render(Target("cpu", ("servicemonitor", "quality-rules", "grafana-dashboard")))
    without = render(Target("cpu", ("servicemonitor", "quality-rules")))
    added = [o for o in objects if o not in without]
    assert [(o["kind"], o["metadata"]["name"]) for o in added] == [("ConfigMap", "modelport-grafana-dashboard")]
    (config_map,) = added
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"]["grafana_folder"]
    assert config_map["metadata"]["namespace"] == "modelport"
    (text,) = config_map["data"].values()
    assert json.loads(text) == DASHBOARD
    # kubectl apply keeps a copy in an annotation (256 KiB at most); a ConfigMap holds 1 MiB.
    assert len(text.encode()) < 200_000
    readme = (K8S / "README.md").read_text()
    assert "components/grafana-dashboard" in readme


def test_dashboard_is_well_formed():
    assert DASHBOARD["uid"] and DASHBOARD["title"] and DASHBOARD["schemaVersion"] >= 36
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert set(variables()) == {"datasource", "namespace", "job", "model", "version"}
    assert variables()["datasource"]["type"] == "datasource" and variables()["datasource"]["query"] == "prometheus"
    titles = " | ".join(p["title"] for p in panels()).lower()
    for wanted in ("requests per second", "errors per second by code", "p50 / p99", "queue time", "batch size",
                   "utilisation", "accuracy", "mae", "drift", "model state", "load time", "memory"):  # fmt: skip
        assert wanted in titles, wanted
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}" and target["refId"] and target["expr"]


# ---------------------------------------------------------------- every panel against a real Prometheus


class Traffic:
    """Requests (some invalid), labels and drifted inputs on a thread until stopped."""

    def __init__(self, address: str) -> None:
        self.client = Client(address, timeout=10)
        self.rng = np.random.default_rng(5)
        self.stop = threading.Event()
        self.sent = 0
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.client.close()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self._round(self.sent)
                self.sent += 1
                time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            self.errors.append(exc)

    def _round(self, i: int) -> None:
        x = (self.rng.normal(size=(2, 4)) + 2.0).astype(np.float32)  # 2 stds away from the reference
        classes = self.client.infer("clf", {"x": x}, request_id=f"c{i}")["probs"].argmax(axis=1)
        labels = np.where(self.rng.random(2) < 0.7, classes, self.rng.integers(0, 3, 2))
        xr = self.rng.normal(size=(2, 1)).astype(np.float32)
        self.client.infer("reg", {"x": xr}, request_id=f"r{i}")
        for model, request_id, truth in (("clf", f"c{i}", labels), ("reg", f"r{i}", 2 * xr[:, 0] + 0.1)):
            deadline = time.monotonic() + 5
            while not self.client.report_label(model, request_id, truth):
                assert time.monotonic() < deadline, f"{request_id} never paired"
                time.sleep(0.01)
        if i % 3 == 0:
            try:
                self.client.infer("clf", {"x": np.ones((1, 5), np.float32)})
            except InferenceServerError:
                pass  # INVALID_ARGUMENT, counted by code
            else:
                raise AssertionError("a request of the wrong width was served")


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    models.save(models.softmax_classifier(WEIGHTS), root, "clf")
    stats = {"x": {"count": 1000, "mean": [0.0] * 4, "std": [1.0] * 4, "min": [-4.0] * 4, "max": [4.0] * 4}}
    (root / "clf" / "1" / "conversion.json").write_text(json.dumps({"input_statistics": stats}))
    models.save(models.scale(2.0, width=1), root, "reg")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not an ONNX model")
    return root


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Path, int, Callable[[], None]]]:
    """(its config file, its port, start): the test writes the config, then starts it."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the `prometheus` binary is missing: run `make test` (it installs Debian's prometheus)")
    config, port = tmp_path / "prometheus.yml", free_port()
    process: list[subprocess.Popen] = []

    def start() -> None:
        process.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip

    yield config, port, start
    for p in process:
        p.terminate()
        p.wait(timeout=30)


def api(port: int, path: str, **params: str | list[str]) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
    try:
        answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
    except urllib.error.HTTPError as exc:  # 400: the expression does not parse (or bad parameters)
        answer = json.loads(exc.read())
    return answer


def label_values(port: int, query: str) -> list[str]:
    """Grafana's `label_values(selector, label)` (and `label_values(label)`), through the same API."""
    match = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", query.strip())
    assert match, query
    selector, label = match.groups()
    params = {"match[]": [selector]} if selector else {}
    answer = api(port, f"label/{label}/values", **params)
    assert answer["status"] == "success", (query, answer)
    return sorted(answer["data"])


def substitute(text: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        text = text.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return text.replace("$__rate_interval", RATE_INTERVAL)


def resolve(port: int, choose_all: bool) -> dict[str, str]:
    """The variables in order, as Grafana resolves them: each query with the earlier ones substituted.
    Single-value variables take the first value; multi-value ones take All (the allValue regex) or
    every value (Grafana's `(a|b)` regex)."""
    values: dict[str, str] = {}
    for name, variable in variables().items():
        if variable["type"] == "datasource":
            continue
        found = label_values(port, substitute(variable["definition"], values))
        assert found, f"variable {name}: {variable['definition']} has no values"
        if not variable.get("multi"):
            values[name] = found[0]
        elif choose_all and variable.get("includeAll"):
            values[name] = variable.get("allValue") or "(" + "|".join(map(re.escape, found)) + ")"
        else:
            values[name] = "(" + "|".join(map(re.escape, found)) + ")"
    return values


def test_every_panel_returns_data_from_a_live_server(repository: Path, prometheus, tmp_path: Path):
    config, port, start = prometheus
    with (
        BackgroundServer(repository, drift_sample_rate=1.0, drift_window=200) as server,
        Traffic(server.address) as traffic,
    ):
        labels = "".join(f"\n          {k}: {v}" for k, v in TARGET_LABELS.items())
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\n"
            "scrape_configs:\n  - job_name: modelport\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{server.running.metrics_port}']\n        labels:{labels}\n"
        )
        start()
        # Wait for the slowest series: a recording rule over labelled pairs, and rates with samples.
        deadline = time.monotonic() + 40
        while True:
            try:
                ready = api(port, "query", query="modelport:quality_accuracy:ratio")["data"]["result"]
                rated = api(port, "query", query=f"rate({SUCCESS}[{RATE_INTERVAL}])")["data"]["result"]
                if ready and rated and traffic.sent > 20:
                    break
            except (OSError, KeyError):
                pass  # Prometheus is still starting
            assert not traffic.errors, traffic.errors
            assert time.monotonic() < deadline, "Prometheus never saw the traffic"
            time.sleep(0.5)
        time.sleep(3)  # a few more scrapes for the rates

        resolved = {choose_all: resolve(port, choose_all) for choose_all in (True, False)}
        assert resolved[False]["namespace"] == TARGET_LABELS["namespace"] and resolved[False]["job"] == "modelport"
        assert set(label_values(port, substitute(variables()["model"]["definition"], resolved[False]))) == {
            "clf", "reg", "broken"}  # fmt: skip
        failures = []
        for choose_all, values in resolved.items():
            for panel in panels():
                for target in panel["targets"]:
                    expr = substitute(target["expr"], values)
                    assert "$" not in expr, f"{panel['title']}: unresolved variable in {expr}"
                    answer = api(port, "query", query=expr)
                    where = f"{panel['title']} [{target['refId']}] ({'All' if choose_all else 'each value'})"
                    if answer["status"] != "success":
                        failures.append(f"{where}: {answer.get('error')}\n    {expr}")
                    elif not answer["data"]["result"]:
                        failures.append(f"{where}: no data\n    {expr}")
        assert not traffic.errors, traffic.errors
    assert not failures, "\n".join(failures)
