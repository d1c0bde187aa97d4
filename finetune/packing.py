"""Packing: several tokenized conversations per row, each attending only to itself.

Why not TRL's own ``packing=True``: its BFD packing is padding-free, i.e. the whole micro-batch is flattened into ONE
row. With flash-attention's variable-length kernels that costs nothing, but with PyTorch's SDPA (what transformers
uses when flash-attn is not installed, the usual case) the per-conversation boundaries become a dense
``[tokens, tokens]`` mask over the whole micro-batch, so attention grows with the square of the micro-batch: measured
on an H100 with ChatGLM3-6B's shape it made packing slower than plain length-grouped padding
(docs/BENCHMARKS.md, "Finetune throughput").

Here each row holds at most ``max_length`` tokens (best-fit decreasing, so rows come out nearly full) and the
micro-batch is ``[rows, max_length]``: attention costs ``rows x max_length^2``, the same as unpacked rows, while no
compute is spent on padding. Each conversation's ``position_ids`` restart at 0; transformers turns the restarts into
a block-diagonal causal mask (SDPA, eager) or variable-length spans (flash attention), so no token sees another
conversation, and the first label of each conversation is masked because the token before it belongs to the
previous one. The loss over a packed row therefore equals the loss over the same conversations one at a time
(tests/integration/test_finetune_train.py checks it against padded batches; bench/train_speed.py on the GPU shape).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from typing import Any

IGNORE = -100


def pack_rows(rows: Sequence[dict[str, list[int]]], max_length: int, seed: int) -> list[dict[str, list[int]]]:
    """Best-fit-decreasing packing of ``input_ids``/``labels`` rows into rows of at most ``max_length`` tokens, with
    ``position_ids`` restarting per conversation. A row longer than ``max_length`` stays alone (the templates cut
    conversations to the limit before this). The packed rows are shuffled with ``seed`` so that batches mix lengths."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]), reverse=True)
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin index), sorted: the best fit is the first with enough space
    for i in order:
        size = len(rows[i]["input_ids"])
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            space, b = free.pop(at)
            bins[b].append(i)
            bisect.insort(free, (space - size, b))
        else:
            bins.append([i])
            bisect.insort(free, (max_length - size, len(bins) - 1))
    packed = [_join([rows[i] for i in members]) for members in bins]
    random.Random(seed).shuffle(packed)
    return packed


def _join(members: Sequence[dict[str, list[int]]]) -> dict[str, list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for row in members:
        ids += row["input_ids"]
        labels += [IGNORE, *row["labels"][1:]]  # the token before a conversation's first one is another conversation
        positions += range(len(row["input_ids"]))
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


class PackedCollator:
    """Pads packed rows to the longest in the micro-batch. The padding gets labels -100 and positions that restart
    at 0 (a conversation of its own, attended by nobody else); no ``attention_mask`` is passed, so transformers reads
    the conversation boundaries from ``position_ids``. ``num_real_tokens`` (tokens without the padding) is for the
    trainer's tokens/s figure and is removed before the model is called; a Python int, not a tensor, so that the
    batch's move to the GPU leaves it on the host and counting it never waits for the GPU (a sync per step)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        length = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids, labels, positions = [], [], []
        for e in examples:
            pad = length - len(e["input_ids"])
            ids.append(list(e["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(e["labels"]) + [IGNORE] * pad)
            positions.append(list(e["position_ids"]) + list(range(pad)))
        real = sum(len(e["input_ids"]) for e in examples)  # the trainer pops it to count tokens/s correctly
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "position_ids": torch.tensor(positions), "num_real_tokens": real}
