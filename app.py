"""The chat page: ask the knowledge base, read the sources, manage documents, switch and compare LoRA adapters.

    streamlit run app.py --server.address 127.0.0.1      (or: make app)

UI only: answering is :mod:`rag.pipeline`, knowledge-base chores are :mod:`rag.kb`, the queue is :mod:`rag.gate`,
the words are :mod:`rag.ui_text`. Config: ``KBQA_CONFIG`` (YAML path, default ``configs/rag/default.yaml``) and
``KBQA_OVERRIDES`` (``key=value`` words); page settings (password, upload limit, feedback file) from the
environment or ``.streamlit/secrets.toml`` (see :class:`rag.kb.AppSettings`).

The model, the indexes and the queue are loaded once per process (``st.cache_resource``) and shared by every browser
session; each session keeps its own conversation and retrieval settings in ``st.session_state``.
"""

from __future__ import annotations

import hmac
import logging
import math
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from rag import kb
from rag.config import RagConfig
from rag.errors import RagError
from rag.gate import GateTimeout, GenerationGate
from rag.llm.base import ChatModel
from rag.llm.factory import INSTALL_HINT, LoadedModel
from rag.retrieve import Retriever
from rag.sync import IngestReport
from rag.types import Answer, Citation, Hit, Message
from rag.ui_text import CSS, LANGUAGES, TEXT, html_text, link_citations, passage_html, source_card, tr

log = logging.getLogger("kbqa.app")
ConfigKey = tuple[str, tuple[str, ...]]
GATE_TIMEOUT_S = 600.0  # a user waits at most this long in the generation queue
NEEDS_LLM = "__needs_llm__"  # adapter reason: the extractive backend cannot use adapters (shown translated)
PROGRESS_SPANS = {"hash": (0.0, 0.1), "parse": (0.1, 0.6), "embed": (0.6, 1.0)}  # share of the bar per sync stage
CLOSEST_SHOWN = 3
WRONG_PASSWORD_DELAY_S = 1.0


# --- shared by every session of this process ------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def get_model(source: ConfigKey) -> LoadedModel:
    """The answering model; when the configured one cannot load, the extractive fallback and the reason."""
    from rag.llm.extractive import ExtractiveModel
    from rag.llm.factory import load_chat_model

    cfg = kb.load_app_config(source)
    try:
        return load_chat_model(cfg.llm)
    except (RagError, ImportError) as exc:  # llm.backend=hf / openai named explicitly and not available
        return LoadedModel(ExtractiveModel(), fallback_reason=str(exc))


@st.cache_resource(show_spinner=False)
def get_retriever(source: ConfigKey, index_dir: str) -> Retriever:
    """A retriever over ``index_dir`` (raises IndexStateError when there is no index there: not cached)."""
    from rag.index import KnowledgeIndex

    cfg = kb.load_app_config(source)
    return Retriever(KnowledgeIndex.open(index_dir, cfg), cfg.retrieve)


@st.cache_resource(show_spinner=False)
def get_embedder(source: ConfigKey) -> Any:
    """The configured embedder, for building an index that does not exist yet."""
    from rag.embed import load_embedder

    return load_embedder(kb.load_app_config(source).embed)


@st.cache_resource(show_spinner=False)
def get_gate(slots: int) -> GenerationGate:
    return GenerationGate(slots)


@dataclass(frozen=True)
class AdapterRow:
    """An adapter as the page shows it."""

    name: str
    usable: bool
    reason: str  # "" when usable; NEEDS_LLM is shown translated
    metadata: Any  # rag.adapters.AdapterMetadata or None


