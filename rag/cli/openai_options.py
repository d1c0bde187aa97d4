"""OpenAI request options that :mod:`rag.cli.serve` applies itself, whatever the backend: ``stop`` sequences and a
``max_tokens`` cap on the text it returns, and the options it refuses (``n`` > 1, tools) with OpenAI-style errors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

MAX_STOPS = 4  # what OpenAI accepts


class OptionError(ValueError):
    """A request option this server refuses: the message names it and the fix; ``param`` and ``code`` go into the
    OpenAI error object."""

    def __init__(self, message: str, param: str, code: str) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def check_options(body: Mapping[str, Any]) -> list[str]:
    """The request's stop sequences, after refusing what this server cannot do.

    Raises:
        OptionError: ``n`` other than 1, ``tools``/``functions``, or a bad ``stop``.
    """
    n = body.get("n")
    if n is not None and n != 1:
        raise OptionError(f"n={n!r} is not supported: this server returns one choice; leave n out or send n=1", "n",
                          "unsupported_parameter")
    for key in ("tools", "functions"):
        if body.get(key):
            raise OptionError(f"{key} are not supported: this server answers from its knowledge base and calls no "
                              f"tools; leave {key} out", key, "unsupported_parameter")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise OptionError(f"stop={stop!r} must be a string or a list of strings", "stop", "invalid_value")
    if len(stops) > MAX_STOPS:
        raise OptionError(f"stop has {len(stops)} sequences: send at most {MAX_STOPS} strings", "stop", "invalid_value")
    return [s for s in stops if s]


class OutputLimit:
    """Cuts streamed text at the first stop sequence and at ``max_tokens`` (counted by the backend's tokenizer).

    Feed it the backend's pieces in order; it returns what may be sent now, holding back a tail that could be the
    start of a stop sequence split across pieces. :meth:`close` returns the held-back rest; ``finish_reason`` is then
    ``"stop"`` or ``"length"`` (the answer reached ``max_tokens``).
    """

    def __init__(self, stops: list[str], max_tokens: int | None, count_tokens: Callable[[str], int]) -> None:
        self.stops, self.max_tokens, self.count_tokens = stops, max_tokens, count_tokens
        self.text = ""  # returned so far
        self.pending = ""  # held back: may begin a stop sequence
        self.finish_reason: str | None = None  # set once the text is cut (or closed)

    def feed(self, piece: str) -> str:
        if self.finish_reason is not None:
            return ""
        buffer = self.pending + piece
        found = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if found:
            self.pending, self.finish_reason = "", "stop"
            return self._take(buffer[: min(found)])
        held = max((n for s in self.stops for n in range(1, len(s)) if buffer.endswith(s[:n])), default=0)
        self.pending = buffer[len(buffer) - held :]
        return self._take(buffer[: len(buffer) - held])

    def close(self) -> str:
        rest, self.pending = ("" if self.finish_reason else self.pending), ""
        text = self._take(rest)
        if self.finish_reason is None:
            full = self.max_tokens is not None and self.count_tokens(self.text) >= self.max_tokens
            self.finish_reason = "length" if full else "stop"  # the backend itself may have stopped at max_tokens
        return text

    def _take(self, text: str) -> str:
        """``text`` or its longest prefix that keeps the answer within ``max_tokens`` (then the answer is done)."""
        if self.max_tokens is not None and text and self.count_tokens(self.text + text) > self.max_tokens:
            low, high = 0, len(text)  # binary search: token counts grow with the prefix
            while low < high:
                middle = (low + high + 1) // 2
                if self.count_tokens(self.text + text[:middle]) <= self.max_tokens:
                    low = middle
                else:
                    high = middle - 1
            text, self.pending, self.finish_reason = text[:low], "", "length"
        self.text += text
        return text
