"""python -m rag.models (check / download) and rag.models.hub underneath it: offline reports, no network in check mode,
downloads that land in the cache via ``.partial`` and are reused, hubs that never hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import save_file

from rag.cli import models
from rag.core.errors import ConfigError, ModelUnavailableError
from rag.models import hub
from rag.models.adapters import write_metadata
from rag.models.ids import cache_folder_name, canonical_model_id, hub_ids, is_hub_id, read_download_record

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Empty caches (ours, ModelScope's, Hugging Face's) under tmp_path, HF_HUB_OFFLINE=1; returns our cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("KBQA_OFFLINE", raising=False)
    monkeypatch.setenv("KBQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "modelscope"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "cache"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, env: Path) -> None:
    """Network allowed by the environment, but any hub child process fails the test."""
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a hub was contacted")

    monkeypatch.setattr(hub, "_run_child", forbidden)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from rag.cli.common import run_cli

    code = run_cli(models.main, models.parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fake_model_folder(folder: Path, model_type: str = "llama") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}), encoding="utf-8")
    return folder


# --- check ---------------------------------------------------------------------------------------------------------


def test_check_reports_versions_and_missing_models_without_network(no_network: None, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    adapters_dir = tmp_path / "adapters"
    good = adapters_dir / "law-qa"
    good.mkdir(parents=True)
    (good / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["q_proj"]}))
    import numpy as np

    save_file({"a": np.zeros(2, np.float32)}, str(good / "adapter_model.safetensors"))
    write_metadata(good, base_model="ZhipuAI/chatglm3-6b", template="chatglm3")
    (adapters_dir / "old").mkdir()
    (adapters_dir / "old" / "adapter_config.json").write_text("{}")
    (adapters_dir / "old" / "adapter_model.bin").write_bytes(b"x")
    code, out, _ = run_main(["check", f"llm.adapters_dir={adapters_dir}", "embed.model=nobody/no-embedder",
                             "embed.modelscope_id="], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("python 3.") and any(line.startswith("torch 2.") for line in lines)
    for package in ("transformers", "peft", "sentence-transformers", "faiss-cpu"):
        assert any(line.startswith(package + " ") for line in lines), package
    assert any(line.startswith("CUDA: ") for line in lines)
    assert "language model: THUDM/chatglm3-6b (llm.backend=auto, llm.source=auto)" in lines
    assert ("  not found: no local folder, not in caches, ModelScope: not tried (no network in this mode), "
            "Hugging Face: not tried (no network in this mode). Put the model in a folder and set llm.model=/path, "
            "or download it with `python -m rag.models download THUDM/chatglm3-6b`.") in lines
    assert "  until it is installed the app answers extractively (quotes with citations)" in lines
    assert "embedding model: nobody/no-embedder (embed.source=auto)" in lines
    assert any(line.startswith("  not found: no local folder, not in caches") and "embed.model=/path" in line
               for line in lines)
    assert any(line.startswith("  fallback: ") for line in lines)
    assert f"adapters in {adapters_dir}:" in lines
    law = next(line for line in lines if line.startswith("law-qa"))
    assert "yes" in law and "ZhipuAI/chatglm3-6b" in law and "(template checked when the model loads)" in law
    old = next(line for line in lines if line.startswith("old"))
    assert " no " in old and "only adapter_model.bin (a pickle) is present" in old


def test_check_finds_a_local_model_and_its_template(env: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from tinymodels import build_tiny_causal_lm

    folder = build_tiny_causal_lm(tmp_path, "qwen2", "chatml")
    code, out, _ = run_main(["check", f"llm.model={folder}", "embed.source=hash",
                             f"llm.adapters_dir={tmp_path / 'none'}"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert f"  found: local folder {folder}" in lines and "  chat template: chatml" in lines
    assert "  the hash embedder (for tests; no model)" in lines
    assert f"adapters in {tmp_path / 'none'}: none" in lines


@pytest.mark.integration
def test_check_as_a_module_offline(env: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "rag.models", "check", "llm.model=nobody/none",
                           f"llm.adapters_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("python 3.") and "language model: nobody/none" in proc.stdout
    assert "  not found: no local folder, not in caches" in proc.stdout


def test_check_online_asks_the_hubs_and_downloads_nothing(monkeypatch: pytest.MonkeyPatch, env: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    asked: list[list[str]] = []

    def fake_child(script: str, args: list[str], timeout_s: float, show_progress: bool) -> tuple[str | None, str]:
        assert script == hub._PROBE, "check --online must not download"
        asked.append(args)
        return "found at revision abc", ""

    monkeypatch.setattr(hub, "_run_child", fake_child)
    code, out, _ = run_main(["check", "--online", "llm.source=huggingface", "embed.source=hash"], capsys)
    assert code == 0 and asked == [["huggingface", "THUDM/chatglm3-6b", ""]]
    assert "  Hugging Face THUDM/chatglm3-6b: found at revision abc" in out.splitlines()
    assert not any(env.glob("*"))


def test_bad_config_is_one_line_and_exit_1(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["check", "llm.nope=1"], capsys)
    assert code == 1 and out == "" and err.startswith("error: unknown config key llm.nope; valid keys: llm.backend")


# --- download ------------------------------------------------------------------------------------------------------


def test_download_offline_is_refused_with_the_fix(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["download", "chatglm3-6b"], capsys)
    assert code == 1
    assert err == ("error: cannot download chatglm3-6b: offline (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE, or copy the "
                   "model folder to this machine and point the config at it\n")


@pytest.mark.skipif(hub.importlib.util.find_spec("modelscope") is not None, reason="modelscope is installed")
def test_download_from_modelscope_needs_modelscope(monkeypatch: pytest.MonkeyPatch, env: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    code, _, err = run_main(["download", "chatglm3-6b", "--source", "modelscope"], capsys)
    assert (code, err) == (1, "error: cannot download chatglm3-6b: ModelScope: not installed (pip install modelscope)\n")


def test_download_lands_in_the_cache_and_is_reused(monkeypatch: pytest.MonkeyPatch, env: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    source = fake_model_folder(tmp_path / "remote")
    calls: list[list[str]] = []

    def fake_child(script: str, args: list[str], timeout_s: float, show_progress: bool) -> tuple[str | None, str]:
        calls.append(args)
        hub_name, repo, revision, dest, patterns = args
        for file in source.iterdir():
            (Path(dest) / file.name).write_bytes(file.read_bytes())
        return dest, ""

    monkeypatch.setattr(hub, "_run_child", fake_child)
    code, out, _ = run_main(["download", "chatglm3-6b", "--source", "huggingface", "--revision", "v1.0"], capsys)
    folder = env / "THUDM--chatglm3-6b@v1.0"
    assert code == 0 and calls == [["huggingface", "THUDM/chatglm3-6b", "v1.0", str(folder) + ".partial", "[]"]]
    assert out.splitlines() == [f"downloaded chatglm3-6b to {folder}", f"use it with: llm.model={folder}"]
    assert not folder.with_name(folder.name + ".partial").exists()
    record = read_download_record(folder)
    assert (record["repo"], record["source"], record["revision"]) == ("THUDM/chatglm3-6b", "huggingface", "v1.0")
    assert run_main(["download", "chatglm3-6b", "--source", "huggingface", "--revision", "v1.0"], capsys)[0] == 0
    assert len(calls) == 1  # already there: no second download
    # and the app finds it by either hub's id at that revision, but not at another one
    path, origin = hub.resolve_model("ZhipuAI/chatglm3-6b", revision="v1.0", network=False,
                                     modelscope_id="THUDM/chatglm3-6b")
    assert (path, origin) == (folder, f"cache {folder}")
    assert hub.resolve_model("chatglm3-6b", revision="v1.0", network=False)[0] == folder
    with pytest.raises(ModelUnavailableError):
        hub.resolve_model("chatglm3-6b", revision="v2.0", network=False)
    assert canonical_model_id(str(folder)) == "chatglm3-6b"


# --- hub -------------------------------------------------------------------------------------------------------------


def test_offline_resolution_is_fast_and_says_what_was_tried(env: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as info:
        hub.resolve_model("chatglm3-6b", kind="language model")
    assert time.perf_counter() - started < 5
    assert str(info.value) == (
        "language model chatglm3-6b not found: no local folder, not in caches, ModelScope: offline (HF_HUB_OFFLINE=1), "
        "Hugging Face: offline (HF_HUB_OFFLINE=1). Put the model in a folder and set llm.model=/path, or download it "
        "with `python -m rag.models download chatglm3-6b`."
    )


def test_resolution_order_local_then_caches(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = fake_model_folder(tmp_path / "local")
    assert hub.resolve_model(str(local)) == (local.resolve(), f"local folder {local.resolve()}")
    ours = fake_model_folder(env / "org--m")
    assert hub.resolve_model("org/m") == (ours, f"cache {ours}")
    modelscope = fake_model_folder(tmp_path / "modelscope" / "models" / "org" / "m2___5")  # ModelScope writes . as ___
    assert hub.resolve_model("hf-org/m2.5", modelscope_id="org/m2.5") == (modelscope, f"cache {modelscope}")
    with pytest.raises(ModelUnavailableError, match=r"^model org/m2.5 not found: no local folder, not in caches, "
                                                    r"Hugging Face: offline"):
        hub.resolve_model("org/m2.5", source="huggingface", kind="model")  # ModelScope's cache is not Hugging Face's
    with pytest.raises(ModelUnavailableError, match=r"^model x/y not found: no local folder, not in caches\. Put"):
        hub.resolve_model("x/y", source="local")
    with pytest.raises(ConfigError, match=r"^embed.source='hash' is not one of auto, local, modelscope, huggingface$"):
        hub.resolve_model("x/y", source="hash", section="embed")


@pytest.mark.integration
def test_a_hanging_hub_is_killed_after_the_timeout(monkeypatch: pytest.MonkeyPatch, env: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "_DOWNLOAD", "import time; time.sleep(60)")  # a hub that never answers
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match=r"not in caches, Hugging Face: timed out after 1 s\. Put"):
        hub.resolve_model("nobody/slow", source="huggingface", timeout_s=1)
    assert time.perf_counter() - started < 5
    assert (env / "nobody--slow.partial").is_dir() and not (env / "nobody--slow").exists()  # kept for resuming


def test_a_failed_download_reports_the_hub_error(monkeypatch: pytest.MonkeyPatch, env: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "_DOWNLOAD", "import json; print(json.dumps({'error': 'RepositoryNotFoundError: 404'}))")
    with pytest.raises(ModelUnavailableError, match=r"Hugging Face: failed \(RepositoryNotFoundError: 404\)\. Put"):
        hub.resolve_model("nobody/missing", source="huggingface", timeout_s=30)


def test_hub_ids_and_names() -> None:
    assert hub_ids("chatglm3-6b") == ("THUDM/chatglm3-6b", "ZhipuAI/chatglm3-6b")
    assert hub_ids("text2vec-base-chinese") == ("shibing624/text2vec-base-chinese", "Jerry0/text2vec-base-chinese")
    assert hub_ids("org/x", "ms/x") == ("org/x", "ms/x") and hub_ids("org/x") == ("org/x", "org/x")
    assert cache_folder_name("THUDM/chatglm3-6b", "refs/pr/1") == "THUDM--chatglm3-6b@refs_pr_1"
    assert not is_hub_id("../x") and not is_hub_id("/abs/path") and not is_hub_id("a/..")
    assert is_hub_id("THUDM/chatglm3-6b") and is_hub_id("gpt2")
