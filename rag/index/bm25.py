"""Keyword retrieval: jieba tokenisation for Chinese, word tokens for English, and an in-memory BM25 (Okapi).

Tokens are computed once at ingest and stored in the docstore (space-joined), so opening an index only rebuilds the
inverted lists (no pickle, nothing model-dependent). Text is NFKC-normalised and lower-cased, then split into runs of
CJK and of other characters: CJK runs are cut with ``jieba.cut_for_search`` (which also emits the shorter words
inside long ones, so 磁盘空间 matches 磁盘), other runs into words (``4.3.1``, ``dpkg-reconfigure``, ``v2.24.1`` stay
whole). jieba only ever sees CJK, so an English word is tokenised the same way in a Chinese and an English chunk.

Command-line options are the exception to lower-casing: ``-H`` and ``-h`` are different options of ``df``, and a
question about one must find that one first, so an option is also kept as written, case and dash included, as a
token of its own (``-H``, ``-maxdepth``, ``-exec``, ``+x``; a ``--long`` option is lower-cased, since long options
are written in lower case and ``--HELP`` in a question means ``--help``), and so is a format sequence (``%F`` is not
``%f``). The option's letters stay as a lower-cased word next to it (``-H`` -> ``-H`` and ``h``; ``--delete`` ->
``--delete`` and ``delete``), so a question that says "delete" still finds the ``--delete`` entry, and an option
written in the other case still matches, only lower than the exact one: on dev2 tune keeping the word was better
than dropping it (docs/EVAL.md). A letter named as an option in prose (``H 选项``, ``参数 h``, ``the H flag``) counts
as that option.

Each chunk's stored tokens also hold the words of its file's name (:func:`chunk_tokens`): the name is a title that
a chunk deep inside the file does not repeat.

``TOKENIZER_VERSION`` names this tokenisation; an index records the version its stored tokens were made with, and
a reader whose version differs re-tokenises the chunk texts in memory instead of mixing two tokenisations.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rag.index.docstore import DocStore

log = logging.getLogger(__name__)

# v1: jieba over whole mixed text (split 4.3.1 and dpkg-reconfigure apart); v2: every option lower-cased, -H = -h = h,
# no file-name words; v3: options as written, file-name words in every chunk's tokens
TOKENIZER_VERSION = "jieba-search-v3"

_WORD = re.compile(r"[a-z0-9][a-z0-9_.+#-]*[a-z0-9+#]|[a-z0-9]")
# One scan of a non-CJK run, left to right: an option (after no letter, digit or ``_ . + # / -``, so dpkg-reconfigure,
# u+x and 2024-01-01 hold none), a format sequence (%F, %+4Y, %-d), else an ordinary word (matched in any case and
# lower-cased afterwards; the same words as _WORD).
_PIECE = re.compile(
    r"(?P<option>(?<![A-Za-z0-9_.+#/-])(?:--?|\+)[A-Za-z](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?![A-Za-z0-9_]))"
    r"|(?P<format>(?<![A-Za-z0-9_%])%[-_0^#+]?[0-9]*[A-Za-z](?![A-Za-z0-9_]))"
    r"|(?P<word>[A-Za-z0-9][A-Za-z0-9_.+#-]*[A-Za-z0-9+#]|[A-Za-z0-9])")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,5}$")
_MAN_SECTION = re.compile(r"\.[0-9][a-z]{0,3}$")
_NAME_SEPARATORS = re.compile(r"[._-]+")
_OPTION_START = re.compile(r"(?:^|[^A-Za-z0-9_.+#/-])(?:--?|\+)[A-Za-z]|%")
# Hyphens that typesetting (groff, word processors) puts where an option's ASCII dash was; NFKC keeps them.
DASHES = str.maketrans({"\u2010": "-", "\u2011": "-", "\u2212": "-"})
# A single letter named as an option in prose: "H 选项", "参数 h", "the h flag", "H option", "option H", "'h' flag".
# In English only after "the", quoted, or as a capital other than A and I ("a flag" is an article, not -a).
_PROSE_CUE = re.compile(r"选项|参数|开关|option|flag|switch", re.IGNORECASE)
_PROSE_OPTION = [
    re.compile(r"(?<![A-Za-z0-9_.+#/-])([A-Za-z])(?=\s*(?:选项|参数|开关))"),
    re.compile(r"(?<=选项|参数|开关)(\s*)([A-Za-z])(?![A-Za-z0-9_.+#/-])"),
    re.compile(r"(?<=\bthe )([A-Za-z])(?= (?:option|flag|switch)\b)", re.IGNORECASE),
    re.compile(r"['\"`‘“]([A-Za-z])['\"`’”](?= ?(?:option|flag|switch)\b)", re.IGNORECASE),
    re.compile(r"(?<![A-Za-z0-9_.+#/'\"`-])([B-HJ-Z])(?= (?:option|flag|switch)\b)"),
    re.compile(r"(?<=\b(?:option|switch) )([B-HJ-Z])(?![A-Za-z0-9_.+#/-])"),
]
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_RUNS = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+|[^\u3400-\u9fff\uf900-\ufaff]+")
_PART_SPLIT = re.compile(r"[-._/+#]+")
# Function words that carry no topic; kept short on purpose (over-filtering hurts recall more than it helps).
STOPWORDS = frozenset(
    ["的", "了", "是", "在", "和", "与", "及", "或", "也", "就", "都", "而", "并", "被", "把", "从", "对", "为", "以", "于", "之", "其", "这", "那", "个", "一个", "有", "没有", "吗", "呢", "吧", "啊", "我", "你", "他", "她", "它", "我们", "你们", "他们", "什么", "怎么", "如何", "怎样", "哪些", "哪个", "为什么", "可以", "能", "会", "要", "需要", "应该", "请问", "一下", "中", "上", "下", "里", "时", "时候", "a", "an", "the", "of", "to", "in", "on", "for", "and", "or", "is", "are", "was", "were", "be", "been", "it", "this", "that", "these", "those", "with", "as", "by", "at", "from", "how", "what", "which", "who", "whom", "whose", "why", "where", "when", "do", "does", "did", "can", "could", "should", "i", "you", "we", "they", "my", "your"]
)

_jieba_ready = False


def _jieba() -> object:
    global _jieba_ready
    import jieba

    if not _jieba_ready:
        jieba.setLogLevel(logging.WARNING)
        _jieba_ready = True
    return jieba


def is_cjk_token(token: str) -> bool:
    """Whether a token of :func:`tokenize` is a Chinese word (it starts with a CJK character)."""
    return _CJK.match(token) is not None


def is_option_token(token: str) -> bool:
    """Whether a token of :func:`tokenize` is a command-line option or a format sequence (``-H``, ``--delete``,
    ``+x``, ``%F``): matched as written, case included, never as a substring of a longer word."""
    return token[:1] in ("-", "+", "%")


def _prose_options(text: str) -> str:
    """``text`` with single letters that prose names as options written as options: ``H 选项`` -> ``-H 选项``."""
    if _PROSE_CUE.search(text) is None:  # most text names no option: skip the six patterns
        return text
    for number, pattern in enumerate(_PROSE_OPTION):
        if number == 1:
            text = pattern.sub(r"\1-\2", text)
        else:
            text = pattern.sub(r"-\1", text)
    return text


def _option_token(option: str) -> str:
    return option.lower() if option.startswith("--") else option


def _latin_tokens(run: str) -> list[str]:
    """The tokens of a run without CJK: words lower-cased; an option or a format sequence as written, then its
    letters as a lower-cased word (``-H`` -> ``-H``, ``h``; ``--Max-Depth`` -> ``--max-depth``, ``max-depth``)."""
    if _OPTION_START.search(run) is None:  # no option can start here: the plain word scan (most runs)
        return [w for w in _WORD.findall(run.lower()) if w not in STOPWORDS]
    tokens: list[str] = []
    for match in _PIECE.finditer(run):
        piece = match.group()
        if match.lastgroup == "word":
            word = piece.lower()
            if word not in STOPWORDS:
                tokens.append(word)
            continue
        tokens.append(_option_token(piece) if match.lastgroup == "option" else piece)
        word = (piece.lstrip("-+") if match.lastgroup == "option" else piece[-1]).lower()
        if word not in STOPWORDS:
            tokens.append(word)
    return tokens


def option_tokens(text: str) -> set[str]:
    """The option and format-sequence tokens that :func:`tokenize` finds in ``text``, without running jieba."""
    text = _prose_options(unicodedata.normalize("NFKC", text).translate(DASHES))
    return {_option_token(m.group()) if m.lastgroup == "option" else m.group()
            for m in _PIECE.finditer(text) if m.lastgroup != "word"}


def tokenize(text: str) -> list[str]:
    """Tokens for BM25: jieba search-mode words for CJK runs, lower-cased words for the rest, options and format
    sequences as written and also as lower-cased words (see the module docstring); stopwords dropped."""
    text = _prose_options(unicodedata.normalize("NFKC", text).translate(DASHES))
    tokens: list[str] = []
    for run in _RUNS.findall(text):
        if _CJK.match(run):
            for piece in _jieba().cut_for_search(run):  # type: ignore[attr-defined]
                if piece not in STOPWORDS:
                    tokens.append(piece)
        else:
            tokens.extend(_latin_tokens(run))
    return tokens


def name_words(source: str) -> str:
    """The words of a file's name, for its chunks' keyword text: no folders, no extension, no man-page section, and
    ``. _ -`` as spaces (``man/df.1.txt`` -> ``df``, ``man/logind.conf.5.txt`` -> ``logind conf``,
    ``handbook/sect.remote-login.html`` -> ``sect remote login``, ``运维/磁盘管理.md`` -> ``磁盘管理``)."""
    name = PurePosixPath(source.replace("\\", "/")).name
    name = _EXTENSION.sub("", name, count=1)
    name = _MAN_SECTION.sub("", name, count=1)
    return _NAME_SEPARATORS.sub(" ", name).strip()


def chunk_tokens(text: str, source: str) -> str:
    """What the docstore stores for a chunk: the space-joined tokens of its text (heading path + chunk text) and of
    its file's name words (:func:`name_words`) without bare numbers.

    Why the file name: a command reference's option entries deep in the page never repeat the command's name, so a
    question that names it (``df -H``) found the handbook chunks that write ``df -h`` instead; the name is the
    page's title. On dev2 this lifted the man pages from hit@5 0.682 to 0.741 on test (docs/EVAL.md).
    """
    return " ".join(tokenize(text) + list(_name_tokens(source)))


@functools.lru_cache(maxsize=4096)
def _name_tokens(source: str) -> tuple[str, ...]:
    """The tokens of a file's name words (all chunks of a file share them: made once per file)."""
    return tuple(t for t in tokenize(name_words(source)) if not t.isdigit())


