"""The model view: what answers (backend, model, device, fallback reason), GPU memory, and the LoRA adapters."""

from __future__ import annotations

import sys

import streamlit as st

from rag.answer.backend import INSTALL_HINT, LoadedModel
from rag.core.config import RagConfig
from rag.webui.state import NEEDS_LLM, AdapterCatalog, AdapterRow, Session
from rag.webui.text import html_text, markdown_literal, tr


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
            st.caption(tr(lang, "fallback_reason", reason=markdown_literal(loaded.fallback_reason)))
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
        st.warning(tr(lang, "adapters_unavailable", error=markdown_literal(catalog.error)))
    elif not adapters:
        st.caption(tr(lang, "adapters_none", folder=cfg.llm.adapters_dir))
    for row in adapters:
        adapter_card(row, lang, session.adapter)
    st.button(tr(lang, "adapters_rescan"), key="rescan", on_click=catalog.rescan, args=(loaded.model, cfg),
              icon=":material/refresh:")
