"""A tiny random chat model built offline, for the quick tour (``configs/finetune/tiny.yaml``) and the tests.

``build_tiny_model(folder, arch, template)`` trains a byte-level BPE tokenizer (no NFKC: it would turn ``？`` into
``?``) on the shipped sample datasets with the chat template's special tokens and Jinja, then saves a random
``glm`` / ``qwen2`` / ``llama`` causal LM (hidden 64, 2 layers, 4 heads / 2 kv heads, about 0.5 M parameters) next
to it. Weights use std 0.2 rather than 0.02 so that a few dozen LoRA steps visibly move the loss. Every template
detects as itself (the tokenizer carries ``rag.models.templates``' Jinja), so the app serves the model with the same
template the recipe trains with. Command line: ``python -m finetune make-tiny-model DIR [--arch glm]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rag.core.config import REPO_ROOT
from rag.models.templates import get_template

SAMPLES_DIR = REPO_ROOT / "finetune" / "samples"
ARCHS = ("glm", "qwen2", "llama")
DEFAULT_TEMPLATE = {"glm": "chatglm3", "qwen2": "chatml", "llama": "llama3"}
# GPT-4-style pre-tokenizer split (as GLM-4 / Llama 3 / Qwen2 use); byte-level BPE then merges within the pieces
_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def sample_texts(folder: Path = SAMPLES_DIR) -> list[str]:
    """Every string in the sample datasets (the tokenizer's training text)."""
    texts: list[str] = []
    for path in sorted(folder.glob("*.json*")):
        if path.name == "dataset_info.json":
            continue
        raw = path.read_text(encoding="utf-8")
        records = json.loads(raw) if raw.lstrip().startswith("[") else [json.loads(x) for x in raw.splitlines() if x]
        texts += list(_strings(records))
    return texts


def build_tokenizer(folder: Path, template: str, texts: Iterable[str] | None = None, vocab_size: int = 3000) -> Any:
    """A byte-level BPE tokenizer with ``template``'s special tokens and Jinja, saved to ``folder``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    chat = get_template(template)
    specials = list(dict.fromkeys(chat.required_tokens() + chat.stop_tokens))
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(list(texts if texts is not None else sample_texts()), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=chat.eos_token, pad_token=chat.eos_token,
                                        chat_template=chat.jinja)
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def build_tiny_model(folder: str | Path, arch: str = "glm", template: str = "", seed: int = 0, hidden_size: int = 64,
                     layers: int = 2, texts: Iterable[str] | None = None) -> Path:
    """Write a random ``arch`` causal LM and its tokenizer for ``template`` (default: the family's own) to ``folder``.

    Raises:
        ValueError: an unknown ``arch``.
    """
    import torch
    from transformers import AutoModelForCausalLM, GlmConfig, LlamaConfig, Qwen2Config

    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not one of {', '.join(ARCHS)}")
    folder = Path(folder)
    template = template or DEFAULT_TEMPLATE[arch]
    tokenizer = build_tokenizer(folder, template, texts)
    stop_ids = get_template(template).stop_token_ids(tokenizer)
    config_class = {"glm": GlmConfig, "llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    config = config_class(
        vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden_size // 4,
        max_position_embeddings=1024, initializer_range=0.2, tie_word_embeddings=False, eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = stop_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    return folder
