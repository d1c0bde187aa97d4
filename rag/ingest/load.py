"""Stage 1: files -> Documents. Find the files of a knowledge folder and parse each one, isolated.

:func:`discover_files` lists a folder; :func:`parse_file` parses one file in this process (the format parsers live
in :mod:`rag.ingest.parsers`, one module per family); :func:`parse_files` is what ingest uses: it runs :func:`parse_file` in long-lived worker
*processes*, each with an address-space cap, kills a parse that runs past ``load.timeout_s``, replaces a worker that
dies, and reports every file exactly once as a :class:`~rag.core.types.ParsedFile`, success or typed failure.

Workers are fresh interpreters (``python -c``, never ``fork``: the parent may hold torch and threads) that import
only ``rag.ingest.load`` and its parsers, and talk to the parent over pipes in length-prefixed JSON (a worker that a
hostile file took over cannot make the parent unpickle anything). Error messages do not repeat the file name:
callers print ``f"{parsed.source}: {parsed.error}"``.
The pool, the frame protocol and the worker loop are in :mod:`rag.ingest.worker`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import importlib.util
import logging
import os
import tempfile
from collections import deque
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

from rag.core.config import LoadConfig
from rag.core.errors import ConfigError, LoadError, RagError
from rag.core.paths import open_inside, same_file
from rag.core.types import Document, ParsedFile
from rag.ingest.parsers.markup import parse_html, parse_markdown
from rag.ingest.parsers.ocr import IMAGE_SUFFIXES, OCR_BASE_MB, OCR_MODES, OCR_THREAD_MB, ocr_memory_mb, parse_image
from rag.ingest.parsers.office import parse_docx, parse_pptx
from rag.ingest.parsers.pdf import parse_pdf
from rag.ingest.parsers.sheet import parse_csv, parse_xls, parse_xlsx
from rag.ingest.parsers.text import MIB, parse_text
from rag.ingest.parsers.unstructured import missing_unstructured_message, parse_unstructured
from rag.ingest.worker import WorkerPool, memory_message, serve

logger = logging.getLogger(__name__)

# suffix -> parser; .rst/.log are read as plain text, images through OCR (load.ocr)
SUPPORTED_SUFFIXES: dict[str, Callable[[Path, str, LoadConfig], list[Document]]] = {
    ".pdf": parse_pdf,
    ".docx": parse_docx,
    ".pptx": parse_pptx,
    **dict.fromkeys((".xlsx", ".xlsm"), parse_xlsx),
    ".xls": parse_xls,
    **dict.fromkeys((".csv", ".tsv"), parse_csv),
    **dict.fromkeys((".html", ".htm", ".xhtml"), parse_html),
    **dict.fromkeys((".md", ".markdown"), parse_markdown),
    **dict.fromkeys((".txt", ".text", ".rst", ".log"), parse_text),
    **dict.fromkeys(IMAGE_SUFFIXES, parse_image),
}
# parsed only through the optional `unstructured` extra, when installed and load.use_unstructured is on
UNSTRUCTURED_SUFFIXES = frozenset({".ppt", ".odt", ".epub", ".rtf", ".doc", ".eml", ".msg", ".org"})
PDF_ENGINES = ("pypdfium2", "pypdf")


def discover_files(root: Path, cfg: LoadConfig, exclude: Sequence[Path] = ()) -> list[Path]:
    """All regular, non-hidden files under ``root``, sorted by relative path (unsupported ones too).

    Skips names starting with ``.`` (and everything under such folders) or ``~$`` (Office lock files), anything under an ``exclude`` path (an
    index folder kept inside the knowledge folder), and anything whose relative posix path or name matches one of
    ``cfg.skip_patterns`` (fnmatch; a matching folder is skipped whole). Symlinks are followed only when they
    point inside ``root``; each real folder is visited once.

    Raises:
        RagError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise RagError(f"knowledge folder {root} does not exist or is not a folder; pass an existing folder")
    real_root = root.resolve()
    excluded = [Path(path).resolve() for path in exclude]
    found: list[tuple[str, Path]] = []
    visited = {real_root}
    stack: list[tuple[Path, Path, str]] = [(root, real_root, "")]  # (folder as seen, its real path, rel prefix)
    while stack:
        folder, real_folder, prefix = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)  # first name wins for a linked folder
        except OSError as exc:
            logger.warning("cannot list %s: %s", folder, exc)
            continue
        for entry in entries:
            rel = prefix + entry.name
            if entry.name.startswith((".", "~$")) or any(  # hidden, or an Office lock file
                fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(entry.name, pattern) for pattern in cfg.skip_patterns
            ):
                continue
            real = Path(os.path.realpath(entry.path)) if entry.is_symlink() else real_folder / entry.name
            if entry.is_symlink() and not real.is_relative_to(real_root):
                logger.info("skipping %s: it links outside %s", rel, root)
                continue
            if any(real.is_relative_to(path) for path in excluded):
                continue
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError as exc:  # a symlink loop (ELOOP) and the like: not a file we can read
                logger.warning("skipping %s: %s", rel, exc.strerror or exc)
                continue
            if is_dir:
                if real not in visited:
                    visited.add(real)
                    stack.append((Path(entry.path), real, rel + "/"))
            elif is_file:
                found.append((rel, Path(entry.path)))
    return [path for _, path in sorted(found)]


