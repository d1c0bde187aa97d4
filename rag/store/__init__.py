"""Vector store backends behind one protocol (:mod:`rag.store.base`): FAISS, the embedded default, and Milvus."""
