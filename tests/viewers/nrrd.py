"""Read the NRRD files dcmqi writes (``segimage2itkimage -t nrrd``): header and voxels.

Only what dcmqi produces is supported: a 3D volume, raw or gzip encoding, little endian, the
``space directions`` / ``space origin`` geometry in LPS millimetres.
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TYPES = {"short": np.int16, "unsigned short": np.uint16, "unsigned char": np.uint8, "uchar": np.uint8,
         "signed char": np.int8, "int": np.int32, "unsigned int": np.uint32}


@dataclass(frozen=True)
class Nrrd:
    #: Voxels indexed [slice, row, column] (NRRD stores x fastest).
    voxels: np.ndarray
    origin: np.ndarray
    #: One row per axis (x = column step, y = row step, z = slice step), in mm.
    directions: np.ndarray


def _vectors(text: str) -> np.ndarray:
    return np.array([[float(v) for v in group.split(",")] for group in re.findall(r"\(([^)]*)\)", text)])


def read_nrrd(path: Path) -> Nrrd:
    raw = Path(path).read_bytes()
    head, _, body = raw.partition(b"\n\n")
    fields = {}
    for line in head.decode("ascii").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.lstrip("=").strip()
    if fields.get("endian", "little") != "little" or int(fields["dimension"]) != 3:
        raise ValueError(f"unsupported NRRD {path}: {fields}")
    data = gzip.decompress(body) if fields["encoding"] in ("gzip", "gz") else body
    sizes = [int(v) for v in fields["sizes"].split()]
    voxels = np.frombuffer(data, dtype=TYPES[fields["type"]]).reshape(sizes[::-1])
    return Nrrd(voxels, _vectors(fields["space origin"])[0], _vectors(fields["space directions"]))
