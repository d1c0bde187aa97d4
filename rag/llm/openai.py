"""A chat model behind any OpenAI-compatible chat-completions server (vLLM, our own ``rag.cli.serve``, others).

Requests go through ``httpx`` directly (the ``openai`` package is not needed at run time) and stream as server-sent
events: ``data: {chunk}`` lines, then ``data: [DONE]``. A LoRA adapter is addressed as a model name, the way vLLM
serves them (``vllm serve BASE --enable-lora --lora-modules law-qa=adapters/law-qa``): ``adapter=None`` asks for the
base model ``llm.model``, ``adapter="law-qa"`` for the model ``law-qa``.

Connection failures, HTTP 429 and 5xx are retried with exponential backoff, but only before the first piece of text
was yielded: once the caller has shown text, a retry would repeat or contradict it, so a later failure is an error.
The API key is read from the environment variable named by ``llm.openai_api_key_env`` and is never logged.
When the server is ``rag.cli.serve``, each request asks it for raw chat (``"kbqa": {"rag": false}``): the prompt already
holds this instance's retrieved passages.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx

from rag.core.config import LLMConfig
from rag.core.errors import ConfigError, RagError
from rag.core.text import CJK
from rag.core.types import Hit, Message
from rag.llm.base import GenerationConfig, ModelInfo

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "KBQA_OPENAI_TIMEOUT_S"  # seconds to wait for the next byte of an answer (a long prompt's prefill)
READ_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 5.0
RETRIES = 3  # extra attempts after the first, before any text was yielded
BACKOFF_S = 0.25  # first wait; doubles each retry (0.25, 0.5, 1 s)
MAX_RETRY_AFTER_S = 10.0  # cap on a 429/503 Retry-After header we honour
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
KBQA_OWNER = "kbqa"  # the owned_by of rag.cli.serve's models: such a server is asked for raw chat
_WORD = re.compile(r"[^\W_]+")


def timeout_from_env() -> float:
    """The read timeout: ``$KBQA_OPENAI_TIMEOUT_S`` when set, else :data:`READ_TIMEOUT_S`."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return READ_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds, e.g. {TIMEOUT_ENV}=600")
    return value


