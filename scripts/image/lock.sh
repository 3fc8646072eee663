#!/usr/bin/env bash
# Regenerate the image's dependency locks (exact versions + sha256 hashes) from pyproject.toml.
#
#   scripts/image/lock.sh            # after changing [project].dependencies or [build-system]
#
# requirements.lock        pgx's runtime dependencies, pinned to the versions in .venv (what the
#                          tests ran against) when .venv exists, else the newest that resolve.
# build-requirements.lock  the build backend (setuptools, wheel) used to build pgx's wheel.
# Both are for CPython 3.11 on x86_64 manylinux, the image's platform. tests/chart checks that
# requirements.lock still satisfies pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=scripts/image
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install -q uv
uv=("$tools/venv/bin/uv" pip compile --quiet --generate-hashes --no-header --python-version 3.11
    --python-platform x86_64-manylinux_2_28)
constraints=()
if [[ -x .venv/bin/pip ]]; then
  .venv/bin/pip freeze --exclude-editable | grep -v '^-e ' > "$tools/venv.txt"
  constraints=(--constraint "$tools/venv.txt")
fi
"${uv[@]}" "${constraints[@]}" pyproject.toml -o "$out/requirements.lock"
python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
  > "$tools/build.in"
"${uv[@]}" "$tools/build.in" -o "$out/build-requirements.lock"
# uv names the temporary input in "# via" comments; keep the files free of machine-specific paths.
sed -i "s|$tools/||g" "$out/requirements.lock" "$out/build-requirements.lock"
echo "wrote $out/requirements.lock ($(grep -c '==' "$out/requirements.lock") packages)" \
     "and $out/build-requirements.lock ($(grep -c '==' "$out/build-requirements.lock") packages)"
