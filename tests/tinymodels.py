"""Tiny random models and tokenizers built at test time, offline (no hub). Reusable by any test.

API (every builder writes under the folder it is given and returns what it built):

- ``build_tokenizer(tmp, kind)`` -> ``PreTrainedTokenizerFast``: byte-level BPE (vocab ~2,000) trained on
  ``TRAINING_LINES`` with the special tokens of chat template ``kind`` (a ``rag.models.templates`` name: chatglm3, chatml,
  glm4, llama3) and that template as ``chat_template``. No NFKC normaliser (it would turn ``？`` into ``?``).
- ``build_sentencepiece_chatglm3(tmp)`` -> path of a ``tokenizer.model``: sentencepiece BPE (vocab ~1,000, byte
  fallback, identity normalisation, whitespace kept) standing in for ChatGLM3's; ``\\n`` falls back to ``<0x0A>`` as
  in the real one.
- ``build_chatglm3_checkpoint(tmp, fmt=, shards=, ...)`` -> folder in ChatGLM3's own layout (published config.json
  fields and tensor names; 2 layers, hidden 64, 4 heads, 2 kv groups, head dim 16, ffn 128), weights std 0.2 so the
  logits are not flat, saved as safetensors or pytorch_model*.bin, with ``tokenizer.model``.
- ``build_tiny_causal_lm(tmp, arch, template)`` -> folder with a random ``glm``/``llama``/``qwen2`` model (~330 k
  params, ~1.4 MB) and its tokenizer with ``chat_template``; ``generation_config`` stops at the template's stop tokens.
- ``build_chatglm3_lora(tmp, ckpt, targets=, r=, alpha=, fmt=)`` -> peft LoRA adapter folder in ChatGLM3 naming, like
  ChatGLM3's finetune_demo writes (default target query_key_value, r 4), with random non-zero A and B.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from rag.models.templates import get_template

ZH_LINES = [
    "服务器磁盘空间不足时，先用 df -h 查看各分区的使用率，再用 du -sh 找出占用最大的目录。",
    "日志文件通常在 /var/log 下，可以用 logrotate 定期压缩和清理旧日志。",
    "新磁盘需要先分区、格式化为 ext4，再写入 /etc/fstab 才能开机自动挂载。",
    "打印机驱动安装步骤：先从厂商网站下载驱动程序，然后在控制面板中添加打印机。",
    "选择网络打印机并输入 IP 地址 10.0.0.25，安装完成后打印测试页确认。",
    "工作满一年不满十年的员工，每年享受五天带薪年假；满十年不满二十年的，年假十天。",
    "年假需提前三个工作日在 OA 系统中申请，经部门负责人批准后生效。",
    "病假需要提供医院开具的证明，三天以内由直属领导审批。",
    "你好！我是知识库问答助手，可以根据公司文档回答你的问题。",
    "请问有什么可以帮你的？如果文档中没有答案，我会直接告诉你。",
    "根据《员工手册》第三章的规定，加班需要提前报备。",
    "数据库每天凌晨两点自动备份，备份文件保留三十天。",
    "如果忘记密码，可以在登录页面点击“忘记密码”，按照提示重置。",
    "会议室可以通过企业微信预约，每次最长预约两个小时。",
    "报销单需要附上发票原件，并在每月二十五日之前提交财务部。",
    "新员工入职第一周需要完成安全培训和信息系统账号开通。",
    "大语言模型会根据检索到的文档片段生成回答，并标注引用来源。",
    "向量检索和关键词检索结合使用，可以提高召回率。",
    "微调之后的模型更熟悉公司的术语，回答也更简洁。",
    "这个问题在现有资料中找不到答案，建议联系人力资源部。",
    "春天来了，公园里的花都开了，很多人周末去散步。",
    "今天天气晴朗，气温二十度左右，适合户外活动。",
    "北京、上海、广州和深圳是中国的一线城市。",
    "学习编程最好的方法是多写代码，多读优秀的开源项目。",
    "问：年假有几天？答：工作满一年的员工每年有五天年假。",
    "第一步，打开终端；第二步，输入命令；第三步，查看输出结果。",
    "注意：修改配置文件之前，请先备份原文件。",
    "谢谢你的帮助，祝你工作顺利，生活愉快！",
]
EN_LINES = [
    "To connect to the office VPN, install the WireGuard client and import the profile.",
    "The VPN gateway is vpn.example.com on UDP port 51820.",
    "Hello! I am the knowledge base assistant. How can I help you today?",
    "If the documents do not contain the answer, I will say so instead of guessing.",
    "Large language models answer questions from the retrieved passages and cite them.",
    "Dense retrieval and BM25 keyword search work well together.",
    "Fine-tuning with LoRA trains a few small matrices instead of the whole model.",
    "The backup job runs every night at 2 am and keeps files for thirty days.",
    "Please submit the expense report with the original invoices before the 25th.",
    "Employees get five days of paid annual leave after one year of service.",
    "def main():  return 0  # a tiny Python function",
    "for i in range(10): print(i * 2)",
    "The quick brown fox jumps over the lazy dog.",
    "Python, PyTorch and transformers are installed in the virtual environment.",
    "Question: how many days of leave? Answer: five days.",
    "Step 1: open a terminal. Step 2: run the command. Step 3: read the output.",
    "Thank you for your help, have a nice day!",
    "Error 404 means the page was not found; error 500 is a server error.",
]


def training_lines(count: int = 400, seed: int = 0) -> list[str]:
    """``count`` lines mixing the Chinese and English sentences above (deterministic); every fourth is a two-paragraph
    document, so byte-level BPE learns newline merges as real tokenizers have them."""
    rng = random.Random(seed)
    lines = ZH_LINES + EN_LINES
    while len(lines) < count:
        separator = "\n\n" if len(lines) % 4 == 0 else " "
        lines.append(separator.join(rng.sample(ZH_LINES, 2) + rng.sample(EN_LINES, 1)))
    return lines


TRAINING_LINES = training_lines()
# The pre-tokenizer regex of GLM-4 / Llama 3 (tiktoken's cl100k); Qwen2's differs only in splitting digits singly.
def build_tokenizer(tmp: Path, kind: str, vocab_size: int = 2000) -> Any:
    """A byte-level BPE tokenizer with chat template ``kind``'s tokens and Jinja, saved to ``tmp/tokenizer-{kind}``
    (the same builder as ``python -m finetune make-tiny-model``, trained on ``TRAINING_LINES``)."""
    from finetune.tiny import build_tokenizer as build

    return build(Path(tmp) / f"tokenizer-{kind}", kind, TRAINING_LINES, vocab_size)


def build_sentencepiece_chatglm3(tmp: Path, vocab_size: int = 1000) -> Path:
    """Train a sentencepiece BPE model with ChatGLM3-like settings; returns ``tmp/sp/tokenizer.model``.

    The training text has no newlines, so ``\\n`` is encoded by byte fallback (``<0x0A>``) as in ChatGLM3's model."""
    import sentencepiece as spm

    folder = Path(tmp) / "sp"
    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in TRAINING_LINES if "\n" not in line]),
        model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, character_coverage=1.0, hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )
    return folder / "tokenizer.model"