class _HTTPError(RagError):
    """The server answered with an HTTP error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class OpenAIChatModel:
    """A :class:`~rag.llm.base.ChatModel` on an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    Args:
        base_url: the server's API root, e.g. ``http://127.0.0.1:8000/v1`` (requests go to ``{base_url}/chat/...``).
        model: the base model's name on the server (``adapter=None`` uses it).
        api_key: sent as ``Authorization: Bearer``; None or "" sends no header.
        context_window: tokens the served model accepts (prompt + answer).
        gen: default sampling settings.
        timeout_s: seconds to wait for the next byte of a response (default :func:`timeout_from_env`).
        connect_timeout_s: seconds to wait for a connection.
        retries: extra attempts on connection errors, 429 and 5xx before the first text piece.
        backoff_s: the first wait between attempts (doubles each time).
        transport: an ``httpx`` transport (tests pass ``httpx.MockTransport``).
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, context_window: int = 8192,
                 gen: GenerationConfig | None = None, timeout_s: float | None = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, retries: int = RETRIES, backoff_s: float = BACKOFF_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not base_url.strip():
            raise ConfigError("llm.openai_base_url is empty; set it to the server's API root, "
                              "e.g. llm.openai_base_url=http://127.0.0.1:8000/v1")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"llm.openai_base_url={base_url!r} must start with http:// or https://, "
                              "e.g. http://127.0.0.1:8000/v1")
        if not model.strip():
            raise ConfigError("llm.model is empty; set it to the model name the server serves (GET /v1/models)")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.context_window = context_window
        self.gen = gen or GenerationConfig()
        self.timeout_s = timeout_s if timeout_s is not None else timeout_from_env()
        self.retries, self.backoff_s = retries, backoff_s
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        timeout = httpx.Timeout(self.timeout_s, connect=min(connect_timeout_s, self.timeout_s))
        self._client = httpx.Client(headers=headers, timeout=timeout, transport=transport)
        self._served: list[dict[str, Any]] | None = None  # GET /models, once

    @classmethod
    def from_config(cls, cfg: LLMConfig) -> OpenAIChatModel:
        """The model ``cfg.model`` at ``cfg.openai_base_url``, key from ``$<cfg.openai_api_key_env>`` (may be unset)."""
        api_key = os.environ.get(cfg.openai_api_key_env, "") if cfg.openai_api_key_env else ""
        return cls(cfg.openai_base_url, cfg.model, api_key=api_key or None, context_window=cfg.context_window,
                   gen=GenerationConfig.from_llm(cfg))

    # --- HTTP -----------------------------------------------------------------------------------------------------

    def _unreachable(self, exc: Exception) -> RagError:
        return RagError(f"cannot reach the OpenAI-compatible server at {self.base_url}: {exc or type(exc).__name__}; "
                        "start it or fix llm.openai_base_url")

    def _status_error(self, response: httpx.Response, what: str) -> _HTTPError:
        response.read()
        detail = response.text.strip()
        try:  # OpenAI / vLLM / FastAPI error bodies
            body = response.json()
            error = body.get("error", body.get("detail", detail)) if isinstance(body, dict) else detail
            detail = str(error.get("message", error) if isinstance(error, dict) else error)
        except ValueError:
            pass
        status = response.status_code
        hint = ""
        if status == 401:
            hint = " (set the API key in the environment variable llm.openai_api_key_env names)"
        elif status == 404:
            hint = " (GET /v1/models lists the served names; adapters are served as models)"
        return _HTTPError(f"the OpenAI-compatible server at {self.base_url} answered HTTP {status} to {what}: "
                          f"{detail[:300]}{hint}", status)

    def _wait(self, attempt: int, response: httpx.Response | None) -> float:
        delay = self.backoff_s * (2 ** attempt)
        retry_after = response.headers.get("retry-after", "") if response is not None else ""
        if retry_after.replace(".", "", 1).isdigit():
            delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER_S))
        return delay

    @contextmanager
    def _open(self, method: str, path: str, body: dict[str, Any] | None, what: str) -> Iterator[httpx.Response]:
        """An open (streaming) response with a 2xx status; connection errors, 429 and 5xx retried first."""
        url = f"{self.base_url}{path}"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            request = self._client.build_request(method, url, json=body)
            try:
                response = self._client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                if last:
                    raise self._unreachable(exc) from None
                logger.info("%s: %s; retrying", url, type(exc).__name__)
                time.sleep(self._wait(attempt, None))
                continue
            except httpx.TimeoutException:
                raise RagError(f"the OpenAI-compatible server at {self.base_url} sent nothing for {self.timeout_s:g} s "
                               f"({what}); it may be overloaded — raise {TIMEOUT_ENV}") from None
            if response.status_code in RETRY_STATUS and not last:
                delay = self._wait(attempt, response)
                response.close()
                logger.info("%s: HTTP %d; retrying in %.2f s", url, response.status_code, delay)
                time.sleep(delay)
                continue
            try:
                if response.status_code >= 400:
                    raise self._status_error(response, what)
                yield response
                return
            finally:
                response.close()

    def _served_models(self) -> list[dict[str, Any]]:
        if self._served is None:
            with self._open("GET", "/models", None, "GET /models") as response:
                response.read()
                try:
                    data = response.json().get("data", [])
                except (ValueError, AttributeError):
                    raise RagError(f"the server at {self.base_url} answered GET /models with something other than "
                                   "an OpenAI model list; check llm.openai_base_url (it should end in /v1)") from None
            self._served = [m for m in data if isinstance(m, dict) and "id" in m]
        return self._served

    def list_models(self) -> list[str]:
        """The model names the server serves (base models and adapters), from ``GET /v1/models``."""
        return [str(m["id"]) for m in self._served_models()]

    def _is_kbqa(self) -> bool:
        """Whether the server is ``rag.cli.serve`` (its models are owned by ``kbqa``); a server without /models is not."""
        try:
            return any(m.get("owned_by") == KBQA_OWNER for m in self._served_models())
        except _HTTPError:
            self._served = []
            return False

    # --- ChatModel --------------------------------------------------------------------------------------------------

    def request_body(self, messages: Sequence[Message], gen: GenerationConfig, adapter: str | None) -> dict[str, Any]:
        """The chat-completions request for ``messages`` (streaming)."""
        body: dict[str, Any] = {
            "model": adapter or self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "max_tokens": gen.max_new_tokens,
            "temperature": gen.temperature,
            "top_p": gen.top_p,
        }
        if gen.seed is not None:
            body["seed"] = gen.seed
        if gen.repetition_penalty != 1.0:  # a vLLM extension; strict servers reject unknown fields, so only when set
            body["repetition_penalty"] = gen.repetition_penalty
        return body

    def stream(self, messages: Sequence[Message], gen: GenerationConfig | None = None, adapter: str | None = None,
               context: Sequence[Hit] = ()) -> Iterator[str]:
        """Yield the answer's text as the server streams it (``context`` is unused: the prompt quotes it).

        Raises:
            RagError: the server can't be reached (after retries), answers an HTTP error, sends nothing for
                ``timeout_s``, or breaks off the stream.
        """
        body = self.request_body(messages, gen or self.gen, adapter)
        if self._is_kbqa():
            body["kbqa"] = {"rag": False}
        what = f"the chat request for model {body['model']!r}"
        yielded = False
        with self._open("POST", "/chat/completions", body, what) as response:
            try:
                for piece in _sse_pieces(response.iter_lines(), self.base_url):
                    yielded = True
                    yield piece
            except httpx.TimeoutException:
                raise RagError(f"the OpenAI-compatible server at {self.base_url} sent nothing for {self.timeout_s:g} s "
                               f"during {what}; it may be overloaded — raise {TIMEOUT_ENV}") from None
            except httpx.TransportError as exc:
                state = "after part of the answer" if yielded else "before answering"
                raise RagError(f"the OpenAI-compatible server at {self.base_url} broke off the stream {state}: "
                               f"{exc or type(exc).__name__}") from None

    def count_tokens(self, text: str) -> int:
        """An estimate (the server's tokenizer is not at hand): one token per CJK character, 1.3 per other word."""
        cjk = len(CJK.findall(text))
        words = len(_WORD.findall(CJK.sub(" ", text)))
        return math.ceil(cjk + 1.3 * words)

    def info(self) -> ModelInfo:
        adapters = tuple(str(m["id"]) for m in self._served or () if m["id"] != self.model)
        return ModelInfo(backend="openai", model_id=self.model, adapters=adapters,
                         extra={"base_url": self.base_url})

    def close(self) -> None:
        self._client.close()


def _sse_pieces(lines: Iterator[str], base_url: str) -> Iterator[str]:
    """The non-empty ``choices[0].delta.content`` of each ``data:`` event until ``data: [DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, ": keep-alive" comments, "event:" lines
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise RagError(f"the server at {base_url} sent a stream event that is not JSON: {data[:200]!r}") from None
        if not isinstance(event, dict):
            continue
        if event.get("error"):
            error = event["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise RagError(f"the OpenAI-compatible server at {base_url} reported an error mid-answer: {message}")
        for choice in event.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    yield content
