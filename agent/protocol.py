"""The MMedAgent conversation protocol: typed turns, their JSON and flattened text forms.

An assistant turn has three parts (MMedAgent, after LLaVA-Plus): ``thoughts``, ``actions`` (a list of
``{"API_name": ..., "API_params": {...}}``) and ``value`` (what the user sees). Two serialised forms
exist and both are reproduced exactly:

* JSON (the training files): the three parts are keys of the ``{"from": "gpt", ...}`` message.
* Flattened text (what the language model reads and writes): the original training code merges the
  parts into one string, each behind a quoted marker, actions as ``json.dumps`` output::

      "thoughts🤔" <thoughts>
      "actions🚀" [{"API_name": "grounding dino", "API_params": {"image": "<imagepath>"}}]
      "value👉" <value>

  The parser accepts the spacing variants found in the original's own evaluation files (no blank
  after a marker, compact JSON separators) and reports exactly what is wrong with anything else.

Tool results go back to the model as a human message in the original wording,
``"<API_name> output: {python dict repr}\\n\\nAnswer my first question: <question>"``. Several tools in
one turn (beyond MMedAgent's one-per-turn) give one ``"<API_name> output: {...}"`` block each,
separated by blank lines, before the single ``Answer my first question`` line.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

#: Markers of the flattened form, exactly as the original training code writes them.
THOUGHTS_MARKER = '"thoughts\U0001f914"'
ACTIONS_MARKER = '"actions\U0001f680"'
VALUE_MARKER = '"value\U0001f449"'

#: Placeholder for the image in API_params; the loop hands tools the volume itself.
IMAGE_PLACEHOLDER = "<imagepath>"
#: The image token that opens the first human message of a LLaVA conversation.
IMAGE_TOKEN = "<image>"

ANSWER_PREFIX = "Answer my first question: "
OUTPUT_INFIX = " output: "

Role = Literal["human", "gpt"]
ROLES: tuple[str, ...] = ("human", "gpt")


class ProtocolError(ValueError):
    """A turn, message or record does not follow the protocol; the message says what and where."""


class ParamsValidator(Protocol):
    """What validation needs from a tool registry (``tools.registry.ToolRegistry`` fits)."""

    def validate_params(self, name: str, params: dict[str, Any]) -> None: ...

    def available_names(self) -> list[str]: ...


@dataclass(frozen=True)
class Action:
    """One tool call."""

    api_name: str
    api_params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"API_name": self.api_name, "API_params": self.api_params}

    @classmethod
    def from_json(cls, data: Any, where: str = "action") -> Action:
        if not isinstance(data, dict):
            raise ProtocolError(f"{where}: must be an object with API_name and API_params, got {_kind(data)}")
        unknown = sorted(set(data) - {"API_name", "API_params"})
        if unknown:
            raise ProtocolError(f"{where}: unknown key(s) {unknown}; expected API_name and API_params")
        name = data.get("API_name")
        if not isinstance(name, str) or not name.strip():
            raise ProtocolError(f"{where}.API_name: must be a non-empty string, got {name!r}")
        if "API_params" not in data:
            raise ProtocolError(f"{where}: missing API_params")
        params = data["API_params"]
        if not isinstance(params, dict):
            raise ProtocolError(f"{where}.API_params: must be an object, got {_kind(params)}")
        return cls(name, params)


@dataclass(frozen=True)
class AssistantTurn:
    """One assistant ("gpt") turn: reasoning, tool calls (possibly none) and user-visible text."""

    thoughts: str
    actions: list[Action]
    value: str
    #: What the user asked that no available tool can do on this series (planner bookkeeping,
    #: not part of the MMedAgent text or JSON forms): a job whose asks all went unserved fails.
    unserved: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        """The MMedAgent JSON message form (``from`` included)."""
        return {
            "from": "gpt",
            "thoughts": self.thoughts,
            "actions": [a.to_json() for a in self.actions],
            "value": self.value,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "turn") -> AssistantTurn:
        """Parse the JSON form; ``from`` may be absent but must be ``gpt`` when present."""
        if not isinstance(data, dict):
            raise ProtocolError(f"{where}: must be an object, got {_kind(data)}")
        if data.get("from", "gpt") != "gpt":
            raise ProtocolError(f"{where}.from: an assistant turn must be from 'gpt', got {data.get('from')!r}")
        unknown = sorted(set(data) - {"from", "thoughts", "actions", "value"})
        if unknown:
            raise ProtocolError(f"{where}: unknown key(s) {unknown}")
        for key in ("thoughts", "actions", "value"):
            if key not in data:
                raise ProtocolError(f"{where}: missing {key!r}")
        thoughts, value = data["thoughts"], data["value"]
        if not isinstance(thoughts, str):
            raise ProtocolError(f"{where}.thoughts: must be a string, got {_kind(thoughts)}")
        if not isinstance(value, str):
            raise ProtocolError(f"{where}.value: must be a string, got {_kind(value)}")
        return cls(thoughts, _actions_from_json(data["actions"], f"{where}.actions"), value)

    def to_text(self) -> str:
        """The original's flattened form: marker, one blank, content, newline, for each part."""
        actions = json.dumps([a.to_json() for a in self.actions])
        return (
            f"{THOUGHTS_MARKER} {self.thoughts}\n"
            f"{ACTIONS_MARKER} {actions}\n"
            f"{VALUE_MARKER} {self.value}\n"
        )

    @classmethod
    def parse_text(cls, text: str) -> AssistantTurn:
        """Parse the flattened form (surrounding whitespace of each part is dropped).

        The ``thoughts`` part may be missing (LLaVA-Plus lets a turn start with actions); the
        ``actions`` and ``value`` parts are required, in this order.
        """
        if not isinstance(text, str):
            raise ProtocolError(f"turn text: must be a string, got {_kind(text)}")
        a_pos = text.find(ACTIONS_MARKER)
        if a_pos < 0:
            raise ProtocolError(f"turn text: no {ACTIONS_MARKER} marker (expected thoughts, actions, value)")
        t_pos = text.find(THOUGHTS_MARKER, 0, a_pos)
        thoughts = text[t_pos + len(THOUGHTS_MARKER):a_pos].strip() if t_pos >= 0 else ""
        prefix = text[:t_pos] if t_pos >= 0 else text[:a_pos]
        if prefix.strip():
            raise ProtocolError(f"turn text: unexpected text before the first marker: {_clip(prefix.strip())!r}")
        start = a_pos + len(ACTIONS_MARKER)
        while start < len(text) and text[start].isspace():
            start += 1
        try:
            raw_actions, end = json.JSONDecoder().raw_decode(text, start)
        except json.JSONDecodeError as exc:
            raise ProtocolError(
                f"actions: not valid JSON at character {exc.pos - start}: {exc.msg} "
                f"(near {_clip(text[start:start + 60])!r})"
            ) from None
        actions = _actions_from_json(raw_actions, "actions")
        v_pos = text.find(VALUE_MARKER, end)
        if v_pos < 0:
            raise ProtocolError(f"turn text: no {VALUE_MARKER} marker after the actions")
        between = text[end:v_pos].strip()
        if between:
            raise ProtocolError(f"turn text: unexpected text between actions and value: {_clip(between)!r}")
        value = text[v_pos + len(VALUE_MARKER):].strip()
        return cls(thoughts, actions, value)

    @property
    def api_names(self) -> list[str]:
        return [a.api_name for a in self.actions]