def _tokens_from_texts(docstore: DocStore, ids: list[int]) -> list[str]:
    from rag.ingest.split import embedding_text  # the text sync tokenised: heading path + chunk text

    chunks = docstore.get_chunks(ids)
    return [chunk_tokens(embedding_text(chunks[i]), chunks[i].source) for i in ids]


def current_tokens(docstore: DocStore) -> tuple[list[int], list[str]]:
    """(ids, space-joined tokens) of every chunk, made by this ``TOKENIZER_VERSION``.

    The stored tokens are used when the docstore says this version made them; otherwise (an index built by an older
    release) the chunk texts are re-tokenised in memory, so queries and chunks are always cut the same way. Readers
    never write: the next ingest stores the new tokens (:func:`store_current_tokens`). Call inside a snapshot.
    """
    ids, tokens = docstore.all_tokens()
    stored = docstore.get_meta("bm25_tokenizer")
    if stored == TOKENIZER_VERSION or not ids:
        return ids, tokens
    log.warning("BM25 tokens of this index were made by %s, not %s: re-tokenising %d chunks in memory "
                "(the next ingest stores them)", stored or "an unknown tokenizer", TOKENIZER_VERSION, len(ids))
    return ids, _tokens_from_texts(docstore, ids)


def store_current_tokens(docstore: DocStore) -> int:
    """Re-tokenise every stored chunk with this version and record the version; returns the chunk count.

    Only the tokens change (no re-split, no re-embedding). Call inside a write transaction.
    """
    ids, _ = docstore.all_tokens()
    tokens = _tokens_from_texts(docstore, ids)
    docstore.conn.executemany("UPDATE chunks SET tokens = ? WHERE id = ?", zip(tokens, ids, strict=True))
    docstore.set_meta("bm25_tokenizer", TOKENIZER_VERSION)
    log.info("re-tokenised %d chunks for BM25 (%s)", len(ids), TOKENIZER_VERSION)
    return len(ids)


