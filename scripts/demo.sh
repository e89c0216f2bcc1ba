#!/usr/bin/env bash
# One command: install napari-atomnet (with napari + PyQt6) into .venv and run the main job on
# the bundled sample data. Results go to ./atomnet_demo (atoms.csv, atoms.json, overlay.png).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh qt
.venv/bin/atomnet demo --out "${1:-atomnet_demo}" --overwrite
