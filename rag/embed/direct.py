"""The direct ingest path of :class:`rag.embed.embedder.SentenceTransformerEmbedder` on CUDA: tokenisation ahead of the GPU
(a background thread, or spawned processes), padding, and the plan (encoder, tokenizer spec, pooling) it runs with.

:class:`DirectEncoder` is that path as an object the embedder owns: built with the model and the settings it needs,
it decides whether a call takes the path (plan and self-check, once), tokenises ahead and runs the forward with
pooling on the device. The tokeniser process pools live here too, one per (model folder, device, max length,
workers) per process, and are shut down at interpreter exit. Nothing here imports torch at module level.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

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


class TokenizerPools:
    """Tokeniser process pools, one per (model folder, device, max length, workers), started on first use (spawn, not
    fork: CUDA) and shared by the embedders of one model in this process.

    :meth:`shutdown` runs at interpreter exit (atexit): a pool still alive when the interpreter tears its modules down
    is collected after ``concurrent.futures.process`` lost its globals, and its callback then prints ``Exception
    ignored ... AttributeError: 'NoneType' object has no attribute 'util'``.
    """

    def __init__(self) -> None:
        self._pools: dict[tuple[str, str, int, int], Any] = {}
        self._lock = threading.Lock()
        atexit.register(self.shutdown)

    def get(self, key: tuple[str, str, int, int], spec: TokenizerSpec) -> Any:
        """The pool for ``key`` (its last item is the number of processes), started with ``spec``'s tokenizer."""
        with self._lock:
            if key not in self._pools:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                self._pools[key] = ProcessPoolExecutor(key[-1], mp_context=multiprocessing.get_context("spawn"),
                                                       initializer=_init_worker, initargs=(spec,))
            return self._pools[key]

    def discard(self, key: tuple[str, str, int, int]) -> None:
        """Forget a broken pool (the next call starts a new one)."""
        with self._lock:
            pool = self._pools.pop(key, None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        """Stop every pool's processes and wait for them."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


POOLS = TokenizerPools()  # this process's tokeniser pools


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


class DirectEncoder:
    """The direct path for one SentenceTransformer model on one device (see the module docstring).

    Owned by :class:`rag.embed.embedder.SentenceTransformerEmbedder`, which calls :meth:`ready` then :meth:`embed`.
    ``encode`` is the embedder's own ``SentenceTransformer.encode`` path, ``(texts, prefix) -> [n, dim]`` unit rows:
    the self-check compares against it.
    """

    def __init__(self, model: Any, encode: Callable[[list[str], str], np.ndarray], *, name: str, path: Path,
                 device: str, dim: int, mode: str, tokenize_workers: int, batch_size: int,
                 passage_prefix: str) -> None:
        self.model, self.encode = model, encode
        self.name, self.path, self.device, self.dim = name, path, device, dim
        self.mode, self.tokenize_workers, self.encode_batch_size = mode, tokenize_workers, batch_size
        self.passage_prefix = passage_prefix
        self.plan: DirectPlan | None = None
        self.failure = ""  # why the direct path is not used for this model (warned once)
        self._plan_lock = threading.Lock()

    def batch_size(self) -> int:
        """Texts per forward: ``DIRECT_BATCH`` on a GPU; ``embed.batch_size`` elsewhere (activations in RAM)."""
        return max(DIRECT_BATCH, self.encode_batch_size) if self.device.startswith("cuda") else self.encode_batch_size

    def workers(self) -> int:
        # a thread by default: on an H100 it fed the GPU as well as 4 processes (95 % of the raw forward) without
        # their start-up (seconds: each imports the main module) or their threads competing with kernel launches
        return max(1, self.tokenize_workers)

    def ready(self, n_texts: int) -> bool:
        """Whether these texts take the direct path; the first time, build the plan and run the self-check."""
        if self.mode == "off" or n_texts == 0 or self.failure:
            return False
        if self.mode == "auto" and not (self.device.startswith("cuda") and n_texts >= DIRECT_MIN_TEXTS):
            return False
        with self._plan_lock:
            if self.plan is None and not self.failure:
                try:
                    plan, why = direct_plan(self.model, self.passage_prefix)
                    if plan is not None:
                        self.plan = plan
                        why = self._self_check()
                except Exception as exc:  # a model layout this code does not know
                    why = f"{type(exc).__name__}: {exc}"
                if why:
                    self.plan, self.failure = None, why
                    logger.warning("embedder %s: the direct ingest path cannot reproduce this model (%s); using "
                                   "SentenceTransformer.encode", self.name, why)
        return self.plan is not None

    def _self_check(self) -> str:
        """"" when the direct path gives the model's own token ids and vectors (cosine >= 0.999) on the probes."""
        assert self.plan is not None
        probes = [*_PROBES, "磁盘 disk " * self.plan.spec.max_length]  # truncated
        if hasattr(self.model, "preprocess"):
            want = self.model.preprocess(probes, prompt=self.passage_prefix)
        else:  # sentence-transformers < 6
            want = self.model.tokenize([self.passage_prefix + t for t in probes])
        got = _pad([_encode_texts(self.plan.tokenizer, [self.passage_prefix + t for t in probes], False)],
                   self.plan.pad_id, 0, self.plan.left_padding)
        if not np.array_equal(want["input_ids"].numpy(), got[0]):
            return "its tokenizer gives other token ids"
        cosine = np.sum(self.encode(probes, self.passage_prefix) *
                        self.embed(probes, self.passage_prefix, None, workers=1), axis=1)
        return "" if cosine.min() >= 0.999 else f"vectors differ (cosine {cosine.min():.4f})"

    def tokenized(self, jobs: list[list[str]], workers: int) -> Iterator[Encoded]:
        """Each job's encoding, in order: from a pool of ``workers`` processes, or one background thread."""
        assert self.plan is not None
        spec, done = self.plan.spec, 0
        if workers > 1 and len(jobs) > 1:
            from concurrent.futures.process import BrokenProcessPool

            key = (str(self.path), self.device, spec.max_length, workers)
            try:
                pool = POOLS.get(key, spec)
                for encoded in _in_order(lambda job: pool.submit(_encode_in_worker, job), jobs, 2 * workers):
                    yield encoded
                    done += 1
                return
            except (BrokenProcessPool, OSError) as exc:  # a worker died or could not start
                logger.warning("tokeniser processes failed (%s); tokenising in this process", exc)
                POOLS.discard(key)
        tokenizer = self.plan.tokenizer
        with ThreadPoolExecutor(1, thread_name_prefix="embed-tokenize") as thread:  # Rust encodes without the GIL
            yield from _in_order(lambda job: thread.submit(_encode_texts, tokenizer, job, spec.type_ids),
                                 jobs[done:], 2)

    def embed(self, texts: list[str], prefix: str, progress: Callable[[int], None] | None,
              workers: int | None = None) -> np.ndarray:
        """float32 [n, dim] unit rows for ``texts`` (with ``prefix``), in their order; needs :meth:`ready` first."""
        import torch

        assert self.plan is not None
        plan, workers = self.plan, workers or self.workers()
        order = np.argsort([-len(t) for t in texts], kind="stable")  # batches of similar lengths: little padding
        size = self.batch_size()
        batches = [order[s : s + size] for s in range(0, len(texts), size)]
        split = workers if len(batches) < workers else 1  # few batches: tokenise each one in pieces, in parallel
        jobs = [[prefix + texts[i] for i in piece] for rows in batches
                for piece in np.array_split(rows, min(split, len(rows)))]
        encoded = self.tokenized(jobs, workers)
        vectors = torch.empty(len(texts), self.dim, device=self.device)  # float32, rows in `order`
        done = 0
        with torch.inference_mode():
            for rows in batches:
                parts = [next(encoded) for _ in range(min(split, len(rows)))]
                vectors[done : done + len(rows)] = self._forward(plan, *_pad(parts, plan.pad_id, plan.pad_type_id,
                                                                             plan.left_padding))
                done += len(rows)
                if progress is not None:
                    progress(done)
        out = np.empty((len(texts), self.dim), np.float32)
        out[order] = vectors.cpu().numpy()  # the one device-to-host copy
        return out

    def _forward(self, plan: DirectPlan, ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None = None) -> Any:
        """One padded batch -> [rows, dim] float32 unit vectors, on the device (no host sync on the way)."""
        import torch

        def device(array: np.ndarray) -> torch.Tensor:
            tensor = torch.from_numpy(array)
            if self.device.startswith("cuda"):
                tensor = tensor.pin_memory()  # a pinned source copies asynchronously: the host runs ahead
            return tensor.to(self.device, non_blocking=True)

        inputs = {"input_ids": device(ids)}
        full = bool(mask.all())  # no padding: no mask (transformers would check that on the GPU, a sync)
        if not full:
            inputs["attention_mask"] = device(mask.astype(np.int64))
        if types is not None:
            inputs["token_type_ids"] = device(types)
        hidden = plan.encoder(**inputs).last_hidden_state  # [rows, width, hidden]
        if plan.pooling == "cls":  # the first real token (sentence-transformers' choice, left padding included)
            first = inputs["attention_mask"].argmax(1) if plan.left_padding and not full else 0
            pooled = hidden[torch.arange(len(ids), device=hidden.device), first].float()
        elif full:
            pooled = hidden.sum(1, dtype=torch.float32) / hidden.shape[1]
        else:
            weights = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1, dtype=torch.float32) / weights.sum(1, dtype=torch.float32)
        return torch.nn.functional.normalize(pooled, dim=-1)
