"""modelport as a KServe serving runtime (k8s/kserve/): the ClusterServingRuntimes, their namespaced
and Knative variants and the example InferenceServices validate strictly against KServe's CRD
schemas (tests/k8s/kserve-crds/), and hold what KServe and Knative need of them: KServe's ports,
probes on the ports the server listens on, the InferenceService's name as the model's, settings
that are real ServerSettings fields, security as the Deployment's, GPUs only where meant. A real
server started with a runtime's settings on a KServe /mnt/models folder answers its probes."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import urllib.request
from pathlib import Path

import grpc
import jsonschema
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelport.client import Client
from modelport.client.cli import build_parser
from modelport.server.background import BackgroundServer
from modelport.server.repository import serving_root
from modelport.server.settings import ServerSettings
from tests import models

from .render import K8S, _kustomize

KSERVE = K8S / "kserve"
CRDS = Path(__file__).resolve().parent / "kserve-crds"
GROUP = "serving.kserve.io"
VARIANTS = ("runtimes", "namespaced", "knative")
EXAMPLES = sorted((KSERVE / "examples").glob("*.yaml"))
PREFIX = ServerSettings.model_config["env_prefix"]
DEFAULT_GRACE_S = 30  # a pod's terminationGracePeriodSeconds when nothing sets it
KNATIVE_RESERVED_PORTS = {8012, 8013, 8022, 9090, 9091}  # queue-proxy's
STANDARD_MODES = {"RawDeployment", "Standard"}
KNATIVE_MODES = {"Serverless", "Knative"}


@functools.cache
def rendered(variant: str) -> tuple[dict, ...]:
    return tuple(_kustomize(KSERVE / variant))


def runtimes(variant: str | None = None) -> list[dict]:
    return [o for v in ([variant] if variant else VARIANTS) for o in rendered(v)]


def examples() -> list[dict]:
    return [doc for path in EXAMPLES for doc in yaml.safe_load_all(path.read_text()) if doc]


def container(runtime: dict) -> dict:
    (c,) = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
    return c


def env(runtime: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(runtime).get("env", [])}


def args(runtime: dict, name: str = "mlp") -> list[str]:
    """The args as KServe passes them: Go templates over the InferenceService's metadata
    (ReplacePlaceholders), here {{.Name}}, the only one the runtimes use."""
    expanded = [a.replace("{{.Name}}", name) for a in container(runtime)["args"]]
    assert not any("{{" in a for a in expanded), expanded
    return expanded


def flags(runtime: dict) -> dict[str, str]:
    """--flag=value args as a dict."""
    return dict(a.split("=", 1) for a in args(runtime) if a.startswith("--") and "=" in a)


def by_name(variant: str) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in runtimes(variant)}


def is_gpu(runtime: dict) -> bool:
    return "-gpu" in runtime["metadata"]["name"]


# ---------------------------------------------------------------- schemas


@functools.cache
def crd(kind: str) -> dict:
    plural = {"ClusterServingRuntime": "clusterservingruntimes", "ServingRuntime": "servingruntimes",
              "InferenceService": "inferenceservices"}[kind]  # fmt: skip
    with open(CRDS / f"{GROUP}_{plural}.yaml") as file:
        return yaml.load(file, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def validator(api_version: str, kind: str) -> jsonschema.Draft4Validator:
    definition = crd(kind)
    assert definition["spec"]["names"]["kind"] == kind
    group, _, version = api_version.partition("/")
    assert group == definition["spec"]["group"], api_version
    (served,) = [v for v in definition["spec"]["versions"] if v["name"] == version and v["served"]]
    return jsonschema.Draft4Validator(strict(copy.deepcopy(served["schema"]["openAPIV3Schema"])))


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused wherever it lists the fields (as `kubectl apply`
    with strict field validation; the API server would otherwise drop them silently), except
    where it says x-kubernetes-preserve-unknown-fields."""
    if not isinstance(schema, dict):
        return schema
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    for key in ("properties", "patternProperties"):
        for sub in schema.get(key, {}).values():
            strict(sub)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            strict(sub)
    return schema


def schema_errors(obj: dict) -> list[str]:
    errors = sorted(validator(obj["apiVersion"], obj["kind"]).iter_errors(obj), key=lambda e: list(e.path))
    found = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    meta = obj["metadata"]
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta.get("name", "")) or len(meta["name"]) > 63:
        found.append(f"metadata/name: {meta.get('name')!r} is not a DNS-1123 label")
    for key in ("labels", "annotations"):
        if not all(isinstance(v, str) for v in meta.get(key, {}).values()):
            found.append(f"metadata/{key}: values must be strings")
    return found