@dataclass(frozen=True)
class Message:
    """One conversation message. Assistant messages carry their parsed :class:`AssistantTurn`."""

    role: Role
    value: str
    turn: AssistantTurn | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ProtocolError(f"message.from: must be 'human' or 'gpt', got {self.role!r}")
        if self.role == "human" and self.turn is not None:
            raise ProtocolError("message: a human message cannot carry an assistant turn")

    @classmethod
    def human(cls, value: str) -> Message:
        return cls("human", value)

    @classmethod
    def gpt(cls, turn: AssistantTurn) -> Message:
        return cls("gpt", turn.value, turn)

    def to_json(self) -> dict[str, Any]:
        if self.turn is not None:
            return self.turn.to_json()
        return {"from": self.role, "value": self.value}

    def to_flat_json(self) -> dict[str, Any]:
        """The form the original trainer feeds the model: assistant parts merged into ``value``."""
        if self.turn is not None:
            return {"from": "gpt", "value": self.turn.to_text()}
        return {"from": self.role, "value": self.value}

    @classmethod
    def from_json(cls, data: Any, where: str = "message") -> Message:
        """Parse a message. An assistant message may be in JSON form (thoughts/actions/value keys),
        flattened form (markers inside ``value``) or plain text (a direct answer, no actions)."""
        if not isinstance(data, dict):
            raise ProtocolError(f"{where}: must be an object, got {_kind(data)}")
        role = data.get("from")
        if role not in ROLES:
            raise ProtocolError(f"{where}.from: must be 'human' or 'gpt', got {role!r}")
        value = data.get("value")
        if not isinstance(value, str):
            raise ProtocolError(f"{where}.value: must be a string, got {_kind(value)}")
        if role == "human":
            extra = sorted(set(data) - {"from", "value"})
            if extra:
                raise ProtocolError(f"{where}: unknown key(s) {extra} on a human message")
            return cls("human", value)
        if "thoughts" in data or "actions" in data:
            return cls.gpt(AssistantTurn.from_json(data, where))
        if ACTIONS_MARKER in value:
            try:
                return cls.gpt(AssistantTurn.parse_text(value))
            except ProtocolError as exc:
                raise ProtocolError(f"{where}.value: {exc}") from None
        return cls.gpt(AssistantTurn("", [], value))


