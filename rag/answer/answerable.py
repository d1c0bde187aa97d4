"""Can the retrieved passages answer the question? One decision for every backend, made without a language model.

The question's key terms (Chinese words cut by jieba, English words, names and numbers; question words such as
多少 / what removed) are weighted by their BM25 idf in the index, so a rare word counts more than 公司, and a word
no chunk holds counts most. Supporting sentences are whole sentences of the retrieved chunks (taken from the
neighbouring text where a chunk edge cuts them, see :mod:`rag.answer.sentences`), read together with their heading
path. The question is answerable when the best sentences cover at least ``min_coverage`` of the terms' weight.

Other words for the same thing, and the other language, are seen through a bilingual dictionary (CC-CEDICT, the one
the retriever's bridge loaded): a sentence holding a key term's relative (目录 ~ directory ~ 名录, sizes ~ 大小,
:func:`relatives_of`) covers it ``relative_credit``, and every sentence is scored on every key term, whatever its
language. Without a dictionary an English question over Chinese text (or the reverse) cannot match word for word:
there only the terms both languages write alike (names such as VPN or WireGuard, numbers) count, they must all be
covered, and the passage's dense similarity must reach ``cross_language_min_dense``. Either way the passage that
answers must hold every name and number of the question.

Word overlap misses paraphrases ("文件夹都排在前面" answered by "将目录排在文件前面"). An opt-in semantic path
(``min_similarity`` > 0, off by default) uses a ``similarity`` (the index's embedder: the question as a query, the
sentences as passages): a question whose coverage is short of ``min_coverage`` but at least
``semantic_min_coverage`` is answered when one sentence is at least ``min_similarity`` similar to it and its passage
holds every name and number of the question; that sentence leads the answer. It is off because with the offline
multilingual-e5-small a sentence about the right command is as similar to a question it does not answer ("gzip 怎么
设置密码") as to one it does: on the dev2 test split it cut false refusals from 0.62 to 0.39 and refusals of
unanswerable questions from 1.0 to 0.77 (docs/EVAL.md). Another embedder's similarities differ in scale: calibrate
them for it.

The same :class:`Assessment` decides the refusal (the model is never called for a refused question), provides the
extractive answer's sentences and tells the LLM prompt which terms the passages lack.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import unicodedata
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Protocol

import numpy as np

from rag.answer.calibration import Calibration
from rag.answer.sentences import is_heading_line, normalise, parent_text, segment
from rag.core.text import CJK
from rag.core.types import Chunk, Hit
from rag.index.bm25 import STOPWORDS
from rag.index.bridge import Dictionary

_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_TERM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+#/-]*[A-Za-z0-9+#]|[A-Za-z0-9]")
# Words that shape a question but say nothing about its topic.
_QUESTION_SHAPE = frozenset(
    ["多少", "什么", "哪些", "哪个", "哪里", "哪儿", "哪", "几", "几个", "几天", "几次", "几点", "几号", "几年", "多少钱", "多久", "多长", "多大", "是否", "能否", "能不能", "可否", "怎么", "怎么办",
     "怎么样", "如何", "怎样", "为什么", "为何", "请问", "吗", "呢", "吧", "可以", "有没有", "是不是", "需要", "应该", "要", "一下", "告诉", "关于",
     "谁", "何时", "什么时候", "时间", "有", "是", "哪家", "多", "少", "请", "我", "我们", "你", "应", "该", "得", "会", "能", "做", "用",
     "进行", "具体", "一般", "通常", "目前", "现在", "情况", "方法", "办法", "步骤", "时候", "what", "which", "how", "many", "much",
     "does", "do", "did", "is", "are", "was", "were", "there", "can", "could", "would", "should", "will",
     "tell", "me", "about", "please", "any", "get", "use", "used", "using", "the", "a", "an", "if", "i", "my",
     "our", "your", "you", "be", "need", "needs", "way", "ways", "long", "often", "kind",
     "想要", "想让", "不想", "直接", "一起", "比如", "例如", "还会", "还是", "有个", "同一个", "为准", "该怎么"])
# English words that shape a sentence, not its topic ("make ls show", "only checks whether", "mainly rely on").
ENGLISH_FILLER = frozenset(
    ["make", "makes", "like", "instead", "only", "whether", "already", "must", "mainly", "according", "also", "just",
     "still", "want", "wants", "really", "actually", "possible", "certain", "other", "than", "then", "here", "into",
     "onto", "it", "its", "they", "them", "their", "this", "these", "those", "so", "such", "very", "some", "all",
     "each", "every", "both", "either", "ever", "even", "yet", "mean", "means", "meant", "happen", "happens",
     "again", "anything", "something", "thing", "things", "one", "ones", "by", "of", "to", "in", "on", "at", "for",
     "with", "from", "and", "or", "not", "no", "when", "where", "who", "why", "whom", "whose", "has", "have", "had",
     "been", "being", "let", "lets", "keep", "say", "says", "said", "same", "different", "difference", "happen"])
QUESTION_WORDS = _QUESTION_SHAPE | ENGLISH_FILLER
# Characters that make an unplaced word (jieba's guess, 时想 / 还会 / 只改) a piece of how the question is put.
FUNCTION_CHARACTERS = frozenset("想让还只就都也再又很太把被给要能会该得着过吗呢吧啊了的是在有个时后比次用叫不别")
_ASKING = re.compile(r"^(?:几|多(?=[少久长大远高重宽厚快]))[\u4e00-\u9fff]?$")  # 几台 几个月 多久 多长: asking, not a topic
# The kind of thing asked for, right after a question word ("用哪个参数", "which option"): the answer names one
# (-S, --inode) and need not say 参数 / option, so it is no key term there.
_ASKED_KIND = re.compile(r"(哪个|哪些|什么|哪种|哪一个|哪条|哪项)\s*(?:参数|选项|命令|工具|字段|格式|用法|写法|意思)"
                         r"|\b(which|what)\s+(?:option|options|flag|flags|command|commands|tool|parameter)\b",
                         re.IGNORECASE)
# Dictionary relatives (relatives_of): how many headwords a gloss word may lead before it is too broad to link a
# Chinese word to them, how many relatives a term keeps and what a relative is worth (answer.relative_credit).
MAX_GLOSS_HEADWORDS = 8
MAX_RELATIVES = 12
RELATIVE_CREDIT = 0.8
# Gloss words that say what kind of thing, not which: a dictionary links hundreds of unrelated words through them.
BROAD_GLOSSES = frozenset(
    ["thing", "things", "matter", "way", "method", "kind", "type", "sort", "form", "part", "place", "time", "person",
     "people", "make", "do", "use", "get", "give", "take", "put", "set", "let", "have", "see", "look", "go", "come",
     "say", "tell", "know", "think", "want", "need", "can", "may", "must", "should", "able", "good", "bad", "big",
     "small", "new", "old", "other", "another", "same", "all", "each", "every", "some", "many", "much", "more",
     "most", "less", "few", "first", "last", "next", "one", "two", "also", "very", "only", "just", "still", "again",
     "already", "even", "used", "general", "common", "normal", "state", "case", "point", "number", "name", "word",
     "item", "level", "area", "side", "aspect", "situation", "condition", "relation", "fact", "act", "action",
     "work", "world", "day", "year", "class", "grade", "stage", "degree", "rate", "measure", "unit", "order",
     "line", "top", "head", "end", "hand", "body", "mouth", "eye", "heart", "water", "fire", "earth", "stuff"])
# A manual page's usage line: a command and only placeholders ("../src/sort [OPTION]...", "ls [选项]...").
_SYNOPSIS = re.compile(r"\S+(?:\s+(?:\[[^\]]*\]|<[^>]*>|[A-Z][A-Z_]*)(?:\.\.\.|…)?)+\s*(?:\.\.\.|…)?[。.]?"
                       r"|(?:\[[^\]]*\](?:\.\.\.|…)?\s*)+[。.]?")
# BM25 idf of a word a quarter of the chunks hold, ln(1 + 0.75 / 0.25): a name that common is the corpus's subject
COMMON_NAME_IDF = math.log(4.0)
MIN_NAMES_FOR_SLACK = 3  # assess(anchor_slack) lets a passage lack a name only when the question has this many
# the calibrated decision's best similarity looks at this many of the retrieved sentences (in hit order)
MAX_SIMILARITY_SENTENCES = 64
_REFERENCE = re.compile(r"[A-Za-z_][\w.:+-]*\(\d[a-z]*\),?")  # a manual-page reference: ssh-add(1), ssh_config(5)
# A web manual's navigation bar: two or more bracketed links, "|" between them ("[ << 教程 ] | [ 首页 ][ 目录 ]").
_NAVIGATION = re.compile(r"\s*(?:\[[^\[\]]{1,80}\]\s*\|?\s*){2,}")
# A sentence that adds to one before it ("You can also start a factory reset from the app", 另外 / 也可以 …)
# presupposes the main statement: that one leads.
_ADDITIVE = re.compile(r"^\W*(?:(?:you|users?) (?:can|may|could) also\b|also\b|alternatively\b|in addition\b|"
                       r"additionally\b|另外|此外|也可以|还可以|或者也?可以)", re.IGNORECASE)
# A how-to question ("怎么创建软链接", "how do I ...", "用哪个参数") and a line that documents a command's option
# ("-s, --symbolic 创建符号链接而非硬链接", "--delete 把指定文件从存档中删除"): see assess(option_margin)
_HOW_TO = re.compile(r"怎么|怎样|如何|用什么|哪个(?:参数|选项)|哪些(?:参数|选项)|\bhow (?:do|can|could|should|would|to)\b"
                     r"|\bwhich (?:option|flag|switch)", re.IGNORECASE)
_OPTION_LINE = re.compile(r"^\s*[-\u2010\u2011\u2212]{1,2}[A-Za-z0-9]")
# A manual page's title or footer line ends with its name and section after a column gap (``TEE(1)   用户命令
# TEE(1)``, ``GNU coreutils 9.1   2022年9月   TEE(1)``): a running head, never quoted.
_MAN_TITLE = re.compile(r"\s{2,}[\w.+-]+\(\d\w*\)[。.]?$")
_NAME_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+/-]*[A-Za-z0-9]|[A-Za-z]")
# A one-letter command-line option or format directive (-r, -S, %F, +%F): a token of its own, its case meaningful
# (ls -r reverses, -R recurses; date's %F is the date, %f no directive). As a bare letter it would be found in almost
# any English text; as "-r" / "%F" only where that option is written. Hyphen-like dashes (‐ ‑ − of groff's UTF-8
# manual pages) count as the hyphen.
_OPTION = re.compile(r"(?<![A-Za-z0-9_\-\u2010\u2011\u2212%])([\-\u2010\u2011\u2212%])([A-Za-z])(?![A-Za-z0-9_])")


# (question, sentences) -> one similarity per sentence, higher = closer
SentenceSimilarity = Callable[[str, Sequence[str]], Sequence[float]]
# (question, its key terms, sentences) -> per sentence, per term, how closely a word of the sentence says it (0..1)
TermAlignment = Callable[[str, Sequence[str], Sequence[str]], Sequence[Sequence[float]]]


SENTENCE_CACHE = 20_000  # sentence vectors kept per embedder (384 floats each for e5-small: ~30 MB)
_sentence_vectors: weakref.WeakKeyDictionary[Any, OrderedDict[str, Any]] = weakref.WeakKeyDictionary()
_sentence_lock = threading.Lock()


def embedder_similarity(embedder: Any) -> SentenceSimilarity:
    """Cosine between the question (embedded as a query) and each sentence (embedded as a passage), with the
    embedder's own prefixes (``query: `` / ``passage: `` for e5). A sentence's vector is kept (the last
    :data:`SENTENCE_CACHE` per embedder, across pipelines: the page builds one per question), so the passages a
    conversation keeps coming back to are embedded once."""
    def similarity(question: str, sentences: Sequence[str]) -> list[float]:
        if not sentences:
            return []
        with _sentence_lock:
            known = _sentence_vectors.setdefault(embedder, OrderedDict())
            vectors = {t: known[t] for t in sentences if t in known}
            for text in vectors:
                known.move_to_end(text)
        new = [t for t in dict.fromkeys(sentences) if t not in vectors]
        if new:
            vectors.update(zip(new, embedder.embed_documents(new), strict=True))
            with _sentence_lock:
                for text in new:
                    known[text] = vectors[text]
                while len(known) > SENTENCE_CACHE:
                    known.popitem(last=False)
        query = embedder.embed_query(question)
        return [float(vectors[t] @ query) for t in sentences]

    return similarity


class Corpus(Protocol):
    """What the decision needs from an index (``rag.index.reader.KnowledgeIndex`` provides it)."""

    def idf(self, term: str) -> float | None:
        """BM25 idf of a token; None when no chunk holds it."""

    def max_idf(self) -> float:
        """The idf of a token no chunk holds."""

    def neighbours(self, chunk: Chunk, reach: int = 1) -> list[Chunk]:
        """Chunks of the same file next to ``chunk``."""


@dataclass(frozen=True)
class Term:
    """A key term of the question: ``text`` (lower case; a one-letter option as written), its ``weight``, whether
    it is ``neutral`` (written the same in Chinese and English text: a Latin-script name, a number), its dictionary
    ``relatives`` (words of either language that a bilingual dictionary links to it, :func:`relatives_of`) and, for
    a word jieba only guessed, its content characters (``pieces``)."""

    text: str
    weight: float
    neutral: bool
    relatives: tuple[str, ...] = ()
    pieces: str = ""  # an unplaced word's content characters (补零 -> 补零, 只改 -> 改): each covers a share of half
    parts: tuple[str, ...] = ()  # a compound's words (配置文件 -> 配置, 文件): all of them apart cover it half

    @property
    def option(self) -> bool:
        """A one-letter option or directive ("-r", "%F", :data:`_OPTION`): its case kept, matched as a token."""
        return _is_option(self.text)

    @property
    def index_word(self) -> str:
        """How the index's tokens write it (its idf): an option by its letter."""
        return _index_word(self.text)


