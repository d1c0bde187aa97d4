"""finetune.templates: exact loss masks for a known conversation in every template, the same ids at training and at
serving (through the app's own HFChatModel.encode_messages), and the token budget (history trimming, answer cut).

Tokenizers are byte-level BPE trained at test time (finetune.tiny) with each template's special tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from finetune.templates import last_answer_start, prompt_ids, tokenize_conversation, trained_spans
from finetune.tiny import build_tokenizer, sample_texts
from rag.core.types import Message
from rag.models.templates import IGNORE_INDEX, TEMPLATES, get_template

KINDS = sorted(TEMPLATES)
CONVERSATION = (
    Message("system", "你是星河科技 IT 服务台的助手。"),
    Message("user", "VPN 服务器地址是什么？"),
    Message("assistant", "VPN 服务器地址是 vpn.xinghe.example。"),
    Message("user", "验证码多久刷新一次？"),
    Message("assistant", "动态验证码每 30 秒刷新一次。"),
)
# What each assistant turn's trained tokens decode to: its text and the token that ends the turn (rag.models.templates).
TRAINED = {
    "chatml": ["VPN 服务器地址是 vpn.xinghe.example。<|im_end|>", "动态验证码每 30 秒刷新一次。<|im_end|>"],
    "llama3": ["VPN 服务器地址是 vpn.xinghe.example。<|eot_id|>", "动态验证码每 30 秒刷新一次。<|eot_id|>"],
    "glm4": ["\nVPN 服务器地址是 vpn.xinghe.example。<|user|>", "\n动态验证码每 30 秒刷新一次。<|endoftext|>"],
    "chatglm3": ["\n VPN 服务器地址是 vpn.xinghe.example。<|user|>", "\n 动态验证码每 30 秒刷新一次。</s>"],
}
ARCH = {"chatglm3": "glm", "glm4": "glm", "chatml": "qwen2", "llama3": "llama"}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("tokenizers")
    texts = sample_texts()
    return {kind: build_tokenizer(tmp / kind, kind, texts, vocab_size=1500) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_loss_mask_is_exactly_the_assistant_turns(tokenizers: dict[str, Any], kind: str) -> None:
    tokenizer, template = tokenizers[kind], get_template(kind)
    example = tokenize_conversation(template, tokenizer, CONVERSATION, max_input_tokens=512, max_output_tokens=512)
    assert example is not None and len(example.input_ids) == len(example.labels)
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(example.labels, example.input_ids, strict=True))
    runs = [tokenizer.decode(example.input_ids[start:end]) for start, end in trained_spans(example.labels)]
    assert runs == TRAINED[kind]
    assert example.labels[-1] != IGNORE_INDEX  # the ids end at the last trained token (no dangling newline)
    assert (example.dropped_turns, example.answer_cut) == (0, False)


@pytest.mark.parametrize("kind", KINDS)
def test_training_ids_equal_the_apps_serving_ids(tokenizers: dict[str, Any], kind: str) -> None:
    """The prompt the app builds for each answer (HFChatModel.encode_messages) is the training row's prefix."""
    from transformers import AutoModelForCausalLM, GlmConfig, LlamaConfig, Qwen2Config

    from rag.llm.hf.model import HFChatModel

    tokenizer, template = tokenizers[kind], get_template(kind)
    config_class = {"glm": GlmConfig, "qwen2": Qwen2Config, "llama": LlamaConfig}[ARCH[kind]]
    model = AutoModelForCausalLM.from_config(config_class(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None))
    app = HFChatModel(model, tokenizer, model_id="tiny")
    assert app.template_name == kind  # the app detects the template the recipe trained with
    example = tokenize_conversation(template, tokenizer, CONVERSATION, 512, 512)
    assert example is not None
    starts = [start for start, _ in trained_spans(example.labels)]
    assert app.encode_messages(CONVERSATION[:2]) == example.input_ids[: starts[0]]
    assert app.encode_messages(CONVERSATION[:4]) == example.input_ids[: starts[1]]
    assert prompt_ids(template, tokenizer, CONVERSATION) == example.input_ids[: last_answer_start(example.labels)]


@pytest.mark.parametrize("kind", ["chatglm3", "chatml"])
def test_budget_trims_history_then_cuts_the_answer(tokenizers: dict[str, Any], kind: str) -> None:
    tokenizer, template = tokenizers[kind], get_template(kind)
    full = tokenize_conversation(template, tokenizer, CONVERSATION, 512, 512)
    last_only = CONVERSATION[:1] + CONVERSATION[3:]
    short = tokenize_conversation(template, tokenizer, last_only, 512, 512)
    assert full is not None and short is not None
    prompt_full, prompt_short = last_answer_start(full.labels), last_answer_start(short.labels)
    trimmed = tokenize_conversation(template, tokenizer, CONVERSATION, prompt_full - 1, 512)
    assert trimmed is not None and trimmed.dropped_turns == 1
    assert (trimmed.input_ids, trimmed.labels) == (short.input_ids, short.labels)  # the oldest exchange left out
    assert tokenize_conversation(template, tokenizer, CONVERSATION, prompt_short - 1, 512) is None

    cut = tokenize_conversation(template, tokenizer, CONVERSATION, 512, 3)
    assert cut is not None and cut.answer_cut
    start, end = trained_spans(cut.labels)[-1]
    assert end - start == 3 and len(cut.input_ids) == end
    assert cut.input_ids == full.input_ids[:end]  # the answer's first 3 tokens, without its end token


def test_every_template_is_reexported_from_rag() -> None:
    import rag.models.templates

    assert get_template is rag.models.templates.get_template and TEMPLATES is rag.models.templates.TEMPLATES


def test_tiny_tokenizer_keeps_fullwidth_punctuation(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(tmp_path, "chatglm3", ["问：年假有几天？答：五天。"], vocab_size=300)
    assert tokenizer.decode(tokenizer.encode("年假有几天？", add_special_tokens=False)) == "年假有几天？"
