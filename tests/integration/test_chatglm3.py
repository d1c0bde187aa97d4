"""rag.llm.glm.convert: a ChatGLM3-layout checkpoint converts to transformers' GlmForCausalLM with identical logits.

The reference is an independent forward written here with plain torch ops after ChatGLM3's published
modeling_chatglm.py (RMSNorm, fused qkv with bias, multi-query groups, rotary on the first half of each head with
interleaved pairs (x[2i], x[2i+1]), SwiGLU, final norm, output layer). The checkpoint and its sentencepiece
tokenizer are tiny and random, built at test time (tests/tinymodels.py).
"""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from rag.core.errors import ConfigError
from rag.core.types import Message
from rag.llm.glm import convert as chatglm3
from rag.llm.glm.convert import (
    chatglm3_encode,
    convert_checkpoint,
    convert_lora_adapter,
    ensure_native,
    is_chatglm3_checkpoint,
)
from rag.llm.glm.weights import ConversionError, convert_config
from rag.models.templates import get_template
from tests import tinymodels

pytestmark = pytest.mark.integration

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "你好"}],
    [{"role": "system", "content": "你是知识库问答助手。Answer from the documents only."},
     {"role": "user", "content": "年假有几天？\n请简要回答。"},
     {"role": "assistant", "content": "工作满一年的员工每年有五天年假。"},
     {"role": "user", "content": "What about  sick leave?  "}],
    [{"role": "user", "content": "  leading spaces and\ttabs\n\n"}, {"role": "assistant", "content": ""},
     {"role": "user", "content": "def f():\n    return 1  # 代码"}],
    [{"role": "system", "content": "工具调用", "metadata": ""},
     {"role": "user", "content": "查天气", "metadata": "weather"}, {"role": "observation", "content": "{\"晴\": 20}"}],
]