def _is_option(text: str) -> bool:
    return len(text) == 2 and text[0] in "-%"


def _index_word(text: str) -> str:
    """A term as the index's idf knows it: a one-letter option by its letter (lower case), any other as it is."""
    return text[1].lower() if _is_option(text) else text


@dataclass(frozen=True)
class Support:
    """A whole sentence of a retrieved chunk that supports the answer.

    Attributes:
        text: the sentence (layout line breaks joined).
        hit_number: 1-based position of its hit in the hits assessed.
        order: (hit's source, offset in the document) for putting sentences in document order.
        covered: the question's terms it covers (with its heading path).
    """

    text: str
    hit_number: int
    order: tuple[str, int, int]
    covered: frozenset[str]


@dataclass(frozen=True)
class Assessment:
    """The answerability decision.

    Attributes:
        answerable: the passages cover the question well enough to answer it.
        coverage: share of the key terms' weight that the supporting sentences of the best passage cover (0..1),
            what ``min_coverage`` is compared with.
        terms: the key terms.
        missing: key terms no supporting sentence covers (what the prompt tells the model the passages lack).
        support: the supporting sentences, in document order (empty when refused).
        cross_language: the question and its best passage are in different languages.
        similarity: the best sentence similarity, when the semantic path was consulted (else None).
        semantic: answered by the semantic path (coverage alone was short).
        probability: P(answerable) of the calibrated decision (None when coverage alone decided).
        signals: what the calibrated decision combined (coverage, sim_max, absent_share, cross_language).
    """

    answerable: bool
    coverage: float
    terms: tuple[Term, ...] = ()
    missing: tuple[str, ...] = ()
    support: tuple[Support, ...] = ()
    cross_language: bool = False
    reason: str = field(default="")
    similarity: float | None = None
    semantic: bool = False
    probability: float | None = None
    signals: dict[str, float] = field(default_factory=dict)


