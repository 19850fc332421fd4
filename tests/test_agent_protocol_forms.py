"""The MMedAgent turn forms: JSON, flattened text, LLaVA records and tool output messages."""
from __future__ import annotations

import json

import numpy as np
import pytest

from agent.protocol import (
    Action,
    AssistantTurn,
    Conversation,
    Message,
    ProtocolError,
    parse_tool_outputs_message,
    tool_output_message,
    tool_outputs_message,
    validate_turn,
)
from tests.agent_helpers import AirInBodyTool, BarrierTool, registry_of

TURN = AssistantTurn(
    "I will locate the tumor with grounding dino.",
    [Action("grounding dino", {"image": "<imagepath>", "prompts": ["tumor"]})],
    "I will use grounding dino to locate it. Please wait.",
)


def test_flattened_form_is_the_originals_exactly() -> None:
    # The original trainer writes '"<marker>" <content>\n' per part, actions with json.dumps defaults.
    expected = (
        '"thoughts\U0001f914" I will locate the tumor with grounding dino.\n'
        '"actions\U0001f680" [{"API_name": "grounding dino", "API_params": {"image": "<imagepath>", "prompts": ["tumor"]}}]\n'
        '"value\U0001f449" I will use grounding dino to locate it. Please wait.\n'
    )
    assert TURN.to_text() == expected
    assert AssistantTurn.parse_text(expected) == TURN


def test_parses_the_compact_variant_of_the_originals_eval_files() -> None:
    text = (
        '"thoughts\U0001f914"I will apply the ChatCAD-G tool.\n'
        '"actions\U0001f680"[{"API_name": "ChatCAD-G","API_params": {}}]\n'
        '"value\U0001f449"Certainly! I will use a report tool.'
    )
    turn = AssistantTurn.parse_text(text)
    assert turn.thoughts == "I will apply the ChatCAD-G tool."
    assert turn.actions == [Action("ChatCAD-G", {})]
    assert turn.value == "Certainly! I will use a report tool."


def test_value_may_contain_json_and_markers_after_the_actions() -> None:
    turn = AssistantTurn("t", [], 'Left lung 2500 mL; raw: {"a": [1, 2]} and "actions\U0001f680" quoted')
    assert AssistantTurn.parse_text(turn.to_text()) == turn


def test_json_form_round_trip_and_keys() -> None:
    data = TURN.to_json()
    assert data == {
        "from": "gpt",
        "thoughts": TURN.thoughts,
        "actions": [{"API_name": "grounding dino", "API_params": {"image": "<imagepath>", "prompts": ["tumor"]}}],
        "value": TURN.value,
    }
    assert AssistantTurn.from_json(json.loads(json.dumps(data))) == TURN


def _conversation() -> Conversation:
    final = AssistantTurn("Done.", [], "The tumor is at the upper right.")
    return Conversation(
        "images/x.png",
        [
            Message.human("<image>\nCan you locate the tumor?"),
            Message.gpt(TURN),
            Message.human(tool_output_message("grounding dino", {"boxes": [[0.5, 0.49, 0.85, 0.75]], "logits": [0.95], "phrases": ["tumor"]}, "Can you locate the tumor?")),
            Message.gpt(final),
        ],
        id="rec-1",
    )


@pytest.mark.parametrize("flatten", [False, True])
def test_llava_record_round_trip(flatten: bool) -> None:
    conv = _conversation()
    line = conv.to_jsonl_line(flatten=flatten)
    back = Conversation.from_llava_json(line)
    assert back == conv
    record = json.loads(line)
    assert record["image"] == "images/x.png" and record["id"] == "rec-1"
    gpt = record["conversations"][1]
    if flatten:
        assert set(gpt) == {"from", "value"} and gpt["value"] == TURN.to_text()
    else:
        assert set(gpt) == {"from", "thoughts", "actions", "value"}
    assert back.question == "Can you locate the tumor?"


