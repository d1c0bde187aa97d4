"""Issue 19: pptx / xlsx / csv parsers, OCR of images and scanned PDFs (RapidOCR, offline), their hostile inputs.

Every file is generated here (python-pptx, openpyxl, Pillow with the Debian CJK font); OCR runs the real PP-OCRv4
models that the rapidocr-onnxruntime wheel ships.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from rag.answer.retrieve import Retriever
from rag.core.config import LoadConfig, RagConfig
from rag.core.errors import ConfigError, LoadError
from rag.embed.embedder import HashEmbedder
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder
from rag.ingest.load import parse_file, parse_files, parse_one_isolated
from rag.ingest.parsers.ocr import ocr_memory_mb
from tests.broken_files import PASSWD_MARKER, make_pdf
from tests.integration.test_hostile_corpus import huge_png
from tests.office_files import (
    CJK_FONT,
    CSV_PHRASE,
    LAUGHS_DOCTYPE,
    SHEET_PHRASES,
    SLIDE_PHRASES,
    XXE_DOCTYPE,
    image_pdf,
    make_pptx,
    make_xls,
    make_xlsx,
    pdf_with_picture,
    render_text_image,
    with_doctype,
    zip_bomb_like,
)

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not CJK_FONT.exists(), reason="needs fonts-wqy-microhei (make test installs it)")]
OCR_LINES = ["域账号密码每九十天修改一次", "VPN server: vpn.example.com"]


def squash(text: str) -> str:
    return "".join(text.split())


def write(folder: Path, name: str, data: bytes | str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("gb18030") if isinstance(data, str) else data)
    return path


def test_pptx_slides_become_pages_with_title_headings_tables_and_notes(tmp_path: Path) -> None:
    path = write(tmp_path, "deck.pptx", make_pptx())
    documents = parse_file(path, "deck.pptx", LoadConfig())
    assert [(d.page, d.heading, d.text) for d in documents] == [
        (1, ("运维手册",), SLIDE_PHRASES[0] + "。"),
        (2, ("网络",), "服务 | 说明\nVPN | " + SLIDE_PHRASES[1]),
        (3, ("存档",), SLIDE_PHRASES[2]),
    ]
    assert documents[0].metadata == {"parser": "python-pptx", "page_count": "3"}


def test_xlsx_blocks_repeat_the_header_row(tmp_path: Path) -> None:
    path = write(tmp_path, "book.xlsx", make_xlsx(rows=60))
    documents = parse_file(path, "book.xlsx", LoadConfig())
    assets = [d for d in documents if d.heading == ("资产",)]
    assert len(assets) > 1 and all(d.text.startswith("编号 | 位置 | 负责人\n") for d in assets)
    assert all(len(d.text) <= 400 for d in assets)
    rows = [line for d in assets for line in d.text.splitlines()[1:]]
    assert rows[0] == "1 | 机柜 1 号 | 工程师1" and rows[-1] == f"60 | {SHEET_PHRASES[0]} | 张三" and len(rows) == 60
    assert assets[0].metadata["rows"].startswith("2-") and assets[-1].metadata["rows"].endswith("-61")
    assert [(d.heading, d.text) for d in documents if d.heading == ("说明",)] == [
        (("说明",), "问题 | 回答\n耗材 | " + SHEET_PHRASES[1])]


def test_xls_dates_and_whole_numbers_read_cleanly(tmp_path: Path) -> None:
    path = write(tmp_path, "duty.xls", make_xls())
    documents = parse_file(path, "duty.xls", LoadConfig())
    assert [(d.heading, d.text, d.metadata) for d in documents] == [
        (("值班",), "日期 | 值班人 | 工单数\n2026-03-01 | 王五负责机房巡检 | 12", {"parser": "xlrd", "rows": "2-2"})]


def test_csv_in_gbk_with_semicolons_keeps_its_header(tmp_path: Path) -> None:
    path = write(tmp_path, "rooms.csv", f"房间;规定\n一号会议室;{CSV_PHRASE}\n\n说明;备注\n投影仪;前台领取\n")
    documents = parse_file(path, "rooms.csv", LoadConfig())
    assert [d.text for d in documents] == [f"房间 | 规定\n一号会议室 | {CSV_PHRASE}", "说明 | 备注\n投影仪 | 前台领取"]
    assert documents[0].metadata == {"parser": "csv", "encoding": "gb18030", "rows": "2-2"}


def test_image_ocr_reading_order_confidence_and_dropped_lines(tmp_path: Path) -> None:
    path = tmp_path / "shot.png"
    render_text_image(OCR_LINES, dpi=200).save(path)  # type: ignore[attr-defined]
    (document,) = parse_file(path, "shot.png", LoadConfig())
    assert [squash(line) for line in document.text.splitlines()] == [squash(line) for line in OCR_LINES]
    confidence = float(document.metadata["ocr_confidence"])
    assert 0.8 < confidence <= 1.0 and document.metadata["ocr"] == "image" and document.page is None
    assert document.heading == (f"OCR (confidence {confidence:.2f})",)
    assert parse_file(path, "shot.png", LoadConfig(ocr_min_confidence=1.01)) == []  # every line below the bar


def test_scanned_pdf_pages_and_pictures_in_text_pages(tmp_path: Path) -> None:
    pages = [render_text_image([line], dpi=150) for line in OCR_LINES]
    scanned = write(tmp_path, "scan.pdf", image_pdf(pages, dpi=150))
    documents = parse_file(scanned, "scan.pdf", LoadConfig())
    assert [(d.page, squash(d.text), d.metadata["ocr"]) for d in documents] == [
        (1, squash(OCR_LINES[0]), "page"), (2, squash(OCR_LINES[1]), "page")]
    picture = render_text_image(["截图里的设置：代理端口8080"], dpi=150)
    mixed = write(tmp_path, "mixed.pdf", pdf_with_picture(make_pdf([["Hello PDF page one with text"]]), picture))
    auto = parse_file(mixed, "mixed.pdf", LoadConfig())
    assert [(d.page, squash(d.text), d.metadata.get("ocr")) for d in auto] == [
        (1, "HelloPDFpageonewithtext", None), (1, "截图里的设置：代理端口8080", "pictures")]
    assert [d.text for d in parse_file(mixed, "mixed.pdf", LoadConfig(ocr="off"))] == ["Hello PDF page one with text"]
    capped = parse_file(mixed, "mixed.pdf", LoadConfig(ocr_pictures_per_file=0))  # the per-file picture budget
    assert [d.text for d in capped] == ["Hello PDF page one with text"]
    forced = parse_file(mixed, "mixed.pdf", LoadConfig(ocr="force"))
    assert len(forced) == 1 and forced[0].metadata["ocr"] == "page" and "代理端口8080" in squash(forced[0].text)


def test_pages_of_a_scan_ocrd_by_several_threads_come_back_in_page_order(tmp_path: Path) -> None:
    """load.ocr_threads: the same Documents as one page after the other, page numbers in order, blank page left out."""
    lines = ["第一页：机房门禁卡在前台登记", "Page two: backup tapes go offsite", "第三页：打印机在三楼",
             "Page four: the wiki moved to wiki.example.com", "第五页：年假需提前两周申请"]
    pages = [render_text_image([line], dpi=150) for line in lines]
    pages.insert(2, Image.new("RGB", pages[0].size, "white"))  # type: ignore[attr-defined]  # a blank scanned page
    path = write(tmp_path, "scan.pdf", image_pdf(pages, dpi=150))
    one = parse_file(path, "scan.pdf", LoadConfig(ocr_threads=1))
    three = parse_file(path, "scan.pdf", LoadConfig(ocr_threads=3, memory_mb=ocr_memory_mb(3)))
    assert [(d.page, squash(d.text)) for d in three] == [
        (1, squash(lines[0])), (2, squash(lines[1])), (4, squash(lines[2])), (5, squash(lines[3])),
        (6, squash(lines[4]))]
    assert three == one


def test_ocr_setting_is_checked_and_off_skips_images(tmp_path: Path) -> None:
    path = tmp_path / "shot.png"
    render_text_image(["x"], dpi=72).save(path)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"^load.ocr='maybe' is not one of off, auto, force$"):
        parse_file(path, "shot.png", LoadConfig(ocr="maybe"))
    with pytest.raises(ConfigError, match=r"^load.ocr_threads=0 must be at least 1 \(1 = pages one after the other\)$"):
        parse_file(path, "shot.png", LoadConfig(ocr_threads=0))
    with pytest.raises(LoadError) as info:
        parse_file(path, "shot.png", LoadConfig(ocr="off"))
    assert (info.value.kind, str(info.value)) == ("unsupported", ".png files are read only with OCR: set load.ocr=auto")


def test_hostile_office_and_image_files_fail_alone(tmp_path: Path, cfg: RagConfig) -> None:
    """Each hostile file fails alone with its reason in the per-file report; an image without text is no error."""
    folder = tmp_path / "kb"
    assert PASSWD_MARKER in Path("/etc/passwd").read_text(encoding="utf-8")  # else the XXE check proves nothing
    slide = "ppt/slides/slide1.xml"
    sheet = "xl/worksheets/sheet2.xml"
    write(folder, "xxe.pptx", with_doctype(make_pptx("MARKER"), slide, XXE_DOCTYPE, "&xxe;"))
    write(folder, "laughs.pptx", with_doctype(make_pptx("MARKER"), slide, LAUGHS_DOCTYPE, "&lol9;"))
    write(folder, "xxe.xlsx", with_doctype(make_xlsx(marker="MARKER"), sheet, XXE_DOCTYPE, "&xxe;"))
    write(folder, "laughs.xlsx", with_doctype(make_xlsx(marker="MARKER"), sheet, LAUGHS_DOCTYPE, "&lol9;"))
    write(folder, "bomb.pptx", zip_bomb_like(make_pptx(), "ppt/media/blob.bin"))
    write(folder, "bomb.xlsx", zip_bomb_like(make_xlsx(), "xl/media/blob.bin"))
    write(folder, "not_a_zip.xlsx", b"PK but not a zip" * 10)
    write(folder, "huge.png", huge_png())  # 400 M pixels declared over a few bytes
    write(folder, "truncated.jpg", b"\xff\xd8\xff\xe0 not a jpeg")
    write(folder, "blank.png", b"")
    Image.new("RGB", (800, 600), "white").save(folder / "blank.png")
    write(folder, "good.pptx", make_pptx())
    report = sync_folder(folder, cfg, HashEmbedder())
    rows = {f.source: (f.status, f.error_kind, f.chunks) for f in report.files}
    assert rows == {
        "xxe.pptx": ("new", None, 3), "laughs.pptx": ("failed", "corrupt", 0),
        "xxe.xlsx": ("failed", "corrupt", 0), "laughs.xlsx": ("failed", "corrupt", 0),
        "bomb.pptx": ("failed", "corrupt", 0), "bomb.xlsx": ("failed", "corrupt", 0),
        "not_a_zip.xlsx": ("failed", "corrupt", 0), "huge.png": ("failed", "corrupt", 0),
        "truncated.jpg": ("failed", "corrupt", 0), "blank.png": ("new", None, 0), "good.pptx": ("new", None, 3),
    }
    errors = {f.source: f.error for f in report.files}
    assert errors["bomb.xlsx"] == "looks like a zip bomb: 0.1 MB would unpack to 120 MB; the file was skipped"
    assert errors["huge.png"].startswith("refused as a possible decompression bomb (Image size (400000000 pixels)")
    assert "amplification" in errors["laughs.pptx"]
    index = KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder())
    texts = " ".join(hit.chunk.text for hit in Retriever(index, cfg.retrieve).search("磁带 备份 VPN", top_k=20))
    assert PASSWD_MARKER not in texts and "lollol" not in texts and SLIDE_PHRASES[2] in texts


def test_every_slide_sheet_and_image_is_found_by_search(tmp_path: Path, cfg: RagConfig) -> None:
    """The issue's acceptance check: a phrase from each slide / sheet / picture, searched through the index."""
    folder = tmp_path / "kb"
    write(folder, "decks/ops.pptx", make_pptx())
    write(folder, "sheets/assets.xlsx", make_xlsx(rows=60))
    write(folder, "sheets/rooms.csv", f"房间,规定\n一号会议室,{CSV_PHRASE}\n")
    picture = "截图：打印服务器地址是 print.example.com"
    render_text_image([picture], dpi=200).save(folder / "shot.png")  # type: ignore[attr-defined]
    report = sync_folder(folder, cfg, HashEmbedder())
    assert {f.status for f in report.files} == {"new"}, [(f.source, f.error) for f in report.files]
    retriever = Retriever(KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder()), cfg.retrieve)
    wanted = {**dict.fromkeys(SLIDE_PHRASES, "decks/ops.pptx"), **dict.fromkeys(SHEET_PHRASES, "sheets/assets.xlsx"),
              CSV_PHRASE: "sheets/rooms.csv", "打印服务器地址": "shot.png"}
    for phrase, source in wanted.items():
        hits = retriever.search(phrase, top_k=3, mode="bm25")
        assert any(hit.chunk.source == source and squash(phrase) in squash(hit.chunk.text) for hit in hits), phrase
    sheet_hit = retriever.search(SHEET_PHRASES[0], top_k=1, mode="bm25")[0]
    assert sheet_hit.chunk.heading == ("资产",) and sheet_hit.chunk.text.startswith("编号 | 位置 | 负责人")


