#!/usr/bin/env bash
# Set-up on a fresh Debian machine: the system packages the node and its tests use, then the
# Python package (editable) with torch and torchvision installed together, as MISSION.md asks.
# Idempotent: re-running installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/debian_packages.sh
source scripts/debian_packages.sh

PY="${PYTHON:-python3}"

# dcmtk: storescu/storescp/findscu/movescu/getscu; dicom3tools: dciodvfy; orthanc: a real PACS;
# redis-server: the Celery broker; iproute2 + util-linux: loopback-only network namespaces for tests.
DEB_PACKAGES=(dcmtk dicom3tools orthanc redis-server iproute2 util-linux openssl)
install_debian_packages setup "${DEB_PACKAGES[@]}"

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