def _cut(text: str) -> list[tuple[str, bool]]:
    """jieba's precise cut of the CJK runs of ``text``; neighbouring one-character pieces that are no function
    words are joined (jieba cuts the unknown 年假 into 年 / 假). Each word comes with whether it is *unplaced*: in
    no jieba dictionary, so joined here or guessed by jieba's HMM (时想 / 里存 of "时想让链接里存相对路径")."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    known = jieba.dt.FREQ
    words: list[tuple[str, bool]] = []
    for run in _CJK_RUN.findall(text):
        single = ""
        for word in [*jieba.lcut(run, HMM=True), ""]:
            if len(word) == 1 and word not in STOPWORDS and word not in QUESTION_WORDS:
                single += word
                continue
            if single:
                words.append((single, not known.get(single)))
                single = ""
            if word:
                words.append((word, not known.get(word)))
    return words


def language_of(text: str) -> str:
    """``zh`` when CJK characters are at least a third of the letters, else ``en``."""
    cjk = len(CJK.findall(text))
    latin = sum(1 for ch in text if ch.isascii() and ch.isalpha())
    return "zh" if cjk * 3 >= latin else "en"


def key_terms(question: str, corpus: Corpus | None = None, dictionary: Dictionary | None = None) -> list[Term]:
    """The question's key terms, weighted by idf in ``corpus`` (1.0 each without one), with their relatives in
    ``dictionary`` (none without one)."""
    text = _ASKED_KIND.sub(lambda m: f"{m.group(1) or m.group(2)} ", unicodedata.normalize("NFKC", question))
    names = set()
    for match in _NAME_WORD.finditer(text):
        word = match.group()
        before = text[: match.start()].rstrip()
        sentence_start = not before or before[-1] in ".?!:;\"'(。？！：；“"
        if (any(c.isdigit() for c in word) or any(c in "_./+-" for c in word) or any(c.isupper() for c in word[1:])
                or (word[0].isupper() and not sentence_start and word.lower() not in QUESTION_WORDS)
                or (CJK.search(text) and word.lower() not in QUESTION_WORDS)):
            names.add(word.lower())
    options = dict.fromkeys(_options_of(text))
    option_letters = {o[1].lower() for o in options}
    lowered = text.lower()
    found: dict[str, bool] = {}
    unplaced = set()
    for word, guessed in _cut(lowered):
        if len(word) > 1 and word not in QUESTION_WORDS and word not in STOPWORDS and not _ASKING.match(word):
            found.setdefault(word, False)
            if guessed:
                unplaced.add(word)
    latin = _CJK_RUN.sub(" ", lowered)
    for word in _TERM.findall(latin):
        if len(word) == 1 and word in option_letters:  # the option's letter: the option is the term
            continue
        if word in names or (len(word) > 1 and word not in QUESTION_WORDS and word not in STOPWORDS):
            found.setdefault(word, word in names or any(c.isdigit() for c in word))
    for option in options:
        found.setdefault(option, True)
    top = corpus.max_idf() if corpus is not None else 1.0
    terms = []
    for word, neutral in found.items():
        idf = corpus.idf(_index_word(word)) if corpus is not None else 1.0
        pieces = "".join(ch for ch in word if ch not in FUNCTION_CHARACTERS) if word in unplaced else ""
        if idf is None and corpus is not None and word in unplaced:
            # a word of no dictionary (年假, but also 时想 of "时想让") is in the index as its characters: weigh it
            # as them, not as a word no document uses
            # a modal or function character (想 / 还 / 只 of 时想, 还会, 只改) weighs nothing: the sentence that
            # answers need not repeat how the question was put
            if not pieces:
                continue
            known = [i for ch in pieces if (i := corpus.idf(ch)) is not None]
            idf = sum(known) / len(word) if len(known) == len(pieces) else None
        weight = top if idf is None else idf
        related = relatives_of(word, dictionary, corpus) if dictionary is not None and not neutral else ()
        terms.append(Term(word, weight * (1.5 if neutral else 1.0), neutral, related, pieces,
                          () if pieces or neutral else compound_parts(word)))
    return terms


def compound_parts(word: str) -> tuple[str, ...]:
    """The words of at least two characters that a Chinese compound is made of, end to end (配置文件 -> 配置, 文件;
    服务器地址 -> 服务器, 地址), from jieba's search cut; () for a word that is no such compound (停车费: 停车 / 车费
    overlap, 费 stands alone). A text may say the compound apart ("配置 mini-dinstall 需要设置 … 文件")."""
    if len(word) < 4 or not _CJK_RUN.fullmatch(word):
        return ()
    import jieba

    found = {w for w in jieba.lcut_for_search(word) if 2 <= len(w) < len(word)}
    # the longest words first: 服务器 before 服务 at the start
    for first in sorted((w for w in found if word.startswith(w)), key=len, reverse=True):
        rest = word[len(first):]
        if rest in found:
            return first, rest
        if (tail := compound_parts(rest) if len(rest) >= 4 else ()) and all(t in found for t in tail):
            return (first, *tail)
    return ()


_PHRASE = re.compile(r"[a-z][a-z-]*(?: [a-z][a-z-]*)?")  # a gloss of one or two plain words ("later; afterwards" is none)
_central_cache: dict[int, tuple[Dictionary, dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]] = {}


def central_headwords(dictionary: Dictionary) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """(English word -> the Chinese headwords of 2-4 characters whose gloss it leads: their whole gloss or one of
    the first two content words of their glosses; Chinese headword -> its glosses of one or two words). Built once
    per dictionary (about 0.3 s); the dictionary itself is the retriever's, never loaded again here."""
    cached = _central_cache.get(id(dictionary))
    if cached is not None and cached[0] is dictionary:
        return cached[1], cached[2]
    heads: dict[str, list[str]] = {}
    glosses: dict[str, list[str]] = {}
    for gloss, words in dictionary.to_chinese.items():
        for word in words:
            glosses.setdefault(word, []).append(gloss)
        if " " not in gloss:
            heads.setdefault(gloss, []).extend(w for w in words if 2 <= len(w) <= 4)
    for headword, english in dictionary.to_english.items():
        if 2 <= len(headword) <= 4:
            for word in english[:2]:
                if headword not in heads.setdefault(word, []):
                    heads[word].append(headword)
    built = ({word: tuple(dict.fromkeys(found)) for word, found in heads.items()},
             {word: tuple(found) for word, found in glosses.items()})
    _central_cache.clear()
    _central_cache[id(dictionary)] = (dictionary, *built)
    return built


