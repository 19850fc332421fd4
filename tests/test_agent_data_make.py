"""``mmed-node agent make-data`` and ``agent eval`` as subprocesses: format, split, accuracy."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from agent.dataset import make_data, tool_specs_of
from agent.evaluate import evaluate, read_records
from agent.planners.base import PlanContext, Planner, PlannerOutputError
from agent.protocol import AssistantTurn, Conversation, parse_tool_outputs_message
from testkit.phantoms import write_ct_phantom
from tests.agent_helpers import real_tool_classes
from tools.registry import ToolRegistry

CLI = [sys.executable, "-m", "dicom_node.app.cli"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("agent-data")
    proc = subprocess.run(
        [*CLI, "agent", "make-data", "--out", str(out), "--seed", "7"], capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "train and" in proc.stdout
    return out


def _template(record_id: str | None) -> str:
    assert record_id is not None
    return "-".join(record_id.split("-")[:2])


def test_records_follow_the_mmedagent_format(data_dir: Path) -> None:
    for split in ("train", "eval"):
        lines = (data_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) > 20
        for line in lines:
            raw = json.loads(line)
            conv = Conversation.from_llava_json(raw)
            assert raw["conversations"][0]["value"].startswith("<image>\n")
            with Image.open(data_dir / str(conv.image)) as img:
                assert img.mode == "RGB" and min(img.size) >= 32
            turns = conv.turns()
            if not turns[0].actions:  # a question the MLLM answers itself (VQA)
                assert len(conv.messages) == 2
                continue
            # The plan (MMedAgent's "Please wait." turn), tool outputs, then the aggregation; a report
            # written from other tools' results takes one more round in between.
            roles = [m.role for m in conv.messages]
            assert roles in (["human", "gpt"] * 2, ["human", "gpt"] * 3)
            assert turns[0].value.endswith("Please wait.") and turns[-1].actions == []
            for turn, message in zip(turns, conv.messages[2::2]):
                outputs, question = parse_tool_outputs_message(message.value)
                assert question == conv.question
                assert [name for name, _ in outputs] == turn.api_names
            if len(turns) == 3:
                assert turns[1].api_names == ["report generation"]
                assert set(turns[1].actions[0].api_params["findings"]) == set(turns[0].api_names)
            assert raw["conversations"][1].keys() == {"from", "thoughts", "actions", "value"}


def test_real_tools_computed_the_lung_outputs(data_dir: Path) -> None:
    lung = [
        c for c in read_records(data_dir / "train.jsonl") + read_records(data_dir / "eval.jsonl")
        if c.turns()[0].api_names == ["ct lung segmentation"]
    ]
    assert lung
    for conv in lung:
        (_, summary), = parse_tool_outputs_message(conv.messages[2].value)[0]
        # The weight-free tool ran on the synthetic chest CT: per-lung volumes, in plausible ranges.
        assert 500 < summary["total_lung_ml"] < 6000 and summary["mean_hu"] < -700
        assert f"{summary['total_lung_ml']:.1f} mL" in conv.turns()[-1].value


def test_split_by_template_without_leakage(data_dir: Path) -> None:
    train = read_records(data_dir / "train.jsonl")
    evaluation = read_records(data_dir / "eval.jsonl")
    train_templates = {_template(c.id) for c in train}
    eval_templates = {_template(c.id) for c in evaluation}
    assert train_templates and eval_templates and not train_templates & eval_templates
    assert not {c.question for c in train} & {c.question for c in evaluation}
    # Every kind of ask appears on both sides.
    kinds = lambda ts: {t.split("-")[0] for t in ts}
    assert kinds(train_templates) == kinds(eval_templates) >= {"seg", "loc", "cls", "rep", "kno", "vqa", "mul"}
    # Several tools in one turn, and reports written from other tools' results, exist in the data.
    assert any(len(c.turns()[0].actions) > 1 for c in train + evaluation)
    assert any(len(c.turns()) == 3 for c in train + evaluation)


def test_rules_planner_self_consistency_on_the_eval_split(data_dir: Path) -> None:
    """The split's expected turns come from the rules planner's own tool choice (given the
    templates' intents): this measures how well it reads unseen template wordings back into the
    same plan (self-consistency), not accuracy against people's expectations."""
    eval_file = data_dir / "eval.jsonl"
    proc = subprocess.run(
        [*CLI, "agent", "eval", "--data", str(eval_file), "--planner", "rules", "--json"],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == {"tool_accuracy", "param_accuracy", "parse_failure_rate", "n"}
    assert result["n"] == len(eval_file.read_text(encoding="utf-8").splitlines())
    assert result["tool_accuracy"] >= 0.95
    assert result["param_accuracy"] >= 0.9
    assert result["parse_failure_rate"] == 0.0


class _Garbage(Planner):
    name = "garbage"

    def next_turn(self, ctx: PlanContext) -> AssistantTurn:
        raise PlannerOutputError("lorem ipsum", "no actions marker")


class _NoTools(Planner):
    name = "no-tools"

    def next_turn(self, ctx: PlanContext) -> AssistantTurn:
        assert ctx.image is not None and ctx.image.ndim == 3 and ctx.modality
        return AssistantTurn("", [], "I cannot say.")


def test_eval_counts_parse_failures_and_wrong_tools(data_dir: Path) -> None:
    specs = tool_specs_of(real_tool_classes())
    garbage = evaluate(data_dir / "eval.jsonl", _Garbage(), specs)
    assert garbage.parse_failure_rate == 1.0 and garbage.tool_accuracy == 0.0 and garbage.param_accuracy == 0.0
    records = read_records(data_dir / "eval.jsonl")
    no_tool_share = sum(not c.turns()[0].actions for c in records) / len(records)
    silent = evaluate(data_dir / "eval.jsonl", _NoTools(), specs)
    assert silent.tool_accuracy == pytest.approx(no_tool_share) and silent.parse_failure_rate == 0.0
    assert 0 < no_tool_share < 0.3


def test_make_data_on_supplied_dicom_uses_only_real_tool_outputs(tmp_path: Path) -> None:
    write_ct_phantom(tmp_path / "images" / "chest", slices=20, rows=64, cols=64, pixel_spacing=5.0, slice_spacing=10.0)
    registry = ToolRegistry({})
    made = make_data(tmp_path / "out", real_tool_classes(), registry, images_dir=tmp_path / "images", seed=1)
    assert made.train + made.eval > 5
    available = set(registry.available_names())
    for split in ("train", "eval"):
        for conv in read_records(tmp_path / "out" / f"{split}.jsonl"):
            assert set(conv.turns()[0].api_names) <= available
            if conv.turns()[0].api_names == ["ct lung segmentation"]:
                (_, summary), = parse_tool_outputs_message(conv.messages[2].value)[0]
                assert "total_lung_ml" in summary
