"""From RapidOCR's boxes to text: page skew, reading order, word spaces and paragraphs.

Why this exists: the recogniser's raw lines lose what a text layer keeps. On the dev2 scans (docs/BENCHMARKS.md,
"OCR") PP-OCRv4 drops most spaces between English words ("todisable all self-advertisingfeaturesin"), so BM25 sees
one unknown token instead of five words; and every printed line ends in a newline, so a Chinese word cut by the
line end ("服务\\n器") is two tokens. This module works on geometry only, no language data:

* **word spaces** come back from the page itself: RapidOCR reports where each character's centre lies (the CTC
  column of the recogniser, ``return_word_box``); between two Latin letters or digits with no space, the widest run
  of blank pixel columns in the upright line crop is measured (in the crop's middle rows: the box takes in the
  neighbouring lines' descenders), and a gap of twice the line's median gap (its letter spacing) is a space, within
  0.2-0.3 of the line box's height. On the 24 dev2 scan pages that finds 822 of 826 word spaces (the recogniser
  alone: 268) with 9 false ones (bench/ocr_spaces.py; docs/BENCHMARKS.md, "OCR"); a fixed share of the height
  does worse, as letter spacing differs between fonts (a monospace font's narrow letters stand as far apart as a
  proportional font's words);
* **skew**: RapidOCR already reads a tilted line from its own rotated box, so the page is not rotated before
  recognition; the skew matters for putting boxes in order (at 3°, the left and right ends of an A4 line differ by
  two lines' height), so :func:`reading_order` and :func:`paragraphs` work in coordinates turned back by the
  median angle of the page's long boxes;
* **paragraphs**: a line that reaches the right edge of the page's text block, followed by one at normal line
  spacing, was wrapped, not ended: the two are joined (no space between CJK, a space between words, nothing after a
  hyphen). Rows of several boxes (tables, forms) stay lines.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

# A word space: a blank gap between two characters of at least WORD_GAP_TIMES_LETTER_GAP times the line's median
# gap, and within [WORD_GAP_MIN, WORD_GAP_MAX], as shares of the line box's height (docs/BENCHMARKS.md, "OCR")
WORD_GAP_TIMES_LETTER_GAP = 2.0
WORD_GAP_MIN = 0.2
WORD_GAP_MAX = 0.3
SPACE_AFTER = ",;!?)"  # punctuation after which a blank gap before a letter is a space too ("a,b" stays glued)
INK_BAND = (0.1, 0.9)  # rows of a line crop (shares of its height) where ink is looked for
MIN_MARGIN_LINES = 3  # lines ending at one right edge before it counts as the text block's margin


@dataclass(frozen=True)
class OcrBox:
    """One recognised box: its 4 corners (x, y), clockwise from top-left, its text and score, and the image
    coordinates of each character's centre when the recogniser gave them (else empty)."""

    corners: tuple[tuple[float, float], ...]
    text: str
    score: float
    char_centres: tuple[tuple[float, float], ...] = ()

    def height(self) -> float:
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = self.corners
        return (math.hypot(x3 - x0, y3 - y0) + math.hypot(x2 - x1, y2 - y1)) / 2

    def width(self) -> float:
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = self.corners
        return (math.hypot(x1 - x0, y1 - y0) + math.hypot(x2 - x3, y2 - y3)) / 2


def skew_degrees(boxes: list[OcrBox]) -> float:
    """The page's tilt: the median angle of the top edges of boxes at least 3 times as wide as high (0 if none).

    Positive when lines go down to the right (image y grows downwards). Short boxes (a page number, one word) have
    unreliable angles and are left out.
    """
    angles = []
    for box in boxes:
        if box.width() >= 3 * box.height():
            (x0, y0), (x1, y1) = box.corners[0], box.corners[1]
            angles.append(math.degrees(math.atan2(y1 - y0, x1 - x0)))
    return statistics.median(angles) if angles else 0.0


def _upright(box: OcrBox, degrees: float) -> tuple[float, float, float, float]:
    """(left, right, top, bottom) of ``box`` in coordinates turned back by the page's skew."""
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    xs = [x * cos + y * sin for x, y in box.corners]
    ys = [-x * sin + y * cos for x, y in box.corners]
    return min(xs), max(xs), min(ys), max(ys)


