#!/usr/bin/env bash
# `make image-test`: build the pgx image with podman and run it the way the chart runs it.
#
# 1. A Python base image is made locally (no registry is needed): debootstrap of Debian 12
#    bookworm with Debian's python3 (3.11), imported into podman. It is reused on later runs
#    (PGX_REBUILD_BASE=1 makes it again). The Dockerfile's default base stays the official
#    python:3.11-slim-bookworm; this one is passed as the PYTHON_IMAGE build argument.
# 2. `podman build` of the repository's Dockerfile (pip downloads the locked wheels from PyPI).
# 3. Checks of the image: numeric non-root USER, entrypoint `pgx`, no credential variables.
# 4. `pgx --version`, the cluster-mode imports and `pgx demo` in the container as that user, with a read-only root
#    filesystem, a size-limited tmpfs at /tmp, all capabilities dropped, no privilege
#    escalation and no network — the pod's settings (charts/pgx).
#
# Needs: root, podman, debootstrap (for the base), and the network to Debian's and PyPI's
# package servers. On Debian/Ubuntu: apt-get install -y podman buildah debootstrap
# (plus runc where crun cannot run containers, e.g. inside another container).
# Takes about 6 minutes from nothing on 2 cores (base ≈2 min, build ≈3.5 min, demo ≈0.5 min),
# about 1.5 minutes when only pgx's sources changed (cached base and dependency layer);
# see the timing lines it prints. Not part of `make test`.
#
# Environment: PGX_TEST_IMAGE (default localhost/pgx:image-test), PGX_BASE_IMAGE (default
# localhost/pgx-python:3.11-bookworm), PGX_REBUILD_BASE=1, PGX_NO_CACHE=1 (build without
# podman's layer cache), DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${PGX_TEST_IMAGE:-localhost/pgx:image-test}
BASE=${PGX_BASE_IMAGE:-localhost/pgx-python:3.11-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
EXPECTED_USER=10001:10001
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')

say() { printf 'image-test: %s\n' "$*"; }
die() { printf 'image-test: FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

command -v podman >/dev/null || die "podman is not installed (apt-get install -y podman buildah debootstrap)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
timings=()

# --- 1. base image ---------------------------------------------------------------------------
t=$(now)
if [[ ${PGX_REBUILD_BASE:-0} != 1 ]] && podman image exists "$BASE"; then
  say "base image $BASE exists (PGX_REBUILD_BASE=1 makes it again)"
  timings+=("base image: reused")
else
  [[ $(id -u) == 0 ]] || die "making the base image needs root (debootstrap)"
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install -y debootstrap)"
  say "making $BASE: debootstrap bookworm + python3 from $MIRROR"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$work/rootfs" "$MIRROR" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
  # Trust what this machine trusts (a TLS-inspecting proxy's CA, say), so that pip inside the
  # build reaches PyPI wherever this machine does. Test base only: the Dockerfile adds nothing.
  if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    cp /etc/ssl/certs/ca-certificates.crt "$work/rootfs/etc/ssl/certs/ca-certificates.crt"
  fi
  tar --numeric-owner -C "$work/rootfs" -c . | podman import \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' - "$BASE" > "$work/import.log" 2>&1 \
    || { cat "$work/import.log" >&2; die "podman import failed"; }
  rm -rf "$work/rootfs"
  timings+=("base image: $(since "$t") s (debootstrap + import)")
fi

# --- how this machine runs containers ----------------------------------------------------------
# crun cannot run under a hybrid cgroup v1/v2 layout, and a container without CAP_SYS_RESOURCE
# cannot raise rlimits to podman's defaults: fall back to runc with the limits this shell has.
global=()
limits=()
probe() { podman "${global[@]}" run --rm --network none "${limits[@]}" "$BASE" true > /dev/null 2>&1; }
if ! probe; then
  nofile=$(ulimit -n); [[ $nofile == unlimited || $nofile -gt 65536 ]] && nofile=65536
  ok=0
  for runtime in runc crun; do
    command -v "$runtime" >/dev/null || continue
    for nproc in 32768 16384 4096; do
      global=(--runtime "$runtime")
      limits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
      if probe; then ok=1; break 2; fi
    done
  done
  [[ $ok == 1 ]] || die "podman cannot run a container here (try: apt-get install -y runc)"
fi
say "podman ${global[*]:-(defaults)} ${limits[*]:-}"

# --- 2. build --------------------------------------------------------------------------------
build_flags=(--build-arg "PYTHON_IMAGE=$BASE" --tag "$IMAGE" --file Dockerfile)
[[ ${PGX_NO_CACHE:-0} == 1 ]] && build_flags+=(--no-cache)
say "building $IMAGE from Dockerfile on $BASE"
previous=$(podman image inspect "$IMAGE" --format '{{.Id}}' 2>/dev/null || true)
t=$(now)
podman "${global[@]}" build "${limits[@]}" "${build_flags[@]}" . > "$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; die "podman build failed"; }
# The image this run replaced is now untagged: remove it (only it) so reruns do not fill the disk.
if [[ -n $previous && $previous != "$(podman image inspect "$IMAGE" --format '{{.Id}}')" ]]; then
  podman rmi "$previous" > /dev/null 2>&1 || true
fi
cached=$(grep -c -- '--> Using cache' "$work/build.log" || true)
timings+=("build: $(since "$t") s ($cached cached steps)")
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
timings+=("image size: $((size / 1000000)) MB")

# --- 3. image checks -------------------------------------------------------------------------
user=$(podman image inspect "$IMAGE" --format '{{.Config.User}}')
[[ $user == "$EXPECTED_USER" ]] || die "image USER is '$user', expected $EXPECTED_USER (numeric, non-root)"
entrypoint=$(podman image inspect "$IMAGE" --format '{{json .Config.Entrypoint}}')
[[ $entrypoint == '["pgx"]' ]] || die "image ENTRYPOINT is $entrypoint, expected [\"pgx\"]"
if podman image inspect "$IMAGE" --format '{{range .Config.Env}}{{println .}}{{end}}' \
    | grep -Eiq '^(AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|[A-Z_]*(PASSWORD|TOKEN|SECRET)[A-Z_]*)='; then
  die "the image's environment holds a credential variable"
fi
say "image: user $user, entrypoint $entrypoint, no credential variables"

# --- 4. run it as the pod does -----------------------------------------------------------------
run=(podman "${global[@]}" run --rm "${limits[@]}"
     --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,size=4g,mode=1777 --shm-size 1g
     --cap-drop ALL --security-opt no-new-privileges --network none)

t=$(now)
ids=$("${run[@]}" --entrypoint python3 "$IMAGE" -c 'import os; print(os.getuid(), os.getgid())')
[[ $ids == "10001 10001" ]] || die "the container runs as uid/gid '$ids', expected 10001 10001"
if "${run[@]}" --entrypoint sh "$IMAGE" -c 'touch /opt/pgx/x' 2>/dev/null; then
  die "the root filesystem is writable"
fi
out=$("${run[@]}" "$IMAGE" --version)
[[ $out == "pgx $VERSION" ]] || die "pgx --version printed '$out', expected 'pgx $VERSION'"
say "$out (uid/gid $ids, read-only root)"
cat > "$work/plugins.py" <<'PY'
import json, sys
plugins = json.load(sys.stdin)["plugins"]
failed = [f"{p['name']}: {p['error']}" for p in plugins if p["error"]]
print("FAILED " + "; ".join(failed) if failed else ", ".join(s for p in plugins for s in p["stages"]))
PY
plugins=$("${run[@]}" "$IMAGE" plugins --json | python3 "$work/plugins.py")
[[ $plugins != FAILED* ]] || die "plugins failed to load in the image: ${plugins#FAILED }"
say "stages in the image: $plugins"
# Cluster mode: Ray Client for drivers (ray://) and the job-submission SDK a KubeRay RayJob uses.
"${run[@]}" --entrypoint python3 "$IMAGE" -c 'import ray.util.client, ray.dashboard.modules.job.sdk' \
  || die "the image lacks Ray Client or the Ray job-submission SDK"
say "Ray Client and job submission import in the image"
timings+=("pgx --version, plugins: $(since "$t") s (with the uid and read-only checks)")

say "running pgx demo (read-only root, tmpfs /tmp, no network, all capabilities dropped)"
t=$(now)
if ! "${run[@]}" "$IMAGE" demo --dir /tmp/demo > "$work/demo.log" 2>&1; then
  tail -40 "$work/demo.log" >&2
  die "pgx demo failed in the container"
fi
grep -E '^pgx demo:|^  (spec|lake|summary):|^    ' "$work/demo.log" || tail -15 "$work/demo.log"
timings+=("pgx demo: $(since "$t") s")

say "OK"
for line in "${timings[@]}"; do say "  $line"; done
