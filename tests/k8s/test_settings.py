"""What the manifests tell modelport is what modelport understands: the ConfigMap's MODELPORT_*
keys are real ServerSettings fields and parse, the container args parse with the real CLI, a real
server starts with the base ConfigMap, and the metric the autoscaler's rule reads is one the
server exports."""

from __future__ import annotations

import os
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from modelport.client import Client
from modelport.client.cli import build_parser
from modelport.server.background import BackgroundServer
from modelport.server.settings import ServerSettings
from tests import models

from .render import K8S, TARGETS, Target, convert_job, one
from .test_manifests import config, containers, deployment, pod_spec, server

ids = [t.id for t in TARGETS]
PREFIX = ServerSettings.model_config["env_prefix"]


def settings_from(data: dict[str, str], monkeypatch: pytest.MonkeyPatch, **init) -> ServerSettings:
    """ServerSettings exactly as the pod builds it: the ConfigMap as environment, then the args."""
    for key in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    return ServerSettings(**init)


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_configmap_keys_are_server_settings(rendered, target, monkeypatch):
    data = config(rendered[target])
    fields = {f"{PREFIX}{name}".upper() for name in ServerSettings.model_fields}
    assert all(key.startswith(PREFIX) for key in data), "only server settings in the server's ConfigMap"
    unknown = set(data) - fields
    assert not unknown, f"not ServerSettings fields: {sorted(unknown)}"
    settings = settings_from(data, monkeypatch, model_repository=Path("/models"))
    for key, _value in data.items():
        parsed = getattr(settings, key[len(PREFIX):].lower())
        assert parsed is not None, key
    assert settings.grpc_max_connection_age_ms > 0
    expected = ("cuda", "cpu") if target.gpu else ("cpu",)
    assert settings.execution_providers == expected


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_container_args_parse_with_the_real_cli(rendered, target, monkeypatch):
    objects = rendered[target]
    c = server(objects)
    args = build_parser().parse_args(c["args"])
    assert args.command == "serve"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert args.model_repository in mounts
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command") and v is not None}
    settings = settings_from(config(objects), monkeypatch, **given)  # as server/cli.py builds it
    assert str(settings.model_repository) == args.model_repository
    for init in pod_spec(deployment(objects)).get("initContainers", []):
        assert args.model_repository in {m["mountPath"] for m in init["volumeMounts"]}


def test_conversion_job_args_parse_with_the_real_cli():
    job = convert_job()
    (c,) = containers(job)
    env = {e["name"]: e["value"] for e in c["env"]}
    # Kubernetes expands $(NAME) in args from the container's env.
    expanded = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c["args"]]
    args = build_parser().parse_args(expanded)
    assert args.command == "convert"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert args.model_repository in mounts
    assert any(args.source.startswith(m + "/") for m in mounts)
    assert args.name == env["MODEL_NAME"]


def test_a_server_starts_with_the_base_configmap(rendered, tmp_path, monkeypatch):
    """The CPU overlay's settings, for real: loads, answers, closes connections by age, and exports
    the histogram the queue-time autoscaler reads."""
    models.save(models.scale(2.0), tmp_path, "m")
    settings = config(rendered[Target("cpu")])
    settings_from(settings, monkeypatch, model_repository=tmp_path)  # clears stray MODELPORT_* and sets these
    server = BackgroundServer(tmp_path, grpc_port=0, metrics_port=0, host="127.0.0.1").start()
    try:
        assert server.settings.model_control_mode == "poll"
        assert server.settings.grpc_max_connection_age_ms == int(settings["MODELPORT_GRPC_MAX_CONNECTION_AGE_MS"])
        with Client(server.address, timeout=10) as client:
            assert client.is_server_ready()
            x = np.array([[1.0, 2.0, 3.0]], np.float32)
            np.testing.assert_allclose(client.infer("m", {"x": x})["y"], 2 * x)
        url = f"http://127.0.0.1:{server.running.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        server.stop()
    rule = _adapter_rules()[0]
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    for name in {series, *re.findall(r"\b(modelport_\w+)\{", rule["metricsQuery"])}:
        assert re.search(rf"^{name}\{{[^}}]*model=\"m\"", text, re.M), f"{name} not exported"


def _adapter_rules() -> list[dict]:
    return yaml.safe_load((K8S / "components/prometheus-hpa/adapter-rules.yaml").read_text())["rules"]


def test_adapter_rule_feeds_the_hpa(rendered):
    rules = _adapter_rules()
    values = yaml.safe_load((K8S / "components/prometheus-hpa/adapter-values.yaml").read_text())
    assert values["rules"]["custom"] == rules, "adapter-values.yaml and adapter-rules.yaml say the same"
    objects = rendered[Target("cpu", ("prometheus-hpa",))]
    shipped = yaml.safe_load(one(objects, "ConfigMap", "modelport-prometheus-adapter-rules")["data"]["config.yaml"])
    assert shipped["rules"] == rules
    (metric,) = one(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == rules[0]["name"]["as"]
    assert rules[0]["resources"]["overrides"]["pod"] == {"resource": "pod"}
