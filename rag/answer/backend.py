"""Pick the answering backend from config: the local model when it can be had, else the extractive fallback."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from rag.core.config import LLMConfig
from rag.core.errors import ConfigError, ModelUnavailableError
from rag.llm.base import ChatModel

log = logging.getLogger(__name__)

BACKENDS = ("auto", "hf", "openai", "extractive")
INSTALL_HINT = {
    "zh": "未找到语言模型，当前使用抽取式回答（直接摘录最相关的句子并标注出处）。安装 ChatGLM3-6B：\n"
    "python -m rag.models download chatglm3-6b（先 ModelScope；未安装 modelscope 时自动改用 Hugging Face），"
    "然后在“模型”页的“选择回答所用的模型”中选择下载得到的文件夹（无需重启），或在 configs/rag/default.yaml 中设置 llm.model=<该文件夹>。",
    "en": "No language model found: answering extractively (quoting the best supporting sentences with citations). "
    "Install ChatGLM3-6B with: python -m rag.models download chatglm3-6b (ModelScope first; Hugging Face by itself "
    "when modelscope is not installed), "
    "then choose the folder it prints under 'Choose what answers' on the Model page (no restart), "
    "or set llm.model=<that folder>.",
}


@dataclass
class LoadedModel:
    """The backend in use and, when it is a fallback, why."""

    model: ChatModel
    fallback_reason: str = ""  # empty when the configured backend loaded


def load_chat_model(cfg: LLMConfig) -> LoadedModel:
    """Load ``cfg.backend``; with ``auto``, a model not on disk falls back to the extractive backend (never raises
    for a missing model, never downloads)."""
    from rag.answer.extractive import ExtractiveModel

    if cfg.backend not in BACKENDS:
        raise ConfigError(f"llm.backend={cfg.backend!r} is not one of {', '.join(BACKENDS)}")
    if cfg.backend == "extractive":
        return LoadedModel(ExtractiveModel())
    if cfg.backend == "openai":
        from rag.llm.openai import OpenAIChatModel  # type: ignore[import-not-found]

        return LoadedModel(OpenAIChatModel.from_config(cfg))
    try:
        from rag.llm.hf.model import HFChatModel

        # auto never starts a multi-GB download behind the user's back: `python -m rag.models download` does that
        return LoadedModel(HFChatModel.load(cfg, network=cfg.backend == "hf"))
    except ModelUnavailableError as exc:
        if cfg.backend == "hf":
            raise
        # the caller tells the user (one line in a CLI, a notice on the page): only a debug log here, not twice
        log.info("%s Answering extractively.", exc)
        return LoadedModel(ExtractiveModel(), fallback_reason=str(exc))


def start_warm_up(model: Any, adapter: str = "") -> threading.Thread | None:
    """Warm the model's fast decoder in a background thread (``HFChatModel.warm_up``: the CUDA-graph capture the
    first request would otherwise wait ~15 s for), for ``adapter`` ("" = the base model) when it is loaded. Requests
    that arrive meanwhile queue behind it as behind any answer. None when the backend has nothing to warm."""
    warm = getattr(model, "warm_up", None)
    if warm is None:
        return None
    target = adapter if adapter and adapter in getattr(model, "adapters", ()) else None

    def run() -> None:
        started = time.perf_counter()
        try:
            if warm(target):
                log.info("fast decoder warmed in %.1f s", time.perf_counter() - started)
        except Exception as exc:  # a warm-up failure is the first request's to report, with its own fallback
            log.warning("warm-up failed (%s: %s); the first request will try again", type(exc).__name__, exc)

    thread = threading.Thread(target=run, name="kbqa-warm-up", daemon=True)
    thread.start()
    return thread
