"""The model view: what answers (backend, model, device, fallback reason), the panel that chooses it, GPU memory,
and the LoRA adapters.

The panel saves a :class:`~rag.webui.model_choice.ModelChoice` (a local folder, a downloaded model, or an
OpenAI-compatible endpoint) to the user config file; the next run of every session loads it
(:func:`rag.webui.state.use_model`), so a choice applies without a restart. Buttons act through ``on_click``
callbacks, which run before the page is drawn again: the page that follows a save already answers with the new model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

from rag.answer.backend import INSTALL_HINT, LoadedModel
from rag.core.config import RagConfig
from rag.core.errors import ConfigError
from rag.webui.downloads import SOURCES, Downloader, human_bytes, modelscope_installed
from rag.webui.model_choice import ModelChoice, check_endpoint, explain_failure, normalise_base_url, save_choice
from rag.webui.state import NEEDS_LLM, AdapterCatalog, AdapterRow, Session, reload_model
from rag.webui.text import html_text, markdown_literal, tr

KINDS = ("config", "local", "download", "openai")
NOTICE = "model_notice"  # (kind, text) shown once after a button: success | error


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
            st.caption(tr(lang, "adapter_needs_llm") if row.reason == NEEDS_LLM else markdown_literal(row.reason))
        in_use = current == row.name
        st.button(tr(lang, "adapter_in_use" if in_use else "adapter_use"), key=f"use-{row.name}",
                  disabled=not row.usable or in_use, on_click=choose_adapter, args=(row.name,))


def describe(choice: ModelChoice, cfg: RagConfig, lang: str) -> str:
    if choice.kind == "local":
        return tr(lang, "what_local", model=f"`{choice.model}`")
    if choice.kind == "openai":
        return tr(lang, "what_openai", model=f"`{choice.model}`", url=f"`{choice.base_url}`")
    model = "extractive" if cfg.llm.backend == "extractive" else cfg.llm.model
    return tr(lang, "what_config", model=f"`{model}`")


@st.cache_resource(show_spinner=False)
def get_downloader(cache_dir: str, log_dir: str) -> Downloader:
    """The page process's one background download (it outlives the session that started it)."""
    return Downloader(cache_dir, log_dir)


def _saved(path: Path, choice: ModelChoice, lang: str, cfg: RagConfig) -> bool:
    """Save ``choice`` and leave the notice for the next run; whether it was saved."""
    try:
        saved = save_choice(path, choice)
    except ConfigError as exc:
        st.session_state[NOTICE] = ("error", tr(lang, "save_failed", why=markdown_literal(str(exc))))
        return False
    st.session_state[NOTICE] = ("success", tr(lang, "saved_choice", what=describe(saved, cfg, lang)))
    st.session_state.pop("connect_result", None)
    return True


def _save(path: Path, choice: ModelChoice, lang: str, cfg: RagConfig) -> None:
    _saved(path, choice, lang, cfg)


def _typed_or_saved_key(saved: ModelChoice) -> str:
    """The key typed in the form, else the saved one, but only for the server it was saved for: a saved key is never
    sent to another URL typed into the form."""
    typed = str(st.session_state.get("openai_key", ""))
    if typed or saved.kind != "openai" or st.session_state.get("openai_forget_key"):
        return typed
    try:
        same_server = normalise_base_url(str(st.session_state.get("openai_url", ""))) == saved.base_url
    except ConfigError:
        same_server = False
    return saved.api_key if same_server else ""


def _save_endpoint(path: Path, saved: ModelChoice, lang: str, cfg: RagConfig) -> None:
    choice = ModelChoice("openai", str(st.session_state.get("openai_model", "")),
                         str(st.session_state.get("openai_url", "")), _typed_or_saved_key(saved))
    if _saved(path, choice, lang, cfg):  # refused (no model name, a bad URL): what was typed stays to be fixed
        st.session_state["openai_key"] = ""  # the key leaves the page once saved
        st.session_state["openai_forget_key"] = False