class AdapterCatalog:
    """The adapters under ``llm.adapters_dir`` as this process's model sees them; usable ones are loaded onto it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[AdapterRow] | None = None
        self.error = ""

    def rows(self, model: ChatModel, cfg: RagConfig) -> list[AdapterRow]:
        with self._lock:
            if self._rows is None:
                self._rows = self._scan(model, cfg)
            return self._rows

    def rescan(self, model: ChatModel, cfg: RagConfig) -> None:
        with self._lock:
            self._rows = self._scan(model, cfg)

    def _scan(self, model: ChatModel, cfg: RagConfig) -> list[AdapterRow]:
        self.error = ""
        try:
            from rag import adapters as registry
        except ImportError as exc:
            self.error = str(exc)
            return []
        try:
            if model.info().backend == "hf" and hasattr(model, "load_adapter"):
                infos = registry.load_usable_adapters(model, cfg.llm.adapters_dir, cfg.llm.cache_dir)  # type: ignore[arg-type]
                return [AdapterRow(i.name, i.usable, i.reason, i.metadata) for i in infos]
            return [AdapterRow(i.name, False, i.reason or NEEDS_LLM, i.metadata)
                    for i in registry.list_adapters(cfg.llm.adapters_dir)]
        except (RagError, OSError, ValueError) as exc:
            self.error = str(exc)
            return []


@st.cache_resource(show_spinner=False)
def get_catalog(source: ConfigKey) -> AdapterCatalog:
    return AdapterCatalog()


# --- one session ----------------------------------------------------------------------------------------------------


@dataclass
class Turn:
    """One question and its answer (in compare mode ``answer`` is the adapter's and ``base`` the base model's)."""

    id: str
    question: str
    answer: Answer
    quotes: dict[int, str]
    adapter: str  # "" = the base model
    index: str
    base: Answer | None = None
    base_quotes: dict[int, str] = field(default_factory=dict)
    rating: str = ""
    correction_saved: bool = False


@dataclass(frozen=True)
class Session:
    """This browser session's choices (sidebar)."""

    lang: str
    index_dir: str
    top_k: int
    mode: str
    threshold: float
    adapter: str  # "" = base model
    compare: bool

    def retrieval(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "mode": self.mode, "score_threshold": self.threshold}


def turns() -> list[Turn]:
    return st.session_state.setdefault("turns", [])


def secrets() -> dict[str, Any]:
    try:
        if not st.secrets.load_if_toml_exists():
            return {}
        return {key: st.secrets[key] for key in st.secrets}
    except Exception:  # a broken secrets.toml must not take the page down; the settings fall back to env/defaults
        return {}


def same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


# --- access ---------------------------------------------------------------------------------------------------------


def password_ok(password: str, lang: str) -> bool:
    """True once this session typed ``password``; until then draws the login form."""
    if st.session_state.get("authed"):
        return True
    st.title(tr(lang, "password_title"))
    with st.form("login"):
        typed = st.text_input(tr(lang, "password_label"), type="password")
        submitted = st.form_submit_button(tr(lang, "password_button"), type="primary")
    if submitted:
        if hmac.compare_digest(typed.encode("utf-8"), password.encode("utf-8")):
            st.session_state["authed"] = True
            st.rerun()
        time.sleep(WRONG_PASSWORD_DELAY_S)  # slows down guessing from one session
        st.error(tr(lang, "password_wrong"))
    return False


def warn_if_exposed(settings: kb.AppSettings, lang: str) -> None:
    address = str(st.get_option("server.address") or "")
    if not settings.password and address not in ("127.0.0.1", "localhost", "::1"):
        st.sidebar.warning(tr(lang, "exposed_warning", address=address or "0.0.0.0"), icon=":material/warning:")


# --- sidebar --------------------------------------------------------------------------------------------------------


def open_retriever(source: ConfigKey, index_dir: str, lang: str) -> tuple[Retriever | None, str]:
    try:
        with st.spinner(tr(lang, "loading_index")):
            return get_retriever(source, index_dir), ""
    except RagError as exc:
        return None, str(exc)


