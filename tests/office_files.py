"""Office files, images and scanned PDFs generated at test time (python-pptx, openpyxl, Pillow with the CJK font).

Each builder returns bytes and states which phrases the parsed file must yield, so tests can search for them.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

CJK_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")  # Debian fonts-wqy-microhei

# one phrase per slide / sheet, each findable only in its own place
SLIDE_PHRASES = ("备份策略每天凌晨两点执行", "VPN 网关端口 443", "演讲者备注磁带保存三十天")
SHEET_PHRASES = ("服务器机房在三楼东侧", "打印机耗材找行政部")
CSV_PHRASE = "会议室预订请用企业微信"
XXE_DOCTYPE = '<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
LAUGHS_DOCTYPE = "<!DOCTYPE r [" + "".join(
    [' <!ENTITY lol0 "lol">'] + [f' <!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
) + "]>"


def make_pptx(marker: str = "") -> bytes:
    """Three slides: title + body text, a title + a table, and a slide whose phrase is only in the speaker notes."""
    import pptx
    from pptx.util import Inches

    deck = pptx.Presentation()
    first = deck.slides.add_slide(deck.slide_layouts[1])
    first.shapes.title.text = "运维手册"
    first.placeholders[1].text = f"{SLIDE_PHRASES[0]}。{marker}"
    second = deck.slides.add_slide(deck.slide_layouts[5])
    second.shapes.title.text = "网络"
    table = second.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(6), Inches(1)).table
    for (row, column), text in {(0, 0): "服务", (0, 1): "说明", (1, 0): "VPN", (1, 1): SLIDE_PHRASES[1]}.items():
        table.cell(row, column).text = text
    third = deck.slides.add_slide(deck.slide_layouts[5])
    third.shapes.title.text = "存档"
    third.notes_slide.notes_text_frame.text = SLIDE_PHRASES[2]
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def make_xlsx(rows: int = 60, marker: str = "") -> bytes:
    """Two sheets: ``资产`` with a header and ``rows`` data rows (the phrase in the last one), ``说明`` with one row."""
    import openpyxl

    book = openpyxl.Workbook()
    assets = book.active
    assets.title = "资产"
    assets.append(["编号", "位置", "负责人"])
    for number in range(1, rows):
        assets.append([number, f"机柜 {number} 号", f"工程师{number}"])
    assets.append([rows, SHEET_PHRASES[0], "张三"])
    notes = book.create_sheet("说明")
    notes.append(["问题", "回答"])
    notes.append(["耗材", SHEET_PHRASES[1] + marker])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def rewrite_zip_member(data: bytes, member: str, rewrite: dict[str, str]) -> bytes:
    """A copy of the zip ``data`` with each key replaced by its value in ``member`` (the first match only)."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            body = source.read(info.filename)
            if info.filename == member:
                text = body.decode("utf-8")
                for old, new in rewrite.items():
                    assert old in text, (member, old)
                    text = text.replace(old, new, 1)
                body = text.encode("utf-8")
            target.writestr(info, body)
    return out.getvalue()


def with_doctype(data: bytes, member: str, doctype: str, entity_ref: str) -> bytes:
    """``data`` (a pptx/xlsx) with ``doctype`` declared in ``member`` and the text ``MARKER`` replaced by ``entity_ref``."""
    text = zipfile.ZipFile(io.BytesIO(data)).read(member).decode("utf-8")
    declaration = re.match(r"<\?xml[^>]*\?>\s*", text)
    head = declaration.group(0) if declaration else ""
    start = head or text[:20]  # after the XML declaration, else before the root element
    return rewrite_zip_member(data, member, {start: (head + doctype) if head else (doctype + start),
                                             "MARKER": entity_ref})


def zip_bomb_like(data: bytes, member: str, unpacked_mb: int = 120) -> bytes:
    """``data`` plus a member of ``unpacked_mb`` MiB of zeros that deflates ~1000x (a zip bomb in Office clothes)."""
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr(member, b"\0" * (unpacked_mb << 20))
    return out.getvalue()


def render_text_image(lines: list[str], dpi: int = 300, font_pt: float = 12, angle: float = 0.0, noise: float = 0.0,
                      seed: int = 0) -> object:
    """A white page with ``lines`` in the CJK font at ``font_pt`` points for ``dpi``; rotated by ``angle`` degrees,
    with Gaussian noise of standard deviation ``noise`` (0-255 grey levels). Returns a PIL RGB image."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    size_px = round(font_pt * dpi / 72)
    font = ImageFont.truetype(str(CJK_FONT), size_px)
    margin = size_px * 2
    width = margin * 2 + max(round(font.getlength(line)) for line in lines)
    height = margin * 2 + round(len(lines) * size_px * 1.8)
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((margin, margin + round(index * size_px * 1.8)), line, font=font, fill=0)
    if angle:
        image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
    if noise:
        rng = np.random.default_rng(seed)
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, noise, (image.height, image.width))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.convert("RGB")


def image_pdf(images: list[object], dpi: int = 300) -> bytes:
    """An image-only PDF (no text layer), one page per image, as a scanner writes it."""
    out = io.BytesIO()
    first, *rest = images
    first.save(out, "PDF", resolution=dpi, save_all=True, append_images=rest)  # type: ignore[attr-defined]
    return out.getvalue()


def pdf_with_picture(pdf: bytes, picture: object, page_index: int = 0) -> bytes:
    """``pdf`` with ``picture`` (a PIL image) drawn on one page under its text, the way a screenshot sits in a report."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(pdf)
    page = document[page_index]
    image = pdfium.PdfImage.new(document)
    image.set_bitmap(pdfium.PdfBitmap.from_pil(picture))
    width_pt = page.get_width() * 0.8
    height_pt = width_pt * picture.height / picture.width  # type: ignore[attr-defined]
    image.set_matrix(pdfium.PdfMatrix().scale(width_pt, height_pt).translate(page.get_width() * 0.1, 50))
    page.insert_obj(image)
    page.gen_content()
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_xls() -> bytes:
    """An Excel 97-2003 .xls (xlwt) with a header, a date cell and a whole-number float."""
    import datetime

    import xlwt

    book = xlwt.Workbook(encoding="utf-8")
    sheet = book.add_sheet("值班")
    for column, text in enumerate(["日期", "值班人", "工单数"]):
        sheet.write(0, column, text)
    sheet.write(1, 0, datetime.date(2026, 3, 1), xlwt.easyxf(num_format_str="YYYY-MM-DD"))
    sheet.write(1, 1, "王五负责机房巡检")
    sheet.write(1, 2, 12.0)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
