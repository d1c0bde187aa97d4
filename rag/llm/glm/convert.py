"""ChatGLM3-6B on current transformers without remote code: convert the checkpoint once into a native GlmForCausalLM.

ChatGLM3's published modeling code no longer runs on transformers 5 (shared/STACK.md), but its network is exactly
transformers' ``GlmForCausalLM`` (RMSNorm, fused qkv with bias, 2 kv groups, rotary on the first half of each head with
interleaved pairs, SwiGLU). ``convert_checkpoint`` renames and splits the tensors, writes a ``GlmConfig``, and builds a
native fast tokenizer from ``tokenizer.model`` with ChatGLM3's special tokens at the same ids and a chat template that
reproduces ChatGLM3's prompt ids token for token (checked against the sentencepiece model itself on every conversion).
``convert_lora_adapter`` converts LoRA adapters from ChatGLM3's finetune_demo the same way. Nothing is unpickled except
through ``torch.load(weights_only=True)``. The tensor mapping and the shard writer are in
:mod:`rag.llm.glm.weights` (re-exported here); this module keeps the tokenizer, the conversion record, the
up-to-date check and the adapter conversion.

Special tokens, from the published tokenization_chatglm.py: after the sentencepiece vocabulary come ``[MASK] [gMASK]
[sMASK] sop eop <|system|> <|user|> <|assistant|> <|observation|>`` (64789..64797 for ChatGLM3-6B); eos is the
sentencepiece ``</s>``, pad is ``<unk>``. Generation stops at ``</s>``, ``<|user|>`` or ``<|observation|>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from rag.core.errors import ConfigError
from rag.core.types import Message
from rag.llm.glm.weights import (
    LEAF_RENAMES,
    ConversionError,
    convert_config,
    convert_shards,
    expected_shapes,
    load_tensors,
    native_names,
    split_rows,
    weight_files,
    write_json,
)
from rag.models.templates import get_template

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1
CONVERSION_FILE = "kbqa_conversion.json"
SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                  "<|observation|>")


def is_chatglm3_checkpoint(folder: Path) -> bool:
    """True if ``folder`` holds a ChatGLM-layout checkpoint (config.json model_type "chatglm" or its architectures)."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    archs = set(cfg.get("architectures") or ())
    return cfg.get("model_type") == "chatglm" or bool(archs & {"ChatGLMModel", "ChatGLMForConditionalGeneration"})


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
        if (shapes := convert_shards(weight_files(src), config, tmp)) != (expected := expected_shapes(config)):
            wrong = sorted(name for name in shapes.keys() | expected.keys() if shapes.get(name) != expected.get(name))
            raise ConversionError(f"converted tensors do not fit GlmForCausalLM: {wrong[:5]} ({len(wrong)} in all)")
        config.save_pretrained(tmp)
        GenerationConfig(eos_token_id=eos_ids, pad_token_id=sp_model.unk_id()).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / CONVERSION_FILE, _conversion_record(src, _source_files(src)))

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
                write_json(dst / CONVERSION_FILE, fresh)
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
    for name, tensor in load_tensors(files[0]).items():
        if not name.startswith(prefix):
            raise ConversionError(f"unexpected adapter tensor {name!r} (expected {prefix}...)")
        names = [prefix + n for n in native_names(name[len(prefix):])]
        split = len(names) == 3 and ".lora_A." not in name  # A is shared; B (and biases) are split by rows
        parts = split_rows(tensor, config) if split else [tensor.clone() for _ in names]
        out.update(zip(names, parts, strict=True))
    targets = sorted({name.split(".lora_A.")[0].rsplit(".", 1)[-1] for name in out if ".lora_A." in name})
    new_cfg = {**adapter_cfg, "target_modules": targets,
               "base_model_name_or_path": base_model_name_or_path or adapter_cfg.get("base_model_name_or_path")}
    if adapter_cfg.get("modules_to_save"):
        new_cfg["modules_to_save"] = [n for m in adapter_cfg["modules_to_save"] for n in LEAF_RENAMES.get(m, (m,))]

    def fill(tmp: Path) -> None:
        from safetensors.torch import save_file

        save_file(out, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "adapter_config.json", new_cfg)
        write_json(tmp / CONVERSION_FILE, _conversion_record(src, [src / "adapter_config.json", files[0]]))

    return _write_atomically(dst, fill)