def _connect(saved: ModelChoice, lang: str) -> None:
    result = check_endpoint(str(st.session_state.get("openai_url", "")), str(st.session_state.get("openai_model", "")),
                            _typed_or_saved_key(saved))
    if result.ok:
        if not str(st.session_state.get("openai_model", "")).strip() and result.models:
            st.session_state["openai_model"] = result.models[0]
        shown = ", ".join(result.models[:8]) + (" …" if len(result.models) > 8 else "")
        text = tr(lang, "connect_ok", seconds=result.seconds, url=result.base_url, count=len(result.models),
                  models=shown or "-", reply=result.reply.strip())
        st.session_state["connect_result"] = ("success", markdown_literal(text))
    else:
        st.session_state["connect_result"] = ("error", tr(lang, "connect_failed",
                                                          why=explain_failure(lang, result.error)))


def _start_download(downloader: Downloader, lang: str) -> None:
    try:
        downloader.start(str(st.session_state.get("download_id", "")), str(st.session_state.get("download_source")))
    except ConfigError as exc:
        st.session_state[NOTICE] = ("error", tr(lang, "download_refused", why=markdown_literal(str(exc))))


def _notice(key: str) -> None:
    shown = st.session_state.pop(key, None)
    if shown:
        (st.success if shown[0] == "success" else st.error)(shown[1])


def endpoint_form(lang: str, cfg: RagConfig, saved: ModelChoice, path: Path) -> None:
    if saved.kind == "openai":  # the saved endpoint fills the form on a session's first look (never the key)
        st.session_state.setdefault("openai_url", saved.base_url)
        st.session_state.setdefault("openai_model", saved.model)
    st.text_input(tr(lang, "openai_url"), key="openai_url", placeholder="http://127.0.0.1:11434/v1",
                  help=tr(lang, "openai_url_help"))
    st.text_input(tr(lang, "openai_model"), key="openai_model", help=tr(lang, "openai_model_help"))
    st.text_input(tr(lang, "openai_key"), key="openai_key", type="password", autocomplete="off")
    if saved.kind == "openai" and saved.api_key:
        st.caption(tr(lang, "openai_key_saved"))
        st.checkbox(tr(lang, "openai_key_forget"), key="openai_forget_key")
    connect, use = st.columns(2)
    connect.button(tr(lang, "connect"), key="connect", icon=":material/lan:", width="stretch",
                   on_click=_connect, args=(saved, lang))
    use.button(tr(lang, "save_use"), key="save_endpoint", type="primary", width="stretch",
               on_click=_save_endpoint, args=(path, saved, lang, cfg))
    _notice("connect_result")


def download_form(lang: str, cfg: RagConfig, path: Path) -> None:
    downloader = get_downloader(cfg.llm.cache_dir, str(path.parent))
    running = downloader.state().status == "running"
    st.session_state.setdefault("download_id", "chatglm3-6b")
    st.text_input(tr(lang, "download_id"), key="download_id", help=tr(lang, "download_id_help"), disabled=running)
    st.selectbox(tr(lang, "download_source"), SOURCES, key="download_source", disabled=running,
                 format_func=lambda source: tr(lang, f"source_{source}"))
    if not modelscope_installed():
        st.caption(tr(lang, "modelscope_missing"))
    start, cancel = st.columns(2)
    start.button(tr(lang, "download_start"), key="download_start", icon=":material/download:", width="stretch",
                 disabled=running, on_click=_start_download, args=(downloader, lang))
    cancel.button(tr(lang, "download_cancel"), key="download_cancel", icon=":material/cancel:", width="stretch",
                  disabled=not running, on_click=downloader.cancel)
    (download_watch if running else download_status)(downloader, lang, cfg, path)  # no timer when idle


def download_status(downloader: Downloader, lang: str, cfg: RagConfig, path: Path) -> None:
    """The download's progress bar while it runs, else how it ended."""
    state = downloader.state()
    if state.status == "running":
        total = tr(lang, "download_of", total=human_bytes(state.total_bytes)) if state.total_bytes else ""
        st.progress(state.fraction or 0.0, text=tr(lang, "download_running", model=state.model,
                                                   done=human_bytes(state.done_bytes), total=total))
    elif state.status == "done":
        st.success(tr(lang, "download_done", folder=markdown_literal(state.folder)))
        if state.answers:
            st.button(tr(lang, "use_download"), key="use_download", type="primary",
                      on_click=_save, args=(path, ModelChoice("local", state.folder), lang, cfg))
        else:  # an embedding model: it goes into the config (and needs a re-index), not into this panel
            st.caption(tr(lang, "download_embedder", setting=markdown_literal(state.message)))
    elif state.status == "failed":
        st.error(tr(lang, "download_failed", why=explain_failure(lang, state.message)))
    elif state.status == "cancelled":
        st.warning(tr(lang, "download_cancelled", done=human_bytes(state.done_bytes),
                      folder=markdown_literal(state.folder)))