def sidebar(lang: str, cfg: RagConfig, settings: kb.AppSettings, source: ConfigKey, loaded: LoadedModel,
            adapters: list[AdapterRow]) -> tuple[Session, Retriever | None, str]:
    bar = st.sidebar
    if bar.button(tr(lang, "new_chat"), width="stretch", key="new_chat", icon=":material/add_comment:"):
        st.session_state["turns"] = []

    bar.subheader(tr(lang, "sb_kb"))
    configured = str(Path(cfg.index.dir))
    options = kb.list_indexes(settings.indexes_root or Path(cfg.index.dir).parent, always=configured)
    if st.session_state.get("index_dir") not in options:
        st.session_state["index_dir"] = configured
    index_dir = bar.selectbox(tr(lang, "index_label"), options, key="index_dir", format_func=lambda p: Path(p).name)
    retriever, error = open_retriever(source, index_dir, lang)
    if retriever is not None:
        stats = retriever.index.stats()
        bar.caption(tr(lang, "index_counts", files=stats.get("files", 0), chunks=stats.get("chunks", 0)) + "  \n"
                    + tr(lang, "embedder_caption", embedder=stats["embedder"]))

    bar.subheader(tr(lang, "sb_retrieval"))
    bar.caption(tr(lang, "sb_retrieval_note"))
    top_k = bar.slider(tr(lang, "top_k"), 1, 20, value=cfg.retrieve.top_k, key="top_k")
    dense_ok = retriever is None or retriever.index.dense_enabled
    hybrid = bar.toggle(tr(lang, "hybrid"), value=cfg.retrieve.mode != "dense", key="hybrid",
                        help=tr(lang, "hybrid_help"), disabled=not dense_ok)
    if not dense_ok:
        bar.caption(tr(lang, "hybrid_unavailable"))
    mode = "bm25" if not dense_ok else "hybrid" if hybrid else "dense"
    threshold = bar.slider(tr(lang, "threshold"), 0.0, 1.0, value=float(cfg.retrieve.score_threshold), step=0.05,
                           key="threshold", help=tr(lang, "threshold_help"))

    bar.subheader(tr(lang, "sb_model"))
    info = loaded.model.info()
    bar.caption(f"`{info.model_id}` · {info.backend}" + (f" · {info.device}" if info.device else ""))
    usable = [row.name for row in adapters if row.usable]
    choices = ["", *usable]
    if st.session_state.get("adapter") not in choices:
        st.session_state["adapter"] = cfg.llm.adapter if cfg.llm.adapter in usable else ""
    adapter = bar.selectbox(tr(lang, "adapter_label"), choices, key="adapter", disabled=not usable,
                            format_func=lambda name: name or tr(lang, "base_option"))
    compare = bar.toggle(tr(lang, "compare"), key="compare", disabled=not adapter, help=tr(lang, "compare_help"))
    if usable and not adapter:
        bar.caption(tr(lang, "compare_needs_adapter"))
    warn_if_exposed(settings, lang)
    session = Session(lang, index_dir, int(top_k), mode, float(threshold), adapter or "", bool(compare and adapter))
    return session, retriever, error


# --- chat -----------------------------------------------------------------------------------------------------------


def where(hit_or_chunk: Hit | Citation, lang: str) -> str:
    chunk = hit_or_chunk.chunk
    parts = [chunk.source]
    if chunk.page is not None:
        parts.append(tr(lang, "page", page=chunk.page))
    if chunk.heading:
        parts.append(" › ".join(chunk.heading))
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


def feedback_record(turn: Turn, rating: str, correction: str = "") -> kb.FeedbackRecord:
    citations = [kb.FeedbackCitation(c.number, c.chunk.source, c.chunk.page, turn.quotes.get(c.number, ""))
                 for c in turn.answer.citations]
    return kb.FeedbackRecord(time=kb.now_iso(), question=turn.question, answer=turn.answer.text, rating=rating,
                             correction=correction, citations=citations, model=turn.answer.model,
                             adapter=turn.adapter, id=turn.id, index=turn.index)


