"""What the chat page shares between sessions and what each session keeps.

The model, the retrievers, the embedder, the generation queue and the adapter catalogue are loaded once per process
(``st.cache_resource``) and shared by every browser session. Each session keeps its conversation (:class:`Turn`) and
its sidebar choices (:class:`Session`) in ``st.session_state``; :func:`password_ok` is the optional login form.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from rag.answer.backend import LoadedModel
from rag.answer.retrieve import Retriever
from rag.core.config import RagConfig
from rag.core.errors import ConfigError, RagError
from rag.core.fifo import FifoTurns
from rag.llm.base import ChatModel
from rag.webui import kb
from rag.webui.conversations import ConversationStore, Turn
from rag.webui.login import LoginThrottle
from rag.webui.model_choice import ModelChoice
from rag.webui.text import tr

ConfigKey = tuple[str, tuple[str, ...]]
NEEDS_LLM = "__needs_llm__"  # adapter reason: the extractive backend cannot use adapters (shown translated)
WRONG_PASSWORD_DELAY_S = 1.0


# --- shared by every session of this process ------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def get_model(source: ConfigKey, choice_key: tuple[str, ...], _choice: ModelChoice) -> LoadedModel:
    """The answering model: the model panel's choice (``_choice``, keyed by ``choice_key``, which holds no key) on top
    of the config; when it cannot load, the extractive fallback and the reason."""
    from rag.answer.backend import start_warm_up
    from rag.answer.extractive import ExtractiveModel
    from rag.webui.model_choice import load_choice_model

    cfg = kb.load_app_config(source)
    try:
        loaded = load_choice_model(cfg.llm, _choice)
    except ConfigError as exc:  # a bad llm.backend in the config itself
        return LoadedModel(ExtractiveModel(), fallback_reason=str(exc))
    if not loaded.fallback_reason:
        start_warm_up(loaded.model, cfg.llm.adapter)  # the fast decoder's capture, before the first question
    return loaded


def use_model(source: ConfigKey, choice: ModelChoice) -> LoadedModel:
    """The model for ``choice``. A model cached for an earlier choice is let go first, so switching never keeps two
    6B models in memory (a session still answering with the old one finishes with it)."""
    key = choice.cache_key()
    current = get_model_keys()
    if current.get("key") not in (None, key):
        get_model.clear()
    current["key"] = key
    return get_model(source, key, choice)


def reload_model() -> None:
    """Load the chosen model again on the next run (the panel's 重新连接 button: the server may be up now)."""
    get_model.clear()


@st.cache_resource(show_spinner=False)
def get_model_keys() -> dict[str, tuple[str, ...]]:
    """The process's current model choice key: a model cached for another key is stale."""
    return {}


@st.cache_resource(show_spinner=False)
def get_retriever(source: ConfigKey, index_dir: str) -> Retriever:
    """A retriever over ``index_dir`` (raises IndexStateError when there is no index there: not cached)."""
    from rag.index.reader import KnowledgeIndex

    cfg = kb.load_app_config(source)
    return Retriever(KnowledgeIndex.open(index_dir, cfg), cfg.retrieve)


@st.cache_resource(show_spinner=False)
def get_embedder(source: ConfigKey) -> Any:
    """The configured embedder, for building an index that does not exist yet."""
    from rag.embed.embedder import load_embedder

    return load_embedder(kb.load_app_config(source).embed)


@st.cache_resource(show_spinner=False)
def get_gate(slots: int) -> FifoTurns:
    """The process-wide queue in front of whole answers: at most ``slots`` at once, the others wait their turn."""
    return FifoTurns(slots)


@st.cache_resource(show_spinner=False)
def get_login_throttle() -> LoginThrottle:
    return LoginThrottle()


@st.cache_resource(show_spinner=False)
def get_conversations(folder: str) -> ConversationStore:
    """The saved conversations of every user of this page (one SQLite file in ``folder``)."""
    return ConversationStore(folder)


@dataclass(frozen=True)
class AdapterRow:
    """An adapter as the page shows it."""

    name: str
    usable: bool
    reason: str  # "" when usable; NEEDS_LLM is shown translated
    metadata: Any  # rag.models.adapters.AdapterMetadata or None


def folder_signature(folder: str | Path) -> tuple[Any, ...]:
    """What changes when an adapter is added, removed, renamed or rewritten under ``folder``: the names, times and
    sizes of its sub-folders and of the files in them (a few ``stat`` calls: cheap enough for every rerun)."""
    root = Path(folder).expanduser()
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return ()
    signature: list[Any] = []
    for entry in entries:
        try:
            if entry.is_dir():
                files = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(entry.iterdir()))
                signature.append((entry.name, entry.stat().st_mtime_ns, files))
        except OSError:  # removed while looking: the next rerun sees the new state
            continue
    return tuple(signature)


