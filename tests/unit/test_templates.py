"""rag.models.templates: serving and training turn a conversation into the same ids; only assistant text + end token train.

Tokenizers are byte-level BPE trained at test time with each template's special tokens (tests/tinymodels.py). The
ChatGLM3 template on the converted sentencepiece tokenizer is tested token for token in tests/integration/test_chatglm3.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rag.core.errors import ConfigError, RagError
from rag.core.types import Message
from rag.models.templates import IGNORE_INDEX, TEMPLATES, detect_template, get_template
from tests import tinymodels

KINDS = sorted(TEMPLATES)
CONVERSATION = [
    Message("system", "你是知识库问答助手，只根据文档回答。"),
    Message("user", "年假有几天？"),
    Message("assistant", "工作满一年的员工每年有五天年假。\n需提前三个工作日申请。"),
    Message("user", "What about sick leave?"),
    Message("assistant", "Sick leave needs a doctor's note [1]."),
]
# What each assistant turn's trained tokens decode to: the text plus the token that ends the turn.
TRAINED_TEXT = {
    "chatml": ["{0}<|im_end|>", "{1}<|im_end|>"],
    "llama3": ["{0}<|eot_id|>", "{1}<|eot_id|>"],
    "glm4": ["\n{0}<|user|>", "\n{1}<|endoftext|>"],  # the turn ends at the next role token; eos after the last
    "chatglm3": ["\n {0}<|user|>", "\n {1}</s>"],  # " ": sentencepiece's dummy prefix, written by the template
}
STOP_TOKENS = {
    "chatml": ["<|im_end|>", "<|endoftext|>"],
    "llama3": ["<|eot_id|>", "<|end_of_text|>"],
    "glm4": ["<|endoftext|>", "<|user|>", "<|observation|>"],
    "chatglm3": ["</s>", "<|user|>", "<|observation|>"],
}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("tokenizers")
    return {kind: tinymodels.build_tokenizer(tmp, kind) for kind in KINDS}


def labelled_runs(labels: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for previous, label in zip([IGNORE_INDEX, *labels], labels, strict=False):
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
    return runs


@pytest.mark.parametrize("kind", KINDS)
def test_training_prompt_equals_serving_prompt(tokenizers: dict[str, Any], kind: str) -> None:
    template, tokenizer = get_template(kind), tokenizers[kind]
    ids, labels = template.encode_for_training(tokenizer, CONVERSATION)
    assert len(ids) == len(labels)
    for turn in (2, 4):  # the assistant turns
        prompt = template.encode(tokenizer, CONVERSATION[:turn], add_generation_prompt=True)
        assert ids[: len(prompt)] == prompt
        assert labels[len(prompt) - 1] == IGNORE_INDEX and labels[len(prompt)] == ids[len(prompt)]


@pytest.mark.parametrize("kind", KINDS)
def test_only_assistant_text_and_end_token_are_trained(tokenizers: dict[str, Any], kind: str) -> None:
    template, tokenizer = get_template(kind), tokenizers[kind]
    ids, labels = template.encode_for_training(tokenizer, CONVERSATION)
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels, strict=True))
    answers = [CONVERSATION[2].content, CONVERSATION[4].content]
    expected = [pattern.format(*answers) for pattern in TRAINED_TEXT[kind]]
    assert [tokenizer.decode(run) for run in labelled_runs(labels)] == expected


@pytest.mark.parametrize("kind", KINDS)
def test_hf_chat_template_serves_the_same_ids(tokenizers: dict[str, Any], kind: str) -> None:
    """vLLM / apply_chat_template with the tokenizer's own chat_template give our ids (prompt and history)."""
    template, tokenizer = get_template(kind), tokenizers[kind]
    conversation = [{"role": m.role, "content": m.content} for m in CONVERSATION[:4]]
    hf_ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                           return_dict=False)
    assert template.encode(tokenizer, CONVERSATION[:4], add_generation_prompt=True) == list(hf_ids)
    assert template.encode(tokenizer, conversation, add_generation_prompt=True) == list(hf_ids)  # dicts work too


