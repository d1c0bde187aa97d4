"""LangChain at the edge: a ``BaseRetriever`` over our Retriever, for users who build their own chains."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever

from rag.core.types import Hit


def hit_to_langchain(hit: Hit) -> LCDocument:
    chunk = hit.chunk
    return LCDocument(
        page_content=chunk.text,
        metadata={
            "id": chunk.id, "source": chunk.source, "page": chunk.page, "heading": " > ".join(chunk.heading),
            "start": chunk.start, "end": chunk.end, "score": hit.score,
        },
    )


class KnowledgeBaseRetriever(BaseRetriever):
    """``KnowledgeBaseRetriever(retriever=Retriever(...), k=5).invoke("问题")`` -> LangChain Documents."""

    retriever: Any
    k: int = 5

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        return [hit_to_langchain(h) for h in self.retriever.search(query, top_k=self.k)]
