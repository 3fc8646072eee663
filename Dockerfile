# pgx: one image for the pipeline driver (`pgx run …`) and for Ray workers (KubeRay runs
# `ray start` in it): non-root numeric user, no secrets, entrypoint `pgx`.
#
#   docker build -t pgx:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp pgx:0.1.0 demo --dir /tmp/demo
#
# PYTHON_IMAGE must provide CPython 3.11 as `python3` with the venv module, bash and useradd.
# The default is the official image; `make image-test` passes a Debian bookworm base it builds
# itself (debootstrap + Debian's python3 3.11) because no registry is reachable there.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv in /opt/pgx with the locked dependencies and the pgx wheel -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1
# Dependencies first, in their own layer (rebuilt only when a lock changes): exact versions,
# every download checked against its sha256 (scripts/image/lock.sh writes the locks).
COPY scripts/image/requirements.lock scripts/image/build-requirements.lock /locks/
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps --only-binary=:all: -r /locks/build-requirements.lock \
 && python3 -m venv --without-pip /opt/pgx \
 && /opt/build/bin/pip --python /opt/pgx/bin/python install \
      --require-hashes --no-deps --only-binary=:all: -r /locks/requirements.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pgx_core/ pgx_core/
COPY plugins/ plugins/
COPY compat/ compat/
# pgx itself: built offline with the locked backend, installed without touching the index.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --no-index --wheel-dir /wheels . \
 && /opt/build/bin/pip --python /opt/pgx/bin/python install --no-deps --no-index /wheels/pgx-*.whl \
 && /opt/build/bin/pip --python /opt/pgx/bin/python check

# --- runtime ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG PGX_UID=10001
RUN groupadd --system --gid "${PGX_UID}" pgx \
 && useradd --system --uid "${PGX_UID}" --gid "${PGX_UID}" --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin pgx
COPY --from=build /opt/pgx /opt/pgx
# Login shells (KubeRay starts workers with `bash -lc`) reset PATH: link the two commands.
RUN ln -s /opt/pgx/bin/pgx /usr/local/bin/pgx \
 && ln -s /opt/pgx/bin/ray /usr/local/bin/ray
# The root filesystem may be read-only (the chart makes it so): everything that writes goes to
# /tmp, which the pod mounts as an emptyDir. RAY_TMPDIR holds Ray's sessions and spilled objects.
ENV PATH=/opt/pgx/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    RAY_TMPDIR=/tmp/ray
WORKDIR /tmp
# Numeric, so that Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER ${PGX_UID}:${PGX_UID}
ENTRYPOINT ["pgx"]
CMD ["--help"]
LABEL org.opencontainers.image.title="pgx" \
      org.opencontainers.image.description="Pipeline runtime for APCD claims data lakes (driver and Ray workers)" \
      org.opencontainers.image.licenses="Apache-2.0"
