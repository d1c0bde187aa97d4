"""The knowledge-base view: upload documents, list and delete them, re-index the folder and show the sync report.

The chores themselves are :mod:`rag.webui.kb`; only the session's configured index (``index.dir``) is managed here, other
indexes are shown read-only.
"""

from __future__ import annotations

import math

import streamlit as st

from rag.answer.retrieve import Retriever
from rag.core.config import RagConfig
from rag.core.errors import RagError
from rag.index.report import IngestReport
from rag.webui import kb, uploads
from rag.webui.state import ConfigKey, Session, get_embedder, same_path
from rag.webui.text import TEXT, markdown_literal, tr, uploader_css

PROGRESS_SPANS = {"hash": (0.0, 0.1), "parse": (0.1, 0.6), "embed": (0.6, 1.0)}  # share of the bar per sync stage


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
        notes.append(("error", tr(lang, "index_busy", error=markdown_literal(str(exc)))))
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


def upload_message(lang: str, error: uploads.UploadError, mb: float, suffixes: list[str]) -> str:
    """The page's one line for a refused upload (names and reasons shown as text: a name can hold markdown)."""
    return tr(lang, f"upload_{error.kind}", name=markdown_literal(error.name), mb=f"{mb:g}", types=" ".join(suffixes),
              error=markdown_literal(str(error)))


def upload_panel(session: Session, cfg: RagConfig, retriever: Retriever | None, settings: kb.AppSettings,
                 source: ConfigKey) -> None:
    lang = session.lang
    suffixes = uploads.upload_suffixes(cfg.load)
    st.markdown(f"#### {tr(lang, 'upload_title')}")
    upload_round = st.session_state.setdefault("upload_round", 0)
    st.markdown(uploader_css(lang, f"{settings.max_upload_mb:g}", ", ".join(s.lstrip(".").upper() for s in suffixes)),
                unsafe_allow_html=True)
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
                result = uploads.save_upload(cfg.knowledge_dir, upload.name, upload.getvalue(),
                                        int(settings.max_upload_mb * 2**20), suffixes, replace=replace)
            except uploads.UploadError as exc:
                notes.append(("error", upload_message(lang, exc, settings.max_upload_mb, suffixes)))
                continue
            saved += result.status != "unchanged"
            notes.append(("success", tr(lang, f"saved_{result.status}", name=markdown_literal(result.source))))
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
                uploads.delete_document(cfg.knowledge_dir, doomed)
            except RagError as exc:
                st.error(markdown_literal(str(exc)))
                return
            st.session_state["delete_round"] = delete_round + 1  # the next delete asks again
            run_reindex(session, cfg, retriever, source, [("success", tr(lang, "deleted", source=markdown_literal(doomed)))])


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
