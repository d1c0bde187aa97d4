"""The knowledge base as an OpenAI-compatible chat-completions API, with retrieval and citations in the answer.

    python -m rag.serve [--index DIR] [--host 127.0.0.1] [--port 8000] [key=value ...]

Endpoints: ``POST /v1/chat/completions`` (streaming SSE or one JSON body), ``GET /v1/models``, ``GET /health``.
The request's ``model`` picks what answers: ``kbqa`` = the configured default (``llm.adapter``, if set), the base
model's id = the base model with adapters off, an adapter's name = that adapter. The last message is the question
and the earlier user/assistant turns its history (client system messages are ignored: the pipeline writes its own).
Retrieval and citations travel in an extra ``kbqa`` field of the JSON body / the final stream chunk, which standard
clients ignore::

    "kbqa": {"answer": "...", "refused": false, "model": "...",
             "citations": [{"n": 1, "source": "hr/年假.md", "page": null, "chunk_id": 123, "quote": "...",
                            "supported": true}],
             "hits": [{"rank": 1, "chunk_id": 123, "source": "...", "page": null, "heading": [], "score": 0.03,
                       "text": "..."}]}

A request with ``"kbqa": {"rag": false}`` chats with the model directly (no retrieval): what another instance's
:class:`rag.llm.openai.OpenAIChatModel` sends, its prompt already quoting its own passages. The server binds
127.0.0.1 by default; with ``$KBQA_API_KEY`` set, every endpoint but ``/health`` wants ``Authorization: Bearer KEY``.
Generation is serialised by the backends (one request at a time per loaded model; the others wait their turn).
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from rag.cli.common import add_config_args, config_from_args, run_cli
from rag.cli.openai_options import OptionError, OutputLimit, check_options
from rag.core.errors import RagError
from rag.core.types import Chunk, Hit, Message
from rag.llm.base import GenerationConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

    from rag.answer.pipeline import AnswerStream, QAPipeline

log = logging.getLogger(__name__)

API_KEY_ENV = "KBQA_API_KEY"
SERVED_NAME = "kbqa"  # the model id meaning "the configured default"; also the owned_by of every model we list
INSTALL_HINT = "the served API needs FastAPI and uvicorn: pip install fastapi==0.163.2 uvicorn==0.54.0"
# a passage block of rag.answer.prompt's answer prompt: "[n] (where)\n<<<passage n\ntext\npassage n>>>"
_PASSAGE = re.compile(r"(?m)^\[(\d+)\] \(([^\n]*)\)\n<<<passage \1\n([\s\S]*?)\npassage \1>>>")
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def passages_of(messages: Sequence[Message]) -> list[Hit]:
    """The numbered passages quoted in the last user message of a :func:`rag.answer.prompt.build_messages` prompt, as hits
    (``[n]`` is ``hits[n - 1]``): what the extractive backend answers from when raw chat gets another instance's
    prompt. Empty when the message quotes none, or they are not numbered 1, 2, ..."""
    user = next((m.content for m in reversed(messages) if m.role == "user"), "")
    hits = []
    for number, match in enumerate(_PASSAGE.finditer(user), 1):
        if int(match.group(1)) != number:
            return []
        chunk = Chunk(id=number, text=match.group(3), source=match.group(2), position=number - 1)
        hits.append(Hit(chunk=chunk, score=0.0))
    return hits


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of an OpenAI content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _citations(stream: AnswerStream) -> list[dict[str, Any]]:
    assert stream.answer is not None
    return [{"n": c.number, "source": c.chunk.source, "page": c.chunk.page, "chunk_id": c.chunk.id,
             "quote": stream.quotes.get(c.number, ""), "supported": c.supported} for c in stream.answer.citations]


def _hits(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    return [{"rank": rank, "chunk_id": h.chunk.id, "source": h.chunk.source, "page": h.chunk.page,
             "heading": list(h.chunk.heading), "score": h.score, "text": h.chunk.text} for rank, h in enumerate(hits, 1)]


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
           param: str | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def create_app(pipeline: QAPipeline, api_key: str | None = None) -> FastAPI:
    """The FastAPI app answering from ``pipeline``; ``api_key`` (None = open) guards everything but ``/health``."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, StreamingResponse
    except ImportError as exc:
        raise RagError(INSTALL_HINT) from exc
    from rag.answer.pipeline import BASE

    app = FastAPI(title="kbqa", description="Knowledge-base QA with citations, OpenAI-compatible")
    model = pipeline.model
    started = int(time.time())

    def adapter_for(name: str) -> str | None:
        """The pipeline's adapter argument for a request's ``model`` (ValueError: not served)."""
        info = model.info()
        if name == SERVED_NAME:
            return BASE
        if name == info.model_id:
            return None
        if name in info.adapters:
            return name
        served = ", ".join([SERVED_NAME, info.model_id, *info.adapters])
        raise ValueError(f"model {name!r} is not served here; use one of: {served}")

    @app.middleware("http")
    async def check_key(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path != "/health":
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
                return _error(401, f"missing or wrong API key: send 'Authorization: Bearer <key>' with the key in "
                                   f"${API_KEY_ENV} of the server", "authentication_error", "invalid_api_key")
        return await call_next(request)

    @app.get("/health")
    def health() -> dict[str, Any]:
        if api_key:  # /health answers without the key, so it tells nothing about the deployment
            return {"status": "ok"}
        info = model.info()
        return {"status": "ok", "backend": info.backend, "model": info.model_id,
                "index": str(pipeline.retriever.index.directory)}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        info = model.info()
        names = [SERVED_NAME, *dict.fromkeys([info.model_id, *info.adapters])]
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started,
                                            "owned_by": SERVED_NAME} for name in names]}

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> Any:  # a plain mapping: clients send many optional fields we ignore
        name = str(body.get("model") or SERVED_NAME)
        raw_messages = body.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            return _error(400, "messages must be a non-empty list of {role, content}")
        messages = [Message(_ROLES[m["role"]], _text(m.get("content")))  # type: ignore[arg-type]
                    for m in raw_messages if isinstance(m, dict) and m.get("role") in _ROLES]
        if not messages or messages[-1].role != "user":
            return _error(400, "the last message must be the user's question")
        try:
            stops = check_options(body)
            adapter = adapter_for(name)
            gen = _generation(body, pipeline)
        except OptionError as exc:
            return _error(400, exc.message, code=exc.code, param=exc.param)
        except ValueError as exc:
            return _error(404 if "not served" in str(exc) else 400, str(exc),
                          code="model_not_found" if "not served" in str(exc) else None)
        options = body.get("kbqa")
        if isinstance(options, dict) and options.get("rag", True) is False:
            use = adapter if adapter != BASE else (pipeline.cfg.llm.adapter or None)
            hits = passages_of(messages) if pipeline.extractive else []
            pieces = model.stream(messages, gen, adapter=use, context=hits)
            stream = None
        else:
            history = [m for m in messages[:-1] if m.role != "system"]
            stream = pipeline.ask(messages[-1].content, history, adapter=adapter, gen=gen)
            pieces = iter(stream)
        try:  # the first piece before answering, so a failing backend is an HTTP error, not a broken stream
            first = next(pieces, None)
        except RagError as exc:
            return _error(502, str(exc), "server_error")
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        requested_tokens = body.get("max_completion_tokens") or body.get("max_tokens")  # checked by _generation
        limit = OutputLimit(stops, int(requested_tokens) if requested_tokens else None, model.count_tokens)

        def usage(content: str) -> dict[str, int]:
            prompt_tokens = sum(model.count_tokens(m.content) for m in messages)
            completion_tokens = model.count_tokens(content)
            return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens}

        def final_extra() -> dict[str, Any]:
            if stream is None:
                return {"rag": False}
            assert stream.answer is not None
            answer = stream.answer
            return {"answer": answer.text, "refused": answer.refused, "model": answer.model,
                    "citations": _citations(stream), "hits": _hits(answer.hits)}

        if body.get("stream"):
            def events() -> Iterator[str]:
                def event(delta: dict[str, Any], finish: str | None = None, **more: Any) -> str:
                    chunk = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": name,
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}
                    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

                try:
                    yield event({"role": "assistant", "content": limit.feed(first or "")})
                    for piece in pieces:  # read to the end after a stop or the cap: the citations need the answer
                        if text := limit.feed(piece):
                            yield event({"content": text})
                    if rest := limit.close():
                        yield event({"content": rest})
                    yield event({}, limit.finish_reason, kbqa=final_extra())
                    if isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage"):
                        last = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": name,
                                "choices": [], "usage": usage(limit.text)}  # OpenAI's usage chunk: no choices
                        yield f"data: {json.dumps(last)}\n\n"
                except RagError as exc:  # headers are gone: report in the stream, as vLLM does
                    log.warning("answer failed mid-stream: %s", exc)
                    yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error'}})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        try:
            text = (first or "") + "".join(pieces)
        except RagError as exc:
            return _error(502, str(exc), "server_error")
        extra = final_extra()
        content = limit.feed(extra.get("answer", text))
        content += limit.close()
        return JSONResponse({
            "id": chunk_id, "object": "chat.completion", "created": created, "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": limit.finish_reason}],
            "usage": usage(content),
            "kbqa": extra,
        })

    return app


