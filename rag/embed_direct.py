"""The direct ingest path of :class:`rag.embed.SentenceTransformerEmbedder` on CUDA: tokenisation ahead of the GPU
(a background thread, or spawned processes), padding, and the plan (encoder, tokenizer spec, pooling) it runs with.

Kept apart from :mod:`rag.embed` so that module reads as the embedder protocol plus model resolution; nothing here
imports torch at module level.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

DIRECT_MIN_TEXTS = 32  # embed_documents on CUDA takes the direct path from this many texts on
DIRECT_BATCH = 128  # texts per encoder forward on the direct path (at least embed.batch_size)
DIRECT_MODES = ("auto", "on", "off")
# self-check probes: Chinese, English, whitespace at both ends, and (appended at run time) one past max_seq_length
_PROBES = ["服务器磁盘空间不足时，先查看分区使用率。", "To connect to the office VPN, install WireGuard.", "  年假 \n"]

Encoded = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # flat token ids, lengths, flat type ids (or None)


@dataclass(frozen=True)
class TokenizerSpec:
    """What a tokeniser process needs (picklable): the fast tokenizer's JSON and how the model's tokenizer truncates."""

    json: str
    max_length: int
    truncation_side: str
    type_ids: bool


def _make_tokenizer(spec: TokenizerSpec) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(spec.json)
    tokenizer.no_padding()  # batches are padded after sorting, to their own longest row
    tokenizer.enable_truncation(spec.max_length, strategy="longest_first", direction=spec.truncation_side)
    return tokenizer


def _encode_texts(tokenizer: Any, texts: list[str], type_ids: bool) -> Encoded:
    """Unpadded, flat: cheap to pickle back from a worker process."""
    encodings = tokenizer.encode_batch(texts)
    rows = [e.ids for e in encodings]
    lengths = np.fromiter(map(len, rows), np.int32, len(rows))
    ids = np.fromiter(itertools.chain.from_iterable(rows), np.int64, int(lengths.sum()))
    types = np.fromiter(itertools.chain.from_iterable(e.type_ids for e in encodings), np.int64, len(ids)) \
        if type_ids else None
    return ids, lengths, types


_WORKER: dict[str, Any] = {}  # in a tokeniser process: its tokenizer and spec


def _init_worker(spec: TokenizerSpec) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per process: N processes x all-core encodes thrash
    _WORKER.update(tokenizer=_make_tokenizer(spec), spec=spec)


def _encode_in_worker(texts: list[str]) -> Encoded:
    return _encode_texts(_WORKER["tokenizer"], texts, _WORKER["spec"].type_ids)


def _in_order(submit: Callable[[list[str]], Future[Encoded]], jobs: list[list[str]], depth: int) -> Iterator[Encoded]:
    """``submit(job).result()`` in job order with ``depth`` jobs in flight (memory stays bounded on huge ingests)."""
    pending: deque[Future[Encoded]] = deque()
    queue = iter(jobs)
    try:
        pending.extend(submit(job) for job in itertools.islice(queue, depth))
        while pending:
            result = pending.popleft().result()
            pending.extend(submit(job) for job in itertools.islice(queue, 1))
            yield result
    finally:
        for future in pending:
            future.cancel()


def _pad(parts: list[Encoded], pad_id: int, pad_type_id: int, left: bool) -> tuple[np.ndarray, ...]:
    """Flat pieces of one batch -> ids, attention mask (and type ids): [rows, longest row], padded on ``left`` or right."""
    lengths = np.concatenate([p[1] for p in parts])
    width = int(lengths.max())
    columns = np.arange(width)[None, :]
    mask = columns >= width - lengths[:, None] if left else columns < lengths[:, None]  # row-major: tokens in order
    ids = np.full(mask.shape, pad_id, np.int64)
    ids[mask] = np.concatenate([p[0] for p in parts])
    if parts[0][2] is None:
        return ids, mask
    types = np.full(mask.shape, pad_type_id, np.int64)
    types[mask] = np.concatenate([p[2] for p in parts if p[2] is not None])
    return ids, mask, types


_POOLS: dict[tuple[str, str, int, int], Any] = {}  # tokeniser process pools, per (folder, device, length, workers)


@dataclass
class DirectPlan:
    """The pieces of a SentenceTransformer the direct path runs itself (see the module docstring)."""

    encoder: Any  # the transformers model inside the Transformer module
    spec: TokenizerSpec
    tokenizer: Any  # tokenizers.Tokenizer made from spec, for this process (read-only after creation: thread-safe)
    pad_id: int
    pad_type_id: int
    left_padding: bool
    pooling: str  # mean | cls


def direct_plan(model: Any, prefix: str) -> tuple[DirectPlan | None, str]:
    """(plan, "") when ``model`` is Transformer -> Pooling(mean | cls) [-> Normalize] with a fast tokenizer, else
    (None, why)."""
    modules = list(model)
    names = [type(m).__name__ for m in modules]
    if names[:2] != ["Transformer", "Pooling"] or names[2:] not in ([], ["Normalize"]):
        return None, f"modules {' -> '.join(names)}"
    transformer, pooling = modules[0], modules[1]
    config = pooling.get_config_dict()
    mode = config.get("pooling_mode") or [k.removeprefix("pooling_mode_") for k, v in config.items()
                                          if k.startswith("pooling_mode_") and v is True]  # sentence-transformers < 6
    mode = {"mean_tokens": "mean", "cls_token": "cls"}.get(mode[0], mode[0]) if isinstance(mode, list) and \
        len(mode) == 1 else mode
    if mode not in ("mean", "cls"):
        return None, f"pooling {mode}"
    if prefix and not config.get("include_prompt", True):
        return None, "pooling without the prompt tokens"
    tokenizer: Any = getattr(transformer, "tokenizer", None)
    encoder = getattr(transformer, "auto_model", None)
    if encoder is None or not getattr(tokenizer, "is_fast", False) or getattr(transformer, "do_lower_case", False):
        return None, "no fast tokenizer" if encoder is not None else "no transformers model"
    max_length = int(transformer.max_seq_length or tokenizer.model_max_length)
    spec = TokenizerSpec(tokenizer.backend_tokenizer.to_str(), max_length, tokenizer.truncation_side,
                         "token_type_ids" in tokenizer.model_input_names)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return DirectPlan(encoder, spec, _make_tokenizer(spec), int(pad_id), int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
                      tokenizer.padding_side == "left", str(mode)), ""
