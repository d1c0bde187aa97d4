"""The extractive backend: answers with whole sentences of the retrieved passages, cited.

It is the app's answer when no language model is available. The sentences and the refusal come from the shared
answerability decision (:func:`rag.answer.answerable.assess`): the question's key terms must be covered by the
supporting sentences, else the answer is the refusal sentence. Each sentence is quoted from its document (line
breaks of the layout joined), in document order, followed by ``[n]`` of its hit; a second sentence is there only
when it covers key terms the first does not. As a chat model it reads the question from the prompt (see
:func:`rag.answer.prompt.question_of`) and the passages from ``context`` (the prompt's ``hits_used``, so ``[n]`` is
``context[n - 1]``); sentences of earlier answers in the prompt's history are not repeated unless the question is
asked again.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator, Sequence

from rag.answer.answerable import Support, assess
from rag.answer.cite import MARKER, split_sentences, strip_citations
from rag.answer.prompt import REFUSAL, defang, detect_language, question_of
from rag.answer.sentences import CLOSERS, ENDS
from rag.core.text import CJK
from rag.core.types import Hit, Message
from rag.llm.base import GenerationConfig, ModelInfo

_WORD = re.compile(r"[^\W_]+")
_CJK_CLOSERS = ("。", "！", "？", "；", "…", "”", "」", "』", "）")
_AFTER_COLON = re.compile(r"：|:\s")  # what a sentence says after its last colon: the commands it introduces
# A command or code line: it ends with a file or domain name (a path, a URL), an option or a bracket, or holds an option,
# "/", "=", "|", "$" or "`"; a full stop would change it ("dig -d DOMAIN.com." names another domain).
_CODE = re.compile(r"\w\.\w+$|[)\]}>]$|(?:^|\s)--?\w|[/=|$`]")
_GAP = re.compile(r"[ \t\u3000]{2,}")  # spaces a justified or columned text puts between words


def render(support: Sequence[Support], max_chars: int = 400) -> str:
    """The answer text: each supporting sentence followed by ``[n]`` of its hit (quoted text is defanged and its
    own bracketed numbers become ``(n)``, so they can't pass for citations). A line-item sentence without
    punctuation gets a full stop, unless it is a command or code line (no CJK, see ``_CODE``): that is quoted as it
    is and ends its line (so do the command lines a sentence introduces with a colon), as nothing else would end its
    sentence for the answer's readers (and :func:`rag.answer.cite.sentence_spans`). Runs of spaces (a manual page's
    justified text, an option's column gap) become one space, except in a command or code line. A sentence longer than
    ``max_chars`` is never cut, only left out."""
    parts: list[str] = []
    for item in support:
        text = MARKER.sub(lambda m: f"({m.group(1)})", defang(item.text)).strip()
        if len(text) > max_chars and parts:
            continue
        if parts and not parts[-1].rstrip("[]0123456789").endswith(_CJK_CLOSERS + ("\n",)):
            parts.append(" ")
        bare = not text.rstrip(CLOSERS).endswith(ENDS)  # "（……权限。）" ends inside its brackets
        # the command lines a sentence introduces ("请使用下列命令： rm -- -foo") end it as a command line would
        said = _AFTER_COLON.split(text)[-1]
        code = bare and not CJK.search(said) and bool(_CODE.search(said))
        if not code:  # a manual page's justified line ("这个版本的          df 不能显示…") reads with one space
            text = _GAP.sub(" ", text)
        if bare and not code:
            text += "。" if CJK.search(text) else "."
        parts.append(f"{text}[{item.hit_number}]" + "\n" * code)
    return "".join(parts).rstrip("\n")


def previous_sentences(history: Sequence[Message], question: str) -> list[str]:
    """Sentences of earlier answers in ``history`` (not to be repeated), or none when ``question`` repeats an
    earlier question (a question asked again gets its answer again)."""
    def key(text: str) -> str:
        return "".join(unicodedata.normalize("NFKC", text).lower().split()).rstrip("?？.。!！")

    if any(m.role == "user" and key(m.content) == key(question) for m in history):
        return []
    return [strip_citations(s) for m in history if m.role == "assistant" for s in split_sentences(m.content)]


class ExtractiveModel:
    """A :class:`~rag.llm.base.ChatModel` that quotes the supporting sentences of the retrieved hits.

    Args:
        max_sentences: at most this many sentences per answer.
        max_chars: at most this many characters of quoted text.
        min_coverage: the share of the question's key-term weight the sentences must cover, else it refuses.
        piece_chars: characters per streamed piece.
    """

    context_window = 1 << 20  # no model behind it: the prompt's size never matters

    def __init__(self, max_sentences: int = 3, max_chars: int = 400, min_coverage: float = 0.6,
                 piece_chars: int = 8) -> None:
        if not 0.0 <= min_coverage <= 1.0:
            raise ValueError(f"min_coverage={min_coverage} (answer.min_term_coverage) must be between 0 and 1")
        if max_sentences < 1 or max_chars < 10:
            raise ValueError(f"max_sentences={max_sentences} must be ≥ 1 and max_chars={max_chars} ≥ 10")
        self.max_sentences, self.max_chars = max_sentences, max_chars
        self.min_coverage, self.piece_chars = min_coverage, piece_chars

    def stream(self, messages: Sequence[Message], gen: GenerationConfig | None = None, adapter: str | None = None,
               context: Sequence[Hit] = ()) -> Iterator[str]:
        """Yield :meth:`answer` in pieces of ``piece_chars`` characters (``gen`` and ``adapter`` do not apply)."""
        question = question_of(messages)
        history = [m for m in messages if m.role != "system"][:-1]
        text = self.answer(question, context, _language(messages), previous_sentences(history, question))
        yield from pieces(text, self.piece_chars)

    def answer(self, question: str, hits: Sequence[Hit], language: str | None = None,
               exclude: Sequence[str] = ()) -> str:
        """1–``max_sentences`` whole sentences from ``hits``, each followed by ``[n]`` of its hit, or the refusal.

        Without the index, a sentence cut by its chunk's edge is left out; the pipeline passes the index so such a
        sentence is completed from the neighbouring chunk (:func:`rag.answer.answerable.assess`).
        """
        lang = language or detect_language(question)
        decision = assess(question, hits, None, min_coverage=self.min_coverage, max_sentences=self.max_sentences,
                          max_chars=self.max_chars, exclude=exclude)
        return render(decision.support, self.max_chars) if decision.answerable else REFUSAL[lang]

    def count_tokens(self, text: str) -> int:
        """A rough estimate: one token per CJK character, 1.3 per other word, 0.5 per symbol."""
        cjk = len(CJK.findall(text))
        rest = CJK.sub(" ", text)
        words = len(_WORD.findall(rest))
        symbols = sum(1 for ch in _WORD.sub(" ", rest) if not ch.isspace())
        return math.ceil(cjk + 1.3 * words + 0.5 * symbols)

    def info(self) -> ModelInfo:
        return ModelInfo(backend="extractive", model_id="extractive")


def pieces(text: str, size: int) -> Iterator[str]:
    """``text`` in pieces of ``size`` characters (how an answer streams)."""
    for start in range(0, len(text), size):
        yield text[start : start + size]


def _language(messages: Sequence[Message]) -> str | None:
    """The language the prompt asked for (its system message carries that language's refusal sentence), if any."""
    system = next((m.content for m in messages if m.role == "system"), "")
    return next((lang for lang, sentence in REFUSAL.items() if sentence in system), None)
