"""Base vs adapter answers side by side: ``python -m finetune infer --adapter NAME --prompt "…"`` (or ``--prompts F``).

Done the way the app answers: the model is loaded by :meth:`rag.llm.hf.model.HFChatModel.load` (same resolution, ChatGLM3
conversion, template and stop tokens), the adapter is checked and loaded by the app's registry, and both answers are
greedy from the same prompt ids; the base answer runs with the adapter disabled on the same weights, so any
difference is the adapter's. (The seed's inference_hf.py loaded two models with different prompts.)
"""

from __future__ import annotations

import textwrap
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rag.core.errors import ConfigError
from rag.core.jsonl import json_lines, utf8_problem
from rag.core.types import Message


@dataclass(frozen=True)
class Comparison:
    prompt: str
    base: str
    adapter: str


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: a ``.jsonl`` of ``{"prompt": ...}`` (or ``question`` / ``instruction``) lines, else one
    prompt per non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--prompts {path} not found")
    if path.suffix != ".jsonl":
        data = path.read_bytes()
        try:
            text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise ConfigError(f"{path}:{line}: {utf8_problem(data, exc)}") from None
        return [line.strip() for line in text.splitlines() if line.strip()]
    prompts = []
    for number, record, problem in json_lines(path):
        if problem:
            raise ConfigError(f"{path}:{number}: {problem}")
        try:
            prompts.append(str(next(record[k] for k in ("prompt", "question", "instruction") if k in record)))
        except (StopIteration, TypeError) as exc:
            raise ConfigError(f"{path}:{number}: expected {{\"prompt\": ...}} ({exc})") from exc
    return prompts


def compare(adapter: str, prompts: Sequence[str], adapters_dir: str = "adapters", base: str = "", system: str = "",
            max_new_tokens: int = 256, device: str = "auto", dtype: str = "auto", source: str = "auto",
            cache_dir: str = "~/.cache/kbqa/models") -> list[Comparison]:
    """Answer each prompt with the base model and with ``adapter`` (greedy, same prompt ids).

    Args:
        adapter: registry name or adapter folder.
        prompts: user questions (one turn each).
        adapters_dir: the registry.
        base: base model ("" = the one in rag_adapter.json).
        system: an optional system prompt for both.
        max_new_tokens: answer length limit.
        device, dtype, source, cache_dir: as the app's ``llm.*`` settings.

    Raises:
        ConfigError / ModelUnavailableError / RagError: the adapter or the base can't be used (one line).
    """
    from finetune.merge import locate_adapter
    from rag.core.config import LLMConfig
    from rag.llm.base import GenerationConfig
    from rag.llm.hf.model import HFChatModel

    info = locate_adapter(adapter, adapters_dir)
    assert info.metadata is not None
    cfg = LLMConfig(backend="hf", model=base or info.metadata.base_model,
                    revision="" if base else info.metadata.base_revision, source=source, device=device, dtype=dtype,
                    adapter=info.name, adapters_dir=str(info.path.parent), cache_dir=cache_dir,
                    max_new_tokens=max_new_tokens, temperature=0.0)
    chat = HFChatModel.load(cfg)  # checks the adapter against the base like the app, then loads it
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    results = []
    for prompt in prompts:
        messages = ([Message("system", system)] if system else []) + [Message("user", prompt)]
        results.append(Comparison(prompt, chat.generate(messages, gen, adapter=None).strip(),
                                  chat.generate(messages, gen, adapter=info.name).strip()))
    return results


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _wrap(text: str, width: int) -> list[str]:
    """Wrap to ``width`` display columns (CJK characters count two)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for ch in paragraph:
            if _width(line + ch) > width:
                lines.append(line)
                line = ""
            line += ch
        lines.append(line)
    return lines


def side_by_side(comparison: Comparison, adapter: str, width: int = 100) -> str:
    """One comparison as text: the prompt, then base and adapter answers in two columns."""
    column = max(20, (width - 3) // 2)
    left, right = _wrap(comparison.base, column), _wrap(comparison.adapter, column)
    rows = [f"{'base':<{column}} │ adapter {adapter}", f"{'─' * column}─┼─{'─' * column}"]
    for index in range(max(len(left), len(right))):
        cell = left[index] if index < len(left) else ""
        rows.append(cell + " " * (column - _width(cell)) + " │ " + (right[index] if index < len(right) else ""))
    prompt = textwrap.shorten(comparison.prompt.replace("\n", " "), width=width * 2, placeholder=" …")
    return f"▶ {prompt}\n" + "\n".join(rows)