def on_rate(turn_id: str, path: str) -> None:
    value = st.session_state.get(f"fb-{turn_id}")
    turn = next((t for t in turns() if t.id == turn_id), None)
    if turn is None:
        return
    turn.rating = "" if value is None else "up" if value == 1 else "down"
    if turn.rating:
        try:
            kb.append_feedback(path, feedback_record(turn, turn.rating))
        except OSError as exc:
            st.toast(str(exc))


def render_feedback(turn: Turn, lang: str, settings: kb.AppSettings) -> None:
    st.feedback("thumbs", key=f"fb-{turn.id}", on_change=on_rate, args=(turn.id, settings.feedback_path))
    if turn.rating == "up":
        st.caption(tr(lang, "feedback_up"))
    elif turn.rating == "down" and not turn.correction_saved:
        with st.form(f"fix-{turn.id}", border=False):
            st.caption(tr(lang, "feedback_down"))
            text = st.text_area(tr(lang, "correction_label"), key=f"fixtext-{turn.id}",
                                placeholder=tr(lang, "correction_placeholder"), height=90)
            if st.form_submit_button(tr(lang, "correction_submit")) and text.strip():
                try:
                    kb.append_feedback(settings.feedback_path, feedback_record(turn, "down", text.strip()))
                    turn.correction_saved = True
                except OSError as exc:
                    st.error(str(exc))
    if turn.correction_saved:
        st.caption(tr(lang, "correction_saved"))


def render_details(turn: Turn, lang: str, settings: kb.AppSettings) -> None:
    render_sources(turn, lang)
    models = " | ".join(a.model for a in answers_of(turn) if a.model)
    if models:
        st.markdown(f'<div class="kb-meta">{html_text(tr(lang, "answered_by", model=models))}</div>',
                    unsafe_allow_html=True)
    render_feedback(turn, lang, settings)


def render_turn(turn: Turn, lang: str, settings: kb.AppSettings) -> None:
    with st.chat_message("user"):
        st.markdown(turn.question)
    with st.chat_message("assistant"):
        fill_boxes(answer_boxes(turn.base is not None, turn.adapter, lang), turn)
        render_details(turn, lang, settings)


def stream_answer(pipeline: Any, question: str, history: list[Message], session: Session, turn_id: str) -> Turn:
    """Stream the answer(s) into the page; return the finished turn."""
    overrides = session.retrieval()
    if session.compare:
        base, tuned = pipeline.compare(question, session.adapter, history, **overrides)
        boxes = answer_boxes(True, session.adapter, session.lang)
        for box, stream in zip(boxes, (base, tuned), strict=True):
            with box:
                st.write_stream(stream)
        turn = Turn(turn_id, question, tuned.answer, tuned.quotes, session.adapter, session.index_dir,
                    base=base.answer, base_quotes=base.quotes)
    else:
        stream = pipeline.ask(question, history, adapter=session.adapter or None, **overrides)
        boxes = answer_boxes(False, "", session.lang)
        with boxes[0]:
            st.write_stream(stream)
        turn = Turn(turn_id, question, stream.answer, stream.quotes, session.adapter, session.index_dir)
    fill_boxes(boxes, turn)
    return turn


def ask(question: str, session: Session, cfg: RagConfig, retriever: Retriever, loaded: LoadedModel,
        settings: kb.AppSettings) -> None:
    from rag.pipeline import QAPipeline

    lang = session.lang
    pipeline = QAPipeline(retriever, loaded.model, cfg)
    history = [m for t in turns() for m in (Message("user", t.question), Message("assistant", t.answer.text))]
    with st.chat_message("user"):
        st.markdown(question)
    with st.chat_message("assistant"):
        notice = st.empty()

        def on_wait(position: int) -> None:
            notice.info(tr(lang, "queued", ahead=position), icon=":material/hourglass_top:")

        try:
            with get_gate(settings.generation_slots).turn(on_wait=on_wait, timeout_s=GATE_TIMEOUT_S):
                notice.empty()
                turn = stream_answer(pipeline, question, history, session, uuid.uuid4().hex[:12])
        except GateTimeout:
            notice.warning(tr(lang, "gate_timeout"))
            return
        except RagError as exc:  # prompt too long, GPU out of memory, adapter not loaded: one line says why
            notice.empty()
            st.error(tr(lang, "answer_failed", error=exc))
            return
        except Exception as exc:  # a backend bug must not end the session; the log keeps the traceback
            log.exception("answering %r failed", question)
            notice.empty()
            st.error(tr(lang, "answer_failed", error=f"{type(exc).__name__}: {exc}"))
            return
        render_details(turn, lang, settings)
    turns().append(turn)


