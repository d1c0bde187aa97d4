"""No code from data: nothing the app reads (indexes, adapters, weights, configs, documents) can run code.

A grep over the code base keeps pickle loading, unsafe torch.load, dangerous deserialisation flags, remote code,
yaml.load and eval/exec out; and behavioural tests feed real malicious pickles to every place that could load one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from rag.models import adapters

REPO = Path(__file__).resolve().parents[2]
SCANNED = ["rag", "finetune", "bench", "scripts", "app.py", "ingest.py"]

# (pattern, what it catches). A line matching is a failure unless it is in ALLOWED below with its justification.
FORBIDDEN = [
    (re.compile(r"\bpickle\.loads?\s*\(|\bUnpickler\s*\(|\bcloudpickle\b|\bdill\b|\bjoblib\.load\b|\bmarshal\.loads?\b"
                r"|\bshelve\.open\b"), "unpickling"),
    (re.compile(r"\btorch\.load\s*\((?![^)]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
    (re.compile(r"allow_dangerous_deserialization"), "LangChain's pickle switch"),
    (re.compile(r"trust_remote_code\s*=\s*True"), "remote code switched on in code (it must come from the config)"),
    (re.compile(r"\byaml\.(?:load|load_all|full_load|unsafe_load)\s*\(|Loader\s*=\s*yaml\.(?:Full|Unsafe)?Loader\b"),
     "yaml.load without SafeLoader"),
    (re.compile(r"(?<![\w.])(?:eval|exec)\s*\("), "eval/exec"),
    (re.compile(r"allow_pickle\s*=\s*True"), "numpy pickle loading"),
]
# "path:line text fragment" -> why it is fine. Keep this list short and each reason checkable.
ALLOWED: dict[str, str] = {}


def python_files() -> list[Path]:
    files: list[Path] = []
    for entry in SCANNED:
        path = REPO / entry
        files.extend([path] if path.is_file() else sorted(path.rglob("*.py")) if path.is_dir() else [])
    return files


def test_the_scan_covers_the_code_base() -> None:
    names = {p.relative_to(REPO).as_posix() for p in python_files()}
    assert {"rag/ingest/load.py", "rag/models/adapters.py", "rag/llm/glm/convert.py", "rag/llm/glm/weights.py", "rag/llm/hf/model.py",
            "app.py", "ingest.py"} <= names
    assert len(names) >= 40


def test_no_code_from_data_patterns_in_the_code_base() -> None:
    found = []
    for path in python_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]  # comments may name the things they avoid
            for pattern, what in FORBIDDEN:
                if pattern.search(code) and f"{path.relative_to(REPO).as_posix()}:{number}" not in ALLOWED:
                    found.append(f"{path.relative_to(REPO)}:{number}: {what}: {line.strip()}")
    assert found == []


def test_the_grep_catches_what_it_should() -> None:
    """The patterns are not vacuous: each one fires on the thing it forbids, and not on its safe spelling."""
    bad = ["pickle.load(f)", "torch.load(p)", "torch.load(p, map_location='cpu')", "FAISS.load_local(p, e, "
           "allow_dangerous_deserialization=True)", "AutoModel.from_pretrained(p, trust_remote_code=True)",
           "yaml.load(text)", "yaml.load(t, Loader=yaml.Loader)", "eval(text)", "exec(code)", "np.load(p, allow_pickle=True)"]
    good = ["torch.load(p, map_location='cpu', weights_only=True)", "yaml.safe_load(text)", "model.eval()",
            "trust_remote_code=trust", "pickle.UnpicklingError"]
    assert all(any(p.search(line) for p, _ in FORBIDDEN) for line in bad)
    assert not [line for line in good if any(p.search(line) for p, _ in FORBIDDEN)]


def test_remote_code_is_only_taken_from_a_pinned_local_folder(tmp_path: Path) -> None:
    from rag.core.config import LLMConfig
    from rag.core.errors import ConfigError
    from rag.llm.hf.load import remote_code_allowed

    assert remote_code_allowed(LLMConfig(trust_remote_code=False)) is False
    with pytest.raises(ConfigError, match="allowed only for a local folder"):
        remote_code_allowed(LLMConfig(model="THUDM/chatglm3-6b", trust_remote_code=True, revision="abc"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="llm.revision set"):
        remote_code_allowed(LLMConfig(model=str(folder), trust_remote_code=True, revision=""))


# --- behaviour: real malicious pickles ----------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def malicious_bin(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"base_model.model.layer.lora_A.weight": _Payload(marker)}, path)
    return path


def test_an_adapter_with_only_pickled_weights_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "adapters" / "pickled"
    folder.mkdir(parents=True)
    (folder / adapters.PEFT_CONFIG).write_text(json.dumps({"r": 8, "target_modules": ["q_proj"]}), encoding="utf-8")
    (folder / adapters.METADATA_FILE).write_text(json.dumps({"base_model": "m", "template": "chatglm3"}))
    marker = tmp_path / "pwned"
    malicious_bin(folder / adapters.PICKLED_WEIGHTS, marker)
    info = adapters.find_adapter(tmp_path / "adapters", "pickled")
    assert not info.usable and "adapter_model.bin (a pickle)" in info.reason
    assert [i.usable for i in adapters.list_adapters(tmp_path / "adapters")] == [False]
    assert not marker.exists()


def test_chatglm3_conversion_unpickles_only_plain_tensors(tmp_path: Path) -> None:
    import torch

    chatglm3 = pytest.importorskip("rag.llm.glm.convert")
    marker = tmp_path / "pwned"
    with pytest.raises(chatglm3.ConversionError, match="refusing to unpickle"):
        chatglm3.load_tensors(malicious_bin(tmp_path / "pytorch_model.bin", marker))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2,
                                                              "target_modules": ["query_key_value"]}))
    malicious_bin(adapter / "adapter_model.bin", marker)
    with pytest.raises(chatglm3.ConversionError, match="refusing to unpickle"):
        chatglm3.convert_lora_adapter(adapter, tmp_path / "out", SimpleNamespace())  # fails at the weights
    assert not marker.exists() and not (tmp_path / "out").exists()
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.bin")  # plain tensors still load
    assert chatglm3.load_tensors(tmp_path / "plain.bin")["w"].tolist() == [1.0, 1.0]


def test_transformers_never_unpickles_code_from_a_model_folder_with_bin_weights(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "model"
    transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2).save_pretrained(folder)
    marker = tmp_path / "pwned"
    malicious_bin(folder / "pytorch_model.bin", marker)
    with pytest.raises(Exception):  # noqa: B017 (refused one way or another: what matters is the marker)
        transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    assert not marker.exists()
