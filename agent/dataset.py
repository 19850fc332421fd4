"""Instruction-tuning data in the MMedAgent format (``mmed-node agent make-data``).

Each record is one LLaVA JSON line with two assistant turns, as in MMedAgent's data: the plan turn
(thoughts, actions, "Please wait."), the tool output message in the original wording, and the
aggregation turn stating the results. A report asked for together with other tools is written in
one more round, from their outputs (the rules planner's deferral, ``DEFERRED_TOOLS``); a question
no tool serves is one direct answer. Records come from instruction templates
(:mod:`agent.dataset_templates`) filled with the structures of real images, the registry's tool
schemas, and tool outputs computed on those images: by the tool itself where it is available
locally, else from the image's ground truth (the synthetic cases of :mod:`agent.synthetic`).

The split is by template: every record of a template goes to the same file, so the eval file
holds only wordings the training file never shows.
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agent.dataset_templates import (
    BODY_PART_TARGETS,
    DISEASES,
    TARGET_WORDING,
    TEMPLATES,
    Template,
)
from agent.dataset_truth import TRUTH_OUTPUTS, TruthCase
from agent.planners.base import PlanContext, ToolSpec
from agent.planners.rules import RulesPlanning
from agent.planners.tool_choice import choose
from agent.protocol import (
    AssistantTurn,
    Conversation,
    Message,
    first_human_message,
    to_plain,
    tool_outputs_message,
)
from agent.reading.load import reading_parts
from agent.reading.read import REGION_INTENTS, Ask, Reading
from agent.reading.slots import Mention
from agent.render import metadata_text, render_key_image, volume_meta
from agent.synthetic import write_cases
from image_model.volume import Volume
from tools.base import ToolRefused
from tools.progress import track

log = logging.getLogger(__name__)

#: Records per template (image/target combinations sampled from all that fit).
RECORDS_PER_TEMPLATE = 4
#: Share of each template group's templates that go to the eval file (at least one).
EVAL_FRACTION = 0.25
#: Synthetic variants of each case kind.
SYNTHETIC_VARIANTS = 2


@dataclass
class DataCase:
    name: str
    volume: Volume
    masks: dict[str, np.ndarray]
    image_label: str | None
    description: str
    #: Path of the rendered image, relative to the output folder.
    image_file: str
    targets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MadeData:
    train: int
    eval: int
    train_templates: tuple[str, ...]
    eval_templates: tuple[str, ...]
    real_tools: tuple[str, ...]


class ToolRunner:
    """Runs a tool for real when the local registry has it, with results cached per call."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.available = set(registry.available_names()) if registry is not None else set()
        self._cache: dict[tuple[str, str, str], dict[str, Any]] = {}

    def run(self, case: DataCase, name: str, params: dict[str, Any]) -> dict[str, Any]:
        key = (case.name, name, json.dumps(params, sort_keys=True))
        if key not in self._cache:
            try:
                output = self.registry.get(name).run(case.volume, dict(params))
                self._cache[key] = to_plain(output.summary)
            except ToolRefused as exc:
                self._cache[key] = {"refused": str(exc)}
        return self._cache[key]


def tool_specs_of(classes: dict[str, Any]) -> list[ToolSpec]:
    """Specs of every known tool (available here or not: the data teaches the whole protocol)."""
    return [ToolSpec(name, cls.description, dict(cls.params_schema)) for name, cls in sorted(classes.items())]


def split_templates(templates: tuple[Template, ...], seed: int) -> tuple[set[str], set[str]]:
    """Template ids for train and eval: per group (id prefix), a seeded share goes to eval."""
    groups: dict[str, list[str]] = defaultdict(list)
    for t in templates:
        groups[t.id.split("-")[0]].append(t.id)
    rng = np.random.default_rng(seed)
    train, evaluation = set(), set()
    for _, ids in sorted(groups.items()):
        order = list(rng.permutation(sorted(ids)))
        n_eval = max(1, round(len(ids) * EVAL_FRACTION))
        evaluation.update(order[:n_eval])
        train.update(order[n_eval:])
    return train, evaluation