def check_file(path: Path, cfg: LoadConfig) -> Callable[[Path, str, LoadConfig], list[Document]]:
    """What can be known without opening the file: its parser, or a LoadError (unsupported, too_large, empty)."""
    suffix = path.suffix.lower()
    parser = SUPPORTED_SUFFIXES.get(suffix)
    if parser is None and suffix in UNSTRUCTURED_SUFFIXES:
        if not cfg.use_unstructured:
            raise LoadError("unsupported", f"{suffix} files are read only with load.use_unstructured=true and the "
                            "optional extra: pip install -r requirements-extra.txt")
        if importlib.util.find_spec("unstructured") is None:
            raise LoadError("missing_dependency", missing_unstructured_message(suffix))
        parser = parse_unstructured
    if parser is parse_image and cfg.ocr == "off":
        raise LoadError("unsupported", f"{suffix} files are read only with OCR: set load.ocr=auto")
    if parser is None:
        raise LoadError("unsupported", f"unsupported file type {suffix or '(no suffix)'}; supported: "
                        + " ".join(sorted(SUPPORTED_SUFFIXES)))
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise LoadError("corrupt", f"the file cannot be read: {exc.strerror or exc}") from None
    if size > cfg.max_file_mb * MIB:
        raise LoadError("too_large", f"the file is {size / MIB:.1f} MB, over load.max_file_mb="
                        f"{cfg.max_file_mb:g}; raise the limit to parse it")
    if size == 0:
        raise LoadError("empty", "the file is empty (0 bytes)")
    return parser


def check_config(cfg: LoadConfig) -> None:
    """Raise ConfigError for load settings that cannot work."""
    if cfg.pdf_engine not in PDF_ENGINES:
        raise ConfigError(f"load.pdf_engine={cfg.pdf_engine!r} is not one of {', '.join(PDF_ENGINES)}")
    if cfg.ocr not in OCR_MODES:
        raise ConfigError(f"load.ocr={cfg.ocr!r} is not one of {', '.join(OCR_MODES)}")
    if cfg.ocr_threads < 1:
        raise ConfigError(f"load.ocr_threads={cfg.ocr_threads} must be at least 1 (1 = pages one after the other)")
    if cfg.ocr != "off" and cfg.ocr_threads > 1 and cfg.memory_mb < ocr_memory_mb(cfg.ocr_threads):
        raise ConfigError(f"load.ocr_threads={cfg.ocr_threads} needs load.memory_mb >= {ocr_memory_mb(cfg.ocr_threads)} "
                          f"(OCR peaks near {OCR_BASE_MB} MB one page at a time, about {OCR_THREAD_MB} MB more for "
                          f"each more page at once); raise load.memory_mb or set load.ocr_threads=1")
    if cfg.timeout_s <= 0 or cfg.workers < 1:
        raise ConfigError(f"load.timeout_s={cfg.timeout_s:g} and load.workers={cfg.workers} must be positive")


def parse_file(path: Path, source: str, cfg: LoadConfig) -> list[Document]:
    """Parse one file in this process (no timeout, no memory cap: use :func:`parse_files` for untrusted folders).

    Args:
        path: the file.
        source: its path relative to the knowledge folder (``/`` separators), stored in every Document.
        cfg: load settings.

    Returns:
        The Documents: one per PDF page or slide with text, one per heading section (HTML, Markdown, DOCX), one per
        block of sheet rows, one per OCR'd image (none for an image without text), or one.
        ``metadata["parser"]`` names the parser.

    Raises:
        LoadError: kind unsupported, empty, encrypted, corrupt, too_large, encoding, missing_dependency or memory.
            An unexpected exception inside a parser becomes ``corrupt`` with its type and first line.
    """
    check_config(cfg)
    parser = check_file(Path(path), cfg)
    try:
        documents = parser(Path(path), source, cfg)
    except LoadError:
        raise
    except MemoryError:
        raise LoadError("memory", memory_message(cfg)) from None
    except Exception as exc:
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise LoadError("corrupt", f"the parser failed: {type(exc).__name__}: {message}".rstrip(": ")) from exc
    if not any(document.text.strip() for document in documents) and parser is not parse_image:
        raise LoadError("empty", "no text found in the file")  # an image without text is no error: 0 chunks
    return documents


