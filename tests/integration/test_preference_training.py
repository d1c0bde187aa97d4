"""The dpo and kto stages end to end on the tiny random GLM (CPU, one torch thread):

- a DPO run through the CLI raises log p(chosen) - log p(rejected) on every training pair, measured on the adapter as
  the app serves it (its own loader and registry check) against the base; the registry lists it with its stage;
- DPO continuing an SFT adapter holds it to a frozen copy of that adapter (reference=adapter) or to the base with
  adapters disabled (reference=base); neither keeps a second base model, and the saved adapter has no copy in it;
- KTO on the page's feedback file raises the desirable answers' log-probability against the undesirable ones'.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune.__main__ import main
from finetune.base_model import build_tiny_base
from finetune.config import ModelSection, load_finetune_config
from finetune.data.formats import DatasetSpec
from finetune.data.preference import load_preferences
from finetune.preference import completion_logprob, mean_margin, tokenize_preferences
from rag.core.config import REPO_ROOT, LLMConfig
from rag.core.types import Message
from rag.llm.base import GenerationConfig
from rag.models.adapters import list_adapters
from rag.models.templates import get_template

pytestmark = pytest.mark.integration

TINY = "kbqa/tiny-glm"
PAIRS = [
    {"prompt": "VPN 服务器地址是什么？", "chosen": "VPN 服务器地址是 vpn.xinghe.example。", "rejected": "我不知道。"},
    {"prompt": "访客网络网速是多少？", "chosen": "访客网络每台设备限速 10 Mbps。", "rejected": "网速没有限制。"},
    {"prompt": "邮件附件最大能发多大？", "chosen": "单封邮件（含附件）大小上限为 25 MB。", "rejected": "附件可以无限大。"},
    {"prompt": "域账号密码多久要改一次？", "chosen": "域账号密码每 90 天必须修改一次。", "rejected": "密码不用改。"},
]
RUN = ["data.dev_ratio=0", "train.micro_batch_size=4", "train.batching=padded", "train.learning_rate=0.02",
       "train.lr_scheduler=constant", "train.warmup_ratio=0", "train.save_steps=0", "eval.steps=0",
       "train.logging_steps=1", "lora.dropout=0"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("preference")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KBQA_CACHE", str(root / "cache"))
        build_tiny_base(ModelSection(name_or_path=TINY, build_tiny="glm", template="chatglm3"))
        (root / "pairs.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PAIRS),
                                          encoding="utf-8")
        yield root


def common(work: Path, name: str) -> list[str]:
    return [f"name={name}", f"data.datasets=[{work / 'pairs.jsonl'}]", f"output.adapters_dir={work / 'adapters'}",
            f"train.output_dir={work / 'runs'}/{{name}}", *RUN]


def app_model(work: Path, adapter: str) -> Any:
    from rag.llm.hf.model import HFChatModel

    return HFChatModel.load(LLMConfig(backend="hf", model=TINY, source="local", device="cpu", adapter=adapter,
                                      adapters_dir=str(work / "adapters"), max_new_tokens=8), network=False)


def pair_rows(work: Path, tokenizer: Any) -> list[dict[str, Any]]:
    data = load_preferences([DatasetSpec("p", work / "pairs.jsonl", "auto")], "dpo")
    return tokenize_preferences(data.pairs, get_template("chatglm3"), tokenizer, 128, 256)[0]


def margins(model: Any, rows: list[dict[str, Any]]) -> list[float]:
    return [mean_margin(model, [row]) for row in rows]


def test_dpo_raises_the_chosen_margin_of_the_served_adapter(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "tiny", "stage=dpo", *common(work, "dpo"), "train.max_steps=12", "--no-progress"]) == 0
    assert "data (dpo): pairs 4, bad_records 0, skipped: prompt over data.max_input_tokens 0" in capsys.readouterr().out

    chat = app_model(work, "dpo")  # the app's loader: registry check, then peft
    rows = pair_rows(work, chat.tokenizer)
    with chat.model.disable_adapter():
        before = margins(chat.model, rows)
    chat.model.set_adapter("dpo")
    after = margins(chat.model, rows)
    assert all(a > b + 1.0 for a, b in zip(after, before, strict=True)), (before, after)  # observed ~ +10 nats
    answer = chat.generate([Message("user", PAIRS[0]["prompt"])], GenerationConfig(max_new_tokens=8), adapter="dpo")
    assert isinstance(answer, str) and chat.info().adapters == ("dpo",)  # served by the app

    (info,) = [i for i in list_adapters(work / "adapters", TINY, "chatglm3") if i.name == "dpo"]
    assert info.usable and info.metadata is not None
    assert (info.metadata.stage, info.metadata.reference_adapter, info.metadata.base_quantization) == ("dpo", "", "")
    history = json.loads((work / "runs" / "dpo" / "metrics.json").read_text(encoding="utf-8"))["log_history"]
    logged = [e["rewards/margins"] for e in history if "rewards/margins" in e]
    assert logged[0] == 0.0 and logged[-1] > 1.0  # TRL's own view agrees: the margin over the reference grew


def test_dpo_continues_an_sft_adapter_against_itself_or_the_base(work: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.base_model import find_base_model
    from finetune.preference import REFERENCE_ADAPTER, make_preference_trainer, preference_arguments, start_model

    sft_data = work / "sft.json"
    sft_data.write_text(json.dumps([{"instruction": p["prompt"], "output": p["rejected"]} for p in PAIRS],
                                   ensure_ascii=False), encoding="utf-8")
    assert main(["train", "tiny", *common(work, "sft"), f"data.datasets=[{sft_data}]", "train.max_steps=10",
                 "--no-progress"]) == 0  # an SFT adapter that prefers the rejected answers
    assert main(["train", "tiny", "stage=dpo", *common(work, "dpo-on-sft"), "preference.start_adapter=sft",
                 "train.max_steps=12", "--no-progress"]) == 0
    folder = work / "adapters" / "dpo-on-sft"
    meta = json.loads((folder / "rag_adapter.json").read_text(encoding="utf-8"))
    assert (meta["stage"], meta["reference_adapter"]) == ("dpo", str(work / "adapters" / "sft"))
    assert not (folder / REFERENCE_ADAPTER).exists()  # the frozen copy is not saved with it

    chat = app_model(work, "sft")
    chat.load_adapter("dpo-on-sft", folder)
    rows = pair_rows(work, chat.tokenizer)
    chat.model.set_adapter("sft")
    start = margins(chat.model, rows)
    chat.model.set_adapter("dpo-on-sft")
    after = margins(chat.model, rows)
    assert all(a > s + 1.0 for a, s in zip(after, start, strict=True)), (start, after)

    # the two references, without training: a LoRA-sized copy of the start adapter, or the base (adapters off)
    for reference, has_copy in (("adapter", True), ("base", False)):
        cfg = load_finetune_config("tiny", ["stage=dpo", *common(work, f"ref-{reference}"),
                                            "preference.start_adapter=sft", f"preference.reference={reference}"])
        base = find_base_model(cfg.model)
        tokenizer = AutoTokenizer.from_pretrained(str(base.folder))
        model, recorded = start_model(cfg, AutoModelForCausalLM.from_pretrained(str(base.folder)), TINY, "chatglm3")
        assert recorded == (str(work / "adapters" / "sft") if has_copy else "base")
        trainer = make_preference_trainer(cfg, model, tokenizer, preference_arguments(cfg, "fp32", False, work / "r"),
                                          rows, [], show_progress=False)
        assert trainer.ref_model is None  # never a second base model
        assert (REFERENCE_ADAPTER in trainer.model.peft_config) is has_copy
        assert trainer.model.active_adapter == "default"


def test_kto_on_page_feedback_prefers_the_liked_answers(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feedback = REPO_ROOT / "finetune" / "samples" / "feedback_sample.jsonl"
    assert main(["train", "tiny", "stage=kto", *common(work, "kto"), f"data.datasets=[{feedback}]",
                 "data.feedback_context=none", "train.max_steps=12", "--no-progress"]) == 0
    assert "data (kto): desirable 3, undesirable 2, bad_records 0" in capsys.readouterr().out

    chat = app_model(work, "kto")
    data = load_preferences([DatasetSpec("f", feedback, "auto")], "kto", feedback_context="none")
    rows = tokenize_preferences(data.judgements, get_template("chatglm3"), chat.tokenizer, 128, 256)[0]

    def gap() -> float:  # mean log p of desirable answers minus that of undesirable ones
        scores = [(completion_logprob(chat.model, r["prompt_ids"], r["completion_ids"]), r["label"]) for r in rows]
        good = [s for s, label in scores if label]
        bad = [s for s, label in scores if not label]
        return sum(good) / len(good) - sum(bad) / len(bad)

    with chat.model.disable_adapter():
        before = gap()
    chat.model.set_adapter("kto")
    assert gap() > before + 1.0, (before, gap())
    meta = json.loads((work / "adapters" / "kto" / "rag_adapter.json").read_text(encoding="utf-8"))
    assert meta["stage"] == "kto" and meta["data_counts"]["desirable"] == 3
