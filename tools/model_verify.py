"""Checking a model folder before a node uses it: files, checksums, format, shapes, and a real load.

:func:`verify` reports :class:`Finding` s for one folder read as one on-disk format:

1. files: every required file of the catalogue entry is there, with the published checksum; files
   without one are compared with the manifest ``models fetch`` wrote (a changed file is an error);
   a MONAI bundle's own ``large_files.yml`` digests are checked too;
2. format: the structure the tool's loader reads (config keys, tokenizer, shards named by the index),
   and, where the architecture is known without loading the weights, every tensor's name and shape
   against the architecture the tool builds (SAM from its settings, Grounding DINO and LoRA from
   their configs, a bundle's ``network_def``), built on the ``meta`` device so no memory is spent;
3. with ``load``: the tool's own loader (:data:`LOADERS`), as the node will call it.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tools.model_catalogue import MANIFEST_NAME, ModelEntry
from tools.model_fetch import file_digests

Level = Literal["ok", "warn", "error"]
#: At most this many names are listed per kind of key mismatch.
SHOWN_KEYS = 5
#: A transformers processor's config, by the name older and newer versions save it under.
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


@dataclass(frozen=True)
class Finding:
    level: Level
    message: str


@dataclass
class VerifyReport:
    format: str
    folder: Path
    entry: str | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def add(self, level: Level, message: str) -> None:
        self.findings.append(Finding(level, message))

    def to_json(self) -> dict[str, Any]:
        return {"entry": self.entry, "format": self.format, "folder": str(self.folder), "ok": self.ok,
                "findings": [{"level": f.level, "message": f.message} for f in self.findings]}


# --- files and checksums -------------------------------------------------------------------------

def check_files(entry: ModelEntry, folder: Path, report: VerifyReport, *, checksums: bool = True) -> None:
    manifest = _manifest(folder)
    for spec in entry.files:
        path = folder / spec.path
        if not path.is_file():
            report.add("error" if spec.required else "ok",
                       f"{spec.path}: missing" if spec.required else f"{spec.path}: absent (optional)")
            continue
        published = spec.published()
        if not checksums:
            continue
        if published:
            actual = file_digests(path, tuple(published))
            bad = [a for a, d in published.items() if actual[a] != d]
            if bad:
                report.add("error", f"{spec.path}: {bad[0]} {actual[bad[0]]} is not the published {published[bad[0]]}")
            else:
                report.add("ok", f"{spec.path}: {', '.join(published)} matches the release")
        elif spec.path in manifest.get("files", {}):
            if file_digests(path)["sha256"] != manifest["files"][spec.path]:
                report.add("error", f"{spec.path}: changed since `models fetch` downloaded it")
            else:
                report.add("ok", f"{spec.path}: unchanged since fetch (the release publishes no checksum)")
        else:
            report.add("warn", f"{spec.path}: present; the release publishes no checksum to compare")


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def manifest_entry(folder: Path) -> str | None:
    """The catalogue entry ``models fetch`` put in ``folder``, if it did."""
    name = _manifest(folder).get("entry")
    return str(name) if name else None


# --- shapes -------------------------------------------------------------------------------------

def compare_shapes(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
                   report: VerifyReport, what: str, *, missing_is_error: bool = True) -> None:
    """Tensor names and shapes of a checkpoint against those of the architecture."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))
    if unexpected:
        report.add("error", f"{what}: {len(unexpected)} tensors the architecture does not have, e.g. "
                            f"{', '.join(unexpected[:SHOWN_KEYS])}")
    if wrong:
        k = wrong[0]
        report.add("error", f"{what}: {len(wrong)} tensors of the wrong shape, e.g. {k} "
                            f"{tuple(found[k])} where the architecture has {tuple(expected[k])}")
    if missing:
        report.add("error" if missing_is_error else "warn",
                   f"{what}: {len(missing)} tensors of the architecture are not in the checkpoint, e.g. "
                   f"{', '.join(missing[:SHOWN_KEYS])}")
    if not (unexpected or wrong or missing):
        report.add("ok", f"{what}: all {len(expected)} tensors match the architecture's names and shapes")