def reading_order(boxes: list[OcrBox], skew: float = 0.0) -> list[list[OcrBox]]:
    """Group boxes into lines, top to bottom, each left to right, in the page's deskewed coordinates.

    A box joins the current line when its vertical centre lies within half a box height of the line's centre.
    """

    def centre_y(box: OcrBox) -> float:
        _, _, top, bottom = _upright(box, skew)
        return (top + bottom) / 2

    def height(box: OcrBox) -> float:
        _, _, top, bottom = _upright(box, skew)
        return bottom - top

    lines: list[list[OcrBox]] = []
    for box in sorted(boxes, key=centre_y):
        if lines:
            line = lines[-1]
            line_centre = sum(centre_y(other) for other in line) / len(line)
            tolerance = max(height(box), max(height(other) for other in line)) / 2
            if abs(centre_y(box) - line_centre) <= tolerance:
                line.append(box)
                continue
        lines.append([box])
    return [sorted(line, key=lambda box: _upright(box, skew)[0]) for line in lines]


def line_crop(grey: Any, corners: tuple[tuple[float, float], ...]) -> tuple[Any, Any]:
    """The upright crop of a (possibly tilted) box from a grey page, and the 3x3 matrix from page to crop pixels.

    The same perspective warp RapidOCR applies before recognition, so character centres map onto the crop.
    """
    import cv2
    import numpy as np

    quad = np.array(corners, dtype=np.float32)
    width = max(int(round(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3])))), 1)
    height = max(int(round(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2])))), 1)
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(quad, target)
    crop = cv2.warpPerspective(grey, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return crop, matrix


def ink_columns(crop: Any) -> Any:
    """Which pixel columns of a line crop hold ink in the crop's middle band (``INK_BAND`` of its height): darker
    than halfway between paper (90th percentile) and ink (2nd percentile). All False when the crop has no contrast.

    Only the middle band: the detector's box takes in the descenders and ascenders of the lines above and below,
    which would fill the gaps between words (seen on the dev2 scans set in a serif font).
    """
    import numpy as np

    dark, paper = np.percentile(crop, 2), np.percentile(crop, 90)
    if paper - dark < 40:  # grey levels: a blank or washed-out crop
        return np.zeros(crop.shape[1], dtype=bool)
    height = crop.shape[0]
    band = crop[int(height * INK_BAND[0]):max(int(height * INK_BAND[1]), int(height * INK_BAND[0]) + 1)]
    return (band < (dark + paper) / 2).any(axis=0)


def widest_blank(ink: Any, start: float, end: float) -> int:
    """The longest run of columns without ink between pixel columns ``start`` and ``end``."""
    best = run = 0
    for has_ink in ink[max(int(round(start)), 0):max(int(round(end)), 0)]:
        run = 0 if has_ink else run + 1
        best = max(best, run)
    return best


def space_may_go(left: str, right: str) -> bool:
    """Whether a space may go between two characters: Latin letters or digits, after , ; ! ? ) before one, and
    after . or : before a capital (a new sentence: "users.It" would be one BM25 token).

    Not otherwise next to . : / - _ (URLs, paths, versions, where a wide gap around a thin glyph is no space) nor
    next to CJK (where a missing space changes no token).
    """
    word = right.isascii() and right.isalnum()
    return word and ((left.isascii() and left.isalnum()) or left in SPACE_AFTER or (left in ".:" and right.isupper()))


def respace(box: OcrBox, grey: Any) -> str:
    """``box.text`` with the word spaces the recogniser dropped put back, measured on the page (``grey``, HxW uint8).

    Returns the text unchanged when the character positions are missing or do not match it.
    """
    text = box.text
    if len(box.char_centres) != len(text) or not any(space_may_go(a, b) for a, b in zip(text, text[1:], strict=False)):
        return text
    import cv2
    import numpy as np

    crop, matrix = line_crop(grey, box.corners)
    ink = ink_columns(crop)
    if not ink.any():
        return text
    points = np.array([box.char_centres], dtype=np.float32)
    xs = cv2.perspectiveTransform(points, matrix)[0][:, 0]
    height = crop.shape[0]
    gaps = {index: widest_blank(ink, xs[index - 1], xs[index]) / height for index in range(1, len(text))
            if space_may_go(text[index - 1], text[index])}
    # the line's own letter spacing: most pairs are inside words, so the median gap is a letter gap
    typical = statistics.median(gaps.values())
    min_gap = min(max(WORD_GAP_TIMES_LETTER_GAP * typical, WORD_GAP_MIN), WORD_GAP_MAX)
    return "".join((" " if gaps.get(index, 0.0) >= min_gap else "") + char if index else char
                   for index, char in enumerate(text))


def _is_cjk(char: str) -> bool:
    return ord(char) >= 0x2E80  # CJK scripts and full-width punctuation: no space around them


def join_lines(first: str, second: str) -> str:
    """Two lines of one paragraph as one: nothing between CJK, nothing after a word's hyphen, else a space."""
    if not first or not second:
        return first or second
    if _is_cjk(first[-1]) or _is_cjk(second[0]):
        return first + second
    if first.endswith("-") and len(first) > 1 and first[-2].isalpha() and second[0].islower():
        return first + second  # "self-\nadvertising": the hyphen is kept, the line break is not a space
    return first + " " + second


def paragraphs(lines: list[list[OcrBox]], texts: list[str], skew: float = 0.0) -> list[str]:
    """Join wrapped lines (``texts[i]`` is the text of ``lines[i]``) into paragraphs, in order.

    Line ``i`` is joined to line ``i + 1`` when both are one box each, line ``i`` reaches the right margin of the
    text block (the next line's first word would not have fitted after it), the next line does not start further
    right than two line heights past it, and the two are no further apart than 1.5 times the page's usual line
    pitch. The margin is the rightmost edge that at least ``MIN_MARGIN_LINES`` lines end at (within half a line
    height); a page without one (a screenshot, a few lines) keeps its lines as they are.
    """
    if len(lines) < MIN_MARGIN_LINES:
        return [text for text in texts if text]
    extents = [_upright_line(line, skew) for line in lines]  # (left, right, centre_y, height)
    heights = sorted(extent[3] for extent in extents)
    line_height = heights[len(heights) // 2]
    rights = [extent[1] for extent in extents]
    margin = max((right for right in rights
                  if sum(abs(other - right) <= line_height / 2 for other in rights) >= MIN_MARGIN_LINES), default=None)
    pitches = [b[2] - a[2] for a, b in zip(extents, extents[1:], strict=False) if b[2] > a[2]]
    if margin is None or not pitches:
        return [text for text in texts if text]
    pitch = statistics.median(pitches)
    result: list[str] = []
    joinable_previous = False
    for index, text in enumerate(texts):
        if result and joinable_previous and text:
            result[-1] = join_lines(result[-1], text)
        elif text:
            result.append(text)
        joinable_previous = False
        if index + 1 < len(lines) and len(lines[index]) == 1 and len(lines[index + 1]) == 1 and texts[index + 1]:
            left, right, centre, _ = extents[index]
            next_left, next_right, next_centre, _ = extents[index + 1]
            next_text = texts[index + 1]
            char_width = (next_right - next_left) / max(len(next_text), 1)
            first_word = len(next_text.split(" ", 1)[0]) if not _is_cjk(next_text[0]) else 1
            wrapped = right + (first_word + 1.5) * char_width >= margin
            joinable_previous = (wrapped and next_left <= left + 2 * line_height
                                 and 0 < next_centre - centre <= 1.5 * pitch)
    return result


def _upright_line(line: list[OcrBox], skew: float) -> tuple[float, float, float, float]:
    """(left, right, centre y, height) of a line of boxes in deskewed coordinates."""
    extents = [_upright(box, skew) for box in line]
    top, bottom = min(e[2] for e in extents), max(e[3] for e in extents)
    return min(e[0] for e in extents), max(e[1] for e in extents), (top + bottom) / 2, bottom - top
