#!/usr/bin/env bash
# Set-up on a fresh Debian machine: the system packages the node and its tests use, then the
# Python package (editable) with torch and torchvision installed together, as MISSION.md asks.
# Idempotent: re-running installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
PY="${PYTHON:-python3}"

# dcmtk: storescu/storescp/findscu/movescu/getscu; dicom3tools: dciodvfy; orthanc: a real PACS;
# redis-server: the Celery broker; iproute2 + util-linux: loopback-only network namespaces for tests.
DEB_PACKAGES=(dcmtk dicom3tools orthanc redis-server iproute2 util-linux openssl)
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  # Keep the packages' maintainer scripts from starting Orthanc/Redis as system services: they
  # would listen on every interface and hold the ports. The node's scripts start them on demand.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created_policy=1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  [ "$created_policy" = 1 ] && $SUDO rm -f "$policy"
fi

# torch and torchvision in ONE pip call, so pip picks a matching pair (a CPU-only torch beside
# PyPI's CUDA torchvision breaks torchvision, transformers and segment-anything).
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "setup: installing torch + torchvision"
  "$PY" -m pip install -q "torch>=2.4" "torchvision>=0.19"
fi
echo "setup: installing mmedagent-node (editable) with test extras"
"$PY" -m pip install -q -e '.[test]'
# The viewers the SEG/SR tests open our objects in (OHIF, Cornerstone, chromium, orthanc-dicomweb).
bash scripts/setup_viewers.sh
echo "setup: done. Run the node with: mmed-node serve   (tests: scripts/test.sh)"
