"""LangChain at the edge: a ``BaseRetriever`` over our Retriever, for users who build their own chains."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever

from rag.core.types import Hit

MODES = ("dense", "bm25", "hybrid")
SEARCH_TYPES = {"similarity": "dense"}  # LangChain's vector-store name for what we call dense
KEYWORDS = ("k", "mode", "search_type", "source", "filter")


def hit_to_langchain(hit: Hit) -> LCDocument:
    """A hit as a LangChain Document: ``source`` (path relative to the knowledge folder) and ``page`` (1-based, None
    for files without pages) as LangChain's loaders name them, then ours: ``chunk_id`` (also ``Document.id``), ``id``
    (the same, kept for older callers), ``heading``, ``start``/``end`` offsets, the scores, and ``also_in`` (other
    files holding the same text, ``retrieve.edition_similarity``)."""
    chunk = hit.chunk
    return LCDocument(
        id=str(chunk.id),
        page_content=chunk.text,
        metadata={
            "source": chunk.source, "page": chunk.page, "heading": " > ".join(chunk.heading), "chunk_id": chunk.id,
            "id": chunk.id, "start": chunk.start, "end": chunk.end, "score": hit.score,
            "dense_score": hit.dense_score, "bm25_score": hit.bm25_score, "rerank_score": hit.rerank_score,
            "also_in": list(hit.also_in),
        },
    )


class KnowledgeBaseRetriever(BaseRetriever):
    """Our hybrid retriever as a LangChain retriever.

    ``KnowledgeBaseRetriever(retriever=Retriever(...), k=5).invoke("问题")`` -> LangChain Documents, best first. Each
    of ``k``, ``mode`` (dense | bm25 | hybrid; ``search_type`` is the same, with LangChain's ``"similarity"`` =
    dense) and ``source`` (only chunks of this file, among the best ``retrieve.candidates``; also
    ``filter={"source": ...}``) can be set here or per call: ``invoke(query, k=1, mode="bm25")``.
    ``ainvoke`` runs the search in a worker thread, leaving the event loop free.
    """

    retriever: Any  # rag.answer.retrieve.Retriever (Any: pydantic would have to validate its fields)
    k: int = 5
    mode: str | None = None  # None: the index's retrieve.mode
    source: str | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[LCDocument]:
        return self.search(query, **kwargs)

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       **kwargs: Any) -> list[LCDocument]:
        return await asyncio.to_thread(self.search, query, **kwargs)

    def search(self, query: str, **kwargs: Any) -> list[LCDocument]:
        """The documents for ``query`` with this call's ``k``/``mode``/``search_type``/``source``/``filter``.

        Raises:
            ValueError: a bad k, mode or filter (the message names the value and the valid ones).
            TypeError: a keyword this retriever does not take.
        """
        kwargs.pop("verbose", None)  # LangChain passes invoke's verbose= on to the retriever
        unknown = [key for key in kwargs if key not in KEYWORDS]
        if unknown:
            raise TypeError(f"unexpected keyword {unknown[0]!r}: KnowledgeBaseRetriever takes {', '.join(KEYWORDS)}")
        k = kwargs.get("k", self.k)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r} must be at least 1")
        mode = self._mode(kwargs)
        source = self._source(kwargs)
        if source is None:
            hits = self.retriever.search(query, top_k=k, mode=mode)
        else:  # cheap: filter the candidate pool, so a file outside it yields nothing
            pool = max(k, self.retriever.cfg.candidates)
            # edition dedup off: the asked-for file's copy of a text must not collapse into another file's
            hits = [h for h in self.retriever.search(query, top_k=pool, mode=mode, edition_similarity=0.0)
                    if h.chunk.source == source][:k]
        return [hit_to_langchain(h) for h in hits]

    def _mode(self, kwargs: Mapping[str, Any]) -> str | None:
        for key in ("mode", "search_type"):
            if kwargs.get(key) is not None:
                value = kwargs[key]
                if value not in MODES and value not in SEARCH_TYPES:
                    raise ValueError(f"{key}={value!r} is not one of {', '.join([*MODES, *SEARCH_TYPES])}")
                return SEARCH_TYPES.get(value, value)
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {', '.join(MODES)}")
        return self.mode

    def _source(self, kwargs: Mapping[str, Any]) -> str | None:
        source = kwargs.get("source", self.source)
        filters = kwargs.get("filter")
        if filters is not None:
            if not isinstance(filters, Mapping) or set(filters) - {"source"}:
                keys = sorted(set(filters) - {"source"}) if isinstance(filters, Mapping) else filters
                raise ValueError(f"filter keys {keys!r} are not supported: filter by 'source' only")
            source = filters.get("source", source)
        return source
