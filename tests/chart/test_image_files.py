"""Static checks of the image's files. Building it is `make image-test`, never `make test`."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.chart.k8s import REPO, secret_like

pytestmark = pytest.mark.chart

DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(name: str) -> list[str]:
    """Arguments of every ``name`` instruction (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", joined, re.MULTILINE)]


def locked(path: str) -> dict[str, Version]:
    text = (REPO / path).read_text()
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)", text, re.MULTILINE)
    return {canonicalize_name(n): Version(v) for n, v in pins}


def test_multi_stage_on_an_official_python_311_by_default() -> None:
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in DOCKERFILE
    assert instructions("FROM") == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]


def test_non_root_numeric_user_and_pgx_entrypoint() -> None:
    (uid,) = re.findall(r"^ARG PGX_UID=(\d+)$", DOCKERFILE, re.MULTILINE)
    assert int(uid) > 0
    users = instructions("USER")
    assert users == ["${PGX_UID}:${PGX_UID}"]  # numeric via the ARG: runAsNonRoot can check it
    assert instructions("ENTRYPOINT") == ['["pgx"]']
    # The chart's default user is the image's.
    assert f"runAsUser: {uid}" in (REPO / "charts" / "pgx" / "values.yaml").read_text()


def test_no_secrets_in_the_image_definition() -> None:
    for arg in instructions("ENV") + instructions("ARG") + instructions("LABEL"):
        assert secret_like(arg) == [], arg
    assert not instructions("ADD"), "ADD can fetch URLs and unpack archives: use COPY"


def test_dependencies_install_from_hashed_locks() -> None:
    runs = instructions("RUN")
    locks = [r for r in runs if "-r /locks/" in r]
    assert locks and all(r.count("--require-hashes") == r.count("-r /locks/") for r in locks)
    (pgx,) = [r for r in runs if "/wheels" in r]
    assert "--no-index" in pgx and pgx.endswith("check")


def test_runtime_lock_satisfies_pyproject() -> None:
    pins = locked("scripts/image/requirements.lock")
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in scripts/image/requirements.lock: run scripts/image/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"locked {req.name}=={pins[name]} does not satisfy {req.specifier}: run scripts/image/lock.sh"
        )
    text = (REPO / "scripts/image/requirements.lock").read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.strip()):
        if "==" in block.splitlines()[0]:
            assert "--hash=sha256:" in block, block.splitlines()[0]


def test_build_lock_satisfies_the_build_system() -> None:
    pins = locked("scripts/image/build-requirements.lock")
    for dep in PYPROJECT["build-system"]["requires"]:
        req = Requirement(dep)
        assert req.specifier.contains(pins[canonicalize_name(req.name)])


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "pgx_core",
        "plugins",
        "compat",
        "scripts/image/requirements.lock",
        "scripts/image/build-requirements.lock",
    }
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.MULTILINE):
        for item in source.split():
            assert item.rstrip("/") in allowed, f"Dockerfile copies {item}, which .dockerignore leaves out"


def test_image_test_is_a_make_target_but_not_part_of_make_test() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^image-test:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None, "Makefile has no image-test recipe"
    assert "scripts/image-test.sh" in recipe.group(1)
    (test_deps,) = re.findall(r"^test:([^#\n]*)", makefile, re.MULTILINE)
    assert "image" not in test_deps


def test_scripts_parse() -> None:
    for script in ("scripts/image-test.sh", "scripts/image/lock.sh"):
        proc = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
