#!/usr/bin/env bash
# Run a benchmark inside a private network namespace with only loopback up (as scripts/test.sh
# does for tests): dcmtk's storescp and Orthanc listen on every interface. Arguments: the bench
# module and its options, e.g.
#   bench/run.sh bench.bench_receive --reps 3 --json bench/results/receive.json
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${MMED_IN_NETNS:-}" != 1 ]; then
  exec unshare --net env MMED_IN_NETNS=1 bash "$0" "$@"
fi
ip link set lo up
export TCP_NODELAY=1          # dcmtk/Orthanc otherwise stall ~45 ms per instance (Nagle)
module="${1:-bench.bench_receive}"
shift || true
exec python -m "$module" "$@"