def chat_view(session: Session, cfg: RagConfig, retriever: Retriever | None, error: str, loaded: LoadedModel,
              settings: kb.AppSettings, source: ConfigKey) -> None:
    lang = session.lang
    if retriever is None:
        if same_path(session.index_dir, cfg.index.dir):
            st.warning(tr(lang, "no_index", folder=cfg.knowledge_dir), icon=":material/warning:")
            if st.button(tr(lang, "build_now"), type="primary"):
                run_reindex(session, cfg, None, source)
        else:
            st.warning(tr(lang, "no_index_other", index=session.index_dir, error=error))
    intro = st.empty()
    if not turns():
        with intro.container():
            if loaded.fallback_reason:
                st.info(tr(lang, "fallback_banner"))
            st.caption(tr(lang, "welcome"))
    for turn in turns():
        render_turn(turn, lang, settings)
    placeholder = tr(lang, "ask_placeholder" if retriever is not None else "ask_disabled")
    question = st.chat_input(placeholder, disabled=retriever is None, key="question")
    if question and question.strip() and retriever is not None:
        intro.empty()
        ask(question.strip(), session, cfg, retriever, loaded, settings)


# --- knowledge base -------------------------------------------------------------------------------------------------


def run_reindex(session: Session, cfg: RagConfig, retriever: Retriever | None, source: ConfigKey,
                notes: list[tuple[str, str]] | None = None) -> None:
    """Sync the knowledge folder into the session's index with a progress bar, then redraw with the report."""
    lang = session.lang
    bar = st.progress(0.0, text=tr(lang, "progress_hash", done=0, total="…"))

    def progress(stage: str, done: int, total: int) -> None:
        low, high = PROGRESS_SPANS.get(stage, (0.0, 1.0))
        share = low + (high - low) * (done / total if total else 1.0)
        bar.progress(min(max(share, 0.0), 1.0), text=tr(lang, f"progress_{stage}", done=done, total=total))

    embedder = retriever.index.embedder if retriever is not None else get_embedder(source)
    notes = list(notes or [])
    try:
        report = kb.reindex(cfg.knowledge_dir, cfg, session.index_dir, embedder, progress)
        st.session_state["report"] = report
    except RagError as exc:
        notes.append(("error", tr(lang, "index_busy", error=exc)))
    bar.progress(1.0, text=tr(lang, "progress_done"))
    st.session_state["kb_notes"] = notes
    st.rerun()


def show_notes() -> None:
    for kind, text in st.session_state.pop("kb_notes", []):
        {"error": st.error, "warning": st.warning}.get(kind, st.success)(text)


def show_report(report: IngestReport, lang: str) -> None:
    totals = report.totals()
    files = sorted(report.files, key=lambda f: f.status == "unchanged")  # what changed first (stable otherwise)
    st.markdown(f"#### {tr(lang, 'report_title')}")
    st.caption(tr(lang, "report_summary", chunks=totals["chunks_indexed"], **{
        k: totals[k] for k in ("new", "updated", "unchanged", "failed", "deleted", "seconds")}))
    st.dataframe({
        tr(lang, "col_file"): [f.source for f in files],
        tr(lang, "col_status"): [TEXT[lang].get(f"status_{f.status}", f.status) for f in files],
        tr(lang, "col_chunks"): [f.chunks for f in files],
        tr(lang, "col_pages"): [f.pages for f in files],
        tr(lang, "col_seconds"): [round(f.seconds, 2) for f in files],
        tr(lang, "col_error"): [f.error for f in files],
    }, hide_index=True, width="stretch")


