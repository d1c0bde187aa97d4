"""OCR layout (rag.ingest.parsers.ocr_layout): word spaces from the page's pixels, skew, reading order, paragraphs.

No OCR model here: lines are drawn with Pillow at test time and the boxes RapidOCR would report (corners, character
centres) are computed from the font's own metrics, so each rule is tested on its own and in milliseconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from rag.ingest.parsers.ocr_layout import (
    OcrBox,
    join_lines,
    paragraphs,
    reading_order,
    respace,
    skew_degrees,
)
from tests.office_files import CJK_FONT

needs_font = pytest.mark.skipif(not CJK_FONT.exists(), reason="needs fonts-wqy-microhei (make test installs it)")


def drawn_line(text: str, size_px: int = 28, angle: float = 0.0, noise: float = 0.0) -> tuple[np.ndarray, OcrBox]:
    """A grey page with ``text`` drawn on it, and the box of that line as RapidOCR reports it: the text without its
    spaces (the recogniser dropped them), each character's centre, the box a little taller than the glyphs.
    ``angle`` tilts the page (degrees, counter-clockwise as PIL rotates); the box and centres are turned with it."""
    font = ImageFont.truetype(str(CJK_FONT), size_px)
    margin = size_px * 2
    width = margin * 2 + round(font.getlength(text))
    height = margin * 2 + size_px
    image = Image.new("L", (width, height), 255)
    ImageDraw.Draw(image).text((margin, margin), text, font=font, fill=0)
    centres = []
    for index, char in enumerate(text):
        if char != " ":
            left = margin + font.getlength(text[:index])
            centres.append((left + font.getlength(char) / 2, margin + size_px * 0.6))
    pad = size_px * 0.15  # RapidOCR's boxes are about 1.3 times the font size high
    corners = [(margin - 4.0, margin - pad), (width - margin + 4.0, margin - pad),
               (width - margin + 4.0, margin + size_px + pad), (margin - 4.0, margin + size_px + pad)]
    if angle:
        image = image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=255)
        centre_x, centre_y = width / 2, height / 2
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))

        def turn(point: tuple[float, float]) -> tuple[float, float]:  # PIL turns counter-clockwise, y down
            x, y = point[0] - centre_x, point[1] - centre_y
            return (centre_x + x * cos + y * sin, centre_y - x * sin + y * cos)

        corners, centres = [turn(p) for p in corners], [turn(p) for p in centres]
    pixels = np.asarray(image, dtype=np.float32)
    if noise:
        pixels = pixels + np.random.default_rng(0).normal(0, noise, pixels.shape)
    grey = np.clip(pixels, 0, 255).astype(np.uint8)
    return grey, OcrBox(tuple(corners), text.replace(" ", ""), 0.99, tuple(centres))


@needs_font
@pytest.mark.parametrize("angle", [0.0, 2.5, -3.0])
def test_dropped_word_spaces_come_back_from_the_gaps_on_the_page(angle: float) -> None:
    text = "the default configuration works offline for 30 days"
    grey, box = drawn_line(text, angle=angle, noise=8.0)
    assert box.text == "thedefaultconfigurationworksofflinefor30days"
    assert respace(box, grey) == text


@needs_font
def test_no_space_inside_words_urls_and_versions_but_after_a_sentence_end() -> None:
    grey, box = drawn_line("see wiki.debian.org/DebianEdu v1.2.3 now.Then go")
    # "now.Then": no gap on the page, so no space either; the rest has no space to give back inside its tokens
    assert respace(box, grey) == "see wiki.debian.org/DebianEdu v1.2.3 now.Then go"
    grey, box = drawn_line("it works. Then restart it")
    assert respace(box, grey) == "it works. Then restart it"


@needs_font
def test_chinese_text_and_boxes_without_character_positions_are_left_as_read() -> None:
    grey, box = drawn_line("主机名 tjener 是挪威语")
    assert respace(box, grey) == "主机名tjener是挪威语"  # no space is put next to CJK (no token changes)
    unknown = OcrBox(box.corners, "dpkg -s package", 0.9)  # no character centres: nothing to measure
    assert respace(unknown, grey) == "dpkg -s package"
    mismatched = OcrBox(box.corners, "ab", 0.9, box.char_centres)  # positions that do not spell the text
    assert respace(mismatched, grey) == "ab"


def box_at(left: float, top: float, width: float, height: float, text: str, degrees: float = 0.0,
           origin: tuple[float, float] = (0.0, 0.0)) -> OcrBox:
    """An axis-aligned box turned by ``degrees`` (clockwise on the page, y down) around ``origin``."""
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))

    def turn(x: float, y: float) -> tuple[float, float]:
        x, y = x - origin[0], y - origin[1]
        return (origin[0] + x * cos - y * sin, origin[1] + x * sin + y * cos)

    corners = (turn(left, top), turn(left + width, top), turn(left + width, top + height), turn(left, top + height))
    return OcrBox(corners, text, 0.99)


def test_reading_order_of_a_table_on_a_page_tilted_by_three_degrees() -> None:
    """Three rows of two cells 1,200 px apart: at 3° the right cell sits 63 px (two rows) lower than its row."""
    rows = [("服务", "DNS"), ("打印", "CUPS"), ("备份", "sl-backup")]
    boxes = []
    for number, (left_text, right_text) in enumerate(rows):
        top = 100 + number * 40
        boxes.append(box_at(100, top, 300, 30, left_text + "说明文字很长的一格", degrees=3.0))
        boxes.append(box_at(1300, top, 200, 30, right_text, degrees=3.0))
    skew = skew_degrees(boxes)
    assert skew == pytest.approx(3.0, abs=0.01)
    lines = reading_order(boxes, skew)
    assert [[box.text[:2] for box in line] for line in lines] == [["服务", "DN"], ["打印", "CU"], ["备份", "sl"]]
    unturned = reading_order(boxes, 0.0)  # the geometry without the page's skew mixes the rows up
    assert [[box.text[:2] for box in line] for line in unturned] != [["服务", "DN"], ["打印", "CU"], ["备份", "sl"]]


def test_skew_ignores_short_boxes_and_is_zero_without_long_ones() -> None:
    assert skew_degrees([box_at(0, 0, 40, 30, "3/92", degrees=20.0)]) == 0.0
    boxes = [box_at(0, 0, 900, 30, "a long line", degrees=-1.5), box_at(0, 50, 40, 30, "7", degrees=30.0)]
    assert skew_degrees(boxes) == pytest.approx(-1.5, abs=0.01)


def page_lines(specs: list[tuple[float, float, str]], degrees: float = 0.0) -> tuple[list[list[OcrBox]], list[str]]:
    """One box per line: (left, right, text), 40 px apart, 30 px high."""
    lines = [[box_at(left, 100 + index * 40, right - left, 30, text, degrees, origin=(800.0, 400.0))]
             for index, (left, right, text) in enumerate(specs)]
    return lines, [text for _, _, text in specs]


@pytest.mark.parametrize("degrees", [0.0, 2.0])
def test_wrapped_lines_become_paragraphs_and_short_lines_end_them(degrees: float) -> None:
    specs = [
        (100, 260, "1.2 需要的开发工具"),  # a heading: short
        (100, 1500, "在开始之前，请确认你是否已经正确安装了开发所需要的工具集。注意这些软件包中没有任何一个会被标"),
        (100, 1498, "记为必需的。以下这些软件包已经随标准的安装过程进入了系统，所以你可能不需要再动手安装它们以"),
        (100, 700, "及任何附加的依赖软件包。"),  # the paragraph's last line ends short
        (100, 1490, "It is possible to save energy and money by automatically turning client machines off at"),
        (100, 1502, "night and back on in the morning. The package will try to turn off the machine every self-"),
        (100, 900, "advertising hour on the hour from 16:00 in the afternoon."),
    ]
    lines, texts = page_lines(specs, degrees)
    assert paragraphs(lines, texts, skew_degrees([box for line in lines for box in line])) == [
        "1.2 需要的开发工具",
        texts[1] + texts[2] + texts[3],
        texts[4] + " " + texts[5] + texts[6],
    ]


def test_lines_stay_lines_without_a_margin_a_wide_gap_or_several_boxes() -> None:
    two = page_lines([(100, 1500, "域账号密码每九十天修改一次并且不能与上次相同"), (100, 900, "VPN server")])
    assert paragraphs(*two) == two[1]  # two lines give no margin to trust
    specs = [(100, 1500, "第一段第一行一直写到右边"), (100, 1500, "第一段第二行也写到右边"),
             (100, 1500, "第一段第三行还是写到右边")]
    lines, texts = page_lines(specs)
    far = [box_at(100, 400, 1400, 30, "隔了很远的下一段")]  # 4 line pitches below: a new block
    assert paragraphs(lines + [far], texts + ["隔了很远的下一段"]) == ["".join(texts), "隔了很远的下一段"]
    row = [box_at(100, 220, 600, 30, "服务描述"), box_at(900, 220, 600, 30, "DNS 服务名称")]  # a table row
    assert paragraphs(lines[:2] + [row], texts[:2] + ["服务描述 DNS 服务名称"]) == [
        texts[0] + texts[1], "服务描述 DNS 服务名称"]


def test_join_lines_spaces_words_not_cjk_and_keeps_a_hyphen() -> None:
    assert join_lines("所需", "的工具链") == "所需的工具链"
    assert join_lines("turn off the", "machine") == "turn off the machine"
    assert join_lines("self-", "advertising") == "self-advertising"
    assert join_lines("Debian", "软件包") == "Debian软件包"
    assert join_lines("version 2-", "3 only") == "version 2- 3 only"  # not a word cut by a hyphen


def test_rapidocr_boxes_keep_character_centres_only_where_they_spell_the_text() -> None:
    from rag.ingest.parsers.ocr import rapidocr_boxes

    corners = [[10.0, 10.0], [50.0, 10.0], [50.0, 30.0], [10.0, 30.0]]
    cells = [[[10, 10], [20, 10], [20, 30], [10, 30]], [[30, 10], [40, 10], [40, 30], [30, 30]]]
    good, short = rapidocr_boxes([[corners, "ab", 0.9, cells, ["a", "b"], [0.9, 0.9]],
                                  [corners, "abc", 0.8, cells, ["a", "b"], [0.9, 0.9]]])
    assert good.char_centres == ((15.0, 20.0), (35.0, 20.0)) and good.text == "ab" and good.score == 0.9
    assert short.char_centres == () and short.text == "abc"  # positions that do not match are not used
    (plain,) = rapidocr_boxes([[corners, "ab", 0.9]])  # the result without return_word_box
    assert plain.char_centres == ()


def test_a_line_below_the_bar_is_read_again_turned_and_kept_only_if_better(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wiring of ocr_image with a stand-in engine: the page is read without the direction classifier and with
    character positions; a low box is read once more, upside down, and the better reading counts."""
    from rag.core.config import LoadConfig
    from rag.ingest.parsers import ocr

    calls: list[dict[str, object]] = []
    page_result = [[[[10, 10], [300, 10], [300, 40], [10, 40]], "清晰的一行", 0.98],
                   [[[10, 60], [300, 60], [300, 90], [10, 90]], "", 0.0],  # the classifier's casualty
                   [[[10, 110], [300, 110], [300, 140], [10, 140]], "噪点", 0.2]]
    rereads = iter([[["倒过来也能读", 0.95]], [["更差", 0.1]]])

    def engine(image: object, **options: object) -> tuple[object, object]:
        calls.append(options)
        return (page_result, None) if options.get("use_det", True) else (next(rereads), None)

    monkeypatch.setattr(ocr, "ocr_engine", lambda: engine)
    result = ocr.ocr_image(np.full((160, 320, 3), 255, dtype=np.uint8), LoadConfig())
    assert calls[0] == {"use_cls": False, "return_word_box": True, "text_score": 0.0}
    assert [call.get("use_det") for call in calls[1:]] == [False, False]  # the two low boxes, read again
    assert result.text == "清晰的一行\n倒过来也能读" and result.dropped_lines == 1  # "噪点" stays below the bar