def _context(case: DataCase, instruction: str, specs: list[ToolSpec]) -> PlanContext:
    return PlanContext(
        instruction=instruction,
        metadata_text=metadata_text(case.volume),
        image=None,
        history=[Message.human(first_human_message(instruction))],
        tools=specs,
        modality=case.volume.modality.upper(),
        volume_shape=case.volume.shape,
        meta=volume_meta(case.volume),
    )


def _record_metadata(case: DataCase, template: Template) -> dict[str, Any]:
    """The series description, and the template's intents (what ``agent train-intents`` learns)."""
    return {
        "text": metadata_text(case.volume),
        "modality": case.volume.modality.upper(),
        "shape": list(case.volume.shape),
        "meta": volume_meta(case.volume),
        "intents": list(template.intents),
    }


def template_asks(template: Template, target: str | None) -> list[Ask]:
    """The asks a template makes (its intents, about ``target`` where they need one)."""
    answers = {"presence": "yes/no", "size": "yes/no", "count": "count"}
    return [
        Ask(intent, [Mention(target, None, 0, 0)] if (target and intent in REGION_INTENTS) else [], [], answers.get(intent))
        for intent in template.intents
    ]


def build_record(
    template: Template,
    case: DataCase,
    target: str | None,
    disease: str | None,
    specs: list[ToolSpec],
    runner: ToolRunner,
    rng: np.random.Generator,
) -> Conversation | None:
    """One conversation, or None when a tool it needs has neither a local model nor ground truth."""
    wording = str(rng.choice(TARGET_WORDING.get(target, (target,)))) if target else ""
    instruction = template.text.format(target=wording, disease=disease or "")
    ctx = _context(case, instruction, specs)
    planning = RulesPlanning(reading_parts(with_scorer=False))
    plan = choose(ctx, Reading(template_asks(template, target)), planning.vocab)
    messages = [ctx.history[0]]
    metadata = _record_metadata(case, template)
    if not template.intents:
        messages.append(Message.gpt(planning.direct_answer(ctx, plan)))
        return Conversation(case.image_file, messages, _record_id(template, case, target, disease), metadata)
    if plan.unserved or not plan.calls:
        return None
    truth = TruthCase(case.volume, case.masks, case.image_label, case.description, disease, rng)
    outputs: list[tuple[str, dict[str, Any]]] = []
    turn: AssistantTurn | None = planning.first_turn(ctx, plan)
    while turn is not None:
        round_outputs = []
        for action in turn.actions:
            if action.api_name in runner.available:
                summary = runner.run(case, action.api_name, action.api_params)
            elif case.masks and action.api_name in TRUTH_OUTPUTS:
                summary = TRUTH_OUTPUTS[action.api_name](truth, action.api_params)
            else:
                return None
            round_outputs.append((action.api_name, summary))
        messages += [Message.gpt(turn), Message.human(tool_outputs_message(round_outputs, instruction))]
        outputs += round_outputs
        turn = planning.next_round(ctx, plan, outputs)
    messages.append(Message.gpt(planning.final_turn(ctx, plan, outputs)))
    return Conversation(case.image_file, messages, _record_id(template, case, target, disease), metadata)


def _record_id(template: Template, case: DataCase, target: str | None, disease: str | None) -> str:
    parts = [template.id, case.name] + [p.replace(" ", "_") for p in (target, disease) if p]
    return "-".join(parts)


def _findable(target: str) -> bool:
    """A finding or device (something one asks whether it is there, or how many), not anatomy."""
    from agent.reading.vocabulary import load_vocabulary

    entry = load_vocabulary().entry(target)
    return entry is None or entry.kind in ("finding", "device")