def upload_message(lang: str, error: kb.UploadError, mb: float, suffixes: list[str]) -> str:
    return tr(lang, f"upload_{error.kind}", name=error.name, mb=f"{mb:g}", types=" ".join(suffixes))


def upload_panel(session: Session, cfg: RagConfig, retriever: Retriever | None, settings: kb.AppSettings,
                 source: ConfigKey) -> None:
    lang = session.lang
    suffixes = kb.upload_suffixes(cfg.load)
    st.markdown(f"#### {tr(lang, 'upload_title')}")
    upload_round = st.session_state.setdefault("upload_round", 0)
    files = st.file_uploader(tr(lang, "upload_label"), type=suffixes,  # with the dot: "text" alone means text/*
                             accept_multiple_files=True, key=f"upload-{upload_round}",
                             max_upload_size=max(1, math.ceil(settings.max_upload_mb)),
                             help=tr(lang, "upload_help", mb=f"{settings.max_upload_mb:g}", types=" ".join(suffixes)))
    replace = st.checkbox(tr(lang, "replace_same"), key="replace_same")
    if st.button(tr(lang, "upload_button"), type="primary", disabled=not files, key="upload_button"):
        notes: list[tuple[str, str]] = []
        saved = 0
        for upload in files or []:
            try:
                result = kb.save_upload(cfg.knowledge_dir, upload.name, upload.getvalue(),
                                        int(settings.max_upload_mb * 2**20), suffixes, replace=replace)
            except kb.UploadError as exc:
                notes.append(("error", upload_message(lang, exc, settings.max_upload_mb, suffixes)))
                continue
            saved += result.status != "unchanged"
            notes.append(("success", tr(lang, f"saved_{result.status}", name=result.source)))
        st.session_state["upload_round"] = upload_round + 1  # a fresh, empty uploader next time
        if saved:
            run_reindex(session, cfg, retriever, source, notes)
        st.session_state["kb_notes"] = notes
        st.rerun()


def documents_panel(session: Session, cfg: RagConfig, retriever: Retriever | None, source: ConfigKey,
                    managed: bool) -> None:
    lang = session.lang
    st.markdown(f"#### {tr(lang, 'docs_title')}")
    docs = kb.list_documents(session.index_dir)
    if not docs:
        st.caption(tr(lang, "no_docs"))
        return
    st.dataframe({
        tr(lang, "col_file"): [d.source for d in docs],
        tr(lang, "col_status"): [TEXT[lang].get(f"status_{d.status}", d.status) for d in docs],
        tr(lang, "col_chunks"): [d.chunks for d in docs],
        tr(lang, "col_pages"): [d.pages for d in docs],
        tr(lang, "col_error"): [d.error for d in docs],
    }, hide_index=True, width="stretch")
    if not managed:
        return
    with st.expander(tr(lang, "delete_label")):
        doomed = st.selectbox(tr(lang, "delete_label"), [d.source for d in docs], key="delete_choice",
                              label_visibility="collapsed")
        delete_round = st.session_state.setdefault("delete_round", 0)
        sure = st.checkbox(tr(lang, "delete_confirm"), key=f"delete_confirm-{delete_round}")
        if st.button(tr(lang, "delete_button"), disabled=not sure, key="delete_button",
                     icon=":material/delete:") and doomed:
            try:
                kb.delete_document(cfg.knowledge_dir, doomed)
            except RagError as exc:
                st.error(str(exc))
                return
            st.session_state["delete_round"] = delete_round + 1  # the next delete asks again
            run_reindex(session, cfg, retriever, source, [("success", tr(lang, "deleted", source=doomed))])


