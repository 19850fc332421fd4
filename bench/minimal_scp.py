"""Reference receiver for bench_receive (not part of the node): the least a pynetdicom storage
SCP can do, so the node's receive path is compared with pynetdicom itself, not only with dcmtk.

    python -m bench.minimal_scp PORT OUT_DIR [--mode raw|fsync|none] [--max-pdu N]

``raw`` writes each dataset's bytes as received (Part 10, no re-encoding, no fsync); ``fsync``
adds an fsync of each file; ``none`` acknowledges without storing (protocol cost only).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.events import Event

#: C-STORE Success (PS3.4 B.2.3).
STATUS_SUCCESS = 0x0000
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


def make_store_handler(out_dir: Path, mode: str) -> Any:
    def on_store(event: Event) -> int:
        if mode == "none":
            return STATUS_SUCCESS
        data = event.encoded_dataset(include_meta=True)
        sop = str(getattr(event.request, "AffectedSOPInstanceUID", "unknown"))
        with open(out_dir / f"{sop}.dcm", "wb") as fh:
            fh.write(data)
            if mode == "fsync":
                fh.flush()
                os.fsync(fh.fileno())
        return STATUS_SUCCESS

    return on_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--mode", choices=("raw", "fsync", "none"), default="raw")
    parser.add_argument(
        "--max-pdu", type=int, default=0, help="0: unlimited (as the node)"
    )
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    ae = AE(ae_title="MINIMAL")
    ae.maximum_pdu_size = args.max_pdu
    ae.supported_contexts = StoragePresentationContexts
    ae.add_supported_context(VERIFICATION_SOP_CLASS)
    handlers: list[Any] = [
        (evt.EVT_C_STORE, make_store_handler(args.out_dir, args.mode))
    ]
    print(f"minimal SCP on 127.0.0.1:{args.port}", flush=True)
    ae.start_server(("127.0.0.1", args.port), block=True, evt_handlers=handlers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
