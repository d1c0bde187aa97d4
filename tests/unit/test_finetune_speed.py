"""Speed options of the recipe change the speed, not the result (CPU, tiny random GLM + LoRA built here).

- ``train.compile_layers`` (finetune/regional_compile.py): the loss and every LoRA gradient of a packed micro-batch
  match eager's, and ONE compiled graph serves all layers but the first (whose input needs no gradient), so the
  compile time does not grow with depth. Compiled with ``aot_eager``: Dynamo's capture and AOT autograd's
  forward/backward split, which is where a wrong graph (a layer's weights baked in as constants, a mask dropped)
  would show, without a C++ build on every test run; inductor's own kernels are checked by the slow test here and
  by ``bench/train_speed.py`` (the first losses, compiled vs eager, on the GPU shape).
- ``train.fused_lora`` (finetune/fused_lora.py): loss and gradients equal to peft's own forward in float32, within
  bf16 rounding under bf16 autocast, and the fused path really runs (one ``addmm`` per adapted layer); layers it
  cannot fuse (dropout) keep peft's forward.
- through the recipe's trainer: the same loss curve with and without compiled layers and fused LoRA, and packed
  micro-batches padded to one shape when compiling.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

from finetune.config import FinetuneConfig, load_finetune_config
from finetune.fused_lora import fuse_lora_additions
from finetune.regional_compile import compile_decoder_layers, decoder_layers
from finetune.trainer import compiles_layers
from rag.core.errors import ConfigError

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]


def tiny_lora_glm(layers: int = 4, dropout: float = 0.0) -> Any:
    """A random GLM (partial rotary, GQA, fused gate_up like ChatGLM3) with non-zero LoRA B, so that the LoRA path
    contributes to the loss and every adapter weight gets a gradient."""
    from peft import LoraConfig, get_peft_model
    from transformers import GlmConfig, GlmForCausalLM

    torch.manual_seed(0)
    config = GlmConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, partial_rotary_factor=0.5,
                       attention_bias=True, pad_token_id=0, initializer_range=0.2, attn_implementation="sdpa")
    lora = LoraConfig(r=4, lora_alpha=16, lora_dropout=dropout, target_modules=TARGETS, init_lora_weights=False,
                      task_type="CAUSAL_LM")
    return get_peft_model(GlmForCausalLM(config), lora).train()


def packed_batch() -> dict[str, torch.Tensor]:
    """Three rows of 24 tokens, each holding two conversations (positions restart), prompts masked."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 320, (3, 24), generator=generator)
    positions = torch.cat([torch.arange(10), torch.arange(14)]).repeat(3, 1)
    labels = ids.clone()
    labels[:, :4] = -100
    labels[:, 10:13] = -100
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def loss_and_grads(model: Any, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    return float(loss.detach()), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def test_compiled_layers_give_eager_loss_and_gradients_with_one_graph_for_the_repeated_layers() -> None:
    from torch._dynamo.utils import counters

    eager_model = tiny_lora_glm()
    compiled_model = copy.deepcopy(eager_model)
    batch = packed_batch()
    torch._dynamo.reset()
    counters.clear()
    assert compile_decoder_layers(compiled_model, backend="aot_eager") == 4
    eager_loss, eager_grads = loss_and_grads(eager_model, batch)
    for _ in range(2):  # the second step reuses the graphs
        loss, grads = loss_and_grads(compiled_model, batch)
        # fp32, the same ops in the same order: equal to float rounding (a dropped mask or a stale weight is > 1e-2)
        assert loss == pytest.approx(eager_loss, rel=1e-6)
        assert set(grads) == set(eager_grads) and len(grads) == 4 * len(TARGETS) * 2
        for name, grad in grads.items():
            torch.testing.assert_close(grad, eager_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])  # layer 0, then one for layers 1-3