def kb_view(session: Session, cfg: RagConfig, retriever: Retriever | None, settings: kb.AppSettings,
            source: ConfigKey) -> None:
    lang = session.lang
    managed = same_path(session.index_dir, cfg.index.dir)
    st.subheader(tr(lang, "kb_title"))
    st.caption(tr(lang, "kb_folder", folder=cfg.knowledge_dir, index=session.index_dir))
    show_notes()
    if retriever is not None:
        stats = retriever.index.stats()
        files, chunks, failed = st.columns(3)
        files.metric(tr(lang, "files_metric"), stats.get("files", 0))
        chunks.metric(tr(lang, "chunks_metric"), stats.get("chunks", 0))
        failed.metric(tr(lang, "failed_metric"), stats.get("failed_files", 0))
        st.caption(tr(lang, "embedder_caption", embedder=stats["embedder"]))
    if not managed:
        st.info(tr(lang, "kb_other_index", index=session.index_dir, folder=cfg.knowledge_dir))
    else:
        upload_panel(session, cfg, retriever, settings, source)
        st.markdown(f"#### {tr(lang, 'reindex_title')}")
        st.caption(tr(lang, "reindex_help"))
        if st.button(tr(lang, "reindex_button"), key="reindex_button", icon=":material/refresh:"):
            run_reindex(session, cfg, retriever, source)
        report = st.session_state.get("report")
        if report is not None and same_path(report.index_dir, session.index_dir):
            show_report(report, lang)
    documents_panel(session, cfg, retriever, source, managed)


# --- model ----------------------------------------------------------------------------------------------------------


def gpu_memory() -> list[tuple[str, float, float, float]]:
    """(name, used GiB, total GiB, this process's reserved GiB) per CUDA device; empty without torch + CUDA."""
    torch = sys.modules.get("torch")  # only when a model already imported it: the page never loads torch for this
    if torch is None or not torch.cuda.is_available():
        return []
    rows = []
    for device in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(device)
        rows.append((torch.cuda.get_device_name(device), (total - free) / 2**30, total / 2**30,
                     torch.cuda.memory_reserved(device) / 2**30))
    return rows


def choose_adapter(name: str) -> None:
    st.session_state["adapter"] = name


def adapter_card(row: AdapterRow, lang: str, current: str) -> None:
    meta = row.metadata
    with st.container(border=True):
        head, state = st.columns([3, 1])
        head.markdown(f"**{html_text(row.name)}**", unsafe_allow_html=True)
        state.markdown(tr(lang, "adapter_usable" if row.usable else "adapter_unusable"))
        if meta is not None:
            metrics = ", ".join(f"{k} {v:.3g}" for k, v in meta.metrics.items()) or tr(lang, "none")
            lora = f"r={meta.lora.r}, alpha={meta.lora.alpha:g}" if meta.lora.r else tr(lang, "none")
            lines = [(tr(lang, "meta_base"), meta.base_model), (tr(lang, "meta_template"), meta.template),
                     (tr(lang, "meta_dataset"), meta.dataset or tr(lang, "none")), (tr(lang, "meta_metrics"), metrics),
                     (tr(lang, "meta_created"), meta.created or tr(lang, "none")), (tr(lang, "meta_lora"), lora)]
            st.markdown("<br>".join(f"{html_text(k)}：{html_text(str(v))}" if lang == "zh" else
                                    f"{html_text(k)}: {html_text(str(v))}" for k, v in lines), unsafe_allow_html=True)
        if not row.usable:
            st.caption(tr(lang, "adapter_needs_llm") if row.reason == NEEDS_LLM else row.reason)
        in_use = current == row.name
        st.button(tr(lang, "adapter_in_use" if in_use else "adapter_use"), key=f"use-{row.name}",
                  disabled=not row.usable or in_use, on_click=choose_adapter, args=(row.name,))


