"""k8s/components/model-keys: the keys reach the server read-only, the decryption keys from a
Secret and only to the server container, and the settings the component sets name the folders it
mounts and parse as ServerSettings."""

from __future__ import annotations

from pathlib import Path

import pytest

from .render import TARGETS
from .test_manifests import base_name, config, containers, deployment, pod_spec, server
from .test_settings import settings_from

WITH_KEYS = [t for t in TARGETS if "model-keys" in t.components]


def test_both_overlays_render_the_component():
    assert {t.overlay for t in WITH_KEYS} == {"cpu", "gpu"}


@pytest.mark.parametrize("target", WITH_KEYS, ids=[t.id for t in WITH_KEYS])
def test_keys_are_mounted_read_only_where_the_settings_point(rendered, target, monkeypatch):
    objects = rendered[target]
    volumes = {v["name"]: v for v in pod_spec(deployment(objects))["volumes"]}
    decrypt, verify = volumes["model-keys"], volumes["verify-keys"]
    assert decrypt["secret"]["secretName"] == "modelport-model-keys" and decrypt["secret"]["optional"] is False
    assert decrypt["secret"]["defaultMode"] & 0o007 == 0, "decryption keys are not world-readable"
    assert verify["configMap"]["name"] == "modelport-verify-keys" and verify["configMap"]["optional"] is False
    mounts = {m["name"]: m for m in server(objects)["volumeMounts"]}
    for name in ("model-keys", "verify-keys"):
        assert mounts[name].get("readOnly") is True
    for c in containers(deployment(objects)):
        if c["name"] != "modelport":
            assert "model-keys" not in {m["name"] for m in c.get("volumeMounts", [])}, c["name"]
    for job in [o for o in objects if o["kind"] == "CronJob"]:
        spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert "model-keys" not in {v["name"] for v in spec.get("volumes", [])}
    settings = settings_from(config(objects), monkeypatch, model_repository=Path("/models"))
    assert settings.verify_key == (Path(mounts["verify-keys"]["mountPath"]),)
    assert settings.decrypt_key_file == (Path(mounts["model-keys"]["mountPath"]),)


def test_the_component_adds_no_object(rendered):
    """The ConfigMap of public keys and the Secret are the user's: no key is in version control."""
    cpu, = [t for t in TARGETS if t.overlay == "cpu" and not t.components]
    alone, = [t for t in WITH_KEYS if t.components == ("model-keys",)]
    kinds = lambda target: {(o["kind"], base_name(o["metadata"]["name"])) for o in rendered[target]}  # noqa: E731
    assert kinds(alone) == kinds(cpu)