def _candidates(template: Template, cases: list[DataCase]) -> list[tuple[DataCase, str | None, str | None]]:
    needs_target = "{target}" in template.text
    needs_disease = "{disease}" in template.text
    findings_only = bool({"presence", "count"} & set(template.intents))
    out: list[tuple[DataCase, str | None, str | None]] = []
    for case in cases:
        names = [t for t in case.targets if _findable(t)] if findings_only else list(case.targets)
        targets: list[str | None] = list(names) if needs_target else [None]
        diseases: list[str | None] = list(DISEASES) if needs_disease else [None]
        out.extend((case, t, d) for t in targets for d in diseases)
    return out


def synthetic_cases(work_dir: Path, out_dir: Path, seed: int) -> list[DataCase]:
    from image_model.loader import load_series

    cases = []
    for syn in write_cases(work_dir, seed, SYNTHETIC_VARIANTS):
        volume = load_series(syn.files)
        masks = {k: m for k, m in syn.masks.items() if m.any()}
        cases.append(
            DataCase(syn.name, volume, masks, syn.kind.image_label, syn.kind.description,
                     _write_image(volume, out_dir, syn.name), targets=sorted(masks))
        )
    return cases


def supplied_cases(images_dir: Path, out_dir: Path) -> list[DataCase]:
    """Each DICOM series under ``images_dir`` (one per folder holding .dcm files; or the folder itself)."""
    from image_model.loader import LoadError, load_series

    folders = sorted({p.parent for p in images_dir.rglob("*") if p.is_file()})
    cases = []
    for i, folder in enumerate(folders):
        try:
            volume = load_series(folder)
        except LoadError as exc:
            log.warning("skipping %s: %s", folder, exc)
            continue
        name = f"series_{i:03d}"
        body = str(volume_meta(volume).get("BodyPartExamined", "")).upper()
        targets = list(BODY_PART_TARGETS.get(body, ()))
        description = str(volume_meta(volume).get("SeriesDescription", volume.modality))
        cases.append(DataCase(name, volume, {}, None, description, _write_image(volume, out_dir, name), targets))
    return cases


def _write_image(volume: Volume, out_dir: Path, name: str) -> str:
    relative = f"images/{name}.png"
    path = out_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_key_image(volume)).save(path)
    return relative


def make_data(
    out_dir: Path, tool_classes: dict[str, Any], registry: Any, *, images_dir: Path | None = None, seed: int = 0
) -> MadeData:
    """Write ``out_dir/train.jsonl``, ``out_dir/eval.jsonl`` and ``out_dir/images/``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = tool_specs_of(tool_classes)
    runner = ToolRunner(registry)
    rng = np.random.default_rng(seed)
    train_ids, eval_ids = split_templates(TEMPLATES, seed)
    with tempfile.TemporaryDirectory(prefix="mmed-make-data-") as work:
        if images_dir is not None:
            cases = supplied_cases(images_dir, out_dir)
        else:
            cases = synthetic_cases(Path(work), out_dir, seed)
        if not cases:
            raise ValueError(f"no loadable DICOM series under {images_dir}")
        written = {"train": 0, "eval": 0}
        files = {split: (out_dir / f"{split}.jsonl").open("w", encoding="utf-8") for split in written}
        try:
            for template in track(TEMPLATES, "make-data", unit="template"):
                split = "eval" if template.id in eval_ids else "train"
                candidates = _candidates(template, cases)
                picks = rng.permutation(len(candidates))
                made = 0
                for index in picks:
                    case, target, disease = candidates[int(index)]
                    record = build_record(template, case, target, disease, specs, runner, rng)
                    if record is None:
                        continue
                    files[split].write(record.to_jsonl_line() + "\n")
                    written[split] += 1
                    made += 1
                    if made == RECORDS_PER_TEMPLATE:
                        break
        finally:
            for fh in files.values():
                fh.close()
    return MadeData(
        written["train"], written["eval"], tuple(sorted(train_ids)), tuple(sorted(eval_ids)),
        tuple(sorted(runner.available & set(tool_classes))),
    )