class AdapterCatalog:
    """The adapters under ``llm.adapters_dir`` as this process's model sees them; usable ones are loaded onto it.

    Rescanned by itself when the folder changes or the model is another one (:func:`folder_signature`, checked on
    every rerun), so an adapter trained while the page runs shows up on the next click without a button.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[AdapterRow] | None = None
        self._seen: tuple[Any, ...] = ()
        self.error = ""

    def rows(self, model: ChatModel, cfg: RagConfig) -> list[AdapterRow]:
        seen = (id(model), folder_signature(cfg.llm.adapters_dir))
        with self._lock:
            if self._rows is None or seen != self._seen:
                self._rows, self._seen = self._scan(model, cfg), seen
            return self._rows

    def _scan(self, model: ChatModel, cfg: RagConfig) -> list[AdapterRow]:
        self.error = ""
        from rag.llm.adapters import load_usable_adapters
        from rag.models.adapters import list_adapters

        try:
            if model.info().backend == "hf" and hasattr(model, "load_adapter"):
                infos = load_usable_adapters(model, cfg.llm.adapters_dir, cfg.llm.cache_dir)  # type: ignore[arg-type]
                return [AdapterRow(i.name, i.usable, i.reason, i.metadata) for i in infos]
            return [AdapterRow(i.name, False, i.reason or NEEDS_LLM, i.metadata)
                    for i in list_adapters(cfg.llm.adapters_dir)]
        except (RagError, OSError, ValueError) as exc:
            self.error = str(exc)
            return []


@st.cache_resource(show_spinner=False)
def get_catalog(source: ConfigKey) -> AdapterCatalog:
    return AdapterCatalog()


# --- one session ----------------------------------------------------------------------------------------------------


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


def client_address() -> str:
    """The browser's IP address as Streamlit sees it; "localhost" for local connections (Streamlit says None)."""
    address = st.context.ip_address
    return address if isinstance(address, str) and address else "localhost"


def password_ok(password: str, lang: str) -> bool:
    """True once this session typed ``password``; until then draws the login form."""
    if st.session_state.get("authed"):
        return True
    st.title(tr(lang, "password_title"))
    throttle, address = get_login_throttle(), client_address()
    locked_s = throttle.locked_for(address)
    if locked_s:  # too many wrong passwords from this address, in any session: not even the right one counts now
        st.error(tr(lang, "password_locked", minutes=math.ceil(locked_s / 60)))
        return False
    with st.form("login"):
        typed = st.text_input(tr(lang, "password_label"), type="password")
        submitted = st.form_submit_button(tr(lang, "password_button"), type="primary")
    if submitted:
        if hmac.compare_digest(typed.encode("utf-8"), password.encode("utf-8")):
            throttle.succeeded(address)
            st.session_state["authed"] = True
            st.rerun()
        locked_s = throttle.failed(address)  # counted per address, across sessions (rag.webui.login)
        time.sleep(WRONG_PASSWORD_DELAY_S)  # slows down guessing from one session
        st.error(tr(lang, "password_locked", minutes=math.ceil(locked_s / 60)) if locked_s else
                 tr(lang, "password_wrong"))
    return False


def warn_if_exposed(settings: kb.AppSettings, lang: str) -> None:
    address = str(st.get_option("server.address") or "")
    if not settings.password and address not in ("127.0.0.1", "localhost", "::1"):
        st.sidebar.warning(tr(lang, "exposed_warning", address=address or "0.0.0.0"), icon=":material/warning:")
