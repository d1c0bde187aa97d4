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
Each answer runs in its own thread (:mod:`rag.cli.streams`) and is cancelled, freeing the model, when its client hangs
up or the server gets SIGTERM; ``/health`` answers 503 ``{"status": "degraded", "reason": ...}`` when answers are in
flight and none produced anything for ``--stall-after-s``. Request bodies, message counts and sizes are capped
(:mod:`rag.cli.chat_request`; ``--max-body-bytes`` etc.).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rag.cli.chat_request import (
    ApiError,
    RequestLimits,
    check_fields,
    generation,
    parse_json,
    parse_messages,
    read_body,
)
from rag.cli.common import add_config_args, config_from_args, run_cli
from rag.cli.openai_options import OptionError, OutputLimit, check_options
from rag.cli.streams import CLIENT_GONE, AnswerCancelled, OpenAnswers
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
STALL_AFTER_S = 300.0  # /health says "degraded" when answers are in flight and none produced anything for this long
SHUTDOWN_GRACE_S = 3  # after SIGTERM, uvicorn cancels whatever still runs after this long


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

    return JSONResponse(ApiError(status, message, param, kind=kind, code=code).body(), status_code=status)


def create_app(pipeline: QAPipeline, api_key: str | None = None, limits: RequestLimits | None = None,
               answers: OpenAnswers | None = None) -> FastAPI:
    """The FastAPI app answering from ``pipeline``; ``api_key`` (None = open) guards everything but ``/health``;
    ``limits`` caps requests; ``answers`` tracks the answers in flight (:func:`main` cancels them on SIGTERM)."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, StreamingResponse
    except ImportError as exc:
        raise RagError(INSTALL_HINT) from exc
    from rag.answer.pipeline import BASE

    limits = limits or RequestLimits()
    answers = answers or OpenAnswers(STALL_AFTER_S)
    app = FastAPI(title="kbqa", description="Knowledge-base QA with citations, OpenAI-compatible")
    model = pipeline.model
    started = int(time.time())

    def adapter_for(name: str) -> str | None:
        """The pipeline's adapter argument for a request's ``model`` (ApiError 404: not served)."""
        info = model.info()
        if name == SERVED_NAME:
            return BASE
        if name == info.model_id:
            return None
        if name in info.adapters:
            return name
        served = ", ".join([SERVED_NAME, info.model_id, *info.adapters])
        raise ApiError(404, f"model {name!r} is not served here; use one of: {served}", "model", code="model_not_found")

    @app.middleware("http")
    async def check_key(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path != "/health":
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
                return _error(401, f"missing or wrong API key: send 'Authorization: Bearer <key>' with the key in "
                                   f"${API_KEY_ENV} of the server", "authentication_error", "invalid_api_key")
        return await call_next(request)

    @app.get("/health")
    def health() -> Any:
        stuck = answers.stalled()
        report: dict[str, Any] = {"status": "degraded", "reason": stuck} if stuck else {"status": "ok"}
        if not api_key:  # /health answers without the key, so with one it tells nothing about the deployment
            info = model.info()
            report |= {"backend": info.backend, "model": info.model_id, "index": str(pipeline.retriever.index.directory),
                       "in_flight": answers.in_flight()}
        return JSONResponse(report, status_code=503 if stuck else 200)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        info = model.info()
        names = [SERVED_NAME, *dict.fromkeys([info.model_id, *info.adapters])]
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started,
                                            "owned_by": SERVED_NAME} for name in names]}

    async def chat(request: Request) -> Any:  # the body is read by hand: capped, and checked field by field
        try:
            body = parse_json(await read_body(request, limits))
            check_fields(body)
            messages = parse_messages(body.get("messages"), limits)
            name = body.get("model") or SERVED_NAME
            adapter = adapter_for(name)
            gen = generation(body, GenerationConfig.from_llm(pipeline.cfg.llm), model.context_window)
            stops = check_options(body)
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        except OptionError as exc:
            return _error(400, exc.message, code=exc.code, param=exc.param)
        options = body.get("kbqa") or {}
        raw = options.get("rag", True) is False
        stream: AnswerStream | None = None

        def produce() -> Iterator[str]:  # runs in the answer's own thread (retrieval included)
            nonlocal stream
            if raw:
                use = adapter if adapter != BASE else (pipeline.cfg.llm.adapter or None)
                hits = passages_of(messages) if pipeline.extractive else []
                return model.stream(messages, gen, adapter=use, context=hits)
            history = [m for m in messages[:-1] if m.role != "system"]
            stream = pipeline.ask(messages[-1].content, history, adapter=adapter, gen=gen)
            return iter(stream)

        pump = answers.start(produce)
        watcher = asyncio.ensure_future(pump.cancel_on_disconnect(request.receive))
        try:  # the first piece before answering, so a failing backend is an HTTP error, not a broken stream
            first = await anext(pump, "")
        except RagError as exc:
            watcher.cancel()
            return _error(502, str(exc), "server_error")
        except AnswerCancelled as exc:
            watcher.cancel()
            return _error(503, str(exc), "server_error")
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        requested_tokens = body.get("max_completion_tokens") or body.get("max_tokens")  # checked by generation()
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
            def event(delta: dict[str, Any], finish: str | None = None, **more: Any) -> str:
                chunk = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": name,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}
                return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

            async def events() -> AsyncIterator[str]:
                try:
                    yield event({"role": "assistant", "content": limit.feed(first or "")})
                    async for piece in pump:  # read to the end after a stop or the cap: the citations need the answer
                        if text := limit.feed(piece):
                            yield event({"content": text})
                    if rest := limit.close():
                        yield event({"content": rest})
                    yield event({}, limit.finish_reason, kbqa=final_extra())
                    if isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage"):
                        last: dict[str, Any] = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": name,
                                "choices": [], "usage": usage(limit.text)}  # OpenAI's usage chunk: no choices
                        yield f"data: {json.dumps(last)}\n\n"
                except (RagError, AnswerCancelled) as exc:  # headers are gone: report in the stream, as vLLM does
                    log.warning("answer ended early: %s", exc)
                    yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error'}})}\n\n"
                finally:  # also when the response is dropped (client gone): the pump stops and closes the answer
                    watcher.cancel()
                    pump.cancel(CLIENT_GONE)
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        try:
            text = first + "".join([piece async for piece in pump])
        except RagError as exc:
            return _error(502, str(exc), "server_error")
        except AnswerCancelled as exc:
            return _error(503, str(exc), "server_error")
        finally:
            watcher.cancel()
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

    chat.__annotations__["request"] = Request  # the class itself: FastAPI cannot resolve this module's string annotation
    app.post("/v1/chat/completions")(chat)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rag.serve",
                                     description="Serve the knowledge base as an OpenAI-compatible chat API.")
    parser.add_argument("--index", default=None, help="index folder (default: index.dir)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it: set KBQA_API_KEY)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    limits = RequestLimits()
    parser.add_argument("--max-body-bytes", type=int, default=limits.max_body_bytes,
                        help=f"refuse larger request bodies with HTTP 413 (default {limits.max_body_bytes})")
    parser.add_argument("--max-messages", type=int, default=limits.max_messages,
                        help=f"refuse requests with more messages (default {limits.max_messages})")
    parser.add_argument("--max-message-chars", type=int, default=limits.max_message_chars,
                        help=f"refuse a longer message (default {limits.max_message_chars} characters)")
    parser.add_argument("--stall-after-s", type=float, default=STALL_AFTER_S,
                        help="/health answers 503 \"degraded\" when answers are in flight and none produced anything "
                             f"for this long (default {STALL_AFTER_S:.0f})")
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
    for flag in ("max_body_bytes", "max_messages", "max_message_chars", "stall_after_s"):
        if getattr(args, flag) <= 0:
            raise RagError(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be positive")
    limits = RequestLimits(args.max_body_bytes, args.max_messages, args.max_message_chars)
    answers = OpenAnswers(args.stall_after_s)
    app = create_app(pipeline, api_key, limits, answers)
    info = pipeline.model.info()
    print(f"serving {info.backend}:{info.model_id} on http://{args.host}:{args.port}/v1 (model names: "
          f"{SERVED_NAME}, {info.model_id}{''.join(', ' + a for a in info.adapters)})", file=sys.stderr, flush=True)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:  # SIGTERM / Ctrl-C: end open streams, then stop
            answers.cancel_all()
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="debug" if args.debug else "warning",
                          timeout_graceful_shutdown=SHUTDOWN_GRACE_S)).run()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args()))
