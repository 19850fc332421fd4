"""What an MLLM planner is shown, and how its reply is read back, for every model backend.

The prompt follows MMedAgent's LLaVA ``v1`` conversation: the v1 system sentence, then the user's
question after the image, then alternating assistant turns and tool-output messages. We add to the
system text a short description of the turn format and the tools (name, description, JSON schema of
``API_params``), and put the series' DICOM metadata before the question, so a model that was not
trained on our tool set still knows what it may call.

Two turn forms exist (see :mod:`agent.protocol`): the flattened text form, which MMedAgent and our
trainer write into the model (used by the ``transformers`` backend, so a released or fine-tuned
checkpoint sees what it was trained on), and the JSON form (used by the ``openai`` backend: general
chat models follow "reply with one JSON object" more reliably than emoji markers).
:func:`parse_reply` accepts either form from any backend, and digs the turn out of a chatty reply.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from agent.planners.base import PlanContext, PlannerOutputError, ToolSpec
from agent.protocol import (
    ACTIONS_MARKER,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN,
    THOUGHTS_MARKER,
    VALUE_MARKER,
    AssistantTurn,
    Message,
    ProtocolError,
    strip_image_token,
)

TurnForm = Literal["text", "json"]

#: The LLaVA v1 system sentence (``conv_vicuna_v1``), which MMedAgent was trained behind.
V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

#: LLaVA ``v1`` conversation as a Jinja chat template, for checkpoints that ship none (a converted
#: LLaVA-Med has no template): ``{system} USER: <image>\n{q} ASSISTANT: {a}</s>USER: ...``.
#: Content may be a string or a list of ``{"type": "image"}`` / ``{"type": "text"}`` parts.
LLAVA_V1_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set ns = namespace(t='') %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{% set ns.t = ns.t + '<image>\n' %}"
    "{% elif part['type'] == 'text' %}{% set ns.t = ns.t + part['text'] %}{% endif %}"
    "{% endfor %}{% set text = ns.t %}{% endif %}"
    "{% if message['role'] == 'system' %}{{ text + ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + text + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + text + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_FORM_HELP: dict[str, str] = {
    "text": (
        "Answer every turn in exactly three parts:\n"
        f"{THOUGHTS_MARKER} your reasoning\n"
        f'{ACTIONS_MARKER} a JSON list of tool calls {{"API_name": ..., "API_params": {{...}}}}, or []\n'
        f"{VALUE_MARKER} the text for the user"
    ),
    "json": (
        "Answer every turn with one JSON object and nothing else: "
        '{"thoughts": "<your reasoning>", "actions": [{"API_name": "<tool>", "API_params": {...}}], '
        '"value": "<the text for the user>"}. Use "actions": [] when no tool is needed.'
    ),
}


@dataclass(frozen=True)
class ChatMessage:
    """One backend-neutral chat message; ``image`` marks the message the image belongs to."""

    role: Literal["system", "user", "assistant"]
    text: str
    image: bool = False


def system_prompt(tools: list[ToolSpec], form: TurnForm) -> str:
    """The v1 system sentence, the turn format, and the tools the model may call."""
    lines = [V1_SYSTEM, "", _FORM_HELP[form], ""]
    if tools:
        lines.append(
            "Tools may be called several in one turn; each output comes back as "
            f"'<API_name> output: {{...}}'. Write \"{IMAGE_PLACEHOLDER}\" for the image parameter. Tools:"
        )
        for spec in tools:
            lines.append(f"- {spec.name}: {spec.description} API_params: {describe_params(spec.params_schema)}")
    else:
        lines.append("No tools are available: answer directly with an empty actions list.")
    return "\n".join(lines)


def describe_params(schema: dict[str, Any]) -> str:
    """A one-line summary of a params JSON schema: ``name (type, required)``, required first.

    The full schemas of the tool suite run to ~1,500 tokens, which with LLaVA-1.5's 576 image
    tokens would not leave room for the conversation in MMedAgent's 2,048-token context; names,
    types, ranges and which are required are what the model needs to write valid calls (the loop
    validates against the full schema and asks again when a call does not fit).
    """
    props: dict[str, Any] = schema.get("properties", {})
    required = [n for n in schema.get("required", []) if n in props]
    parts = [f"{name} ({_type_text(props[name])}, required)" for name in required]
    parts += [f"{name} ({_type_text(props[name])})" for name in sorted(props) if name not in required]
    alternatives = [alt.get("required", []) for alt in schema.get("anyOf", []) if alt.get("required")]
    if alternatives:
        parts.append("one of " + " | ".join("+".join(group) for group in alternatives) + " is required")
    return "; ".join(parts) if parts else "none"


def _type_text(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return "one of " + "|".join(json.dumps(v) for v in prop["enum"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type_text(prop.get('items', {}))}"
    if kind in ("number", "integer") and ("minimum" in prop or "maximum" in prop):
        return f"{kind} {prop.get('minimum', '')}..{prop.get('maximum', '')}"
    return "|".join(kind) if isinstance(kind, list) else str(kind)


def render_turn(turn: AssistantTurn, form: TurnForm) -> str:
    """An assistant turn as the model writes it in ``form``."""
    if form == "text":
        return turn.to_text().rstrip("\n")
    data = turn.to_json()
    data.pop("from")
    return json.dumps(data, ensure_ascii=False)


def first_user_text(question: str, metadata_text: str = "") -> str:
    """The first user message's text (the image part goes before it): metadata, then the question."""
    question = strip_image_token(question)
    if metadata_text.strip():
        return f"Image information: {metadata_text.strip()}\n\n{question}"
    return question


