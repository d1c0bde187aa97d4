"""Standard clients against `python -m rag.serve` on loopback: the official `openai` client (models, completion,
streaming, usage, stop, max_tokens, unsupported parameters, auth) and LangChain's ChatOpenAI. The server is the one
of test_serve.py (hash embedder, extractive answers, an API key)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.integration.test_serve import API_KEY, Server
from tests.integration.test_serve import server as server  # the module-scoped fixture: its own server here

pytestmark = pytest.mark.integration
QUESTION = [{"role": "user", "content": "年假需要提前几天申请？"}]


@pytest.fixture
def client(server: Server) -> OpenAI:
    return OpenAI(base_url=server.api, api_key=API_KEY, max_retries=0, timeout=30)


def test_models_list(client: OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models] == ["kbqa", "extractive"]
    assert all(m.object == "model" and m.owned_by == "kbqa" and m.created > 0 for m in models)


def test_completion_with_usage(client: OpenAI) -> None:
    reply = client.chat.completions.create(model="kbqa", messages=QUESTION)  # type: ignore[arg-type]
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == "kbqa"
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert "三个工作日" in (choice.message.content or "") and "[1]" in (choice.message.content or "")
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streaming_with_usage_chunk(client: OpenAI) -> None:
    plain = client.chat.completions.create(model="kbqa", messages=QUESTION)  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(model="kbqa", messages=QUESTION, stream=True,  # type: ignore[arg-type]
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]  # include_usage: one last chunk with no choices and the usage of the whole answer
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == plain.usage.completion_tokens  # type: ignore[union-attr]
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize("stream", [False, True])
def test_stop_cuts_the_answer_before_the_stop_sequence(client: OpenAI, stream: bool) -> None:
    full = client.chat.completions.create(model="kbqa", messages=QUESTION).choices[0].message.content  # type: ignore[arg-type]
    assert full is not None and "[1]" in full
    if stream:
        chunks = list(client.chat.completions.create(model="kbqa", messages=QUESTION, stop=["[1]"],  # type: ignore[arg-type]
                                                     stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        reply = client.chat.completions.create(model="kbqa", messages=QUESTION, stop="[1]")  # type: ignore[arg-type]
        text, finish = reply.choices[0].message.content or "", reply.choices[0].finish_reason
    assert text == full[: full.index("[1]")] and text  # everything before the first stop sequence, and no more
    assert finish == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_limits_the_answer(client: OpenAI, stream: bool) -> None:
    full = client.chat.completions.create(model="kbqa", messages=QUESTION)  # type: ignore[arg-type]
    assert full.usage is not None and full.usage.completion_tokens > 5
    if stream:
        chunks = list(client.chat.completions.create(model="kbqa", messages=QUESTION, max_tokens=5,  # type: ignore[arg-type]
                                                     stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        usage = chunks[-1].usage
    else:
        reply = client.chat.completions.create(model="kbqa", messages=QUESTION, max_tokens=5)  # type: ignore[arg-type]
        text, finish, usage = reply.choices[0].message.content or "", reply.choices[0].finish_reason, reply.usage
    assert finish == "length" and usage is not None and 0 < usage.completion_tokens <= 5
    assert text and (full.choices[0].message.content or "").startswith(text)


@pytest.mark.parametrize(("extra", "param", "message"), [
    ({"n": 2}, "n", "n=2 is not supported: this server returns one choice; leave n out or send n=1"),
    ({"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]}, "tools",
     "tools are not supported: this server answers from its knowledge base and calls no tools; leave tools out"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "stop has 5 sequences: send at most 4 strings"),
])
def test_unsupported_parameters_get_openai_errors(client: OpenAI, extra: dict[str, Any], param: str,
                                                  message: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="kbqa", messages=QUESTION, **extra)  # type: ignore[arg-type]
    assert caught.value.status_code == 400
    assert caught.value.body == {"message": message, "type": "invalid_request_error", "param": param,
                                 "code": "unsupported_parameter" if param != "stop" else "invalid_value"}


def test_unknown_model_is_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found"


def test_wrong_or_missing_key_is_an_authentication_error(server: Server) -> None:
    for key in ("sk-wrong", ""):
        wrong = OpenAI(base_url=server.api, api_key=key or "-", max_retries=0, timeout=30)
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.models.list()
        assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=server.api, api_key="sk-wrong", max_retries=0).chat.completions.create(
            model="kbqa", messages=QUESTION)  # type: ignore[arg-type]


def test_langchain_chat_openai_answers_with_citations(server: Server) -> None:
    """ChatOpenAI pointed at rag.serve (README snippet): the answer, its usage, and the citations through a subclass
    that copies the response's ``kbqa`` field into ``response_metadata``."""
    from langchain_openai import ChatOpenAI

    class KnowledgeBaseChat(ChatOpenAI):
        def _create_chat_result(self, response: Any, generation_info: dict[str, Any] | None = None) -> Any:
            result = super()._create_chat_result(response, generation_info)
            body = response if isinstance(response, dict) else response.model_dump()
            result.generations[0].message.response_metadata["kbqa"] = body.get("kbqa")
            return result

    plain = ChatOpenAI(base_url=server.api, api_key=API_KEY, model="kbqa", max_retries=0, timeout=30)
    message = plain.invoke("年假需要提前几天申请？")
    assert "三个工作日" in message.content and message.response_metadata["finish_reason"] == "stop"
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0
    streamed = "".join(str(chunk.content) for chunk in plain.stream("年假需要提前几天申请？"))
    assert streamed == message.content

    chat = KnowledgeBaseChat(base_url=server.api, api_key=API_KEY, model="kbqa", max_retries=0, timeout=30)
    cited = chat.invoke("年假需要提前几天申请？").response_metadata["kbqa"]["citations"]
    assert [(c["n"], c["source"], c["supported"]) for c in cited] == [(1, "制度/年假.md", True)]
    assert "三个工作日" in cited[0]["quote"]
