#!/usr/bin/env bash
# Create (or update) the project's virtual environment .venv and install napari-atomnet into it.
# Usage: scripts/setup_env.sh [EXTRAS]     e.g. scripts/setup_env.sh qt,train,test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-qt}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch is pinned in the train extra: 2.13.0 is the CPU build on these machines (an unpinned
# torch pulls several GB of CUDA packages).
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
