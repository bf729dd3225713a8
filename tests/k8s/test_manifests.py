"""The Kubernetes manifests, checked without a cluster: every overlay (alone and with the
components) renders with `kubectl kustomize`, every object validates strictly against the schemas
of the oldest and the newest Kubernetes we support, and the policies hold that a cluster would
only reveal in production (probes, resources, security, selectors that really select, ports
that really match, GPUs only where meant)."""

from __future__ import annotations

import copy
import json
import re

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from .render import COMPONENTS, K8S, TARGETS, Target, convert_job, job_manifests, of_kind, one, render

OLDEST = "1.28"  # native gRPC probes and PDB unhealthyPodEvictionPolicy are on by default from here
NEWEST = latest_version()  # the newest schemas kubernetes-validate ships
VERSIONS = (OLDEST, NEWEST)

# Kinds without a schema in Kubernetes itself, allowed only when listed here.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}

EXPECTED = {
    Target("cpu"): {
        ("Namespace", "modelport"), ("ServiceAccount", "modelport"), ("ConfigMap", "modelport-config"),
        ("PersistentVolumeClaim", "modelport-models"), ("Deployment", "modelport"), ("Service", "modelport"),
        ("Service", "modelport-headless"), ("HorizontalPodAutoscaler", "modelport"),
        ("PodDisruptionBudget", "modelport"), ("NetworkPolicy", "modelport"),
    },
}
EXPECTED[Target("gpu")] = EXPECTED[Target("cpu")]

SERVER_LABELS = {"app.kubernetes.io/name": "modelport", "app.kubernetes.io/component": "server"}
ids = [t.id for t in TARGETS]


def deployment(objects) -> dict:
    return one(objects, "Deployment", "modelport")


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def workloads(objects) -> list[dict]:
    """The Deployment, and the StatefulSets components add (the feedback store's Redis)."""
    return [deployment(objects)] + of_kind(objects, "StatefulSet")


def cron_jobs(objects) -> list[dict]:
    """The Jobs the components' CronJobs create (the rollout step), shaped as a Job for pod_spec()."""
    return [{"kind": "CronJob", "metadata": c["metadata"], "spec": c["spec"]["jobTemplate"]["spec"]}
            for c in of_kind(objects, "CronJob")]


def server(objects) -> dict:
    return next(c for c in pod_spec(deployment(objects))["containers"] if c["name"] == "modelport")


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def config(objects) -> dict[str, str]:
    """The server's ConfigMap data, found through the Deployment's envFrom (names are hashed)."""
    (ref,) = [e["configMapRef"]["name"] for e in server(objects)["envFrom"] if "configMapRef" in e]
    return one(objects, "ConfigMap", ref)["data"]


def server_services(objects) -> list[str]:
    """The Services in front of the server pods (components add others, e.g. modelport-redis)."""
    labels = pod_labels(deployment(objects))
    return [s["metadata"]["name"] for s in of_kind(objects, "Service") if selects(s["spec"]["selector"], labels)]


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels form, or a Service's plain map) selects these labels."""
    assert "matchExpressions" not in selector, "these manifests select by labels only"
    wanted = selector["matchLabels"] if "matchLabels" in selector else selector
    assert wanted, "an empty selector selects everything"
    return all(labels.get(k) == v for k, v in wanted.items())


def base_name(name: str) -> str:
    """modelport-config-5h7k2m9c8t -> modelport-config (kustomize's content hash)."""
    head, _, tail = name.rpartition("-")
    return head if head and len(tail) == 10 and tail.isalnum() else name


# ---------------------------------------------------------------- render and validate

@pytest.mark.parametrize("target", [Target("cpu"), Target("gpu")], ids=["cpu", "gpu"])
def test_overlay_renders_the_expected_objects(rendered, target):
    found = {(o["kind"], base_name(o["metadata"]["name"])) for o in rendered[target]}
    assert found == EXPECTED[target]