def _specific(gloss_word: str) -> bool:
    """A gloss word that names something, not a filler ("to use", "thing", "way")."""
    return len(gloss_word) >= 3 and gloss_word not in BROAD_GLOSSES and gloss_word not in QUESTION_WORDS and (
        gloss_word not in STOPWORDS)


def _gloss_forms(word: str) -> list[str]:
    """``word`` and its uninflected forms as a gloss writes them (sizes -> size, copied -> copy, sorted -> sort)."""
    forms = [word]
    for ending, replacement in (("ies", "y"), ("es", ""), ("s", ""), ("ied", "y"), ("ed", "e"), ("ed", ""),
                                ("ing", "e"), ("ing", "")):
        if word.endswith(ending) and len(word) - len(ending) >= 3:
            forms.append(word[: -len(ending)] + replacement)
    return forms


def relatives_of(word: str, dictionary: Dictionary, corpus: Corpus | None = None) -> tuple[str, ...]:
    """Words a bilingual dictionary (CC-CEDICT, :mod:`rag.index.bridge`) links to a key term, so that a sentence
    saying the same thing in other words, or in the other language, covers it.

    - a Chinese word: its glosses of one or two plain, specific words (目录 -> catalog, directory; 产假 -> the phrase
      "maternity leave", never "leave" alone), and the Chinese headwords that a one-word gloss leads
      (:func:`central_headwords`) when few do (directory -> 名录, 通讯录; "file" leads dozens and links nothing);
    - an English word: the Chinese headwords it leads (sizes -> size -> 大小, 尺码); broad words (use, thing) none.

    With ``corpus`` only Chinese words some chunk holds are kept. At most :data:`MAX_RELATIVES`.
    """
    central, whole = central_headwords(dictionary)
    found: list[str] = []
    if _CJK_RUN.fullmatch(word):
        # its glosses of one or two words, as phrases ("maternity leave" is no "leave"; a word of a longer gloss
        # is none: "compressed" of 压缩包 "compressed archive file")
        phrases = [g for g in whole.get(word, ()) if _PHRASE.fullmatch(g) and all(_specific(w) for w in g.split())]
        found += phrases
        for gloss in phrases:
            heads = central.get(gloss, ())
            if len(heads) <= MAX_GLOSS_HEADWORDS:
                found += heads
    elif _specific(word):
        found += next((h for form in _gloss_forms(word) if (h := central.get(form))), ())
    found = [f for f in found if _CJK_RUN.fullmatch(f) or f.isascii()]
    out: list[str] = []
    for relative in found:
        if relative == word or relative in out or relative in _gloss_forms(word):
            continue
        if corpus is not None and _CJK_RUN.fullmatch(relative) and corpus.idf(relative) is None:
            continue
        out.append(relative)
    return tuple(out[:MAX_RELATIVES])


def _stem(word: str) -> str:
    """A crude English stem: the word less a plural / -ing / -ed / -ly ending (enough to match employee(s))."""
    for ending in ("ing", "ed", "es", "s", "ly"):
        if len(word) > len(ending) + 3 and word.endswith(ending):
            return word[: -len(ending)]
    return word


def covers(term: Term, flat: str, latin_words: set[str], relative_credit: float = RELATIVE_CREDIT) -> float:
    """How well a text covers ``term`` (1 = fully; ``flat`` is the text normalised, ``latin_words`` its stems); a
    text that holds one of its dictionary relatives instead covers it ``relative_credit``."""
    own = _covers_itself(term, flat, latin_words)
    if own < 1.0 and relative_credit > 0 and any(
            (r.replace(" ", "") in flat) if _CJK_RUN.fullmatch(r) or " " in r else _latin_match(r, latin_words)
            for r in term.relatives):  # a phrase (time zone) only as written, its words next to each other
        return max(own, relative_credit)
    return own


def _latin_match(word: str, latin_words: set[str]) -> bool:
    """An English word in a text's stems, also as the start of a longer word (listen in listeners)."""
    stem = _stem(word)
    root = stem.rstrip("ye") if len(stem) >= 6 else stem  # directory / directori(es), archive / archiving
    return stem in latin_words or len(root) >= 5 and any(w.startswith(root) for w in latin_words)


def _covers_itself(term: Term, flat: str, latin_words: set[str]) -> float:
    if term.option:
        return 1.0 if term.text in latin_words else 0.0
    if _CJK_RUN.fullmatch(term.text):
        if term.text in flat:
            return 1.0
        if term.pieces:  # a word jieba guessed (补零): its characters are the words (在数据前填充零)
            return 0.5 * sum(ch in flat for ch in term.pieces) / len(term.pieces)
        if term.parts and all(p in flat for p in term.parts):  # 配置 … 文件 for 配置文件: half, as its pieces
            return 0.5
        if len(term.text) >= 3:  # 停车费 in a text that only says 停车: half credit for the shared pieces
            pieces = [term.text[i : i + 2] for i in range(len(term.text) - 1)]
            return 0.5 * sum(p in flat for p in pieces) / len(pieces)
        return 0.0
    if term.neutral:
        if term.text in flat:
            return 1.0
        # a name joined by _ or - is written with spaces elsewhere (worker_threads / "Worker threads")
        bare = re.sub(r"[_-]", "", term.text)
        return 1.0 if bare != term.text and len(bare) >= 4 and bare in re.sub(r"[_-]", "", flat) else 0.0
    return 1.0 if _stem(term.text) in latin_words or term.text in flat else 0.0


def _options_of(text: str) -> list[str]:
    """The one-letter options and directives of ``text`` (:data:`_OPTION`) as ``-x`` / ``%x``, case kept."""
    return [("%" if mark == "%" else "-") + letter for mark, letter in _OPTION.findall(text)]


def _latin_stems(text: str) -> set[str]:
    """The stems of ``text``'s Latin words (lower case) and its one-letter options as written (``-R``, ``%F``)."""
    normal = unicodedata.normalize("NFKC", text)
    return {_stem(w) for w in _TERM.findall(_CJK_RUN.sub(" ", normal.lower()))} | set(_options_of(normal))