def _shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def safetensors_shapes(paths: list[Path]) -> dict[str, tuple[int, ...]]:
    """Names and shapes from safetensors headers (nothing is loaded)."""
    from safetensors import safe_open

    out: dict[str, tuple[int, ...]] = {}
    for path in paths:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118  # safe_open handles are not iterable
                out[key] = tuple(fh.get_slice(key).get_shape())
    return out


def _meta_state(build: Callable[[], Any]) -> dict[str, tuple[int, ...]]:
    import torch

    with torch.device("meta"):
        module = build()
    return _shapes(module.state_dict())


def _json(path: Path, report: VerifyReport) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.add("error", f"{path.name}: missing")
        return None
    except (OSError, ValueError) as exc:
        report.add("error", f"{path.name}: not JSON ({exc})")
        return None
    if not isinstance(data, dict):
        report.add("error", f"{path.name}: not a JSON object")
        return None
    return data


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json"))


def _weights(folder: Path, names: tuple[str, ...], report: VerifyReport) -> list[Path]:
    """The weight files of a transformers folder: one file, or the shards its index names."""
    for index_name in (n + ".index.json" for n in names):
        index = folder / index_name
        if index.is_file():
            data = _json(index, report) or {}
            shards = sorted(set((data.get("weight_map") or {}).values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                report.add("error", f"{index_name} names shards that are missing: {', '.join(missing)}")
                return []
            report.add("ok", f"{index_name}: all {len(shards)} shards present")
            return [folder / s for s in shards]
    found = [folder / n for n in names if (folder / n).is_file()]
    if not found:
        report.add("error", f"no weights: expected one of {', '.join(names)}")
    return found[:1]


# --- formats ------------------------------------------------------------------------------------

def check_sam(folder: Path, settings: dict[str, Any], report: VerifyReport) -> None:
    from tools.medsam import SamSettings, build_sam, load_state_dict

    path = Path(settings["model_path"])
    try:
        state = load_state_dict(path)
    except Exception as exc:  # noqa: BLE001  # any unreadable file is this finding
        report.add("error", f"{path.name}: not a readable state dict ({type(exc).__name__}: {exc})")
        return
    cfg = SamSettings.model_validate({**settings, "model_path": path})
    arch = cfg.model_type if cfg.encoder is None else "the configured encoder"
    compare_shapes(_shapes(state), _meta_state(lambda: build_sam(cfg)), report, f"{path.name} vs SAM {arch}")


def check_grounding_hf(folder: Path, settings: dict[str, Any], report: VerifyReport) -> None:
    config = _json(folder / "config.json", report)
    if config is None:
        return
    if config.get("model_type") != "grounding-dino":
        report.add("error", f"config.json: model_type {config.get('model_type')!r}, not 'grounding-dino'")
        return
    if not any((folder / n).is_file() for n in PROCESSOR_FILES):
        report.add("error", "no processor config (preprocessor_config.json): the processor cannot be built")
    if not _has_tokenizer(folder):
        report.add("error", "no tokenizer files (tokenizer.json or vocab.txt)")
    weights = _weights(folder, ("model.safetensors",), report)
    if weights:
        report.add("ok", f"{len(safetensors_shapes(weights))} tensors in {weights[0].name}; names and shapes "
                         "are checked against the config when loading (--load)")


def check_grounding_original(folder: Path, settings: dict[str, Any], report: VerifyReport) -> None:
    from tools.weights import read_state_dict

    for path in sorted(folder.glob("*.pth")):
        try:
            state = read_state_dict(path, ("model",))
        except Exception as exc:  # noqa: BLE001
            report.add("error", f"{path.name}: not a readable checkpoint ({type(exc).__name__}: {exc})")
            continue
        report.add("ok", f"{path.name}: {len(state)} tensors")
    report.add("warn", "original GroundingDINO format: the grounding dino tool reads a transformers folder; "
                       "convert it first (see the entry's manual steps)")


def check_monai_bundle(folder: Path, settings: dict[str, Any], report: VerifyReport) -> None:
    import torch
    from monai.bundle import ConfigParser

    from tools.monai_loading import bundle_config_file
    from tools.weights import read_state_dict

    config_file = bundle_config_file(folder)
    if config_file is None:
        report.add("error", "configs/inference.json|yaml: missing")
        return
    meta = _json(folder / "configs" / "metadata.json", report) or {}
    _large_files(folder, report)
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(folder)
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as exc:  # noqa: BLE001  # a bundle config may fail in many ways
        report.add("error", f"{config_file.name}: network_def does not build ({type(exc).__name__}: {exc})")
        return
    if not isinstance(network, torch.nn.Module):
        report.add("error", f"{config_file.name}: network_def is not a torch module")
        return
    weights = folder / "models" / "model.pt"
    if not weights.is_file():
        report.add("error", "models/model.pt: missing")
        return
    compare_shapes(_shapes(read_state_dict(weights)), _shapes(network.state_dict()), report,
                   "models/model.pt vs network_def")
    pred = meta.get("network_data_format", {}).get("outputs", {}).get("pred", {})
    channels, names = pred.get("num_channels"), pred.get("channel_def") or {}
    if channels is not None and names and len(names) != channels:
        report.add("error", f"metadata.json: {len(names)} channel names for {channels} output channels")


def _large_files(folder: Path, report: VerifyReport) -> None:
    """The digests a MONAI bundle publishes for its large files (``large_files.yml``)."""
    path = folder / "large_files.yml"
    if not path.is_file():
        return
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for item in data.get("large_files") or []:
        algorithm, expected = str(item.get("hash_type", "")).lower(), item.get("hash_val")
        target = folder / str(item.get("path", ""))
        if not expected or algorithm not in ("md5", "sha1", "sha256") or not target.is_file():
            continue
        actual = file_digests(target, (algorithm,))[algorithm]
        if actual == expected:
            report.add("ok", f"{item['path']}: {algorithm} matches the bundle's large_files.yml")
        else:
            report.add("error", f"{item['path']}: {algorithm} {actual} is not {expected} (large_files.yml)")


def check_open_clip(folder: Path, settings: dict[str, Any], report: VerifyReport) -> None:
    config = _json(folder / "open_clip_config.json", report)
    if config is None:
        return
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict):
        report.add("error", "open_clip_config.json: no model_cfg")
        return
    if not any((folder / n).is_file() for n in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")):
        report.add("error", "no open_clip weights (open_clip_pytorch_model.bin or open_clip_model.safetensors)")
    text = model_cfg.get("text_cfg") or {}
    tower = text.get("hf_model_name")
    if tower:
        if (Path(tower) / "config.json").is_file():
            report.add("ok", "text tower config is local")
        else:
            report.add("error", f"text_cfg.hf_model_name is {tower!r}: open_clip would fetch its config from the "
                                "hub at load time; `models fetch` points it at a local copy")
        if not _has_tokenizer(folder):
            report.add("error", "no tokenizer files for the HF text tower (tokenizer.json or vocab.txt)")


def check_causal_lm(folder: Path, settings: dict[str, Any], report: VerifyReport) -> None:
    config = _json(folder / "config.json", report)
    if config is None:
        return
    if not _has_tokenizer(folder):
        report.add("error", "no tokenizer files")
    weights = _weights(folder, ("model.safetensors", "pytorch_model.bin"), report)
    index = folder / "model.safetensors.index.json"
    if weights and index.is_file():
        named = set((_json(index, report) or {}).get("weight_map") or {})
        found = set(safetensors_shapes(weights))
        if named != found:
            report.add("error", f"the index names {len(named)} tensors, the shards hold {len(found)}")
        else:
            report.add("ok", f"{len(found)} tensors in {len(weights)} shards, as the index says")


def check_sentence_transformers(folder: Path, settings: dict[str, Any], report: VerifyReport) -> None:
    modules = folder / "modules.json"
    if not modules.is_file():
        report.add("error", "modules.json: missing (not a sentence-transformers folder)")
        return
    for module in json.loads(modules.read_text(encoding="utf-8")):
        sub = folder / str(module.get("path", ""))
        # Normalize has no files of its own; every other module stored under a path has a config.
        if module.get("path") and not sub.is_dir() and not str(module.get("type", "")).endswith("Normalize"):
            report.add("error", f"modules.json names {module['path']}/, which is missing")
    if _json(folder / "config.json", report) is not None and not _has_tokenizer(folder):
        report.add("error", "no tokenizer files")
    _weights(folder, ("model.safetensors", "pytorch_model.bin"), report)


def check_llava_planner(folder: Path, settings: dict[str, Any], report: VerifyReport) -> None:
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        _check_lora(folder, report)
        return
    config = _json(folder / "config.json", report)
    if config is None:
        return
    archs = config.get("architectures") or []
    if config.get("model_type") != "llava" and "LlavaForConditionalGeneration" not in archs:
        if "LlavaLlamaForCausalLM" in archs or config.get("model_type") in ("llava_llama", "llava_mistral"):
            report.add("error", "original LLaVA layout (LlavaLlamaForCausalLM): convert it with transformers' "
                                "convert_llava_weights_to_hf.py first")
        else:
            report.add("error", f"config.json: model_type {config.get('model_type')!r} is not a LLaVA checkpoint")
        return
    if not any((folder / n).is_file() for n in PROCESSOR_FILES):
        report.add("error", "no processor config (preprocessor_config.json): the image processor cannot be built")
    if not _has_tokenizer(folder):
        report.add("error", "no tokenizer files")
    _weights(folder, ("model.safetensors",), report)


def _check_lora(folder: Path, report: VerifyReport) -> None:
    config = _json(folder / "adapter_config.json", report) or {}
    if config.get("peft_type") != "LORA":
        report.add("error", f"adapter_config.json: peft_type {config.get('peft_type')!r}, not LORA")
        return
    weights = [p for p in (folder / "adapter_model.safetensors",) if p.is_file()]
    if not weights:
        report.add("error", "adapter_model.safetensors: missing")
        return
    rank = int(config.get("r") or 0)
    shapes = safetensors_shapes(weights)
    bad = [k for k, s in shapes.items() if ("lora_A" in k and s[0] != rank) or ("lora_B" in k and s[-1] != rank)]
    if bad:
        report.add("error", f"{len(bad)} LoRA tensors do not have rank r={rank}, e.g. {bad[0]} {shapes[bad[0]]}")
    else:
        pairs = sum(1 for k in shapes if "lora_A" in k)
        report.add("ok", f"LoRA r={rank}: {pairs} adapted modules, shapes consistent")


#: format -> structure/shape check (``settings``: the tool's config section, with model_path).
FORMAT_CHECKS: Mapping[str, Callable[[Path, dict[str, Any], VerifyReport], None]] = {
    "sam-state-dict": check_sam,
    "grounding-dino-hf": check_grounding_hf,
    "grounding-dino-original": check_grounding_original,
    "monai-bundle": check_monai_bundle,
    "open-clip": check_open_clip,
    "hf-causal-lm": check_causal_lm,
    "sentence-transformers": check_sentence_transformers,
    "llava-planner": check_llava_planner,
}


# --- loading through the tools' own loaders -------------------------------------------------------

def _load_sam(folder: Path, settings: dict[str, Any]) -> str:
    from tools.medsam import SamModel, SamSettings

    model = SamModel(SamSettings.model_validate({**settings, "device": settings.get("device") or "cpu"}))
    return f"SAM loaded strictly on {model.device}"


def loading_mismatches(model_class: Any, folder: Path) -> list[str]:
    """What ``from_pretrained`` had to leave at random or drop: transformers only warns about a
    checkpoint that does not fit its config, so a wrong file would load and answer nonsense."""
    try:
        _, info = model_class.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
    except RuntimeError as exc:  # transformers refuses tensors whose size differs from the config
        return [f"tensor sizes differ from the config ({str(exc)[:200]})"]
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = [k if isinstance(k, str) else k[0] for k in info.get(kind) or []]
        if keys:
            problems.append(f"{len(keys)} {kind.replace('_', ' ')}, e.g. {', '.join(map(str, keys[:SHOWN_KEYS]))}")
    return problems


def _load_grounding(folder: Path, settings: dict[str, Any]) -> str:
    from transformers import GroundingDinoForObjectDetection

    from tools.grounding import GroundingModel, GroundingSettings

    problems = loading_mismatches(GroundingDinoForObjectDetection, folder)
    if problems:
        raise ValueError("the checkpoint does not fit its config: " + "; ".join(problems))
    model = GroundingModel(GroundingSettings.model_validate({**settings, "device": settings.get("device") or "cpu"}))
    return f"Grounding DINO and processor loaded on {model.device}; every tensor matched the config"


def _load_bundle(folder: Path, settings: dict[str, Any]) -> str:
    from tools.monai_loading import load_bundle

    loaded = load_bundle(folder)
    return f"bundle {loaded.name} {loaded.version} loaded, {len(loaded.label_names)} labels"


def _load_clip(folder: Path, settings: dict[str, Any]) -> str:
    from tools.classify import BiomedClip

    tool = BiomedClip({"model_path": str(folder), "device": settings.get("device") or "cpu"})
    scorer = tool.scorer()
    return f"CLIP loaded through the BiomedClip tool ({scorer.backend})"


def _load_causal_lm(folder: Path, settings: dict[str, Any]) -> str:
    from transformers import AutoModelForCausalLM

    from tools.report import LanguageModel, LanguageModelSettings

    problems = loading_mismatches(AutoModelForCausalLM, folder)
    if problems:
        raise ValueError("the checkpoint does not fit its config: " + "; ".join(problems))
    lm = LanguageModel(LanguageModelSettings(backend="transformers", model_path=folder, max_new_tokens=1,
                                             device=settings.get("device") or "cpu"))
    lm.generate("Reply.", "OK")
    return "language model loaded and generated a token"


def _load_embedder(folder: Path, settings: dict[str, Any]) -> str:
    from tools.retrieval import load_embedder

    embedder = load_embedder(folder, settings.get("device") or "cpu")
    width = embedder.encode(["liver volume"]).shape[-1]
    return f"sentence embedder loaded, {width}-d embeddings"


#: format -> a load through the tool's own code, returning what was loaded.
LOADERS: Mapping[str, Callable[[Path, dict[str, Any]], str]] = {
    "sam-state-dict": _load_sam,
    "grounding-dino-hf": _load_grounding,
    "monai-bundle": _load_bundle,
    "open-clip": _load_clip,
    "hf-causal-lm": _load_causal_lm,
    "sentence-transformers": _load_embedder,
}


def verify(fmt: str, folder: Path, *, entry: ModelEntry | None = None, settings: dict[str, Any] | None = None,
           load: bool = False, checksums: bool = True,
           loaders: Mapping[str, Callable[[Path, dict[str, Any]], str]] | None = None) -> VerifyReport:
    """Check ``folder`` as format ``fmt`` (and as ``entry``'s files, when given). ``settings``: the
    tool's config section; ``loaders`` adds loaders of higher layers (the planner's)."""
    report = VerifyReport(fmt, folder, entry.name if entry else None)
    settings = dict(settings or {})
    if fmt == "sam-state-dict" and "model_path" not in settings:
        target = entry.files[0].path if entry and entry.files else "medsam_vit_b.pth"
        settings["model_path"] = str(folder / target)
    settings.setdefault("model_path", str(folder))
    if entry is not None:
        check_files(entry, folder, report, checksums=checksums)
    FORMAT_CHECKS[fmt](folder, settings, report)
    if load and report.ok:
        loader = {**LOADERS, **(loaders or {})}.get(fmt)
        if loader is None:
            report.add("warn", f"no loader for {fmt} here")
        else:
            try:
                report.add("ok", loader(folder, settings))
            except Exception as exc:  # noqa: BLE001  # the finding is the point
                report.add("error", f"the tool's loader failed: {type(exc).__name__}: {str(exc)[:300]}")
    return report
