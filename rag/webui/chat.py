"""The chat view: ask through the generation queue, stream the answer(s), show the cited sources and take feedback.

Answering is :mod:`rag.answer.pipeline`; in compare mode the base model and the session's adapter answer side by side from
one numbered context. Ratings and corrections go to the feedback file (:func:`rag.feedback.append_feedback`).
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from rag import feedback
from rag.answer.backend import LoadedModel
from rag.answer.retrieve import Retriever
from rag.core.config import RagConfig
from rag.core.errors import RagError
from rag.core.fifo import TurnTimeout
from rag.core.types import Answer, Citation, Hit, Message
from rag.webui import kb
from rag.webui.conversations import Turn
from rag.webui.history import save_rating, save_turn
from rag.webui.kb_page import run_reindex
from rag.webui.model_choice import explain_failure
from rag.webui.state import ConfigKey, Session, get_gate, same_path, turns
from rag.webui.text import (
    answer_markdown,
    escape_stream,
    html_text,
    link_citations,
    markdown_literal,
    passage_html,
    source_card,
    tr,
)

log = logging.getLogger("kbqa.app")
GATE_TIMEOUT_S = 600.0  # a user waits at most this long in the generation queue
CLOSEST_SHOWN = 3


def where(hit_or_chunk: Hit | Citation, lang: str) -> str:
    chunk = hit_or_chunk.chunk
    parts = [chunk.source]
    if chunk.page is not None:
        parts.append(tr(lang, "page", page=chunk.page))
    if chunk.heading:
        parts.append(" › ".join(chunk.heading))
    if isinstance(hit_or_chunk, Hit) and hit_or_chunk.also_in:  # another edition of the same text (PDF and HTML)
        parts.append(tr(lang, "also_in", files=", ".join(hit_or_chunk.also_in)))
    return " · ".join(parts)


def answers_of(turn: Turn) -> list[Answer]:
    return [turn.base, turn.answer] if turn.base is not None else [turn.answer]


def cited(turn: Turn) -> dict[int, Citation]:
    """The citations of the turn's answer(s) by number (compare mode: both answers share one numbered context)."""
    found: dict[int, Citation] = {}
    for answer in answers_of(turn):
        for citation in answer.citations:
            if citation.number not in found or not citation.supported:
                found[citation.number] = citation
    return dict(sorted(found.items()))


def answer_boxes(turn_compare: bool, adapter: str, lang: str) -> list[Any]:
    """Placeholders for the answer text: one, or base | adapter side by side."""
    if not turn_compare:
        return [st.empty()]
    left, right = st.columns(2)
    left.markdown(f"**{tr(lang, 'base_label')}**")
    right.markdown(f"**{tr(lang, 'tuned_label', adapter=adapter)}**")
    return [left.empty(), right.empty()]


def fill_boxes(boxes: Sequence[Any], turn: Turn) -> None:
    """The final, verified answer text with its [n] linked to the source cards."""
    numbers = set(cited(turn))
    for box, answer in zip(boxes, answers_of(turn), strict=True):
        box.markdown(link_citations(answer.text, f"src-{turn.id}", numbers))


def render_sources(turn: Turn, lang: str) -> None:
    answer = turn.answer
    prefix = f"src-{turn.id}"
    if all(a.refused for a in answers_of(turn)):
        if answer.hits:
            st.caption(tr(lang, "closest"))
            cards = [source_card(f"{prefix}-c{rank}", None, where(hit, lang), passage_html(hit.chunk.text))
                     for rank, hit in enumerate(answer.hits[:CLOSEST_SHOWN], 1)]
            st.markdown("".join(cards), unsafe_allow_html=True)
        return
    citations = cited(turn)
    if citations:
        st.markdown(f"**{tr(lang, 'sources')}**")
        cards = []
        for number, citation in citations.items():
            quote = turn.quotes.get(number) or turn.base_quotes.get(number, "")
            badge = "" if citation.supported else tr(lang, "unverified")
            cards.append(source_card(f"{prefix}-{number}", number, where(citation, lang),
                                     passage_html(citation.chunk.text, quote), badge))
        st.markdown("".join(cards), unsafe_allow_html=True)
    if answer.hits:
        with st.expander(tr(lang, "all_hits", n=len(answer.hits))):
            lines = [f"{rank}. {html_text(where(hit, lang))} · {tr(lang, 'score')} {hit.score:.3f}"
                     for rank, hit in enumerate(answer.hits, 1)]
            st.markdown("<br>".join(lines), unsafe_allow_html=True)