def test_crds_are_kserves_unchanged():
    for line in (CRDS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((CRDS / name).read_bytes()).hexdigest() == digest, f"{name} was edited"


@pytest.mark.parametrize("variant", VARIANTS)
def test_runtimes_validate_against_kserves_crds(variant):
    objects = runtimes(variant)
    kinds = {"namespaced": "ServingRuntime"}.get(variant, "ClusterServingRuntime")
    assert {(o["apiVersion"], o["kind"]) for o in objects} == {(f"{GROUP}/v1alpha1", kinds)}
    assert len(objects) == 2
    for obj in objects:
        assert not schema_errors(obj), (obj["metadata"]["name"], schema_errors(obj))
        if obj["kind"] == "ClusterServingRuntime":
            assert "namespace" not in obj["metadata"], "cluster-scoped"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_validate_against_kserves_crds(path):
    (obj,) = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert (obj["apiVersion"], obj["kind"]) == (f"{GROUP}/v1beta1", "InferenceService")
    assert not schema_errors(obj), schema_errors(obj)
    assert "namespace" not in obj["metadata"], "applied to the user's namespace (kubectl apply -n)"


def test_the_validation_is_strict():
    """A misspelt field fails, in the runtime, in its container and in an InferenceService."""
    runtime = copy.deepcopy(runtimes("runtimes")[0])
    runtime["spec"]["supportedModelFormat"] = runtime["spec"].pop("supportedModelFormats")
    assert any("supportedModelFormat" in e for e in schema_errors(runtime))
    runtime = copy.deepcopy(runtimes("runtimes")[0])
    container(runtime)["readinessProbes"] = container(runtime).pop("readinessProbe")
    assert any("readinessProbes" in e for e in schema_errors(runtime))
    runtime = copy.deepcopy(runtimes("runtimes")[0])
    container(runtime)["ports"][0]["containerPort"] = "8080"
    assert schema_errors(runtime)
    service = copy.deepcopy(examples()[0])
    service["spec"]["predictor"]["model"]["storageURI"] = "s3://x"
    assert any("storageURI" in e for e in schema_errors(service))
    del service["spec"]["predictor"]["model"]["modelFormat"]["name"]
    assert any("'name' is a required property" in e for e in schema_errors(service))


# ---------------------------------------------------------------- what KServe and Knative need


def test_variants_are_the_runtimes_they_say():
    base = by_name("runtimes")
    assert set(base) == {"modelport-cpu", "modelport-gpu"}
    namespaced = by_name("namespaced")
    assert set(namespaced) == set(base)
    for name, runtime in namespaced.items():
        assert runtime["spec"] == base[name]["spec"], "the namespaced runtimes are the cluster's"
    knative = by_name("knative")
    assert set(knative) == {f"{n}-knative" for n in base}
    for name, runtime in knative.items():
        same = base[name.removesuffix("-knative")]
        assert args(runtime) == args(same) and env(runtime) == env(same)
        assert container(runtime)["resources"] == container(same)["resources"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_formats_protocols_and_the_model_name(variant):
    for runtime in runtimes(variant):
        spec = runtime["spec"]
        formats = {f["name"]: f for f in spec["supportedModelFormats"]}
        assert set(formats) == {"onnx", "modelport"}
        assert formats["onnx"]["version"] == "1", "what KServe's Triton runtime says of ONNX"
        assert not spec.get("multiModel"), "one model per InferenceService"
        if variant == "knative":
            assert spec["protocolVersions"] == ["v2"], "only HTTP is routed in Knative mode"
            assert not any(f.get("autoSelect") for f in formats.values()), "named, never picked for a format"
        else:
            assert spec["protocolVersions"] == ["v2", "grpc-v2"]
            assert all(f["autoSelect"] for f in formats.values())
        assert args(runtime, "iris")[0] == "serve"
        assert flags(runtime)["--model-repository"] == "/mnt/models", "where KServe's storage initializer writes"
        assert "--model-name=iris" in args(runtime, "iris"), "the InferenceService's name is the model's"
    if variant != "knative":
        # An InferenceService asking for `onnx` without a runtime gets the CPU runtime: the highest
        # priority among ours (KServe orders the runtimes that autoSelect a format by priority).
        priority = {r["metadata"]["name"]: next(f["priority"] for f in r["spec"]["supportedModelFormats"]
                                                if f["name"] == "onnx") for r in runtimes(variant)}  # fmt: skip
        assert max(priority, key=priority.get) == "modelport-cpu" and len(set(priority.values())) == 2


@pytest.mark.parametrize("variant", VARIANTS)
def test_ports_probes_and_metrics_match_the_server(variant):
    for runtime in runtimes(variant):
        c, given = container(runtime), flags(runtime)
        http, grpc_port, metrics = int(given["--http-port"]), int(given["--grpc-port"]), int(given["--metrics-port"])
        assert (http, grpc_port) == (8080, 9000), "KServe's ports: HTTP 8080, gRPC 9000"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        annotations = runtime["spec"]["annotations"]
        assert annotations["prometheus.kserve.io/port"] == annotations["prometheus.io/port"] == str(metrics)
        assert annotations["prometheus.kserve.io/path"] == annotations["prometheus.io/path"] == "/metrics"
        assert metrics not in ports.values(), "metrics are scraped from the pod, not routed"
        if variant == "knative":
            # Knative: one port, named http1 or h2c, not one of queue-proxy's; its queue-proxy runs the
            # readiness probe itself, over HTTP.
            assert ports == {"http1": http}
            assert not set(ports.values()) & KNATIVE_RESERVED_PORTS
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert set(c[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"httpGet"}, probe
                assert c[probe]["httpGet"]["port"] == http
            assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
            assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        else:
            # Standard mode: KServe's Service sends port 80 to the first port; a name with h2c (or
            # grpc) makes a port gRPC (appProtocol kubernetes.io/h2c).
            assert c["ports"][0]["name"] == "http1" and c["ports"][0]["containerPort"] == http
            assert ports == {"http1": http, "h2c": grpc_port}
            for probe in ("startupProbe", "readinessProbe"):
                assert c[probe]["grpc"] == {"port": grpc_port}, "service '' follows the server's readiness"
            assert c["livenessProbe"]["grpc"] == {"port": grpc_port, "service": "modelport.liveness"}
        startup = c["startupProbe"]
        minimum = 600 if is_gpu(runtime) else 300
        assert startup["periodSeconds"] * startup["failureThreshold"] >= minimum, "time to load the models"


@pytest.mark.parametrize("variant", VARIANTS)
def test_shutdown_fits_the_default_grace_period(variant):
    for runtime in runtimes(variant):
        c = container(runtime)
        command = c["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        pre_stop, drain = float(command[1]), float(env(runtime)["MODELPORT_SHUTDOWN_GRACE_SECONDS"])
        assert pre_stop + drain + 5 <= DEFAULT_GRACE_S
        live = c["livenessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] > pre_stop + drain, "never restart a draining pod"


@pytest.mark.parametrize("variant", VARIANTS)
def test_security_resources_images_and_gpus(variant):
    overlay_images = {}
    for overlay in ("cpu", "gpu"):
        image = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())["images"][0]
        overlay_images[overlay] = f"{image['newName']}:{image['newTag']}"
    for runtime in runtimes(variant):
        c, spec = container(runtime), runtime["spec"]
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, "the images' user"
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert sc.get("privileged") is False
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], "a writable /tmp for the one-model view"
        assert "/mnt/models" not in mounts, "KServe mounts the model there"
        resources = c["resources"]
        assert resources["requests"] == resources["limits"], "Guaranteed, whole CPUs"
        limit = resources["limits"]["memory"]
        number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", limit).groups()
        budget = int(env(runtime)["MODELPORT_MAX_INFLIGHT_BYTES"])
        assert 0 < budget <= int(number) * {"Mi": 2**20, "Gi": 2**30}[unit] // 2
        providers = json.loads(env(runtime)["MODELPORT_EXECUTION_PROVIDERS"])
        assert c["image"] == overlay_images["gpu" if is_gpu(runtime) else "cpu"], "the overlays' images"
        if is_gpu(runtime):
            assert resources["limits"]["nvidia.com/gpu"] == "1" and providers[0] == "cuda"
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])
        else:
            assert "nvidia.com/gpu" not in json.dumps(runtime) and providers == ["cpu"]


def settings_from(runtime: dict, monkeypatch: pytest.MonkeyPatch, **init) -> ServerSettings:
    """ServerSettings as the pod builds them: the container's env, then its args."""
    for key in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env(runtime).items():
        monkeypatch.setenv(key, value)
    return ServerSettings(**init)


@pytest.mark.parametrize("variant", VARIANTS)
def test_env_and_args_are_real_settings(variant, monkeypatch):
    fields = {f"{PREFIX}{name}".upper() for name in ServerSettings.model_fields}
    for runtime in runtimes(variant):
        assert set(env(runtime)) <= fields, set(env(runtime)) - fields
        parsed = build_parser().parse_args(args(runtime))
        assert parsed.command == "serve"
        init = {k: v for k, v in vars(parsed).items() if k not in ("func", "command", "verbose") and v is not None}
        settings = settings_from(runtime, monkeypatch, **init)
        assert settings.model_control_mode == "none" and settings.workers == 1
        assert (settings.http_port, settings.grpc_port, settings.metrics_port) == (8080, 9000, 8002)
        assert settings.allow_http, "KServe's HTTP port serves"
        assert settings.execution_providers == (("cuda", "cpu") if is_gpu(runtime) else ("cpu",))
        assert settings.model_name == "mlp"


@pytest.mark.parametrize("variant", ["runtimes", "knative"])
def test_a_runtimes_settings_serve_a_kserve_model_folder(variant, tmp_path, monkeypatch):
    """The CPU runtime's settings on a /mnt/models holding one model's folder, as KServe leaves it:
    the model serves under the InferenceService's name and the probes' endpoints answer."""
    runtime = by_name(variant)[f"modelport-cpu{'-knative' if variant == 'knative' else ''}"]
    mnt = tmp_path / "models"
    models.save(models.scale(2.0), tmp_path, "models", config='name: "scaler"\nmax_batch_size: 4\n')
    settings = settings_from(runtime, monkeypatch, model_repository=mnt)  # the env; ports below are free ones
    repository = serving_root(mnt, "mlp")  # what `--model-name mlp` does (server/repository.py)
    keep = {"execution_providers", "workers", "shutdown_grace_seconds", "max_inflight_bytes", "model_control_mode"}
    with BackgroundServer(repository, **{k: getattr(settings, k) for k in keep}) as server:
        client = Client(server.address)
        np.testing.assert_allclose(client.predict("mlp", np.ones((2, 3))), 2 * np.ones((2, 3)))
        c = container(runtime)
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for probe in ("readinessProbe", "livenessProbe"):
                if "grpc" in c[probe]:
                    answer = health.Check(health_pb2.HealthCheckRequest(service=c[probe]["grpc"].get("service", "")))
                    assert answer.status == health_pb2.HealthCheckResponse.SERVING, probe
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if "httpGet" in c[probe]:
                with urllib.request.urlopen(server.http_url + c[probe]["httpGet"]["path"], timeout=10) as answer:
                    assert answer.status == 200, probe


# ---------------------------------------------------------------- the example InferenceServices


def test_examples_name_runtimes_that_serve_them():
    known = {r["metadata"]["name"]: r for r in runtimes()}
    found = {}
    for service in examples():
        predictor = service["spec"]["predictor"]
        model = predictor["model"]
        runtime = known[model["runtime"]]
        formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
        assert model["modelFormat"]["name"] in formats
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"], "KServe defaults to v1 otherwise"
        assert re.match(r"(s3|gs|pvc|https?|hf|oci)://", model["storageUri"])
        mode = service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
        one_port = len(container(runtime)["ports"]) == 1
        if "canaryTrafficPercent" in predictor:
            assert mode in KNATIVE_MODES, "only Knative mode splits traffic between revisions"
            assert 0 < predictor["canaryTrafficPercent"] < 100
        assert one_port == (mode in KNATIVE_MODES), "Knative allows one port; Standard mode exposes both"
        assert mode in KNATIVE_MODES | STANDARD_MODES
        gpus = model.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        assert (gpus == "1") == is_gpu(runtime), service["metadata"]["name"]
        found[service["metadata"]["name"]] = runtime["metadata"]["name"]
    assert set(found.values()) >= {"modelport-cpu", "modelport-gpu", "modelport-cpu-knative"}
    assert any("canaryTrafficPercent" in s["spec"]["predictor"] for s in examples())


def test_readme_tells_how():
    readme = (K8S / "README.md").read_text()
    for path in ("k8s/kserve/runtimes", "k8s/kserve/namespaced", "k8s/kserve/knative", "--model-name"):
        assert path in readme, path
    for path in EXAMPLES:
        assert path.name in readme, path.name
