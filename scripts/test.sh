#!/usr/bin/env bash
# The test command. Runs pytest inside a private network namespace with only loopback up:
# dcmtk's storescp and Orthanc listen on every interface, so inside the namespace the real peers
# the tests start are reachable from the tests alone. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${MMED_IN_NETNS:-}" != 1 ]; then
  exec unshare --net env MMED_IN_NETNS=1 bash "$0" "$@"
fi
ip link set lo up
export TCP_NODELAY=1          # dcmtk/Orthanc otherwise stall ~45 ms per instance (Nagle)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # models load from local paths only
exec python -m pytest "$@"