def history_messages(
    history: list[Message], tools: list[ToolSpec], form: TurnForm, *,
    metadata_text: str = "", with_image: bool = True,
) -> list[ChatMessage]:
    """System prompt plus the conversation. The first human message gets the image (when there
    is one) and the metadata; assistant messages are rendered in ``form``."""
    out = [ChatMessage("system", system_prompt(tools, form))]
    for i, msg in enumerate(history):
        if msg.role == "human":
            if i == 0:
                out.append(ChatMessage("user", first_user_text(msg.value, metadata_text), image=with_image))
            else:
                out.append(ChatMessage("user", msg.value))
        elif msg.turn is not None:
            out.append(ChatMessage("assistant", render_turn(msg.turn, form)))
        else:
            out.append(ChatMessage("assistant", msg.value))
    return out


def context_messages(ctx: PlanContext, form: TurnForm) -> list[ChatMessage]:
    """The messages for one planning call, ending with a user message (the model answers next)."""
    history = ctx.history or [Message.human(f"{IMAGE_TOKEN}\n{ctx.instruction}")]
    return history_messages(
        history, ctx.tools, form, metadata_text=ctx.metadata_text, with_image=ctx.image is not None
    )


def to_hf_chat(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages in the shape Hugging Face processors' chat templates take (content parts)."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        parts: list[dict[str, Any]] = [{"type": "image"}] if msg.image else []
        parts.append({"type": "text", "text": msg.text})
        out.append({"role": msg.role, "content": parts})
    return out


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_TURN_KEYS = frozenset({"from", "thoughts", "actions", "value"})


def parse_reply(raw: str) -> AssistantTurn:
    """Read an assistant turn out of a model reply: a JSON turn object first (anywhere in the
    reply, code fences allowed), then the flattened marker form. Anything else, or a turn that
    breaks the protocol, raises :class:`PlannerOutputError` with the raw text and the reason."""
    text = raw.strip()
    if not text:
        raise PlannerOutputError(raw, "empty reply")
    json_error: str | None = None
    for candidate in _json_objects(text):
        if not (set(candidate) <= _TURN_KEYS and {"actions", "value"} & set(candidate)):
            continue
        try:
            return AssistantTurn.from_json(candidate, "reply")
        except ProtocolError as exc:
            json_error = str(exc)
            break
    a_pos = text.find(ACTIONS_MARKER)
    if a_pos >= 0:
        t_pos = text.rfind(THOUGHTS_MARKER, 0, a_pos)
        try:
            return AssistantTurn.parse_text(text[t_pos if t_pos >= 0 else a_pos:])
        except ProtocolError as exc:
            raise PlannerOutputError(raw, str(exc)) from None
    if json_error is not None:
        raise PlannerOutputError(raw, json_error)
    raise PlannerOutputError(
        raw,
        "reply is neither a JSON object with thoughts/actions/value nor the "
        f"{THOUGHTS_MARKER}/{ACTIONS_MARKER}/{VALUE_MARKER} form",
    )


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Top-level JSON objects in ``text`` (fenced blocks first), in order of appearance."""
    sources = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    for source in sources:
        pos = source.find("{")
        while pos >= 0:
            try:
                obj, end = decoder.raw_decode(source, pos)
            except json.JSONDecodeError:
                pos = source.find("{", pos + 1)
                continue
            if isinstance(obj, dict):
                found.append(obj)
            pos = source.find("{", end)
    return found
