"""configs/finetune: every YAML loads and validates; chatglm3_lora.yaml is the seed's recipe; bad keys and values
fail with the key, the value and the fix; the command line turns them into one line and exit code 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.__main__ import main
from finetune.config import CONFIG_DIR, SEED_TARGETS, load_finetune_config
from rag.core.errors import ConfigError

CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_there_are_configs() -> None:
    assert {p.stem for p in CONFIGS} >= {"chatglm3_lora", "tiny", "qwen2_lora", "glm4_lora"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_finetune_yaml_loads(path: Path) -> None:
    cfg = load_finetune_config(path)
    assert cfg.name and cfg.lora.target_modules and cfg.data.datasets
    assert load_finetune_config(path.stem) == cfg  # a bare name finds configs/finetune/<name>.yaml


def test_names_are_unique() -> None:
    names = [load_finetune_config(p).name for p in CONFIGS]
    assert len(names) == len(set(names))


def test_chatglm3_lora_is_the_seed_recipe() -> None:
    cfg = load_finetune_config(CONFIG_DIR / "chatglm3_lora.yaml")
    assert (cfg.model.name_or_path, cfg.model.template) == ("THUDM/chatglm3-6b", "chatglm3")
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (8, 32, 0.1, SEED_TARGETS)
    assert (cfg.data.max_input_tokens, cfg.data.max_output_tokens) == (128, 256)
    assert (cfg.train.max_steps, cfg.train.micro_batch_size, cfg.train.grad_accum_steps) == (3000, 1, 1)
    assert (cfg.train.learning_rate, cfg.train.save_steps, cfg.eval.steps) == (5e-5, 500, 500)
    assert (cfg.eval.generate_samples, cfg.eval.max_new_tokens) == (50, 512)


def test_chatglm3_lora_fast_is_the_seed_model_with_the_recipe_defaults() -> None:
    fast = load_finetune_config(CONFIG_DIR / "chatglm3_lora_fast.yaml")
    seed = load_finetune_config(CONFIG_DIR / "chatglm3_lora.yaml")
    assert (fast.model.name_or_path, fast.lora.r, fast.lora.alpha, fast.lora.target_modules) == \
        (seed.model.name_or_path, seed.lora.r, seed.lora.alpha, seed.lora.target_modules)
    assert (fast.data.max_input_tokens, fast.data.max_output_tokens) == (128, 256)
    # the measured fast settings (docs/BENCHMARKS.md): 12 packed rows, no LoRA dropout, epochs rather than steps
    assert (fast.train.batching, fast.train.micro_batch_size, fast.lora.dropout) == ("packing", 12, 0.0)
    assert (fast.train.max_steps, fast.train.epochs, fast.train.gradient_checkpointing) == (0, 3.0, False)


def test_tiny_config_builds_its_own_model_offline() -> None:
    cfg = load_finetune_config("tiny")
    assert (cfg.model.build_tiny, cfg.model.source, cfg.train.device) == ("glm", "local", "cpu")
    assert cfg.output.register and cfg.adapter_name == "tiny-helpdesk"


def test_overrides_are_typed_and_checked() -> None:
    cfg = load_finetune_config("tiny", ["lora.r=16", "train.batching=packing", "data.datasets=[a, b]"])
    assert (cfg.lora.r, cfg.train.batching, cfg.data.datasets) == (16, "packing", ["a", "b"])
    with pytest.raises(ConfigError) as caught:
        load_finetune_config("tiny", ["lora.rank=4"])
    assert str(caught.value) == ("unknown config key lora.rank; valid keys: lora.r, lora.alpha, lora.dropout, "
                                 "lora.target_modules")
    with pytest.raises(ConfigError, match=r"^lora.r='x' must be of type int$"):
        load_finetune_config("tiny", ["lora.r=x"])


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.batching=bucket"], "train.batching='bucket' is not one of 'padded', 'length', 'packing'"),
    (["train.precision=half"], "train.precision='half' is not one of 'auto', 'bf16', 'fp16', 'fp32'"),
    (["data.datasets=[]"], "data.datasets is empty; name a dataset of dataset_info.json or a file, "
                           "e.g. data.datasets=[helpdesk_alpaca]"),
    (["data.dev_ratio=1.5"], "data.dev_ratio=1.5 must be in [0, 1), e.g. 0.05"),
    (["output.adapter_name=../x"], "adapter name '../x' (name / output.adapter_name) must be a safe folder name: "
                                   "letters, digits, CJK, '-', '_' and '.', starting with a letter or digit"),
    (["eval.early_stop_patience=2", "eval.steps=20", "train.save_steps=30"],
     "early stopping keeps the best checkpoint, so train.save_steps=30 must be a positive multiple of eval.steps=20"),
    (["eval.early_stop_patience=2", "eval.early_stop_metric=rouge-l", "eval.generate_samples=0", "eval.steps=20",
      "train.save_steps=40"],
     "eval.early_stop_metric=rouge-l is a generation metric; set eval.generate_samples > 0 or use "
     "eval.early_stop_metric=loss"),
])
def test_bad_combinations_say_the_fix(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_finetune_config("tiny", overrides)
    assert str(caught.value) == message


def test_cli_prints_one_line_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "tiny", "lora.rank=4"]) == 1
    err = capsys.readouterr().err
    assert err == ("error: unknown config key lora.rank; valid keys: lora.r, lora.alpha, lora.dropout, "
                   "lora.target_modules\n")
    assert main(["train", "configs/finetune/missing.yaml"]) == 1
    names = ", ".join(p.stem for p in CONFIGS)  # chatglm3_lora, glm4_lora, qwen2_lora, tiny
    assert capsys.readouterr().err == (f"error: config configs/finetune/missing.yaml not found; give a YAML file or "
                                       f"one of: {names}\n")


def test_unknown_lora_targets_list_the_model_layers(tmp_path: Path) -> None:
    import torch

    from finetune.train import check_targets

    model = torch.nn.Sequential()
    model.add_module("q_proj", torch.nn.Linear(2, 2))
    model.add_module("lm_head", torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError) as caught:
        check_targets(model, ["q_proj", "query_key_value"])
    assert str(caught.value) == ("lora.target_modules ['query_key_value'] are not linear layers of this model; it has "
                                 "['q_proj'] (or use lora.target_modules=[all-linear])")
    check_targets(model, ["all-linear"])


def test_qlora_and_preference_configs() -> None:
    qlora = load_finetune_config("chatglm3_qlora")
    assert (qlora.model.quantization, qlora.stage, qlora.train.micro_batch_size, qlora.lora.r) == ("4bit", "sft", 4, 8)
    assert qlora.train.gradient_checkpointing  # 6.2 GiB on an H100 at 4 rows; 17.5 GiB without
    assert (qlora.data.max_input_tokens, qlora.data.max_output_tokens) == (128, 256)
    dpo = load_finetune_config("chatglm3_dpo")
    assert (dpo.stage, dpo.model.quantization, dpo.preference.reference, dpo.train.batching) == (
        "dpo", "", "adapter", "padded")
    assert load_finetune_config("chatglm3_dpo", ["stage=kto"]).stage == "kto"
