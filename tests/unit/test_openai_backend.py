"""OpenAIChatModel against scripted HTTP (httpx.MockTransport) and a closed port: request shape, adapters as model
names, retries only before the first piece, and the errors a person sees. The real-server tests are in test_serve.py."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from rag.core.config import LLMConfig
from rag.core.errors import ConfigError, RagError
from rag.core.types import Message
from rag.llm.base import GenerationConfig
from rag.llm.openai import TIMEOUT_ENV, OpenAIChatModel, timeout_from_env

BASE = "http://llm.test/v1"
KEY = "sk-secret-value-42"
QUESTION = [Message("system", "只根据资料回答。"), Message("user", "年假几天？")]


def sse(*pieces: str, done: bool = True) -> bytes:
    events = [{"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": p}}]}
              for p in pieces]
    lines = [f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events] + (["data: [DONE]\n\n"] if done else [])
    return "".join(lines).encode()


def models(owner: str = "vllm", *names: str) -> httpx.Response:
    return httpx.Response(200, json={"object": "list", "data": [{"id": n, "owned_by": owner} for n in names]})


class Script:
    """A fake server: GET /models from ``owner``; each chat request takes the next scripted response."""

    def __init__(self, *chat: httpx.Response | Callable[[], httpx.Response], owner: str = "vllm") -> None:
        self.chat = list(chat)
        self.owner = owner
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/v1/models":
            return models(self.owner, "glm-4-9b-chat", "law-qa")
        reply = self.chat.pop(0)
        return reply() if callable(reply) else reply

    def bodies(self) -> list[dict]:  # type: ignore[type-arg]
        return [json.loads(r.content) for r in self.requests if r.url.path == "/v1/chat/completions"]


def make(script: Script, **kwargs: object) -> OpenAIChatModel:
    return OpenAIChatModel(BASE, "glm-4-9b-chat", api_key=KEY, transport=httpx.MockTransport(script),
                           backoff_s=0.01, **kwargs)  # type: ignore[arg-type]


def ok(*pieces: str) -> httpx.Response:
    return httpx.Response(200, content=sse(*pieces), headers={"content-type": "text/event-stream"})


def test_streams_pieces_with_the_request_a_server_expects() -> None:
    script = Script(ok("年假", "五天", "[1]。"), ok("ok"))
    model = make(script)
    gen = GenerationConfig(max_new_tokens=64, temperature=0.3, top_p=0.9, seed=7)
    assert list(model.stream(QUESTION, gen)) == ["年假", "五天", "[1]。"]
    assert list(model.stream(QUESTION, adapter="law-qa")) == ["ok"]
    first, second = script.bodies()
    assert first == {"model": "glm-4-9b-chat", "stream": True, "max_tokens": 64, "temperature": 0.3, "top_p": 0.9,
                     "seed": 7, "messages": [{"role": "system", "content": "只根据资料回答。"},
                                             {"role": "user", "content": "年假几天？"}]}
    assert second["model"] == "law-qa"  # an adapter is a model name on the server
    assert "kbqa" not in first  # strict servers reject unknown fields: only rag.cli.serve gets the raw-mode flag
    chat = [r for r in script.requests if r.url.path.endswith("/chat/completions")]
    assert chat[0].headers["authorization"] == f"Bearer {KEY}"
    assert model.info().adapters == ("law-qa",) and model.info().backend == "openai"


def test_rag_serve_is_asked_for_raw_chat() -> None:
    script = Script(ok("x"), owner="kbqa")
    assert list(make(script).stream(QUESTION)) == ["x"]
    assert script.bodies()[0]["kbqa"] == {"rag": False}
    assert sum(r.url.path == "/v1/models" for r in script.requests) == 1  # probed once


def test_retries_503_and_429_before_the_first_piece() -> None:
    script = Script(httpx.Response(503, text="loading"), httpx.Response(429, headers={"retry-after": "0"}),
                    ok("好"))
    assert list(make(script).stream(QUESTION)) == ["好"]
    assert len(script.bodies()) == 3


def test_gives_up_after_the_retries_with_the_servers_message() -> None:
    script = Script(*[httpx.Response(500, json={"error": {"message": "CUDA out of memory"}})] * 4)
    with pytest.raises(RagError) as caught:
        list(make(script).stream(QUESTION))
    assert str(caught.value) == (f"the OpenAI-compatible server at {BASE} answered HTTP 500 to the chat request for "
                                 "model 'glm-4-9b-chat': CUDA out of memory")
    assert len(script.bodies()) == 4  # 1 + RETRIES


def test_client_errors_are_not_retried_and_say_the_fix() -> None:
    script = Script(httpx.Response(404, json={"error": {"message": "The model `nope` does not exist."}}))
    with pytest.raises(RagError) as caught:
        list(make(script).stream(QUESTION, adapter="nope"))
    assert str(caught.value) == (f"the OpenAI-compatible server at {BASE} answered HTTP 404 to the chat request for "
                                 "model 'nope': The model `nope` does not exist. (GET /v1/models lists the served "
                                 "names; adapters are served as models)")
    assert len(script.bodies()) == 1


def test_never_retries_after_text_was_yielded() -> None:
    def broken() -> httpx.Response:
        def body() -> Iterator[bytes]:
            yield sse("第一段", done=False)
            raise httpx.ReadError("connection reset by peer")

        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    script = Script(broken, ok("never"))
    seen: list[str] = []
    with pytest.raises(RagError) as caught:
        for piece in make(script).stream(QUESTION):
            seen.append(piece)
    assert seen == ["第一段"]
    assert str(caught.value) == (f"the OpenAI-compatible server at {BASE} broke off the stream after part of the "
                                 "answer: connection reset by peer")
    assert len(script.bodies()) == 1


def test_an_error_event_mid_stream_is_raised() -> None:
    content = sse("a", done=False) + b'data: {"error": {"message": "engine died"}}\n\n'
    script = Script(httpx.Response(200, content=content))
    with pytest.raises(RagError, match="reported an error mid-answer: engine died$"):
        list(make(script).stream(QUESTION))


def test_server_down_is_one_clear_error_within_seconds() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    model = OpenAIChatModel(url, "glm-4-9b-chat")
    start = time.monotonic()
    with pytest.raises(RagError) as caught:
        list(model.stream(QUESTION))
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert message.startswith(f"cannot reach the OpenAI-compatible server at {url}: ")
    assert message.endswith("; start it or fix llm.openai_base_url")
    assert "refused" in message.lower()


def test_the_api_key_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    script = Script(httpx.Response(503), httpx.Response(401, json={"error": {"message": "bad key"}}))
    with pytest.raises(RagError, match="HTTP 401.*bad key.*environment variable"):
        list(make(script).stream(QUESTION))
    assert caplog.records and all(KEY not in r.getMessage() for r in caplog.records)


def test_from_config_reads_the_key_from_the_named_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_LLM_KEY", KEY)
    cfg = LLMConfig(backend="openai", openai_base_url="http://h:8000/v1/", model="Qwen/Qwen2.5-7B-Instruct",
                    openai_api_key_env="MY_LLM_KEY", context_window=32768, max_new_tokens=256)
    model = OpenAIChatModel.from_config(cfg)
    assert model.base_url == "http://h:8000/v1" and model.context_window == 32768
    assert model.gen.max_new_tokens == 256
    assert model._client.headers["authorization"] == f"Bearer {KEY}"
    monkeypatch.delenv("MY_LLM_KEY")
    assert "authorization" not in OpenAIChatModel.from_config(cfg)._client.headers


def test_config_errors_name_the_value_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as caught:
        OpenAIChatModel.from_config(LLMConfig(backend="openai"))
    assert str(caught.value) == ("llm.openai_base_url is empty; set it to the server's API root, "
                                 "e.g. llm.openai_base_url=http://127.0.0.1:8000/v1")
    with pytest.raises(ConfigError, match=r"^llm.openai_base_url='localhost:8000' must start with http://"):
        OpenAIChatModel("localhost:8000", "m")
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ConfigError) as caught:
        timeout_from_env()
    assert str(caught.value) == (f"{TIMEOUT_ENV}='soon' must be a positive number of seconds, "
                                 f"e.g. {TIMEOUT_ENV}=600")
    monkeypatch.setenv(TIMEOUT_ENV, "42.5")
    assert OpenAIChatModel(BASE, "m").timeout_s == 42.5


def test_list_models_and_token_estimate() -> None:
    model = make(Script())
    assert model.list_models() == ["glm-4-9b-chat", "law-qa"]
    assert model.count_tokens("年假制度 hello world") == 4 + 3  # 4 CJK + ceil(1.3 × 2 words)
    assert model.count_tokens("") == 0
