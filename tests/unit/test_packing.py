"""Row packing for SFT (finetune/packing.py): every conversation kept whole, positions restarting per
conversation, padding that nobody learns from, and a real-token count the trainer can read without a GPU wait."""

from __future__ import annotations

import random
from itertools import pairwise

from finetune.packing import IGNORE, PackedCollator, pack_rows


def conversations(count: int, seed: int = 0) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    rows = []
    for n in range(count):
        length = rng.randint(3, 40)
        ids = [1000 * (n + 1) + i for i in range(length)]  # unique ids: every token says which conversation it is
        cut = rng.randint(1, length - 1)
        rows.append({"input_ids": ids, "labels": [IGNORE] * cut + ids[cut:]})
    return rows


def test_packing_keeps_every_conversation_whole_within_the_row_limit() -> None:
    rows = conversations(50)
    packed = pack_rows(rows, 64, seed=3)
    assert all(len(r["input_ids"]) <= 64 for r in packed)
    assert len(packed) < len(rows)  # something was packed together
    pieces = []
    for r in packed:
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0] + [len(r["input_ids"])]
        assert r["position_ids"] == [p for a, b in pairwise(starts) for p in range(b - a)]
        for a, b in pairwise(starts):
            pieces.append((r["input_ids"][a:b], r["labels"][a:b]))
    assert sorted(ids for ids, _ in pieces) == sorted(r["input_ids"] for r in rows)
    original = {tuple(r["input_ids"]): r["labels"] for r in rows}
    for ids, labels in pieces:  # the first label is masked: the token before it belongs to another conversation
        assert labels == [IGNORE, *original[tuple(ids)][1:]]


def test_collator_pads_with_unlearned_restarting_positions_and_counts_real_tokens_on_the_host() -> None:
    packed = pack_rows(conversations(20, seed=1), 64, seed=0)[:3]
    batch = PackedCollator(pad_token_id=7, pad_to_multiple_of=64)(packed)
    assert tuple(batch["input_ids"].shape) == (3, 64)
    real = sum(len(r["input_ids"]) for r in packed)
    # a plain int: moving the batch to the GPU leaves it on the host, so the token count never waits for the GPU
    assert type(batch["num_real_tokens"]) is int and batch["num_real_tokens"] == real
    for row, r in enumerate(packed):
        n, pad = len(r["input_ids"]), 64 - len(r["input_ids"])
        assert batch["input_ids"][row, n:].tolist() == [7] * pad
        assert batch["labels"][row, n:].tolist() == [IGNORE] * pad
        assert batch["position_ids"][row, n:].tolist() == list(range(pad))
    assert int((batch["labels"] != IGNORE).sum()) == sum(sum(x != IGNORE for x in r["labels"]) for r in packed)
    longest = max(len(r["input_ids"]) for r in packed)
    assert PackedCollator(0)(packed)["input_ids"].shape[1] == longest  # no multiple: the longest row sets the width
