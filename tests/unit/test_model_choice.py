"""The model panel's choice: saved and read back, checked, applied to the config; the connect button's calls against a
real loopback server (tests/fake_openai.py); loading a choice that fails falls back to extractive with its reason."""

from __future__ import annotations

import logging
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.core.config import LLMConfig
from rag.core.errors import ConfigError
from rag.webui.model_choice import (
    ModelChoice,
    check_endpoint,
    explain_failure,
    failure_kind,
    load_choice,
    load_choice_model,
    normalise_base_url,
    save_choice,
    user_config_path,
)
from tests.fake_openai import FakeOpenAI


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(models=("qwen-mini", "law-qa"), api_key="sk-secret-123")
    yield fake
    fake.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there once the socket is closed


def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    return folder


def test_nothing_saved_means_the_config_model(tmp_path: Path) -> None:
    assert load_choice(tmp_path / "model.yaml") == ModelChoice()
    cfg = LLMConfig(model="THUDM/chatglm3-6b")
    assert ModelChoice().apply(cfg) is cfg


def test_an_endpoint_is_saved_owner_only_and_read_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "data" / "model.yaml"
    with caplog.at_level(logging.INFO, logger="rag.webui.model_choice"):
        saved = save_choice(path, ModelChoice("openai", " qwen-mini ", "http://127.0.0.1:11434/", "sk-secret-123"))
    assert saved == ModelChoice("openai", "qwen-mini", "http://127.0.0.1:11434/v1", "sk-secret-123")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the key
    assert load_choice(path) == saved
    assert "sk-secret-123" not in repr(saved) and "sk-secret-123" not in caplog.text
    assert "model choice saved" in caplog.text
    applied = saved.apply(LLMConfig())
    assert (applied.backend, applied.model, applied.openai_base_url) == ("openai", "qwen-mini",
                                                                         "http://127.0.0.1:11434/v1")
    assert "sk-secret-123" not in "".join(saved.cache_key())


def test_a_local_folder_must_hold_a_model(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    saved = save_choice(tmp_path / "model.yaml", ModelChoice("local", str(folder)))
    assert saved.apply(LLMConfig()).model == str(folder.resolve())
    assert saved.apply(LLMConfig()).backend == "hf" and saved.apply(LLMConfig()).source == "local"
    with pytest.raises(ConfigError, match=r"'.*empty' is not a model folder \(it needs a config.json\)"):
        save_choice(tmp_path / "model.yaml", ModelChoice("local", str(tmp_path / "empty")))
    assert load_choice(tmp_path / "model.yaml") == saved  # a refused save leaves the old choice


@pytest.mark.parametrize(("typed", "root"), [
    ("http://127.0.0.1:11434", "http://127.0.0.1:11434/v1"),
    ("http://host:8000/v1/", "http://host:8000/v1"),
    ("https://gw.example.com/openai/v1/chat/completions", "https://gw.example.com/openai/v1"),
    ("http://host:8000/v1/models", "http://host:8000/v1"),
])
def test_pasted_urls_become_the_api_root(typed: str, root: str) -> None:
    assert normalise_base_url(typed) == root


def test_bad_inputs_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"endpoint URL '127.0.0.1:11434' must start with http:// or https://"):
        normalise_base_url("127.0.0.1:11434")
    with pytest.raises(ConfigError, match="the endpoint needs a model name"):
        save_choice(tmp_path / "m.yaml", ModelChoice("openai", "", "http://h/v1"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: openai\nmodel: m\nbase_url: http://h/v1\ntoken: x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) token in .*bad.yaml; valid: kind, model, base_url, api_key"):
        load_choice(bad)
    bad.write_text("kind: cloud\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml: model choice kind='cloud' is not one of config, local, openai"):
        load_choice(bad)
    bad.write_text("kind: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read the model choice in .*; fix or delete the file"):
        load_choice(bad)


def test_the_file_goes_beside_the_conversations_unless_named(tmp_path: Path) -> None:
    assert user_config_path(tmp_path / "conversations") == tmp_path / "conversations" / "model.yaml"
    assert user_config_path(tmp_path, str(tmp_path / "x.yaml")) == tmp_path / "x.yaml"


def test_connect_calls_the_server_with_the_key(server: FakeOpenAI) -> None:
    result = check_endpoint(f"http://127.0.0.1:{server.port}", "", "sk-secret-123")
    assert result.ok, result.error
    assert result.base_url == server.url and result.models == ("qwen-mini", "law-qa")
    assert "qwen-mini 收到了问题" in result.reply  # the first listed model answered
    assert [(s.method, s.path) for s in server.seen] == [("GET", "/v1/models"), ("POST", "/v1/chat/completions")]
    assert all(s.authorization == "Bearer sk-secret-123" for s in server.seen)
    assert server.chats()[0].body["max_tokens"] == 8  # a tiny completion, not a full answer


def test_connect_failures_are_sorted_for_the_page(server: FakeOpenAI) -> None:
    refused = check_endpoint(server.url, "qwen-mini", "wrong-key")
    assert not refused.ok and "HTTP 401" in refused.error and failure_kind(refused.error) == "key_refused"
    missing = check_endpoint(server.url, "gpt-9", "sk-secret-123")
    assert not missing.ok and failure_kind(missing.error) == "no_such_model", missing.error
    down = check_endpoint(closed_port_url(), "qwen-mini")
    assert not down.ok and failure_kind(down.error) == "unreachable", down.error
    assert explain_failure("zh", down.error).startswith("无法连接到服务（地址有误或服务未启动）。详情：")
    assert explain_failure("en", down.error).startswith("The server cannot be reached")
    assert not check_endpoint("localhost:1", "m").ok
    assert failure_kind("cannot download x: offline (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE") == "offline"
    assert failure_kind("language model x not found: no local folder, not in caches") == "model_missing"


def test_a_chosen_endpoint_loads_or_falls_back_with_its_reason(server: FakeOpenAI) -> None:
    loaded = load_choice_model(LLMConfig(), ModelChoice("openai", "law-qa", server.url, "sk-secret-123"))
    assert loaded.fallback_reason == "" and loaded.model.info().backend == "openai"
    assert "".join(loaded.model.stream([])).startswith("来自测试服务的回答：law-qa")

    wrong = load_choice_model(LLMConfig(), ModelChoice("openai", "gpt-9", server.url, "sk-secret-123"))
    assert wrong.model.info().backend == "extractive"
    assert "does not serve a model 'gpt-9' (it serves qwen-mini, law-qa)" in wrong.fallback_reason
    down = load_choice_model(LLMConfig(), ModelChoice("openai", "m", closed_port_url()))
    assert down.model.info().backend == "extractive" and failure_kind(down.fallback_reason) == "unreachable"


def test_a_folder_that_stopped_being_a_model_falls_back(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)  # config.json but no weights and no tokenizer: cannot load
    loaded = load_choice_model(LLMConfig(), ModelChoice("local", str(folder)))
    assert loaded.model.info().backend == "extractive" and loaded.fallback_reason


def test_a_server_without_a_model_list_can_still_be_used() -> None:
    bare = FakeOpenAI(models=("qwen-mini",), lists_models=False)
    try:
        result = check_endpoint(bare.url, "qwen-mini")
        assert result.ok and result.models == () and "qwen-mini" in result.reply, result
        assert not check_endpoint(bare.url, "").ok  # nothing listed and no name: says to type one
        loaded = load_choice_model(LLMConfig(), ModelChoice("openai", "qwen-mini", bare.url))
        assert loaded.fallback_reason == "" and loaded.model.info().backend == "openai"
    finally:
        bare.close()
