"""Preference data (finetune.data.preference) for the dpo / kto stages: every layout becomes the exact prompt and
answers expected; feedback becomes pairs / judgements with the served RAG prompt and counted skips; the SFT loader
and the config refuse what cannot work, with the fix in the message; QLoRA on CPU is refused with one line; the
registry notes a quantisation mismatch. No model here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune.base_model import quantization_settings
from finetune.config import load_finetune_config
from finetune.data.formats import DatasetSpec, feedback_turns, resolve_dataset
from finetune.data.load import DataError, load_splits
from finetune.data.preference import Judgement, PreferencePair, check_preferences, load_preferences
from rag.core.config import REPO_ROOT
from rag.core.errors import ConfigError
from rag.core.types import Message
from rag.models.adapters import find_adapter, quantization_note, write_metadata

FEEDBACK = REPO_ROOT / "finetune" / "samples" / "feedback_sample.jsonl"
USER = (Message("user", "Q?"),)


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_llama_factory_ranking_entries_and_plain_pairs(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "Q", "input": "ctx", "output": ["good", "bad"], "system": "S"}])
    write_jsonl(tmp_path / "alpaca_cols.jsonl", [{"instruction": "Q", "chosen": "good", "rejected": "bad"}])
    write_jsonl(tmp_path / "sharegpt.jsonl", [{
        "conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
                          {"from": "human", "value": "Q2"}],
        "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}])
    write_jsonl(tmp_path / "trl.jsonl", [
        {"prompt": "Q", "chosen": "good", "rejected": "bad"},
        {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
         "chosen": [{"role": "assistant", "content": "good"}], "rejected": [{"role": "assistant", "content": "bad"}]},
        {"prompt": "Q", "chosen": "", "rejected": "bad"}])
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "a": {"file_name": "alpaca.jsonl", "ranking": True,
              "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}},
        "ac": {"file_name": "alpaca_cols.jsonl", "ranking": True,
               "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}},
        "s": {"file_name": "sharegpt.jsonl", "formatting": "sharegpt", "ranking": True,
              "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
    }), encoding="utf-8")
    specs = [resolve_dataset(name, tmp_path) for name in ("a", "ac", "s", "trl.jsonl")]
    data = load_preferences(specs, "dpo")
    system_q = (Message("system", "S"), Message("user", "Q"))
    assert [(p.prompt, p.chosen, p.rejected) for p in data.pairs] == [
        ((Message("system", "S"), Message("user", "Q\nctx")), "good", "bad"),
        ((Message("user", "Q"),), "good", "bad"),
        ((Message("user", "Q1"), Message("assistant", "A1"), Message("user", "Q2")), "good", "bad"),
        ((Message("user", "Q"),), "good", "bad"),
        (system_q, "good", "bad"),
    ]
    assert [str(b) for b in data.bad] == [
        f"{tmp_path / 'trl.jsonl'}:3: 'chosen' must be a non-empty string (or an assistant turn)"]
    with pytest.raises(DataError, match=r"1 bad record\(s\); fix them or set data.on_bad_record=skip"):
        check_preferences(data, "dpo")

    # kto unpairs every pair: chosen desirable, rejected undesirable
    kto = load_preferences([specs[1]], "kto")
    assert [(j.completion, j.desirable) for j in kto.judgements] == [("good", True), ("bad", False)]


def test_kto_unpaired_records_and_kto_tag(tmp_path: Path) -> None:
    plain = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "Q?", "completion": "yes", "label": True},
                                                  {"prompt": "Q?", "completion": "no", "label": False},
                                                  {"prompt": "Q?", "completion": "hm", "label": "yes"}])
    write_jsonl(tmp_path / "tagged.jsonl", [{"instruction": "Q?", "output": "ok", "tag": False}])
    (tmp_path / "dataset_info.json").write_text(json.dumps({"t": {"file_name": "tagged.jsonl", "columns": {
        "prompt": "instruction", "response": "output", "kto_tag": "tag"}}}), encoding="utf-8")
    data = load_preferences([DatasetSpec("k", plain, "auto"), resolve_dataset("t", tmp_path)], "kto")
    assert data.judgements == [Judgement(USER, "yes", True, f"{plain}:1"), Judgement(USER, "no", False, f"{plain}:2"),
                               Judgement(USER, "ok", False, f"{tmp_path / 'tagged.jsonl'}:1")]
    assert [b.reason for b in data.bad] == ["'label' must be true or false, got 'yes'"]
    with pytest.raises(ConfigError) as caught:
        load_preferences([DatasetSpec("k", plain, "auto")], "dpo")
    assert str(caught.value) == (f"{plain} holds unpaired (kto) examples; stage=dpo needs chosen/rejected pairs: "
                                 "use stage=kto")


def test_feedback_gives_dpo_pairs_and_kto_judgements_with_the_served_prompt() -> None:
    spec = DatasetSpec("fb", FEEDBACK, "auto")
    records = [json.loads(line) for line in FEEDBACK.read_text(encoding="utf-8").splitlines()]
    served = [feedback_turns(dict(r, rating="up", answer=r["answer"]), "quotes") for r in records]

    dpo = load_preferences([spec], "dpo")
    (pair,) = dpo.pairs  # the one 👎 with a correction
    assert pair.chosen == records[1]["correction"] and pair.rejected == "访客网络的密码每月更新一次 [1]。"
    assert [(m.role, m.content) for m in pair.prompt] == served[1][:-1]  # the app's prompt with the quoted passage
    assert "【1】" in pair.prompt[-1].content or "[1]" in pair.prompt[-1].content
    assert dpo.counts() == {"pairs": 1, "bad_records": 0, "skipped: thumbs-up (dpo needs a rejected answer)": 2,
                            "skipped: thumbs-down without a correction (dpo needs a chosen answer)": 1}

    kto = load_preferences([spec], "kto")
    assert [(j.completion, j.desirable) for j in kto.judgements] == [
        ("错误 691 说明用户名或密码不正确，或者账号已被锁定 [1]。", True),
        ("访客网络的密码每月更新一次 [1]。", False), (records[1]["correction"], True),
        ("普通员工的邮箱容量为 50 GB [1]，部门经理及以上为 100 GB [1]。", True),  # [2] renumbered to its passage [1]
        ("请联系 IT。", False)]
    assert kto.counts() == {"desirable": 3, "undesirable": 2, "bad_records": 0}
    assert [(m.role, m.content) for m in kto.judgements[0].prompt] == served[0][:-1]
    none = load_preferences([spec], "kto", feedback_context="none")
    assert none.judgements[0].prompt == (Message("user", records[0]["question"]),)
    assert none.judgements[0].completion == "错误 691 说明用户名或密码不正确，或者账号已被锁定。"


def test_kto_needs_both_kinds_and_dpo_needs_pairs(tmp_path: Path) -> None:
    only_up = write_jsonl(tmp_path / "up.jsonl", [{"prompt": "Q?", "completion": "yes", "label": True}])
    with pytest.raises(ConfigError) as caught:
        check_preferences(load_preferences([DatasetSpec("u", only_up, "auto")], "kto"), "kto")
    assert str(caught.value) == ("stage=kto needs both desirable and undesirable examples; all 1 are desirable "
                                 "(add 👍 and 👎 feedback, or pairs)")
    ups = write_jsonl(tmp_path / "fb.jsonl", [{"question": "Q?", "answer": "A", "rating": "up"}])
    with pytest.raises(ConfigError, match=r"^the datasets hold no chosen/rejected pairs for stage=dpo$"):
        check_preferences(load_preferences([DatasetSpec("f", ups, "auto")], "dpo"), "dpo")
    assert load_preferences([DatasetSpec("f", ups, "auto")], "dpo").pairs == []
    assert PreferencePair(USER, "a", "b", "x").prompt == USER


def test_sft_refuses_ranking_data_and_config_checks(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Q", "output": ["a", "b"]}])
    (tmp_path / "dataset_info.json").write_text(json.dumps({"prefs": {"file_name": "p.jsonl", "ranking": True}}),
                                                encoding="utf-8")
    cfg = load_finetune_config("tiny", ["data.datasets=[prefs]", f"data.dataset_dir={tmp_path}"])
    with pytest.raises(ConfigError) as caught:
        load_splits(cfg)
    assert str(caught.value) == ("dataset 'prefs' is preference data (ranking / kto_tag); train it with stage=dpo "
                                 "or stage=kto")
    with pytest.raises(ConfigError, match=r"^stage='ppo' is not one of 'sft', 'dpo', 'kto'$"):
        load_finetune_config("tiny", ["stage=ppo"])
    with pytest.raises(ConfigError, match=r"^stage=dpo compares whole sequences, padded in random batches; "
                                          r"train.batching=packing is for sft: set train.batching=padded$"):
        load_finetune_config("tiny", ["stage=dpo", "train.batching=packing"])
    with pytest.raises(ConfigError, match=r"^stage=kto estimates its KL term from the other answers of a micro-batch; "
                                          r"set train.micro_batch_size=2 or more$"):
        load_finetune_config("tiny", ["stage=kto", "train.batching=padded", "train.micro_batch_size=1"])
    with pytest.raises(ConfigError, match=r"^stage=dpo has no generation metrics; use eval.early_stop_metric=loss$"):
        load_finetune_config("tiny", ["stage=dpo", "train.batching=padded", "eval.early_stop_metric=rouge-l"])
    with pytest.raises(ConfigError, match=r"^model.quantization='3bit' is not one of '', '4bit', '8bit'$"):
        load_finetune_config("tiny", ["model.quantization=3bit"])


def test_qlora_on_cpu_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        quantization_settings("4bit", "fp32", use_cpu=True)
    assert str(caught.value) == ("model.quantization=4bit (QLoRA) needs a CUDA GPU: bitsandbytes' k-bit training "
                                 "kernels do not run on CPU; set model.quantization= (empty) to train the "
                                 "unquantised base")
    assert quantization_settings("", "fp32", use_cpu=True) is None


def test_registry_records_stage_and_notes_a_quantisation_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "qlora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["q_proj"]}), encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    write_metadata(folder, base_model="THUDM/chatglm3-6b", template="chatglm3", stage="dpo",
                   reference_adapter="adapters/sft", base_quantization="4bit")
    info = find_adapter(tmp_path, "qlora")
    assert info.usable and info.metadata is not None
    assert (info.metadata.stage, info.metadata.reference_adapter, info.metadata.base_quantization) == (
        "dpo", "adapters/sft", "4bit")
    assert quantization_note(info, "4bit") == quantization_note(info, "nf4") == ""  # nf4 is 4bit by its name
    assert quantization_note(info, "") == (
        "adapter qlora was trained on the 4bit quantised base but is served on the unquantised one; answers may "
        "differ slightly from its evaluation (set llm.quantization=4bit to match)")