def test_components_add_what_they_say(rendered):
    cpu = {(o["kind"], base_name(o["metadata"]["name"])) for o in rendered[Target("cpu")]}
    with_monitor = {(o["kind"], base_name(o["metadata"]["name"])) for o in rendered[Target("cpu", ("servicemonitor",))]}
    assert with_monitor - cpu == {("ServiceMonitor", "modelport")}
    with_hpa = {(o["kind"], base_name(o["metadata"]["name"])) for o in rendered[Target("cpu", ("prometheus-hpa",))]}
    assert with_hpa - cpu == {("ConfigMap", "modelport-prometheus-adapter-rules")}
    from_url = {(o["kind"], base_name(o["metadata"]["name"])) for o in rendered[Target("cpu", ("models-from-url",))]}
    assert from_url - cpu == {("ConfigMap", "modelport-models-url")}
    assert cpu - from_url == {("PersistentVolumeClaim", "modelport-models")}
    rules = {(o["kind"], base_name(o["metadata"]["name"])) for o in rendered[Target("cpu", ("quality-rules",))]}
    assert rules - cpu == {("PrometheusRule", "modelport-quality")}
    redis = {(o["kind"], base_name(o["metadata"]["name"])) for o in rendered[Target("cpu", ("feedback-redis",))]}
    assert redis - cpu == {("StatefulSet", "modelport-redis"), ("Service", "modelport-redis"),
                           ("NetworkPolicy", "modelport-redis"), ("ConfigMap", "modelport-redis-config"),
                           ("Secret", "modelport-feedback-store")}
    managed = {(o["kind"], base_name(o["metadata"]["name"])) for o in rendered[Target("cpu", ("feedback-redis-url",))]}
    assert managed == cpu, "the managed-Redis component adds no object (the Secret is the user's)"
    step = {(o["kind"], base_name(o["metadata"]["name"])) for o in rendered[Target("cpu", ("rollout-step",))]}
    assert step - cpu == {("CronJob", "modelport-rollout-step"), ("ConfigMap", "modelport-rollout-step"),
                          ("NetworkPolicy", "modelport-rollout-step")}


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlays_offer_the_components(overlay):
    """Each overlay lists its optional components, commented, as the README says to uncomment them."""
    text = (K8S / "overlays" / overlay / "kustomization.yaml").read_text()
    offered = re.findall(r"^#\s+- \.\./\.\./components/([\w-]+)", text, re.M)
    assert offered and set(offered) <= set(COMPONENTS)
    assert {"quality-rules", "feedback-redis"} <= set(offered)
    if overlay == "cpu":
        assert set(offered) == set(COMPONENTS)
    readme = (K8S / "README.md").read_text()
    for component in COMPONENTS:
        assert (K8S / "components" / component / "kustomization.yaml").exists()
        assert f"components/{component}" in readme, component


def _all_objects(rendered) -> dict[str, dict]:
    """Every distinct object of every rendering, and the manifests of k8s/jobs/."""
    everything = [o for objs in rendered.values() for o in objs] + job_manifests()
    return {json.dumps(o, sort_keys=True): o for o in everything}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(rendered, version):
    failures = []
    for obj in _all_objects(rendered).values():
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures.append(f"{obj['kind']} {obj['metadata'].get('name')}: unknown kind ({exc.message})")
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            failures.append(f"{obj['kind']} {obj['metadata'].get('name')}: {path}: {exc.message}")
    assert not failures, f"against Kubernetes {version}:\n" + "\n".join(failures)


def test_unlisted_kinds_and_unknown_fields_fail():
    """The validator really is strict: a typo in a field, or a kind outside the schemas, fails."""
    bad = copy.deepcopy(deployment(render(Target("cpu"))))
    pod_spec(bad)["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, NEWEST, strict=True)
    monitor = one(render(Target("cpu", ("servicemonitor",))), "ServiceMonitor")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(monitor, NEWEST, strict=True)


def test_listed_crds_are_well_formed(rendered):
    for obj in _all_objects(rendered).values():
        if obj["kind"] == "PrometheusRule":
            assert set(obj["spec"]) == {"groups"}
            for group in obj["spec"]["groups"]:
                assert set(group) <= {"name", "interval", "rules"} and group["rules"]
                for rule in group["rules"]:
                    assert set(rule) <= {"record", "expr", "labels"} and rule["record"] and rule["expr"]
            continue
        if obj["kind"] != "ServiceMonitor":
            continue
        spec = obj["spec"]
        assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
                             "podTargetLabels"}
        assert spec["selector"]["matchLabels"]
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings",
                                     "metricRelabelings"}
            assert isinstance(endpoint["port"], str)


# ---------------------------------------------------------------- policy

