"""Backend selection: auto falls back to extractive with a reason and never downloads; hf raises; bad names fail."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from rag.answer.backend import load_chat_model
from rag.core.config import LLMConfig
from rag.core.errors import ConfigError, ModelUnavailableError


def test_auto_falls_back_to_extractive_with_the_reason(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = replace(LLMConfig(), model="someone/not-a-model", cache_dir=str(tmp_path))
    started = time.perf_counter()
    loaded = load_chat_model(cfg)
    assert time.perf_counter() - started < 60  # no download attempt (a loaded CI machine imports slowly)
    assert loaded.model.info().backend == "extractive"
    assert "not-a-model" in loaded.fallback_reason


def test_hf_backend_raises_when_model_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelUnavailableError):
        load_chat_model(replace(LLMConfig(), backend="hf", model=str(tmp_path / "missing"), cache_dir=str(tmp_path)))


def test_unknown_backend() -> None:
    with pytest.raises(ConfigError, match="llm.backend='gpt' is not one of auto, hf, openai, extractive"):
        load_chat_model(replace(LLMConfig(), backend="gpt"))


def test_extractive_backend_and_the_answerability_setting_is_checked() -> None:
    from rag.answer.extractive import ExtractiveModel
    from rag.answer.pipeline import QAPipeline
    from rag.core.config import AnswerConfig, RagConfig

    model = load_chat_model(replace(LLMConfig(), backend="extractive")).model
    assert isinstance(model, ExtractiveModel)
    cfg = replace(RagConfig(), answer=replace(AnswerConfig(), min_term_coverage=1.5))
    with pytest.raises(ConfigError, match=r"answer.min_term_coverage=1.5 must be between 0 and 1"):
        QAPipeline(object(), model, cfg)  # type: ignore[arg-type]
    cfg = replace(RagConfig(), answer=replace(AnswerConfig(), min_sentence_similarity=-0.2))
    with pytest.raises(ConfigError, match=r"answer.min_sentence_similarity=-0.2 must be between 0 and 1"):
        QAPipeline(object(), model, cfg)  # type: ignore[arg-type]
