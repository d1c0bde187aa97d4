"""The served API on loopback: `python -m rag.serve` in a subprocess over an index built here (hash embedder,
extractive answers), talked to by the official `openai` client, by OpenAIChatModel, and by a QAPipeline on top of it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rag.answer.backend import load_chat_model
from rag.answer.pipeline import QAPipeline
from rag.answer.prompt import REFUSAL
from rag.answer.retrieve import Retriever
from rag.cli.serve import passages_of
from rag.core.config import RagConfig, load_config
from rag.core.types import Message
from rag.embed.embedder import HashEmbedder
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder
from rag.llm.base import GenerationConfig
from rag.llm.openai import OpenAIChatModel
from tests.conftest import write_corpus

REPO = Path(__file__).resolve().parents[2]
API_KEY = "sk-test-kbqa-123"
FILES = {
    "制度/年假.md": "# 年假制度\n\n工作满一年不满十年的员工，每年享受五天带薪年假。年假需提前三个工作日在 OA 系统中申请。\n",
    "运维/备份.txt": "数据库每天凌晨两点自动全量备份，备份文件保留三十天，存放在 NAS 的 backup 目录。\n",
    "运维/打印机.txt": "打印机驱动安装步骤：先从厂商网站下载驱动程序，然后在控制面板中添加网络打印机，"
                   "输入 IP 地址 10.0.0.25。\n",
}
OVERRIDES = ["embed.source=hash", "llm.backend=extractive", "load.workers=1", "split.chunk_size=120",
             "split.chunk_overlap=20"]

pytestmark = pytest.mark.integration


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    index: Path
    cfg: RagConfig

    @property
    def api(self) -> str:
        return f"{self.url}/v1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    index = root / "index"
    cfg = load_config(None, [*OVERRIDES, f"index.dir={index}"])
    sync_folder(write_corpus(root / "kb", FILES), cfg, HashEmbedder())
    port = free_port()
    env = {**os.environ, "KBQA_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"}
    log = (root / "server.log").open("w+", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "rag.serve", "--index", str(index), "--port", str(port), *OVERRIDES],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"rag.cli.serve exited with {proc.returncode}:\n{log.read()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("rag.cli.serve did not answer /health within 30 s")
            time.sleep(0.1)
        yield Server(url, index, cfg)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def openai_client(server: Server):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=server.api, api_key=API_KEY, max_retries=0, timeout=20)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def test_health_and_models_list_the_base_and_the_default(server: Server) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health == {"status": "ok"}  # with an API key, the unauthenticated /health reveals nothing else
    models = httpx.get(f"{server.api}/models", headers=auth()).json()
    assert [m["id"] for m in models["data"]] == ["kbqa", "extractive"]
    assert {m["owned_by"] for m in models["data"]} == {"kbqa"}


def test_api_key_is_required_when_set(server: Server) -> None:
    assert httpx.get(f"{server.api}/models").status_code == 401
    wrong = httpx.post(f"{server.api}/chat/completions", headers={"Authorization": "Bearer nope"},
                       json={"model": "kbqa", "messages": [{"role": "user", "content": "年假"}]})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.api}/models", headers=auth()).status_code == 200


def test_openai_client_streams_an_answer_with_citations(openai_client) -> None:  # type: ignore[no-untyped-def]
    chunks = list(openai_client.chat.completions.create(
        model="kbqa", stream=True, messages=[{"role": "user", "content": "年假需要提前几天申请？"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "三个工作日" in text and "[1]" in text
    assert chunks[-1].choices[0].finish_reason == "stop"
    extra = chunks[-1].model_extra["kbqa"]
    assert extra["refused"] is False and extra["answer"] == text
    cited = extra["citations"][0]
    assert (cited["n"], cited["source"], cited["supported"]) == (1, "制度/年假.md", True)
    assert "三个工作日" in cited["quote"] and isinstance(cited["chunk_id"], int)
    assert extra["hits"][0]["source"] == "制度/年假.md" and extra["hits"][0]["chunk_id"] == cited["chunk_id"]


def test_openai_client_non_streaming_with_history(openai_client) -> None:  # type: ignore[no-untyped-def]
    reply = openai_client.chat.completions.create(model="extractive", messages=[
        {"role": "system", "content": "ignored: the pipeline writes its own"},
        {"role": "user", "content": "数据库多久备份一次？"},
        {"role": "assistant", "content": "每天凌晨两点。"},
        {"role": "user", "content": "备份文件保留多少天？"},
    ])
    content = reply.choices[0].message.content
    assert "三十天" in content and "[1]" in content
    extra = reply.model_extra["kbqa"]
    assert extra["citations"][0]["source"] == "运维/备份.txt"
    assert reply.usage.completion_tokens > 0


def test_question_outside_the_knowledge_base_is_refused(server: Server) -> None:
    body = httpx.post(f"{server.api}/chat/completions", headers=auth(), json={
        "model": "kbqa", "messages": [{"role": "user", "content": "量子色动力学的渐近自由是什么"}]}).json()
    assert body["choices"][0]["message"]["content"] == REFUSAL["zh"]
    assert body["kbqa"]["refused"] is True and body["kbqa"]["citations"] == []


def test_bad_requests_get_openai_style_errors(server: Server) -> None:
    unknown = httpx.post(f"{server.api}/chat/completions", headers=auth(),
                         json={"model": "gpt-4", "messages": [{"role": "user", "content": "年假"}]})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "model 'gpt-4' is not served here; use one of: kbqa, extractive"
    no_question = httpx.post(f"{server.api}/chat/completions", headers=auth(),
                             json={"model": "kbqa", "messages": [{"role": "assistant", "content": "hi"}]})
    assert no_question.status_code == 400
    assert no_question.json()["error"]["message"] == "the last message must be the user's question"


BAD_FIELDS = [  # (body, status, param, message): what an outside probe sent (issue 17 #7) and the answer it gets
    ({"messages": [{"role": ["user"], "content": "年假"}]}, 400, "messages[0].role",
     "messages[0].role=['user'] must be one of: system, developer, user, assistant, tool, function"),
    ({"messages": [{"role": "user", "content": {"text": "年假"}}]}, 400, "messages[0].content",
     "messages[0].content must be a string or a list of content parts, not dict"),
    ({"messages": [{"role": "user", "content": [1, 2]}]}, 400, "messages[0].content[0]",
     'messages[0].content[0] must be a content part like {"type": "text", "text": "..."}'),
    ({"messages": ["年假"]}, 400, "messages[0]", "messages[0] must be an object with role and content"),
    ({"messages": "年假"}, 400, "messages", "messages must be a non-empty list of {role, content}"),
    ({"max_tokens": "ten"}, 400, "max_tokens", "max_tokens='ten' must be an integer"),
    ({"max_tokens": 1.5}, 400, "max_tokens", "max_tokens=1.5 must be an integer"),
    ({"max_tokens": 10**30}, 400, "max_tokens", f"max_tokens={10**30} must be between 1 and {1 << 20}"),
    ({"temperature": [0.5]}, 400, "temperature", "temperature=[0.5] must be a number"),
    ({"temperature": 9}, 400, "temperature", "temperature=9 must be between 0.0 and 2.0"),
    ({"model": 7}, 400, "model", "model=7 must be a string"),
    ({"stream": "yes"}, 400, "stream", "stream='yes' must be true or false"),
    ({"kbqa": []}, 400, "kbqa", "kbqa=[] must be an object"),
]


@pytest.mark.parametrize(("fields", "status", "param", "message"), BAD_FIELDS)
def test_wrong_fields_get_a_4xx_naming_the_field(server: Server, fields: dict[str, object], status: int, param: str,
                                                 message: str) -> None:
    body = {"model": "kbqa", "messages": [{"role": "user", "content": "年假"}], **fields}
    reply = httpx.post(f"{server.api}/chat/completions", headers=auth(), json=body)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"] | {"message": message} == {"message": message, "type": "invalid_request_error",
                                                             "param": param, "code": None}
    assert reply.json()["error"]["message"] == message


@pytest.mark.parametrize("constant", ["Infinity", "-Infinity", "NaN"])
def test_non_json_numbers_are_refused(server: Server, constant: str) -> None:
    raw = '{"model": "kbqa", "max_tokens": ' + constant + ', "messages": [{"role": "user", "content": "年假"}]}'
    reply = httpx.post(f"{server.api}/chat/completions", headers={**auth(), "Content-Type": "application/json"},
                       content=raw.encode())
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == (f"the request body is not valid JSON ({constant} is not a JSON "
                                                "number); send a JSON object")


def test_request_size_limits(server: Server) -> None:
    big = httpx.post(f"{server.api}/chat/completions", headers=auth(),
                     json={"messages": [{"role": "user", "content": "年" * 400_000}]})  # 1.2 MB of UTF-8
    assert big.status_code == 413
    assert big.json()["error"]["message"] == ("the request body is larger than 1000000 bytes (the server's "
                                              "--max-body-bytes); send fewer or shorter messages")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap holds while the body is read
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 100_000
        yield b'"}]}'

    streamed = httpx.post(f"{server.api}/chat/completions", headers=auth(), content=chunks())
    assert streamed.status_code == 413
    many = httpx.post(f"{server.api}/chat/completions", headers=auth(),
                      json={"messages": [{"role": "user", "content": "年假"}] * 300})
    assert many.status_code == 400
    assert many.json()["error"]["message"] == "messages has 300 entries, more than 256; send a shorter history"
    long = httpx.post(f"{server.api}/chat/completions", headers=auth(),
                      json={"messages": [{"role": "user", "content": "x" * 100_001}]})
    assert long.status_code == 400
    assert long.json()["error"]["param"] == "messages[0].content"
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}  # and the server still answers


def test_openai_chat_model_raw_mode_streams(server: Server) -> None:
    """Raw chat (no retrieval here): the extractive server answers from the passages quoted in the prompt."""
    model = OpenAIChatModel(server.api, "kbqa", api_key=API_KEY)
    assert model.list_models() == ["kbqa", "extractive"]
    prompt = [Message("user", "[1] (备忘.txt)\n<<<passage 1\n会议室的投影仪遥控器放在前台抽屉里。\npassage 1>>>\n\n"
                              "问题：投影仪遥控器放在哪里？")]
    assert [h.chunk.text for h in passages_of(prompt)] == ["会议室的投影仪遥控器放在前台抽屉里。"]
    pieces = list(model.stream(prompt, GenerationConfig(max_new_tokens=64)))
    assert len(pieces) > 1  # streamed, not one blob
    assert "".join(pieces) == "会议室的投影仪遥控器放在前台抽屉里。[1]"  # a passage the server's own index lacks


def test_pipeline_with_openai_chat_model_end_to_end(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another instance: its own retrieval, our server as its LLM; its citations verify against its own hits."""
    cfg = load_config(None, [*OVERRIDES, "llm.backend=openai", f"llm.openai_base_url={server.api}", "llm.model=kbqa",
                             "llm.openai_api_key_env=KBQA_TEST_KEY"])
    monkeypatch.setenv("KBQA_TEST_KEY", API_KEY)
    model = load_chat_model(cfg.llm).model
    assert isinstance(model, OpenAIChatModel) and model.info().backend == "openai"
    index = KnowledgeIndex.open(server.index, server.cfg, HashEmbedder())
    try:
        stream = QAPipeline(Retriever(index, cfg.retrieve), model, cfg).ask("打印机的 IP 地址是多少？")
        text = stream.text()
    finally:
        index.close()
    assert "10.0.0.25" in text
    assert stream.answer is not None and not stream.answer.refused
    assert [(c.chunk.source, c.supported) for c in stream.answer.citations] == [("运维/打印机.txt", True)]
    assert stream.answer.model == "kbqa"
