"""The VectorStore protocol: int64 ids -> L2-normalised float32 vectors, searched by inner product (= cosine)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class VectorStore(Protocol):
    """What the index needs from a vector store."""

    dim: int

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors [n, dim] float32 under int64 ids [n] (ids not present yet)."""

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; return how many were present."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for each query [q, dim]: (scores float32 [q, k], ids int64 [q, k]); missing slots have id -1."""

    def ids(self) -> np.ndarray:
        """All ids held (int64, any order)."""

    def save(self, path: Path) -> None:
        """Persist atomically to ``path`` (write a temp file, then rename); a server-side store flushes instead."""

    def close(self) -> None:
        """Release connections (a no-op for in-memory stores)."""
