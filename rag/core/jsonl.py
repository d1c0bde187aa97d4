"""JSON Lines written by people and programs (questions, predictions, prompts, feedback, training data): one record a
line, and a bad line is a problem tied to its line number, never an exception for the whole file.

A line can be bad three ways that ``json.loads`` alone turns into tracebacks: bytes that are not UTF-8
(``UnicodeDecodeError``), text that is not JSON, and JSON nested deeper than Python's recursion limit
(``RecursionError``: ``[[[[...`` 100 000 deep is a 200 kB line).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TOO_DEEP = "nested too deeply (lists or objects inside each other past Python's recursion limit)"
_BOM = b"\xef\xbb\xbf"


def utf8_problem(data: bytes, exc: UnicodeDecodeError) -> str:
    """The reason for a ``UnicodeDecodeError`` raised decoding ``data``: the bad byte and its column in its line."""
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {column}); save the file as UTF-8"


def parse_json_lines(data: bytes) -> Iterator[tuple[int, Any, str]]:
    """``(line, record, "")`` for each non-blank line of ``data``, ``(line, None, reason)`` for a bad one (not UTF-8,
    not JSON, or nested too deeply). A UTF-8 byte order mark is skipped."""
    for number, raw in enumerate(data.removeprefix(_BOM).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw.decode("utf-8")), ""
        except UnicodeDecodeError as exc:
            yield number, None, utf8_problem(raw, exc)
        except json.JSONDecodeError as exc:
            yield number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
        except RecursionError:
            yield number, None, TOO_DEEP


def json_lines(path: str | Path) -> Iterator[tuple[int, Any, str]]:
    """:func:`parse_json_lines` over the file at ``path``."""
    yield from parse_json_lines(Path(path).read_bytes())
