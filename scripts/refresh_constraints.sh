#!/usr/bin/env bash
# Refresh constraints.txt, the versions CI installs: resolve the newest versions that
# pyproject.toml's ranges allow, in a new virtual environment with no pip cache, and write
# them down. Run it on purpose (a new SDK release, a security fix), then run the suite on a
# fresh clone (`CI=true bash .ci/run`) before committing the new file.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
python="$work/venv/bin/python"
"$python" -m pip install --no-cache-dir --upgrade pip
# The portable llama.cpp build, as .ci/run makes it (see there).
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" \
    "$python" -m pip install --no-cache-dir -e ".[dev]"
# Build backends are resolved in pip's isolated build environments, where the constraints
# apply too: install them here so that the freeze below names their versions.
"$python" -m pip install --no-cache-dir scikit-build-core
{
    echo "# The versions CI installs (.ci/run passes this file to pip as constraints)."
    echo "# Written by scripts/refresh_constraints.sh on $(date -u +%F) with $("$python" --version)."
    # --all keeps pip itself; lmact, installed editable, is not a constraint.
    "$python" -m pip freeze --all --exclude-editable | grep -v '^lmact[= @]'
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pinned packages"
