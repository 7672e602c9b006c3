#!/usr/bin/env bash
# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
#
# Run a command so that DDS can never leave this machine: inside a fresh network namespace that holds
# only the loopback interface, with localhost-only discovery, a ROS domain id of its own and the
# shared-memory Fast DDS profile (camera images exceed the default 512 KB segment).
#
# Usage: tools/isolated.sh <command> [args...]
#   ROS_DOMAIN_ID may be preset (1-101); otherwise one is derived from the PID.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ "${TWINBRAIN_ISOLATED:-}" != 1 ]; then
  export TWINBRAIN_ISOLATED=1
  # As root a plain network namespace; otherwise a user namespace grants the right to make one.
  if [ "$(id -u)" = 0 ]; then exec unshare -n "$0" "$@"; else exec unshare -n --map-root-user "$0" "$@"; fi
fi
ip link set lo up
# Refuse to run if anything but loopback is present: the namespace did not take.
if ip -o link show | grep -qv ': lo:'; then
  echo "[isolated] refusing: a non-loopback interface is visible" >&2; exit 3
fi
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( ($$ % 100) + 1 ))}
export FASTDDS_DEFAULT_PROFILES_FILE=${FASTDDS_DEFAULT_PROFILES_FILE:-$ROOT/config/fastdds_shm.xml}
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
exec "$@"
