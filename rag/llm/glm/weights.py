"""ChatGLM3 -> GlmForCausalLM weights: the config mapping, the tensor renames and the shard-by-shard conversion.

This is the tensor half of :mod:`rag.llm.glm.convert` (which keeps the tokenizer, the conversion record, the
up-to-date check and the LoRA adapter conversion): it knows how ChatGLM3's names and fused ``query_key_value`` rows
map onto transformers' native ``GlmForCausalLM``, how to read a checkpoint's shards without unpickling anything but
tensors, and how to write the converted shards (one output shard per source shard, so peak memory is one shard).
It is split out so the tensor mapping reads on its own next to shared/STACK.md's table; it has no state and loads
no model. :class:`ConversionError` lives here because both the weight and the tokenizer steps raise it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rag.core.errors import ConfigError, RagError

_LAYER = r"transformer\.encoder\.layers\.(\d+)\."
QKV = re.compile(_LAYER + r"self_attention\.query_key_value")
# ChatGLM3 module path -> GlmForCausalLM module path (query_key_value is split, see split_rows)
MODULE_RENAMES = [
    (re.compile(r"transformer\.embedding\.word_embeddings"), "model.embed_tokens"),
    (re.compile(_LAYER + r"(input_layernorm|post_attention_layernorm)"), r"model.layers.\1.\2"),
    (re.compile(_LAYER + r"self_attention\.dense"), r"model.layers.\1.self_attn.o_proj"),
    (re.compile(_LAYER + r"mlp\.dense_h_to_4h"), r"model.layers.\1.mlp.gate_up_proj"),  # [gate; up], same order
    (re.compile(_LAYER + r"mlp\.dense_4h_to_h"), r"model.layers.\1.mlp.down_proj"),
    (re.compile(r"transformer\.encoder\.final_layernorm"), "model.norm"),
    (re.compile(r"transformer\.output_layer"), "lm_head"),
]
LEAF_RENAMES = {"query_key_value": ("q_proj", "k_proj", "v_proj"), "dense": ("o_proj",),
                "dense_h_to_4h": ("gate_up_proj",), "dense_4h_to_h": ("down_proj",),
                "word_embeddings": ("embed_tokens",), "output_layer": ("lm_head",)}


class ConversionError(RagError):
    """A ChatGLM3 checkpoint or adapter could not be converted (unsupported variant, missing or odd tensors)."""


def convert_config(cfg: Mapping[str, Any], *, eos_token_id: int | list[int] | None = None,
                   pad_token_id: int | None = None) -> Any:
    """The ``transformers.GlmConfig`` of a ChatGLM3 ``config.json`` (shared/STACK.md has the mapping).

    Args:
        cfg: the ChatGLM config.json as a dict.
        eos_token_id / pad_token_id: ids inside the vocabulary (GlmConfig's defaults are GLM-4's); default to the
            config's own ``eos_token_id`` (2) and ``pad_token_id`` (0).
    """
    from transformers import GlmConfig

    unsupported = {key: cfg.get(key) for key, ok in (
        ("add_bias_linear", False), ("rmsnorm", True), ("post_layer_norm", True),
        ("apply_residual_connection_post_layernorm", False), ("original_rope", True), ("pre_seq_len", None),
    ) if cfg.get(key, ok) != ok}
    if unsupported:
        raise ConversionError(f"ChatGLM variant not supported by the native conversion: {unsupported}")
    heads = int(cfg["num_attention_heads"])
    return GlmConfig(
        vocab_size=int(cfg["padded_vocab_size"]), hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["ffn_hidden_size"]), num_hidden_layers=int(cfg["num_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg["multi_query_group_num"]) if cfg.get("multi_query_attention") else heads,
        head_dim=int(cfg.get("kv_channels") or int(cfg["hidden_size"]) // heads),
        rms_norm_eps=float(cfg.get("layernorm_epsilon", 1e-5)),
        max_position_embeddings=int(cfg.get("seq_length", 8192)),
        attention_bias=bool(cfg.get("add_qkv_bias", False)), attention_dropout=float(cfg.get("attention_dropout", 0)),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * float(cfg.get("rope_ratio") or 1),
                         "partial_rotary_factor": 0.5},
        tie_word_embeddings=False, bos_token_id=None,
        eos_token_id=cfg.get("eos_token_id", 2) if eos_token_id is None else eos_token_id,
        pad_token_id=cfg.get("pad_token_id", 0) if pad_token_id is None else pad_token_id,
    )


def split_rows(tensor: Tensor, config: Any) -> list[Tensor]:
    """Rows of a fused query_key_value tensor -> [q (heads·hd), k (kv·hd), v (kv·hd)] copies (no shared storage)."""
    sizes = [config.num_attention_heads * config.head_dim] + [config.num_key_value_heads * config.head_dim] * 2
    if tensor.shape[0] != sum(sizes):
        raise ConversionError(f"query_key_value has {tensor.shape[0]} rows, expected q+k+v = {sum(sizes)}")
    return [part.clone() for part in torch.split(tensor, sizes, dim=0)]


def native_names(name: str) -> list[str]:
    """The GlmForCausalLM name(s) of a ChatGLM3 tensor name ([] = dropped; three for a fused qkv tensor)."""
    if name.endswith("rotary_pos_emb.inv_freq"):
        return []  # recomputed from the config
    if match := QKV.match(name):
        return [f"model.layers.{match[1]}.self_attn.{proj}{name[match.end():]}" for proj in LEAF_RENAMES[
            "query_key_value"]]
    for pattern, replacement in MODULE_RENAMES:
        if match := pattern.match(name):
            return [match.expand(replacement) + name[match.end():]]
    raise ConversionError(f"unknown ChatGLM3 tensor {name!r} (a p-tuning or other variant checkpoint?)")


def convert_state_dict(sd: Mapping[str, Tensor], config: Any) -> dict[str, Tensor]:
    """ChatGLM3 tensors -> GlmForCausalLM tensors; ``config`` is the converted GlmConfig (for the q/k/v split)."""
    out: dict[str, Tensor] = {}
    for name, tensor in sd.items():
        names = native_names(name)
        out.update(zip(names, split_rows(tensor, config) if len(names) == 3 else [tensor] * len(names), strict=True))
    return out


def load_tensors(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:  # never a plain pickle: weights_only refuses anything but tensors and containers
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConversionError(f"{path.name} is not a plain tensor file; refusing to unpickle it ({exc})") from None


def weight_files(src: Path) -> list[Path]:
    """The checkpoint's weight shards: safetensors if present, else pytorch_model*.bin, through the index json."""
    for stem, suffix in (("model", ".safetensors"), ("pytorch_model", ".bin")):
        index = src / f"{stem}{suffix}.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [src / name for name in sorted(set(weight_map.values()))]
        if (src / f"{stem}{suffix}").exists():
            return [src / f"{stem}{suffix}"]
    raise ConfigError(f"no model.safetensors or pytorch_model.bin (or their .index.json) in {src}")


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def convert_shards(files: Sequence[Path], config: Any, folder: Path) -> dict[str, tuple[int, ...]]:
    """Convert and write one output shard per source shard (peak memory ~ one shard): model.safetensors, or
    model-0000i-of-0000n.safetensors + model.safetensors.index.json. Returns every written tensor's shape."""
    from safetensors.torch import save_file

    weight_map: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    total = 0
    for number, path in enumerate(files, start=1):
        tensors = {name: t.contiguous() for name, t in convert_state_dict(load_tensors(path), config).items()}
        file = "model.safetensors" if len(files) == 1 else f"model-{number:05d}-of-{len(files):05d}.safetensors"
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        shapes.update({name: tuple(t.shape) for name, t in tensors.items()})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        write_json(folder / "model.safetensors.index.json", index)
    return shapes


def expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Every tensor GlmForCausalLM(config) loads, with its shape (built on the meta device: no memory)."""
    from transformers import GlmForCausalLM

    with torch.device("meta"):
        model = GlmForCausalLM(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
