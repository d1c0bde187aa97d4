"""The unknown-name refusal gate: a question about a product or project that the index never mentions.

A question such as "Kubernetes 集群里怎么把节点设置为不可调度？" over a corpus that never says "Kubernetes" cannot be
answered from it, however close the retrieved text is; no score threshold tells that apart on a small embedder
(docs/EVAL.md "Refusal"), a name the corpus never mentions does. But most Latin-script words in a question are not
such names: they are example values (``a.txt``, ``-abc``, ``/etc/fstab``, ``ext4``, ``v2.24.1``, ``MY_VAR``),
commands and file-system types written in lower case (``ls``, ``ntfs``), acronyms (``NTFS``, ``UTF``, ``ERROR``) or
ordinary English words — and a question that uses an example value the documents do not spell out is still
answerable. So the gate counts only **proper names as written**: a word that starts with a capital letter and has
lower-case letters (``Kubernetes``, ``WireGuard``, ``OpenRC``), not the first word of an English sentence, with no
digit and none of ``- . / \\ _ : = @ ~ * $``, not inside quotes. A question is refused only when such a name occurs in
no chunk of the index (nor inside a longer indexed word, ``logind`` in ``systemd-logind``) and in none of the
retrieved chunks; an English question whose words the index mostly lacks is a language gap, never refused.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from rag.index.bm25 import BM25, tokenize

# a run of characters that are neither whitespace nor CJK (ideographs, kana, hangul, CJK and full-width punctuation)
_RAW_WORD = re.compile(r"[^\s\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\u3000-\u303f\uff00-\uffef]+")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_EDGE = "\"'`“”‘’()[]{}<>,;!?。，、；：？！"  # stripped from the ends of a raw word
_QUOTES = "\"'`“”‘’"
_NOT_A_NAME = re.compile(r"[0-9\-./\\_:=@~*$%#&+|]")  # options, paths, file names, versions, identifiers, URLs
_NAME = re.compile(r"[A-Z][A-Za-z]*[a-z][A-Za-z]*")  # capital first, some lower case: Kubernetes, WireGuard, OpenRC


def proper_names(question: str, min_chars: int = 3) -> list[str]:
    """The words of ``question`` written as proper names (see the module docstring), lower-cased, in order.

    Args:
        question: the user's question, Chinese or English.
        min_chars: shortest name that counts.
    """
    text = unicodedata.normalize("NFKC", question)
    names: list[str] = []
    for match in _RAW_WORD.finditer(text):
        raw = match.group()
        word = raw.strip(_EDGE)
        if len(word) < min_chars or _NOT_A_NAME.search(word) or not _NAME.fullmatch(word):
            continue
        if raw[0] in _QUOTES or raw[-1] in _QUOTES:  # a quoted literal is a value, not the topic
            continue
        before = text[: match.start()].rstrip()
        if not _CJK.search(text) and (not before or before[-1] in ".?!:;\"'("):  # capitalised as a sentence start
            continue
        if word.lower() not in names:
            names.append(word.lower())
    return names


def unknown_names(question: str, bm25: BM25, hit_texts: Sequence[str], min_chars: int = 3) -> list[str]:
    """The question's proper names that neither the index nor the retrieved chunks mention; empty = answer it.

    Args:
        question: the user's question.
        bm25: the index's keyword index (its vocabulary).
        hit_texts: the texts of the chunks retrieved for the question.
        min_chars: shortest name that counts.
    """
    names = proper_names(question, min_chars)
    if not names:
        return []
    if not _CJK.search(question):  # an English question over a corpus that lacks most of its words: a language gap
        words = {t for t in tokenize(question) if any("a" <= c <= "z" for c in t)}
        if 2 * sum(len(t) >= min_chars and t not in bm25.postings for t in words) > len(words):
            return []
    texts = [unicodedata.normalize("NFKC", t).lower() for t in hit_texts]
    return [name for name in names if not bm25.knows(name) and not any(name in t for t in texts)]
