"""``mmed-node``: the command line. Each command group lives beside the code it drives and
exposes ``register(subparsers)``; this module only assembles them."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from dicom_node import logsafe

#: Modules of the command groups; each defines ``register(subparsers)`` adding its commands.
COMMAND_GROUPS: tuple[str, ...] = (
    "dicom_node.app.commands.serve",
    "dicom_node.app.commands.status",
    "dicom_node.app.commands.jobs",
    "dicom_node.app.commands.audit",
    "dicom_node.app.commands.prune",
    "dicom_node.app.commands.rules",
    "dicom_node.app.commands.retrieve",
    "dicom_node.app.commands.worker",
    "dicom_node.app.commands.tools",
    "dicom_node.app.commands.agent",
    "dicom_node.app.commands.models",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmed-node",
        description=(
            "DICOM inference node: receives series from a PACS, runs the MMedAgent medical agent "
            "on them, and sends DICOM SEG + Structured Reports back."
        ),
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in COMMAND_GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # a command group not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom logs whole C-FIND/C-MOVE/C-GET identifiers (patient names, IDs) at INFO: keep it
    # at WARNING unless the operator asks for debug output (-vv), so logs carry no PHI by default.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if args.verbose >= 2 else logging.WARNING)
    # highdicom narrates every module it copies at INFO: only useful when debugging.
    logging.getLogger("highdicom").setLevel(logging.DEBUG if args.verbose >= 2 else logging.WARNING)
    # Peer-supplied text escaped, library tracebacks of bad input on one line (logsafe.py).
    logsafe.install(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
