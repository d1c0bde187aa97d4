"""Regenerate the binary sample documents in knowledge/ from the text in this file.

    .venv/bin/python scripts/make_sample_knowledge.py [--out knowledge] [--skip-chromium]

Writes:
    员工手册.docx            python-docx; Heading 1/2 styles and one table (zip entries get a fixed timestamp)
    product_manual_en.pdf    a PDF written by hand with the standard Helvetica fonts (no dependency at all)
    网络故障排查.pdf          an HTML page printed by headless Chromium with a CJK font
                             (Debian: apt-get install -y chromium fonts-wqy-microhei); skipped with a message
                             when Chromium is missing, keeping the existing file

All three are deterministic: metadata dates are fixed, and the document id Chromium writes is replaced by a hash of
the source text, so re-running on the same machine gives the same bytes. (The Chinese PDF embeds a subset of the
installed CJK font, so another font version gives other bytes with the same text.)
The text files in knowledge/ (.md, .html, .txt) are written by hand and are not touched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXED_DATE = dt.datetime(2026, 11, 1, 0, 0, 0)
PDF_DATE = "D:20261101000000Z"
PDF_DATE_LOCAL = PDF_DATE[:-1]  # without the time zone

# ---------------------------------------------------------------------------------------------------------------
# 员工手册.docx
# ---------------------------------------------------------------------------------------------------------------

# (kind, text): title | h1 | h2 | p | li (numbered list item) | table (rows, first row = header)
HANDBOOK: list[tuple[str, object]] = [
    ("title", "星河科技员工手册"),
    ("p", "本手册适用于星河科技有限公司全体正式员工，说明考勤、休假、费用报销和出差的基本规定。"
          "星河科技是为演示知识库问答而虚构的公司，手册中的规定和数字均为示例。"),
    ("h1", "第一章 考勤管理"),
    ("h2", "1.1 工作时间"),
    ("p", "公司标准工作时间为周一至周五 9:00 至 18:00，午休时间为 12:00 至 13:00。"
          "公司实行弹性上班制度，最晚到岗时间为 9:30，到岗时间推迟多少，下班时间相应顺延多少。"),
    ("h2", "1.2 打卡"),
    ("p", "员工每天上班和下班各打卡一次，使用企业微信中的“星河考勤”应用打卡。"
          "因外出办事等原因忘记打卡的，每月可以在 OA 系统中申请补卡 3 次，超过 3 次的按缺勤半天处理。"),
    ("h2", "1.3 迟到与旷工"),
    ("p", "晚于 9:30 到岗且在 30 分钟以内的，记为迟到一次。超过 30 分钟未到岗又没有请假的，按旷工半天处理。"
          "每月迟到累计 3 次以上的，由部门负责人进行提醒谈话。"),
    ("h1", "第二章 休假"),
    ("h2", "2.1 年假天数"),
    ("p", "员工累计工作满 1 年后享受带薪年假。年假天数按累计工龄计算，累计工龄包括在其他单位的工作年限，具体如下表："),
    ("table", [
        ["累计工龄", "每年年假天数"],
        ["满 1 年不满 10 年", "5 天"],
        ["满 10 年不满 20 年", "10 天"],
        ["满 20 年及以上", "15 天"],
    ]),
    ("p", "在上表之外，员工在星河科技连续工作每满 3 年，另外增加 1 天福利年假，福利年假最多增加 3 天。"),
    ("h2", "2.2 年假的申请与结转"),
    ("p", "休年假需要至少提前 3 个工作日在 OA 系统中提交申请，经部门负责人批准后生效。"
          "当年没有休完的年假可以结转到次年 3 月 31 日前使用，逾期未使用的自动作废。"),
    ("h1", "第三章 费用报销"),
    ("h2", "3.1 报销流程"),
    ("li", "在 OA 系统中填写报销单，并上传发票的电子版或照片。"),
    ("li", "报销单按审批权限逐级审批。"),
    ("li", "审批通过后，将纸质发票粘贴在报销单打印件上，交到财务部。"),
    ("li", "财务部审核无误后，于每周四统一把报销款打入员工的工资卡。"),
    ("h2", "3.2 审批权限"),
    ("p", "单笔金额在 1000 元以下的，由部门经理审批；1000 元至 10000 元的，还需要财务经理审批；"
          "超过 10000 元的，还需要总经理审批。"),
    ("h2", "3.3 时限与发票要求"),
    ("p", "报销单应在费用发生后 60 天内提交，逾期不予报销。发票抬头必须为“星河科技有限公司”，并填写公司的纳税人识别号；"
          "电子发票请上传 PDF 原件，不接受截图。"),
    ("h1", "第四章 出差"),
    ("h2", "4.1 出差申请"),
    ("p", "出差前须在 OA 系统中提交出差申请，写明出差地点、天数和事由，经部门负责人批准。未经批准的出差，相关费用不予报销。"),
    ("h2", "4.2 交通标准"),
    ("p", "城际交通优先乘坐高铁二等座；高铁单程超过 5 小时的，可以乘坐飞机经济舱。"
          "出差期间的市内交通费凭发票或打车行程单实报实销。"),
    ("h2", "4.3 住宿与补贴"),
    ("p", "住宿费按城市分级报销：北京、上海、广州、深圳每晚不超过 600 元，省会城市每晚不超过 450 元，"
          "其他城市每晚不超过 350 元。超出标准的部分由员工自行承担。"),
    ("p", "出差补贴为每天 100 元，包含餐费，按实际出差天数计算，随报销款一起发放。"),
    ("h1", "第五章 其他"),
    ("p", "电脑、网络、邮箱、VPN 和软件安装等 IT 问题，请查阅《IT 服务台常见问题》或拨打 IT 服务台分机 8000。"
          "本手册由人力资源部负责解释。"),
]


def make_handbook(path: Path) -> None:
    """Write the handbook with python-docx, then re-zip it with fixed timestamps so the bytes are reproducible."""
    import docx
    from docx.oxml.ns import qn
    from docx.shared import Pt

    document = docx.Document()
    normal = document.styles["Normal"]
    normal.font.size = Pt(11)
    normal.element.get_or_add_rPr().get_or_add_rFonts().set(qn("w:eastAsia"), "宋体")

    for kind, content in HANDBOOK:
        if kind == "title":
            document.add_heading(str(content), level=0)
        elif kind == "h1":
            document.add_heading(str(content), level=1)
        elif kind == "h2":
            document.add_heading(str(content), level=2)
        elif kind == "p":
            document.add_paragraph(str(content))
        elif kind == "li":
            document.add_paragraph(str(content), style="List Number")
        elif kind == "table":
            rows = content
            assert isinstance(rows, list)
            table = document.add_table(rows=len(rows), cols=len(rows[0]))
            table.style = "Table Grid"
            for r, row in enumerate(rows):
                for c, text in enumerate(row):
                    cell = table.cell(r, c)
                    cell.text = text
                    if r == 0:
                        for run in cell.paragraphs[0].runs:
                            run.bold = True
        else:
            raise ValueError(f"unknown handbook block kind {kind!r}")

    props = document.core_properties
    props.title = "星河科技员工手册"
    props.subject = "示例文档（虚构公司）"
    props.author = "星河科技人力资源部"
    props.last_modified_by = "make_sample_knowledge.py"
    props.comments = "Generated by scripts/make_sample_knowledge.py"
    props.revision = 1
    props.created = FIXED_DATE
    props.modified = FIXED_DATE
    props.last_printed = FIXED_DATE

    raw = io.BytesIO()
    document.save(raw)
    path.write_bytes(_rezip_fixed_time(raw.getvalue()))


def _rezip_fixed_time(data: bytes) -> bytes:
    """Copy a zip with every entry's timestamp and attributes fixed (python-docx stamps the current time)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            info = zipfile.ZipInfo(item.filename, date_time=FIXED_DATE.timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            dst.writestr(info, src.read(item.filename), compresslevel=9)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# product_manual_en.pdf (hand-written PDF, standard 14 fonts)
