"""The agent loop: plan -> validate -> run tools -> feed outputs back -> final answer.

One round is one assistant turn. A turn with actions runs all its tools (independent by
construction, so in parallel on a thread pool; MMedAgent runs one per turn), and their outputs go
back to the planner as one human message in the original's wording. A turn without actions is the
answer. Malformed planner output gets one corrective retry; after that, or when the backend is
unavailable, the rules planner takes over and ``fallback_reason`` records why.
"""
from __future__ import annotations

import contextvars
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agent.planners.aggregate import aggregate_turn
from agent.planners.base import (
    PlanContext,
    Planner,
    PlannerOutputError,
    PlannerUnavailable,
    ToolSource,
    tool_specs,
)
from agent.planners.rules import RulesPlanner
from agent.protocol import (
    Action,
    AssistantTurn,
    Conversation,
    Message,
    ProtocolError,
    corrective_message,
    first_human_message,
    to_plain,
    tool_outputs_message,
    validate_turn,
)
from agent.render import metadata_text, render_key_image, volume_meta
from image_model.findings import ToolOutput
from image_model.volume import Volume
from tools.base import ToolRefused

log = logging.getLogger(__name__)

#: Threads for the tools of one turn.
MAX_PARALLEL_TOOLS = 4
#: Characters of a malformed planner output kept in the job's error list.
RAW_TEXT_KEPT = 300


@dataclass(frozen=True)
class ToolRun:
    """One tool call: which tool, how long it ran, whether it refused, when it ended (Unix time)."""

    api_name: str
    seconds: float
    refused: bool = False
    ended: float = 0.0


@dataclass
class AgentResult:
    conversation: Conversation
    #: Outputs of the tools that ran (refusals are in ``errors`` and in the conversation).
    outputs: list[ToolOutput]
    #: The final answer text (the last assistant turn's value).
    answer: str
    #: Name of the planner that produced the answer (the fallback's name after a fallback).
    planner: str
    fallback_reason: str | None = None
    errors: list[str] = field(default_factory=list)
    #: Asks the planner found no available tool for (see ``AssistantTurn.unserved``).
    unserved: list[str] = field(default_factory=list)
    #: Every tool call, in order.
    tool_runs: list[ToolRun] = field(default_factory=list)


def run_agent(
    instruction: str,
    volume: Volume,
    registry: ToolSource,
    planner: Planner,
    *,
    max_rounds: int = 3,
    allowed_tools: list[str] | None = None,
    fallback: Planner | None = None,
) -> AgentResult:
    """Answer ``instruction`` about ``volume`` with ``planner`` and the registry's tools.

    ``max_rounds`` bounds the tool rounds; after the last one the planner gets one more turn to
    answer, and if it still asks for tools the rules aggregator answers from what ran.
    ``fallback`` takes over when the planner fails (default: a rules planner built from the
    planner settings ``planner`` was built from, so ``planner.intent_model`` and
    ``planner.intent_weights`` hold for the fallback too).
    """
    specs = tool_specs(registry, allowed_tools)
    backup = fallback if fallback is not None else RulesPlanner(planner.cfg)
    history: list[Message] = [Message.human(first_human_message(instruction))]
    base = PlanContext(
        instruction=instruction,
        metadata_text=metadata_text(volume),
        image=render_key_image(volume, hint=instruction),
        history=history,
        tools=specs,
        modality=volume.modality.upper(),
        volume_shape=volume.shape,
        meta=volume_meta(volume),
        header=volume.datasets[0] if volume.datasets else None,
    )
    state = _State(planner)
    outputs: list[ToolOutput] = []
    summaries: list[tuple[str, dict[str, Any]]] = []
    answer = ""
    runs: list[ToolRun] = []
    for round_no in range(max_rounds + 1):
        turn = state.next_turn(base, history, registry, allowed_tools, backup)
        if turn.actions and round_no == max_rounds:
            state.errors.append(f"round limit ({max_rounds}) reached; answering from the tool outputs so far")
            turn = aggregate_turn(summaries, instruction) if summaries else AssistantTurn(
                "No tool output to report.", [], "The agent reached its round limit without a result."
            )
        history.append(Message.gpt(turn))
        if not turn.actions:
            answer = turn.value
            break
        round_summaries = run_tools(turn.actions, volume, registry, state.errors, outputs, runs)
        summaries.extend(round_summaries)
        history.append(Message.human(tool_outputs_message(round_summaries, instruction)))
    conversation = Conversation(image=None, messages=list(history))
    unserved = list(dict.fromkeys(u for m in history if m.turn for u in m.turn.unserved))
    return AgentResult(
        conversation, outputs, answer, state.planner.name, state.fallback_reason, state.errors, unserved,
        runs,
    )


