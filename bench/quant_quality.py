"""What int8 / int4 weight-only quantization does to a *trained* model's answers (issue 21's quality check).

On random weights the comparison says little (bench/decode_quant.py: logits of a random model are close together and
chaotic through 28 layers, so greedy agreement is a stress test, not a verdict). No trained ChatGLM3 checkpoint can
be downloaded here, so this bench trains a small GLM-architecture model itself (ChatGLM3's layer layout: partial
rotary, grouped-query attention, q/k/v biases, SwiGLU; byte-level BPE) on the project's own Chinese and English
documentation for a few minutes on the CPU, then compares on held-out text:

- **perplexity** of the held-out text (last ``--eval-share`` of every file, never trained on): float32 weights vs
  the weights the fast decoder serves quantized (rag.llm.fastgen.quant.quantize_served: int8 per row; int4 per group
  of 128 / 64 / 32 input columns, the output layer int8), put back dequantized -- the numbers the GPU kernels compute
  (their own error against these, ~0.2 % relative in bf16, is checked by ``pytest -m gpu tests/unit/test_fastgen_quant.py``);
- **logits** relative L2 error against float32 on the held-out windows;
- **greedy agreement over --new-tokens**: from ``--prompts`` held-out prompts, float32 greedy decoding gives the
  reference continuation; each quantized model, fed the same tokens (teacher-forced), picks its own greedy token at
  every position: the share of positions where it picks the reference's token; and free-running, how many tokens
  the two greedy continuations share from the start.

    python bench/quant_quality.py --out bench/results/quant_quality_cpu.jsonl      # ~6 min on 2 CPU cores
    python bench/quant_quality.py --steps 20 --prompts 4                             # a smoke run

Figures depend on how well the little model is trained (a longer run sharpens its predictions, which makes greedy
tokens harder to flip); the float32 perplexity is printed next to them so they can be read against it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KINDS = ("int8", "int4")


def texts(patterns: list[str], eval_share: float) -> tuple[list[str], list[str]]:
    """(train, held-out) text: every file's last ``eval_share`` is held out."""
    train, held = [], []
    for pattern in patterns:
        for path in sorted(ROOT.glob(pattern)):
            text = path.read_text(encoding="utf-8", errors="replace")
            cut = int(len(text) * (1 - eval_share))
            train.append(text[:cut])
            held.append(text[cut:])
    if not train:
        raise SystemExit(f"no text matches {patterns}")
    return train, held


def windows(ids: list[int], length: int) -> torch.Tensor:
    count = len(ids) // length
    return torch.tensor(ids[: count * length]).view(count, length)


def build(vocab: int, args: argparse.Namespace) -> Any:
    from transformers import GlmConfig, GlmForCausalLM

    heads = args.hidden // 64
    config = GlmConfig(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3 // 16 * 16,
                       num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                       head_dim=64, partial_rotary_factor=0.5, attention_bias=True, tie_word_embeddings=False,
                       max_position_embeddings=args.seq * 2, pad_token_id=0, attn_implementation="sdpa")
    return GlmForCausalLM(config)


def train(model: Any, data: torch.Tensor, args: argparse.Namespace) -> list[float]:
    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    losses = []
    model.train()
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = data[torch.randint(len(data), (args.batch,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss:.3f}", file=sys.stderr)
    model.eval()
    return losses


@torch.no_grad()
def served_weights(model: Any, kind: str) -> dict[str, torch.Tensor]:
    """The weights the fast decoder serves for ``kind`` ('float32': the model's own), by parameter name."""
    from rag.llm.fastgen.quant import quantize_served, served_linears

    linears = served_linears(model)
    if kind == "float32":
        return {name: module.weight.detach().clone() for name, module in linears.items()}
    return {name: layer.dequantize(torch.float32) for name, layer in quantize_served(model, kind, release=False).items()}


@torch.no_grad()
def put(model: Any, weights: dict[str, torch.Tensor]) -> None:
    from rag.llm.fastgen.quant import served_linears

    for name, module in served_linears(model).items():
        module.weight.copy_(weights[name])


@torch.no_grad()
def logits_of(model: Any, data: torch.Tensor, batch: int = 16) -> torch.Tensor:
    return torch.cat([model(input_ids=data[i:i + batch]).logits.float() for i in range(0, len(data), batch)])


def perplexity(logits: torch.Tensor, data: torch.Tensor) -> float:
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1))
    return float(loss.exp())


