"""ChatGLM3-6B on current transformers without remote code: convert the checkpoint once into a native GlmForCausalLM.

ChatGLM3's published modeling code no longer runs on transformers 5 (shared/STACK.md), but its network is exactly
transformers' ``GlmForCausalLM`` (RMSNorm, fused qkv with bias, 2 kv groups, rotary on the first half of each head with
interleaved pairs, SwiGLU). ``convert_checkpoint`` renames and splits the tensors, writes a ``GlmConfig``, and builds a
native fast tokenizer from ``tokenizer.model`` with ChatGLM3's special tokens at the same ids and a chat template that
reproduces ChatGLM3's prompt ids token for token (checked against the sentencepiece model itself on every conversion).
``convert_lora_adapter`` converts LoRA adapters from ChatGLM3's finetune_demo the same way. Nothing is unpickled except
through ``torch.load(weights_only=True)``.

Special tokens, from the published tokenization_chatglm.py: after the sentencepiece vocabulary come ``[MASK] [gMASK]
[sMASK] sop eop <|system|> <|user|> <|assistant|> <|observation|>`` (64789..64797 for ChatGLM3-6B); eos is the
sentencepiece ``</s>``, pad is ``<unk>``. Generation stops at ``</s>``, ``<|user|>`` or ``<|observation|>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rag.errors import ConfigError, RagError
from rag.templates import get_template
from rag.types import Message

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1
CONVERSION_FILE = "kbqa_conversion.json"
SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                  "<|observation|>")
_LAYER = r"transformer\.encoder\.layers\.(\d+)\."
QKV = re.compile(_LAYER + r"self_attention\.query_key_value")
# ChatGLM3 module path -> GlmForCausalLM module path (query_key_value is split, see _split_rows)
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


def is_chatglm3_checkpoint(folder: Path) -> bool:
    """True if ``folder`` holds a ChatGLM-layout checkpoint (config.json model_type "chatglm" or its architectures)."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    archs = set(cfg.get("architectures") or ())
    return cfg.get("model_type") == "chatglm" or bool(archs & {"ChatGLMModel", "ChatGLMForConditionalGeneration"})


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


def _split_rows(tensor: Tensor, config: Any) -> list[Tensor]:
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
        out.update(zip(names, _split_rows(tensor, config) if len(names) == 3 else [tensor] * len(names), strict=True))
    return out


def _load_tensors(path: Path) -> dict[str, Tensor]:
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