@dataclass
class Conversation:
    """One LLaVA-format record: an image (relative path or None) and alternating messages."""

    image: str | None
    messages: list[Message] = field(default_factory=list)
    id: str | None = None
    #: Optional series description for planners that read metadata (written as ``metadata``):
    #: ``{"text": ..., "modality": ..., "shape": [slices, rows, cols], "meta": {...}}``.
    metadata: dict[str, Any] | None = None

    def to_llava_json(self, *, flatten: bool = False) -> dict[str, Any]:
        """The JSON-lines record; ``flatten`` writes assistant turns in the flattened text form."""
        record: dict[str, Any] = {}
        if self.id is not None:
            record["id"] = self.id
        if self.image is not None:
            record["image"] = self.image
        record["conversations"] = [m.to_flat_json() if flatten else m.to_json() for m in self.messages]
        if self.metadata is not None:
            record["metadata"] = self.metadata
        return record

    def to_jsonl_line(self, *, flatten: bool = False) -> str:
        return json.dumps(self.to_llava_json(flatten=flatten), ensure_ascii=False)

    @classmethod
    def from_llava_json(cls, data: Any) -> Conversation:
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise ProtocolError(f"record: not valid JSON: {exc.msg} at character {exc.pos}") from None
        if not isinstance(data, dict):
            raise ProtocolError(f"record: must be an object, got {_kind(data)}")
        convs = data.get("conversations")
        if not isinstance(convs, list) or not convs:
            raise ProtocolError("record.conversations: must be a non-empty list")
        image = data.get("image")
        if image is not None and not isinstance(image, str):
            raise ProtocolError(f"record.image: must be a string path, got {_kind(image)}")
        rec_id = data.get("id")
        metadata = data.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ProtocolError(f"record.metadata: must be an object, got {_kind(metadata)}")
        messages = [Message.from_json(m, f"conversations[{i}]") for i, m in enumerate(convs)]
        for i, msg in enumerate(messages):
            expected = ROLES[i % 2]
            if msg.role != expected:
                raise ProtocolError(f"conversations[{i}].from: expected {expected!r} (turns alternate), got {msg.role!r}")
        return cls(image, messages, None if rec_id is None else str(rec_id), metadata)

    @property
    def question(self) -> str:
        """The user's first question, without the image token."""
        if not self.messages or self.messages[0].role != "human":
            raise ProtocolError("conversation: does not start with a human message")
        return strip_image_token(self.messages[0].value)

    def turns(self) -> list[AssistantTurn]:
        return [m.turn for m in self.messages if m.turn is not None]


def strip_image_token(text: str) -> str:
    return text.replace(IMAGE_TOKEN, "").strip()


