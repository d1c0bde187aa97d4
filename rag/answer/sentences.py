"""Whole sentences of document text: PDF line breaks joined, headings and table scraps told apart.

A chunk is a window of its document, so its first and last sentences may be cut. :func:`parent_text` rebuilds the
text around a chunk from its neighbouring chunks of the same document (the docstore has them), and
:func:`segment` cuts that text into :class:`Sentence` spans: a line break ends a sentence only when the line is
complete (it ends with sentence punctuation, or the next line starts a list item / heading, or the line is blank);
otherwise the break is PDF layout and the two lines are joined (no space between CJK characters, one space
elsewhere). A short line without sentence punctuation is a heading or a table scrap, never an answer sentence,
except the term of a definition list (a manual page's ``--group-directories-first`` above its indented
description): the term and its description are one sentence, so an answer names the option it describes.
Sentence punctuation inside a line ends a sentence, except where :func:`false_end` says it ends none: the "." of an
abbreviation (``e.g.``), an end inside a short bracketed aside, or a "." before a tiny CJK remnant (``-c.   相同。``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from rag.core.text import CJK
from rag.core.types import Chunk

# Sentence punctuation; a "." ends a sentence only before a space, a line end or the text end (not "4.3.1", "a.b").
# A question mark inside quotes that the sentence goes on after ("例如"怎样重建索引？"或…") ends nothing; without the
# quote a conjunction starts the next sentence ("…（文件状态信息最后变更的时间）；与 -l 一起使用时：…").
_TERMINAL = re.compile(r"(?:[。！？!?；;…]+|\.(?=[\s”’\"」』）)]|$))[”’\"」』）)]*[。！？!?；;…]*(?![”’\"」』）)，、,])"
                       r"(?!(?<=[”’\"」』）)])[或和与及等])")
ENDS = ("。", "！", "？", "!", "?", ".", "；", ";", "…")
CLOSERS = "）)”’」』】\"'"  # closing brackets and quotes that may follow a sentence's end
_END_RUN = re.compile(r"[.。！？!?；;…]+[”’\"」』）)]*[。！？!?；;…]*")  # a sentence end's punctuation and closers
# A "." after a Latin abbreviation ends no sentence when a word follows ("sets (e.g. ufw", "Fig. 3", "Dr. Li"); "No."
# only before a number, "etc." only before a lower-case word ("etc.) and more"), as either may end a sentence too.
# Titles only capitalised ("ms." and "st." end sentences: "took 87 ms. So").
_ABBREVIATION = re.compile(r"(?<![\w.])(?:(?i:e\.g|i\.e|cf|vs|approx|fig)|Mrs?|Dr|St|No|etc)$")
_NEXT_WORD = re.compile(r"\s*([^\s\[［【])")  # what follows an end; a citation marker means the answer ended there
# A tiny CJK remnant up to the next sentence end (a Chinese manual page's "gunzip -c.   相同。"): part of the sentence.
_REMNANT = re.compile(rf"\s*{CJK.pattern}{{1,3}}(?:[。！？!?；;…]|\.(?=\s|$))")
BRACKET_REACH = 300  # a bracket that closes within this many characters holds an aside, not sentence ends
# A line that starts a new block: list items, numbered steps and headings, markdown marks, table rows.
_BLOCK_START = re.compile(r"^\s*(?:[-•*·>#|]|\d{1,3}[.)、]\s|\d{1,3}\.\d|[一二三四五六七八九十]+、|（[一二三四五六七八九十\d]+）"
                          r"|第[一二三四五六七八九十\d]+[章节条部分]|[A-Z]\d{0,2}\s)")
_NUMBERED_HEADING = re.compile(r"^\s*(?:#{1,6}\s|\d{1,3}(?:\.\d{1,3})*\.?\s|[一二三四五六七八九十]+、|第[一二三四五六七八九十\d]+[章节])")
_LATIN_WORD = re.compile(r"[A-Za-z0-9]+")
# The term of a definition list as manual pages write it: an option (``-G, --no-group``, ``--sort=WORD``, ``-c count``)
# alone on its line, its description on the next, more deeply indented line.
_OPTION_TERM = re.compile(r"^-{1,2}[A-Za-z0-9?#][^\s,]*(?:,?\s{1,2}-{1,2}[A-Za-z0-9][^\s,]*)*(?:[ =][^\s,]+)?$")
# Any other term: a few Latin words without sentence punctuation (json-pretty, ibs=bytes, list-unit-files [PATTERN...]).
_LATIN_TERM = re.compile(r"^[A-Za-z0-9%][\w%=:.+/\[\]{}<>|-]*(?: [\w%=:.+/\[\]{}<>|-]+){0,3}$")
# An option with its description on one line (``-C     逐列列出项目``, ``-d, --dir 删除空目录`` once joined): a manual
# page's list item, however short, never a heading.
_OPTION_ITEM = re.compile(r"^\s*-{1,2}[A-Za-z0-9?#][^\s,]*(?:,\s{0,2}-{1,2}[A-Za-z0-9][^\s,]*)*(?:=[^\s,]+)?\s+[^\s-]")
# A value with its description, a column gap between them (an exit status list's ``124    如果指定“命令”超时``, a format
# list's ``%H     小时 (00..23)``, an escape list's ``\\n     换行``): a list item like an option's, never a numbered
# heading (``2 Installation``, one space) nor a heading at all, however short.
_VALUE_ITEM = re.compile(r"^\s*(?:\d{1,3}|%[-_0^#:+\d]*(?:[A-Za-z]{1,2}|%)|\\[A-Za-z0-9\\])\s{2,}\S")
SHORT_LINE_UNITS = 12  # a line without sentence punctuation shorter than this (CJK chars + 2 x words) is no sentence


@dataclass(frozen=True)
class Sentence:
    """One sentence of a text.

    Attributes:
        start: offset of its first character in the text it was cut from.
        end: offset one past its last character.
        text: the sentence with layout line breaks joined and outer blanks stripped.
        complete: it ends with sentence punctuation or is a whole line that is long enough to be one (a list item,
            a table row); False for headings, table scraps and text that runs past the end of the given text.
        heading: it is a heading line (numbered / markdown heading, or a short line without punctuation).
    """

    start: int
    end: int
    text: str
    complete: bool
    heading: bool


def _size(text: str) -> int:
    """CJK characters + 2 x Latin words: a rough length that treats both scripts alike."""
    return len(CJK.findall(text)) + 2 * len(_LATIN_WORD.findall(CJK.sub(" ", text)))


def _short_line(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.endswith(ENDS) and _size(stripped) < SHORT_LINE_UNITS


def is_heading_line(line: str, headings: Sequence[str] = ()) -> bool:
    """A heading: one of ``headings``, a numbered / markdown heading line without sentence punctuation, or a short
    line without sentence punctuation (``5. Restart and factory reset``, ``一、排查前先记录现象``, ``VPN 连接``)."""
    stripped = line.strip().lstrip("#").strip()
    if not stripped or stripped.endswith(ENDS + ("：", ":")):
        return False
    if any(stripped == h.strip() for h in headings):
        return True
    if _OPTION_ITEM.match(stripped) or _VALUE_ITEM.match(stripped):
        return False
    return _short_line(stripped) or (bool(_NUMBERED_HEADING.match(line)) and _size(stripped) < 2 * SHORT_LINE_UNITS)


def _join(left: str, right: str) -> str:
    if not left or not right:
        return left + right
    glue = "" if CJK.match(left[-1]) and CJK.match(right[0]) else " "
    return left + glue + right


def _width(line: str) -> int:
    """Display width: 2 per CJK character, 1 per other character."""
    return len(line.strip()) + len(CJK.findall(line))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def is_definition_term(line: str, next_line: str) -> bool:
    """``line`` is the term of a definition list whose description is the next, more deeply indented line (a manual
    page): an option (``-i, --inode``), or an indented short Latin term (``json-pretty``, ``ibs=bytes``); a section
    heading at the margin (``NAME``) is none."""
    stripped = line.strip()
    if not next_line.strip() or _indent(next_line) <= _indent(line):
        return False
    return bool(_OPTION_TERM.match(stripped)) or (_indent(line) >= 2 and bool(_LATIN_TERM.match(stripped)))


def _soft_break(line: str, next_line: str, full_width: int) -> bool:
    """Whether the break after ``line`` is PDF layout inside a sentence (join the lines): the line has no sentence
    punctuation, fills most of the text's width, and the next line does not start a block; or the line is a
    definition term and the next its description."""
    stripped, following = line.strip(), next_line.strip()
    if is_definition_term(line, next_line):
        return True
    if not stripped or not following or stripped.endswith(ENDS + ("：", ":")):
        return False
    if _width(stripped) < 0.6 * full_width:  # a short last line: a title, heading or the paragraph's end
        return False
    if _BLOCK_START.match(next_line) or _short_line(stripped) and not _short_line(following + "。"):
        return False
    return not is_heading_line(following) or _size(following) >= SHORT_LINE_UNITS


def segment(text: str, headings: Sequence[str] = ()) -> list[Sentence]:
    """The sentences of ``text`` in order, with their offsets (see the module docstring)."""
    sentences: list[Sentence] = []
    lines = text.split("\n")
    offsets, position = [], 0
    for line in lines:
        offsets.append(position)
        position += len(line) + 1
    # Hard line breaks split the text into blocks of layout lines; a block is one paragraph / item / heading.
    full_width = max((_width(line) for line in lines), default=0)
    blocks: list[list[int]] = []
    block: list[int] = []
    for index in range(len(lines)):
        block.append(index)
        last = index == len(lines) - 1
        if last or not _soft_break(lines[index], lines[index + 1], full_width):
            blocks.append(block)
            block = []
    at = 0
    while at < len(blocks):
        found = _block_sentences(lines, offsets, blocks[at], headings, ends_text=blocks[at][-1] == len(lines) - 1)
        examples = _examples(lines, blocks, at) if found and _introduces(found[-1]) else []
        if examples:
            # "请使用下列命令：" / "run:" and the indented command lines under it are one sentence: the lines are
            # what it says (each alone is a short line without punctuation, a heading by the rules above)
            intro, final = found[-1], blocks[examples[-1]][-1]
            text = " ".join([intro.text, *(lines[blocks[b][-1]].strip() for b in examples)])
            end = offsets[final] + len(lines[final].rstrip())
            found[-1] = Sentence(intro.start, end, text, final != len(lines) - 1, False)
            at = examples[-1]  # the command lines' blocks are taken
        sentences.extend(found)
        at += 1
    return sentences


_PROMPT_LINE = re.compile(r"^[$#] \S")  # a shell prompt's command line ("$ sudo apt update", "# apt install x")
MAX_EXAMPLE_LINES = 4  # command lines an introducing sentence takes with it
MAX_EXAMPLE_CHARS = 160  # ... each at most this long


def _introduces(sentence: Sentence) -> bool:
    """An unfinished sentence that ends with a colon and says something (``如果需要删除……请使用下列命令：``): it
    introduces what follows."""
    return not sentence.complete and not sentence.heading and sentence.text.endswith(("：", ":")) and (
        _size(sentence.text) >= SHORT_LINE_UNITS)


def _examples(lines: list[str], blocks: list[list[int]], at: int) -> list[int]:
    """The blocks of command lines after block ``at`` that its last sentence introduces: up to
    ``MAX_EXAMPLE_LINES`` one-line blocks (blank lines between them), each indented deeper than the block or starting
    with a shell prompt, short, and without sentence punctuation (even inside it) or CJK text (a command, not prose).
    Blank-line blocks between them are not listed (they say nothing); the last listed block ends the sentence."""
    indent = _indent(lines[blocks[at][0]])
    # under a Chinese sentence a line without CJK text is what it introduces (a web page's <pre> block arrives at the
    # margin: "更新“/etc/security/limits.conf”文件，包括下面内容：" above "* soft core unlimited"); under a Latin one
    # only an indented or prompted line is (at the margin it may be the next paragraph or a list item)
    chinese = bool(CJK.search(lines[blocks[at][-1]]))
    out: list[int] = []
    for number in range(at + 1, len(blocks)):
        content = [i for i in blocks[number] if lines[i].strip()]
        if not content:
            continue
        if len(content) > 1 or len(out) == MAX_EXAMPLE_LINES:
            break
        line = lines[content[0]]
        stripped = line.strip()
        # a line with a sentence end inside (``cd ./source; cp -a . /dest``) would split where the answer is read
        if len(stripped) > MAX_EXAMPLE_CHARS or _TERMINAL.search(stripped) or CJK.search(stripped) or not (
                chinese or _indent(line) > indent or _PROMPT_LINE.match(stripped)):
            break
        out.append(number)
    return out


def _code_semicolon(raw: str, match: re.Match[str]) -> bool:
    """An ASCII ``;`` that ends no sentence: between Latin words inside a Chinese sentence it is a command line's
    (``while quilt push; do quilt refresh; done 来验证这点``); in English text before a lower-case word or a number it
    joins two clauses of one sentence (``Keep the thermostat online; the update is retried automatically.``, ``2.4 GHz
    Wi-Fi networks only; 5 GHz networks are not supported.``), where a sentence cut there would start in the middle."""
    if match.group() != ";":
        return False
    before = raw[: match.start()]
    clause = re.split(r"[。！？!?；]", before)[-1]
    after = raw[match.end():].lstrip()
    if not after or not after[0].isascii() or not after[0].isalnum():
        return False
    if not CJK.search(clause):
        return (after[0].islower() or after[0].isdigit()) and match.end() < len(raw) and raw[match.end()].isspace()
    return bool(before) and before[-1].isascii() and not before[-1].isspace()


def false_end(text: str, start: int) -> bool:
    """The sentence punctuation at ``text[start]`` ends no sentence: the "." of an abbreviation (see
    ``_ABBREVIATION``), an ASCII "." before a tiny CJK remnant (``gunzip -c.   相同。``), a "." inside closing quotes
    or brackets before a lower-case word (a quoted literal: ``\\bar "|." for a final bar``), or any end inside a bracket
    that closes within ``BRACKET_REACH`` characters (``rule sets (e.g. foo. bar) and more.``); a whole sentence in
    brackets ends after its closing bracket (``（……限定 NFS 访问权限。）``), which is outside them."""
    end = _END_RUN.match(text, start).end()  # type: ignore[union-attr]
    if text[start] == ".":
        word = _ABBREVIATION.search(text, max(0, start - 8), start)
        after = following.group(1) if (following := _NEXT_WORD.match(text, end)) else ""
        if word and after and (after.isdigit() if word.group() == "No" else after.islower() or word.group() != "etc"):
            return True
        if _REMNANT.match(text, end):
            return True
        if end > start + 1 and text[start + 1] in CLOSERS and after.isascii() and after.islower():
            return True  # the "." of a quoted literal the sentence goes on after (``or \\bar "|." for a final bar``)
    return _in_brackets(text, end)


def _in_brackets(text: str, position: int) -> bool:
    """``position`` is inside a bracket (``()`` or ``（）``) opened and closed within ``BRACKET_REACH`` characters
    of it."""
    if not re.search(r"[(（]", text[max(0, position - BRACKET_REACH):position]):
        return False
    depth = 0
    for opening in range(position - 1, max(position - 1 - BRACKET_REACH, -1), -1):
        if text[opening] in ")）":
            depth += 1
        elif text[opening] in "(（":
            if not depth:
                break
            depth -= 1
    else:
        return False
    for char in text[position:position + BRACKET_REACH]:
        if char in ")）":
            if not depth:
                return True
            depth -= 1
        elif char in "(（":
            depth += 1
    return False


def _block_sentences(lines: list[str], offsets: list[int], block: list[int], headings: Sequence[str],
                     ends_text: bool) -> list[Sentence]:
    start = offsets[block[0]]
    raw = "\n".join(lines[i] for i in block)
    if len(block) == 1 and is_heading_line(raw, headings):
        stripped = raw.strip()
        return [Sentence(start + raw.index(stripped), start + raw.index(stripped) + len(stripped), stripped,
                         False, True)] if stripped else []
    out: list[Sentence] = []
    cut = 0
    pieces = [(m.end(), True) for m in _TERMINAL.finditer(raw)
              if not _code_semicolon(raw, m) and not false_end(raw, m.start())]
    if not pieces or pieces[-1][0] < len(raw.rstrip()):
        # the block's tail has no sentence punctuation: a whole line (item, table row) unless the text ends there
        tail = raw[pieces[-1][0] if pieces else 0:].strip()
        # a line, or a definition term with its unpunctuated description (not the rest after a sentence of it)
        item = len(block) == 1 or not pieces and is_definition_term(lines[block[0]], lines[block[1]])
        whole_line = item and not tail.endswith(("：", ":")) and (
            _size(tail) >= SHORT_LINE_UNITS or bool(_OPTION_ITEM.match(" ".join(tail.split()))) or bool(
                _VALUE_ITEM.match(tail)))
        pieces.append((len(raw), whole_line and not ends_text))
    for piece_end, complete in pieces:
        piece = raw[cut:piece_end]
        stripped = piece.strip()
        if stripped:
            lead = piece.index(stripped)
            joined = ""
            for part in stripped.split("\n"):
                joined = _join(joined, part.strip())
            out.append(Sentence(start + cut + lead, start + cut + lead + len(stripped), joined, complete, False))
        cut = piece_end
    return out


def normalise(text: str) -> str:
    """NFKC, lower case, no whitespace: how sentences are compared with their source."""
    return "".join(unicodedata.normalize("NFKC", text).lower().split())


def parent_text(chunk: Chunk, neighbours: Sequence[Chunk], max_gap: int = 0) -> tuple[str, int]:
    """The text of ``chunk``'s document around it, rebuilt from ``neighbours`` (chunks of the same file), and the
    offset of the chunk's first character in it. Chunks of another page or not adjacent are ignored.

    ``max_gap``: the splitter trims the whitespace between two chunks that do not overlap (a paragraph break it
    could not start the next chunk's overlap before), so adjacent chunks up to this many characters apart are
    joined too, the gap filled with as many line breaks (offsets stay right; only that whitespace is a guess)."""
    by_position = {c.position: c for c in neighbours if c.source == chunk.source and c.page == chunk.page}
    by_position[chunk.position] = chunk
    run = [chunk]
    while (before := by_position.get(run[0].position - 1)) is not None and (
            before.start < run[0].start <= before.end + max_gap):
        run.insert(0, before)
    while (after := by_position.get(run[-1].position + 1)) is not None and (
            run[-1].start < after.start <= run[-1].end + max_gap):
        run.append(after)
    text, text_start = run[0].text, run[0].start
    for current in run[1:]:
        text += "\n" * (current.start - text_start - len(text))  # the trimmed whitespace between them, if any
        text += current.text[text_start + len(text) - current.start:]
    offset = chunk.start - text_start
    if text[offset:offset + len(chunk.text)] != chunk.text:  # offsets disagree with the texts: trust the chunk
        return chunk.text, 0
    return text, offset


def is_whole_sentence(sentence: str, source: str) -> bool:
    """``sentence`` (citations removed) ends with sentence punctuation and starts where a sentence of ``source``
    starts (as :func:`segment` cuts it: a PDF line break inside a sentence is no start), or it is a whole line of
    ``source`` that :func:`segment` judged complete without punctuation (a command, a table row: the answer quotes
    it as it is). Whitespace is ignored."""
    sentences = segment(source)
    if any(s.complete and normalise(s.text) == normalise(sentence) for s in sentences):
        return True
    wanted = normalise(sentence).rstrip(CLOSERS).rstrip("".join(ENDS))
    # a sentence in brackets or quotes ends with its punctuation inside them ("（……限定访问权限。）")
    if not sentence.strip().rstrip(CLOSERS).endswith(ENDS) or not wanted:
        return False
    return any(normalise(s.text).startswith(wanted) for s in sentences)
