"""The chat page's sidebar: this session's knowledge base, retrieval settings and adapter, as a :class:`Session`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from rag.answer.backend import LoadedModel
from rag.answer.retrieve import Retriever
from rag.core.config import RagConfig
from rag.core.errors import RagError
from rag.webui import kb
from rag.webui.history import new_chat
from rag.webui.knowledge_bases import read_kb
from rag.webui.state import AdapterRow, ConfigKey, Session, get_retriever, warn_if_exposed
from rag.webui.text import tr


def open_retriever(source: ConfigKey, index_dir: str, lang: str) -> tuple[Retriever | None, str]:
    try:
        with st.spinner(tr(lang, "loading_index")):
            return get_retriever(source, index_dir), ""
    except RagError as exc:
        return None, str(exc)


def index_label(index_dir: str) -> str:
    """A knowledge base made from the page by its name, any other index by its folder name."""
    made = read_kb(index_dir)
    return made.name if made is not None else Path(index_dir).name


def sidebar(lang: str, cfg: RagConfig, settings: kb.AppSettings, source: ConfigKey, loaded: LoadedModel,
            adapters: list[AdapterRow]) -> tuple[Session, Retriever | None, str, Any]:
    """This session's choices, its retriever (or the reason there is none) and the sidebar box kept for the
    conversation list (filled after the chat view, so a conversation started by this run is listed at once)."""
    bar = st.sidebar
    bar.button(tr(lang, "new_chat"), width="stretch", key="new_chat", icon=":material/add_comment:", on_click=new_chat)
    history_box = bar.container()

    bar.subheader(tr(lang, "sb_kb"))
    configured = str(Path(cfg.index.dir))
    options = kb.list_indexes(settings.indexes_root or Path(cfg.index.dir).parent, always=configured)
    if st.session_state.get("index_dir") not in options:
        st.session_state["index_dir"] = configured
    index_dir = bar.selectbox(tr(lang, "index_label"), options, key="index_dir", format_func=index_label)
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
    return session, retriever, error, history_box
