"""A small OpenAI-compatible chat server on loopback, for the model panel's tests (unit and browser).

It serves ``GET /v1/models`` and streaming ``POST /v1/chat/completions``; with ``api_key`` set it answers 401 to a
request without ``Authorization: Bearer <api_key>``. ``lists_models=False`` makes it a server without ``/models`` (404), as some gateways are. Every request is recorded (path, auth header, body), so a test
can check what the app really sent. The answer names the served model; when the prompt holds numbered passages (the
RAG prompt), it quotes the first sentence of passage 1 and cites it ``[1]``, as an obedient model would, so the
page's citation check keeps it.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PASSAGE = re.compile(r"<<<passage 1\n(.+?)\npassage 1>>>", re.DOTALL)


@dataclass
class Seen:
    method: str
    path: str
    authorization: str
    body: dict[str, Any] = field(default_factory=dict)


class FakeOpenAI:
    """Start with ``FakeOpenAI(models=("qwen-mini",), api_key="sk-test")``; ``.url`` is the API root; ``close()``."""

    def __init__(self, models: tuple[str, ...] = ("fake-chat",), api_key: str = "",
                 answer: str = "来自测试服务的回答：{model} 收到了问题。", lists_models: bool = True) -> None:
        self.models, self.api_key, self.answer, self.lists_models = models, api_key, answer, lists_models
        self.seen: list[Seen] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _refused(self) -> bool:
                if owner.api_key and self.headers.get("authorization", "") != f"Bearer {owner.api_key}":
                    self._json({"error": {"message": "invalid api key"}}, 401)
                    return True
                return False

            def do_GET(self) -> None:
                owner.seen.append(Seen("GET", self.path, self.headers.get("authorization", "")))
                if self._refused():
                    return
                if self.path.rstrip("/") == "/v1/models" and owner.lists_models:
                    self._json({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "test"}
                                                           for m in owner.models]})
                else:
                    self._json({"error": {"message": f"no route {self.path}"}}, 404)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                body = json.loads(raw or b"{}")
                owner.seen.append(Seen("POST", self.path, self.headers.get("authorization", ""), body))
                if self._refused():
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._json({"error": {"message": f"no route {self.path}"}}, 404)
                    return
                if body.get("model") not in owner.models:
                    self._json({"error": {"message": f"model {body.get('model')!r} not found"}}, 404)
                    return
                text = owner.reply(body)
                pieces = [text[i:i + 4] for i in range(0, len(text), 4)]
                events = [{"id": "c1", "object": "chat.completion.chunk", "model": body["model"],
                           "choices": [{"index": 0, "delta": {"content": piece}}]} for piece in pieces]
                stream = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events) + "data: [DONE]\n\n"
                data = stream.encode("utf-8")
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _json(self, data: dict[str, Any], status: int = 200) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reply(self, body: dict[str, Any]) -> str:
        """The answer to a chat request: the first sentence of passage 1 with its citation, else :attr:`answer`."""
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []) if isinstance(m, dict))
        passage = PASSAGE.search(prompt)
        if passage is None:
            return self.answer.format(model=body["model"])
        sentence = re.split(r"(?<=[。！？])|(?<=[.!?])\s", passage.group(1).strip())[0].rstrip("。！？.!?")
        # the citation inside its sentence; the model's name in a sentence of its own (a name the passage does not
        # hold would make the cited sentence unsupported)
        return f"{sentence} [1]。以上由 {body['model']} 回答。"

    def chats(self) -> list[Seen]:
        return [seen for seen in self.seen if seen.method == "POST"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
