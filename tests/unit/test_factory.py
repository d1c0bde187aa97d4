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
    assert time.perf_counter() - started < 10
    assert loaded.model.info().backend == "extractive"
    assert "not-a-model" in loaded.fallback_reason


def test_hf_backend_raises_when_model_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelUnavailableError):
        load_chat_model(replace(LLMConfig(), backend="hf", model=str(tmp_path / "missing"), cache_dir=str(tmp_path)))


def test_unknown_backend() -> None:
    with pytest.raises(ConfigError, match="llm.backend='gpt' is not one of auto, hf, openai, extractive"):
        load_chat_model(replace(LLMConfig(), backend="gpt"))


def test_extractive_min_coverage_comes_from_the_config() -> None:
    from rag.answer.extractive import ExtractiveModel

    model = load_chat_model(replace(LLMConfig(), backend="extractive", extractive_min_coverage=0.35)).model
    assert isinstance(model, ExtractiveModel) and model.min_coverage == 0.35
    assert LLMConfig().extractive_min_coverage == 0.1  # chosen on the tune split (docs/EVAL.md)
    with pytest.raises(ValueError, match=r"llm.extractive_min_coverage\) must be between 0 and 1"):
        load_chat_model(replace(LLMConfig(), backend="extractive", extractive_min_coverage=1.5))