@dataclass(frozen=True)
class _Candidate:
    text: str
    hit_number: int
    order: tuple[str, int, int]
    credit: dict[str, float]  # term -> how well the sentence (with its heading path) covers it
    own: dict[str, float]  # term -> how well the sentence alone covers it (prefers the sentence to its heading)
    language: str
    dense: float
    about: str = ""  # what it is about: its document's name, heading path and heading line


def candidate_sentences(hits: Sequence[Hit], corpus: Corpus | None = None,
                        exclude: Sequence[str] = ()) -> list[tuple[int, str, tuple[str, int, int], str]]:
    """(hit number, sentence, document order, what it is about) of every whole, non-heading sentence of ``hits``;
    what it is about is the document's name (:func:`document_name`), the chunk's heading path and the heading line
    above the sentence.

    A sentence cut by its chunk's edge is taken whole from the neighbouring chunks (with ``corpus``) or left out;
    duplicates (overlapping chunks) and sentences whose normalised text is in ``exclude`` are left out.
    """
    out = []
    seen = {normalise(text) for text in exclude}
    for number, hit in enumerate(hits, 1):
        chunk = hit.chunk
        neighbours = corpus.neighbours(chunk) if corpus is not None else []
        text, offset = parent_text(chunk, neighbours)
        # without the text before the chunk, its first sentence may be cut: only trust it at the document start
        trusted_start = offset > 0 or chunk.start == 0
        heading_line = ""
        for sentence in segment(text, chunk.heading):
            if sentence.heading:
                heading_line = sentence.text
            if sentence.end <= offset or sentence.start >= offset + len(chunk.text) or not sentence.complete:
                continue
            if sentence.heading or (sentence.start <= offset and not trusted_start and sentence.start == 0):
                continue
            if _SYNOPSIS.fullmatch(sentence.text.strip()) or reference_list(sentence.text) or _NAVIGATION.fullmatch(
                    sentence.text):
                # "sort [OPTION]... [FILE]...", "scp(1), sftp(1), ssh-add(1)", "[ < Setup ] | [ 上 : Installing ]":
                # usage lines, reference lists and a web manual's navigation bar say nothing
                continue
            key = normalise(sentence.text)
            if key in seen or len(key) < 4:
                continue
            seen.add(key)
            out.append((number, sentence.text, (chunk.source, chunk.page or 0, chunk.start - offset + sentence.start),
                        " ".join([document_name(chunk.source), *chunk.heading, heading_line])))
    return out


def reference_list(text: str) -> bool:
    """A list of manual-page references (a SEE ALSO section: ``rsh(1), scp(1), sftp(1), ssh-add(1)``): three or more,
    and most of the text."""
    found = _REFERENCE.findall(text)
    return len(found) >= 3 and sum(map(len, found)) >= 0.5 * len("".join(text.split()))


_DOCUMENT_SUFFIX = re.compile(r"(?:\.(?:txt|text|html?|xhtml|md|markdown|rst|pdf|docx?|xlsx?|pptx?|odt|rtf|csv|json|"
                              r"gz|bz2|xz|[0-9][a-z]*|[a-z]{2}(?:[-_][a-z]{2,4})?))+$", re.IGNORECASE)


def document_name(source: str) -> str:
    """The file name without its file-type, manual-section and language suffixes and with ``_-`` as spaces
    (``man/ls.1.txt`` -> ``ls``, ``man/journald.conf.5.txt`` -> ``journald.conf``): what the document is about, read
    with each of its sentences like a heading (a manual page's lines never repeat the command's name)."""
    name = PurePosixPath(source).name
    return re.sub(r"[_-]+", " ", _DOCUMENT_SUFFIX.sub("", name) or name.split(".")[0]).strip()


def _merge(left: dict[str, float], right: dict[str, float]) -> dict[str, float]:
    return {k: max(left.get(k, 0.0), right.get(k, 0.0)) for k in {*left, *right}}


def embedder_alignment(embedder: Any) -> TermAlignment | None:
    """Per sentence and per key term of the question, the closest the sentence's tokens come to the term in meaning:
    the cosine of each of the term's own tokens (the question embedded as a query, each token in its context) to its
    closest token of the sentence (as a passage), averaged over the term's tokens. A sentence that says 等于 where
    the question asks 等价, or "directory" for 目录, comes close where word overlap sees nothing. None for an embedder
    without token vectors (the hash embedder of tests)."""
    if not callable(getattr(embedder, "token_vectors", None)):
        return None

    def alignment(question: str, terms: Sequence[str], sentences: Sequence[str]) -> list[list[float]]:
        if not terms or not sentences:
            return [[0.0] * len(terms) for _ in sentences]
        (asked, spans), *passages = embedder.token_vectors([question], query=True) + embedder.token_vectors(
            list(sentences), query=False)
        flat, origin = _normalised_with_origin(question)
        rows: list[list[int] | None] = []  # per term, its tokens in the question
        for term in terms:
            at = flat.find(term)
            start, end = (origin[at], origin[at + len(term) - 1] + 1) if at >= 0 else (0, 0)
            rows.append([i for i, (a, b) in enumerate(spans) if a < end and b > start] or None)
        scores = []
        for vectors, _ in passages:
            if not len(vectors) or not len(asked):
                scores.append([0.0] * len(terms))
                continue
            best = (asked @ vectors.T).max(axis=1)  # each question token's closest token of this sentence
            scores.append([float(np.clip(best[r].mean(), 0.0, 1.0)) if r else 0.0 for r in rows])
        return scores

    return alignment


def _normalised_with_origin(text: str) -> tuple[str, list[int]]:
    """``text`` as key terms are written (NFKC, lower case) and, per character of it, the index of the character of
    ``text`` it comes from (NFKC may turn one character into several: ² -> 2)."""
    flat: list[str] = []
    origin: list[int] = []
    for i, char in enumerate(text):
        piece = unicodedata.normalize("NFKC", char).lower()
        flat.append(piece)
        origin.extend([i] * len(piece))
    return "".join(flat), origin