@st.fragment(run_every=1.0)
def download_watch(downloader: Downloader, lang: str, cfg: RagConfig, path: Path) -> None:
    """:func:`download_status` redrawn every second by itself while the download runs (only this part of the page
    reruns); once it has ended, the whole page again, so the buttons and the result show the new state."""
    if downloader.state().status != "running":
        st.rerun()
    download_status(downloader, lang, cfg, path)


def choice_panel(lang: str, cfg: RagConfig, saved: ModelChoice, path: Path) -> None:
    st.markdown(f"#### {tr(lang, 'choose_title')}")
    st.caption(tr(lang, "choice_now", what=describe(saved, cfg, lang), path=markdown_literal(str(path))))
    _notice(NOTICE)
    st.session_state.setdefault("model_kind", saved.kind)
    kind = st.radio(tr(lang, "kind_label"), KINDS, key="model_kind", horizontal=True,
                    format_func=lambda k: tr(lang, f"kind_{k}"))
    if kind == "config":
        st.caption(tr(lang, "config_caption", model=cfg.llm.model, backend=cfg.llm.backend))
        st.button(tr(lang, "use_config"), key="use_config", type="primary", disabled=saved.kind == "config",
                  on_click=_save, args=(path, ModelChoice(), lang, cfg))
    elif kind == "local":
        if saved.kind == "local":
            st.session_state.setdefault("local_folder", saved.model)
        st.text_input(tr(lang, "local_label"), key="local_folder", placeholder="/models/chatglm3-6b")
        st.button(tr(lang, "use_local"), key="use_local", type="primary", on_click=lambda: _save(
            path, ModelChoice("local", str(st.session_state.get("local_folder", ""))), lang, cfg))
    elif kind == "download":
        download_form(lang, cfg, path)
    else:
        endpoint_form(lang, cfg, saved, path)


def model_view(session: Session, cfg: RagConfig, loaded: LoadedModel, adapters: list[AdapterRow],
               catalog: AdapterCatalog, choice: ModelChoice, choice_path: Path) -> None:
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
    if loaded.fallback_reason and (choice.kind != "config" or cfg.llm.backend != "auto"):
        st.warning(tr(lang, "choice_failed", why=explain_failure(lang, loaded.fallback_reason)),
                   icon=":material/warning:")
        st.button(tr(lang, "reconnect"), key="reconnect", icon=":material/refresh:", on_click=reload_model)
    elif extractive:
        st.markdown(f"#### {tr(lang, 'install_title')}")
        if loaded.fallback_reason:
            st.caption(tr(lang, "fallback_reason", reason=markdown_literal(loaded.fallback_reason)))
        st.info(INSTALL_HINT.get(lang, INSTALL_HINT["en"]))
        st.code("python -m rag.models download chatglm3-6b", language="bash")
        st.markdown(tr(lang, "install_sources"))
    choice_panel(lang, cfg, choice, choice_path)
    st.markdown(f"#### {tr(lang, 'gpu_title')}")
    gpus = gpu_memory()
    if not gpus:
        st.caption(tr(lang, "gpu_none"))
    for name, used, total, mine in gpus:
        st.progress(min(used / total, 1.0) if total else 0.0,
                    text=tr(lang, "gpu_line", name=name, used=used, total=total, mine=mine))
    st.markdown(f"#### {tr(lang, 'adapters_title', folder=cfg.llm.adapters_dir)}")
    if catalog.error:
        st.warning(tr(lang, "adapters_unavailable", error=markdown_literal(catalog.error)))
    elif not adapters:
        st.caption(tr(lang, "adapters_none", folder=cfg.llm.adapters_dir))
    for row in adapters:
        adapter_card(row, lang, session.adapter)