@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_every_container_has_probes_resources_and_security(rendered, target):
    running = workloads(rendered[target])
    for workload in running + cron_jobs(rendered[target]):
        # Service links would inject MODELPORT_-prefixed variables (Services modelport, modelport-redis).
        assert pod_spec(workload).get("enableServiceLinks") is False, workload["metadata"]["name"]
    for workload in running + cron_jobs(rendered[target]) + [convert_job()]:
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod.get("automountServiceAccountToken") is False
        for c in containers(workload):
            where = f"{workload['kind']} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot") is True, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            resources = c.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: a writable /tmp on a read-only root"
    for workload in running:
        for c in pod_spec(workload)["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{c['name']} has no {probe}"


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_probes_are_native_grpc_on_the_grpc_port(rendered, target):
    c = server(rendered[target])
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == grpc_port
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["grpc"].get("service", "") == ""  # "" follows server readiness
    assert c["livenessProbe"]["grpc"]["service"] == "modelport.liveness"  # the process, not its models
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model loading gets at least 5 minutes"


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_shutdown_arithmetic(rendered, target):
    """preStop pause + the server's drain fit in the grace period, and liveness cannot restart a
    draining pod; the server closes connections by age so clients re-resolve."""
    objects = rendered[target]
    pod, c, settings = pod_spec(deployment(objects)), server(objects), config(objects)
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep")
    pre_stop = float(command[1])
    drain = float(settings["MODELPORT_SHUTDOWN_GRACE_SECONDS"])
    assert pre_stop >= 5, "endpoints, kube-proxy and DNS need a few seconds"
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > pre_stop + drain
    assert int(settings["MODELPORT_GRPC_MAX_CONNECTION_AGE_MS"]) > 0
    assert int(settings["MODELPORT_GRPC_MAX_CONNECTION_AGE_GRACE_MS"]) > 0


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_selectors_match_the_pods(rendered, target):
    objects = rendered[target]
    workload = deployment(objects)
    labels = pod_labels(workload)
    assert SERVER_LABELS.items() <= labels.items()
    assert selects(workload["spec"]["selector"], labels)
    job_labels = [pod_labels(convert_job())] + [pod_labels(j) for j in cron_jobs(objects)]
    for service in of_kind(objects, "Service"):
        # Each Service selects the pods of exactly one workload: the servers' or a component's.
        selector = service["spec"]["selector"]
        chosen = [w["metadata"]["name"] for w in workloads(objects) if selects(selector, pod_labels(w))]
        assert len(chosen) == 1, (service["metadata"]["name"], chosen)
        for pods in job_labels:
            assert not selects(selector, pods), "Job pods (conversion, rollout step) must get no traffic"
    for job in cron_jobs(objects):
        assert not selects(workload["spec"]["selector"], pod_labels(job)), "a Job's pods are not servers"
        assert not selects(one(objects, "PodDisruptionBudget")["spec"]["selector"], pod_labels(job))
    for name in server_services(objects):
        assert selects(one(objects, "Service", name)["spec"]["selector"], labels), name
    assert {"modelport", "modelport-headless"} <= set(server_services(objects))
    assert one(objects, "Service", "modelport-headless")["spec"]["clusterIP"] == "None"
    assert selects(one(objects, "PodDisruptionBudget")["spec"]["selector"], labels)
    assert selects(one(objects, "NetworkPolicy", "modelport")["spec"]["podSelector"], labels)
    for stateful in of_kind(objects, "StatefulSet"):
        assert selects(stateful["spec"]["selector"], pod_labels(stateful))
        assert not selects(stateful["spec"]["selector"], labels), "a component's pods are not servers"
        governing = one(objects, "Service", stateful["spec"]["serviceName"])
        assert selects(governing["spec"]["selector"], pod_labels(stateful))
    for constraint in pod_spec(workload)["topologySpreadConstraints"]:
        assert selects(constraint["labelSelector"], labels)
    target_ref = one(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target_ref["apiVersion"], target_ref["kind"], target_ref["name"]) == ("apps/v1", "Deployment", "modelport")
    assert "replicas" not in workload["spec"], "the HPA owns the replica count"
    for monitor in of_kind(objects, "ServiceMonitor"):
        chosen = [s for s in of_kind(objects, "Service")
                  if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
        assert [s["metadata"]["name"] for s in chosen] == ["modelport"], "scrape each pod once"
        ports = {p["name"] for p in chosen[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_ports_match(rendered, target):
    objects = rendered[target]
    c = server(objects)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 8001, "http": 8000, "metrics": 8002}
    settings = config(objects)
    assert int(settings["MODELPORT_GRPC_PORT"]) == ports["grpc"]
    assert int(settings["MODELPORT_HTTP_PORT"]) == ports["http"]
    assert int(settings["MODELPORT_METRICS_PORT"]) == ports["metrics"]
    for service in (one(objects, "Service", name) for name in server_services(objects)):
        for port in service["spec"]["ports"]:
            target_port = port["targetPort"]
            assert target_port in ports or target_port in ports.values(), (
                f"{service['metadata']['name']}: {target_port}"
            )
            container_port = ports[target_port] if isinstance(target_port, str) else target_port
            protocol = {ports["grpc"]: "grpc", ports["http"]: "http", ports["metrics"]: "http"}[container_port]
            assert port["appProtocol"] == protocol
    policy = one(objects, "NetworkPolicy", "modelport")
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {"grpc", "http", "metrics"} or allowed == set(ports.values())
    assert policy["spec"]["policyTypes"] == ["Ingress"]


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_references_resolve(rendered, target):
    """Every ConfigMap, PVC, volume and ServiceAccount a pod names exists in the same rendering
    (kustomize's hashed names included); images are the overlay's, with a version tag."""
    objects = rendered[target]
    workload = deployment(objects)
    pod = pod_spec(workload)
    config_maps = {o["metadata"]["name"] for o in of_kind(objects, "ConfigMap")}
    claims = {o["metadata"]["name"] for o in of_kind(objects, "PersistentVolumeClaim")}
    # Secrets: rendered ones (kustomize's hashed names), and the one the user creates for a
    # managed Redis (k8s/components/feedback-redis-url).
    secrets = {o["metadata"]["name"] for o in of_kind(objects, "Secret")}
    if "feedback-redis-url" in target.components:
        secrets.add("modelport-feedback-store")
    for running in workloads(objects):
        for c in containers(running):
            for env in c.get("env", []):
                if "secretKeyRef" in env.get("valueFrom", {}):
                    assert env["valueFrom"]["secretKeyRef"]["name"] in secrets, (c["name"], env["name"])
                if "configMapKeyRef" in env.get("valueFrom", {}):
                    assert env["valueFrom"]["configMapKeyRef"]["name"] in config_maps, (c["name"], env["name"])
    for stateful in of_kind(objects, "StatefulSet"):
        spec = pod_spec(stateful)
        volumes = {v["name"] for v in spec.get("volumes", [])} | {
            t["metadata"]["name"] for t in stateful["spec"].get("volumeClaimTemplates", [])}
        for c in containers(stateful):
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, c["name"]
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, volume["name"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert pod["serviceAccountName"] in {o["metadata"]["name"] for o in of_kind(objects, "ServiceAccount")}
    for c in containers(workload):
        for source in c.get("envFrom", []):
            assert source["configMapRef"]["name"] in config_maps
        for mount in c.get("volumeMounts", []):
            assert mount["name"] in volumes
        image, _, tag = c["image"].rpartition(":")
        assert image == ("modelport-gpu" if target.gpu else "modelport-cpu"), c["image"]
        assert tag and tag != "latest"
    for volume in volumes.values():
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims
            assert volume["persistentVolumeClaim"].get("readOnly") is True
    models = next(m for m in server(objects)["volumeMounts"] if m["mountPath"] == "/models")
    assert models.get("readOnly") is True, "serving pods never write the repository"
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "modelport", obj["metadata"]["name"]


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_only_the_gpu_overlay_requests_gpus(rendered, target):
    objects = rendered[target]
    pod = pod_spec(deployment(objects))
    wants = {c["name"]: c["resources"].get("limits", {}).get("nvidia.com/gpu") for c in containers(deployment(objects))}
    if target.gpu:
        assert wants["modelport"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
        assert json.loads(config(objects)["MODELPORT_EXECUTION_PROVIDERS"])[0] == "cuda"
    else:
        assert not any(wants.values())
        assert "nodeSelector" not in pod and "tolerations" not in pod
        assert "cuda" not in config(objects)["MODELPORT_EXECUTION_PROVIDERS"]
    for obj in objects:
        assert "nvidia.com/gpu" not in json.dumps(obj) or target.gpu


def test_conversion_job_writes_where_the_servers_read(rendered):
    job = convert_job()
    assert job["metadata"]["generateName"] and "name" not in job["metadata"]
    assert job["metadata"]["namespace"] == "modelport"
    pod = pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    served = {v["persistentVolumeClaim"]["claimName"] for v in pod_spec(deployment(rendered[Target("cpu")]))["volumes"]
              if "persistentVolumeClaim" in v}
    (c,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert claims[mounts["/models"]["name"]] in served
    assert not mounts["/models"].get("readOnly"), "the Job publishes into the repository"
    assert mounts["/input"].get("readOnly") is True
    shipped = {o["metadata"]["name"] for o in job_manifests() if o["kind"] == "PersistentVolumeClaim"}
    assert claims[mounts["/input"]["name"]] in shipped
    assert all(o["metadata"]["namespace"] == "modelport" for o in job_manifests())
    assert c["image"].startswith("modelport-convert:")


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_request_bytes_fit_the_memory_limit(rendered, target):
    """Back-pressure before the OOM killer: the in-flight request budget is at most half the
    container's memory limit."""
    objects = rendered[target]
    limit = server(objects)["resources"]["limits"]["memory"]
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", limit).groups()
    budget = int(config(objects)["MODELPORT_MAX_INFLIGHT_BYTES"])
    assert 0 < budget <= int(number) * units[unit] // 2, (budget, limit)
