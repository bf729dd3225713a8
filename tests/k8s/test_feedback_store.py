"""The feedback store's Kubernetes side: k8s/components/feedback-redis (Redis in the cluster) and
k8s/components/feedback-redis-url (a managed Redis), on both overlays. The rendered objects keep
their policies (non-root, no privilege escalation, capabilities dropped, resources, probes that
authenticate, a volume for the data, a NetworkPolicy that admits the server pods only), redis.conf
bounds memory and persists, the servers get the whole URL from a Secret, the settings are real
ServerSettings fields, and a real redis-server (Debian's, installed by `make test`) runs with the
rendered redis.conf and start command: it refuses bad secrets, answers the probes, keeps pending
predictions across a crash and evicts the predictions nearest to expiry, never the windows."""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from modelport.server.settings import ServerSettings

from .render import TARGETS, convert_job, of_kind, one
from .test_manifests import config, containers, deployment, pod_labels, pod_spec, selects, server
from .test_settings import PREFIX, settings_from

IN_CLUSTER = [t for t in TARGETS if "feedback-redis" in t.components]
MANAGED = [t for t in TARGETS if "feedback-redis-url" in t.components]
STORE = IN_CLUSTER + MANAGED
SECRET = "modelport-feedback-store"
MANAGED_URL = "redis://:s3cret-from-the-provider@redis.example.internal:6379/0"
UNITS = {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def test_both_overlays_render_both_components():
    assert {t.overlay for t in IN_CLUSTER} == {"cpu", "gpu"}
    assert {t.overlay for t in MANAGED} == {"cpu", "gpu"}
    assert not [t for t in STORE if "feedback-redis" in t.components and "feedback-redis-url" in t.components]


# ---------------------------------------------------------------- helpers

def redis_set(objects) -> dict:
    return one(objects, "StatefulSet", "modelport-redis")


def redis_container(objects) -> dict:
    (c,) = [c for c in pod_spec(redis_set(objects))["containers"] if c["name"] == "redis"]
    return c


def mounts(objects) -> dict[str, dict]:
    """mountPath -> the volume (or claim template) behind it, for the Redis container."""
    stateful = redis_set(objects)
    volumes = {v["name"]: v for v in pod_spec(stateful).get("volumes", [])}
    volumes |= {t["metadata"]["name"]: {"claim": t} for t in stateful["spec"].get("volumeClaimTemplates", [])}
    return {m["mountPath"]: volumes[m["name"]] | {"readOnly": m.get("readOnly", False)}
            for m in redis_container(objects)["volumeMounts"]}


def redis_conf_text(objects) -> str:
    (volume,) = [v for v in mounts(objects).values() if "configMap" in v]
    return one(objects, "ConfigMap", volume["configMap"]["name"])["data"]["redis.conf"]


def directives(text: str) -> dict[str, list[str]]:
    """redis.conf as {directive: arguments}, the last occurrence winning (as in Redis)."""
    found = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, *args = shlex.split(line)
            found[name.lower()] = args
    return found


def size(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", text).groups()
    return int(number) * UNITS[unit if unit in UNITS else unit.lower()]


def start_script(objects) -> str:
    command = redis_container(objects)["command"]
    assert command[:2] == ["sh", "-c"] and len(command) == 3, "the start command is one sh -c script"
    return command[2]


def secret_data(objects) -> dict[str, str]:
    """The rendered Secret the servers' MODELPORT_FEEDBACK_STORE comes from, decoded."""
    secret = one(objects, "Secret", _secret_name(objects))
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def env_refs(container: dict) -> dict[str, tuple[str, str]]:
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


# ---------------------------------------------------------------- the Redis objects

@pytest.mark.parametrize("target", IN_CLUSTER, ids=[t.id for t in IN_CLUSTER])
def test_redis_runs_unprivileged_with_resources(rendered, target):
    objects = rendered[target]
    stateful = redis_set(objects)
    assert stateful["spec"]["replicas"] == 1, "one Redis: every replica must see the same store"
    pod = pod_spec(stateful)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0 and pod["securityContext"]["runAsGroup"] > 0
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"], "the volume is writable"
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for c in containers(stateful):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert {"cpu", "memory"} <= set(c["resources"]["requests"])
        assert {"cpu", "memory"} <= set(c["resources"]["limits"])
        assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"]
    # The official image, pinned by tag and digest.
    image = redis_container(objects)["image"]
    assert re.fullmatch(r"docker\.io/library/redis:\d+\.\d+\.\d+-[a-z]+@sha256:[0-9a-f]{64}", image), image
    # Every path Redis writes is a volume: /data (the claim) and the in-memory /tmp.
    writable = {path for path, volume in mounts(objects).items() if not volume["readOnly"]}
    assert writable == {"/data", "/tmp"}
    assert mounts(objects)["/tmp"]["emptyDir"]["medium"] == "Memory", "the password file never touches a disk"


@pytest.mark.parametrize("target", IN_CLUSTER, ids=[t.id for t in IN_CLUSTER])
def test_redis_probes_ping_with_the_password(rendered, target):
    objects = rendered[target]
    c = redis_container(objects)
    port = next(p["containerPort"] for p in c["ports"] if p["name"] == "redis")
    # redis-cli authenticates with REDISCLI_AUTH, from the Secret's password.
    assert env_refs(c)["REDISCLI_AUTH"] == (_secret_name(objects), "password")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = c[probe]["exec"]["command"]
        script = " ".join(command)
        assert "redis-cli" in script and "ping" in script.lower()
        assert "PONG" in script, "redis-cli exits 0 on NOAUTH and LOADING replies: the reply itself must be PONG"
        assert f"-p {port}" in script
        assert "-a " not in script, "no password on a command line"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "time to load the AOF after a restart"
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30


def _secret_name(objects) -> str:
    (ref,) = {e["valueFrom"]["secretKeyRef"]["name"] for e in server(objects)["env"]
              if e["name"] == f"{PREFIX}FEEDBACK_STORE"}
    return ref


@pytest.mark.parametrize("target", IN_CLUSTER, ids=[t.id for t in IN_CLUSTER])
def test_redis_keeps_its_data_on_a_claim(rendered, target):
    objects = rendered[target]
    conf = directives(redis_conf_text(objects))
    data = mounts(objects)[conf["dir"][0]]
    assert "claim" in data, "the AOF lives on a PersistentVolumeClaim (volumeClaimTemplates)"
    claim = data["claim"]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    # The AOF holds up to about 2-3x the data between rewrites.
    assert size(claim["resources"]["requests"]["storage"]) >= 3 * size(conf["maxmemory"][0])
    assert not of_kind(objects, "PersistentVolumeClaim") or all(
        o["metadata"]["name"] == "modelport-models" for o in of_kind(objects, "PersistentVolumeClaim"))


@pytest.mark.parametrize("target", IN_CLUSTER, ids=[t.id for t in IN_CLUSTER])
def test_redis_conf_bounds_memory_and_persists(rendered, target):
    objects = rendered[target]
    conf = directives(redis_conf_text(objects))
    limit = size(redis_container(objects)["resources"]["limits"]["memory"])
    maxmemory = size(conf["maxmemory"][0])
    assert 0 < maxmemory <= 0.75 * limit, "headroom for the AOF rewrite's fork and client buffers"
    # Evicting (never noeviction), and only keys with a TTL: pending predictions, not the windows.
    assert conf["maxmemory-policy"] == ["volatile-ttl"]
    assert conf["appendonly"] == ["yes"] and conf["appendfsync"] == ["everysec"]
    assert conf.get("save") == [""], "no RDB snapshots besides the AOF"
    # The password file: included by redis.conf, written by the start command, on the writable /tmp.
    (included,) = conf["include"]
    assert included.startswith("/tmp/") and mounts(objects)["/tmp"]["readOnly"] is False
    script = start_script(objects)
    assert f"> {included}" in script and "umask 077" in script
    config_dir = next(path for path, v in mounts(objects).items() if "configMap" in v)
    assert f"exec redis-server {config_dir}/redis.conf" in script
    assert "requirepass" not in conf and "masterauth" not in conf, "no password in a ConfigMap"


@pytest.mark.parametrize("target", IN_CLUSTER, ids=[t.id for t in IN_CLUSTER])
def test_network_policy_admits_only_the_servers(rendered, target):
    objects = rendered[target]
    policy = one(objects, "NetworkPolicy", "modelport-redis")["spec"]
    redis_pods, server_pods = pod_labels(redis_set(objects)), pod_labels(deployment(objects))
    assert selects(policy["podSelector"], redis_pods) and not selects(policy["podSelector"], server_pods)
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["egress"] == [], "Redis reaches nothing"
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "pods of this namespace only: no namespaceSelector or ipBlock"
    assert selects(peer["podSelector"], server_pods)
    job = pod_labels(convert_job())
    assert not selects(peer["podSelector"], job), "not the conversion Job's pods"
    c = redis_container(objects)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    (port,) = rule["ports"]
    assert port["protocol"] == "TCP" and (port["port"] in ports or port["port"] in ports.values())
    assert ports == {"redis": 6379}
    # The other policy (the servers') still admits only gRPC and metrics, and nothing to Redis.
    assert one(objects, "NetworkPolicy", "modelport")["spec"]["podSelector"] != policy["podSelector"]


# ---------------------------------------------------------------- what the servers get

@pytest.mark.parametrize("target", STORE, ids=[t.id for t in STORE])
def test_servers_get_the_url_from_a_secret(rendered, target):
    objects = rendered[target]
    env = {e["name"]: e for e in server(objects).get("env", [])}
    store = env[f"{PREFIX}FEEDBACK_STORE"]
    assert "value" not in store, "the URL carries the password: never a plain value"
    ref = store["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "url" and ref["name"].startswith(SECRET) and not ref.get("optional")
    assert f"{PREFIX}FEEDBACK_STORE" not in config(objects), "not in the ConfigMap either"
    for other in of_kind(objects, "ConfigMap"):
        assert "redis://" not in str(other["data"]), other["metadata"]["name"]
    if target in MANAGED:
        assert ref["name"] == SECRET, "the user's Secret, by its fixed name"
        assert not of_kind(objects, "Secret") and not of_kind(objects, "StatefulSet")
        return
    data = secret_data(objects)
    assert set(data) == {"url", "password"}
    url = urlsplit(data["url"])
    service = one(objects, "Service", "modelport-redis")
    assert url.scheme == "redis" and url.username in ("", None) and url.password == data["password"]
    assert url.hostname == service["metadata"]["name"]
    assert url.port == service["spec"]["ports"][0]["port"] and re.fullmatch(r"/\d+", url.path)
    assert selects(service["spec"]["selector"], pod_labels(redis_set(objects)))
    assert service["spec"]["ports"][0]["targetPort"] in ("redis", 6379)
    # Redis gets its password from the same Secret (the hashed name rolls both on a change).
    assert env_refs(redis_container(objects)) == {"REDISCLI_AUTH": (ref["name"], "password"),
                                                   "FEEDBACK_STORE_URL": (ref["name"], "url")}


@pytest.mark.parametrize("target", STORE, ids=[t.id for t in STORE])
def test_feedback_settings_are_server_settings(rendered, target, monkeypatch):
    """MODELPORT_FEEDBACK_STORE (from the Secret) and MODELPORT_FEEDBACK_TTL (the ConfigMap) are
    ServerSettings fields and parse; fails, not skips, until server/settings.py has them."""
    objects = rendered[target]
    missing = {"feedback_store", "feedback_ttl"} - set(ServerSettings.model_fields)
    if missing:
        pytest.fail(f"ServerSettings has no field {sorted(missing)}: the manifests set {PREFIX}FEEDBACK_STORE and "
                    f"{PREFIX}FEEDBACK_TTL for `modelport serve --feedback-store/--feedback-ttl`, which "
                    "server/settings.py does not define (yet)")
    fields = {f"{PREFIX}{name}".upper() for name in ServerSettings.model_fields}
    names = set(config(objects)) | {e["name"] for e in server(objects).get("env", [])}
    assert {n for n in names if n.startswith(PREFIX)} <= fields
    url = MANAGED_URL if target in MANAGED else secret_data(objects)["url"]
    settings = settings_from(config(objects) | {f"{PREFIX}FEEDBACK_STORE": url}, monkeypatch,
                             model_repository=Path("/models"))
    assert str(settings.feedback_store) == url
    assert settings.feedback_ttl == int(config(objects)[f"{PREFIX}FEEDBACK_TTL"]) == 604800


# ---------------------------------------------------------------- a real redis-server

def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: run `make test` (it installs Debian's redis-server and redis-tools)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRedis:
    """The StatefulSet's start script and redis.conf, with their paths moved into a temporary folder
    and the port made free; the rest exactly as rendered."""

    def __init__(self, objects, folder: Path) -> None:
        self.folder, self.port = folder, _free_port()
        conf_text = redis_conf_text(objects)
        conf = directives(conf_text)
        (self.included,) = conf["include"]
        self.config_dir = next(path for path, v in mounts(objects).items() if "configMap" in v)
        (folder / "data").mkdir(exist_ok=True)
        moved = {"dir": str(folder / "data"), "port": str(self.port), "bind": "127.0.0.1",
                 "include": str(folder / "redis-auth.conf")}
        lines = []
        for line in conf_text.splitlines():
            words = line.split()
            lines.append(f"{words[0]} {moved[words[0]]}" if words and words[0] in moved else line)
        (folder / "redis.conf").write_text("\n".join(lines) + "\n")
        script = start_script(objects)
        assert self.included in script and f"{self.config_dir}/redis.conf" in script
        self.script = script.replace(self.included, str(folder / "redis-auth.conf")).replace(
            f"{self.config_dir}/redis.conf", str(folder / "redis.conf"))
        probe = redis_container(objects)["readinessProbe"]["exec"]["command"]
        self.probe = [part.replace("-p 6379", f"-p {self.port}") for part in probe]
        self.process: subprocess.Popen | None = None

    def run_script(self, password: str, url: str) -> subprocess.Popen:
        env = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": password, "FEEDBACK_STORE_URL": url}
        log = open(self.folder / "redis.log", "ab")  # the process holds it
        return subprocess.Popen(["sh", "-c", self.script], env=env, stdout=log, stderr=subprocess.STDOUT)

    def start(self, password: str) -> None:
        self.password = password
        self.process = self.run_script(password, f"redis://:{password}@modelport-redis:6379/0")
        deadline = time.monotonic() + 20
        while self.probe_rc(password) != 0:
            assert self.process.poll() is None, f"redis-server exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"redis-server never answered PONG:\n{self.log()}"
            time.sleep(0.05)

    def probe_rc(self, password: str) -> int:
        env = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": password}
        return subprocess.run(self.probe, env=env, capture_output=True, timeout=10).returncode

    def cli(self, *args: str, stdin: str | None = None) -> str:
        env = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": self.password}
        done = subprocess.run([_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(self.port), *args], env=env,
                              input=stdin, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)  # the script exec'ed redis-server: this is its pid
            self.process.wait(timeout=20)
        self.process = None

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def local_redis(rendered, tmp_path):
    _binary("redis-server")
    _binary("redis-cli")
    redis = LocalRedis(rendered[IN_CLUSTER[0]], tmp_path)
    try:
        yield redis
    finally:
        redis.stop(signal.SIGKILL)


GOOD = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("password,url,reason", [
    ("CHANGE-ME", "redis://:CHANGE-ME@modelport-redis:6379/0", "placeholder"),
    ("short-but-ok", "redis://:short-but-ok@modelport-redis:6379/0", "at least 16"),
    ("has spaces and a quote'" * 2, "redis://:x@modelport-redis:6379/0", "only letters"),
    (GOOD, "redis://:another-password-entirely@modelport-redis:6379/0", "same password"),
    (GOOD, f"redis://user:{GOOD}@modelport-redis:6379/0", "same password"),
])
def test_redis_refuses_bad_secrets(local_redis, password, url, reason):
    process = local_redis.run_script(password, url)
    assert process.wait(timeout=20) == 1
    assert reason in local_redis.log() and "feedback-store.env" in local_redis.log()
    assert not (local_redis.folder / "redis-auth.conf").exists()


def test_the_shipped_secret_is_the_refused_placeholder(rendered):
    data = secret_data(rendered[IN_CLUSTER[0]])
    assert "CHANGE-ME" in data["password"] and data["url"] == f"redis://:{data['password']}@modelport-redis:6379/0"


def test_redis_runs_with_the_rendered_config(local_redis):
    redis = local_redis
    redis.start(GOOD)
    auth = redis.folder / "redis-auth.conf"
    assert auth.read_text() == f"requirepass {GOOD}\n" and (auth.stat().st_mode & 0o777) == 0o600
    assert redis.probe_rc("wrong-password-0123456789") != 0, "the probe fails without the right password"
    assert redis.cli("CONFIG", "GET", "maxmemory-policy").split() == ["maxmemory-policy", "volatile-ttl"]
    assert redis.cli("CONFIG", "GET", "appendonly").split() == ["appendonly", "yes"]
    assert int(redis.cli("CONFIG", "GET", "maxmemory").split()[1]) == 640 * 2**20

    # A pending prediction (with a TTL) and a window (without) survive a crash a second later.
    assert redis.cli("SET", "prediction:m:1:req-1", "0.93", "EX", "604800") == "OK"
    assert redis.cli("RPUSH", "window:m:1", "pair-1", "pair-2") == "2"
    time.sleep(1.5)  # appendfsync everysec
    redis.stop(signal.SIGKILL)
    redis.start(GOOD)
    assert redis.cli("GET", "prediction:m:1:req-1") == "0.93"
    assert 0 < int(redis.cli("TTL", "prediction:m:1:req-1")) <= 604800
    assert redis.cli("LRANGE", "window:m:1", "0", "-1").split() == ["pair-1", "pair-2"]

    # At maxmemory, the predictions nearest to expiry go first; the window (no TTL) stays.
    used = int(re.search(r"used_memory:(\d+)", redis.cli("INFO", "memory")).group(1))
    redis.cli("CONFIG", "SET", "maxmemory", str(used + 2**20))
    value = "x" * 8000
    commands = "".join(f"SET prediction:m:1:{i} {value} EX {100000 + i}\n" for i in range(600))  # ~4.8 MB
    redis.cli(stdin=commands)
    kept = [int(k.rsplit(":", 1)[1]) for k in redis.cli("--scan", "--pattern", "prediction:m:1:*").split()
            if k.rsplit(":", 1)[1].isdigit()]
    assert 0 < len(kept) < 600, "evicted some, not all"
    assert 599 in kept and 0 not in kept, "the shortest TTLs went first"
    assert redis.cli("LRANGE", "window:m:1", "0", "-1").split() == ["pair-1", "pair-2"]
    assert int(redis.cli("INFO", "stats").split("evicted_keys:")[1].split()[0]) > 0
    redis.stop()
    assert "ready to accept connections" in redis.log().lower()
