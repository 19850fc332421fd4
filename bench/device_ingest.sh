#!/usr/bin/env bash
# On the GPU machine (run from the repository root there, with .whl and .devcarry carried; see
# bench/device_carry.sh): install the carried packages and dcmtk, then run the spool benchmark and
# the ingest benchmark on four associations, the node against dcmtk and against each carried ref.
# Results go to $OUT (the device tool's folder) or /tmp/out. Extra arguments go to bench_receive.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
site=/tmp/carry-site
"$py" -m pip install -q --no-index --no-deps --target "$site" .whl/*.whl
echo "$site" > "$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/000carry.pth"
if [ ! -x /usr/bin/storescp ]; then  # the machine's own dcmtk, where it has one
  mkdir -p /opt/dc /usr/share/libdcmtk17
  tar -xJf .devcarry/dcmtk.tar.xz -C /opt/dc
  for prog in storescu storescp echoscu; do
    printf '#!/bin/sh\nLD_LIBRARY_PATH=/opt/dc/lib exec /opt/dc/bin/%s "$@"\n' "$prog" > "/usr/bin/$prog"
    chmod +x "/usr/bin/$prog"
  done
  cp /opt/dc/share/dicom.dic /usr/share/libdcmtk17/
fi
# The benchmarks' own loopback (no network namespace there), dcmtk without Nagle's delay, files on
# the machine's disk rather than a memory file system.
export TCP_NODELAY=1 MMED_IN_NETNS=1 PYTHONUNBUFFERED=1 TMPDIR=/var/tmp
out=${OUT:-/tmp/out}
mkdir -p "$out"
nproc; uname -r; "$py" --version; findmnt -no SOURCE,FSTYPE,OPTIONS -T /var/tmp || true
# Whether the file system has a journal (what the one-commit variant relies on): ext4's journals
# are listed under /proc/fs/jbd2.
echo "ext4 journals: $(ls /proc/fs/jbd2 2>/dev/null | tr '\n' ' ')"
refs=()
for folder in .devcarry/ref-*; do
  [ -d "$folder" ] && refs+=(--node-ref "$folder")
done
"$py" -m bench.bench_spool --writers 1 4 --rounds "${SPOOL_ROUNDS:-2}" --count "${SPOOL_COUNT:-150}" \
  --json "$out/spool.json"
"$py" -m bench.bench_receive --receivers dcmtk node --node-receivers 4 --parallel 4 --reps 3 \
  "${refs[@]}" --json "$out/receive.json" "$@"
