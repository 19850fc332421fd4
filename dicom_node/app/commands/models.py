"""``mmed-node models list|verify|fetch``: the models each tool needs, checked and set up in one command.

* ``list``: per catalogue entry (``tools/model_catalogue.json``) the tools that use it, the official
  release, licence, revision and expected files, and whether ``fetch`` can download it.
* ``verify NAME DIR`` checks one folder as a catalogue entry; ``verify --config FILE`` checks every
  model the config names (tool sections and the planner). ``--load`` also loads each through the
  tool's own loader.
* ``fetch NAME --to DIR`` downloads the official files (or from ``--mirror``), verifies their
  published checksums and prints the config section to paste.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from config.loader import ConfigError, load_config
from tools.model_catalogue import Catalogue, ModelEntry, load_catalogue
from tools.model_fetch import FetchError, fetch
from tools.model_verify import VerifyReport, manifest_entry, verify
from tools.progress import progress_bar

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    models = subparsers.add_parser("models", help="list, verify and fetch the models the tools need")
    sub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--catalogue", type=Path, metavar="FILE",
                       help="another catalogue JSON (default: the one shipped with the node)")
        p.add_argument("--json", action="store_true", help="print JSON")

    lister = sub.add_parser("list", help="each model: which tools use it, release, licence, files")
    common(lister)
    lister.set_defaults(func=cmd_list)

    checker = sub.add_parser("verify", help="check model folders: files, checksums, format, shapes")
    checker.add_argument("name", nargs="?", metavar="NAME", help="catalogue entry (with DIR)")
    checker.add_argument("folder", nargs="?", type=Path, metavar="DIR", help="the model folder")
    checker.add_argument("--config", metavar="FILE", help="check every model this node config names")
    checker.add_argument("--load", action="store_true", help="also load each through the tool's loader")
    checker.add_argument("--no-checksums", action="store_true", help="skip hashing (large models)")
    common(checker)
    checker.set_defaults(func=cmd_verify)

    fetcher = sub.add_parser("fetch", help="download a model from its official release, checksums verified")
    fetcher.add_argument("name", metavar="NAME", help="catalogue entry")
    fetcher.add_argument("--to", required=True, type=Path, metavar="DIR", help="model folder to fill")
    fetcher.add_argument("--mirror", metavar="URL", help="base URL of a site mirror: URL/NAME/FILE")
    fetcher.add_argument("--allow-unverified", action="store_true",
                         help="accept weights whose release publishes no checksum")
    fetcher.add_argument("--timeout", type=float, default=60.0, help="seconds per network read (default 60)")
    common(fetcher)
    fetcher.set_defaults(func=cmd_fetch)


def _catalogue(args: argparse.Namespace) -> Catalogue:
    return load_catalogue(args.catalogue)


def entry_summary(entry: ModelEntry) -> dict[str, Any]:
    files = [f.path for f in entry.files] or ["(see manual steps)"]
    return {
        "name": entry.name, "title": entry.title, "used_by": entry.used_by, "format": entry.format,
        "release": entry.release, "licence": entry.licence, "licence_note": entry.licence_note,
        "revision": entry.revision, "files": files,
        "archive": entry.archive.filename if entry.archive else None,
        "checksums": {f.path: f.published() for f in entry.files if f.published()},
        "fetch": "direct" if entry.direct_download() else "manual", "manual": entry.manual,
        "sources": entry.sources, "notes": entry.notes,
    }


def cmd_list(args: argparse.Namespace) -> int:
    try:
        catalogue = _catalogue(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rows = [entry_summary(e) for e in catalogue.entries]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        print(f"{row['name']}  [{row['format']}]  {row['title']}")
        print(f"  used by:  {', '.join(row['used_by'])}")
        print(f"  release:  {row['release']}" + (f"  (revision {row['revision']})" if row["revision"] else ""))
        print(f"  licence:  {row['licence']}" + (f" - {row['licence_note']}" if row["licence_note"] else ""))
        shown = row["files"] if not row["archive"] else [f"{row['archive']} -> " + ", ".join(row["files"])]
        print(f"  files:    {', '.join(shown)}")
        pinned = ", ".join(f"{p} {a}" for p, d in row["checksums"].items() for a in d) or "none published"
        print(f"  checksum: {pinned}")
        print(f"  fetch:    {row['fetch']}" + ("" if row["fetch"] == "direct" else f" - {row['manual']}"))
        for note in row["notes"]:
            print(f"  note:     {note}")
        print()
    return EXIT_OK


# --- verify ---------------------------------------------------------------------------------------

def planner_loaders() -> dict[str, Callable[[Path, dict[str, Any]], str]]:
    """The planner's loader (agent layer), for ``--load`` on LLaVA folders."""

    def load(folder: Path, settings: dict[str, Any]) -> str:
        from agent.planners.hf import load_llava

        adapter = settings.get("adapter_path")
        base = Path(settings.get("base_path") or folder)
        loaded = load_llava(base, Path(adapter) if adapter else None, settings.get("device") or "cpu")
        return f"LLaVA planner loaded on {loaded.device}" + (" with its adapter" if adapter else "")

    return {"llava-planner": load}