def chatglm3_config(sp_vocab_size: int, multi_query: bool = True, rope_ratio: float | None = None) -> dict[str, Any]:
    """A tiny config.json with the field names of ChatGLM3-6B's published one."""
    cfg: dict[str, Any] = {
        "_name_or_path": "THUDM/chatglm3-6b", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0, "attention_softmax_in_fp32": True,
        "bias_dropout_fusion": True, "ffn_hidden_size": 128, "fp32_residual_connection": False, "hidden_dropout": 0.0,
        "hidden_size": 64, "kv_channels": 16, "layernorm_epsilon": 1e-05, "multi_query_attention": multi_query,
        "multi_query_group_num": 2, "num_attention_heads": 4, "num_layers": 2, "original_rope": True,
        "padded_vocab_size": -(-(sp_vocab_size + 9) // 64) * 64, "post_layer_norm": True, "rmsnorm": True,
        "seq_length": 512, "use_cache": True, "torch_dtype": "float32", "transformers_version": "4.30.2",
        "tie_word_embeddings": False, "eos_token_id": 2, "pad_token_id": 0,
    }
    if rope_ratio is not None:
        cfg["rope_ratio"] = rope_ratio
    return cfg


def chatglm3_state_dict(cfg: dict[str, Any], seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    """Random tensors with ChatGLM3's names and shapes for ``cfg``."""
    gen = torch.Generator().manual_seed(seed)
    hidden, heads, head_dim = cfg["hidden_size"], cfg["num_attention_heads"], cfg["kv_channels"]
    groups = cfg["multi_query_group_num"] if cfg["multi_query_attention"] else heads
    qkv = (heads + 2 * groups) * head_dim

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    sd = {"transformer.embedding.word_embeddings.weight": rand(cfg["padded_vocab_size"], hidden)}
    for i in range(cfg["num_layers"]):
        layer = f"transformer.encoder.layers.{i}."
        sd[layer + "input_layernorm.weight"] = 1 + rand(hidden) / 2
        sd[layer + "self_attention.query_key_value.weight"] = rand(qkv, hidden)
        sd[layer + "self_attention.query_key_value.bias"] = rand(qkv)
        sd[layer + "self_attention.dense.weight"] = rand(hidden, heads * head_dim)
        sd[layer + "post_attention_layernorm.weight"] = 1 + rand(hidden) / 2
        sd[layer + "mlp.dense_h_to_4h.weight"] = rand(2 * cfg["ffn_hidden_size"], hidden)
        sd[layer + "mlp.dense_4h_to_h.weight"] = rand(hidden, cfg["ffn_hidden_size"])
    sd["transformer.encoder.final_layernorm.weight"] = 1 + rand(hidden) / 2
    sd["transformer.output_layer.weight"] = rand(cfg["padded_vocab_size"], hidden)
    rotary_dim = head_dim // 2  # ChatGLM's RotaryEmbedding(kv_channels // 2).inv_freq
    sd["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
    return sd


def save_tensor_shards(sd: dict[str, torch.Tensor], folder: Path, fmt: str, shards: int) -> None:
    """Save ``sd`` as ``model*.safetensors`` (fmt "safetensors") or ``pytorch_model*.bin`` (fmt "bin"), with an
    ``.index.json`` when ``shards`` > 1."""
    from safetensors.torch import save_file

    stem, suffix = ("model", ".safetensors") if fmt == "safetensors" else ("pytorch_model", ".bin")
    names = list(sd)
    groups = [names[i::shards] for i in range(shards)]
    weight_map = {}
    for number, group in enumerate(groups, start=1):
        file = f"{stem}{suffix}" if shards == 1 else f"{stem}-{number:05d}-of-{shards:05d}{suffix}"
        part = {name: sd[name].contiguous() for name in group}
        if fmt == "safetensors":
            save_file(part, str(folder / file), metadata={"format": "pt"})
        else:
            torch.save(part, folder / file)
        weight_map.update(dict.fromkeys(group, file))
    if shards > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in sd.values())},
                 "weight_map": weight_map}
        (folder / f"{stem}{suffix}.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def build_chatglm3_checkpoint(tmp: Path, *, fmt: str = "safetensors", shards: int = 1, seed: int = 0,
                              multi_query: bool = True, rope_ratio: float | None = None,
                              sp_model: Path | None = None, name: str = "chatglm3-tiny") -> Path:
    """A tiny random checkpoint in ChatGLM3's own layout at ``tmp/name`` (config.json, weights, tokenizer.model)."""
    import sentencepiece as spm

    sp_path = sp_model or build_sentencepiece_chatglm3(tmp)
    folder = Path(tmp) / name
    folder.mkdir(parents=True, exist_ok=True)
    sp_vocab = spm.SentencePieceProcessor(model_file=str(sp_path)).vocab_size()
    cfg = chatglm3_config(sp_vocab, multi_query=multi_query, rope_ratio=rope_ratio)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "ChatGLMTokenizer", "padding_side": "left",
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}}), encoding="utf-8")
    (folder / "tokenizer.model").write_bytes(Path(sp_path).read_bytes())
    save_tensor_shards(chatglm3_state_dict(cfg, seed), folder, fmt, shards)
    return folder


