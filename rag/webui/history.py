"""This session's saved conversation and the sidebar list of past ones (:mod:`rag.webui.conversations` stores them).

Who is asking: the browser's key (``?u=`` in the URL, else the ``kbqa_user`` cookie, else a new random key; the page
keeps both), bound to the page password when one is set (:func:`rag.webui.conversations.owner_key`). Which
conversation is open: ``?c=`` in the URL, so a reload (F5) or a restart reopens it.
"""

from __future__ import annotations

import re

import streamlit as st

from rag.core.errors import RagError
from rag.webui import kb
from rag.webui.conversations import (
    Conversation,
    ConversationStore,
    Turn,
    new_conversation_id,
    new_key,
    owner_key,
    to_json,
    to_markdown,
    valid_key,
)
from rag.webui.state import get_conversations, turns
from rag.webui.text import tr

COOKIE = "kbqa_user"
COOKIE_DAYS = 400  # the longest a browser keeps a cookie
LISTED = 30  # conversations shown in the sidebar


def store(settings: kb.AppSettings) -> ConversationStore:
    return get_conversations(settings.conversations_dir)


def browser_key() -> str:
    """This browser's key; kept in the URL (``?u=``) and in a cookie, so a new tab finds the same conversations."""
    key: str | None = st.session_state.get("browser_key")
    if key is None:
        from_url, from_cookie = st.query_params.get("u"), st.context.cookies.get(COOKIE)
        key = str(from_url) if valid_key(from_url) else str(from_cookie) if valid_key(from_cookie) else new_key()
        st.session_state["browser_key"] = key
        # one small script, once per session: the page's own origin, the key only (no user data)
        st.html(f"<script>document.cookie = '{COOKIE}={key}; path=/; max-age={COOKIE_DAYS * 86400}; "
                "SameSite=Strict';</script>", unsafe_allow_javascript=True)
    if st.query_params.get("u") != key:
        st.query_params["u"] = key
    return key


def start(settings: kb.AppSettings) -> str:
    """Who this session is (the owner key); on a session's first run, reopen the conversation named in the URL."""
    owner = owner_key(browser_key(), settings.password)
    if not st.session_state.get("history_restored"):
        st.session_state["history_restored"] = True
        wanted = st.query_params.get("c")
        if valid_key(wanted) and st.session_state.get("conversation") is None:
            restored = store(settings).turns(owner, str(wanted))
            if restored:
                st.session_state["turns"], st.session_state["conversation"] = restored, wanted
    current = st.session_state.get("conversation")
    if current:
        st.query_params["c"] = current
    elif "c" in st.query_params:
        del st.query_params["c"]
    return owner


def new_chat() -> None:
    st.session_state["turns"], st.session_state["conversation"] = [], None


def save_turn(settings: kb.AppSettings, owner: str, turn: Turn) -> None:
    """Append the answered turn to this session's conversation (started, and named in the URL, on its first turn)."""
    conversation = st.session_state.get("conversation") or new_conversation_id()
    store(settings).append(owner, conversation, turn)
    st.session_state["conversation"] = conversation
    st.query_params["c"] = conversation


def save_rating(settings: kb.AppSettings, owner: str, turn: Turn) -> None:
    conversation = st.session_state.get("conversation")
    if conversation:
        store(settings).update(owner, conversation, turn)


def _open(settings: kb.AppSettings, owner: str, conversation_id: str) -> None:
    st.session_state["turns"] = store(settings).turns(owner, conversation_id)
    st.session_state["conversation"] = conversation_id


def _rename(settings: kb.AppSettings, owner: str, conversation_id: str) -> None:
    try:
        store(settings).rename(owner, conversation_id, st.session_state.get(f"title-{conversation_id}", ""))
    except RagError as exc:
        st.session_state["history_error"] = str(exc)


def _delete(settings: kb.AppSettings, owner: str, conversation_id: str) -> None:
    store(settings).delete(owner, conversation_id)
    if st.session_state.get("conversation") == conversation_id:
        new_chat()


def file_stem(title: str) -> str:
    """A download file name from a title: no path or reserved characters."""
    return re.sub(r'[\\/:*?"<>|\x00-\x1f]+', "_", title).strip(" ._") or "conversation"


def history_panel(box: st.delta_generator.DeltaGenerator, lang: str, settings: kb.AppSettings, owner: str) -> None:
    """The sidebar's list of this user's conversations (newest first) and the open one's actions."""
    saved = store(settings).recent(owner, LISTED)
    current_id = st.session_state.get("conversation")
    box.subheader(tr(lang, "sb_history"))
    if not saved:
        box.caption(tr(lang, "history_empty"))
        return
    for conversation in saved:
        box.button(conversation.title, key=f"conv-{conversation.id}", width="stretch",
                   type="primary" if conversation.id == current_id else "tertiary",
                   on_click=_open, args=(settings, owner, conversation.id))
    current = next((c for c in saved if c.id == current_id), None)
    if current is not None:
        _actions(box, lang, settings, owner, current)


def _actions(box: st.delta_generator.DeltaGenerator, lang: str, settings: kb.AppSettings, owner: str,
             current: Conversation) -> None:
    with box.expander(tr(lang, "history_actions"), icon=":material/edit_note:"):
        st.text_input(tr(lang, "history_title"), value=current.title, key=f"title-{current.id}", max_chars=200)
        st.button(tr(lang, "history_rename"), key=f"rename-{current.id}", on_click=_rename,
                  args=(settings, owner, current.id))
        if error := st.session_state.pop("history_error", ""):
            st.error(error)
        saved_turns = turns()
        stem = file_stem(current.title)
        st.download_button("Markdown", to_markdown(current.title, saved_turns), file_name=f"{stem}.md",
                           mime="text/markdown", key=f"md-{current.id}", icon=":material/download:")
        st.download_button("JSON", to_json(current, saved_turns), file_name=f"{stem}.json",
                           mime="application/json", key=f"json-{current.id}", icon=":material/download:")
        st.button(tr(lang, "history_delete"), key=f"delete-{current.id}", on_click=_delete,
                  args=(settings, owner, current.id), icon=":material/delete:")
