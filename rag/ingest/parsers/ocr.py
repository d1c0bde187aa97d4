"""OCR with RapidOCR (PP-OCRv4 Chinese/English detection + recognition, ONNX models shipped in its wheel, offline).

Used for image files (png, jpg, webp, bmp, tiff), for PDF pages without a text layer and for pictures inside PDF pages
(:mod:`rag.ingest.parsers.pdf`), under ``load.ocr=off|auto|force``. It runs where every parser runs: inside an isolated
worker process, so the per-file time and memory limits apply. Lines recognised with a score below
``load.ocr_min_confidence`` are dropped; the rest are put in reading order (top to bottom, then left to right within a
line). The pages of one PDF can be OCR'd by a small pool of threads (:func:`run_in_order`, ``load.ocr_threads``). A
Document made by OCR says so: ``metadata["ocr"]`` and ``metadata["ocr_confidence"]``, and a heading
``OCR (confidence 0.97)`` that the source card shows (a Chunk carries its Document's heading, not its metadata).
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rag.core.config import LoadConfig
from rag.core.errors import LoadError
from rag.core.types import Document
from rag.ingest.parsers.text import collapse

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
OCR_MODES = ("off", "auto", "force")
OCR_PARSER = "rapidocr"
MISSING_RAPIDOCR = "OCR needs rapidocr-onnxruntime: pip install -r requirements.txt (or set load.ocr=off)"
T = TypeVar("T")
ALLOCATION_FAILED = ("Failed to allocate memory", "bad_alloc", "bad allocation", "Cannot allocate memory")
# Address space (load.memory_mb) that OCR needs: one page at a time peaks near 1.7 GB (VmPeak, A4 scans rendered at
# 200 dpi: RapidOCR caps the detector's input at 2000 px a side), each more page at once adds about OCR_THREAD_MB
OCR_BASE_MB = 1792
OCR_THREAD_MB = 512


@dataclass(frozen=True)
class OcrText:
    """What OCR read in one image: its lines in reading order and their mean confidence (weighted by length)."""

    text: str
    confidence: float
    dropped_lines: int = 0


@functools.cache
def ocr_engine() -> Any:
    """The RapidOCR engine, loaded once per process (the models load in about a second)."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ModuleNotFoundError:
        raise LoadError("missing_dependency", MISSING_RAPIDOCR) from None
    except ImportError as exc:  # OpenCV without its system libraries (libGL, GLib)
        raise LoadError("missing_dependency", f"OCR could not load ({exc}); run make ocr-deps "
                        "(apt-get install libgl1 libglib2.0-0) or set load.ocr=off") from None
    return RapidOCR()


def reading_order(boxes: list[tuple[list[list[float]], str, float]]) -> list[list[tuple[list[list[float]], str, float]]]:
    """Group RapidOCR boxes (4 corner points, text, score) into lines, top to bottom, each left to right.

    A box joins the current line when its vertical centre lies within half a box height of the line's centre, so
    slightly rotated scans (a few degrees) keep their lines together.
    """

    def centre_y(box: list[list[float]]) -> float:
        return sum(point[1] for point in box) / 4

    def height(box: list[list[float]]) -> float:
        return max(point[1] for point in box) - min(point[1] for point in box)

    lines: list[list[tuple[list[list[float]], str, float]]] = []
    for item in sorted(boxes, key=lambda item: centre_y(item[0])):
        if lines:
            line = lines[-1]
            line_centre = sum(centre_y(other[0]) for other in line) / len(line)
            tolerance = max(height(item[0]), max(height(other[0]) for other in line)) / 2
            if abs(centre_y(item[0]) - line_centre) <= tolerance:
                line.append(item)
                continue
        lines.append([item])
    return [sorted(line, key=lambda item: min(point[0] for point in item[0])) for line in lines]


