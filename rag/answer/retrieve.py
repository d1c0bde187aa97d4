"""Retrieval: dense (FAISS), keyword (BM25 over jieba tokens), hybrid fusion, optional reranker, refusal gates.

Hybrid search takes ``candidates`` from each retriever and fuses the rankings with reciprocal-rank fusion
(``sum_r weight_r / (rrf_k + rank_r)``) — robust because it needs no score calibration between cosine and BM25.
With ``retrieve.bridge`` a third ranking joins (in BM25 mode too): BM25 over the question's words translated by a
Chinese-English dictionary (:mod:`rag.index.bridge`), for questions asked in the other language than the text.
The retriever returns nothing, so the answer side refuses instead of answering from unrelated text, when a score
threshold is set and the best candidates are all below it, or when the question names something the index never
mentions (a proper name such as ``Kubernetes`` in no chunk: ``unknown_name_min_chars``, :mod:`rag.answer.names`).
Last, each hit's text becomes its passage (the chunk with its neighbours of the same section, ``passage_chars``) and
hits of one parent passage or of two editions of one text collapse into one (:mod:`rag.answer.passages`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Protocol

from rag.answer.blocks import rerank_by_blocks
from rag.answer.names import unknown_names
from rag.answer.passages import assemble
from rag.core.config import EmbedConfig, RetrieveConfig
from rag.core.errors import ConfigError
from rag.core.types import Hit
from rag.index.bm25 import tokenize
from rag.index.bridge import Dictionary, load_dictionary
from rag.index.reader import KnowledgeIndex

log = logging.getLogger(__name__)

MODES = ("dense", "bm25", "hybrid")
FUSIONS = ("rrf", "weighted")


class Reranker(Protocol):
    name: str

    def score(self, query: str, texts: list[str]) -> list[float]:
        """Relevance of each text to the query (higher is better)."""


class CrossEncoderReranker:
    """A sentence-transformers cross-encoder (e.g. bge-reranker), resolved like the embedder (local first)."""

    def __init__(self, model: str, embed_cfg: EmbedConfig) -> None:
        from sentence_transformers import CrossEncoder

        from rag.embed.embedder import resolve_model_path

        path, where = resolve_model_path(replace(embed_cfg, model=model, modelscope_id=""))
        log.info("reranker %s from %s", model, where)
        self.name = model
        self.model = CrossEncoder(str(path))

    def score(self, query: str, texts: list[str]) -> list[float]:
        return [float(s) for s in self.model.predict([(query, t) for t in texts])]


def validate(cfg: RetrieveConfig) -> None:
    if cfg.mode not in MODES:
        raise ConfigError(f"retrieve.mode={cfg.mode!r} is not one of {', '.join(MODES)}")
    if cfg.fusion not in FUSIONS:
        raise ConfigError(f"retrieve.fusion={cfg.fusion!r} is not one of {', '.join(FUSIONS)}")
    if cfg.top_k < 1:
        raise ConfigError(f"retrieve.top_k={cfg.top_k} must be at least 1")
    if cfg.candidates < cfg.top_k:
        raise ConfigError(f"retrieve.candidates={cfg.candidates} must be at least retrieve.top_k={cfg.top_k}")
    if cfg.block_weight < 0:
        raise ConfigError(f"retrieve.block_weight={cfg.block_weight} must be 0 (off) or more, e.g. retrieve.block_weight=0.5")
    if cfg.bridge_weight < 0:
        raise ConfigError(f"retrieve.bridge_weight={cfg.bridge_weight} must be 0 or more, e.g. retrieve.bridge_weight=1")
    if cfg.passage_chars < 0:
        raise ConfigError(f"retrieve.passage_chars={cfg.passage_chars} must be 0 (off: the chunk is the passage) or "
                          "more, e.g. retrieve.passage_chars=1200")
    if not 0 <= cfg.edition_similarity <= 1:
        raise ConfigError(f"retrieve.edition_similarity={cfg.edition_similarity} must be between 0 (off) and 1, "
                          "e.g. retrieve.edition_similarity=0.6")
    if cfg.unknown_name_min_chars < 0:
        raise ConfigError(f"retrieve.unknown_name_min_chars={cfg.unknown_name_min_chars} must be 0 (off) or more")


def _normalised(scores: dict[int, float]) -> dict[int, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    span = high - low
    return {i: (s - low) / span if span > 0 else 1.0 for i, s in scores.items()}


def fuse(dense: list[tuple[int, float]], bm25: list[tuple[int, float]], cfg: RetrieveConfig,
         bridge: list[tuple[int, float]] | None = None) -> list[tuple[int, float]]:
    """Fuse (id, score) rankings (best first) into one, best first: dense, BM25 and the dictionary bridge's BM25
    ranking (:mod:`rag.index.bridge`; empty when off)."""
    fused: dict[int, float] = {}
    rankings = ((cfg.dense_weight, dense), (cfg.bm25_weight, bm25), (cfg.bridge_weight, bridge or []))
    if cfg.fusion == "rrf":
        for weight, ranking in rankings:
            for rank, (chunk_id, _) in enumerate(ranking):
                fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (cfg.rrf_k + rank + 1)
    else:
        for weight, ranking in rankings:
            for chunk_id, score in _normalised(dict(ranking)).items():
                fused[chunk_id] = fused.get(chunk_id, 0.0) + weight * score
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


class Retriever:
    """Search an index. Settings come from ``RetrieveConfig``; ``search`` can override top_k and mode per call."""

    def __init__(self, index: KnowledgeIndex, cfg: RetrieveConfig, reranker: Reranker | None = None) -> None:
        validate(cfg)
        self.index = index
        self.cfg = cfg
        self.reranker = reranker
        if reranker is None and cfg.reranker:
            self.reranker = CrossEncoderReranker(cfg.reranker, index.cfg.embed)
        self.dictionary = load_dictionary(cfg.bridge)

    def effective_mode(self, mode: str | None = None) -> str:
        """The mode actually used: dense and hybrid fall back to BM25 when the index has no dense part."""
        mode = mode or self.cfg.mode
        if mode not in MODES:
            raise ConfigError(f"retrieve.mode={mode!r} is not one of {', '.join(MODES)}")
        return mode if self.index.dense_enabled or mode == "bm25" else "bm25"

    def search(self, query: str, top_k: int | None = None, mode: str | None = None, **overrides: Any) -> list[Hit]:
        """The best chunks for ``query``, best first; empty if nothing passes the threshold.

        Args:
            query: the question.
            top_k: how many hits (default ``cfg.top_k``).
            mode: dense | bm25 | hybrid (default ``cfg.mode``).
            **overrides: any other RetrieveConfig field for this call (e.g. ``score_threshold=0.5``).
        """
        cfg = replace(self.cfg, **overrides) if overrides else self.cfg
        top_k = top_k or cfg.top_k
        mode = self.effective_mode(mode)
        if not query.strip():
            return []
        pool = max(cfg.candidates, top_k)
        dense = self.index.search_dense(query, pool) if mode in ("dense", "hybrid") else []
        bm25 = self.index.search_bm25(query, pool) if mode in ("bm25", "hybrid") else []
        dictionary = self._dictionary(cfg)
        translated, bridge = self.index.search_bridge(query, dictionary, pool) if dictionary and mode != "dense" \
            else ("", [])
        if not (dense or bm25 or bridge) or self._below_threshold(dense, bm25, cfg, mode):
            return []
        if mode == "dense":
            ranking = dense
        elif mode == "bm25" and not bridge:
            ranking = bm25
        else:
            ranking = fuse(dense, bm25, cfg, bridge)
        keep = max(top_k, cfg.rerank_candidates) if self.reranker is not None else top_k
        # hits that collapse into a better one (children of one parent, editions of one text) leave their slot to
        # the next ones: keep three times as many until passages are assembled
        shortlist = max(keep, 3 * top_k) if cfg.passage_chars > 0 or cfg.edition_similarity > 0 else keep
        ranking = ranking[:max(shortlist, cfg.block_candidates if cfg.block_weight > 0 else 0)]
        chunks = self.index.chunks([i for i, _ in ranking])
        if cfg.block_weight > 0 and mode != "dense":
            terms = set(tokenize(query)) | set(translated.split())
            weights = {t: w for t, w in self.index.idfs(terms).items() if w is not None}
            ranking = rerank_by_blocks(ranking, {i: c.text for i, c in chunks.items()}, weights, cfg.rrf_k,
                                       cfg.block_weight)
        ranking = ranking[:shortlist]
        dense_scores, bm25_scores = dict(dense), dict(bm25)
        hits = [
            Hit(chunks[i], score, dense_scores.get(i), bm25_scores.get(i))
            for i, score in ranking
            if i in chunks  # a writer may have deleted it since the ranking was computed
        ]
        if cfg.unknown_name_min_chars > 0 and hits and self.index.bm25 is not None:
            unknown = unknown_names(query, self.index.bm25, [h.chunk.text for h in hits[:keep]],
                                    cfg.unknown_name_min_chars)
            if unknown:
                log.info("no hits: the index never mentions %s", ", ".join(unknown))
                return []
        if self.reranker is not None and hits:
            scores = self.reranker.score(query, [h.chunk.text for h in hits])
            hits = [replace(h, score=s, rerank_score=s) for h, s in zip(hits, scores, strict=True)]
            hits.sort(key=lambda h: -h.score)
        return assemble(hits, self.index.neighbours, top_k, cfg.passage_chars, cfg.edition_similarity)

    def _dictionary(self, cfg: RetrieveConfig) -> Dictionary | None:
        """The bridge dictionary for this call: the retriever's own, or another when a call overrides the setting."""
        return self.dictionary if cfg.bridge == self.cfg.bridge else load_dictionary(cfg.bridge)

    @staticmethod
    def _below_threshold(dense: list[tuple[int, float]], bm25: list[tuple[int, float]], cfg: RetrieveConfig,
                         mode: str) -> bool:
        """True when every enabled threshold fails (a retriever with no candidates fails its threshold)."""
        checks = []
        if cfg.score_threshold > 0 and mode in ("dense", "hybrid"):
            checks.append(bool(dense) and dense[0][1] >= cfg.score_threshold)
        if cfg.bm25_threshold > 0 and mode in ("bm25", "hybrid"):
            checks.append(bool(bm25) and bm25[0][1] >= cfg.bm25_threshold)
        return bool(checks) and not any(checks)