# ---------------------------------------------------------------------------------------------------------------

MANUAL_TITLE = "Aurora X2 Smart Thermostat - User Manual"
STEP_SECTIONS = ("3. Installation", "4. Wi-Fi pairing")  # their list items are numbered steps, others bullets

# (kind, text): title | h | p | li | table (rows; first row = header) | pagebreak
MANUAL: list[tuple[str, object]] = [
    ("title", "Aurora X2 Smart Thermostat"),
    ("sub", "User Manual - Model AX2-100 - Firmware 2.x"),
    ("p", "Aurora X2 is a fictional product described for the sample knowledge base of this project. The company, "
          "the device and every number in this manual are made up for demonstration."),
    ("h", "1. What is in the box"),
    ("li", "Aurora X2 thermostat display unit"),
    ("li", "Wall base plate with a built-in spirit level"),
    ("li", "Two wall screws, two wall anchors and a set of wire labels"),
    ("li", "Quick start card"),
    ("h", "2. Before you install"),
    ("p", "Aurora X2 works with most 24 V heating and cooling systems, including gas furnaces, boilers and heat pumps. "
          "It does not work with high-voltage (120 V or 230 V) electric baseboard heaters. The thermostat needs a "
          "common wire (C-wire) for continuous power; if your system has no C-wire, install the Aurora power "
          "adapter that is sold separately."),
    ("p", "Warning: always switch off the power to your heating and cooling system at the circuit breaker before "
          "you remove the old thermostat. Working on live wires can damage the system and cause injury."),
    ("h", "3. Installation"),
    ("li", "Switch off the power at the circuit breaker and confirm that the old thermostat screen is blank."),
    ("li", "Remove the old thermostat cover and take a photo of the wiring for reference."),
    ("li", "Attach the supplied labels to each wire (R, C, W, Y, G, O/B) before you disconnect it."),
    ("li", "Mount the base plate with the two screws; use the built-in level to keep it straight."),
    ("li", "Insert each wire into the terminal with the same letter until the release tab clicks."),
    ("li", "Press the display unit onto the base plate, then switch the power back on at the breaker."),
    ("p", "The screen lights up within 30 seconds and shows the setup wizard. Choose your language, your system "
          "type and the temperature unit (Celsius or Fahrenheit)."),
    ("h", "4. Wi-Fi pairing"),
    ("p", "Aurora X2 connects to 2.4 GHz Wi-Fi networks only; 5 GHz networks are not supported. Keep your phone "
          "near the thermostat during pairing."),
    ("li", "Install the Aurora Home app on your phone and sign in."),
    ("li", "Tap Add device and choose Aurora X2."),
    ("li", "On the thermostat, press and hold the dial for 5 seconds until the ring light blinks blue."),
    ("li", "The app finds the thermostat hotspot named AuroraX2-XXXX (the last four characters of its serial number)."),
    ("li", "Select your home Wi-Fi network in the app and enter its password."),
    ("p", "When pairing succeeds, the ring light turns solid green for 3 seconds and the thermostat appears in the "
          "app. If pairing fails, the thermostat shows error E3 and returns to its previous state after 2 minutes."),
    ("pagebreak", ""),
    ("h", "5. Restart and factory reset"),
    ("p", "Restart: press and hold the dial for 10 seconds until the screen turns off, then release it. The "
          "thermostat restarts and keeps all your settings and schedules."),
    ("p", "Factory reset: press and hold the dial for 20 seconds until the ring light flashes red three times, "
          "then release it. A factory reset erases the Wi-Fi settings, schedules and account link; the setup "
          "wizard starts again. You can also start a factory reset from Settings > Device > Reset in the app."),
    ("h", "6. Error codes"),
    ("p", "When the thermostat detects a problem, it shows an error code on the screen and sends a notification to "
          "the Aurora Home app."),
    ("table", [
        ["Code", "Meaning", "What to do"],
        ["E1", "Temperature sensor fault", "Restart the thermostat. If E1 returns, contact Aurora support."],
        ["E2", "Low supply voltage", "Check that the C-wire is connected; the supply must be at least 20 V AC."],
        ["E3", "Wi-Fi connection lost", "Check your router and use a 2.4 GHz network, then pair again."],
        ["E4", "No response from HVAC system", "Temperature did not change after 30 minutes of heating or "
                                               "cooling. Check the furnace and its filter."],
        ["E5", "Firmware update failed", "Keep the thermostat online; the update is retried automatically "
                                         "within 24 hours."],
    ]),
    ("pagebreak", ""),
    ("h", "7. Schedules and Eco mode"),
    ("p", "A schedule has up to four periods a day (Wake, Leave, Return and Sleep), each with its own target "
          "temperature. Create or change schedules in the Aurora Home app; the thermostat keeps running the last "
          "schedule it received even when Wi-Fi is down."),
    ("p", "Eco mode saves energy while nobody is home. When every phone linked to the home has been more than "
          "500 metres away for 15 minutes, the thermostat lowers the heating target by 3 degrees Celsius (or raises "
          "the cooling target by 3 degrees Celsius). It returns to the schedule as soon as the first phone comes back."),
    ("p", "Turning the dial by hand overrides the schedule until the next scheduled period begins."),
    ("h", "8. Specifications"),
    ("li", "Display: 3.5-inch colour touch screen with a rotating dial"),
    ("li", "Set-point range: 5 to 35 degrees Celsius (41 to 95 degrees Fahrenheit)"),
    ("li", "Temperature accuracy: plus or minus 0.5 degrees Celsius"),
    ("li", "Power: 24 V AC through the C-wire"),
    ("li", "Wireless: Wi-Fi 802.11 b/g/n at 2.4 GHz, Bluetooth Low Energy for setup"),
    ("h", "9. Warranty and support"),
    ("p", "Aurora X2 comes with a 2-year limited warranty from the date of purchase. Keep your receipt. Before you "
          "contact support, note the error code on the screen and the serial number printed on the back of the "
          "display unit."),
]

