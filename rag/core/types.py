"""The data types that flow through every stage. Defined once here; no ad-hoc dicts cross module boundaries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Document:
    """A piece of parsed text from one file: a whole file, or one page of a paged format.

    Attributes:
        text: the extracted text (``\\n\\n`` between paragraphs, ``\\n`` between lines).
        source: the file's path relative to the knowledge folder, with ``/`` separators.
        page: 1-based page number for paged formats (PDF), else ``None``.
        heading: the heading path above this text, outermost first (``("安装", "驱动")``).
        metadata: extra string fields (title, parser, encoding ...).
    """

    text: str
    source: str
    page: int | None = None
    heading: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


def chunk_id(source: str, file_sha256: str, position: int) -> int:
    """Stable positive int64 id of the ``position``-th chunk of a file with this path and content hash."""
    digest = hashlib.sha256(f"{source}\x00{file_sha256}\x00{position}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Chunk:
    """A retrievable unit of text with where it came from.

    Attributes:
        id: stable int64 id, :func:`chunk_id` of (source, file sha256, position).
        text: the chunk text.
        source: relative path of the file.
        position: index of this chunk among the chunks of its file.
        page: 1-based page or ``None``.
        heading: heading path above the chunk.
        start: character offset of the chunk's first character in its Document's text.
        end: offset one past its last character (``text == document.text[start:end]``).
    """

    id: int
    text: str
    source: str
    position: int
    page: int | None = None
    heading: tuple[str, ...] = ()
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class ParsedFile:
    """What loading one file produced: documents, or a typed failure.

    Attributes:
        source: relative path of the file.
        documents: the parsed documents (empty on failure).
        error_kind: ``None`` on success, else the :class:`rag.core.errors.LoadError` kind.
        error: one human-readable line on failure.
        seconds: wall time spent parsing.
        pages: number of pages for paged formats, else 1 on success, 0 on failure.
        sha256: hash of the very bytes that were parsed ("" when the file was not opened): what the index records,
            even when the file changed after it was first hashed.
    """

    source: str
    documents: tuple[Document, ...] = ()
    error_kind: str | None = None
    error: str = ""
    seconds: float = 0.0
    pages: int = 0
    sha256: str = ""

    @property
    def ok(self) -> bool:
        return self.error_kind is None


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk with its scores.

    Attributes:
        chunk: the chunk.
        score: the final ranking score (fused / reranked); higher is better.
        dense_score: cosine similarity from the dense retriever, if it found the chunk.
        bm25_score: BM25 score, if the keyword retriever found the chunk.
        rerank_score: cross-encoder score, if a reranker ran.
        also_in: other files that hold the same text (another edition of the document: a PDF and an HTML
            export of one manual), collapsed into this hit by ``retrieve.edition_similarity``.
    """

    chunk: Chunk
    score: float
    dense_score: float | None = None
    bm25_score: float | None = None
    rerank_score: float | None = None
    also_in: tuple[str, ...] = ()


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: Role
    content: str


@dataclass(frozen=True)
class Citation:
    """A ``[n]`` marker in an answer, resolved to the chunk it points at.

    Attributes:
        number: the n in ``[n]`` (1-based position in the prompt's context list).
        chunk: the cited chunk.
        supported: whether the sentence carrying the marker is supported by the chunk's text.
    """

    number: int
    chunk: Chunk
    supported: bool = True


@dataclass
class Answer:
    """The result of answering one question."""

    text: str
    hits: list[Hit] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)
    refused: bool = False
    model: str = ""