@torch.no_grad()
def greedy(model: Any, prompt: torch.Tensor, new: int) -> torch.Tensor:
    out = model.generate(input_ids=prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    return out[:, prompt.shape[1]:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", default="docs/*.md,README.md,eval/README.md,rag/**/*.py,finetune/**/*.py,bench/*.py",
                        help="comma-separated globs (relative to the repository)")
    parser.add_argument("--eval-share", type=float, default=0.1)
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: as is)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also append the JSON lines here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    from finetune.tiny import build_tokenizer

    train_text, held_text = texts([p.strip() for p in args.text.split(",") if p.strip()], args.eval_share)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = build_tokenizer(Path(folder) / "tok", "chatglm3", texts=train_text, vocab_size=args.vocab)
    encode = lambda parts: [i for t in parts for i in tokenizer(t, add_special_tokens=False)["input_ids"]]  # noqa: E731
    train_ids, held_ids = windows(encode(train_text), args.seq), windows(encode(held_text), args.seq)
    model = build(len(tokenizer), args)
    params = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()
    losses = train(model, train_ids, args)
    lines: list[dict[str, Any]] = [{
        "stage": "model", "params": params, "vocab": len(tokenizer), "hidden": args.hidden, "layers": args.layers,
        "train_tokens_seen": args.steps * args.batch * args.seq, "train_windows": len(train_ids),
        "held_out_windows": len(held_ids), "held_out_tokens": held_ids.numel(), "train_s": round(time.perf_counter() - started, 1),
        "first_loss": round(losses[0], 3), "last_loss": round(sum(losses[-20:]) / len(losses[-20:]), 3),
        "torch": torch.__version__, "device": "cpu", "threads": torch.get_num_threads()}]
    own = served_weights(model, "float32")
    reference_logits = logits_of(model, held_ids)
    picks = random.Random(args.seed).sample(range(len(held_ids)), min(args.prompts, len(held_ids)))
    prompts = held_ids[picks, : args.prompt_tokens]
    reference = greedy(model, prompts, args.new_tokens)
    forced = torch.cat([prompts, reference], dim=1)
    base_ppl = perplexity(reference_logits, held_ids)
    lines.append({"stage": "float32", "perplexity": round(base_ppl, 3)})
    for kind in KINDS:
        put(model, served_weights(model, kind))
        logits = logits_of(model, held_ids)
        error = float((logits - reference_logits).norm() / reference_logits.norm())
        teacher = logits_of(model, forced)[:, args.prompt_tokens - 1:-1].argmax(-1)  # its pick at every position
        agreement = float((teacher == reference).float().mean())
        free = greedy(model, prompts, args.new_tokens)
        same = (free == reference).int().cumprod(dim=1).sum(dim=1).float()
        ppl = perplexity(logits, held_ids)
        lines.append({"stage": kind, "perplexity": round(ppl, 3), "perplexity_vs_float32": round(ppl / base_ppl, 4),
                      "logits_rel_l2": round(error, 4), "greedy_agreement_teacher_forced": round(agreement, 4),
                      "free_running_shared_prefix_mean": round(float(same.mean()), 1),
                      "free_running_identical": f"{int((same == args.new_tokens).sum())}/{len(same)}",
                      "new_tokens": args.new_tokens, "prompts": len(prompts)})
        put(model, own)
    lines.append({"stage": "summary", "float32_perplexity": round(base_ppl, 3), **{
        line["stage"]: {k: line[k] for k in ("perplexity_vs_float32", "logits_rel_l2", "greedy_agreement_teacher_forced",
                                             "free_running_identical")} for line in lines if line["stage"] in KINDS}})
    for line in lines:
        print(json.dumps(line, ensure_ascii=False), flush=True)
        if args.out:
            with args.out.open("a", encoding="utf-8") as out:
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