def _generation(body: dict[str, Any], pipeline: QAPipeline) -> GenerationConfig:
    """The configured sampling settings with the request's max_tokens / temperature / top_p / seed (ValueError)."""
    gen = GenerationConfig.from_llm(pipeline.cfg.llm)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    changes: dict[str, Any] = {}
    for key, value, kind, low in (("max_new_tokens", max_tokens, int, 1), ("temperature", body.get("temperature"),
                                  float, 0.0), ("top_p", body.get("top_p"), float, 0.0), ("seed", body.get("seed"),
                                  int, None)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise ValueError(f"{key}={value!r} must be a number")
        if low is not None and value < low:
            raise ValueError(f"{key}={value!r} must be at least {low}")
        changes[key] = kind(value)
    return replace(gen, **changes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rag.serve",
                                     description="Serve the knowledge base as an OpenAI-compatible chat API.")
    parser.add_argument("--index", default=None, help="index folder (default: index.dir)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it: set KBQA_API_KEY)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_config_args(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    from rag.answer.pipeline import open_pipeline

    try:
        import uvicorn
    except ImportError as exc:
        raise RagError(INSTALL_HINT) from exc
    cfg = config_from_args(args)
    pipeline, fallback = open_pipeline(cfg, args.index)
    if fallback:
        print(f"note: {fallback} — answering extractively", file=sys.stderr)
    from rag.answer.backend import start_warm_up

    start_warm_up(pipeline.model, cfg.llm.adapter)  # the fast decoder's capture, before the first request
    api_key = os.environ.get(API_KEY_ENV) or None
    if not api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host} without ${API_KEY_ENV}: anyone who can reach it can query the "
              "knowledge base", file=sys.stderr)
    app = create_app(pipeline, api_key)
    info = pipeline.model.info()
    print(f"serving {info.backend}:{info.model_id} on http://{args.host}:{args.port}/v1 (model names: "
          f"{SERVED_NAME}, {info.model_id}{''.join(', ' + a for a in info.adapters)})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="debug" if args.debug else "warning")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args()))