def build_tiny_causal_lm(tmp: Path, arch: str = "glm", template: str = "chatglm3", seed: int = 0) -> Path:
    """A random ``glm``/``llama``/``qwen2`` causal LM + tokenizer for ``template``, saved at ``tmp/tiny-{arch}``."""
    from transformers import AutoModelForCausalLM, GlmConfig, LlamaConfig, Qwen2Config

    tokenizer = build_tokenizer(tmp, template)
    stop_ids = get_template(template).stop_token_ids(tokenizer)
    config_class = {"glm": GlmConfig, "llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    config = config_class(
        vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        initializer_range=0.2, tie_word_embeddings=False, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = stop_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder = Path(tmp) / f"tiny-{arch}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_chatglm3_lora(tmp: Path, ckpt: Path, *, targets: tuple[str, ...] = ("query_key_value",), r: int = 4,
                        alpha: int = 8, fmt: str = "safetensors", seed: int = 1, std: float = 0.2) -> Path:
    """A peft LoRA adapter for ``ckpt`` in ChatGLM3 naming (``tmp/chatglm3-lora``), as finetune_demo saves one."""
    from safetensors.torch import save_file

    cfg = json.loads((Path(ckpt) / "config.json").read_text(encoding="utf-8"))
    sd = chatglm3_state_dict(cfg)  # only for the shapes
    gen = torch.Generator().manual_seed(seed)
    adapter = {}
    for name, weight in sd.items():
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module.rsplit(".", 1)[-1] in targets:
            out_features, in_features = weight.shape
            adapter[f"base_model.model.{module}.lora_A.weight"] = torch.randn(r, in_features, generator=gen) * std
            adapter[f"base_model.model.{module}.lora_B.weight"] = torch.randn(out_features, r, generator=gen) * std
    folder = Path(tmp) / "chatglm3-lora"
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(ckpt), "r": r,
        "lora_alpha": alpha, "lora_dropout": 0.1, "target_modules": list(targets), "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
        "revision": None, "auto_mapping": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if fmt == "safetensors":
        save_file(adapter, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(adapter, folder / "adapter_model.bin")
    return folder