def test_fused_lora_gives_peft_loss_and_gradients_and_runs_one_addmm_per_adapted_layer() -> None:
    peft_model = tiny_lora_glm()
    fused_model = copy.deepcopy(peft_model)
    assert fuse_lora_additions(fused_model) == 4 * len(TARGETS)
    batch = packed_batch()
    reference_loss, reference_grads = loss_and_grads(peft_model, batch)
    with mock.patch("torch.addmm", wraps=torch.addmm) as addmm:
        loss, grads = loss_and_grads(fused_model, batch)
    assert addmm.call_count == 4 * len(TARGETS)
    assert loss == pytest.approx(reference_loss, rel=1e-6)  # float32: the same sum, rounded differently
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-4, atol=1e-6, msg=name)

    # bf16 autocast, as on a GPU: peft rounds B's product to bf16 before adding, addmm adds in float32 and rounds
    # once. Both are bf16 computations of the float32 result above; the fused one must be no further from it than
    # peft's own (measured: loss 0.0010 vs 0.0054 off, gradients 1.66 vs 1.80 off in norm 16.5; a wrong scaling or
    # a dropped update is far further)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        peft_bf16_loss, peft_bf16_grads = loss_and_grads(peft_model, batch)
        fused_bf16_loss, fused_bf16_grads = loss_and_grads(fused_model, batch)

    def distance(grads_a: dict[str, torch.Tensor], grads_b: dict[str, torch.Tensor]) -> float:
        return float(torch.cat([(grads_a[k] - grads_b[k]).flatten() for k in grads_b]).norm())

    assert abs(fused_bf16_loss - reference_loss) <= 2 * abs(peft_bf16_loss - reference_loss) + 1e-3
    assert distance(fused_bf16_grads, reference_grads) <= 1.5 * distance(peft_bf16_grads, reference_grads)

    # disabling the adapter (DPO/KTO's reference pass) goes through peft: the base model's loss
    with fused_model.disable_adapter():
        base_loss = float(fused_model(**batch, use_cache=False).loss)
    with peft_model.disable_adapter():
        assert base_loss == pytest.approx(float(peft_model(**batch, use_cache=False).loss), rel=1e-6)
    assert abs(base_loss - reference_loss) > 1e-3  # the adapter changes the loss: the comparisons above mean something


def test_fused_lora_leaves_layers_with_dropout_to_peft() -> None:
    assert fuse_lora_additions(tiny_lora_glm(dropout=0.1)) == 0


