"""Shared pieces of the MLLM planner tests: a chat-completions server, contexts, tiny checkpoints."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from agent.planners.base import PlanContext, ToolSpec
from agent.protocol import (
    Action,
    AssistantTurn,
    Conversation,
    Message,
    first_human_message,
    tool_output_message,
)

GROUNDING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"image": {"type": "string"}, "prompts": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
    "required": ["prompts"],
}
LUNG_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"image": {"type": "string"}}}

TOOLS: list[ToolSpec] = [
    ToolSpec("grounding dino", "Finds boxes of the objects named in prompts.", GROUNDING_SCHEMA),
    ToolSpec("ct lung segmentation", "Segments the lungs of a CT volume and measures them.", LUNG_SCHEMA),
]


def test_image(seed: int = 0, size: tuple[int, int] = (24, 20)) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (*size, 3), dtype=np.uint8)


def plan_context(question: str = "Can you locate the tumor?", image: np.ndarray | None = None,
                 tools: list[ToolSpec] | None = None, metadata: str = "Modality: CT") -> PlanContext:
    img = test_image() if image is None else image
    return PlanContext(
        instruction=question, metadata_text=metadata, image=img,
        history=[Message.human(first_human_message(question))], tools=list(TOOLS if tools is None else tools),
        modality="CT", volume_shape=(1, *img.shape[:2]),
    )


# ------------------------------------------------------------------------- records


def grounding_record(image_name: str, question: str = "Can you locate the tumor?", prompt: str = "tumor",
                     box: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)) -> Conversation:
    """A two-round MMedAgent grounding conversation (tool call, then answer from its output)."""
    call = AssistantTurn(
        f"I need to find the {prompt}; grounding dino can locate it.",
        [Action("grounding dino", {"image": "<imagepath>", "prompts": [prompt]})],
        "I will locate it with grounding dino. Please wait.",
    )
    answer = AssistantTurn("The tool found one box.", [], f"The {prompt} is at {list(box)}.")
    output = tool_output_message("grounding dino", {"boxes": [list(box)], "logits": [0.95], "phrases": [prompt]}, question)
    return Conversation(image_name, [
        Message.human(first_human_message(question)), Message.gpt(call), Message.human(output), Message.gpt(answer),
    ])


def lung_record(image_name: str, question: str = "Segment the lungs and measure their volumes.") -> Conversation:
    call = AssistantTurn(
        "The lungs need a 3D segmentation.", [Action("ct lung segmentation", {"image": "<imagepath>"})],
        "I will segment the lungs. Please wait.",
    )
    answer = AssistantTurn("The tool measured both lungs.", [], "The lungs measure 4200 mL.")
    output = tool_output_message("ct lung segmentation", {"lungs": {"volume_ml": 4200.0}}, question)
    return Conversation(image_name, [
        Message.human(first_human_message(question)), Message.gpt(call), Message.human(output), Message.gpt(answer),
    ])


def write_records(folder: Path, records: list[Conversation], name: str = "train.jsonl") -> Path:
    """Write records and a PNG per distinct image name (seeded noise) into ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(sorted({r.image for r in records if r.image})):
        Image.fromarray(test_image(i, (32, 32))).save(folder / image)
    path = folder / name
    path.write_text("".join(r.to_jsonl_line() + "\n" for r in records), encoding="utf-8")
    return path


# ------------------------------------------------------------------------- HTTP server

Behaviour = Callable[[dict[str, Any]], tuple[int, Any, float]]


def reply(content: str) -> Behaviour:
    """Answer 200 with a chat completion whose message content is ``content``."""
    return lambda body: (200, completion(content, body.get("model", "")), 0.0)


def status(code: int, text: str = "") -> Behaviour:
    return lambda body: (code, {"error": {"message": text or f"status {code}"}}, 0.0)


def slow(seconds: float, then: Behaviour) -> Behaviour:
    def run(body: dict[str, Any]) -> tuple[int, Any, float]:
        code, payload, _ = then(body)
        return code, payload, seconds
    return run


def completion(content: str, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@dataclass
class ChatServer:
    """A real HTTP server on 127.0.0.1 speaking ``POST /v1/chat/completions``.

    Each request takes the next behaviour of ``script`` (the last one repeats); every request's
    path, headers and JSON body are recorded in ``requests``.
    """

    script: list[Behaviour]
    requests: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> ChatServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                index = len(owner.requests)
                owner.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if self.path != "/v1/chat/completions":
                    code, payload, delay = 404, {"error": "not found"}, 0.0
                else:
                    code, payload, delay = owner.script[min(index, len(owner.script) - 1)](body)
                time.sleep(delay)
                data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left: exactly what a timeout test provokes

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