def configured_models(config: Any) -> Iterator[tuple[str, str, Path, dict[str, Any]]]:
    """(label, format, folder, settings) for every model the node config names."""
    tools: dict[str, dict[str, Any]] = dict(config.tools)
    sam_like = [("MedSAM", tools.get("MedSAM") or {}),
                ("grounding dino + MedSAM.medsam", (tools.get("grounding dino + MedSAM") or {}).get("medsam") or {})]
    for label, section in sam_like:
        if section.get("model_path"):
            yield label, "sam-state-dict", Path(section["model_path"]).parent, dict(section)
    grounding = [("grounding dino", tools.get("grounding dino") or {}),
                 ("grounding dino + MedSAM.grounding",
                  (tools.get("grounding dino + MedSAM") or {}).get("grounding") or {})]
    for label, section in grounding:
        if section.get("model_path"):
            yield label, "grounding-dino-hf", Path(section["model_path"]), dict(section)
    organ = tools.get("organ segmentation 3d") or {}
    if organ.get("bundle_dir"):
        yield "organ segmentation 3d", "monai-bundle", Path(organ["bundle_dir"]), dict(organ)
    clip = tools.get("BiomedClip") or {}
    if clip.get("model_path"):
        yield "BiomedClip", "open-clip", Path(clip["model_path"]), dict(clip)
    report = tools.get("report generation") or {}
    if report.get("backend") == "transformers" and report.get("model_path"):
        yield "report generation", "hf-causal-lm", Path(report["model_path"]), {}
    retrieval = tools.get("retrieval") or {}
    if retrieval.get("embedding_model"):
        yield "retrieval.embedding_model", "sentence-transformers", Path(retrieval["embedding_model"]), {}
    lm = retrieval.get("language_model") or {}
    if lm.get("backend") == "transformers" and lm.get("model_path"):
        yield "retrieval.language_model", "hf-causal-lm", Path(lm["model_path"]), {}
    planner = config.planner
    if planner.intent_model is not None:
        yield "planner.intent_model", "sentence-transformers", Path(planner.intent_model), {}
    if planner.backend == "transformers" and planner.model_path is not None:
        settings = {"device": planner.device}
        if planner.adapter_path is not None:
            settings["adapter_path"] = str(planner.adapter_path)
        yield "planner.model_path", "llava-planner", Path(planner.model_path), settings
        if planner.adapter_path is not None:
            yield "planner.adapter_path", "llava-planner", Path(planner.adapter_path), {}


def _print_report(label: str, report: VerifyReport) -> None:
    name = f" as {report.entry}" if report.entry else ""
    print(f"{label}: {report.folder}{name} [{report.format}] -> {'OK' if report.ok else 'FAILED'}")
    for finding in report.findings:
        print(f"  {finding.level:<5}  {finding.message}")


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        catalogue = _catalogue(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    jobs: list[tuple[str, str, Path, dict[str, Any], ModelEntry | None]] = []
    if args.name is not None:
        if args.folder is None:
            print("error: give NAME and DIR, or --config FILE", file=sys.stderr)
            return EXIT_USAGE
        try:
            entry = catalogue.get(args.name)
        except KeyError as exc:
            print(f"error: {exc.args[0]}", file=sys.stderr)
            return EXIT_USAGE
        settings = dict((entry.rendered_config(args.folder).get("tools") or {}).get(entry.used_by[0]) or {})
        jobs.append((entry.name, entry.format, args.folder, settings, entry))
    elif args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        for label, fmt, folder, settings in configured_models(config):
            fetched = manifest_entry(folder)
            entry = None
            if fetched is not None:
                try:
                    entry = catalogue.get(fetched)
                except KeyError:
                    entry = None
            jobs.append((label, fmt, folder, settings, entry))
        if not jobs:
            print("no model paths in this config (tools.* model_path/bundle_dir, planner.model_path)")
            return EXIT_OK
    else:
        print("error: give NAME and DIR, or --config FILE", file=sys.stderr)
        return EXIT_USAGE
    reports = []
    for label, fmt, folder, settings, entry in jobs:
        report = verify(fmt, folder, entry=entry, settings=settings, load=args.load,
                        checksums=not args.no_checksums, loaders=planner_loaders())
        reports.append((label, report))
    if args.json:
        print(json.dumps([{"label": label, **r.to_json()} for label, r in reports], indent=2))
    else:
        for label, report in reports:
            _print_report(label, report)
    return EXIT_OK if all(r.ok for _, r in reports) else EXIT_FAILED


# --- fetch ----------------------------------------------------------------------------------------

def _bar_factory(stack: list[Any]) -> Callable[[str, int | None], Callable[[int], None]]:
    """Progress bars for downloads (closed by the caller through ``stack``)."""

    def start(name: str, total: int | None) -> Callable[[int], None]:
        context = progress_bar(total, name, bytes_=True)
        bar = context.__enter__()
        stack.append(context)
        return lambda n: bar.update(n)

    return start


def cmd_fetch(args: argparse.Namespace) -> int:
    try:
        entry = _catalogue(args).get(args.name)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    bars: list[Any] = []
    try:
        report = fetch(entry, args.to, mirror=args.mirror, allow_unverified=args.allow_unverified,
                       progress=_bar_factory(bars), timeout=args.timeout)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        for context in bars:
            context.__exit__(None, None, None)
    print(f"# {entry.name}: {len(report.downloaded)} file(s) downloaded, {len(report.kept)} already there, "
          f"into {args.to.resolve()}", file=sys.stderr)
    if report.unverified:
        print(f"# no published checksum for {', '.join(report.unverified)}: SHA256 recorded in the manifest",
              file=sys.stderr)
    for note in entry.notes:
        print(f"# note: {note}", file=sys.stderr)
    print(f"# {entry.title} ({entry.licence}); paste into the node's config:")
    print(yaml.safe_dump(entry.rendered_config(args.to), sort_keys=False, allow_unicode=True).rstrip())
    return EXIT_OK
