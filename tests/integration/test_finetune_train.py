"""The recipe end to end on a tiny random GLM built at test time (CPU, one torch thread):

- a 40-step LoRA run (the CLI, configs/finetune/tiny.yaml with overrides) overfits four examples: the loss falls by
  more than 20x and the app, loading the registered adapter through its own loader, answers each training question
  with exactly its training answer (the base model does not);
- the adapter folder is what the app accepts (safetensors only, rag_adapter.json), and the app's registry refuses it
  for another base model or another chat template;
- resuming from a checkpoint reproduces the uninterrupted run's losses (LoRA dropout on, so RNG state matters);
- packing gives the same loss curve as padded batches of the same examples;
- evaluation adds BLEU/ROUGE of greedy answers and early stopping acts on them;
- merge gives the logits of adapter-on-base; infer shows base vs adapter;
- a ChatGLM3-layout checkpoint is trained on its native copy and the adapter fits the original checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune.__main__ import main
from finetune.base_model import build_tiny_base
from finetune.config import ModelSection, load_finetune_config
from finetune.train import RunResult, train
from rag.core.config import LLMConfig
from rag.core.errors import RagError
from rag.core.types import Message
from rag.llm.adapters import load_named_adapter
from rag.llm.base import GenerationConfig
from rag.models.adapters import find_adapter, list_adapters, write_metadata

pytestmark = pytest.mark.integration

TINY = "kbqa/tiny-glm"
FOUR = [
    {"instruction": "VPN 服务器地址是什么？", "output": "VPN 服务器地址是 vpn.xinghe.example。"},
    {"instruction": "访客网络网速是多少？", "output": "访客网络每台设备限速 10 Mbps。"},
    {"instruction": "邮件附件最大能发多大？", "output": "单封邮件（含附件）大小上限为 25 MB。"},
    {"instruction": "域账号密码多久要改一次？", "output": "域账号密码每 90 天必须修改一次。"},
]
OVERFIT = ["data.dev_ratio=0", "train.max_steps=40", "train.micro_batch_size=4", "train.batching=padded",
           "train.learning_rate=0.02", "train.lr_scheduler=constant", "train.warmup_ratio=0", "train.save_steps=0",
           "eval.steps=0", "train.logging_steps=1", "lora.dropout=0"]
LOSS_FACTOR = 20  # observed ~125x (9.3 -> 0.07) with these settings


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A model cache (KBQA_CACHE) holding the tiny GLM as kbqa/tiny-glm, and the four-example dataset."""
    root = tmp_path_factory.mktemp("finetune")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KBQA_CACHE", str(root / "cache"))
        build_tiny_base(ModelSection(name_or_path=TINY, build_tiny="glm", template="chatglm3"))
        (root / "four.json").write_text(json.dumps(FOUR, ensure_ascii=False), encoding="utf-8")
        yield root


def common(work: Path, name: str) -> list[str]:
    return [f"name={name}", f"data.datasets=[{work / 'four.json'}]", f"output.adapters_dir={work / 'adapters'}",
            f"train.output_dir={work / 'runs'}/{{name}}"]


def losses(run_dir: Path) -> dict[int, float]:
    history = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def app_model(work: Path, adapter: str = "", model: str = TINY) -> Any:
    from rag.llm.hf.model import HFChatModel

    return HFChatModel.load(LLMConfig(backend="hf", model=model, source="local", device="cpu", adapter=adapter,
                                      adapters_dir=str(work / "adapters"), max_new_tokens=30), network=False)


@pytest.fixture(scope="module")
def overfit(work: Path) -> Path:
    """The 40-step run, through the command line; returns the adapter folder."""
    assert main(["train", "tiny", *common(work, "overfit"), *OVERFIT, "--no-progress"]) == 0
    return work / "adapters" / "overfit"