@pytest.mark.parametrize("kind", KINDS)
def test_stop_token_ids(tokenizers: dict[str, Any], kind: str) -> None:
    tokenizer = tokenizers[kind]
    assert get_template(kind).stop_token_ids(tokenizer) == tokenizer.convert_tokens_to_ids(STOP_TOKENS[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_control_tokens_in_content_stay_text(tokenizers: dict[str, Any], kind: str) -> None:
    """A retrieved document that contains a role token must not switch roles."""
    template, tokenizer = get_template(kind), tokenizers[kind]
    injected = "".join(template.special_tokens)
    clean = template.encode(tokenizer, [Message("user", "你好")], add_generation_prompt=True)
    dirty = template.encode(tokenizer, [Message("user", f"你好{injected}")], add_generation_prompt=True)
    special_ids = set(tokenizer.convert_tokens_to_ids(list(template.special_tokens)))
    assert sorted(i for i in dirty if i in special_ids) == sorted(i for i in clean if i in special_ids)


def test_unknown_template_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        get_template("vicuna")
    assert str(err.value) == "unknown chat template 'vicuna'; valid templates: chatglm3, chatml, glm4, llama3"
    assert isinstance(err.value, ValueError)


def test_tokenizer_without_the_template_tokens_is_refused(tokenizers: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"the tokenizer has no \['<\|im_start\|>', '<\|im_end\|>'\] token"):
        get_template("chatml").encode(tokenizers["llama3"], CONVERSATION[:2], add_generation_prompt=True)


def test_boundary_merge_is_reported_not_trained(tokenizers: dict[str, Any]) -> None:
    """An answer starting with a newline merges with the template's newline: training would not match serving."""
    conversation = [Message("user", "hi"), Message("assistant", "\nstarts with a newline")]
    with pytest.raises(RagError, match="tokenises differently alone than inside the whole conversation"):
        get_template("chatml").encode_for_training(tokenizers["chatml"], conversation)


def test_no_assistant_turn_trains_nothing(tokenizers: dict[str, Any]) -> None:
    ids, labels = get_template("glm4").encode_for_training(tokenizers["glm4"], CONVERSATION[:2])
    assert labels == [IGNORE_INDEX] * len(ids)
    assert ids[-1] != tokenizers["glm4"].eos_token_id  # eos is only appended after a final assistant turn


def test_detect_template(tokenizers: dict[str, Any]) -> None:
    from transformers import GlmConfig, Qwen2Config

    for kind in KINDS:
        tokenizer = tokenizers[kind]
        assert detect_template(tokenizer) == kind
        tokenizer.chat_template = None  # from the special tokens alone
        assert detect_template(tokenizer) == kind
        tokenizer.chat_template = get_template(kind).jinja
    assert detect_template({"model_type": "chatglm", "padded_vocab_size": 65024}) == "chatglm3"
    assert detect_template(GlmConfig(vocab_size=65024)) == "chatglm3"  # a converted ChatGLM3
    assert detect_template(GlmConfig()) == "glm4"
    assert detect_template({"model_type": "glm4"}) == "glm4"
    assert detect_template(Qwen2Config()) == "chatml"
    assert detect_template({"model_type": "llama", "vocab_size": 128256}) == "llama3"
    assert detect_template({"model_type": "llama", "vocab_size": 32000}) is None
    assert detect_template({"model_type": "bert"}) is None


@pytest.mark.parametrize(("arch", "kind"), [("glm", "chatglm3"), ("llama", "llama3"), ("qwen2", "chatml")])
def test_tiny_causal_lm_serves_and_trains(tmp_path: Path, arch: str, kind: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tinymodels.build_tiny_causal_lm(tmp_path, arch, kind)
    assert sum(f.stat().st_size for f in folder.iterdir()) < 3_000_000
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = get_template(kind)
    assert detect_template(tokenizer) == kind
    assert model.generation_config.eos_token_id == template.stop_token_ids(tokenizer)
    prompt = template.encode(tokenizer, CONVERSATION[:2], add_generation_prompt=True)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > len(prompt)
    ids, labels = template.encode_for_training(tokenizer, CONVERSATION[:3])
    loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    assert torch.isfinite(loss) and loss.item() > 0
