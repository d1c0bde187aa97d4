"""OCR with RapidOCR (PP-OCRv4 Chinese/English detection + recognition, ONNX models shipped in its wheel, offline).

Used for image files (png, jpg, webp, bmp, tiff), for PDF pages without a text layer and for pictures inside PDF pages
(:mod:`rag.ingest.parsers.pdf`), under ``load.ocr=off|auto|force``. It runs where every parser runs: inside an isolated
worker process, so the per-file time and memory limits apply. Lines recognised with a score below
``load.ocr_min_confidence`` are dropped (after one more reading upside down); the rest are put in reading order, with
the word spaces the recogniser dropped put back and wrapped lines joined into paragraphs
(:mod:`rag.ingest.parsers.ocr_layout`). The pages of one PDF can be OCR'd by a small pool of threads
(:func:`run_in_order`, ``load.ocr_threads``). A Document made by OCR says so: ``metadata["ocr"]``,
``metadata["ocr_confidence"]``, ``metadata["ocr_dropped_lines"]``, and a heading ``OCR (confidence 0.97)`` that the
source card shows (a Chunk carries its Document's heading, not its metadata).
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
from rag.ingest.parsers.ocr_layout import OcrBox, line_crop, paragraphs, reading_order, respace, skew_degrees
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


def rapidocr_boxes(result: Any) -> list[OcrBox]:
    """RapidOCR's result (``return_word_box=True``: corners, text, score, character boxes, characters, their scores)
    as boxes; character centres are kept only where the characters spell the box's text."""
    boxes = []
    for item in result or []:
        corners = tuple((float(x), float(y)) for x, y in item[0])
        text, score = str(item[1]), float(item[2])
        centres: tuple[tuple[float, float], ...] = ()
        if len(item) >= 5 and len(item[3]) == len(item[4]) == len(text) and "".join(map(str, item[4])) == text:
            centres = tuple((sum(p[0] for p in cell) / len(cell), sum(p[1] for p in cell) / len(cell))
                            for cell in item[3])
        boxes.append(OcrBox(corners, text, score, centres))
    return boxes


def _read_again_upside_down(engine: Any, image: Any, box: OcrBox) -> OcrBox:
    """A box read below the confidence bar, read again turned by 180°: kept if that scores better.

    Why: the page is recognised without RapidOCR's per-line direction classifier, which turned clear upright lines
    upside down on the dev2 scans (they came back empty, score 0; docs/BENCHMARKS.md); text that really is upside
    down then scores low and is read here the other way round.
    """
    import numpy as np

    if box.width() < box.height():
        return box
    crop, _ = line_crop(image, box.corners)
    result, _ = engine(np.ascontiguousarray(crop[::-1, ::-1]), use_det=False, use_cls=False, text_score=0.0)
    if not result:
        return box
    text, score = str(result[0][0]), float(result[0][1])
    return OcrBox(box.corners, text, score) if score > box.score and text.strip() else box


def ocr_image(image: Any, cfg: LoadConfig) -> OcrText:
    """OCR one image (a PIL image or an HxWx3 uint8 array): its text in reading order, low-confidence lines dropped.

    Word spaces the recogniser dropped are put back from the page's pixels, and wrapped lines are joined into
    paragraphs (:mod:`rag.ingest.parsers.ocr_layout`).
    """
    import numpy as np

    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if array.ndim != 3 or min(array.shape[:2]) < 8:
        return OcrText("", 0.0)
    engine = ocr_engine()
    bgr = np.ascontiguousarray(array[:, :, ::-1])  # RapidOCR takes OpenCV's BGR order
    try:
        # every box comes back (text_score 0), with where each character lies; no per-line direction classifier
        result, _ = engine(bgr, use_cls=False, return_word_box=True, text_score=0.0)
        boxes = [box if box.score >= cfg.ocr_min_confidence else _read_again_upside_down(engine, bgr, box)
                 for box in rapidocr_boxes(result)]
    except Exception as exc:  # onnxruntime reports an allocation refused by the worker's memory cap as a RuntimeError
        if any(sign in str(exc) for sign in ALLOCATION_FAILED):
            raise MemoryError(str(exc).strip().splitlines()[-1]) from exc
        raise
    kept = [box for box in boxes if box.text.strip()]
    confident = [box for box in kept if box.score >= cfg.ocr_min_confidence]
    grey = array.mean(axis=2).astype(np.uint8) if any(box.char_centres for box in confident) else None
    skew = skew_degrees(confident)
    lines = reading_order(confident, skew)
    texts = [collapse(" ".join(respace(box, grey) if grey is not None and box.width() >= box.height() else box.text
                               for box in line)) for line in lines]
    weight = sum(len(box.text) for box in confident)
    confidence = sum(len(box.text) * box.score for box in confident) / weight if weight else 0.0
    return OcrText("\n".join(paragraphs(lines, texts, skew)), confidence, len(kept) - len(confident))


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
