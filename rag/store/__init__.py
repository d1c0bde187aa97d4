"""Vector stores behind one protocol: FAISS (embedded default); Milvus for scale-out."""

from rag.store.base import VectorStore

__all__ = ["VectorStore"]
