"""The ``openai`` planner against a real local HTTP server speaking chat completions: request shape,
reply parsing (JSON, fenced, flattened, garbage), timeouts, retries, and the loop's fallback."""
from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.loop import run_agent
from agent.planners.base import PlannerOutputError, PlannerUnavailable, build_planner
from agent.planners.openai_compat import OpenAICompatPlanner
from agent.planners.rules import RulesPlanner
from agent.protocol import Action, AssistantTurn, parse_tool_outputs_message
from config.schema import PlannerConfig
from tests.agent_helpers import AirInBodyTool, phantom_volume, registry_of
from tests.agent_hf_helpers import (
    Behaviour,
    ChatServer,
    plan_context,
    reply,
    slow,
    status,
)

TURN = AssistantTurn(
    "The tumor must be located first.",
    [Action("grounding dino", {"image": "<imagepath>", "prompts": ["tumor"]})],
    "I will locate it. Please wait.",
)
TURN_JSON = json.dumps({k: v for k, v in TURN.to_json().items() if k != "from"})


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def serve() -> Iterator[list[ChatServer]]:
    servers: list[ChatServer] = []
    yield servers
    for server in servers:
        server.stop()


def _planner(server: ChatServer, **overrides: object) -> OpenAICompatPlanner:
    cfg = PlannerConfig(**{"backend": "openai", "endpoint": server.base_url, "model": "llava-med-test",
                           "timeout_seconds": 2.0, "retries": 2, "max_new_tokens": 77, **overrides})
    return OpenAICompatPlanner(cfg, backoff_seconds=0.05)


def _start(serve: list[ChatServer], *script: Behaviour) -> ChatServer:
    server = ChatServer(list(script)).start()
    serve.append(server)
    return server


def test_request_shape_and_json_reply(serve: list[ChatServer], monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    monkeypatch.setenv("MMED_TEST_KEY", "sk-local-test")
    server = _start(serve, reply(TURN_JSON))
    cfg = PlannerConfig(backend="openai", endpoint=server.base_url + "/", model="llava-med-test",
                        api_key_env="MMED_TEST_KEY", max_new_tokens=77)
    planner = build_planner("openai", cfg)  # through the registry, as the node builds it
    ctx = plan_context(metadata="Modality: CT; Body part: CHEST")
    assert planner.next_turn(ctx) == TURN

    [request] = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-local-test"
    body = request["body"]
    assert body["model"] == "llava-med-test" and body["max_tokens"] == 77 and body["temperature"] == 0
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user"]
    system = body["messages"][0]["content"]
    assert "- grounding dino: Finds boxes" in system and "prompts (list of string, required)" in system
    assert "JSON object" in system
    parts = body["messages"][1]["content"]
    image_part = next(p for p in parts if p["type"] == "image_url")
    text_part = next(p for p in parts if p["type"] == "text")
    assert "Can you locate the tumor?" in text_part["text"] and "Body part: CHEST" in text_part["text"]
    assert "<image>" not in text_part["text"]
    prefix = "data:image/png;base64,"
    url = image_part["image_url"]["url"]
    assert url.startswith(prefix)
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))).convert("RGB"))
    assert np.array_equal(decoded, ctx.image)


@pytest.mark.parametrize("content", [
    "Sure! Here is my plan:\n```json\n" + TURN_JSON + "\n```\nLet me know.",
    TURN.to_text(),
    "Plan follows.\n" + TURN.to_text(),
])
def test_chatty_fenced_and_flattened_replies_parse(serve: list[ChatServer], content: str) -> None:
    server = _start(serve, reply(content))
    assert _planner(server).next_turn(plan_context()) == TURN


@pytest.mark.parametrize("content, reason", [
    ("I think it is a tumor.", "neither a JSON object"),
    ('{"thoughts": "x", "actions": [{"API_name": ""}], "value": "v"}', "API_name"),
    ('"thoughts\U0001f914" x\n"actions\U0001f680" [{"API_name": "grounding dino",\n"value\U0001f449" y', "actions"),
    ("", "empty reply"),
])
def test_garbage_reply_is_a_planner_output_error(serve: list[ChatServer], content: str, reason: str) -> None:
    server = _start(serve, reply(content))
    with pytest.raises(PlannerOutputError) as err:
        _planner(server).next_turn(plan_context())
    assert reason in err.value.reason
    assert err.value.raw_text == content
    assert len(server.requests) == 1  # a reply that arrived is not retried by the transport


def test_server_errors_are_retried_with_backoff(serve: list[ChatServer]) -> None:
    server = _start(serve, status(503), status(502), reply(TURN_JSON))
    started = time.monotonic()
    assert _planner(server, retries=2).next_turn(plan_context()) == TURN
    assert len(server.requests) == 3
    assert time.monotonic() - started >= 0.05 + 0.1  # backoff 0.05 s, then 0.1 s