def test_tool_output_message_uses_the_original_wording() -> None:
    msg = tool_output_message(
        "grounding dino",
        {"boxes": [[np.float32(0.5), 0.25, 0.75, 1.0]], "logits": [np.float64(0.95)], "phrases": ["tumor"]},
        "Can you locate the tumor?",
    )
    assert msg == (
        "grounding dino output: {'boxes': [[0.5, 0.25, 0.75, 1.0]], 'logits': [0.95], 'phrases': ['tumor']}"
        "\n\nAnswer my first question: Can you locate the tumor?"
    )
    assert parse_tool_outputs_message(msg) == (
        [("grounding dino", {"boxes": [[0.5, 0.25, 0.75, 1.0]], "logits": [0.95], "phrases": ["tumor"]})],
        "Can you locate the tumor?",
    )


def test_several_outputs_in_one_message_round_trip() -> None:
    outputs = [
        ("ct lung segmentation", {"left_lung": {"volume_ml": 1234.5}, "note": "a\n\nb"}),
        ("BiomedClip", {"labels": ["chest CT"], "scores": [0.8]}),
    ]
    msg = tool_outputs_message(outputs, "What is this?")
    assert msg.count("Answer my first question") == 1
    assert parse_tool_outputs_message(msg) == (outputs, "What is this?")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("The lungs look normal.", "no \"actions\U0001f680\" marker"),
        ('"thoughts\U0001f914" x\n"actions\U0001f680" [{"API_name": "a", "API_params": {}}\n"value\U0001f449" v', "not valid JSON"),
        ('"thoughts\U0001f914" x\n"actions\U0001f680" {"API_name": "a"}\n"value\U0001f449" v', "actions: must be a list"),
        ('"thoughts\U0001f914" x\n"actions\U0001f680" [{"API_params": {}}]\n"value\U0001f449" v', "actions[0].API_name"),
        ('"thoughts\U0001f914" x\n"actions\U0001f680" [{"API_name": "a"}]\n"value\U0001f449" v', "actions[0]: missing API_params"),
        ('"thoughts\U0001f914" x\n"actions\U0001f680" [{"API_name": "a", "API_params": [1]}]\n"value\U0001f449" v', "actions[0].API_params: must be an object"),
        ('"thoughts\U0001f914" x\n"actions\U0001f680" [{"API_name": "a", "API_params": {}, "x": 1}]\n"value\U0001f449" v', "unknown key(s) ['x']"),
        ('"thoughts\U0001f914" x\n"actions\U0001f680" []', "no \"value\U0001f449\" marker"),
        ('"thoughts\U0001f914" x\n"actions\U0001f680" [] and more\n"value\U0001f449" v', "between actions and value"),
        ('Sure! "thoughts\U0001f914" x\n"actions\U0001f680" []\n"value\U0001f449" v', "before the first marker"),
    ],
)
def test_malformed_text_names_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ProtocolError) as info:
        AssistantTurn.parse_text(text)
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"conversations": []}, "record.conversations"),
        ({"conversations": [{"from": "robot", "value": "x"}]}, "conversations[0].from"),
        ({"conversations": [{"from": "gpt", "value": "x"}]}, "expected 'human'"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "thoughts": "t", "value": "v"}]}, "missing 'actions'"),
        ({"image": 3, "conversations": [{"from": "human", "value": "q"}]}, "record.image"),
    ],
)
def test_malformed_records_name_the_problem(record: dict, problem: str) -> None:
    with pytest.raises(ProtocolError) as info:
        Conversation.from_llava_json(record)
    assert problem in str(info.value)


def test_validate_turn_against_the_registry_schemas() -> None:
    registry = registry_of(AirInBodyTool, BarrierTool)
    validate_turn(TURN, registry)
    with pytest.raises(ProtocolError, match=r"actions\[0\] \('MedSAM'\): unknown or unavailable tool"):
        validate_turn(AssistantTurn("", [Action("MedSAM", {})], ""), registry)
    bad = AssistantTurn("", [Action("grounding dino", {"image": "<imagepath>", "prompts": []})], "")
    with pytest.raises(ProtocolError, match=r"invalid API_params: grounding dino: prompts"):
        validate_turn(bad, registry)
    extra = AssistantTurn("", [Action("ct lung segmentation", {"image": "<imagepath>", "threshold": 3})], "")
    with pytest.raises(ProtocolError, match="Additional properties"):
        validate_turn(extra, registry)
    with pytest.raises(ProtocolError, match="not allowed on this route"):
        validate_turn(TURN, registry, allowed_tools=["ct lung segmentation"])