# Advance widths (1/1000 em) of Helvetica for the printable ASCII range, from the standard AFM metrics; used only to
# wrap lines, so bold text (slightly wider) uses the same table with a margin.
_HELVETICA_WIDTHS = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,  # space ! " # $ % & ' ( ) * + , - . /
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,  # 0-9 : ; < = > ?
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,  # @ A-O
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,  # P-Z [ \ ] ^ _
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,  # ` a-o
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,  # p-z { | } ~
]

PAGE_W, PAGE_H = 595, 842  # A4 in points
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 64, 64, 72


def _text_width(text: str, size: float) -> float:
    total = 0
    for ch in text:
        code = ord(ch)
        total += _HELVETICA_WIDTHS[code - 32] if 32 <= code <= 126 else 600
    return total * size / 1000


def _wrap(text: str, size: float, width: float) -> list[str]:
    """Greedy word wrap measured with the Helvetica metrics."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if current and _text_width(candidate, size) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def _pdf_string(text: str) -> str:
    if any(ord(ch) > 126 or ord(ch) < 32 for ch in text):
        raise ValueError(f"manual text must be printable ASCII: {text!r}")
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


class _PageWriter:
    """Lays out lines top to bottom and collects one content stream per page."""

    def __init__(self) -> None:
        self.pages: list[list[str]] = [[]]
        self.y: float = PAGE_H - MARGIN_TOP

    def new_page(self) -> None:
        self.pages.append([])
        self.y = PAGE_H - MARGIN_TOP

    def need(self, height: float) -> None:
        if self.y - height < MARGIN_BOTTOM:
            self.new_page()

    def text(self, x: float, y: float, text: str, font: str, size: float) -> None:
        # One text object per line, absolute position: extraction tools read it back line by line.
        self.pages[-1].append(f"BT /{font} {size:g} Tf 1 0 0 1 {x:.2f} {y:.2f} Tm {_pdf_string(text)} Tj ET")

    def rule(self, x0: float, x1: float, y: float) -> None:
        self.pages[-1].append(f"0.6 G 0.5 w {x0:.2f} {y:.2f} m {x1:.2f} {y:.2f} l S 0 G")

    def block(self, text: str, font: str, size: float, leading: float, indent: float = 0.0,
              bullet: str = "", space_after: float = 4.0) -> None:
        lines = _wrap(text, size, PAGE_W - 2 * MARGIN_X - indent)
        for i, line in enumerate(lines):
            self.need(leading)
            self.y -= leading
            if i == 0 and bullet:
                self.text(MARGIN_X + indent - 14, self.y, bullet, font, size)
            self.text(MARGIN_X + indent, self.y, line, font, size)
        self.y -= space_after

    def table(self, rows: list[list[str]], col_widths: list[float], size: float, leading: float) -> None:
        x_positions = [MARGIN_X + sum(col_widths[:i]) for i in range(len(col_widths))]
        right = MARGIN_X + sum(col_widths)
        for r, row in enumerate(rows):
            font = "F2" if r == 0 else "F1"
            cells = [_wrap(cell, size, col_widths[c] - 8) for c, cell in enumerate(row)]
            height = max(len(c) for c in cells) * leading + 6
            self.need(height)
            if r == 0:
                self.rule(MARGIN_X, right, self.y)
            top = self.y
            for c, lines in enumerate(cells):
                for i, line in enumerate(lines):
                    self.text(x_positions[c] + 4, top - leading * (i + 1), line, font, size)
            self.y = top - height
            self.rule(MARGIN_X, right, self.y)
        self.y -= 8


def make_manual(path: Path) -> None:
    writer = _PageWriter()
    section = ""
    item_number = 0
    for kind, content in MANUAL:
        text = str(content)
        if kind == "title":
            writer.block(text, "F2", 22, 28, space_after=2)
        elif kind == "sub":
            writer.block(text, "F1", 11, 16, space_after=10)
        elif kind == "h":
            writer.need(40)  # keep a heading with at least two lines of what follows
            writer.y -= 6
            writer.block(text, "F2", 13.5, 18, space_after=2)
            section, item_number = text, 0
        elif kind == "p":
            writer.block(text, "F1", 10.5, 14, space_after=6)
        elif kind == "li":
            item_number += 1
            bullet = f"{item_number}." if section in STEP_SECTIONS else "-"
            writer.block(text, "F1", 10.5, 14, indent=18, bullet=bullet, space_after=2)
        elif kind == "table":
            assert isinstance(content, list)
            writer.table(content, [44, 176, PAGE_W - 2 * MARGIN_X - 220], 10, 13)
        elif kind == "pagebreak":
            writer.new_page()
        else:
            raise ValueError(f"unknown manual block kind {kind!r}")

    pages = writer.pages
    for number, page in enumerate(pages, start=1):
        footer = f"Aurora X2 User Manual - page {number} of {len(pages)}"
        page.append(f"BT /F1 9 Tf 1 0 0 1 {MARGIN_X} 40 Tm {_pdf_string(footer)} Tj ET")
    path.write_bytes(_build_pdf(["\n".join(p) + "\n" for p in pages]))


def _build_pdf(streams: list[str]) -> bytes:
    """Assemble catalog, page tree, two standard fonts, info and one content stream per page; exact xref offsets."""
    n_pages = len(streams)
    # Object numbers: 1 catalog, 2 pages, 3 Helvetica, 4 Helvetica-Bold, 5 info, then (page, content) pairs.
    page_ids = [6 + 2 * i for i in range(n_pages)]
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R /Lang (en-US) >>",
        2: f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] /Count {n_pages} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        4: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
        5: (f"<< /Title {_pdf_string(MANUAL_TITLE)} /Author (Aurora Devices - fictional) "
            f"/Producer (scripts/make_sample_knowledge.py) /CreationDate ({PDF_DATE}) /ModDate ({PDF_DATE}) >>").encode(),
    }
    for page_id, stream in zip(page_ids, streams, strict=True):
        data = stream.encode("ascii")
        objects[page_id] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_W} {PAGE_H}] "
                            f"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents {page_id + 1} 0 R >>").encode()
        objects[page_id + 1] = f"<< /Length {len(data)} >>\nstream\n".encode() + data + b"endstream"

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += f"{number} 0 obj\n".encode() + objects[number] + b"\nendobj\n"
    xref_at = len(out)
    size = max(objects) + 1
    out += f"xref\n0 {size}\n0000000000 65535 f \n".encode()
    for number in range(1, size):
        out += f"{offsets[number]:010d} 00000 n \n".encode()
    doc_id = hashlib.md5("".join(streams).encode()).hexdigest()
    out += (f"trailer\n<< /Size {size} /Root 1 0 R /Info 5 0 R /ID [<{doc_id}> <{doc_id}>] >>\n"
            f"startxref\n{xref_at}\n%%EOF\n").encode()
    return bytes(out)


# ---------------------------------------------------------------------------------------------------------------
# 网络故障排查.pdf (HTML printed by headless Chromium)
# ---------------------------------------------------------------------------------------------------------------

NETWORK_HTML = """<!DOCTYPE html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<title>星河科技办公网络故障排查手册</title>
<style>
  @page { size: A4; margin: 18mm 20mm; }
  body { font-family: "WenQuanYi Micro Hei", "Noto Sans CJK SC", sans-serif; font-size: 10.5pt; line-height: 1.6; }
  /* The CJK font has no bold face: synthetic bold makes Chromium draw glyphs as paths (Type 3 fonts, ~250 KB),
     so headings are set apart by size and colour instead. */
  h1, h2, h3, th { font-weight: normal; color: #1a3d6d; }
  h1 { font-size: 18pt; margin: 0 0 6pt 0; }
  h2 { font-size: 13pt; margin: 12pt 0 4pt 0; border-bottom: 0.6pt solid #1a3d6d; }
  h3 { font-size: 11pt; margin: 8pt 0 2pt 0; }
  p, li { margin: 2pt 0; }
  code { font-family: inherit; color: #7a2e00; }
  th { background: #e8eef6; }
  table { border-collapse: collapse; width: 100%; margin-top: 6pt; }
  th, td { border: 0.6pt solid #666; padding: 3pt 5pt; vertical-align: top; text-align: left; }
  .page2 { break-before: page; }
</style>
</head>
<body>
<h1>星河科技办公网络故障排查手册</h1>
<p>本手册帮助员工在联系 IT 服务台之前自行排查常见的办公网络问题。星河科技是为演示知识库问答而虚构的公司，文中的地址和规定均为示例。</p>

<h2>一、排查前先记录现象</h2>
<p>请先记下：故障开始的时间、所在楼层和座位、使用的是有线网络还是无线网络、是只有自己不能上网还是周围同事都不能上网。如果整层楼的同事都无法上网，请直接报障，不必自行排查。</p>

<h2>二、有线网络排查步骤</h2>
<h3>1. 检查网线和指示灯</h3>
<p>电脑网口旁的绿色指示灯常亮表示物理连接正常。如果指示灯不亮，请重新插拔网线，或者换一根网线、换一个墙面网口再试。</p>
<h3>2. 查看 IP 地址</h3>
<p>在命令提示符中运行 <code>ipconfig /all</code>。办公网的地址段是 10.8.0.0/16，正常获得的地址以 10.8 开头。如果地址以 169.254 开头，说明电脑没有从 DHCP 服务器获得地址，请先运行 <code>ipconfig /release</code>，再运行 <code>ipconfig /renew</code> 重新获取。</p>
<h3>3. 测试网关</h3>
<p>运行 <code>ping 10.8.0.1</code>。办公网的默认网关是 10.8.0.1。如果网关不通而 IP 地址正常，多半是交换机或网口故障，请报障。</p>
<h3>4. 测试域名解析</h3>
<p>运行 <code>nslookup oa.xinghe.local</code>。公司内部 DNS 服务器为 10.8.0.53 和 10.8.0.54。能 ping 通网关但网址打不开时，通常是 DNS 问题，可以运行 <code>ipconfig /flushdns</code> 清除 DNS 缓存后再试。</p>

<h2>三、无线网络排查步骤</h2>
<p>员工无线网络 XingHe-Corp 同时提供 2.4 GHz 和 5 GHz 两个频段，电脑会优先连接 5 GHz。请确认电脑连接的是 XingHe-Corp 而不是访客网络 XingHe-Guest，访客网络不能访问内网。</p>
<p>修改域账号密码后，手机和电脑上保存的还是旧密码，会连不上 XingHe-Corp。请在设备上选择“忘记此网络”，然后用新密码重新连接。</p>
<p>如果信号只有一格或频繁掉线，请尽量靠近无线接入点；每层楼的无线接入点安装在走廊天花板上，会议室内另有独立的接入点。</p>

<div class="page2">
<h2>四、常见故障速查表</h2>
<table>
  <thead><tr><th>现象</th><th>可能原因</th><th>处理方法</th></tr></thead>
  <tbody>
    <tr><td>IP 地址以 169.254 开头</td><td>没有从 DHCP 获得地址</td><td>检查网线，运行 ipconfig /renew</td></tr>
    <tr><td>能登录企业微信，但网页打不开</td><td>DNS 解析失败</td><td>运行 ipconfig /flushdns，仍不行请报障</td></tr>
    <tr><td>改密码后无线网络连不上</td><td>设备保存了旧密码</td><td>忘记此网络，用新密码重新连接</td></tr>
    <tr><td>无线网络频繁掉线</td><td>信号弱或 2.4 GHz 频段干扰</td><td>靠近接入点，或切换到 5 GHz 频段</td></tr>
    <tr><td>访问内网系统很慢</td><td>有人在下载大文件占满带宽</td><td>暂停大文件下载，大文件请在下班后传输</td></tr>
    <tr><td>在家无法打开 OA</td><td>没有连接 VPN</td><td>先连接“星河安全接入”VPN 客户端</td></tr>
  </tbody>
</table>

<h2>五、如何报障</h2>
<p>自行排查无法解决时，请拨打 IT 服务台分机 8000，或发送邮件到 it-help@xinghe.example。报障时请提供以下信息，可以大大缩短处理时间：</p>
<ul>
  <li>工号和座位号；</li>
  <li>电脑名称（在命令提示符中运行 <code>hostname</code> 查看）；</li>
  <li>故障现象、开始时间，以及 <code>ipconfig /all</code> 的截图；</li>
  <li>已经尝试过的排查步骤。</li>
</ul>
<p>整层楼或全公司断网属于 P1 紧急故障，IT 服务台会在 15 分钟内响应。</p>
</div>
</body>
</html>
"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def has_cjk_font() -> bool:
    """Without a CJK font Chromium prints tofu boxes; fontconfig says whether one is installed."""
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return False
    listed = subprocess.run([fc_list, ":lang=zh", "family"], capture_output=True, text=True, timeout=60)
    return bool(listed.stdout.strip())


def make_network_pdf(path: Path, chromium: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "network.html"
        pdf = Path(tmp) / "network.pdf"
        html.write_text(NETWORK_HTML, encoding="utf-8")
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
               "--run-all-compositor-stages-before-draw", f"--user-data-dir={tmp}/profile",
               f"--print-to-pdf={pdf}", html.as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        data = pdf.read_bytes()
    path.write_bytes(_fix_pdf_metadata(data, NETWORK_HTML))


def _fix_pdf_metadata(data: bytes, source: str) -> bytes:
    """Replace dates and the document id with fixed values of the same length, so xref offsets stay valid."""
    def fixed_date(match: re.Match[bytes]) -> bytes:
        stamp = match.group(2)
        for zone in ("", "Z", "+00'00", "+00'00'"):  # the same instant, in whichever form fits the old length
            if len(PDF_DATE_LOCAL + zone) == len(stamp):
                return match.group(1) + (PDF_DATE_LOCAL + zone).encode() + b")"
        raise ValueError(f"unexpected PDF date {stamp!r}")

    data = re.sub(rb"(/(?:CreationDate|ModDate) ?\()(D:[^)]*)\)", fixed_date, data)
    digest = hashlib.sha256(source.encode()).hexdigest().encode()

    def fixed_id(match: re.Match[bytes]) -> bytes:
        return b"<" + (digest * 4)[: len(match.group(1))] + b">"

    head, sep, tail = data.rpartition(b"/ID")
    if sep:
        end = tail.index(b"]")
        tail = re.sub(rb"<([0-9A-Fa-f]+)>", fixed_id, tail[:end]) + tail[end:]
        data = head + sep + tail
    return data


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "knowledge", help="folder to write into")
    parser.add_argument("--skip-chromium", action="store_true", help="do not (re)build the Chromium-printed PDF")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    make_handbook(out / "员工手册.docx")
    print(f"wrote {out / '员工手册.docx'}")
    make_manual(out / "product_manual_en.pdf")
    print(f"wrote {out / 'product_manual_en.pdf'}")

    chromium = None if args.skip_chromium else find_chromium()
    if args.skip_chromium:
        print("skipped 网络故障排查.pdf (--skip-chromium)", file=sys.stderr)
    elif chromium is None or not has_cjk_font():
        missing = "Chromium" if chromium is None else "a CJK font"
        print(f"skipped 网络故障排查.pdf: {missing} not found (apt-get install -y chromium fonts-wqy-microhei)",
              file=sys.stderr)
    else:
        make_network_pdf(out / "网络故障排查.pdf", chromium)
        print(f"wrote {out / '网络故障排查.pdf'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