def test_ocr_runs_in_the_isolated_worker_under_its_memory_cap(tmp_path: Path) -> None:
    path = tmp_path / "shot.png"
    render_text_image(OCR_LINES, dpi=150).save(path)  # type: ignore[attr-defined]
    parsed = parse_one_isolated(path, "shot.png", LoadConfig(memory_mb=2048, timeout_s=120))
    assert parsed.ok, parsed.error
    assert squash(OCR_LINES[0]) in squash(parsed.documents[0].text)
    assert json.loads(json.dumps(parsed.documents[0].metadata))["ocr"] == "image"


def test_multi_page_tiff_keeps_page_numbers(tmp_path: Path) -> None:
    first, second = (render_text_image([line], dpi=150) for line in OCR_LINES)
    first.save(tmp_path / "fax.tiff", save_all=True, append_images=[second])  # type: ignore[attr-defined]
    documents = parse_file(tmp_path / "fax.tiff", "fax.tiff", LoadConfig())
    assert [(d.page, squash(d.text)) for d in documents] == [(1, squash(OCR_LINES[0])), (2, squash(OCR_LINES[1]))]


def test_a_long_scanned_pdf_hits_the_per_file_time_limit_alone(tmp_path: Path) -> None:
    """A scan too long for load.timeout_s is killed and reported; the next file still parses."""
    page = render_text_image(["第一页到最后一页都是扫描件"], dpi=150)
    write(tmp_path, "long_scan.pdf", image_pdf([page] * 200, dpi=150))
    write(tmp_path, "notes.txt", "扫描件旁边的普通文本。".encode())
    items = [(tmp_path / "long_scan.pdf", "long_scan.pdf"), (tmp_path / "notes.txt", "notes.txt")]
    results = {parsed.source: parsed for parsed in parse_files(items, LoadConfig(timeout_s=3, workers=1))}
    assert (results["long_scan.pdf"].error_kind, results["long_scan.pdf"].error) == (
        "timeout", "parsing took longer than 3 s (load.timeout_s); the file was skipped")
    assert results["notes.txt"].ok and results["notes.txt"].documents[0].text == "扫描件旁边的普通文本。"


def test_missing_ocr_package_is_one_actionable_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.ingest.parsers.ocr import ocr_engine

    path = tmp_path / "shot.png"
    render_text_image(["x"], dpi=72).save(path)  # type: ignore[attr-defined]
    ocr_engine.cache_clear()
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # what `import` sees when it is not installed
    try:
        with pytest.raises(LoadError) as info:
            parse_file(path, "shot.png", LoadConfig())
    finally:
        ocr_engine.cache_clear()
    assert (info.value.kind, str(info.value)) == (
        "missing_dependency", "OCR needs rapidocr-onnxruntime: pip install -r requirements.txt (or set load.ocr=off)")
