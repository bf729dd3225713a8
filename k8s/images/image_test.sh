#!/usr/bin/env bash
# `make image-test`: prove the CPU server image for real, with podman, on this machine.
#
#   1. a local stand-in for the Dockerfile's base: Debian bookworm made with debootstrap, with
#      Debian's python3 (3.11), tagged as the Dockerfile's base image name (base images cannot be
#      pulled here; a local image cannot carry the pinned digest, so PYTHON_IMAGE is overridden
#      with that name minus the digest, and the build never pulls);
#   2. podman build of k8s/images/Dockerfile.cpu (multi-stage: wheel, venv, slim runtime);
#   3. a tiny ONNX model (tests/models.py) in a folder mounted read-only at /models, the container
#      run as Kubernetes runs it (non-root, read-only root filesystem, no capabilities, the base
#      ConfigMap's MODELPORT_* settings), then called with modelport.client.Client;
#   4. the image size.
#
# Environment: PY (python with modelport[dev], default .venv/bin/python), IMAGE (tag to build),
# IMAGE_TEST_WORK (work folder, kept between runs: the base is made once), DEBIAN_MIRROR.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PY:-$ROOT/.venv/bin/python}
IMAGE=${IMAGE:-localhost/modelport-cpu:image-test}
WORK=${IMAGE_TEST_WORK:-/var/tmp/modelport-image-test}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKERFILE=k8s/images/Dockerfile.cpu
NAME=modelport-image-test
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

say() { printf '\n>> %s\n' "$*"; }

# --- tools: Debian's podman, runc and debootstrap
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (Debian packages)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- podman settings for this machine: runc as the runtime, no default ulimits (the sandbox
# refuses raising them). Our own containers.conf, so the machine's configuration is untouched.
mkdir -p "$WORK"
cat > "$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"
[ "$(id -u)" = 0 ] || { echo "image-test needs root (podman with runc, debootstrap)"; exit 1; }

# --- the base: the Dockerfile's PYTHON_IMAGE without its digest
BASE_PINNED=$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$DOCKERFILE" | head -n1)
BASE=${BASE_PINNED%@*}
if podman image exists "$BASE"; then
  say "base $BASE: already here (podman rmi $BASE to remake it)"
else
  say "making the base $BASE with debootstrap (Debian bookworm, python3 3.11) from $MIRROR"
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  # This machine reaches PyPI through a TLS-inspecting egress proxy: its CA bundle goes into
  # the stand-in base (never into the Dockerfile), and pip is told to use it.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$rootfs/etc/pip.conf"
  ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python3"
  ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
fi
podman run --rm "$BASE" python3 -c 'import sys; print("base python", sys.version.split()[0])'

# --- build
say "podman build -f $DOCKERFILE -t $IMAGE (PYTHON_IMAGE=$BASE, --pull=never)"
podman build --pull=never --build-arg "PYTHON_IMAGE=$BASE" -f "$DOCKERFILE" -t "$IMAGE" .

# --- a model volume and the container, run as the Deployment runs it
MODELS="$WORK/models"
rm -rf "$MODELS"
"$PY" -c "
from pathlib import Path
from tests import models
models.save(models.scale(2.0), Path('$MODELS'), 'm')
"
chmod -R a+rX "$MODELS"
read -r GRPC_PORT METRICS_PORT < <("$PY" -c "
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(('127.0.0.1', 0))
print(*(s.getsockname()[1] for s in socks))
")

podman rm -f "$NAME" >/dev/null 2>&1 || true
trap 'podman rm -f "$NAME" >/dev/null 2>&1 || true' EXIT
say "podman run $IMAGE: /models read-only, read-only root, user 10001, no capabilities, k8s/base/server.env"
podman run -d --name "$NAME" \
  --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
  --env-file k8s/base/server.env \
  -v "$MODELS:/models:ro" \
  -p "127.0.0.1:$GRPC_PORT:8001" -p "127.0.0.1:$METRICS_PORT:8002" \
  "$IMAGE" >/dev/null
podman exec "$NAME" sh -c 'echo "in the container: $(id)"; command -v modelport'

# --- call it with the client
say "modelport.client.Client(127.0.0.1:$GRPC_PORT).infer('m', x)"
"$PY" - "$GRPC_PORT" "$METRICS_PORT" <<'EOF' || { podman logs "$NAME" | tail -30; exit 1; }
import sys, time, urllib.request
import numpy as np
from modelport.client import Client

grpc_port, metrics_port = sys.argv[1], sys.argv[2]
with Client(f"127.0.0.1:{grpc_port}", timeout=5) as client:
    deadline = time.monotonic() + 120
    while True:
        try:
            if client.is_server_ready():
                break
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the server did not become ready in 120 s")
        time.sleep(0.5)
    print("server:", client.server_metadata())
    print("model:", client.model_metadata("m"))
    x = np.array([[1.0, 2.0, 3.0], [-1.5, 0.0, 4.25]], np.float32)
    out = client.infer("m", {"x": x})
    print("x =", x.tolist())
    print("infer ->", {k: v.tolist() for k, v in out.items()})
    assert np.allclose(out["y"], 2 * x), out
text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
print("metrics:", next(l for l in text.splitlines() if l.startswith("modelport_inference_request_success_total")))
EOF

say "graceful stop (SIGTERM; the server drains, MODELPORT_SHUTDOWN_GRACE_SECONDS)"
podman stop -t 45 "$NAME" >/dev/null
podman logs "$NAME" 2>&1 | tail -8

say "image size"
podman images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "modelport-cpu|python" || true
podman image inspect --format 'image {{index .RepoTags 0}}: {{.Size}} bytes' "$IMAGE"
podman image inspect --format 'base  {{index .RepoTags 0}}: {{.Size}} bytes' "$BASE"
say "image-test passed"