def reference_logits(sd: dict[str, torch.Tensor], cfg: dict[str, Any], ids: list[int]) -> torch.Tensor:
    """Logits [seq, vocab] of ChatGLM3 (published modeling code, no kv cache), from a ChatGLM-named state dict."""
    heads, head_dim = cfg["num_attention_heads"], cfg["kv_channels"]
    groups = cfg["multi_query_group_num"] if cfg["multi_query_attention"] else heads
    eps, seq = cfg["layernorm_epsilon"], len(ids)
    # ChatGLMModel: RotaryEmbedding(kv_channels // 2); forward_impl: theta_i = base^(-2i / n_elem), cache [s, n/2, 2]
    n_elem = head_dim // 2
    base = 10000 * cfg.get("rope_ratio", 1)
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float) / n_elem))
    angles = torch.outer(torch.arange(seq, dtype=torch.float), theta)  # [s, n_elem/2]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]

    def rotary(x: torch.Tensor) -> torch.Tensor:  # apply_rotary_pos_emb: x [s, nh, hd]; rotates x[..., :n_elem]
        rot, passthrough = x[..., :n_elem], x[..., n_elem:]
        pairs = rot.reshape(seq, x.shape[1], n_elem // 2, 2)  # (x[2i], x[2i+1])
        out = torch.stack([pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 1] * cos + pairs[..., 0] * sin], -1)
        return torch.cat([out.flatten(2), passthrough], dim=-1)

    def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    x = sd["transformer.embedding.word_embeddings.weight"][torch.tensor(ids)]  # [s, hidden]
    for layer in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{layer}."
        h = rms_norm(x, sd[p + "input_layernorm.weight"])
        qkv = h @ sd[p + "self_attention.query_key_value.weight"].T + sd[p + "self_attention.query_key_value.bias"]
        q, k, v = qkv.split([heads * head_dim, groups * head_dim, groups * head_dim], dim=-1)
        q = rotary(q.reshape(seq, heads, head_dim))
        k = rotary(k.reshape(seq, groups, head_dim))
        v = v.reshape(seq, groups, head_dim)
        # multi-query: key_layer.unsqueeze(-2).expand(..., heads // groups, ...) -> head j reads group j // (h/g)
        k, v = (t.repeat_interleave(heads // groups, dim=1) for t in (k, v))
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim)
        probs = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        context = torch.einsum("hqk,khd->qhd", probs, v).reshape(seq, heads * head_dim)
        x = x + context @ sd[p + "self_attention.dense.weight"].T
        h = rms_norm(x, sd[p + "post_attention_layernorm.weight"])
        gate, up = (h @ sd[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)  # swiglu: silu(first) * second
        x = x + (F.silu(gate) * up) @ sd[p + "mlp.dense_4h_to_h.weight"].T
    x = rms_norm(x, sd["transformer.encoder.final_layernorm.weight"])
    return x @ sd["transformer.output_layer.weight"].T


def load_sd(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def merge_lora(sd: dict[str, torch.Tensor], adapter: Path) -> dict[str, torch.Tensor]:
    """W + (alpha / r) · B @ A on each ChatGLM-named target, as the adapter acts in ChatGLM3 (no dropout in eval)."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    tensors = (load_file(str(adapter / "adapter_model.safetensors")) if (adapter / "adapter_model.safetensors").exists()
               else torch.load(adapter / "adapter_model.bin", weights_only=True))
    merged = dict(sd)
    for name, a in tensors.items():
        if ".lora_A." in name:
            module = name.removeprefix("base_model.model.").split(".lora_A.")[0]
            b = tensors[name.replace(".lora_A.", ".lora_B.")]
            merged[module + ".weight"] = sd[module + ".weight"] + cfg["lora_alpha"] / cfg["r"] * b @ a
    return merged


@pytest.fixture(scope="module")
def glm3(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    import sentencepiece as spm
    from transformers import AutoTokenizer, GlmForCausalLM

    tmp = tmp_path_factory.mktemp("chatglm3")
    sp_path = tinymodels.build_sentencepiece_chatglm3(tmp)
    ckpt = tinymodels.build_chatglm3_checkpoint(tmp, sp_model=sp_path)
    native = convert_checkpoint(ckpt, tmp / "native")
    return SimpleNamespace(
        tmp=tmp, sp_path=sp_path, sp=spm.SentencePieceProcessor(model_file=str(sp_path)), ckpt=ckpt, native=native,
        cfg=json.loads((ckpt / "config.json").read_text()), sd=load_sd(ckpt),
        model=GlmForCausalLM.from_pretrained(native, dtype=torch.float32).eval(),
        tokenizer=AutoTokenizer.from_pretrained(native),
    )


def native_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_native_logits_match_chatglm3_reference(glm3: SimpleNamespace) -> None:
    ids = chatglm3_encode(glm3.sp, CONVERSATIONS[1])
    want = reference_logits(glm3.sd, glm3.cfg, ids)
    got = native_logits(glm3.model, ids)
    assert got.shape == (len(ids), glm3.cfg["padded_vocab_size"])
    assert (got - want).abs().max().item() < 1e-4
    assert want.std().item() > 0.5  # weights std 0.2: logits are not flat, so the comparison means something


def test_reference_detects_a_small_change(glm3: SimpleNamespace) -> None:
    ids = chatglm3_encode(glm3.sp, CONVERSATIONS[0])
    perturbed = dict(glm3.sd)
    name = "transformer.encoder.layers.1.self_attention.query_key_value.bias"
    perturbed[name] = perturbed[name].clone()
    perturbed[name][3] += 0.01
    assert (native_logits(glm3.model, ids) - reference_logits(perturbed, glm3.cfg, ids)).abs().max().item() > 1e-3


def test_greedy_generation_matches_reference(glm3: SimpleNamespace) -> None:
    ids = chatglm3_encode(glm3.sp, CONVERSATIONS[0])
    with torch.no_grad():  # incremental decoding with the kv cache
        out = glm3.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    generated = out[0, len(ids):].tolist()
    assert generated
    expected, sequence = [], list(ids)
    for _ in generated:  # the reference re-runs the whole sequence each step, no cache
        expected.append(int(reference_logits(glm3.sd, glm3.cfg, sequence)[-1].argmax()))
        sequence.append(expected[-1])
    assert generated == expected


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["single", "system-multiturn", "whitespace", "metadata"])
def test_chat_template_reproduces_chatglm3_ids(glm3: SimpleNamespace, conversation: list[dict[str, Any]]) -> None:
    for generation in (True, False):
        want = chatglm3_encode(glm3.sp, conversation, add_generation_prompt=generation)
        got = glm3.tokenizer.apply_chat_template(conversation, add_generation_prompt=generation, tokenize=True,
                                                 return_dict=False)
        assert list(got) == want
    if all("metadata" not in m for m in conversation):  # the registry template serves the same ids
        messages = [Message(m["role"], m["content"]) for m in conversation]
        assert get_template("chatglm3").encode(glm3.tokenizer, messages, True) == chatglm3_encode(glm3.sp, messages)


def finetune_demo_example(sp: Any, conversation: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """ChatGLM3 finetune_demo/finetune_hf.py process_batch for one conversation: the loss mask of each message's
    tokens (build_single_message), shifted right by one, with eos appended."""
    special = {token: sp.vocab_size() + index for index, token in enumerate(chatglm3.SPECIAL_TOKENS)}
    input_ids, loss_masks = [special["[gMASK]"], special["sop"]], [False, False]
    for message in conversation:
        new_ids = [special[f"<|{message['role']}|>"]] + sp.encode("\n") + sp.encode(message["content"])
        input_ids += new_ids
        loss_masks += [message["role"] not in ("system", "user")] * len(new_ids)
    input_ids.append(sp.eos_id())
    loss_masks = [False, *loss_masks]
    return input_ids, [token if mask else -100 for token, mask in zip(input_ids, loss_masks, strict=True)]


def test_training_ids_and_labels_match_finetune_demo(glm3: SimpleNamespace) -> None:
    conversation = [*CONVERSATIONS[1], {"role": "assistant", "content": "病假需要医院证明。\nSick leave needs a note."}]
    messages = [Message(m["role"], m["content"]) for m in conversation]
    ids, labels = get_template("chatglm3").encode_for_training(glm3.tokenizer, messages)
    assert (ids, labels) == finetune_demo_example(glm3.sp, conversation)
    assert labels[-1] == 2 and labels.count(glm3.sp.vocab_size() + 6) == 1  # eos after the last turn, <|user|> once


def test_tokenizer_matches_sentencepiece_and_special_ids(glm3: SimpleNamespace) -> None:
    tok, sp = glm3.tokenizer, glm3.sp
    for text in ["知识库问答", "Hello  world", "行一\n行二\n\n", " 前导空格", "x = [1, 2, 3]\t# 注释", "ÀÉ😀"]:
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text)
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == sp.decode(sp.encode(text))
    assert tok.encode("\n", add_special_tokens=False) == [sp.piece_to_id("▁"), sp.piece_to_id("<0x0A>")]
    first = sp.vocab_size()
    assert tok.convert_tokens_to_ids(list(chatglm3.SPECIAL_TOKENS)) == list(range(first, first + 9))
    assert tok.encode("你好")[:2] == [first + 1, first + 3]  # like ChatGLMTokenizer: [gMASK] sop prefix
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id, tok.padding_side) == ("</s>", 2, 0, "left")
    generation = json.loads((glm3.native / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, first + 6, first + 8]  # </s>, <|user|>, <|observation|>
    assert get_template("chatglm3").stop_token_ids(tok) == [2, first + 6, first + 8]


def test_converted_config_and_provenance(glm3: SimpleNamespace) -> None:
    config = glm3.model.config
    assert (config.num_key_value_heads, config.head_dim, config.vocab_size, config.attention_bias) == (2, 16, 1024,
                                                                                                       True)
    assert config.rope_parameters["partial_rotary_factor"] == 0.5
    assert config.tie_word_embeddings is False
    record = json.loads((glm3.native / chatglm3.CONVERSION_FILE).read_text())
    assert record["converter_version"] == chatglm3.CONVERTER_VERSION
    assert record["files"]["config.json"]["sha256"] == chatglm3._sha256(glm3.ckpt / "config.json")
    assert set(record["files"]) == {"config.json", "tokenizer.model", "model.safetensors"}
    assert is_chatglm3_checkpoint(glm3.ckpt) and not is_chatglm3_checkpoint(glm3.native)


def test_convert_config_variants() -> None:
    cfg = tinymodels.chatglm3_config(1000, multi_query=False, rope_ratio=500)
    config = convert_config(cfg, eos_token_id=[2, 7], pad_token_id=0)
    assert config.num_key_value_heads == 4 and config.rope_parameters["rope_theta"] == 5_000_000
    assert config.eos_token_id == [2, 7] and config.pad_token_id == 0
    with pytest.raises(ConversionError, match=r"not supported by the native conversion: \{'add_bias_linear': True\}"):
        convert_config({**cfg, "add_bias_linear": True})


def test_published_chatglm3_6b_config_gives_its_parameter_count() -> None:
    """THUDM/chatglm3-6b's config.json (as published) maps to a 6,243,584,000-parameter GlmForCausalLM."""
    from transformers import GlmForCausalLM

    published = {
        "model_type": "chatglm", "architectures": ["ChatGLMModel"], "add_bias_linear": False, "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True, "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0, "attention_softmax_in_fp32": True, "bias_dropout_fusion": True,
        "ffn_hidden_size": 13696, "fp32_residual_connection": False, "hidden_dropout": 0.0, "hidden_size": 4096,
        "kv_channels": 128, "layernorm_epsilon": 1e-05, "multi_query_attention": True, "multi_query_group_num": 2,
        "num_attention_heads": 32, "num_layers": 28, "original_rope": True, "padded_vocab_size": 65024,
        "post_layer_norm": True, "rmsnorm": True, "seq_length": 32768, "use_cache": True, "torch_dtype": "float16",
        "tie_word_embeddings": False, "eos_token_id": 2, "pad_token_id": 0,
    }
    with torch.device("meta"):
        model = GlmForCausalLM(convert_config(published))
    assert sum(p.numel() for p in model.parameters()) == 6_243_584_000
    attention = model.model.layers[0].self_attn
    assert (attention.q_proj.out_features, attention.k_proj.out_features, attention.v_proj.out_features) == (
        4096, 256, 256)


def test_bin_shards_convert_to_the_same_model(glm3: SimpleNamespace) -> None:
    from transformers import GlmForCausalLM

    ckpt = tinymodels.build_chatglm3_checkpoint(glm3.tmp, fmt="bin", shards=2, sp_model=glm3.sp_path, name="bin")
    native = convert_checkpoint(ckpt, glm3.tmp / "native-bin")
    index = json.loads((native / "model.safetensors.index.json").read_text())  # one output shard per source shard
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    assert not (native / "model.safetensors").exists()
    ids = chatglm3_encode(glm3.sp, CONVERSATIONS[2])
    model = GlmForCausalLM.from_pretrained(native, dtype=torch.float32).eval()
    assert torch.equal(native_logits(model, ids), native_logits(glm3.model, ids))


def test_pickled_objects_are_refused(tmp_path: Path, glm3: SimpleNamespace) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    for name in ("config.json", "tokenizer.model"):
        (folder / name).write_bytes((glm3.ckpt / name).read_bytes())
    torch.save({"transformer.output_layer.weight": datetime.date(2024, 1, 1)}, folder / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="pytorch_model.bin is not a plain tensor file; refusing to unpickle"):
        convert_checkpoint(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))  # nothing half-written


def test_verify_tokenizer_catches_a_mismatch(glm3: SimpleNamespace) -> None:
    import sentencepiece as spm

    other = tinymodels.build_sentencepiece_chatglm3(glm3.tmp / "other", vocab_size=700)
    with pytest.raises(ConversionError, match="native tokenizer gives"):
        chatglm3.verify_tokenizer(chatglm3.build_native_tokenizer(other), glm3.sp)
    chatglm3.verify_tokenizer(chatglm3.build_native_tokenizer(glm3.sp_path), glm3.sp)
    assert spm.SentencePieceProcessor(model_file=str(other)).vocab_size() == 700


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft 0.21 on tf 5.24
@pytest.mark.parametrize(("targets", "fmt"), [
    (("query_key_value",), "bin"),
    (("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"), "safetensors"),
])
def test_lora_adapter_converts_exactly(glm3: SimpleNamespace, targets: tuple[str, ...], fmt: str) -> None:
    from peft import PeftModel
    from transformers import GlmForCausalLM

    adapter = tinymodels.build_chatglm3_lora(glm3.tmp / fmt, glm3.ckpt, targets=targets, fmt=fmt)
    converted = convert_lora_adapter(adapter, glm3.tmp / f"lora-native-{fmt}", glm3.model.config, str(glm3.native))
    config = json.loads((converted / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(glm3.native)
    renamed = {"query_key_value": ["q_proj", "k_proj", "v_proj"], "dense": ["o_proj"],
               "dense_h_to_4h": ["gate_up_proj"], "dense_4h_to_h": ["down_proj"]}
    assert config["target_modules"] == sorted(n for t in targets for n in renamed[t])
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.1)

    ids = chatglm3_encode(glm3.sp, CONVERSATIONS[1])
    want = reference_logits(merge_lora(glm3.sd, adapter), glm3.cfg, ids)
    base = GlmForCausalLM.from_pretrained(glm3.native, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(converted)).eval()
    got = native_logits(model, ids)
    assert (got - want).abs().max().item() < 1e-4
    assert (got - native_logits(glm3.model, ids)).abs().max().item() > 1e-2  # the adapter does something


def test_lora_adapter_with_dora_is_refused(glm3: SimpleNamespace) -> None:
    adapter = tinymodels.build_chatglm3_lora(glm3.tmp / "dora", glm3.ckpt)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ConversionError, match=r"only plain LoRA adapters convert; .* \{'use_dora': True\}"):
        convert_lora_adapter(adapter, glm3.tmp / "dora-out", glm3.cfg)


def test_ensure_native_converts_once(glm3: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tinymodels.build_chatglm3_checkpoint(tmp_path, sp_model=glm3.sp_path, name="src")
    calls: list[Path] = []
    real = chatglm3.convert_checkpoint

    def counting_convert(source: Path, destination: Path) -> Path:
        calls.append(destination)
        return real(source, destination)

    monkeypatch.setattr(chatglm3, "convert_checkpoint", counting_convert)
    cache = tmp_path / "cache"
    native = ensure_native(src, cache)
    assert ensure_native(src, cache) == native and len(calls) == 1
    assert native.parent == cache and (native / "model.safetensors").exists()

    stat = (src / "model.safetensors").stat()
    os.utime(src / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # copied: same bytes
    assert ensure_native(src, cache) == native and len(calls) == 1
    assert ensure_native(src, cache) == native and len(calls) == 1  # fingerprint refreshed, no re-hash needed

    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "layernorm_epsilon": 1e-6}))
    assert ensure_native(src, cache) == native and len(calls) == 2
    assert json.loads((native / "config.json").read_text())["rms_norm_eps"] == 1e-6
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == [f".{native.name}.lock"]  # no temp/old


def test_not_a_chatglm3_checkpoint(glm3: SimpleNamespace, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a ChatGLM3 checkpoint"):
        convert_checkpoint(glm3.native, tmp_path / "x")
