"""rag.models.adapters: the registry's verdicts (exact reasons shown in the UI), metadata writing, base-model identity,
finetune_demo conversion caching, and loading onto a model. No torch here: adapter weights are small safetensors
files written with numpy, and the model is a stand-in that records what it was asked to load."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from rag.core.errors import ConfigError, RagError
from rag.llm.adapters import load_named_adapter, load_usable_adapters, prepare_adapter
from rag.llm.base import ModelInfo
from rag.models import adapters
from rag.models.adapters import AdapterInfo, check_adapter, find_adapter, list_adapters, write_metadata
from rag.models.ids import canonical_model_id

PEFT_CONFIG = {"peft_type": "LORA", "r": 8, "lora_alpha": 32, "lora_dropout": 0.1,
               "target_modules": ["v_proj", "q_proj"], "base_model_name_or_path": "THUDM/chatglm3-6b"}


def make_adapter(root: Path, name: str, *, meta: dict[str, Any] | None = None, weights: str = "safetensors",
                 peft: dict[str, Any] | None = None) -> Path:
    """An adapter folder: adapter_config.json, weights (safetensors / bin / none) and, when given, rag_adapter.json."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(peft or PEFT_CONFIG), encoding="utf-8")
    if weights == "safetensors":
        save_file({"lora_A": np.ones((2, 4), np.float32)}, str(folder / "adapter_model.safetensors"))
    elif weights == "bin":
        (folder / "adapter_model.bin").write_bytes(b"\x80\x04not-unpickled")
    if meta is not None:
        write_metadata(folder, **meta)
    return folder


CHATGLM3 = {"base_model": "THUDM/chatglm3-6b", "template": "chatglm3"}


