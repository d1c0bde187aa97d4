"""Question (+ history) -> retrieve -> prompt -> stream -> verified citations -> Answer.

``QAPipeline.ask`` returns an :class:`AnswerStream`: iterate it for the answer's text pieces (what a chat page
shows while the model writes), then read ``.answer`` for the final :class:`rag.core.types.Answer` with verified
citations. One answerability decision (:func:`rag.answer.answerable.assess`) guards every backend: when retrieval
finds nothing above the threshold or the passages do not cover the question's key terms, the model is not called
at all: the answer is the refusal sentence, and the closest passages are attached so the user can look anyway.
Without a language model the answer is the decision's supporting sentences; a model's answer whose citations all
fail verification is replaced by the refusal too (``AnswerStream.replaced``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rag.answer.answerable import (
    Assessment,
    SentenceSimilarity,
    TermAlignment,
    assess,
    embedder_alignment,
    embedder_similarity,
    key_terms,
)
from rag.answer.calibration import Calibration, load_calibration
from rag.answer.cite import verify
from rag.answer.extractive import pieces, previous_sentences, render
from rag.answer.prompt import (
    REFUSAL,
    Prompt,
    build_messages,
    clean_rewrite,
    is_refusal,
    needs_rewrite,
    resolve_language,
    rewrite_followup_messages,
)
from rag.answer.retrieve import Retriever
from rag.answer.sentences import parent_text
from rag.core.config import RagConfig
from rag.core.errors import ConfigError
from rag.core.types import Answer, Hit, Message
from rag.index.bridge import Dictionary, load_dictionary
from rag.llm.base import ChatModel, GenerationConfig

log = logging.getLogger(__name__)

BASE = "__base__"  # default adapter argument of ask(): "whatever llm.adapter configures" (None = the base model alone)


@dataclass
class AnswerStream:
    """Iterate for text pieces; afterwards ``answer`` holds the final Answer (``quotes``: n -> supporting sentence)."""

    pieces: Iterator[str]
    answer: Answer | None = None
    question: str = ""
    standalone_question: str = ""
    quotes: dict[int, str] = field(default_factory=dict)
    assessment: Assessment | None = None
    replaced: bool = False  # the model's answer had no supported citation and was replaced by the refusal

    def __iter__(self) -> Iterator[str]:
        yield from self.pieces

    def text(self) -> str:
        """Consume the stream and return the final (verified) answer text."""
        for _ in self:
            pass
        assert self.answer is not None
        return self.answer.text


class QAPipeline:
    """Answer questions from an index with a chat model.

    Args:
        retriever: the retriever over the knowledge index.
        model: the chat model (transformers, OpenAI-compatible or extractive).
        cfg: the app config (answer, llm and retrieve sections).
    """

    def __init__(self, retriever: Retriever, model: ChatModel, cfg: RagConfig) -> None:
        if cfg.answer.decision not in ("calibrated", "coverage"):
            raise ConfigError(f"answer.decision={cfg.answer.decision!r} must be 'calibrated' or 'coverage'")
        bar = cfg.answer.min_answer_probability
        if bar is not None and not 0.0 <= bar <= 1.0:
            raise ConfigError(f"answer.min_answer_probability={bar} must be between 0 and 1")
        for key in ("min_term_coverage", "semantic_min_coverage", "min_sentence_similarity", "relative_credit"):
            if not 0.0 <= getattr(cfg.answer, key) <= 1.0:
                raise ConfigError(f"answer.{key}={getattr(cfg.answer, key)} must be between 0 and 1")
        if not 0 <= cfg.answer.anchor_slack <= 2:
            raise ConfigError(f"answer.anchor_slack={cfg.answer.anchor_slack} must be 0, 1 or 2")
        if not 0 <= cfg.answer.align_lead <= 64:
            raise ConfigError(f"answer.align_lead={cfg.answer.align_lead} must be between 0 and 64")
        for key in ("pick_similarity_margin", "rank_margin", "option_margin"):  # differences of coverage scores (0..2)
            if not 0.0 <= getattr(cfg.answer, key) <= 2.0:
                raise ConfigError(f"answer.{key}={getattr(cfg.answer, key)} must be between 0 and 2")
        self.retriever = retriever
        self.model = model
        self.cfg = cfg
        self.extractive = model.info().backend == "extractive"
        # the index's embedder compares the question with single sentences (the semantic path of the decision)
        embedder = getattr(getattr(retriever, "index", None), "embedder", None)
        self.similarity: SentenceSimilarity | None = embedder_similarity(embedder) if embedder is not None else None
        self.alignment: TermAlignment | None = embedder_alignment(embedder) if embedder is not None else None
        # meaning picks among equally covering sentences only with a language model's embedder (a hash embedder's
        # cosine is word overlap again, which the coverage already counted)
        describe = getattr(embedder, "describe", None)
        described = describe() if callable(describe) else {}
        self.semantic_embedder = bool(described) and described.get("kind") != "hash"
        # the calibrated decision: the model fitted with this embedder's similarities, else the one without them
        self.calibration: Calibration | None = None
        if cfg.answer.decision == "calibrated":
            self.calibration = load_calibration(described.get("name") if self.semantic_embedder else None,
                                                cfg.answer.calibration or None)
        # the decision's dictionary relatives: the retriever's bridge dictionary (loaded once per process)
        self.dictionary: Dictionary | None = None
        if cfg.answer.relative_credit > 0:
            self.dictionary = getattr(retriever, "dictionary", None) or load_dictionary("cedict")

    def standalone(self, question: str, history: Sequence[Message], adapter: str | None) -> str:
        """A follow-up made self-contained (by the model, or by prefixing the last question when extractive)."""
        if not history or not self.cfg.answer.rewrite_followups or not needs_rewrite(question, history):
            return question
        last_user = next((m.content for m in reversed(history) if m.role == "user"), "")
        if self.extractive:
            return f"{last_user} {question}".strip()
        messages = rewrite_followup_messages(question, history)
        gen = GenerationConfig(max_new_tokens=96, temperature=0.0)
        output = "".join(self.model.stream(messages, gen, adapter=adapter))
        return clean_rewrite(output, question)

    def retrieve(self, question: str, **overrides: Any) -> list[Hit]:
        return self.retriever.search(question, **overrides)

    def ask(
        self,
        question: str,
        history: Sequence[Message] = (),
        adapter: str | None = BASE,
        hits: Sequence[Hit] | None = None,
        gen: GenerationConfig | None = None,
        **retrieve_overrides: Any,
    ) -> AnswerStream:
        """Start answering ``question``; see :class:`AnswerStream`.

        Args:
            question: the user's question.
            history: earlier turns of this conversation (trimmed to the history budget).
            adapter: a LoRA adapter name; ``BASE`` (default) = the configured ``llm.adapter``; None = base model.
            hits: reuse already retrieved hits (compare mode answers twice on the same context).
            gen: sampling settings (default from ``llm``).
            **retrieve_overrides: per-call retrieval settings (top_k, mode, score_threshold, ...).
        """
        if adapter == BASE:
            adapter = self.cfg.llm.adapter or None
        stream = AnswerStream(iter(()), question=question)
        stream.pieces = self._run(stream, question, history, adapter, hits, gen, retrieve_overrides)
        return stream

    def _run(self, stream: AnswerStream, question: str, history: Sequence[Message], adapter: str | None,
             hits: Sequence[Hit] | None, gen: GenerationConfig | None, overrides: dict[str, Any]) -> Iterator[str]:
        info = self.model.info()
        model_name = info.model_id + (f" + {adapter}" if adapter else "")
        language = resolve_language(self.cfg.answer.language, question)
        standalone = self.standalone(question, history, adapter) if hits is None else question
        stream.standalone_question = standalone
        found = list(hits) if hits is not None else self.retrieve(standalone, **overrides)
        answer_cfg = self.cfg.answer
        corpus = getattr(self.retriever, "index", None)  # a stand-in retriever may have no index
        corpus = corpus if hasattr(corpus, "neighbours") else None
        asked = standalone
        exclude: list[str] = []
        if self.extractive and standalone != question:
            # the extractive "rewrite" only prefixes the last question: judge the follow-up by its own key terms
            # when it has any ("那验证码呢？" -> 验证码), and give what is new (earlier sentences are not repeated)
            asked = question if key_terms(question, corpus) else standalone
            exclude = previous_sentences(history, question)
        decision = assess(asked, found, corpus,
                          min_coverage=answer_cfg.min_term_coverage,
                          cross_language_min_dense=answer_cfg.cross_language_min_dense,
                          max_sentences=answer_cfg.max_sentences, exclude=exclude, similarity=self.similarity,
                          min_similarity=answer_cfg.min_sentence_similarity,
                          semantic_min_coverage=answer_cfg.semantic_min_coverage, dictionary=self.dictionary,
                          relative_credit=answer_cfg.relative_credit,
                          pick_margin=answer_cfg.pick_similarity_margin if self.semantic_embedder else 0.0,
                          calibration=self.calibration, min_probability=answer_cfg.min_answer_probability,
                          alignment=self.alignment, align_lead=answer_cfg.align_lead,
                          rank_margin=answer_cfg.rank_margin, option_margin=answer_cfg.option_margin,
                          anchor_slack=answer_cfg.anchor_slack)
        stream.assessment = decision
        if not decision.answerable:
            log.info("refused (%s): %s", decision.reason or "no hits", standalone)
            text = REFUSAL[language]
            stream.answer = Answer(text=text, hits=found or self._closest(standalone, overrides), refused=True,
                                   model=model_name)
            yield text
            return
        if self.extractive:
            text = render(decision.support)
            # the quoted sentences are whole: checked against the text they were taken from (the chunk with its
            # neighbours), not cut at the chunk's edge
            quoted = {s.hit_number for s in decision.support}
            sources = [parent_text(h.chunk, corpus.neighbours(h.chunk))[0] if n in quoted else h.chunk.text
                       for n, h in enumerate(found, 1)] if corpus is not None else None
            checked = verify(text, found, answer_cfg.citation_min_overlap, answer_cfg.drop_unsupported_citations,
                             sources)
            if not checked.text.strip():  # every sentence failed its check: nothing is left to say
                stream.answer = Answer(text=REFUSAL[language], hits=found, refused=True, model=model_name)
                yield REFUSAL[language]
                return
            yield from pieces(checked.text, 8)
            stream.quotes = checked.quotes
            stream.answer = Answer(text=checked.text, hits=found, citations=checked.citations, refused=False,
                                   model=model_name)
            return
        gen = gen or GenerationConfig.from_llm(self.cfg.llm)
        prompt = self.fit_prompt(standalone, found, history, gen, language, decision.missing)
        streamed: list[str] = []
        for piece in self.model.stream(prompt.messages, gen, adapter=adapter, context=prompt.hits_used):
            streamed.append(piece)
            yield piece
        raw = "".join(streamed)
        checked = verify(raw, prompt.hits_used, answer_cfg.citation_min_overlap, answer_cfg.drop_unsupported_citations)
        refused = is_refusal(checked.text)
        if not refused and not any(c.supported for c in checked.citations):
            log.info("answer replaced by the refusal: none of its citations is supported (%s)", raw[:200])
            stream.replaced = True
            stream.answer = Answer(text=REFUSAL[language], hits=prompt.hits_used, refused=True, model=model_name)
            return
        stream.quotes = checked.quotes
        stream.answer = Answer(text=checked.text, hits=prompt.hits_used, citations=checked.citations,
                               refused=refused, model=model_name)

    def _closest(self, question: str, overrides: dict[str, Any]) -> list[Hit]:
        """The best passages with the refusal gates off (shown with a refusal so the user can look anyway)."""
        gates_off = {"score_threshold": 0.0, "bm25_threshold": 0.0, "unknown_name_min_chars": 0}
        return self.retrieve(question, **{**overrides, **gates_off})

    def fit_prompt(self, question: str, hits: Sequence[Hit], history: Sequence[Message], gen: GenerationConfig,
                   language: str, missing_terms: Sequence[str] = ()) -> Prompt:
        """Build the prompt within the model's window: budgets shrink (history first) until prompt + answer fit."""
        answer_cfg = self.cfg.answer
        room = self.model.context_window - gen.max_new_tokens
        encode = getattr(self.model, "encode_messages", None)  # exact count when the backend can template
        for _ in range(8):
            prompt = build_messages(question, hits, history, answer_cfg, self.model.count_tokens, language,
                                    missing_terms)
            used = len(encode(prompt.messages)) if encode else prompt.tokens + 8 * len(prompt.messages)
            if used <= room:
                return prompt
            answer_cfg = replace(answer_cfg, history_tokens=answer_cfg.history_tokens // 2,
                                 context_tokens=max(64, int(answer_cfg.context_tokens * 0.6)))
        return prompt  # the backend refuses a prompt that still does not fit, with a clear error

    def compare(self, question: str, adapter: str, history: Sequence[Message] = (),
                **retrieve_overrides: Any) -> tuple[AnswerStream, AnswerStream]:
        """The same question answered by the base model and by ``adapter`` on the same retrieved context."""
        standalone = self.standalone(question, history, None)
        hits = self.retrieve(standalone, **retrieve_overrides)
        base = self.ask(standalone, history, adapter=None, hits=hits)
        tuned = self.ask(standalone, history, adapter=adapter, hits=hits)
        return base, tuned


def open_pipeline(cfg: RagConfig, index_dir: str | None = None) -> tuple[QAPipeline, str]:
    """Open the index and the configured model; returns the pipeline and the fallback reason ('' if none)."""
    from rag.answer.backend import load_chat_model
    from rag.index.reader import KnowledgeIndex

    index = KnowledgeIndex.open(index_dir or cfg.index.dir, cfg)
    loaded = load_chat_model(cfg.llm)
    return QAPipeline(Retriever(index, cfg.retrieve), loaded.model, cfg), loaded.fallback_reason
