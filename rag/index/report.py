"""What one ingest did: the per-file :class:`FileReport` rows and the :class:`IngestReport` table with its totals.

These are the values :func:`rag.index.sync.sync_folder` returns and every front end shows (``ingest.py``'s table, the web
knowledge-base page, ``--json`` output); they hold no state of the sync itself. A module of their own keeps the sync
logic readable top to bottom and lets the UI import the report types without the ingest machinery's reasoning.
They stay importable from :mod:`rag.index.sync`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class FileReport:
    """What an ingest did with one file. status: new | updated | unchanged | failed | skipped | deleted | kept.

    ``skipped`` = a file type the loader does not read (images, stylesheets next to HTML pages ...): not an error,
    but still listed so the user can see what was left out. The docstore records it like a failure (error_kind
    ``unsupported``), so it is not re-read until it changes."""

    source: str
    status: str
    chunks: int = 0
    pages: int = 0
    seconds: float = 0.0
    error_kind: str | None = None
    error: str = ""


@dataclass
class IngestReport:
    """The per-file table and totals of one ingest."""

    index_dir: str
    embedder: str
    files: list[FileReport] = field(default_factory=list)
    seconds: float = 0.0
    chunks_indexed: int = 0
    pages_parsed: int = 0
    generation: int = 0

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    def totals(self) -> dict[str, Any]:
        statuses = ("new", "updated", "unchanged", "failed", "skipped", "deleted", "kept")
        return {
            "files": len(self.files),
            **{s: self.count(s) for s in statuses},
            "pages_parsed": self.pages_parsed,
            "chunks_indexed": self.chunks_indexed,
            "seconds": round(self.seconds, 2),
            "chunks_per_s": round(self.chunks_indexed / self.seconds, 1) if self.seconds > 0 else 0.0,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"index_dir": self.index_dir, "embedder": self.embedder, "generation": self.generation,
                "totals": self.totals(), "files": [asdict(f) for f in self.files]}
