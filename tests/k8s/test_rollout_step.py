"""Quality-gated rollouts on Kubernetes: k8s/components/rollout-step (a CronJob running `modelport
rollout step` against every server) on both overlays, and k8s/jobs/rollout-admin.yaml (a pod for
`modelport rollout start|promote|abort` by hand). The CronJob keeps its policies (schedule, no
overlapping runs, deadlines that fit the schedule, the server image, non-root as the servers' user,
resources, a token only from an optional Secret's file), mounts the servers' repository claim
read-write while the servers keep it read-only, reaches the servers' gRPC port through the headless
Service, and its arguments parse with the real CLI. The shell wrapper counts decisions (0, 10-12) as
success and failures (1, 2, signals) as failure; it runs here with sh and the real `modelport`
against a real server that requires tokens, with only the client's dependencies importable (what
the server images carry besides the server)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from modelport.client import Client
from modelport.client.cli import build_parser, main
from modelport.client.rollout_cli import EXIT_CODES
from modelport.protocol.rollout import read_rollout
from modelport.server.background import BackgroundServer
from modelport.server.settings import ServerSettings
from tests import models

from .render import EXCLUDES, K8S, ROOT, TARGETS, convert_job, job_manifests, of_kind, one
from .test_images import _pins, instructions
from .test_manifests import SERVER_LABELS, config, deployment, pod_labels, pod_spec, selects, server

STEP = [t for t in TARGETS if "rollout-step" in t.components]
ids = [t.id for t in STEP]
NAME = "modelport-rollout-step"
SCHEDULE_MINUTES = 5
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def test_both_overlays_render_the_step():
    assert {t.overlay for t in STEP} == {"cpu", "gpu"}
    # With either feedback store (the step compares the cluster's labelled windows), never with
    # models-from-url (no shared repository to write rollout.json into).
    assert any("feedback-redis" in t.components for t in STEP)
    assert any("feedback-redis-url" in t.components for t in STEP)
    assert EXCLUDES["rollout-step"] == "models-from-url"
    assert not [t for t in STEP if "models-from-url" in t.components]


# ---------------------------------------------------------------- helpers

def cron(objects) -> dict:
    return one(objects, "CronJob", NAME)


def job_spec(objects) -> dict:
    return cron(objects)["spec"]["jobTemplate"]["spec"]


def step_pod(objects) -> dict:
    return job_spec(objects)["template"]["spec"]


def step_container(objects) -> dict:
    (c,) = step_pod(objects)["containers"]
    assert not step_pod(objects).get("initContainers")
    return c


def step_env(objects) -> dict[str, str]:
    """The container's environment: its ConfigMap (hashed name, through envFrom)."""
    c = step_container(objects)
    assert not c.get("env"), "everything comes from the ConfigMap"
    (source,) = c["envFrom"]
    return dict(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])


def wrapper(c: dict) -> str:
    """The sh -c script around modelport; the container's args are modelport's own ("$@")."""
    command = c["command"]
    assert command[:2] == ["sh", "-c"] and len(command) == 4, "sh -c SCRIPT NAME, the args follow as $@"
    return command[2]


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """What Kubernetes does to args: $(VAR) from the container's environment, one argument each."""
    for arg in args:
        for var in re.findall(r"\$\((\w+)\)", arg):
            assert var in env, f"$({var}) is not in the container's environment (left unexpanded)"
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in args]


def parsed(objects):
    """The step's args, expanded, parsed by the real CLI (a renamed flag fails here)."""
    return build_parser().parse_args(expand(step_container(objects)["args"], step_env(objects)))


def volumes_by_mount(pod: dict, container: dict) -> dict[str, tuple[dict, dict]]:
    """mountPath -> (the mount, the volume)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container["volumeMounts"]}


def size(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity).groups()
    return int(number) * UNITS[unit]


def token_path(pod: dict, container: dict) -> str:
    """Where the optional Secret's token is mounted (a file: the CLI strips its trailing newline)."""
    (path,) = [f"{path}/{item['path']}" for path, (m, v) in volumes_by_mount(pod, container).items()
               if "secret" in v for item in v["secret"]["items"] if item["key"] == "token"]  # fmt: skip
    return path