def ocr_image(image: Any, cfg: LoadConfig) -> OcrText:
    """OCR one image (a PIL image or an HxWx3 uint8 array): its text in reading order, low-confidence lines dropped."""
    import numpy as np

    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if array.ndim != 3 or min(array.shape[:2]) < 8:
        return OcrText("", 0.0)
    try:
        result, _ = ocr_engine()(array[:, :, ::-1])  # RapidOCR takes OpenCV's BGR order
    except Exception as exc:  # onnxruntime reports an allocation refused by the worker's memory cap as a RuntimeError
        if any(sign in str(exc) for sign in ALLOCATION_FAILED):
            raise MemoryError(str(exc).strip().splitlines()[-1]) from exc
        raise
    kept = [(box, str(text), float(score)) for box, text, score in result or [] if str(text).strip()]
    confident = [item for item in kept if item[2] >= cfg.ocr_min_confidence]
    lines = [collapse(" ".join(text for _, text, _ in line)) for line in reading_order(confident)]
    weight = sum(len(text) for _, text, _ in confident)
    confidence = sum(len(text) * score for _, text, score in confident) / weight if weight else 0.0
    return OcrText("\n".join(line for line in lines if line), confidence, len(kept) - len(confident))


def owned_rgb(image: Any) -> Any:
    """An HxWx3 uint8 RGB array that owns its memory, for a PIL image that may share a pdfium bitmap's buffer.

    pypdfium2's ``to_pil`` can map the bitmap's memory, which pdfium frees with the bitmap; a page handed to an OCR
    thread must not depend on an object the rendering thread lets go.
    """
    import numpy as np

    return np.array(image.convert("RGB"))


def run_in_order(jobs: Iterable[Callable[[], T]], threads: int) -> Iterator[T]:
    """Run ``jobs`` on ``threads`` threads and yield their results in the jobs' order.

    Why threads and this shape: a long scan spends its time in onnxruntime and OpenCV, which release the GIL, so
    pages overlap on one engine (its sessions may run concurrently) without loading the models again per process.
    The jobs are taken lazily, at most ``threads + 1`` ahead of the result being waited for, so a 10,000-page scan
    holds a few rendered pages in memory, not all of them; the caller builds each job (rendering with pdfium, which
    is not thread-safe) in its own thread while the pool works. An exception in a job is raised here, in order, and
    the jobs not yet started are cancelled. The file's time limit is the worker process's: killing it ends the
    threads too.
    """
    if threads <= 1:
        for job in jobs:
            yield job()
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="ocr")
    pending: deque[Future[T]] = deque()
    try:
        for job in jobs:
            pending.append(pool.submit(job))
            while len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ocr_memory_mb(threads: int) -> int:
    """The ``load.memory_mb`` that ``threads`` pages OCR'd at once need (measured: docs/BENCHMARKS.md, "OCR")."""
    return OCR_BASE_MB + OCR_THREAD_MB * (max(threads, 1) - 1)


def ocr_heading(confidence: float) -> str:
    """The heading an OCR'd Document carries so its source card can say where the text came from."""
    return f"OCR (confidence {confidence:.2f})"


def ocr_document(result: OcrText, source: str, page: int | None, kind: str, metadata: dict[str, str]) -> Document:
    """A Document of OCR text (``kind``: image, page or pictures), its confidence in metadata and heading."""
    extra = {"ocr": kind, "ocr_confidence": f"{result.confidence:.3f}", "ocr_dropped_lines": str(result.dropped_lines)}
    return Document(result.text, source, page, (ocr_heading(result.confidence),), {**metadata, **extra})


def open_image(path: Path) -> Any:
    """Open an image with Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) as a hard limit.

    Raises:
        LoadError: ``corrupt`` for an image over the limit or one Pillow cannot read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit, not only over twice it
            image = Image.open(path)
            image.load()
            return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise LoadError("corrupt", f"refused as a possible decompression bomb ({exc}); raise PIL.Image.MAX_IMAGE_PIXELS "
                        "only for images you trust") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise LoadError("corrupt", f"the image cannot be read: {type(exc).__name__}: {exc}") from None


def parse_image(path: Path, source: str, cfg: LoadConfig) -> list[Document]:
    """An image file through OCR: one Document per frame (``page`` = frame number for multi-page TIFF, else None).

    An image without text gives no Document and no error (the ingest reports it with 0 chunks). ``load.ocr=off`` is
    checked before (:func:`rag.ingest.load.check_file` reports such files as skipped).
    """
    from PIL import ImageSequence

    image = open_image(path)
    frames = getattr(image, "n_frames", 1)
    documents = []
    for number, frame in enumerate(ImageSequence.Iterator(image), start=1):
        result = ocr_image(frame, cfg)
        if result.text:
            page = number if frames > 1 else None
            documents.append(ocr_document(result, source, page, "image", {"parser": OCR_PARSER}))
    return documents