def test_fused_lora_inside_compiled_layers_gives_eager_results() -> None:
    eager_model = tiny_lora_glm()
    compiled_model = copy.deepcopy(eager_model)
    fuse_lora_additions(compiled_model)
    torch._dynamo.reset()
    compile_decoder_layers(compiled_model, backend="aot_eager")
    batch = packed_batch()
    eager_loss, eager_grads = loss_and_grads(eager_model, batch)
    loss, grads = loss_and_grads(compiled_model, batch)
    assert loss == pytest.approx(eager_loss, rel=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_inductor_compiled_layers_with_fused_lora_give_eager_results() -> None:
    """The real backend (inductor, C++ kernels on CPU): fp32 loss and gradients within float32 reassociation of
    eager's. ~90 s of compiling on the shared 2-core machine (measured: loss equal to 1e-7, gradients to 8e-6 rel)."""
    eager_model = tiny_lora_glm()
    compiled_model = copy.deepcopy(eager_model)
    fuse_lora_additions(compiled_model)
    torch._dynamo.reset()
    compile_decoder_layers(compiled_model)
    batch = packed_batch()
    eager_loss, eager_grads = loss_and_grads(eager_model, batch)
    loss, grads = loss_and_grads(compiled_model, batch)
    assert loss == pytest.approx(eager_loss, rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_model_without_declared_layers_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="set train.compile_layers=false"):
        compile_decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert len(decoder_layers(tiny_lora_glm(layers=3))) == 3


def test_compile_layers_setting() -> None:
    def cfg(*overrides: str) -> FinetuneConfig:
        return load_finetune_config("tiny", list(overrides))

    assert cfg().train.compile_layers == "auto"
    assert not compiles_layers(cfg())  # auto: no CUDA here (and the tiny config trains on CPU)
    assert compiles_layers(cfg("train.compile_layers=true"))
    assert not compiles_layers(cfg("train.compile_layers=false"))
    with pytest.raises(ConfigError, match=r"^train.compile_layers='sometimes' is not one of true, false, 'auto'$"):
        cfg("train.compile_layers=sometimes")
    with pytest.raises(ConfigError, match="choose one"):
        cfg("train.compile_layers=true", "train.compile=true")


def test_auto_compiles_layers_only_for_packed_rows_on_a_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Packed rows have one shape; padded or length-grouped batches a new width per batch, each a new compile (an H100
    ran padded SFT at 651 tokens/s compiled). Forced on for them, widths are rounded to 64 tokens."""
    from finetune.trainer import trainer_arguments

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def cfg(*overrides: str) -> FinetuneConfig:
        return load_finetune_config("tiny", ["train.device=auto", *overrides])

    assert compiles_layers(cfg("train.batching=packing"))
    for batching in ("padded", "length"):
        assert not compiles_layers(cfg(f"train.batching={batching}"))
        assert compiles_layers(cfg(f"train.batching={batching}", "train.compile_layers=true"))
    assert not compiles_layers(cfg("train.batching=packing", "stage=dpo", "train.batching=padded"))
    assert not compiles_layers(cfg("train.batching=packing", "train.gradient_checkpointing=true"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the arguments themselves stay on this CPU
    forced = cfg("train.batching=padded", "train.compile_layers=true", "train.device=cpu")
    assert trainer_arguments(forced, "fp32", False, tmp_path).pad_to_multiple_of == 64
    assert trainer_arguments(cfg("train.batching=packing", "train.device=cpu"), "fp32", False,
                             tmp_path).pad_to_multiple_of is None


def recipe_losses(tmp_path: Path, fast: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], Any]:
    """Four logged steps of the recipe's SFT trainer on six random conversations, packed; compiled with aot_eager."""
    from transformers import GlmConfig, GlmForCausalLM

    import finetune.trainer as trainer_module
    from finetune.tiny import build_tokenizer
    from finetune.trainer import make_trainer, trainer_arguments
    from rag.models.templates import get_template

    monkeypatch.setattr(trainer_module, "compile_decoder_layers",
                        lambda model: compile_decoder_layers(model, backend="aot_eager"))
    cfg = load_finetune_config("tiny", [
        "train.max_steps=4", "train.logging_steps=1", "train.micro_batch_size=4", "train.batching=packing",
        "train.save_steps=0", "eval.steps=0", "train.lr_scheduler=constant", "train.warmup_ratio=0",
        "data.max_input_tokens=24", "data.max_output_tokens=40", "lora.dropout=0", "train.learning_rate=0.01",
        f"train.compile_layers={str(fast).lower()}", f"train.fused_lora={str(fast).lower()}",
        f"train.output_dir={tmp_path / 'run'}"])
    template = get_template("chatglm3")
    tokenizer = build_tokenizer(tmp_path / "tok", "chatglm3", texts=["你好 hello world"] * 4, vocab_size=300)
    tokenizer.pad_token = template.eos_token
    torch.manual_seed(0)
    config = GlmConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, partial_rotary_factor=0.5,
                       attention_bias=True, pad_token_id=0, initializer_range=0.2, attn_implementation="sdpa")
    model = GlmForCausalLM(config)
    generator = torch.Generator().manual_seed(2)
    rows = []
    for _ in range(6):  # at most 4 packed rows: every step trains on the same micro-batch, so the loss must fall
        prompt, answer = (int(x) for x in torch.randint(4, 20, (2,), generator=generator))
        ids = torch.randint(5, 300, (prompt + answer,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    trainer = make_trainer(cfg, model, tokenizer, template, trainer_arguments(cfg, "fp32", False, tmp_path / "run"),
                           rows, [], [], show_progress=False)
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e], trainer


def test_recipe_with_compiled_layers_and_fused_lora_has_the_eager_loss_curve(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    eager, _ = recipe_losses(tmp_path / "eager", False, monkeypatch)
    counters.clear()
    compiled, trainer = recipe_losses(tmp_path / "compiled", True, monkeypatch)
    assert counters["stats"]["unique_graphs"] == 2  # four steps of one shape: layer 0's graph and the others'
    assert trainer.evaluate(trainer.train_dataset)["eval_loss"] > 0
    assert counters["stats"]["unique_graphs"] == 2  # evaluation runs eagerly: no compile for no-grad passes
    assert len(eager) == 4 and eager[-1] < eager[0], eager  # it trains
    assert compiled == pytest.approx(eager, rel=1e-5), (compiled, eager)
    assert all(layer._compiled_call_impl is not None for layer in decoder_layers(trainer.model))
    shapes = {tuple(batch["input_ids"].shape) for batch in trainer.get_train_dataloader()}
    assert {length for _, length in shapes} == {64}  # packed rows padded to the full 24 + 40 tokens: one shape