def headless(objects) -> dict:
    """The headless Service in front of the server pods."""
    labels = pod_labels(deployment(objects))
    (service,) = [s for s in of_kind(objects, "Service")
                  if s["spec"].get("clusterIP") == "None" and selects(s["spec"]["selector"], labels)]
    return service


# ---------------------------------------------------------------- the CronJob

@pytest.mark.parametrize("target", STEP, ids=ids)
def test_schedule_and_deadlines(rendered, target):
    objects = rendered[target]
    spec = cron(objects)["spec"]
    assert spec["schedule"] == f"*/{SCHEDULE_MINUTES} * * * *"
    period = SCHEDULE_MINUTES * 60
    assert spec["concurrencyPolicy"] == "Forbid", "two steps at once would both rewrite rollout.json"
    assert 0 < spec["startingDeadlineSeconds"] < period
    assert 1 <= spec["successfulJobsHistoryLimit"] <= 10 and 1 <= spec["failedJobsHistoryLimit"] <= 10
    assert not spec.get("suspend")
    job = job_spec(objects)
    assert job["backoffLimit"] == 0, "a failed step waits for the next run, never retried on the same evidence"
    deadline = job["activeDeadlineSeconds"]
    assert 0 < deadline < period, "a run ends before the next one is due"
    assert step_pod(objects)["restartPolicy"] == "Never"
    # Every call has --timeout: RolloutStatus on each server, GetQuality on one, RolloutRefresh on
    # each, with as many servers as the HPA allows, and a start-up margin, within the deadline.
    args = parsed(objects)
    replicas = one(objects, "HorizontalPodAutoscaler")["spec"]["maxReplicas"]
    assert args.timeout * (2 * replicas + 1) + 20 <= deadline, (args.timeout, replicas, deadline)
    assert step_pod(objects)["terminationGracePeriodSeconds"] <= 30


@pytest.mark.parametrize("target", STEP, ids=ids)
def test_args_parse_with_the_real_cli(rendered, target):
    objects = rendered[target]
    env = step_env(objects)
    args = parsed(objects)
    assert (args.command, args.action) == ("rollout", "step")
    assert args.json is True, "one JSON document per run in the Job's log"
    assert args.name == env["MODEL_NAME"]
    assert args.metric == env["METRIC"], "the metric is spelled out, not guessed from the labels"
    assert args.min_labels == int(env["MIN_LABELS"])
    assert args.max_drop == float(env["MAX_DROP"])
    assert args.confidence == float(env["CONFIDENCE"])
    assert args.max_error_rate_increase == float(env["MAX_ERROR_RATE_INCREASE"])
    used = {v for a in step_container(objects)["args"] for v in re.findall(r"\$\((\w+)\)", a)}
    assert used == set(env), "every ConfigMap key is a flag of the step, and only those"
    # The repository: where the step's container mounts the claim.
    mounts = volumes_by_mount(step_pod(objects), step_container(objects))
    assert str(args.model_repository) in mounts
    # Every server: dns:///<headless Service>:<its gRPC port>, which is the server container's.
    service = headless(objects)
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    grpc = next(p for p in server(objects)["ports"] if p["name"] == "grpc")
    assert port["targetPort"] in (grpc["name"], grpc["containerPort"])
    assert args.url == [f"dns:///{service['metadata']['name']}:{port['port']}"]


def local_command(objects, token: Path) -> list[str]:
    """The container's command for sh here, the token read from `token` instead of the mount."""
    pod, c = step_pod(objects), step_container(objects)
    script = wrapper(c)
    assert script.count(token_path(pod, c)) == 2, "the wrapper passes the mounted token's path"
    return [shutil.which("sh"), "-c", script.replace(token_path(pod, c), str(token)), c["command"][3]]