def build_native_tokenizer(sp_model_file: Path, model_max_length: int = 8192) -> Any:
    """A fast tokenizer that encodes like ChatGLM3's: its sentencepiece model, then SPECIAL_TOKENS at the same ids.

    Every text chunk between special tokens gets sentencepiece's dummy-prefix "▁" (``legacy`` prepending), as each
    ``sp.encode`` call in ChatGLM3's tokenizer does; ``tokenizer(text)`` adds ``[gMASK] sop`` like the original.
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(Path(sp_model_file).read_bytes())
    vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    if backend is None:
        raise ConversionError(f"cannot build a fast tokenizer from {sp_model_file}")
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in SPECIAL_TOKENS])
    ids = {token: backend.token_to_id(token) for token in SPECIAL_TOKENS}
    if list(ids.values()) != list(range(len(vocab), len(vocab) + len(SPECIAL_TOKENS))):
        raise ConversionError(f"special tokens landed at {ids}, not right after the {len(vocab)} pieces")
    eos = proto.pieces[proto.trainer_spec.eos_id].piece
    backend.post_processor = TemplateProcessing(
        single="[gMASK] sop $A", pair="[gMASK] sop $A $B " + eos,
        special_tokens=[("[gMASK]", ids["[gMASK]"]), ("sop", ids["sop"]), (eos, proto.trainer_spec.eos_id)],
    )
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=unk, eos_token=eos, pad_token=unk, padding_side="left",
        clean_up_tokenization_spaces=False, model_max_length=model_max_length,
        chat_template=get_template("chatglm3").jinja,
    )


def chatglm3_encode(sp_model: Any, messages: Sequence[Message | Mapping[str, Any]],
                    add_generation_prompt: bool = True) -> list[int]:
    """ChatGLM3's own prompt ids, written the way its tokenization_chatglm.py builds them (the reference).

    ``[gMASK] sop``, then per message ``<|role|>`` + sp.encode(f"{metadata}\\n") + sp.encode(content), then
    ``<|assistant|>``. ``sp_model`` is a ``sentencepiece.SentencePieceProcessor``. (The published code also appends
    a system message's ``tools`` as JSON; tool calling is not supported here.)
    """
    first_special = sp_model.vocab_size()
    special = {token: first_special + index for index, token in enumerate(SPECIAL_TOKENS)}
    ids = [special["[gMASK]"], special["sop"]]
    for message in messages:
        item = {"role": message.role, "content": message.content} if isinstance(message, Message) else message
        ids += [special[f"<|{item['role']}|>"]] + sp_model.encode(f"{item.get('metadata', '')}\n")
        ids += sp_model.encode(item["content"])
    return ids + [special["<|assistant|>"]] if add_generation_prompt else ids


PROBE_TEXTS = ("你好", "ChatGLM3-6B 知识库问答 v0.1。", "  two  spaces ", "第一段\n\n第二段\n", "def f(x):\n\treturn x")
PROBE_CHATS = ([{"role": "system", "content": "你是一个助手。\nAnswer briefly."}, {"role": "user", "content": "年假？"},
                {"role": "assistant", "content": "五天。\n\n- 需申请"}, {"role": "user", "content": " And  sick leave?\n"},
                {"role": "assistant", "content": ""}, {"role": "user", "content": "谢谢"}],)


def verify_tokenizer(tokenizer: Any, sp_model: Any) -> None:
    """Raise ConversionError unless ``tokenizer`` reproduces ``sp_model`` and ChatGLM3's chat ids on probe inputs."""
    for text in PROBE_TEXTS:
        if (got := tokenizer.encode(text, add_special_tokens=False)) != (want := sp_model.encode(text)):
            raise ConversionError(f"native tokenizer gives {got} for {text!r}, tokenizer.model gives {want}")
    for chat in PROBE_CHATS:
        got = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        if list(got) != (want := chatglm3_encode(sp_model, chat)):
            raise ConversionError(f"native chat template gives {list(got)}, ChatGLM3 gives {want} for {chat}")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stat_fingerprint(files: Sequence[Path]) -> str:
    stats = [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def _conversion_record(src: Path, files: Sequence[Path]) -> dict[str, Any]:
    """What kbqa_conversion.json says: converter version, each source file's sha256 and size, a content hash over
    them all, and a stat fingerprint (names, sizes, mtimes) for a quick up-to-date check."""
    hashes = {path.name: _sha256(path) for path in files}
    return {"converter": __name__, "converter_version": CONVERTER_VERSION, "source": str(Path(src).resolve()),
            "files": {path.name: {"sha256": hashes[path.name], "size": path.stat().st_size} for path in files},
            "content_sha256": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest(),
            "stat_fingerprint": _stat_fingerprint(files)}


def _source_files(src: Path) -> list[Path]:
    indexes = [src / name for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json")]
    return [src / "config.json", src / "tokenizer.model", *[i for i in indexes if i.exists()], *weight_files(src)]


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _convert_shards(files: Sequence[Path], config: Any, folder: Path) -> dict[str, tuple[int, ...]]:
    """Convert and write one output shard per source shard (peak memory ~ one shard): model.safetensors, or
    model-0000i-of-0000n.safetensors + model.safetensors.index.json. Returns every written tensor's shape."""
    from safetensors.torch import save_file

    weight_map: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    total = 0
    for number, path in enumerate(files, start=1):
        tensors = {name: t.contiguous() for name, t in convert_state_dict(_load_tensors(path), config).items()}
        file = "model.safetensors" if len(files) == 1 else f"model-{number:05d}-of-{len(files):05d}.safetensors"
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        shapes.update({name: tuple(t.shape) for name, t in tensors.items()})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _write_json(folder / "model.safetensors.index.json", index)
    return shapes


def _expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Every tensor GlmForCausalLM(config) loads, with its shape (built on the meta device: no memory)."""
    from transformers import GlmForCausalLM

    with torch.device("meta"):
        model = GlmForCausalLM(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _write_atomically(dst: Path, fill: Any) -> Path:
    """Build a folder in a temp dir beside ``dst`` with ``fill(tmp)``, then swap it in with os.replace."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        if dst.exists():
            os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def convert_checkpoint(src: Path, dst: Path) -> Path:
    """Convert a ChatGLM3 checkpoint folder into a native GlmForCausalLM folder at ``dst`` (replaced atomically).

    Writes model.safetensors (one shard per source shard), config.json, generation_config.json (eos = ``</s>``,
    ``<|user|>``, ``<|observation|>``), tokenizer.json + tokenizer_config.json (with the chat template), and
    kbqa_conversion.json (converter version, each source file's sha256, a content hash).
    """
    from sentencepiece import SentencePieceProcessor
    from transformers import GenerationConfig

    src = Path(src)
    if not is_chatglm3_checkpoint(src):
        raise ConfigError(f"{src} is not a ChatGLM3 checkpoint (its config.json must say model_type 'chatglm')")
    if not (src / "tokenizer.model").exists():
        raise ConfigError(f"{src} has no tokenizer.model; copy it from the ChatGLM3 download")
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    sp_model = SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    tokenizer = build_native_tokenizer(src / "tokenizer.model", int(cfg.get("seq_length", 8192)))
    verify_tokenizer(tokenizer, sp_model)
    eos_ids = [sp_model.eos_id()] + [tokenizer.convert_tokens_to_ids(t) for t in ("<|user|>", "<|observation|>")]
    config = convert_config(cfg, eos_token_id=eos_ids, pad_token_id=sp_model.unk_id())
    config.dtype = cfg.get("torch_dtype", "float16")
    log.info("converting ChatGLM3 checkpoint %s -> %s", src, dst)

    def fill(tmp: Path) -> None:
        if (shapes := _convert_shards(weight_files(src), config, tmp)) != (expected := _expected_shapes(config)):
            wrong = sorted(name for name in shapes.keys() | expected.keys() if shapes.get(name) != expected.get(name))
            raise ConversionError(f"converted tensors do not fit GlmForCausalLM: {wrong[:5]} ({len(wrong)} in all)")
        config.save_pretrained(tmp)
        GenerationConfig(eos_token_id=eos_ids, pad_token_id=sp_model.unk_id()).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_json(tmp / CONVERSION_FILE, _conversion_record(src, _source_files(src)))

    return _write_atomically(dst, fill)


def ensure_native(src: Path, cache_dir: Path) -> Path:
    """The native folder for ChatGLM3 checkpoint ``src`` under ``cache_dir``, converting only when it is missing/stale.

    Up to date means: same converter version, and the source files unchanged (same sizes and mtimes, or, when only
    the mtimes moved, the same sha256 content hash). A file lock keeps two processes from converting at once.
    """
    from filelock import FileLock

    src = Path(src).resolve()
    dst = Path(cache_dir) / f"{src.name}-native-{hashlib.sha256(str(src).encode()).hexdigest()[:10]}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dst.parent / f".{dst.name}.lock")):
        try:
            record = json.loads((dst / CONVERSION_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        if record.get("converter_version") == CONVERTER_VERSION:
            files = _source_files(src)
            if record.get("stat_fingerprint") == _stat_fingerprint(files):
                return dst
            fresh = _conversion_record(src, files)
            if record.get("content_sha256") == fresh["content_sha256"]:  # e.g. copied: new mtimes, same bytes
                _write_json(dst / CONVERSION_FILE, fresh)
                return dst
        return convert_checkpoint(src, dst)


def convert_lora_adapter(src: Path, dst: Path, base_cfg: Any, base_model_name_or_path: str | None = None) -> Path:
    """Convert a peft LoRA adapter trained on ChatGLM3 (finetune_demo) into one for the native model.

    A LoRA on the fused query_key_value (A: r×in, B: (q+k+v)×r) is exactly three LoRAs q/k/v_proj sharing A, with B
    split by the same rows as the weight; dense, dense_h_to_4h and dense_4h_to_h are renamed. r, alpha and dropout
    are kept; target_modules is rewritten from the converted tensors.

    Args:
        src: adapter folder (adapter_config.json + adapter_model.safetensors or .bin).
        dst: where to write the converted adapter (replaced atomically).
        base_cfg: the base model's GlmConfig, or its ChatGLM config.json dict.
        base_model_name_or_path: written into adapter_config.json (e.g. the native folder); default: kept.
    """
    src = Path(src)
    config = convert_config(base_cfg) if isinstance(base_cfg, Mapping) else base_cfg
    adapter_cfg = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
    problems = {key: adapter_cfg.get(key) for key in ("use_dora", "rank_pattern", "alpha_pattern", "fan_in_fan_out")
                if adapter_cfg.get(key)}
    if adapter_cfg.get("peft_type") != "LORA" or problems:
        raise ConversionError(f"only plain LoRA adapters convert; {src} has peft_type "
                              f"{adapter_cfg.get('peft_type')!r} {problems or ''}")
    files = [src / name for name in ("adapter_model.safetensors", "adapter_model.bin") if (src / name).exists()]
    if not files:
        raise ConfigError(f"no adapter_model.safetensors or adapter_model.bin in {src}")
    prefix = "base_model.model."
    out: dict[str, Tensor] = {}
    for name, tensor in _load_tensors(files[0]).items():
        if not name.startswith(prefix):
            raise ConversionError(f"unexpected adapter tensor {name!r} (expected {prefix}...)")
        names = [prefix + n for n in native_names(name[len(prefix):])]
        split = len(names) == 3 and ".lora_A." not in name  # A is shared; B (and biases) are split by rows
        parts = _split_rows(tensor, config) if split else [tensor.clone() for _ in names]
        out.update(zip(names, parts, strict=True))
    targets = sorted({name.split(".lora_A.")[0].rsplit(".", 1)[-1] for name in out if ".lora_A." in name})
    new_cfg = {**adapter_cfg, "target_modules": targets,
               "base_model_name_or_path": base_model_name_or_path or adapter_cfg.get("base_model_name_or_path")}
    if adapter_cfg.get("modules_to_save"):
        new_cfg["modules_to_save"] = [n for m in adapter_cfg["modules_to_save"] for n in LEAF_RENAMES.get(m, (m,))]

    def fill(tmp: Path) -> None:
        from safetensors.torch import save_file

        save_file(out, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "adapter_config.json", new_cfg)
        _write_json(tmp / CONVERSION_FILE, _conversion_record(src, [src / "adapter_config.json", files[0]]))

    return _write_atomically(dst, fill)
