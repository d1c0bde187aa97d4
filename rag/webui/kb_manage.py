"""The knowledge-base view's panel that creates, renames and deletes knowledge bases (:mod:`rag.webui.knowledge_bases`).

A new knowledge base gets an empty index (made with the configured embedder) at once, so the sidebar lists it and the session switches to it; its
documents are added with the upload panel below (or by copying files into its folder and pressing 重新索引).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from rag.core.config import RagConfig
from rag.core.errors import RagError
from rag.webui import kb
from rag.webui.knowledge_bases import config_for, create_kb, delete_kb, read_kb, rename_kb
from rag.webui.state import ConfigKey, Session, get_embedder, get_retriever
from rag.webui.text import tr


def roots(cfg: RagConfig, settings: kb.AppSettings) -> tuple[Path, Path]:
    """(the folder every knowledge base's documents must be inside, the folder of the indexes)."""
    knowledge_root = Path(settings.knowledge_root or Path(cfg.knowledge_dir).resolve().parent)
    return knowledge_root, Path(settings.indexes_root or Path(cfg.index.dir).parent)


def _create(cfg: RagConfig, settings: kb.AppSettings, source: ConfigKey, lang: str) -> None:
    knowledge_root, indexes_root = roots(cfg, settings)
    try:
        made = create_kb(st.session_state.get("kb_new_name", ""), st.session_state.get("kb_new_folder", ""),
                         knowledge_root, indexes_root)
    except RagError as exc:
        st.session_state["kb_manage_note"] = ("error", str(exc))
        return
    try:  # an empty index made with the configured embedder: listed at once, filled by the first upload
        kb.reindex(made.folder, config_for(cfg, made.index_dir), made.index_dir, get_embedder(source))
    except RagError as exc:
        st.session_state["kb_manage_note"] = ("error", str(exc))
        return
    get_retriever.clear()  # a deleted knowledge base of the same name may still be cached
    st.session_state["index_dir"] = made.index_dir
    st.session_state["kb_new_name"] = st.session_state["kb_new_folder"] = ""
    st.session_state["kb_manage_note"] = ("success", tr(lang, "kb_created", name=made.name, folder=made.folder))


def _rename(index_dir: str, lang: str) -> None:
    try:
        renamed = rename_kb(index_dir, st.session_state.get(f"kb_title-{index_dir}", ""))
        st.session_state["index_dir"] = index_dir  # re-sent: the browser keeps showing the old name otherwise
        st.session_state["kb_manage_note"] = ("success", tr(lang, "kb_renamed", name=renamed.name))
    except RagError as exc:
        st.session_state["kb_manage_note"] = ("error", str(exc))


def _delete(index_dir: str, cfg: RagConfig, settings: kb.AppSettings, lang: str) -> None:
    doomed = read_kb(index_dir)
    name = doomed.name if doomed is not None else index_dir
    try:
        delete_kb(index_dir, roots(cfg, settings)[1])
    except RagError as exc:
        st.session_state["kb_manage_note"] = ("error", str(exc))
        return
    get_retriever.clear()
    st.session_state["index_dir"] = str(Path(cfg.index.dir))
    st.session_state["kb_manage_note"] = ("success", tr(lang, "kb_deleted", name=name))


def manage_panel(session: Session, cfg: RagConfig, settings: kb.AppSettings, source: ConfigKey) -> None:
    """Create a knowledge base; rename or delete the session's one if it was made here. ``cfg`` is the page's
    configured one (not the session's knowledge base)."""
    lang = session.lang
    knowledge_root, _ = roots(cfg, settings)
    box = st.container(border=True)
    box.markdown(f"#### {tr(lang, 'kb_manage')}")
    if note := st.session_state.pop("kb_manage_note", None):
        {"error": box.error, "success": box.success}[note[0]](note[1])
    with box.form("kb_new", border=False):
        name, folder = st.columns(2)
        name.text_input(tr(lang, "kb_new_name"), key="kb_new_name", max_chars=60, placeholder="人事制度")
        folder.text_input(tr(lang, "kb_new_folder"), key="kb_new_folder",
                          help=tr(lang, "kb_new_folder_help", root=knowledge_root),
                          placeholder=tr(lang, "kb_new_folder_placeholder"))
        st.form_submit_button(tr(lang, "kb_create"), on_click=_create, args=(cfg, settings, source, lang),
                              icon=":material/add:")
    current = read_kb(session.index_dir)
    if current is None:
        box.caption(tr(lang, "kb_configured_note"))
        return
    box.markdown(f"**{tr(lang, 'kb_current', name=current.name)}** · `{current.folder}`")
    box.text_input(tr(lang, "kb_new_name"), value=current.name, key=f"kb_title-{session.index_dir}")
    box.button(tr(lang, "kb_rename"), key="kb_rename", on_click=_rename, args=(session.index_dir, lang))
    sure = box.checkbox(tr(lang, "kb_delete_confirm"), key=f"kb_delete_sure-{session.index_dir}")
    box.button(tr(lang, "kb_delete"), key="kb_delete", disabled=not sure, icon=":material/delete:",
               on_click=_delete, args=(session.index_dir, cfg, settings, lang))