def test_lora_run_overfits_and_the_app_reproduces_the_answers(work: Path, overfit: Path) -> None:
    curve = losses(work / "runs" / "overfit")
    assert len(curve) == 40 and curve[1] / curve[40] > LOSS_FACTOR, curve
    chat = app_model(work, adapter="overfit")  # the app's loader: registry check, then peft
    greedy = GenerationConfig(max_new_tokens=30)
    for example in FOUR:
        question = [Message("user", example["instruction"])]
        assert chat.generate(question, greedy, adapter="overfit").strip() == example["output"]
        assert chat.generate(question, greedy, adapter=None).strip() != example["output"]  # the base can't

    from finetune.data.load import Conversation
    from finetune.evaluate import generate_answers
    from rag.models.templates import get_template

    # the recipe's own eval generation (left-padded batches) gives the same answers, in any batch size
    conversations = [Conversation((Message("user", e["instruction"]), Message("assistant", e["output"])), "")
                     for e in FOUR]
    model = chat.model  # the app's PeftModel, adapter active
    chat.model.set_adapter("overfit")
    for batch_size in (1, 4):
        assert generate_answers(model, chat.tokenizer, get_template("chatglm3"), conversations, 30, batch_size) == [
            e["output"] for e in FOUR]


def test_adapter_folder_is_what_the_registry_accepts(work: Path, overfit: Path) -> None:
    files = sorted(p.name for p in overfit.iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors", "rag_adapter.json"]
    meta = json.loads((overfit / "rag_adapter.json").read_text(encoding="utf-8"))
    assert (meta["name"], meta["base_model"], meta["template"], meta["format_version"]) == (
        "overfit", TINY, "chatglm3", 1)
    assert meta["dataset"] == str(work / "four.json") and len(meta["dataset_sha256"]) == 64
    assert meta["lora"] == {"r": 8, "alpha": 32.0, "dropout": 0.0, "target_modules": sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"])}
    assert meta["training"]["max_steps"] == 40 and meta["metrics"]["train_loss"] > 0
    run = work / "runs" / "overfit"
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert report["steps"] == 40 and report["tokens_per_second"] > 0 and report["summary"]["train_tokens"] > 0
    assert not list(work.glob("adapters/.*"))  # no partial folder left behind

    (info,) = [i for i in list_adapters(work / "adapters", TINY, "chatglm3") if i.name == "overfit"]
    assert info.usable and info.reason == ""
    (other,) = [i for i in list_adapters(work / "adapters", "THUDM/chatglm3-6b", "chatglm3") if i.name == "overfit"]
    assert (other.usable, other.reason) == (False, "trained on base model kbqa/tiny-glm, but the loaded model is "
                                                   "THUDM/chatglm3-6b")
    (chatml,) = [i for i in list_adapters(work / "adapters", TINY, "chatml") if i.name == "overfit"]
    assert (chatml.usable, chatml.reason) == (False, "trained with chat template chatglm3, but the loaded model uses "
                                                     "chatml")


def test_the_app_refuses_an_adapter_whose_metadata_disagrees(work: Path, overfit: Path) -> None:
    import shutil

    chat = app_model(work)
    for name, field, value, reason in [
        ("wrong-base", "base_model", "Qwen/Qwen2-7B-Instruct", "trained on base model Qwen/Qwen2-7B-Instruct, but "
                                                               "the loaded model is kbqa/tiny-glm"),
        ("wrong-template", "template", "llama3", "trained with chat template llama3, but the loaded model uses "
                                                 "chatglm3"),
    ]:
        shutil.copytree(overfit, work / "adapters" / name)
        write_metadata(work / "adapters" / name, name=name, **{field: value})
        with pytest.raises(RagError) as caught:
            load_named_adapter(chat, work / "adapters", name)
        assert str(caught.value) == f"adapter {name!r} cannot be used: {reason}"
        shutil.rmtree(work / "adapters" / name)
    assert find_adapter(work / "adapters", "overfit").usable


def test_merge_gives_the_logits_of_adapter_on_base(work: Path, overfit: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune.merge import MERGE_RECORD, merge_adapter

    merged_dir = merge_adapter("overfit", work / "merged", work / "adapters", source="local")
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "tokenizer.json").is_file()
    assert not list(merged_dir.glob("*.bin")) and json.loads((merged_dir / MERGE_RECORD).read_text())["adapter"] == (
        "overfit")
    base_dir = work / "cache" / "kbqa--tiny-glm"
    on_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(overfit)).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    ids = torch.tensor([[5, 17, 123, 999, 42, 7, 301]])
    with torch.no_grad():
        expected, got = on_base(ids).logits, merged(ids).logits
    # float32: merged W + BA vs unmerged Wx + B(Ax) round differently (summation order differs by CPU kernel and
    # thread count). Each logit is a sum over a few hundred products through 2 layers, so compare relative to the
    # logits' scale: 1e-4 of the largest logit is ~1000 float32 ulps of slack and still 100x below what the adapter
    # changes (checked on the last line against the base model alone).
    scale = expected.abs().max().item()
    assert (expected - got).abs().max().item() <= 1e-4 * scale, ((expected - got).abs().max(), scale)
    base_only = AutoModelForCausalLM.from_pretrained(base_dir)(ids).logits
    assert (base_only - got).abs().max().item() > 1e-2 * scale


def test_infer_compares_base_and_adapter(work: Path, overfit: Path) -> None:
    from finetune.infer import compare, side_by_side

    (result,) = compare("overfit", [FOUR[0]["instruction"]], str(work / "adapters"), source="local", device="cpu",
                        max_new_tokens=30)
    assert result.adapter == FOUR[0]["output"] and result.base != result.adapter
    text = side_by_side(result, "overfit", width=120)
    assert text.startswith("▶ VPN 服务器地址是什么？\nbase") and "│ VPN 服务器地址是 vpn.xinghe.example。" in text


def test_resume_from_checkpoint_gives_the_same_losses(work: Path) -> None:
    steps = ["train.max_steps=8", "train.save_steps=4", "train.micro_batch_size=2", "train.logging_steps=1",
             "lora.dropout=0.1", "data.dev_ratio=0", "eval.steps=0", "train.batching=padded", "output.register=false"]
    full = train(load_finetune_config("tiny", [*common(work, "full"), *steps]))
    resumed_dir = work / "runs" / "resumed"
    resumed_dir.mkdir(parents=True)
    import shutil

    shutil.copytree(full.output_dir / "checkpoint-4", resumed_dir / "checkpoint-4")
    resumed = train(load_finetune_config("tiny", [*common(work, "resumed"), *steps, "train.resume=auto"]))
    a, b = losses(full.output_dir), losses(resumed.output_dir)  # b: steps 1-4 from the checkpoint, 5-8 rerun
    assert sorted(b) == [1, 2, 3, 4, 5, 6, 7, 8] and a[8] != a[4]
    for step in (5, 6, 7, 8):
        assert b[step] == pytest.approx(a[step], rel=1e-5), (step, a, b)
    facts = json.loads((resumed.output_dir / "metrics.json").read_text(encoding="utf-8"))
    assert facts["resumed_from"] == str(resumed_dir / "checkpoint-4")


def test_packing_gives_the_same_loss_curve_as_padding(work: Path) -> None:
    """All four examples in one packed row vs one padded batch of four: the same tokens every step."""
    steps = ["train.max_steps=6", "train.logging_steps=1", "lora.dropout=0", "data.dev_ratio=0", "eval.steps=0",
             "train.save_steps=0", "output.register=false", "train.lr_scheduler=constant", "train.warmup_ratio=0"]
    padded = train(load_finetune_config("tiny", [*common(work, "padded"), *steps, "train.batching=padded",
                                                 "train.micro_batch_size=4"]))
    packed = train(load_finetune_config("tiny", [*common(work, "packed"), *steps, "train.batching=packing",
                                                 "train.micro_batch_size=1"]))
    a, b = losses(padded.output_dir), losses(packed.output_dir)
    assert a[6] < a[1] / 2 and list(a) == list(b)
    assert list(b.values()) == pytest.approx(list(a.values()), rel=1e-4)


def test_eval_reports_generation_metrics_and_early_stops(work: Path) -> None:
    dev = work / "dev.jsonl"  # an answer the model never writes: ROUGE-L stays 0, so patience 2 stops at step 6
    dev.write_text(json.dumps({"instruction": "VPN 服务器地址是什么？", "output": "ZZZZ"}) + "\n", encoding="utf-8")
    result: RunResult = train(load_finetune_config("tiny", [
        *common(work, "early"), f"data.dev_datasets=[{dev}]", "train.max_steps=40", "train.micro_batch_size=4",
        "eval.steps=2", "train.save_steps=2", "eval.generate_samples=1", "eval.max_new_tokens=8",
        "eval.early_stop_patience=2", "eval.early_stop_metric=rouge-l", "output.register=false"]))
    history = json.loads((result.output_dir / "metrics.json").read_text(encoding="utf-8"))["log_history"]
    evals = [e for e in history if "eval_loss" in e]
    assert [e["step"] for e in evals] == [2, 4, 6]
    assert all(e["eval_rouge-l"] == 0.0 and "eval_bleu-4" in e and "eval_rouge-1" in e for e in evals)
    assert result.metrics["rouge-l"] == 0.0 and "eval_loss" in result.metrics
    report = json.loads((result.output_dir / "metrics.json").read_text(encoding="utf-8"))
    assert report["best_checkpoint"].endswith("checkpoint-2")  # no later evaluation improved on the first
    assert (result.output_dir / "adapter" / "adapter_model.safetensors").is_file()  # output.register=false


def test_chatglm3_checkpoint_trains_on_its_native_copy(work: Path, tmp_path: Path) -> None:
    from tests import tinymodels

    checkpoint = tinymodels.build_chatglm3_checkpoint(tmp_path)  # ChatGLM3's own layout, "THUDM/chatglm3-6b"
    run = train(load_finetune_config("tiny", [
        *common(work, "glm3"), f"model.name_or_path={checkpoint}", "model.build_tiny=", "model.template=auto",
        "train.max_steps=3", "eval.steps=0", "train.save_steps=0", "data.dev_ratio=0"]))
    assert run.adapter_dir is not None
    meta = json.loads((run.adapter_dir / "rag_adapter.json").read_text(encoding="utf-8"))
    assert (meta["base_model"], meta["template"]) == ("THUDM/chatglm3-6b", "chatglm3")  # from its config.json
    config = json.loads((run.adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    assert sorted(config["target_modules"]) == ["down_proj", "gate_up_proj", "k_proj", "o_proj", "q_proj", "v_proj"]
    chat = app_model(work, adapter="glm3", model=str(checkpoint))  # the app on the original checkpoint folder
    assert chat.adapters == ("glm3",)
    assert chat.generate([Message("user", "你好")], GenerationConfig(max_new_tokens=4), adapter="glm3") is not None


def test_tiny_config_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """configs/finetune/tiny.yaml as shipped (only its output folders moved): builds its model in an empty cache,
    trains, evaluates and registers within the 2 minutes the quick tour promises; then `eval` scores the adapter."""
    import time

    monkeypatch.setenv("KBQA_CACHE", str(tmp_path / "cache"))
    moved = [f"output.adapters_dir={tmp_path / 'adapters'}", f"train.output_dir={tmp_path / 'runs'}/{{name}}"]
    started = time.perf_counter()
    assert main(["train", "tiny", *moved, "--no-progress"]) == 0
    assert time.perf_counter() - started < 120
    out = capsys.readouterr().out
    assert f"adapter: {tmp_path / 'adapters' / 'tiny-helpdesk'}\n" in out
    (info,) = list_adapters(tmp_path / "adapters", TINY, "chatglm3")
    assert info.usable and info.metadata is not None and info.metadata.dataset == "helpdesk_alpaca,helpdesk_sharegpt"
    assert {"eval_loss", "bleu-4", "rouge-1", "rouge-2", "rouge-l", "train_loss"} <= set(info.metadata.metrics)

    predictions = tmp_path / "predictions.jsonl"
    assert main(["eval", "tiny", *moved, "--adapter", "tiny-helpdesk", "--samples", "3", "--output",
                 str(predictions)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"bleu-4", "rouge-1", "rouge-2", "rouge-l", "samples"} and metrics["samples"] == 3
    assert main(["eval", "--predictions", str(predictions)]) == 0
    rescored = json.loads(capsys.readouterr().out)
    assert {k: rescored[k] for k in ("bleu-4", "rouge-l")} == {k: metrics[k] for k in ("bleu-4", "rouge-l")}


def test_recipe_defaults_give_the_loss_curve_of_a_naive_loop(work: Path) -> None:
    """The recipe with its fast defaults (packed rows, position-restarted conversations, TRL trainer) against the
    plainest loop there is (peft + torch AdamW, one conversation per forward, gradients accumulated token-weighted)
    from the same initial LoRA weights on the same data: the same loss at every step."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.base_model import find_base_model, pick_template
    from finetune.data.load import load_splits
    from finetune.train import tokenize_all
    from finetune.trainer import make_trainer, trainer_arguments

    cfg = load_finetune_config("tiny", [*common(work, "naive-vs-recipe"), "train.max_steps=6", "train.logging_steps=1",
                                        "train.batching=packing", "train.micro_batch_size=12", "lora.dropout=0",
                                        "data.dev_ratio=0", "eval.steps=0", "train.save_steps=0",
                                        "train.lr_scheduler=constant", "train.warmup_ratio=0", "output.register=false"])
    torch.manual_seed(0)
    train_conversations, _, _ = load_splits(cfg)
    base = find_base_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(str(base.folder))
    template = pick_template(cfg.model.template, tokenizer)
    tokenizer.pad_token = tokenizer.pad_token or template.eos_token
    rows = tokenize_all(train_conversations, template, tokenizer, 128, 256).rows
    model = AutoModelForCausalLM.from_pretrained(str(base.folder), dtype=torch.float32)
    trainer = make_trainer(cfg, model, tokenizer, template, trainer_arguments(cfg, "fp32", False, work / "runs" / "nr"),
                           rows, [], [], show_progress=False)
    start = {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if "lora_" in k}
    trainer.train()
    recipe = [e["loss"] for e in trainer.state.log_history if "loss" in e]

    naive = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base.folder), dtype=torch.float32),
                           LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                                      target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM"))
    assert not naive.load_state_dict(start, strict=False).unexpected_keys
    trainable = [p for p in naive.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.learning_rate, weight_decay=0.0)
    counts = [sum(label != -100 for label in row["labels"][1:]) for row in rows]
    plain = []
    for _ in range(6):
        total = 0.0
        for row, count in zip(rows, counts, strict=True):
            loss = naive(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])).loss
            (loss * count / sum(counts)).backward()
            total += float(loss.detach()) * count
        torch.nn.utils.clip_grad_norm_(trainable, cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        plain.append(total / sum(counts))
    assert len(recipe) == 6 and plain[-1] < plain[0] * 0.8, plain
    assert recipe == pytest.approx(plain, rel=1e-4), (recipe, plain)


def test_out_of_memory_becomes_advice_not_a_traceback(work: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A CUDA out-of-memory error in training (simulated: this machine has no GPU) ends the CLI with one line
    naming the settings that lower memory: half the micro-batch with twice the accumulation, checkpointing, dropout."""
    from transformers import Trainer

    def oom(self: Any, *args: Any, **kwargs: Any) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train", oom)
    code = main(["train", "tiny", *common(work, "oom"), "train.max_steps=2", "train.micro_batch_size=8",
                 "lora.dropout=0.1", "eval.steps=0", "output.register=false", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and err.startswith("error: the GPU ran out of memory training with train.micro_batch_size=8")
    assert "train.micro_batch_size=4 train.grad_accum_steps=2 (the same batch)" in err
    assert "train.gradient_checkpointing=true" in err and "lora.dropout=0" in err and "train.resume=auto" in err
