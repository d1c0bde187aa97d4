"""rag.ingest.parsers.ocr.run_in_order: the pages of one scanned PDF OCR'd by a few threads, in order, few ahead."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from rag.core.config import LoadConfig
from rag.core.errors import ConfigError
from rag.ingest.load import check_config
from rag.ingest.parsers.ocr import run_in_order


def counted_jobs(count: int, created: list[int], work: Callable[[int], int]) -> Iterator[Callable[[], int]]:
    """Jobs built lazily (as the PDF parser renders pages), each creation recorded in ``created``."""
    for number in range(count):
        created.append(number)
        yield lambda number=number: work(number)  # type: ignore[misc]


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_results_keep_the_page_order_and_few_pages_are_taken_ahead(threads: int) -> None:
    delays = random.Random(threads)
    pauses = [delays.uniform(0, 0.02) for _ in range(24)]  # later pages often finish first

    def work(number: int) -> int:
        time.sleep(pauses[number])
        return number * 10

    created: list[int] = []
    results: list[int] = []
    for result in run_in_order(counted_jobs(24, created, work), threads):
        # bounded memory: when a page's result comes back, at most threads + 1 pages have been built past it
        assert len(created) - len(results) <= max(threads, 1) + 1
        results.append(result)
    assert results == [number * 10 for number in range(24)]


def test_two_threads_really_run_two_pages_at_once() -> None:
    both = threading.Barrier(2, timeout=5)  # a job waits here until the other one arrives: sequential code times out

    def work(number: int) -> int:
        both.wait()
        return number

    assert list(run_in_order(counted_jobs(4, [], work), threads=2)) == [0, 1, 2, 3]


def test_one_thread_runs_in_the_callers_thread() -> None:
    names = list(run_in_order((lambda: threading.current_thread().name for _ in range(3)), threads=1))
    assert names == [threading.current_thread().name] * 3


def test_a_failing_page_raises_in_order_and_later_pages_are_not_started() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(number: int) -> int:
        with lock:
            started.append(number)
        if number == 3:
            raise ValueError("page 4 is unreadable")
        time.sleep(0.01)
        return number

    created: list[int] = []
    results: list[int] = []
    with pytest.raises(ValueError, match="^page 4 is unreadable$"):
        for result in run_in_order(counted_jobs(50, created, work), threads=2):
            results.append(result)
    assert results == [0, 1, 2]
    assert len(created) <= 3 + 2 + 1 and max(started) < len(created)  # the other 44+ pages were never built


def test_more_pages_at_once_need_more_memory_and_the_error_says_how_much() -> None:
    check_config(LoadConfig())  # the defaults: one page at a time in 2048 MB
    check_config(LoadConfig(ocr_threads=2, memory_mb=2304))
    check_config(LoadConfig(ocr="off", ocr_threads=4))  # no OCR, no OCR memory
    with pytest.raises(ConfigError) as info:
        check_config(LoadConfig(ocr_threads=2))
    assert str(info.value) == ("load.ocr_threads=2 needs load.memory_mb >= 2304 (OCR peaks near 1792 MB one page at "
                               "a time, about 512 MB more for each more page at once); raise load.memory_mb or set "
                               "load.ocr_threads=1")


def test_an_allocation_refused_inside_onnxruntime_is_a_memory_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's address-space cap makes onnxruntime fail an allocation: reported as memory, not a corrupt file."""
    import numpy as np

    from rag.ingest.parsers import ocr

    def engine(message: str) -> Callable[[object], object]:
        def run(image: object, **options: object) -> object:
            raise RuntimeError(f"Traceback (most recent call last):\n  ...\n{message}\n")
        return run

    page = np.full((64, 64, 3), 255, dtype=np.uint8)
    monkeypatch.setattr(ocr, "ocr_engine", lambda: engine("RUNTIME_EXCEPTION : Failed to allocate memory for "
                                                          "requested buffer of size 135000000"))
    with pytest.raises(MemoryError, match="Failed to allocate memory for requested buffer of size 135000000$"):
        ocr.ocr_image(page, LoadConfig())
    monkeypatch.setattr(ocr, "ocr_engine", lambda: engine("INVALID_ARGUMENT : unexpected input shape"))
    with pytest.raises(RuntimeError, match="unexpected input shape"):  # any other failure stays what it was
        ocr.ocr_image(page, LoadConfig())
