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
from rag.webui import history, kb
from rag.webui.chat import chat_view
from rag.webui.kb_manage import manage_panel
from rag.webui.kb_page import kb_view
from rag.webui.knowledge_bases import config_for
from rag.webui.model_choice import ModelChoice, load_choice, user_config_path
from rag.webui.model_page import model_view
from rag.webui.sidebar import sidebar
from rag.webui.state import get_catalog, password_ok, secrets, use_model
from rag.webui.text import CSP_SCRIPT, CSS, LANGUAGES, SCROLL_TO_MARKS_JS, TEXT, tr


def keep_view() -> None:
    """Re-send the open view (对话 / 知识库 / 模型) with the new language's labels: the browser drops a radio's
    selection when its option labels change, although the page still shows that view."""
    st.session_state["view"] = st.session_state.get("view", "chat")
    for key in ("model_kind", "download_source"):  # the model panel's choices drop the same way
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def main() -> None:
    st.set_option("client.toolbarMode", "viewer")  # a page for users: no developer menu, no "Deploy"
    st.set_page_config(page_title=TEXT["zh"]["page_title"], page_icon=":material/menu_book:", layout="centered")
    st.markdown(CSS, unsafe_allow_html=True)
    st.html(CSP_SCRIPT, unsafe_allow_javascript=True)  # images only from this server: see text.CSP
    st.html(SCROLL_TO_MARKS_JS, unsafe_allow_javascript=True)
    lang = st.sidebar.radio(TEXT["zh"]["lang_label"], list(LANGUAGES), format_func=LANGUAGES.__getitem__,
                            key="lang", horizontal=True, on_change=keep_view)
    try:
        settings = kb.app_settings(secrets=secrets())
        source = kb.config_source()
        cfg = kb.load_app_config(source)
    except RagError as exc:
        st.error(tr(lang, "config_error", error=exc))
        st.stop()
    if settings.password and not password_ok(settings.password, lang):
        st.stop()
    try:
        owner = history.start(settings)
    except RagError as exc:
        st.error(tr(lang, "config_error", error=exc))
        st.stop()
    choice_path = user_config_path(settings.conversations_dir, settings.user_config)
    try:
        choice = load_choice(choice_path)  # the model panel's choice: read on every run, so a save applies at once
    except RagError as exc:
        st.warning(tr(lang, "choice_file_bad", error=exc))
        choice = ModelChoice()
    with st.spinner(tr(lang, "loading_model")):
        loaded = use_model(source, choice)
    catalog = get_catalog(source)
    adapters = catalog.rows(loaded.model, cfg)
    session, retriever, error, history_box = sidebar(lang, cfg, settings, source, loaded, adapters)
    st.title(tr(lang, "title"))
    view = st.radio(tr(lang, "view_label"), ["chat", "kb", "model"], key="view", horizontal=True,
                    format_func=lambda v: tr(lang, f"view_{v}"), label_visibility="collapsed")
    session_cfg = config_for(cfg, session.index_dir)  # a knowledge base made from the page: its folder and index
    if view == "chat":
        chat_view(session, session_cfg, retriever, error, loaded, settings, source, owner)
    elif view == "kb":
        kb_view(session, session_cfg, retriever, settings, source)
        manage_panel(session, cfg, settings, source)
    else:
        model_view(session, cfg, loaded, adapters, catalog, choice, choice_path)
    history.history_panel(history_box, lang, settings, owner)


main()