def assess(question: str, hits: Sequence[Hit], corpus: Corpus | None = None, *, min_coverage: float = 0.6,
           min_gain: float = 0.25, cross_language_min_dense: float = 0.8, max_sentences: int = 3,
           max_chars: int = 400, exclude: Sequence[str] = (), similarity: SentenceSimilarity | None = None,
           min_similarity: float = 0.0, semantic_min_coverage: float = 0.0, dictionary: Dictionary | None = None,
           relative_credit: float = RELATIVE_CREDIT, pick_margin: float = 0.0,
           calibration: Calibration | None = None, min_probability: float | None = None,
           alignment: TermAlignment | None = None, align_lead: int = 0, rank_margin: float = 0.0,
           option_margin: float = 0.0, anchor_slack: int = 0) -> Assessment:
    """Decide whether ``hits`` answer ``question`` and pick the sentences that support the answer.

    Args:
        question: the (standalone) question.
        hits: retrieved hits, best first.
        corpus: the index (idf weights and neighbouring chunks); None weighs terms alike and skips cut sentences.
        min_coverage: share of the terms' weight the chosen sentences must cover.
        min_gain: a further sentence joins only when it covers at least this share of the weight more.
        cross_language_min_dense: dense similarity a passage in the other language needs.
        max_sentences: at most this many supporting sentences.
        max_chars: at most this many characters of supporting sentences.
        exclude: sentences not to use again (the previous answers', unless the question is asked again).
        similarity: question-to-sentence similarity (:func:`embedder_similarity`); None = coverage alone decides.
        min_similarity: a sentence this similar answers a question whose coverage is short (0: never).
        semantic_min_coverage: ... provided the coverage is at least this.
        dictionary: a bilingual dictionary (:mod:`rag.index.bridge`): a sentence holding a key term's relative
            (:func:`relatives_of`) covers it ``relative_credit``, and sentences in the other language than the
            question are scored on every key term, not only on its names and numbers; None = word overlap alone.
        relative_credit: how much a relative covers (0..1).
        pick_margin: with ``similarity``, a sentence whose coverage score is within this of the best one's and
            that answers too leads when it is closer to the question in meaning (0: the best coverage leads).
        calibration: the calibrated decision (:mod:`rag.answer.calibration`): the question is answerable when the
            model's probability over the signals reaches ``min_probability`` (None: the model's own threshold)
            and the passage holds every name and number; ``min_coverage`` then only admits another document's
            sentence to the answer. None = coverage against ``min_coverage`` decides. A model that needs the
            similarity is not used without ``similarity`` (coverage decides).
        alignment: per key term, how closely the lead passage's sentences say it in other words
            (:func:`embedder_alignment`): the calibrated model's ``aligned`` signal. A model that needs it is not
            used without it.
        align_lead: with ``alignment`` and a model that reads it, among this many best-covering sentences the one
            whose aligned coverage is highest leads (0: the best word coverage leads).
        rank_margin: once the question is answerable, a lead from an earlier retrieved passage whose coverage score
            is within this of the lead's (0..2) and whose passage answers too (the coverage and the names the lead's
            passage had, and every name and number the lead's sentences hold) leads instead: the earliest such
            passage, its best-covering sentence (0: off).
        anchor_slack: a question with at least three names and numbers is answered from a passage that lacks this
            many of them (one said otherwise: "Win9x" for "Windows 9x", scp beside cp and tar); 0 = every one.
        option_margin: once a how-to question is answerable and its lead is no option line, a line documenting a
            command's option ("-s, --symbolic …") leads instead when it says one of the question's words itself, its
            coverage with its heading path is within this of the lead's (0..1), it says the question no worse than
            the lead by ``alignment`` (the best-aligned such line first) and its passage answers too (0: off).
    """
    terms = key_terms(question, corpus, dictionary)
    if not terms or not hits:
        return Assessment(False, 0.0, tuple(terms), tuple(t.text for t in terms), reason="no key terms or no hits")
    asked_in = language_of(question)
    candidates: list[_Candidate] = []
    for number, text, order, heading in candidate_sentences(hits, corpus, exclude):
        window = f"{heading} {text}"
        flat, stems = normalise(window), _latin_stems(window)
        credit = {t.text: c for t in terms if (c := covers(t, flat, stems, relative_credit)) > 0}
        own_flat, own_stems = normalise(text), _latin_stems(text)
        own = {t.text: c for t in terms if (c := covers(t, own_flat, own_stems, relative_credit)) > 0}
        dense = hits[number - 1].dense_score
        candidates.append(_Candidate(text, number, order, credit, own, language_of(text), dense or 0.0, heading))
    if not candidates:
        return Assessment(False, 0.0, tuple(terms), tuple(t.text for t in terms), reason="no whole sentence")
    aligned: dict[str, Sequence[float]] = {}

    def aligned_rows(texts: Sequence[str]) -> list[Sequence[float]]:
        """``alignment`` of each text with the question's terms, each text embedded once per question."""
        assert alignment is not None
        new = [t for t in dict.fromkeys(texts) if t not in aligned]
        if new:
            aligned.update(zip(new, alignment(question, [t.text for t in terms], new), strict=True))
        return [aligned[t] for t in texts]

    def share(credit: dict[str, float], pool: Sequence[Term]) -> float:
        weight = sum(t.weight for t in pool)
        return sum(t.weight * credit.get(t.text, 0.0) for t in pool) / weight if weight else 0.0

    # with a dictionary every sentence can cover every term (through its relatives in the other language)
    same = [c for c in candidates if c.language == asked_in or dictionary is not None]
    neutral = [t for t in terms if t.neutral]
    other = [c for c in candidates if c.language != asked_in]
    cross = False
    pool, scored = terms, same
    # a passage that holds every name and number of the question (the anchors the decision requires) leads
    # before one that covers more words but lacks one: it is the only kind that can answer
    per_hit: dict[int, dict[str, float]] = {}
    for candidate in candidates:
        per_hit[candidate.hit_number] = _merge(per_hit.get(candidate.hit_number, {}), candidate.credit)
    # a name most of the corpus holds (Debian in Debian's manuals) is its subject, not what singles out the answer
    anchor_terms = {t.text for t in terms if t.neutral and not (
        corpus is not None and (idf := corpus.idf(t.index_word)) is not None and idf < COMMON_NAME_IDF)}

    def holds_anchors(credit: dict[str, float]) -> bool:
        lacking = sum(credit.get(t, 0.0) < 1.0 for t in anchor_terms)
        return lacking == 0 or len(anchor_terms) >= MIN_NAMES_FOR_SLACK and lacking <= anchor_slack

    anchors = {n: holds_anchors(c) for n, c in per_hit.items()}

    def lead_score(c: _Candidate) -> float:
        """How well the sentence, with its heading path, and the sentence alone cover the question (0..2)."""
        return share(c.credit, pool) + share(c.own, pool)

    if same:
        best = max(scored, key=lambda c: (anchors[c.hit_number], lead_score(c), -c.hit_number))
        if align_lead > 0 and alignment is not None and calibration is not None and "aligned" in calibration.features:
            # the lead the question's words are said by, in other words too: among the best-covering sentences of
            # passages as anchored as the best one's, the one whose aligned coverage is highest
            # a heading said again in the text (a manual page's NAME line, "cut - 从文件的每一行中移除某些段", is its
            # section's heading) or a short line without a full stop says the topic's words and answers nothing: it
            # never leads by meaning
            # nor does a sentence that adds to another ("You can also …"): the statement it adds to leads
            ranked = sorted((c for c in scored if anchors[c.hit_number] == anchors[best.hit_number] and (
                c is best or not is_heading_line(c.text) and not _restates_heading(c) and not _ADDITIVE.match(
                    c.text))),
                            key=lambda c: (-lead_score(c), c.hit_number))
            near: list[_Candidate] = []
            for candidate in ranked:  # the first of each text (overlapping chunks repeat sentences)
                if len(near) < align_lead and all(c.text != candidate.text for c in near):
                    near.append(candidate)
            if len(near) > 1:
                rows = aligned_rows([c.text for c in near])
                best = max(zip(near, rows, strict=True), key=lambda pair: _aligned_share(terms, pair[0].credit,
                                                                                          [pair[1]]))[0]
    if neutral and other:  # the other language can only match names and numbers, and needs a close passage
        other_best = max(other, key=lambda c: (share(c.credit, neutral) + share(c.own, neutral), c.dense,
                                               -c.hit_number))
        # names and numbers can only carry an answer across languages when they are most of the question
        mostly_names = sum(t.weight for t in neutral) >= 0.6 * sum(t.weight for t in terms)
        if mostly_names and share(other_best.credit, neutral) >= 1.0 and (
                other_best.dense >= cross_language_min_dense) and (not same or share(best.credit, terms) < min_coverage):
            pool, scored, best, cross = neutral, other, other_best, True

    def extend(first: _Candidate, scored: Sequence[_Candidate], pool: Sequence[Term]) -> list[_Candidate]:
        """``first`` and the sentences that each add at least ``min_gain`` of the weight (or a weighty term)."""
        chosen = [first]
        credit = dict(first.credit)
        heavy = 0.5 * max(t.weight for t in pool)
        used = len(first.text)
        while len(chosen) < max_sentences:
            # another document's sentence joins only as an answer of its own: a term it adds is no support for
            # what the first sentence says (the second citation of an on-topic, unrelated passage)
            rest = [c for c in scored if c not in chosen and used + len(c.text) <= max_chars and not _restates_heading(c) and (
                c.hit_number == first.hit_number or anchors[c.hit_number] and share(c.credit, pool) >= min_coverage)]
            gains = [(share(_merge(credit, c.credit), pool) - share(credit, pool), -c.hit_number, i)
                     for i, c in enumerate(rest)]

            def adds_a_key_term(c: _Candidate, covered: dict[str, float]) -> bool:
                """It fully covers a weighty term that the chosen sentences leave out."""
                return any(c.own.get(t.text, 0.0) >= 1.0 and covered.get(t.text, 0.0) < 0.5 and t.weight >= heavy
                           for t in pool)

            gains = [g for g in gains if g[0] >= min_gain or g[0] > 0 and adds_a_key_term(rest[g[2]], credit)]
            if not gains:
                break
            following = rest[max(gains)[2]]
            chosen.append(following)
            credit = _merge(credit, following.credit)
            used += len(following.text)
        return chosen

    def passage_credit(chosen: Sequence[_Candidate], hit_number: int) -> dict[str, float]:
        held: dict[str, float] = {}
        for picked in chosen:
            if picked.hit_number == hit_number:
                held = _merge(held, picked.credit)
        return held

    def decide(lead: _Candidate) -> tuple[list[_Candidate], float, bool]:
        """The sentences ``lead`` is extended with, the share of the weight its passage's sentences cover and
        whether that passage holds every name and number of the question."""
        picked = extend(lead, scored, pool)
        # the decision counts only the lead passage's sentences: pieces of unrelated passages (流量 from one, 上限
        # from another) do not add up to an answer
        own_passage = passage_credit(picked, lead.hit_number)
        # a name or number the question gives (VPN, 169.254, sources.list) anchors it: the answer's passage must
        # hold it
        return picked, share(own_passage, pool), holds_anchors(own_passage)

    known: dict[str, float] = {}

    def closeness(texts: Sequence[str]) -> list[float]:
        """``similarity`` of the question to each text, each text embedded once per question."""
        assert similarity is not None
        new = [t for t in dict.fromkeys(texts) if t not in known]
        if new:
            known.update(zip(new, (float(x) for x in similarity(question, new)), strict=True))
        return [known[t] for t in texts]

    # a model that needs the similarity is not used without one: coverage decides then
    model = calibration if calibration is not None and (similarity is not None or "sim_max" not in calibration.features) and (
        alignment is not None or "aligned" not in calibration.features) else None
    chosen: list[_Candidate] = []
    decided, answerable, probability = 0.0, False, None

    def answers_too(lead: _Candidate, names: Sequence[str] = ()) -> tuple[list[_Candidate], float] | None:
        """``lead``'s sentences and its passage's share when that passage answers as the current lead's does:
        anchored, holding ``names``, and (calibrated) the coverage the current lead had or (else) the bar."""
        picked, picked_share, picked_anchored = decide(lead)
        held = passage_credit(picked, lead.hit_number)
        if picked_anchored and picked_share >= (min(min_coverage, decided) if model else min_coverage) and all(
                held.get(name, 0.0) >= 1.0 for name in names):
            return picked, picked_share
        return None

    signals: dict[str, float] = {}
    if scored:
        chosen, decided, anchored = decide(best)
        if model is not None:
            signals = {"coverage": decided, "absent_share": absent_share(terms, corpus),
                       "cross_language": float(chosen[0].language != asked_in)}
            if "sim_max" in model.features:
                signals["sim_max"] = max(closeness([c.text for c in candidates[:MAX_SIMILARITY_SENTENCES]]))
            if "aligned" in model.features:
                held: dict[str, float] = {}
                for picked in chosen:
                    held = _merge(held, picked.credit)
                signals["aligned"] = _aligned_share(terms, held, aligned_rows([c.text for c in chosen]))
            probability = model.probability(signals)
            bar = model.threshold if min_probability is None else min_probability
            answerable = cross or (anchored and probability >= bar)
            if answerable and not cross and decided < min_coverage and names_only(chosen, terms) and not any(
                    t.neutral and covers(t, normalise(chosen[0].about), _latin_stems(chosen[0].about),
                                        relative_credit) >= 1.0
                    for t in terms):
                # the passage shares the question's names and none of its other words, and is not about them (a
                # list that mentions VPN, for a question about the VPN server's address): only the coverage bar may
                # answer that. A passage about the name (cp's manual for "cp -a 等价于哪些选项") may put the rest
                # in other words.
                answerable = False
        else:
            answerable = cross or (decided >= min_coverage and anchored)
        if answerable and not cross and similarity is not None and pick_margin > 0:
            # among sentences covering nearly as much, the closest in meaning leads, if it answers too
            near = [c for c in scored if anchors[c.hit_number] >= anchors[best.hit_number]
                    and lead_score(c) >= lead_score(best) - pick_margin
                    and (c is best or not _ADDITIVE.match(c.text))]  # an added sentence does not lead (above)
            if len(near) > 1:
                close = closeness([c.text for c in near])
                for i in sorted(range(len(near)), key=lambda i: (-close[i], near[i].hit_number)):
                    if near[i] is best:
                        break
                    # with the calibrated decision an alternative lead needs the coverage its own lead had
                    if (switched := answers_too(near[i])) is not None:
                        (chosen, decided), best = switched, near[i]
                        break
    if answerable and not cross and rank_margin > 0 and best.hit_number > 1:
        # the retriever ranked the passages: among leads that cover nearly as much and answer too, the earliest
        # passage's leads (a later passage that repeats the question's words more often seldom holds the answer)
        # ... and it must hold every name and number the lead's sentences hold, those the anchor gate lets pass too
        # (a Debian-wide name such as Debian: a generic page about umask says less than Debian's own)
        said = passage_credit(chosen, best.hit_number)
        names = [t.text for t in terms if t.neutral and said.get(t.text, 0.0) >= 1.0]
        earlier = [c for c in scored if c.hit_number < best.hit_number and anchors[c.hit_number]
                   and not is_heading_line(c.text) and not _restates_heading(c)
                   and lead_score(c) >= lead_score(best) - rank_margin]
        for candidate in sorted(earlier, key=lambda c: (c.hit_number, -lead_score(c))):
            if (switched := answers_too(candidate, names)) is not None:
                (chosen, decided), best = switched, candidate
                break
    if answerable and not cross and option_margin > 0 and _HOW_TO.search(question) and not _OPTION_LINE.match(
            best.text):
        # how to do something, over a command's manual: the option that does it is the answer (the "-s, --symbolic
        # 创建符号链接而非硬链接" line for "怎么创建软链接"), not the prose around it that repeats more of the words
        # (scored with its heading path: an option's line seldom repeats the command's name, its page's title does)
        # and the line itself says one of the question's words (not only its page's title)
        words = [t for t in pool if not t.neutral]
        lines = [c for c in scored if anchors[c.hit_number] >= anchors[best.hit_number] and _OPTION_LINE.match(c.text)
                 and share(c.credit, pool) >= share(best.credit, pool) - option_margin and share(c.own, words) > 0]
        if alignment is not None and lines:  # the line that says the question best, in other words too, and no
            # worse than the lead does
            vectors = dict(zip((c.text for c in [best, *lines]), aligned_rows([c.text for c in [best, *lines]]),
                               strict=True))
            said_by = {c.text: _aligned_share(terms, c.credit, [vectors[c.text]]) for c in [best, *lines]}
            lines = sorted((c for c in lines if said_by[c.text] >= said_by[best.text]),
                           key=lambda c: (-said_by[c.text], c.hit_number))
        else:
            lines.sort(key=lambda c: (-share(c.credit, pool), -lead_score(c), c.hit_number))
        for candidate in lines:
            if (switched := answers_too(candidate)) is not None:
                (chosen, decided), best = switched, candidate
                break
    closest, semantic = None, False
    if not answerable and similarity is not None and min_similarity > 0 and decided >= semantic_min_coverage:
        # a paraphrase: the closest sentence in meaning leads, if its passage holds the question's names and numbers
        scores = closeness([c.text for c in candidates])
        top = max(range(len(candidates)), key=lambda i: (scores[i], -candidates[i].hit_number))
        lead, closest = candidates[top], round(float(scores[top]), 4)
        held = passage_credit(candidates, lead.hit_number)
        if closest >= min_similarity and holds_anchors(held):
            alike = [c for c in candidates if c.language == lead.language]
            chosen, pool, answerable, semantic = extend(lead, alike, terms), terms, True, True
            cross = lead.language != asked_in
    if answerable and any(_MAN_TITLE.search(c.text) for c in chosen):
        # a manual page's title line ("TEE(1)   用户命令   TEE(1)") names the page for the decision, as its heading
        # would; the answer never quotes it, and a passage that says nothing else does not answer
        shown = [c for c in chosen if not _MAN_TITLE.search(c.text)]
        chosen, answerable = (shown, True) if shown else (chosen, False)
    if answerable and not semantic and len(chosen) > 1:
        # the answer shows what supports what it says: a sentence of another section that joined for one word of
        # the question alone (under a factory-reset answer, the error-code table's "E5 Firmware update failed Keep
        # the thermostat online; …" for "thermostat", a word every passage of the manual holds) counted for the
        # decision, which reads the passage, but says nothing the answer needs. One that adds a name or number
        # (df's -H line beside -h) or says more of the question stays.
        kept, before = [chosen[0]], dict(chosen[0].credit)  # before: what the kept sentences cover
        for following in chosen[1:]:
            gain = share(_merge(before, following.credit), pool) - share(before, pool)
            one_word = sum(following.own.get(t.text, 0.0) >= 0.5 for t in pool) <= 1 and not any(
                t.neutral and following.own.get(t.text, 0.0) >= 1.0 and before.get(t.text, 0.0) < 0.5 for t in pool)
            if following.about == chosen[0].about or gain >= min_gain or not one_word:
                kept.append(following)
                before = _merge(before, following.credit)
        chosen = kept
    if not chosen:
        return Assessment(False, 0.0, tuple(terms), tuple(t.text for t in terms), cross_language=True,
                          reason="other language and no name or number to match", similarity=closest)
    covered: dict[str, float] = {}
    for picked in chosen:
        covered = _merge(covered, picked.credit)
    missing = tuple(t.text for t in terms if covered.get(t.text, 0.0) < 0.5)
    support = tuple(Support(c.text, c.hit_number, c.order, frozenset(c.credit)) for c in sorted(
        chosen, key=lambda c: (min(o.hit_number for o in chosen if o.order[0] == c.order[0]), c.order)))
    reason = "" if answerable else f"coverage {decided:.2f}" + (f", similarity {closest:.3f}" if closest else "") + (
        f", P(answerable) {probability:.2f}" if probability is not None else "")
    cross = cross or chosen[0].language != asked_in
    return Assessment(answerable, round(decided, 3), tuple(terms), missing, support if answerable else (),
                      cross_language=cross, reason=reason, similarity=closest, semantic=semantic,
                      probability=None if probability is None else round(probability, 4),
                      signals={k: round(v, 4) for k, v in signals.items()})


