"""The ChatModel protocol: stream an answer for a list of messages, count tokens, say what it is."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rag.core.config import LLMConfig
from rag.core.types import Hit, Message


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings of one request (temperature 0 = greedy)."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 0.8
    repetition_penalty: float = 1.0
    seed: int | None = None

    @classmethod
    def from_llm(cls, cfg: LLMConfig) -> GenerationConfig:
        return cls(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.repetition_penalty)


@dataclass(frozen=True)
class ModelInfo:
    """What a backend is, for the UI, the CLIs and answer records."""

    backend: str  # hf | openai | extractive
    model_id: str
    revision: str = ""
    dtype: str = ""
    device: str = ""
    adapters: tuple[str, ...] = ()  # adapters loaded on this base
    template: str = ""  # chat template name (chatglm3, chatml, glm4, llama3, ...)
    extra: dict[str, str] = field(default_factory=dict)


class ChatModel(Protocol):
    """A chat model. Implementations serialise generation (one at a time per loaded model)."""

    context_window: int

    def stream(
        self,
        messages: Sequence[Message],
        gen: GenerationConfig | None = None,
        adapter: str | None = None,
        context: Sequence[Hit] = (),
    ) -> Iterator[str]:
        """Yield the answer's text in pieces.

        Args:
            messages: system / user / assistant turns; the last is the user's.
            gen: sampling settings (default: the backend's).
            adapter: a LoRA adapter name to answer with; None = the base model (adapter disabled).
            context: the retrieved hits behind the prompt (the extractive backend answers from them; LLMs ignore it,
                since the prompt already quotes them).
        """
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes in this model's tokenizer (an estimate where no tokenizer is at hand)."""
        ...

    def info(self) -> ModelInfo:
        ...