@pytest.fixture(autouse=True)
def no_cache_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KBQA_CACHE", raising=False)  # $KBQA_CACHE would win over the cache_dir these tests pass


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    make_adapter(root, "law-qa", meta={**CHATGLM3, "dataset": "law.jsonl", "metrics": {"rouge-l": 0.41}})
    make_adapter(root, "qwen-chat", meta={"base_model": "Qwen/Qwen2-7B-Instruct", "template": "chatml"})
    make_adapter(root, "chatml-on-glm", meta={"base_model": "ZhipuAI/chatglm3-6b", "template": "chatml"})
    make_adapter(root, "pickled", meta=CHATGLM3, weights="bin")
    make_adapter(root, "no-weights", meta=CHATGLM3, weights="none")
    make_adapter(root, "no-meta")
    make_adapter(root, "finetune-demo", peft={**PEFT_CONFIG, "target_modules": ["query_key_value"]})
    future = make_adapter(root, "future", meta=CHATGLM3)
    data = json.loads((future / "rag_adapter.json").read_text(encoding="utf-8"))
    (future / "rag_adapter.json").write_text(json.dumps({**data, "format_version": 9}), encoding="utf-8")
    evil = make_adapter(root, "renamed", meta=CHATGLM3)
    data = json.loads((evil / "rag_adapter.json").read_text(encoding="utf-8"))
    (evil / "rag_adapter.json").write_text(json.dumps({**data, "name": "../../etc"}), encoding="utf-8")
    make_adapter(tmp_path, "outside", meta=CHATGLM3)
    (root / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    make_adapter(root, "-dash", meta={**CHATGLM3, "name": "dash"})  # the folder name is what counts
    (root / "broken-json").mkdir()
    (root / "broken-json" / "adapter_config.json").write_text("{", encoding="utf-8")
    (root / ".hidden").mkdir()  # skipped
    return root


def verdicts(infos: list[AdapterInfo]) -> dict[str, tuple[bool, str]]:
    return {i.name: (i.usable, i.reason) for i in infos}


def test_registry_verdicts_against_a_base_model(registry: Path) -> None:
    got = verdicts(list_adapters(registry, base_model_id="ZhipuAI/chatglm3-6b", template="chatglm3"))
    assert got == {
        "-dash": (False, "adapter name '-dash' is not a safe folder name (letters, digits, CJK, '-', '_' and '.' only)"),
        "broken-json": (False, "adapter_config.json is not valid JSON (Expecting property name enclosed in double "
                               "quotes: line 1 column 2 (char 1))"),
        "chatml-on-glm": (False, "trained with chat template chatml, but the loaded model uses chatglm3"),
        "escape": (False, f"adapter folder escape resolves outside {registry}"),
        "finetune-demo": (True, ""),
        "future": (False, "rag_adapter.json format_version 9 is newer than this app reads (1); update the app"),
        "law-qa": (True, ""),
        "no-meta": (False, "rag_adapter.json is missing (finetune writes it; rag.models.adapters.write_metadata adds one)"),
        "no-weights": (False, "adapter_model.safetensors is missing"),
        "pickled": (False, "only adapter_model.bin (a pickle) is present; adapters are loaded from "
                           "adapter_model.safetensors only: re-save it with safe_serialization=True"),
        "qwen-chat": (False, "trained on base model Qwen/Qwen2-7B-Instruct, but the loaded model is ZhipuAI/chatglm3-6b"),
        "renamed": (False, "adapter name '../../etc' is not a safe folder name (letters, digits, CJK, '-', '_' and "
                           "'.' only)"),
    }


def test_metadata_is_read_back(registry: Path) -> None:
    (info,) = [i for i in list_adapters(registry) if i.name == "law-qa"]
    meta = info.metadata
    assert meta is not None and not meta.inferred and not info.fused_qkv
    assert (meta.name, meta.base_model, meta.template, meta.dataset) == ("law-qa", "THUDM/chatglm3-6b", "chatglm3",
                                                                         "law.jsonl")
    assert meta.metrics == {"rouge-l": 0.41} and meta.format_version == 1 and meta.created.endswith("Z")
    assert (meta.lora.r, meta.lora.alpha, meta.lora.dropout, meta.lora.target_modules) == (8, 32.0, 0.1,
                                                                                          ("q_proj", "v_proj"))


def test_finetune_demo_adapter_gets_inferred_chatglm3_metadata(registry: Path) -> None:
    info = find_adapter(registry, "finetune-demo")
    assert info.usable and info.fused_qkv and info.metadata is not None and info.metadata.inferred
    assert (info.metadata.base_model, info.metadata.template) == ("THUDM/chatglm3-6b", "chatglm3")
    assert check_adapter(info, "Qwen/Qwen2-7B-Instruct", "chatml") == (
        False, "trained on base model THUDM/chatglm3-6b, but the loaded model is Qwen/Qwen2-7B-Instruct")


def test_without_a_base_model_only_structure_is_checked(registry: Path) -> None:
    got = verdicts(list_adapters(registry))
    assert got["qwen-chat"] == (True, "") and got["chatml-on-glm"] == (True, "") and got["pickled"][0] is False
    base_only = verdicts(list_adapters(registry, base_model_id="THUDM/chatglm3-6b"))  # template unknown: not checked
    assert base_only["chatml-on-glm"] == (True, "") and base_only["qwen-chat"][0] is False
    assert list_adapters(registry.parent / "nowhere") == []


@pytest.mark.parametrize("name", ["../outside", "..", "a/b", "/etc", ""])
def test_names_that_leave_the_folder_are_refused(registry: Path, name: str) -> None:
    info = find_adapter(registry, name)
    assert not info.usable
    assert info.reason == (f"adapter name {name!r} is not a safe folder name (letters, digits, CJK, '-', '_' and "
                           "'.' only)")


def test_find_adapter(registry: Path) -> None:
    assert find_adapter(registry, "law-qa").usable
    assert find_adapter(registry, "法律问答").reason == f"no adapter folder '法律问答' in {registry}"
    assert find_adapter(registry, "escape").reason == f"adapter folder escape resolves outside {registry}"


def test_revision_mismatch_is_refused(tmp_path: Path) -> None:
    make_adapter(tmp_path, "pinned", meta={**CHATGLM3, "base_revision": "v1.0"})
    info = find_adapter(tmp_path, "pinned")
    assert check_adapter(info, "THUDM/chatglm3-6b", "chatglm3", "v1.0") == (True, "")
    assert check_adapter(info, "THUDM/chatglm3-6b", "chatglm3", "") == (True, "")  # base revision unknown
    assert check_adapter(info, "THUDM/chatglm3-6b", "chatglm3", "v2.0") == (
        False, "trained on THUDM/chatglm3-6b revision v1.0, but the loaded model is revision v2.0")


def test_base_model_identity_across_hubs_and_folders(tmp_path: Path) -> None:
    assert canonical_model_id("THUDM/chatglm3-6b") == canonical_model_id("zhipuai/ChatGLM3-6B") == "chatglm3-6b"
    assert canonical_model_id("THUDM/chatglm3-6b-32k") == "chatglm3-6b-32k" != canonical_model_id("THUDM/chatglm3-6b")
    folder = tmp_path / "my-glm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "THUDM/chatglm3-6b", "model_type": "chatglm"}))
    assert canonical_model_id(str(folder)) == "chatglm3-6b"
    snapshot = tmp_path / "hub" / "models--ZhipuAI--chatglm3-6b" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert canonical_model_id(str(snapshot)) == "chatglm3-6b"
    plain = tmp_path / "unnamed"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert canonical_model_id(str(plain)) == str(plain.resolve()).lower()
    assert canonical_model_id("Qwen/Qwen2-7B-Instruct") == "qwen/qwen2-7b-instruct"
    make_adapter(tmp_path / "ad", "x", meta=CHATGLM3)
    assert check_adapter(find_adapter(tmp_path / "ad", "x"), str(folder), "chatglm3") == (True, "")


def test_write_metadata_defaults_merge_and_errors(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path, "新闻摘要")
    path = write_metadata(folder, base_model="THUDM/chatglm3-6b", template="chatglm3", dataset="news.jsonl")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["name"] == "新闻摘要" and data["format_version"] == 1 and data["metrics"] == {}
    assert data["lora"] == {"r": 8, "alpha": 32.0, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    write_metadata(folder, metrics={"bleu-4": 12})  # after evaluation: the rest is kept
    data2 = json.loads(path.read_text(encoding="utf-8"))
    assert data2 == {**data, "metrics": {"bleu-4": 12.0}}
    with pytest.raises(ConfigError, match=r"^unknown rag_adapter.json field\(s\) basemodel; valid: name, base_model,"):
        write_metadata(folder, basemodel="x")
    with pytest.raises(ConfigError, match=r"^rag_adapter.json needs template, e.g. write_metadata\(folder, template=\.\.\.\)$"):
        write_metadata(tmp_path / "fresh", base_model="THUDM/chatglm3-6b")
    with pytest.raises(ConfigError, match=r"^adapter name '\.\./x' is not a safe folder name"):
        write_metadata(folder, name="../x")


# --- conversion and loading --------------------------------------------------------------------------------------


@pytest.fixture
def fake_chatglm3(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path, Any]]:
    """Stands in for rag.llm.glm.convert.convert_lora_adapter: copies the files and records each call."""
    calls: list[tuple[Path, Path, Any]] = []

    def convert_lora_adapter(src: Path, dst: Path, base_cfg: Any) -> None:
        calls.append((Path(src), Path(dst), base_cfg))
        Path(dst).mkdir(parents=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            (Path(dst) / name).write_bytes((Path(src) / name).read_bytes())

    from rag.llm import glm

    module = types.ModuleType("rag.llm.glm.convert")
    module.convert_lora_adapter = convert_lora_adapter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rag.llm.glm.convert", module)
    monkeypatch.setattr(glm, "convert", module, raising=False)  # `from rag.llm.glm import convert` reads the attribute
    return calls


def test_finetune_demo_adapter_is_converted_once_and_cached(registry: Path, tmp_path: Path,
                                                            fake_chatglm3: list[tuple[Path, Path, Any]]) -> None:
    info = find_adapter(registry, "finetune-demo")
    cache = str(tmp_path / "cache")
    first = prepare_adapter(info, cache, base_config="glm-config")
    assert first.parent == tmp_path / "cache" / "adapters-native" and first.name.startswith("finetune-demo-")
    assert (first / "adapter_model.safetensors").is_file()
    assert prepare_adapter(info, cache, base_config="glm-config") == first
    assert len(fake_chatglm3) == 1 and fake_chatglm3[0][0] == registry / "finetune-demo"
    assert fake_chatglm3[0][2] == "glm-config"
    peft = json.loads((info.path / "adapter_config.json").read_text())
    (info.path / "adapter_config.json").write_text(json.dumps({**peft, "r": 16}))  # retrained: converted again
    assert prepare_adapter(info, cache, base_config="glm-config") != first and len(fake_chatglm3) == 2
    assert prepare_adapter(find_adapter(registry, "law-qa"), cache, None) == registry / "law-qa"  # native: as is


class FakeModel:
    """An AdapterHost that records loads; ``fail`` names adapters whose load raises."""

    def __init__(self, model_id: str = "ZhipuAI/chatglm3-6b", template: str = "chatglm3", fail: str = "") -> None:
        self.model_id, self.template, self.fail = model_id, template, fail
        self.loaded: dict[str, Path] = {}

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(self.loaded)

    @property
    def base_config(self) -> Any:
        return "glm-config"

    def info(self) -> ModelInfo:
        return ModelInfo("hf", self.model_id, template=self.template, adapters=self.adapters)

    def load_adapter(self, name: str, path: Path) -> None:
        if name == self.fail:
            raise RuntimeError("size mismatch for lora_A")
        self.loaded[name] = path


def test_load_named_adapter_checks_first(registry: Path, tmp_path: Path) -> None:
    model = FakeModel()
    info = load_named_adapter(model, registry, "law-qa", cache_dir=str(tmp_path / "cache"))
    assert info.usable and model.loaded == {"law-qa": registry / "law-qa"}
    load_named_adapter(model, registry, "law-qa")  # already loaded: nothing happens
    with pytest.raises(RagError, match=r"^adapter 'qwen-chat' cannot be used: trained on base model "
                                       r"Qwen/Qwen2-7B-Instruct, but the loaded model is ZhipuAI/chatglm3-6b$"):
        load_named_adapter(model, registry, "qwen-chat")
    with pytest.raises(RagError, match=r"^adapter '\.\./x' cannot be used: adapter name '\.\./x' is not a safe"):
        load_named_adapter(model, registry, "../x")
    assert list(model.loaded) == ["law-qa"]


def test_load_usable_adapters_loads_all_that_fit_and_reports_the_rest(registry: Path, tmp_path: Path,
                                                                      fake_chatglm3: list[Any]) -> None:
    model = FakeModel(fail="law-qa")
    infos = verdicts(load_usable_adapters(model, registry, cache_dir=str(tmp_path / "cache")))
    assert list(model.loaded) == ["finetune-demo"]
    assert model.loaded["finetune-demo"].parent == tmp_path / "cache" / "adapters-native"  # the converted copy
    assert infos["law-qa"] == (False, "failed to load: size mismatch for lora_A")
    assert infos["chatml-on-glm"] == (False, "trained with chat template chatml, but the loaded model uses chatglm3")
    assert infos["pickled"][0] is False and len(infos) == 12


def test_metadata_field_names_match_the_documented_format() -> None:
    assert adapters._WRITABLE == ["name", "base_model", "template", "base_revision", "dataset", "metrics", "created",
                                  "lora", "format_version", "stage", "reference_adapter", "base_quantization"]
