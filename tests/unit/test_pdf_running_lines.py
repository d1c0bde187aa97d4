"""PDF running heads, feet and page numbers are taken out of the page text (rag.ingest.parsers.pdf.strip_running_lines):
they answer nothing, and left in they became answer sentences ("Debian Edu / Skolelinux 12 Bookworm 手册 11 / 92").
The head, without its page counter, opens the page once: retrieval still reads the manual's title."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.core.config import LoadConfig
from rag.ingest.parsers.pdf import parse_pdf, strip_running_lines
from tests.broken_files import make_pdf


def book(pages: int) -> list[str]:
    return [f"Acme 员工手册 {n} / {pages}\n这一页的正文说 {n * n} 项。\n{'甲乙丙丁戊己庚'[n]}句接着说完。\n- {n} -" for n in range(1, pages + 1)]


def test_a_head_with_page_counters_and_a_numbered_foot_are_removed_from_every_page() -> None:
    got, titles = strip_running_lines(book(6))
    assert got[2] == "这一页的正文说 9 项。\n丁句接着说完。"
    assert all("Acme" not in page and "- " not in page for page in got)
    assert titles == ["Acme 员工手册"] * 6  # the head without its page counter


def test_lines_that_repeat_only_sometimes_or_inside_the_page_stay() -> None:
    pages = [f"Handbook {n}\nStep {n * n}.\nNote: keep this line.\nTotal: {7 * n % 5}.\nEnd of page {n}." for n in range(10)]
    pages[0] = "Chapter 1\n" + pages[0]  # a chapter heading atop one page
    pages[5] = "Manufacturer Model Step\n" + pages[5]  # a table's header row where the table crosses pages ...
    pages[6] = "Manufacturer Model Step\n" + pages[6]  # ... on 2 of 10 pages: no running head
    got, titles = strip_running_lines(pages)
    assert titles == ["Handbook"] * 10
    assert all("Note: keep this line." in page for page in got)  # repeated, but never at a page's edge
    assert got[0].startswith("Chapter 1\n")
    assert got[5].startswith("Manufacturer Model Step\n") and got[6].startswith("Manufacturer Model Step\n")
    # "Handbook N" stands first on every page and "End of page N" last, counting the pages: running lines, taken out;
    # "Step N" and "Total: N" stand at the edges too, but their numbers do not count the pages: content
    assert got[3] == "Step 9.\nNote: keep this line.\nTotal: 1."


@pytest.mark.parametrize("number", ["12", "- 12 -", "12 / 92", "Page 3 of 10", "第 3 页", "第 3 页 共 10 页", "iv."])
def test_a_page_number_alone_at_the_foot_of_a_page_goes(number: str) -> None:
    pages = ["正文一。\n" + number, "正文二。"]
    got, titles = strip_running_lines(pages)
    assert titles == ["", ""]  # a page number is no title
    if number == "iv.":  # roman numerals are words too ("iv." could be an item): kept
        assert got[0].endswith("iv.")
    else:
        assert got[0] == "正文一。"


def test_a_one_page_document_keeps_its_numbers() -> None:
    assert strip_running_lines(["步骤如下：\n3"]) == (["步骤如下：\n3"], [""])


def test_parse_pdf_serves_pages_without_their_running_lines(tmp_path: Path) -> None:
    pages = [[f"Acme Handbook {n} / 4", f"The answer is {n * 7}.", f"- {n} -"] for n in range(1, 5)]
    path = tmp_path / "handbook.pdf"
    path.write_bytes(make_pdf(pages))
    documents = parse_pdf(path, "handbook.pdf", LoadConfig(ocr="off"))
    assert [d.page for d in documents] == [1, 2, 3, 4]
    # the head without its counter opens each page once; the foot is gone
    assert [d.text for d in documents] == [f"Acme Handbook\nThe answer is {n * 7}." for n in range(1, 5)]