def _restates_heading(candidate: _Candidate) -> bool:
    """The sentence repeats its own heading (a manual page's NAME line, "cut - 从文件的每一行中移除某些段", under the
    heading it is): it names the topic and answers nothing, so it neither leads by meaning nor joins an answer."""
    bare = normalise(candidate.text).rstrip("。.")
    return bool(bare) and bare in normalise(candidate.about)


def _aligned_share(terms: Sequence[Term], credit: dict[str, float], rows: Sequence[Sequence[float]]) -> float:
    """Coverage with words said otherwise: per key term, the larger of its word-overlap ``credit`` and how closely a
    word of the sentences says it in meaning (``rows``: per sentence, per term, from ``alignment``), weighted like the
    coverage."""
    weight = sum(t.weight for t in terms)
    if not weight:
        return 0.0
    return sum(t.weight * max(min(credit.get(t.text, 0.0), 1.0), max((row[i] for row in rows), default=0.0))
               for i, t in enumerate(terms)) / weight


def names_only(chosen: Sequence[_Candidate], terms: Sequence[Term]) -> bool:
    """The question has words besides its names and numbers, and the chosen sentences cover none of them."""
    content = [t for t in terms if not t.neutral]
    return bool(content) and all(max((c.credit.get(t.text, 0.0) for c in chosen), default=0.0) < 0.5
                                 for t in content)


def absent_share(terms: Sequence[Term], corpus: Corpus | None) -> float:
    """The share of the terms' weight held by words no chunk of ``corpus`` holds, in either language: a word whose
    dictionary relative some chunk holds is present (*server* in a Chinese corpus that says 服务器), and a word jieba
    only guessed counts by its characters, so it is never absent. 0 without a corpus."""
    weight = sum(t.weight for t in terms)
    if corpus is None or not weight:
        return 0.0

    def held(word: str) -> bool:
        return all(corpus.idf(part) is not None for part in word.split())

    return sum(t.weight for t in terms if not t.pieces and corpus.idf(t.index_word) is None and not any(
        held(r) for r in t.relatives)) / weight