def model_view(session: Session, cfg: RagConfig, loaded: LoadedModel, adapters: list[AdapterRow],
               catalog: AdapterCatalog) -> None:
    lang = session.lang
    info = loaded.model.info()
    st.subheader(tr(lang, "model_title"))
    extractive = info.backend == "extractive"
    state = "state_fallback" if loaded.fallback_reason else "state_extractive" if extractive else "state_loaded"
    lines = [f"**{tr(lang, 'load_state')}**: {tr(lang, state)}"]
    rows = [("backend", info.backend), ("model_id", info.model_id),
            ("revision", info.revision), ("device", info.device), ("dtype", info.dtype), ("template", info.template),
            ("context_window", info.extra.get("context_window", "")), ("origin", info.extra.get("origin", "")),
            ("loaded_adapters", ", ".join(info.adapters))]
    lines += [f"**{tr(lang, key)}**: {html_text(value)}" for key, value in rows if value]
    st.markdown("  \n".join(lines), unsafe_allow_html=True)
    if extractive:
        st.markdown(f"#### {tr(lang, 'install_title')}")
        if loaded.fallback_reason:
            st.caption(tr(lang, "fallback_reason", reason=loaded.fallback_reason))
        st.info(INSTALL_HINT.get(lang, INSTALL_HINT["en"]))
        st.code("python -m rag.models download chatglm3-6b --source modelscope", language="bash")
        st.markdown(tr(lang, "install_sources"))
    st.markdown(f"#### {tr(lang, 'gpu_title')}")
    gpus = gpu_memory()
    if not gpus:
        st.caption(tr(lang, "gpu_none"))
    for name, used, total, mine in gpus:
        st.progress(min(used / total, 1.0) if total else 0.0,
                    text=tr(lang, "gpu_line", name=name, used=used, total=total, mine=mine))
    st.markdown(f"#### {tr(lang, 'adapters_title', folder=cfg.llm.adapters_dir)}")
    if catalog.error:
        st.warning(tr(lang, "adapters_unavailable", error=catalog.error))
    elif not adapters:
        st.caption(tr(lang, "adapters_none", folder=cfg.llm.adapters_dir))
    for row in adapters:
        adapter_card(row, lang, session.adapter)
    st.button(tr(lang, "adapters_rescan"), key="rescan", on_click=catalog.rescan, args=(loaded.model, cfg),
              icon=":material/refresh:")


# --- page -----------------------------------------------------------------------------------------------------------


def main() -> None:
    st.set_option("client.toolbarMode", "viewer")  # a page for users: no developer menu, no "Deploy"
    st.set_page_config(page_title=TEXT["zh"]["page_title"], page_icon=":material/menu_book:", layout="centered")
    st.markdown(CSS, unsafe_allow_html=True)
    lang = st.sidebar.radio(TEXT["zh"]["lang_label"], list(LANGUAGES), format_func=LANGUAGES.__getitem__,
                            key="lang", horizontal=True)
    try:
        settings = kb.app_settings(secrets=secrets())
        source = kb.config_source()
        cfg = kb.load_app_config(source)
    except RagError as exc:
        st.error(tr(lang, "config_error", error=exc))
        st.stop()
    if settings.password and not password_ok(settings.password, lang):
        st.stop()
    with st.spinner(tr(lang, "loading_model")):
        loaded = get_model(source)
    catalog = get_catalog(source)
    adapters = catalog.rows(loaded.model, cfg)
    session, retriever, error = sidebar(lang, cfg, settings, source, loaded, adapters)
    st.title(tr(lang, "title"))
    view = st.radio(tr(lang, "view_label"), ["chat", "kb", "model"], key="view", horizontal=True,
                    format_func=lambda v: tr(lang, f"view_{v}"), label_visibility="collapsed")
    if view == "chat":
        chat_view(session, cfg, retriever, error, loaded, settings, source)
    elif view == "kb":
        kb_view(session, cfg, retriever, settings, source)
    else:
        model_view(session, cfg, loaded, adapters, catalog)


main()