def test_retries_run_out_into_planner_unavailable(serve: list[ChatServer]) -> None:
    server = _start(serve, status(500))
    with pytest.raises(PlannerUnavailable, match="3 attempt"):
        _planner(server, retries=2).next_turn(plan_context())
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(serve: list[ChatServer]) -> None:
    server = _start(serve, status(401, "bad key"))
    with pytest.raises(PlannerUnavailable, match="401"):
        _planner(server, retries=3).next_turn(plan_context())
    assert len(server.requests) == 1


def test_timeout_then_retry_succeeds(serve: list[ChatServer]) -> None:
    server = _start(serve, slow(1.5, reply(TURN_JSON)), reply(TURN_JSON))
    started = time.monotonic()
    assert _planner(server, timeout_seconds=0.3, retries=1).next_turn(plan_context()) == TURN
    elapsed = time.monotonic() - started
    assert len(server.requests) == 2
    assert 0.3 <= elapsed < 1.4, elapsed  # gave up on the slow reply at the timeout, not after it


def test_every_attempt_timing_out_is_unavailable(serve: list[ChatServer]) -> None:
    server = _start(serve, slow(2.0, reply(TURN_JSON)))
    started = time.monotonic()
    with pytest.raises(PlannerUnavailable, match="2 attempt"):
        _planner(server, timeout_seconds=0.25, retries=1).next_turn(plan_context())
    assert time.monotonic() - started < 1.5


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        OpenAICompatPlanner(PlannerConfig(backend="openai", model="m"))
    with pytest.raises(ValueError, match="MMED_UNSET_KEY"):
        OpenAICompatPlanner(PlannerConfig(backend="openai", endpoint="http://127.0.0.1:9/v1", model="m",
                                          api_key_env="MMED_UNSET_KEY"))


# ----------------------------------------------------------------------- through the loop

LUNG_CALL = AssistantTurn("The lungs need segmenting.", [Action("ct lung segmentation", {"image": "<imagepath>"})],
                          "I will segment the lungs. Please wait.")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> object:
    return phantom_volume(tmp_path_factory.mktemp("phantom"), slices=8, rows=32, cols=32)[0]


def test_loop_runs_the_tool_the_endpoint_asks_for(serve: list[ChatServer], phantom: object) -> None:
    final = '{"thoughts": "The tool measured them.", "actions": [], "value": "Answer from the endpoint."}'
    server = _start(serve, reply(LUNG_CALL.to_text()), reply(final))
    result = run_agent("Segment the lungs and measure their volumes.", phantom,  # type: ignore[arg-type]
                       registry_of(AirInBodyTool), _planner(server), max_rounds=2)
    assert result.fallback_reason is None and result.planner == "openai"
    assert result.answer == "Answer from the endpoint."
    assert len(server.requests) == 2
    second = server.requests[1]["body"]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert json.loads(second[2]["content"])["actions"][0]["API_name"] == "ct lung segmentation"
    outputs, _ = parse_tool_outputs_message(second[3]["content"])
    assert outputs[0][0] == "ct lung segmentation" and outputs[0][1] == result.outputs[0].summary


def test_loop_falls_back_to_rules_after_garbage_twice(serve: list[ChatServer], phantom: object) -> None:
    server = _start(serve, reply("no idea"))
    result = run_agent("Segment the lungs and measure their volumes.", phantom,  # type: ignore[arg-type]
                       registry_of(AirInBodyTool), _planner(server), max_rounds=2, fallback=RulesPlanner())
    assert result.planner == "rules" and result.fallback_reason is not None
    assert "corrective retry" in result.fallback_reason
    assert len(server.requests) == 2  # the first try and the one corrective retry
    retry_messages = server.requests[1]["body"]["messages"]
    assert retry_messages[-2] == {"role": "assistant", "content": "no idea"}
    assert "could not be used" in retry_messages[-1]["content"]
    assert result.answer  # the rules planner answered


def test_loop_falls_back_when_endpoint_is_down(phantom: object, tmp_path: Path) -> None:
    cfg = PlannerConfig(backend="openai", endpoint="http://127.0.0.1:9/v1", model="m", timeout_seconds=1, retries=1)
    result = run_agent("Segment the lungs and measure their volumes.", phantom,  # type: ignore[arg-type]
                       registry_of(AirInBodyTool), OpenAICompatPlanner(cfg, backoff_seconds=0.01), max_rounds=2)
    assert result.planner == "rules" and "unavailable" in (result.fallback_reason or "")
