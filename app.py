"""The chat page: ask the knowledge base, read the sources, manage documents, switch and compare LoRA adapters.

    streamlit run app.py --server.address 127.0.0.1      (or: make app)

UI only: answering is :mod:`rag.answer.pipeline`, knowledge-base chores are :mod:`rag.webui.kb`, the queue is :mod:`rag.core.fifo`,
the words are :mod:`rag.webui.text`. Config: ``KBQA_CONFIG`` (YAML path, default ``configs/rag/default.yaml``) and
``KBQA_OVERRIDES`` (``key=value`` words); page settings (password, upload limit, feedback file) from the
environment or ``.streamlit/secrets.toml`` (see :class:`rag.webui.kb.AppSettings`).

The model, the indexes and the queue are loaded once per process (``st.cache_resource``) and shared by every browser
session; each session keeps its own conversation and retrieval settings in ``st.session_state``.

This file draws the page frame (language, login, sidebar, the three views); the parts live in :mod:`rag.webui`:
shared resources and session state in ``state``, the sidebar in ``sidebar``, the views in ``chat``, ``kb_page`` and
``model_page``.
"""

from __future__ import annotations

import streamlit as st

from rag.core.errors import RagError
from rag.webui import kb
from rag.webui.chat import chat_view
from rag.webui.kb_page import kb_view
from rag.webui.model_page import model_view
from rag.webui.sidebar import sidebar
from rag.webui.state import get_catalog, get_model, password_ok, secrets
from rag.webui.text import CSS, LANGUAGES, TEXT, tr


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
