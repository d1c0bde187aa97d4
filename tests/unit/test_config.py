from __future__ import annotations

from pathlib import Path

import pytest

from rag.core.config import REPO_ROOT, RagConfig, load_config, parse_override
from rag.core.errors import ConfigError


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs" / "rag").glob("*.yaml")), ids=lambda p: p.name)
def test_every_rag_yaml_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, RagConfig)
    assert cfg.split.chunk_overlap < cfg.split.chunk_size


def test_defaults_are_the_embedded_stack() -> None:
    cfg = load_config()
    assert cfg.store.kind == "faiss" and cfg.retrieve.mode == "hybrid"
    assert cfg.embed.model == "shibing624/text2vec-base-chinese"


def test_overrides_are_typed() -> None:
    cfg = load_config(None, ["retrieve.top_k=8", "split.chunk_size=400", "retrieve.score_threshold=1", "load.skip_patterns=[a, b]"])
    assert cfg.retrieve.top_k == 8 and cfg.split.chunk_size == 400
    assert cfg.retrieve.score_threshold == 1.0 and isinstance(cfg.retrieve.score_threshold, float)
    assert cfg.load.skip_patterns == ["a", "b"]


def test_unknown_key_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["retrieve.topk=3"])
    assert str(err.value).startswith("unknown config key retrieve.topk; valid keys: retrieve.mode, retrieve.top_k,")


def test_unknown_section() -> None:
    with pytest.raises(ConfigError, match="unknown config key retriever; valid keys: knowledge_dir, index, load"):
        load_config(None, ["retriever.top_k=3"])


def test_bad_type_names_key_and_value() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["retrieve.top_k=abc"])
    assert str(err.value) == "retrieve.top_k='abc' must be of type int"
    with pytest.raises(ConfigError, match="must be true or false"):
        load_config(None, ["index.keep_deleted=maybe"])


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_override("retrieve.top_k")
    with pytest.raises(ConfigError, match="bad key"):
        parse_override("retrieve..top_k=3")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["knowledge_dir.x=1"])


def test_yaml_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)
