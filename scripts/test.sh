#!/usr/bin/env bash
# One command: install the system libraries napari needs headless (Xvfb, OpenGL, Qt's xcb
# libraries; Debian/Ubuntu), the package with its test and training extras into .venv, and run
# the whole test suite under a virtual screen.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
debs=(xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglib2.0-0 libfontconfig1 libdbus-1-3
      libx11-xcb1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0
      libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0
      libxcb-xinerama0 libxcb-xkb1)
missing=()
for d in "${debs[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
bash scripts/setup_env.sh qt,train,test
exec xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python -m pytest "$@"