def first_human_message(question: str, with_image: bool = True) -> str:
    """``<image>\\n<question>`` as in LLaVA training data (the image token first, then a newline)."""
    return f"{IMAGE_TOKEN}\n{question}" if with_image else question


def to_plain(value: Any) -> Any:
    """Turn numpy scalars/arrays and tuples into plain Python values, so a summary's repr reads
    like the original's (``{'boxes': [[0.1, ...]], 'logits': [0.95]}``) and survives literal_eval."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):  # numpy scalar (np.float64 is a float subclass whose repr differs) or array
        return to_plain(tolist())
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    return str(value)


def tool_output_message(api_name: str, summary: dict[str, Any], question: str) -> str:
    """The human message carrying one tool's output, in the original wording."""
    return tool_outputs_message([(api_name, summary)], question)


def tool_outputs_message(outputs: list[tuple[str, dict[str, Any]]], question: str) -> str:
    """Several tools' outputs (one turn may call several tools): one block each, then the question."""
    if not outputs:
        raise ProtocolError("tool output message: no outputs")
    blocks = [f"{name}{OUTPUT_INFIX}{to_plain(summary)!r}" for name, summary in outputs]
    return "\n\n".join(blocks) + f"\n\n{ANSWER_PREFIX}{question}"


_OUTPUT_BLOCK = re.compile(r"^(?P<name>[^\n]+?) output: (?P<body>\{.*\})$", re.DOTALL)


def parse_tool_outputs_message(text: str) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """Inverse of :func:`tool_outputs_message`: ``([(api_name, summary), ...], question)``."""
    head, sep, question = text.rpartition(f"\n\n{ANSWER_PREFIX}")
    if not sep:
        raise ProtocolError(f"tool output message: no {ANSWER_PREFIX.strip()!r} line")
    outputs: list[tuple[str, dict[str, Any]]] = []
    for i, block in enumerate(_split_blocks(head)):
        match = _OUTPUT_BLOCK.match(block)
        if match is None:
            raise ProtocolError(f"tool output message: block {i} is not '<API_name> output: {{...}}'")
        try:
            summary = ast.literal_eval(match["body"])
        except (ValueError, SyntaxError) as exc:
            raise ProtocolError(f"tool output message: block {i}: summary is not a literal dict: {exc}") from None
        if not isinstance(summary, dict):
            raise ProtocolError(f"tool output message: block {i}: summary must be a dict")
        outputs.append((match["name"], summary))
    return outputs, question


def _split_blocks(head: str) -> list[str]:
    """Split on blank lines that start a new ``<name> output: {`` block."""
    return re.split(r"\n\n(?=[^\n]+? output: \{)", head)


def corrective_message(reason: str) -> str:
    """The human message asking the model to repair a malformed turn (one retry)."""
    return (
        f"Your last reply could not be used: {reason}. Reply again with exactly three parts:\n"
        f'{THOUGHTS_MARKER} your reasoning\n'
        f'{ACTIONS_MARKER} a JSON list of {{"API_name": ..., "API_params": {{...}}}} objects (or [])\n'
        f"{VALUE_MARKER} the text for the user"
    )


def validate_turn(
    turn: AssistantTurn, registry: ParamsValidator, allowed_tools: list[str] | None = None
) -> None:
    """Check every action names an available, allowed tool and its params fit the tool's schema.

    Raises :class:`ProtocolError` naming the action and the problem.
    """
    available = set(registry.available_names())
    for i, action in enumerate(turn.actions):
        where = f"actions[{i}] ({action.api_name!r})"
        if action.api_name not in available:
            raise ProtocolError(f"{where}: unknown or unavailable tool; available: {sorted(available)}")
        if allowed_tools is not None and action.api_name not in allowed_tools:
            raise ProtocolError(f"{where}: tool not allowed on this route; allowed: {sorted(allowed_tools)}")
        try:
            registry.validate_params(action.api_name, action.api_params)
        except (ValueError, KeyError) as exc:  # ParamsInvalid is a ValueError
            raise ProtocolError(f"{where}: invalid API_params: {exc}") from None


def _actions_from_json(data: Any, where: str) -> list[Action]:
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: must be a list, got {_kind(data)}")
    return [Action.from_json(item, f"{where}[{i}]") for i, item in enumerate(data)]


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