class _State:
    """Which planner is speaking, whether its one corrective retry is spent, and what went wrong."""

    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        self.retried = False
        self.fallback_reason: str | None = None
        self.errors: list[str] = []

    def next_turn(
        self,
        base: PlanContext,
        history: list[Message],
        registry: ToolSource,
        allowed_tools: list[str] | None,
        backup: Planner,
    ) -> AssistantTurn:
        while True:
            ctx = _with_history(base, history)
            turn: AssistantTurn | None = None
            try:
                turn = self.planner.next_turn(ctx)
                validate_turn(turn, registry, allowed_tools)
                return turn
            except PlannerUnavailable as exc:
                if self.planner is backup:
                    raise
                self._fall_back(backup, f"planner {self.planner.name!r} unavailable: {exc}")
            except (PlannerOutputError, ProtocolError) as exc:
                if self.planner is backup:
                    raise  # the rules planner's own output is invalid: a bug, not a model's mistake
                reason = exc.reason if isinstance(exc, PlannerOutputError) else str(exc)
                if isinstance(exc, PlannerOutputError):
                    raw = exc.raw_text
                else:
                    raw = turn.to_text() if turn is not None else ""
                self.errors.append(f"planner {self.planner.name!r} output unusable: {reason}; output: {raw[:RAW_TEXT_KEPT]!r}")
                if not self.retried:
                    self.retried = True
                    history.append(Message("gpt", raw))
                    history.append(Message.human(corrective_message(reason)))
                    continue
                # Drop the failed exchange so the fallback sees a clean conversation.
                del history[-2:]
                self._fall_back(backup, f"planner {self.planner.name!r} output malformed after one corrective retry: {reason}")

    def _fall_back(self, backup: Planner, reason: str) -> None:
        log.warning("falling back to the %s planner: %s", backup.name, reason)
        self.fallback_reason = reason
        self.planner = backup


def _with_history(base: PlanContext, history: list[Message]) -> PlanContext:
    return dataclasses.replace(base, history=list(history))


def run_tools(
    actions: list[Action],
    volume: Volume,
    registry: ToolSource,
    errors: list[str],
    outputs: list[ToolOutput],
    runs: list[ToolRun] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Run a turn's tools in parallel; return ``(API_name, summary)`` per action, in order.

    A refusal becomes the summary ``{'refused': reason}`` (the planner is told) and an error entry.
    Each call is appended to ``runs`` with its duration. Tools run in the caller's context
    (``contextvars``): what the caller collects while a job runs (its disclosures) includes them.
    """

    def call(action: Action) -> tuple[ToolOutput | ToolRefused, float, float]:
        tool = registry.get(action.api_name)
        started = time.perf_counter()
        try:
            result: ToolOutput | ToolRefused = tool.run(volume, dict(action.api_params))
        except ToolRefused as exc:
            result = exc
        return result, time.perf_counter() - started, time.time()

    workers = max(1, min(MAX_PARALLEL_TOOLS, len(actions)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agent-tool") as pool:
        futures = [pool.submit(contextvars.copy_context().run, call, action) for action in actions]
        timed = [future.result() for future in futures]
    summaries: list[tuple[str, dict[str, Any]]] = []
    for action, (result, seconds, ended) in zip(actions, timed):
        if runs is not None:
            runs.append(ToolRun(action.api_name, seconds, isinstance(result, ToolRefused), ended))
        if isinstance(result, ToolRefused):
            errors.append(f"{action.api_name}: refused: {result}")
            summaries.append((action.api_name, {"refused": str(result)}))
        else:
            outputs.append(result)
            summaries.append((action.api_name, to_plain(result.summary)))
    return summaries
