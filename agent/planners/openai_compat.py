"""The ``openai`` planner: any OpenAI-compatible ``/v1/chat/completions`` endpoint with image input.

vLLM, SGLang, Ollama, LM Studio and llama.cpp's server all speak this protocol, so a site can serve
LLaVA-Med, Qwen-VL or its own fine-tune on a GPU box and point ``planner.endpoint`` at it. The
request uses only the standard library (``urllib``): the image goes inline as a PNG data URL
(``image_url`` content part), the reply is read with :func:`agent.prompting.parse_reply`.
An endpoint that is not loopback (or ``planner.treat_as_remote``) gets the request de-identified
first (:func:`agent.outbound.deidentify_request`, PS3.15 Annex E Basic Profile).

Transport faults (connection refused, timeout, HTTP 429/5xx) are retried ``planner.retries`` times
with exponential backoff, then raise :class:`~agent.planners.base.PlannerUnavailable` (the loop
hands over to the rules planner); other HTTP errors (401, 404...) raise it at once. A reply that arrives but is not a usable turn is not retried here: it is a
:class:`~agent.planners.base.PlannerOutputError`, and the loop's corrective retry handles it.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import time
import urllib.error
import urllib.request
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.outbound import deidentify_request
from agent.planners.base import (
    PlanContext,
    Planner,
    PlannerOutputError,
    PlannerUnavailable,
    register_planner,
)
from agent.prompting import ChatMessage, context_messages, parse_reply
from agent.protocol import AssistantTurn
from image_model.deidentify import is_remote_endpoint

if TYPE_CHECKING:
    from config.schema import PlannerConfig

log = logging.getLogger(__name__)

CHAT_COMPLETIONS_PATH = "/chat/completions"
#: First wait between attempts; doubles each retry, capped at :data:`MAX_BACKOFF_SECONDS`.
INITIAL_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
#: HTTP statuses worth retrying: rate limiting and server-side failures.
RETRYABLE_STATUSES = frozenset({
    HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.INTERNAL_SERVER_ERROR, HTTPStatus.BAD_GATEWAY,
    HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.GATEWAY_TIMEOUT,
})


def png_data_url(image: np.ndarray) -> str:
    """``data:image/png;base64,...`` of an (rows, cols, 3) uint8 image."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (rows, cols, 3) uint8, got {image.shape} {image.dtype}")
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_payload(messages: list[ChatMessage], image: np.ndarray | None) -> list[dict[str, Any]]:
    """OpenAI chat messages; the image rides on the message that carries it, as a data URL."""
    url = png_data_url(image) if image is not None else None
    out: list[dict[str, Any]] = []
    for msg in messages:
        if msg.image and url is not None:
            content: Any = [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": msg.text},
            ]
        else:
            content = msg.text
        out.append({"role": msg.role, "content": content})
    return out


def completions_url(endpoint: str) -> str:
    """Accept a base URL (``http://host:8000/v1``) or the full chat-completions URL."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(CHAT_COMPLETIONS_PATH) else endpoint + CHAT_COMPLETIONS_PATH


@register_planner
class OpenAICompatPlanner(Planner):
    """Plans through a remote OpenAI-compatible chat endpoint."""

    name = "openai"

    def __init__(self, cfg: PlannerConfig, *, backoff_seconds: float = INITIAL_BACKOFF_SECONDS) -> None:
        super().__init__(cfg)
        if not cfg.endpoint:
            raise ValueError("planner.endpoint is required for the openai backend")
        if not cfg.model:
            raise ValueError("planner.model is required for the openai backend")
        self.url = completions_url(cfg.endpoint)
        self.model = cfg.model
        self.timeout = cfg.timeout_seconds
        self.retries = cfg.retries
        self.max_tokens = cfg.max_new_tokens
        self.backoff_seconds = backoff_seconds
        #: Whether requests are de-identified before they leave (a non-loopback endpoint).
        self.remote = is_remote_endpoint(self.url, cfg.treat_as_remote)
        self.api_key: str | None = None
        if cfg.api_key_env:
            self.api_key = os.environ.get(cfg.api_key_env)
            if not self.api_key:
                raise ValueError(f"planner.api_key_env names {cfg.api_key_env!r}, which is not set")

    def next_turn(self, ctx: PlanContext) -> AssistantTurn:
        messages, image = context_messages(ctx, "json"), ctx.image
        if self.remote:
            messages, image = deidentify_request(messages, image, ctx.header, endpoint=self.url)
        body = {
            "model": self.model,
            "messages": chat_payload(messages, image),
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        reply = self._post(body)
        return parse_reply(_message_text(reply))

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.backoff_seconds * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
                log.warning("planner endpoint attempt %d failed (%s); retrying in %.1f s", attempt, last_error, delay)
                time.sleep(delay)
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read(500).decode("utf-8", "replace")
                last_error = f"HTTP {exc.code}: {detail}"
                if exc.code not in RETRYABLE_STATUSES:
                    raise PlannerUnavailable(f"{self.url}: {last_error}") from None
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
                continue
            try:
                parsed = json.loads(payload)
            except json.JSONDecodeError:
                raise PlannerOutputError(payload.decode("utf-8", "replace"), "endpoint reply is not JSON") from None
            if not isinstance(parsed, dict):
                raise PlannerOutputError(payload.decode("utf-8", "replace"), "endpoint reply is not a JSON object")
            return parsed
        raise PlannerUnavailable(f"{self.url}: {self.retries + 1} attempt(s) failed; last: {last_error}")


def _message_text(reply: dict[str, Any]) -> str:
    """``choices[0].message.content`` (a string, or a list of text parts in newer servers)."""
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise PlannerOutputError(json.dumps(reply)[:2000], "endpoint reply has no choices[0].message.content") from None
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise PlannerOutputError(json.dumps(reply)[:2000], "choices[0].message.content is not text")
    return content