@pytest.mark.parametrize("target", STEP, ids=ids)
def test_exit_code_wrapper(rendered, target, tmp_path):
    """Decisions succeed, failures fail with their own code, the args reach modelport intact (with
    --token-file when the Secret is there): run the rendered script with sh and a stand-in
    `modelport` that exits with each code."""
    objects = rendered[target]
    c = step_container(objects)
    script = wrapper(c)
    assert "$(" not in script, "Kubernetes would expand $(...) in the command before sh sees it"
    assert "modelport \"$@\"" in script
    fake = tmp_path / "modelport"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_OUT"\nexit "$FAKE_CODE"\n')
    fake.chmod(0o755)
    args = [*c["args"], "an argument with spaces", "*"]
    token = tmp_path / "token"
    decisions = set(EXIT_CODES.values())
    assert decisions == {0, 10, 11, 12}, "the wrapper's case lists the step's decision codes"
    for code in sorted(decisions | {1, 2, 3, 9, 13, 130, 137}):
        for with_token in (False, True):
            if with_token:
                token.write_text("admin-token\n")
            else:
                token.unlink(missing_ok=True)
            out = tmp_path / f"args-{code}"
            env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "FAKE_CODE": str(code), "ARGS_OUT": str(out)}
            result = subprocess.run([*local_command(objects, token), *args], env=env, timeout=30)
            assert result.returncode == (0 if code in decisions else code), (code, with_token)
            given = [*args, "--token-file", str(token)] if with_token else args
            assert out.read_text().splitlines() == given, "modelport gets the args unchanged"