def snapshot_file(path: Path, root: Path | None, folder: Path, cfg: LoadConfig) -> tuple[Path, str]:
    """Copy the bytes of ``path``, opened once with :func:`rag.core.paths.open_inside`, into ``folder`` under the
    same name; return the copy and the SHA-256 of exactly those bytes.

    Parsing the copy means the text indexed and the hash recorded describe the same bytes, even when the file is
    swapped (for a link to a file outside the knowledge folder, say) between hashing and parsing.

    Raises:
        LoadError: ``unreadable`` (outside ``root``, not a regular file, cannot be opened, or replaced while it was
            read), ``too_large`` (grew past ``load.max_file_mb``).
    """
    try:
        fd = open_inside(path, root)
    except OSError as exc:
        raise LoadError("unreadable", f"cannot read the file: {exc.strerror or exc}") from None
    digest = hashlib.sha256()
    copy = folder / path.name
    limit = cfg.max_file_mb * MIB
    with open(fd, "rb") as source:
        try:
            with open(copy, "xb") as target:
                size = 0
                for block in iter(lambda: source.read(1 << 20), b""):
                    size += len(block)
                    if size > limit:
                        raise LoadError("too_large", f"the file grew past load.max_file_mb={cfg.max_file_mb:g} "
                                        "while it was read; raise the limit to parse it")
                    digest.update(block)
                    target.write(block)
        except OSError as exc:  # the temp folder is full, or the file cannot be read after all
            raise LoadError("unreadable", f"cannot copy the file for parsing into {folder.parent}: "
                            f"{exc.strerror or exc}") from None
        if not same_file(path, source.fileno()):
            raise LoadError("unreadable", "the file was replaced while it was read; run the ingest again")
    return copy, digest.hexdigest()


def parse_file_at(path: Path, source: str, cfg: LoadConfig, root: Path | None) -> tuple[list[Document], str]:
    """:func:`parse_file` on a private copy of the bytes of ``path`` read once under ``root`` (:func:`snapshot_file`);
    returns the documents and the SHA-256 of the bytes parsed. A LoadError raised after the copy carries the hash."""
    check_config(cfg)
    check_file(Path(path), cfg)
    with tempfile.TemporaryDirectory(prefix="kbqa-parse-") as folder:
        copy, sha = snapshot_file(Path(path), root, Path(folder), cfg)
        try:
            return parse_file(copy, source, cfg), sha
        except LoadError as exc:
            exc.sha256 = sha
            raise


def parse_files(
    items: Sequence[tuple[Path, str]], cfg: LoadConfig, progress: Callable[[ParsedFile], None] | None = None,
    root: Path | None = None,
) -> Generator[ParsedFile, None, None]:
    """Parse files in up to ``cfg.workers`` isolated worker processes; yield one ParsedFile per item, exactly once.

    Results come in completion order (files refused before parsing, such as unsupported or too large ones, first).
    A worker runs under an address-space cap of ``cfg.memory_mb`` MiB (plus a CPU-time backstop); a parse that
    takes longer than ``cfg.timeout_s`` is killed (kind ``timeout``), a worker that runs out of memory gives
    ``memory``, one that dies gives ``crashed``; dead workers are replaced and the rest goes on. Closing the
    iterator early kills the workers.

    Args:
        items: ``(path, source)`` pairs, ``source`` being the relative path recorded in the results.
        cfg: load settings.
        progress: called with each ParsedFile before it is yielded.
        root: the knowledge folder: a file is read only if it really lies under it (links are resolved first, and
            a file swapped for a link to outside is refused as ``unreadable``). Each ParsedFile carries the hash of
            the bytes parsed.
    """
    check_config(cfg)
    queue: deque[tuple[Path, str]] = deque()
    for path, source in items:
        try:
            check_file(Path(path), cfg)
        except LoadError as exc:
            parsed = ParsedFile(source, error_kind=exc.kind, error=str(exc))
            if progress:
                progress(parsed)
            yield parsed
        else:
            queue.append((Path(path), source))
    if not queue:
        return
    pool = WorkerPool(cfg, root)
    try:
        for parsed in pool.run(queue):
            if progress:
                progress(parsed)
            yield parsed
    finally:
        pool.close()


def parse_one_isolated(path: Path, source: str, cfg: LoadConfig) -> ParsedFile:
    """Parse one file in a fresh worker process (see :func:`parse_files`)."""
    return list(parse_files([(path, source)], dataclasses.replace(cfg, workers=1)))[0]


def worker_main() -> None:
    """Entry point of a worker process (see :mod:`rag.ingest.worker`): serve parse requests with :func:`parse_file_at`."""
    serve(parse_file_at)