def feedback_record(turn: Turn, rating: str, correction: str = "") -> feedback.FeedbackRecord:
    citations = [feedback.FeedbackCitation(c.number, c.chunk.source, c.chunk.page, turn.quotes.get(c.number, ""))
                 for c in turn.answer.citations]
    return feedback.FeedbackRecord(time=feedback.now_iso(), question=turn.question, answer=turn.answer.text, rating=rating,
                             correction=correction, citations=citations, model=turn.answer.model,
                             adapter=turn.adapter, id=turn.id, index=turn.index)


def on_rate(turn_id: str, settings: kb.AppSettings, owner: str) -> None:
    value = st.session_state.get(f"fb-{turn_id}")
    turn = next((t for t in turns() if t.id == turn_id), None)
    if turn is None:
        return
    turn.rating = "" if value is None else "up" if value == 1 else "down"
    save_rating(settings, owner, turn)
    if turn.rating:
        try:
            feedback.append_feedback(settings.feedback_path, feedback_record(turn, turn.rating))
        except OSError as exc:
            st.toast(markdown_literal(str(exc)))


def render_feedback(turn: Turn, lang: str, settings: kb.AppSettings, owner: str) -> None:
    if turn.rating and f"fb-{turn.id}" not in st.session_state:  # a restored conversation shows its ratings
        st.session_state[f"fb-{turn.id}"] = 1 if turn.rating == "up" else 0
    st.feedback("thumbs", key=f"fb-{turn.id}", on_change=on_rate, args=(turn.id, settings, owner))
    if turn.rating:
        st.caption(tr(lang, "feedback_where", path=Path(settings.feedback_path).resolve()))
    if turn.rating == "up":
        st.caption(tr(lang, "feedback_up"))
    elif turn.rating == "down" and not turn.correction_saved:
        with st.form(f"fix-{turn.id}", border=False):
            st.caption(tr(lang, "feedback_down"))
            text = st.text_area(tr(lang, "correction_label"), key=f"fixtext-{turn.id}",
                                placeholder=tr(lang, "correction_placeholder"), height=90)
            if st.form_submit_button(tr(lang, "correction_submit")) and text.strip():
                try:
                    feedback.append_feedback(settings.feedback_path, feedback_record(turn, "down", text.strip()))
                    turn.correction_saved = True
                    save_rating(settings, owner, turn)
                except OSError as exc:
                    st.error(markdown_literal(str(exc)))
    if turn.correction_saved:
        st.caption(tr(lang, "correction_saved"))


def render_details(turn: Turn, lang: str, settings: kb.AppSettings, owner: str) -> None:
    render_sources(turn, lang)
    models = " | ".join(a.model for a in answers_of(turn) if a.model)
    if models:
        st.markdown(f'<div class="kb-meta">{html_text(tr(lang, "answered_by", model=models))}</div>',
                    unsafe_allow_html=True)
    render_feedback(turn, lang, settings, owner)


def render_turn(turn: Turn, lang: str, settings: kb.AppSettings, owner: str) -> None:
    with st.chat_message("user"):
        st.markdown(answer_markdown(turn.question))
    with st.chat_message("assistant"):
        fill_boxes(answer_boxes(turn.base is not None, turn.adapter, lang), turn)
        render_details(turn, lang, settings, owner)