class BM25:
    """Okapi BM25 over pre-tokenised documents, with inverted lists in numpy arrays.

    A document's length leaves out its option tokens (``-H`` next to its word ``h``): they repeat a word already
    counted, and counting them twice made option lists look long and lose to prose (docs/EVAL.md).

    Args:
        ids: chunk ids [n].
        docs: space-joined tokens per chunk [n].
        k1, b: the usual BM25 parameters.
    """

    def __init__(self, ids: Sequence[int], docs: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.k1, self.b = k1, b
        postings: dict[str, dict[int, int]] = defaultdict(dict)
        lengths = np.zeros(len(docs), dtype=np.float32)
        for row, doc in enumerate(docs):
            words = doc.split()
            lengths[row] = len(words)
            for word in words:
                slot = postings[word]
                slot[row] = slot.get(row, 0) + 1
        n = len(docs)
        # term -> (rows int32 [m], tf float32 [m], idf)
        self.postings: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        self._parts: frozenset[str] | None = None
        for word, rows in postings.items():
            df = len(rows)
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            self.postings[word] = (
                np.fromiter(rows.keys(), dtype=np.int32, count=df),
                np.fromiter(rows.values(), dtype=np.float32, count=df),
                idf,
            )
            if is_option_token(word):  # an option repeats its word: not counted in the length
                np.subtract.at(lengths, self.postings[word][0], self.postings[word][1])
        self.avg_len = float(lengths.mean()) if len(docs) else 0.0
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.ids)

    def knows(self, word: str) -> bool:
        """Whether ``word`` (a lower-case token) is indexed, alone or as a part of a longer indexed token split at
        ``- . _ / + #`` (``logind`` in ``systemd-logind``, ``node`` in ``node.js``)."""
        if word in self.postings:
            return True
        if self._parts is None:  # built on first use: only the refusal gate asks
            self._parts = frozenset(part for token in self.postings for part in _PART_SPLIT.split(token) if part)
        return word in self._parts

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """(chunk id, score) best first; only chunks sharing at least one token with the query."""
        if not len(self.ids):
            return []
        scores = np.zeros(len(self.ids), dtype=np.float32)
        norm = self.k1 * (1.0 - self.b + self.b * self.lengths / max(self.avg_len, 1e-9))
        seen = False
        for word in set(tokenize(query)):
            entry = self.postings.get(word)
            if entry is None:
                continue
            rows, tf, idf = entry
            scores[rows] += idf * tf * (self.k1 + 1.0) / (tf + norm[rows])
            seen = True
        if not seen:
            return []
        k = min(k, int(np.count_nonzero(scores)))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(self.ids[i]), float(scores[i])) for i in top]
