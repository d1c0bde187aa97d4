"""A chat-completions request of the served API, read and checked before anything runs.

Whatever a client sends (a 300 MB body, ``"role": ["user"]``, ``"max_tokens": Infinity``, a string where a number
goes) ends in an OpenAI-style error object naming the field, with a 4xx status, never a 500: :class:`ApiError`.
Bodies are capped (:class:`RequestLimits`: 1 MB by default, ``--max-body-bytes``) while they are read, so a huge one
is refused without being held in memory; so are the number of messages and the size of one message.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

from rag.core.types import Message
from rag.llm.base import GenerationConfig

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
IGNORED_ROLES = ("tool", "function")  # tool results from agent clients: not part of the question


@dataclass(frozen=True)
class RequestLimits:
    """What one request may carry."""

    max_body_bytes: int = 1_000_000
    max_messages: int = 256
    max_message_chars: int = 100_000


class ApiError(Exception):
    """A request the API refuses: HTTP ``status`` and the OpenAI error object's fields."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


async def read_body(request: Any, limits: RequestLimits) -> bytes:
    """The request body (a Starlette ``Request``), refused with 413 as soon as it passes ``max_body_bytes``."""
    too_big = ApiError(413, f"the request body is larger than {limits.max_body_bytes} bytes (the server's "
                            "--max-body-bytes); send fewer or shorter messages", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise too_big
    return bytes(body)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object (400: not JSON, not an object, or NaN / Infinity, which JSON does not have)."""
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ApiError(400, f"the request body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def _text(content: Any, param: str, limits: RequestLimits) -> str:
    """A message's text: a string, or the text parts of an OpenAI content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for number, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                raise ApiError(400, f"{param}[{number}] must be a content part like {{\"type\": \"text\", "
                                    f"\"text\": \"...\"}}", f"{param}[{number}]")
            parts.append(part.get("text", ""))
        text = "".join(parts)
    else:
        raise ApiError(400, f"{param} must be a string or a list of content parts, not {type(content).__name__}",
                       param)
    if len(text) > limits.max_message_chars:
        raise ApiError(400, f"{param} has {len(text)} characters, more than {limits.max_message_chars}; shorten it",
                       param)
    return text


def parse_messages(raw: Any, limits: RequestLimits) -> list[Message]:
    """The conversation (client system messages kept, tool messages left out); the last one must be the user's."""
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list of {role, content}", "messages")
    if len(raw) > limits.max_messages:
        raise ApiError(400, f"messages has {len(raw)} entries, more than {limits.max_messages}; send a shorter "
                            "history", "messages")
    messages = []
    for number, message in enumerate(raw):
        param = f"messages[{number}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{param} must be an object with role and content", param)
        role = message.get("role")
        if not isinstance(role, str) or (role not in ROLES and role not in IGNORED_ROLES):
            valid = ", ".join([*ROLES, *IGNORED_ROLES])
            raise ApiError(400, f"{param}.role={role!r} must be one of: {valid}", f"{param}.role")
        text = _text(message.get("content"), f"{param}.content", limits)
        if role in ROLES:
            messages.append(Message(ROLES[role], text))  # type: ignore[arg-type]
    if not messages or messages[-1].role != "user":
        raise ApiError(400, "the last message must be the user's question", "messages")
    return messages


def check_fields(body: dict[str, Any]) -> None:
    """The optional fields this API reads have the right JSON types (400 naming the field)."""
    for key, kind, name in (("model", str, "a string"), ("stream", bool, "true or false"),
                            ("kbqa", dict, "an object")):
        if body.get(key) is not None and not isinstance(body[key], kind):
            raise ApiError(400, f"{key}={body[key]!r} must be {name}", key)


def generation(body: dict[str, Any], base: GenerationConfig, context_window: int) -> GenerationConfig:
    """``base`` with the request's max_tokens / temperature / top_p / seed (400 naming the field)."""
    changes: dict[str, Any] = {}
    for field, key, kind, low, high in (
        ("max_completion_tokens", "max_new_tokens", int, 1, context_window),
        ("max_tokens", "max_new_tokens", int, 1, context_window),
        ("temperature", "temperature", float, 0.0, 2.0),
        ("top_p", "top_p", float, 0.0, 1.0),
        ("seed", "seed", int, 0, 2**63 - 1),
    ):
        value = body.get(field)
        if value is None or key in changes:  # max_completion_tokens wins over the older max_tokens
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (kind is int and value != int(value)):
            raise ApiError(400, f"{field}={value!r} must be {'an integer' if kind is int else 'a number'}", field)
        if not low <= value <= high:
            raise ApiError(400, f"{field}={value!r} must be between {low} and {high}", field)
        changes[key] = kind(value)
    return replace(base, **changes)