def write_and_close(stream: Any) -> None:
    """Stream an answer into the page and close it however that ends: a closed tab (Streamlit raises inside
    ``write_stream``) cancels the generation and frees the model now, not when the garbage collector gets to it."""
    pieces = iter(stream)
    try:
        st.write_stream(escape_stream(pieces))  # shown as text: no image, link or HTML of the answer's own
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def stream_answer(pipeline: Any, question: str, history: list[Message], session: Session, turn_id: str) -> Turn:
    """Stream the answer(s) into the page; return the finished turn."""
    overrides = session.retrieval()
    if session.compare:
        base, tuned = pipeline.compare(question, session.adapter, history, **overrides)
        boxes = answer_boxes(True, session.adapter, session.lang)
        for box, stream in zip(boxes, (base, tuned), strict=True):
            with box:
                write_and_close(stream)
        turn = Turn(turn_id, question, tuned.answer, tuned.quotes, session.adapter, session.index_dir,
                    base=base.answer, base_quotes=base.quotes)
    else:
        stream = pipeline.ask(question, history, adapter=session.adapter or None, **overrides)
        boxes = answer_boxes(False, "", session.lang)
        with boxes[0]:
            write_and_close(stream)
        turn = Turn(turn_id, question, stream.answer, stream.quotes, session.adapter, session.index_dir)
    fill_boxes(boxes, turn)
    return turn


def ask(question: str, session: Session, cfg: RagConfig, retriever: Retriever, loaded: LoadedModel,
        settings: kb.AppSettings, owner: str) -> None:
    from rag.answer.pipeline import QAPipeline

    lang = session.lang
    pipeline = QAPipeline(retriever, loaded.model, cfg)
    history = [m for t in turns() for m in (Message("user", t.question), Message("assistant", t.answer.text))]
    with st.chat_message("user"):
        st.markdown(answer_markdown(question))
    with st.chat_message("assistant"):
        notice = st.empty()

        def on_wait(position: int) -> None:
            notice.info(tr(lang, "queued", ahead=position), icon=":material/hourglass_top:")

        try:
            with get_gate(settings.generation_slots).turn(on_wait=on_wait, timeout_s=GATE_TIMEOUT_S):
                notice.empty()
                turn = stream_answer(pipeline, question, history, session, uuid.uuid4().hex[:12])
        except TurnTimeout:
            notice.warning(tr(lang, "gate_timeout"))
            return
        except RagError as exc:  # prompt too long, GPU out of memory, adapter not loaded: one line says why
            notice.empty()
            st.error(tr(lang, "answer_failed", error=markdown_literal(str(exc))))
            return
        except Exception as exc:  # a backend bug must not end the session; the log keeps the traceback
            log.exception("answering %r failed", question)
            notice.empty()
            st.error(tr(lang, "answer_failed", error=markdown_literal(f"{type(exc).__name__}: {exc}")))
            return
        render_details(turn, lang, settings, owner)
    turns().append(turn)
    try:
        save_turn(settings, owner, turn)
    except (RagError, OSError, sqlite3.Error) as exc:  # the answer stays on the page; only saving it failed
        log.exception("saving the conversation failed")
        st.warning(tr(lang, "history_save_failed", error=exc))


def chat_view(session: Session, cfg: RagConfig, retriever: Retriever | None, error: str, loaded: LoadedModel,
              settings: kb.AppSettings, source: ConfigKey, owner: str) -> None:
    lang = session.lang
    if retriever is None:
        if same_path(session.index_dir, cfg.index.dir):
            st.warning(tr(lang, "no_index", folder=cfg.knowledge_dir), icon=":material/warning:")
            if st.button(tr(lang, "build_now"), type="primary"):
                run_reindex(session, cfg, None, source)
        else:
            st.warning(tr(lang, "no_index_other", index=session.index_dir, error=markdown_literal(error)))
    intro = st.empty()
    if not turns():
        with intro.container():
            if loaded.fallback_reason:
                st.info(tr(lang, "fallback_banner"))
                st.caption(explain_failure(lang, loaded.fallback_reason))
            st.caption(tr(lang, "welcome"))
    for turn in turns():
        render_turn(turn, lang, settings, owner)
    placeholder = tr(lang, "ask_placeholder" if retriever is not None else "ask_disabled")
    question = st.chat_input(placeholder, disabled=retriever is None, key="question")
    if question and question.strip() and retriever is not None:
        intro.empty()
        ask(question.strip(), session, cfg, retriever, loaded, settings, owner)
