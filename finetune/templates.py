"""Chat templates for training: :mod:`rag.models.templates` (the very code that builds the app's prompts) plus what only
training needs: turning a conversation into ``input_ids`` / ``labels`` within the token budget.

Labels are -100 everywhere except each assistant turn's tokens and the token that ends the turn (see
:mod:`rag.models.templates` for how each family ends a turn). Because the ids come from ``encode_for_training``, which checks
that the prompt before every assistant turn equals ``encode(..., add_generation_prompt=True)``, the model is trained
on exactly the ids it is served with. Packing (several examples in one row, :mod:`finetune.packing`) restarts the
position ids per example, so no attention crosses examples (transformers builds the block-diagonal mask from them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rag.core.types import Message
from rag.models.templates import IGNORE_INDEX, ChatTemplate


@dataclass(frozen=True)
class TokenizedExample:
    """One conversation as model inputs.

    Attributes:
        input_ids: the conversation's ids, ``[seq_len]``.
        labels: same length; -100 where the token is not trained.
        dropped_turns: oldest user/assistant pairs left out to fit ``max_input_tokens``.
        answer_cut: the last answer was cut to ``max_output_tokens`` (so it has no end token).
    """

    input_ids: list[int]
    labels: list[int]
    dropped_turns: int = 0
    answer_cut: bool = False


def trained_spans(labels: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of trained (non -100) labels."""
    spans: list[tuple[int, int]] = []
    for index, label in enumerate(labels):
        if label == IGNORE_INDEX:
            continue
        if spans and spans[-1][1] == index:
            spans[-1] = (spans[-1][0], index + 1)
        else:
            spans.append((index, index + 1))
    return spans


def last_answer_start(labels: Sequence[int]) -> int:
    """Index of the last assistant turn's first trained token: everything before it is that turn's prompt."""
    spans = trained_spans(labels)
    return spans[-1][0] if spans else len(labels)


def prompt_ids(template: ChatTemplate, tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """The serving prompt for the conversation's last answer: every turn before it, then the generation prompt."""
    return template.encode(tokenizer, list(messages[:-1]), add_generation_prompt=True)


def tokenize_conversation(template: ChatTemplate, tokenizer: Any, messages: Sequence[Message],
                          max_input_tokens: int, max_output_tokens: int) -> TokenizedExample | None:
    """``messages`` -> ids and labels within the budget, or None when even its last exchange alone is too long.

    The prompt of the last answer must fit ``max_input_tokens``: the oldest user/assistant pairs are dropped until it
    does (the app trims history the same way). The last answer's trained tokens are cut to ``max_output_tokens``
    (0 = no limit), as ChatGLM3's finetune_demo does. The ids end at the last trained token (ChatML's newline after
    ``<|im_end|>`` is left out: no label depends on it), so a row never exceeds the two limits added up.
    """
    system = [m for m in messages[:1] if m.role == "system"]
    body = list(messages[len(system):])
    dropped = 0
    while True:
        ids, labels = template.encode_for_training(tokenizer, system + body)
        start, end = trained_spans(labels)[-1]
        if start <= max_input_tokens:
            break
        if len(body) <= 2:
            return None
        body, dropped = body[2:], dropped + 1
    cut = 0 < max_output_tokens < end - start
    end = start + max_output_tokens if cut else end  # tokens after the last trained one never reach the loss
    return TokenizedExample(ids[:end], labels[:end], dropped, cut)


def prompt_and_completion(template: ChatTemplate, tokenizer: Any, prompt: Sequence[Message], completion: str,
                          max_input_tokens: int, max_output_tokens: int) -> tuple[list[int], list[int]] | None:
    """The serving prompt's ids and the answer's trained ids (its end-of-turn token included) for a preference
    stage, within the same budget as :func:`tokenize_conversation` (None when the prompt cannot fit)."""
    example = tokenize_conversation(template, tokenizer, [*prompt, Message("assistant", completion)],
                                    max_input_tokens, max_output_tokens)
    if example is None:
        return None
    start = last_answer_start(example.labels)
    return example.input_ids[:start], example.input_ids[start:]