@pytest.mark.parametrize("target", STEP, ids=ids)
def test_repository_read_write_for_the_step_read_only_for_the_servers(rendered, target):
    objects = rendered[target]
    mount, volume = volumes_by_mount(step_pod(objects), step_container(objects))[str(parsed(objects).model_repository)]
    claim = volume["persistentVolumeClaim"]
    assert not mount.get("readOnly") and not claim.get("readOnly"), "the step rewrites rollout.json"
    served = [v["persistentVolumeClaim"] for v in pod_spec(deployment(objects))["volumes"]
              if "persistentVolumeClaim" in v]
    assert [s["claimName"] for s in served] == [claim["claimName"]], "the servers' own repository"
    assert all(s.get("readOnly") is True for s in served)
    models_mount = next(m for m in server(objects)["volumeMounts"] if m["mountPath"] == "/models")
    assert models_mount.get("readOnly") is True, "the servers still never write the repository"
    pvc = one(objects, "PersistentVolumeClaim", claim["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "mounted by servers and the step on any node"


@pytest.mark.parametrize("target", STEP, ids=ids)
def test_security_and_resources(rendered, target):
    objects = rendered[target]
    pod, c = step_pod(objects), step_container(objects)
    sc = pod["securityContext"]
    servers = pod_spec(deployment(objects))["securityContext"]
    publisher = pod_spec(convert_job())["securityContext"]
    # rollout.json is written with mode 600: the step must be the servers' user (and the conversion
    # Job's, which owns the model folders it writes into).
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        assert sc[key] == servers[key] == publisher[key] and sc[key] > 0, key
    assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["serviceAccountName"] in {o["metadata"]["name"] for o in of_kind(objects, "ServiceAccount")}
    csc = c["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["runAsNonRoot"] is True and csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["seccompProfile"]["type"] == "RuntimeDefault"
    mounts = volumes_by_mount(pod, c)
    assert "emptyDir" in mounts["/tmp"][1], "a writable /tmp (HOME in the image) on the read-only root"
    writable = {path for path, (m, _) in mounts.items() if not m.get("readOnly")}
    assert writable == {"/models", "/tmp"}
    resources = c["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


@pytest.mark.parametrize("target", STEP, ids=ids)
def test_image_is_the_server_image(rendered, target):
    """The overlay's server image: `modelport` on PATH (its venv), the client inside, /bin/sh."""
    objects = rendered[target]
    c = step_container(objects)
    assert c["image"] == server(objects)["image"]
    assert c["image"].split(":")[0] == ("modelport-gpu" if target.gpu else "modelport-cpu")
    steps = instructions("Dockerfile.gpu" if target.gpu else "Dockerfile.cpu")
    assert ("ENTRYPOINT", '["modelport"]') in steps
    env = " ".join(a for i, a in steps if i == "ENV")
    assert "PATH=/opt/modelport/bin:$PATH" in env, "sh finds modelport in the image's venv"
    # Debian slim (CPU) and Ubuntu (GPU) bases: /bin/sh is dash.
    bases = " ".join(a for i, a in steps if i == "ARG" and "IMAGE=" in a)
    assert re.search(r"python:3\.11\.\d+-slim-bookworm|ubuntu22\.04", bases), bases
    assert pyproject_script() == "modelport.client.cli:main"


def pyproject_script() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["modelport"]


def client_distributions() -> set[str]:
    """The client install's distributions: modelport's base dependencies and theirs (no extras)."""
    environment = {"extra": ""}
    wanted = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    found: set[str] = set()
    while wanted:
        requirement = wanted.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        if name not in found:
            found.add(name)
            wanted += [Requirement(r) for r in importlib.metadata.requires(name) or []]
    return found


def client_modules() -> set[str]:
    """The top-level modules of the client's distributions (as installed here)."""
    dists = client_distributions()
    return {module for module, owners in importlib.metadata.packages_distributions().items()
            if any(canonicalize_name(o) in dists for o in owners)}


@pytest.mark.parametrize("lock", ["server", "gpu"])
def test_server_images_carry_the_client(lock):
    """The step needs the client install only (test_step_against_a_real_server runs it with nothing
    else importable): every one of its distributions is pinned in both server images' locks."""
    pins = {canonicalize_name(k) for k in _pins(lock)}
    assert {"grpcio", "protobuf", "numpy"} <= client_distributions()
    assert client_distributions() <= pins, client_distributions() - pins
    assert not {p for p in pins if p.startswith(("tensorflow", "tf2onnx", "keras"))}


# ---------------------------------------------------------------- network

@pytest.mark.parametrize("target", STEP, ids=ids)
def test_network_lets_the_step_reach_the_servers(rendered, target):
    objects = rendered[target]
    step_labels = job_spec(objects)["template"]["metadata"]["labels"]
    admin_labels = admin_pod()["metadata"]["labels"]
    server_labels = pod_labels(deployment(objects))
    grpc = next(p for p in server(objects)["ports"] if p["name"] == "grpc")
    grpc_names = {grpc["name"], grpc["containerPort"]}
    for labels in (step_labels, admin_labels):
        assert not selects({"matchLabels": SERVER_LABELS}, labels), "rollout pods are not servers"
        # Some policy selecting the servers admits these pods on the gRPC port (if any policy
        # selects the servers, only what one admits gets in).
        admitted = False
        for policy in of_kind(objects, "NetworkPolicy"):
            spec = policy["spec"]
            if "Ingress" not in spec["policyTypes"] or not selects(spec["podSelector"], server_labels):
                continue
            for rule in spec.get("ingress", []):
                ports = {p["port"] for p in rule.get("ports", [])}
                sources = rule.get("from")
                if ports and not ports & grpc_names:
                    continue
                if sources is None or any("namespaceSelector" not in s and "ipBlock" not in s
                                           and selects(s["podSelector"], labels) for s in sources):
                    admitted = True
        assert admitted, labels
        # The policy of the component admits them by name, whatever the base's becomes.
        policy = one(objects, "NetworkPolicy", NAME)["spec"]
        assert selects(policy["podSelector"], server_labels)
        (rule,) = policy["ingress"]
        assert [p["port"] for p in rule["ports"]] == ["grpc"]
        assert any(selects(s["podSelector"], labels) for s in rule["from"])
        # No egress policy applies to them: if one did, it would have to allow DNS and the servers.
        for other in of_kind(objects, "NetworkPolicy"):
            spec = other["spec"]
            assert "Egress" not in spec["policyTypes"] or not selects(spec["podSelector"], labels), (
                f"{other['metadata']['name']} restricts the rollout pods' egress: allow DNS and the servers"
            )
    for service in of_kind(objects, "Service"):
        assert not selects(service["spec"]["selector"], step_labels), "the step's pods get no traffic"


@pytest.mark.parametrize("target", STEP, ids=ids)
def test_a_token_goes_along_when_the_secret_exists(rendered, target):
    """For servers with MODELPORT_AUTH_TOKEN_FILE: the token from an optional Secret (the pods start
    without it), mounted read-only, passed as --token-file, which the real CLI accepts."""
    objects = rendered[target]
    pod, c = step_pod(objects), step_container(objects)
    path = token_path(pod, c)
    mount, volume = volumes_by_mount(pod, c)[path.rpartition("/")[0]]
    assert mount["readOnly"] is True
    assert volume["secret"]["optional"] is True, "without the Secret, the step runs without a token"
    assert volume["secret"]["defaultMode"] & 0o077 <= 0o040, "readable by the pod's group (fsGroup) only"
    secret = volume["secret"]["secretName"]
    assert secret not in {o["metadata"]["name"] for o in of_kind(objects, "Secret")}, "the user's Secret"
    assert not [e for e in c.get("env", []) if "TOKEN" in e["name"]], "no token in the environment"
    args = build_parser().parse_args([*expand(c["args"], step_env(objects)), "--token-file", path])
    assert str(args.token_file) == path
    readme = " ".join((K8S / "README.md").read_text().split())
    assert f"create secret generic {secret} --from-file=token=" in readme
    admin = admin_pod()["spec"]
    (admin_container,) = admin["containers"]
    assert token_path(admin, admin_container) == path, "the admin pod has the token at the same place"


# ---------------------------------------------------------------- the step, for real

GOOD = np.array([[1.0, -0.5, 0.2], [0.3, 1.0, -1.0], [-0.7, 0.4, 1.0], [0.2, 0.1, 0.3]], np.float32)
BAD = np.array([[-1.0, 0.5, 0.2], [0.3, -1.0, 1.0], [0.7, 0.4, -1.0], [0.2, 0.1, 0.3]], np.float32)

# Imported by the step's Python before anything runs: only the standard library, the client's
# distributions and modelport's client and protocol packages may be imported after it.
BLOCKER = textwrap.dedent('''
    import importlib.abc, json, os, sys

    ALLOWED = set(json.loads(os.environ["STEP_ALLOWED_MODULES"]))
    MODELPORT = ("modelport.client", "modelport.protocol")


    class OnlyTheClient(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top == "modelport":
                if name == "modelport" or name.startswith(MODELPORT):
                    return None
            elif top in sys.stdlib_module_names or top in ALLOWED or top.startswith("_cython"):
                return None
            with open(os.environ["STEP_BLOCKED_LOG"], "a") as log:
                log.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {name!r} (not in the client install)", name=name)


    sys.meta_path.insert(0, OnlyTheClient())
    with open(os.environ["STEP_BLOCKED_LOG"], "a") as log:
        log.write("+guarded\\n")
''')


def run_step(objects, tmp_path: Path, repository: Path, url: str, token: Path) -> tuple[int, dict, str]:
    """The rendered container's command and args, run by sh with the real `modelport` (this venv's):
    the repository, the server and the token file in place of /models, the headless Service and the
    Secret's mount; the model is "m"."""
    c = step_container(objects)
    args = expand(c["args"], step_env(objects) | {"MODEL_NAME": "m"})
    args[args.index("--model-repository") + 1] = str(repository)
    args[args.index("--url") + 1] = url
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(site),
        "STEP_ALLOWED_MODULES": json.dumps(sorted(client_modules())),
        "STEP_BLOCKED_LOG": str(tmp_path / "blocked.log"),
    }  # fmt: skip
    result = subprocess.run([*local_command(objects, token), *args], env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    out = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, out, result.stderr


def labelled_traffic(client: Client, rows: int, prefix: str) -> None:
    """Unversioned requests with ids, each labelled with the good model's class (the truth here)."""
    rng = np.random.default_rng(7)
    for i in range(rows // 4):
        x = rng.normal(size=(4, 4)).astype(np.float32)
        client.infer("m", {"x": x}, request_id=f"{prefix}{i}")
        client.report_label("m", f"{prefix}{i}", (x @ GOOD).argmax(axis=1))


@pytest.mark.parametrize("target", [STEP[0]], ids=[STEP[0].id])
def test_step_against_a_real_server(rendered, target, tmp_path, capsys):
    """The rendered step against a real server that requires tokens, with the Secret's token file
    (its trailing newline and all): it holds without a rollout (exit 10: the Job succeeds), rolls a
    worse candidate back (12: succeeds) and tells the server (admin scope). Without the Secret the
    calls are refused (1) and a broken rollout.json is bad input (2): the Job fails. Only the
    client's dependencies are importable: no TensorFlow, no ONNX Runtime, no server package."""
    objects = rendered[target]
    repository = tmp_path / "models"
    for version, weights in ((1, GOOD), (2, BAD)):
        models.save(models.softmax_classifier(weights), repository, "m", version)
    tokens, token = tmp_path / "tokens", tmp_path / "token"
    tokens.write_text("client-token inference\nadmin-token admin\n")
    token.write_text("admin-token\n")  # as `kubectl create secret --from-file` of a text file stores it
    with BackgroundServer(repository, auth_token_file=tokens) as running:
        url = running.address
        code, out, err = run_step(objects, tmp_path, repository, url, token)
        assert code == 0 and out["decision"] == "hold" and "no rollout" in out["reason"], (out, err)
        assert main(["rollout", "start", "--model-repository", str(repository), "--name", "m", "--candidate", "2",
                     "--stable", "1", "--weight", "0.5", "--steps", "0.5,1.0", "--url", url,
                     "--token-file", str(token)]) == 0  # fmt: skip
        capsys.readouterr()
        with Client(url, token="client-token") as client:
            labelled_traffic(client, 1200, "r")
            code, out, err = run_step(objects, tmp_path, repository, url, token)
            assert code == 0 and out["decision"] == "rollback", (out, err)
            assert "rollout_decision" in err, "one log line per decision"
            assert "warning" not in err, "every server was told"
            assert read_rollout(repository / "m").state == "rolled_back"
            served = json.loads(client.rollout_status("m").rollout_json)
            assert served["state"] == "rolled_back", "the server was told at once"
        code, out, err = run_step(objects, tmp_path, repository, url, tmp_path / "no-secret")
        assert code == 1 and "UNAUTHENTICATED" in err, (code, err)
        (repository / "m" / "rollout.json").write_text("{not json")
        code, out, err = run_step(objects, tmp_path, repository, url, token)
        assert code == 2 and "rollout.json" in err, (code, err)
    log = (tmp_path / "blocked.log").read_text().split()
    assert log.count("+guarded") == 4, "every run had only the client importable"
    blocked = set(log) - {"+guarded"}
    # Probes that tolerate an absence: grpc's optional helpers, and the standard library's copy
    # module looking for Jython (org.python.core). Nothing else was wanted.
    tolerated = {"grpc_tools", "grpc_health", "grpc_reflection", "org"}
    assert {b.partition(".")[0] for b in blocked} <= tolerated, blocked


@pytest.mark.parametrize("target", [STEP[0]], ids=[STEP[0].id])
def test_step_fits_its_memory_limit(rendered, target):
    """The bootstrap of the step's metric over full windows (the servers' MODELPORT_QUALITY_WINDOW)
    of 64 classes stays within three quarters of the container's memory limit, measured."""
    objects = rendered[target]
    prefix = ServerSettings.model_config["env_prefix"]
    window = int(config(objects).get(f"{prefix}QUALITY_WINDOW", ServerSettings.model_fields["quality_window"].default))
    args = parsed(objects)
    program = textwrap.dedent(f"""
        import numpy as np
        import modelport.client.rollout_cli
        from modelport.client.rollout import Evidence, Traffic, bounds
        rng = np.random.default_rng(0)
        def window(version):
            return Evidence(version, rng.integers(0, 64, {window}).astype(float),
                            rng.integers(0, 64, {window}).astype(float), Traffic())
        bounds({args.metric!r}, window(1), window(2), {args.confidence})
        # VmHWM, not getrusage's ru_maxrss: that survives exec, so it would count the peak of the
        # forked copy of a large pytest process.
        status = open("/proc/self/status").read()
        print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=True)
    peak = int(result.stdout) * 1024  # VmHWM is in kB
    limit = size(step_container(objects)["resources"]["limits"]["memory"])
    assert peak <= 0.75 * limit, f"{peak / 2**20:.0f} MiB of {limit / 2**20:.0f} MiB"


# ---------------------------------------------------------------- by hand: the admin pod, README

def admin_pod() -> dict:
    (pod,) = [o for o in job_manifests() if o["kind"] == "Pod" and o["metadata"]["name"] == "modelport-rollout-admin"]
    return pod


def test_admin_pod_writes_where_the_servers_read(rendered):
    pod = admin_pod()
    spec = pod["spec"]
    objects = rendered[STEP[0]]
    servers = pod_spec(deployment(objects))
    assert pod["metadata"]["namespace"] == "modelport"
    assert spec["restartPolicy"] == "Never" and 0 < spec["activeDeadlineSeconds"] <= 4 * 3600, "it ends by itself"
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        assert spec["securityContext"][key] == servers["securityContext"][key], key
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    (c,) = spec["containers"]
    mounts = volumes_by_mount(spec, c)
    mount, volume = mounts["/models"]
    served = {v["persistentVolumeClaim"]["claimName"] for v in servers["volumes"] if "persistentVolumeClaim" in v}
    assert volume["persistentVolumeClaim"]["claimName"] in served
    assert not mount.get("readOnly") and not volume["persistentVolumeClaim"].get("readOnly")
    assert c["image"].startswith("modelport-cpu:") and not c["image"].endswith(":latest")
    assert c["command"][0] == "sleep" and float(c["command"][1]) <= spec["activeDeadlineSeconds"]
    # The same policies as every other container (test_manifests checks those of the renderings).
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["securityContext"]["runAsNonRoot"] is True and sc["runAsNonRoot"] is True
    assert "emptyDir" in mounts["/tmp"][1]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]


def readme_modelport_commands() -> list[list[str]]:
    """Every `modelport rollout ...` command in k8s/README.md's shell blocks (continuations joined)."""
    text = (K8S / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0]
            # modelport as the command: at the start of a line, or after `kubectl exec ... --`
            found = re.search(r"(?:^\s*|\s--\s+)modelport (rollout (?:start|status|step|promote|abort)\b.*)", line)
            if found:
                commands.append(shlex.split(found.group(1)))
    return commands


def test_readme_rollout_commands_parse_with_the_real_cli():
    commands = readme_modelport_commands()
    actions = {c[1] for c in commands}
    assert {"start", "status", "promote", "abort"} <= actions, actions
    for argv in commands:
        argv = [re.sub(r"\$\{?\w+\}?", "1", a) for a in argv]  # shell variables stand for values
        args = build_parser().parse_args(argv)
        if args.action != "status":
            assert str(args.model_repository) == "/models", argv
        assert any(u.startswith(("dns:///modelport-headless:8001", "localhost:8001")) for u in args.url), argv
