"""Spreadsheets (.xlsx via openpyxl, .xls via xlrd, .csv/.tsv) as readable passages.

A sheet is cut into regions (runs of non-empty rows; a blank row ends one) and each region's first row is taken as
its header. A region becomes Documents of at most ``SHEET_BLOCK_CHARS`` characters, each starting with the header
row again, so a chunk never holds numbers without the column names that explain them. Cells are joined with " | "
like DOCX tables; ``heading`` = the sheet name; ``metadata["rows"]`` = the spreadsheet rows the passage covers.
"""

from __future__ import annotations

import csv
import datetime
from collections.abc import Iterable, Iterator
from pathlib import Path

from rag.core.config import LoadConfig
from rag.core.types import Document
from rag.ingest.parsers.office import check_zip
from rag.ingest.parsers.text import collapse, decode_text

SHEET_BLOCK_CHARS = 400  # below the default chunk size, so the splitter keeps a block (and its header) whole


def cell_text(value: object) -> str:
    """One cell as text: whole floats without ".0", dates without a midnight time, whitespace collapsed."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime.datetime) and value.time() == datetime.time():
        return value.date().isoformat()
    return collapse(str(value))


def sheet_documents(rows: Iterable[Iterable[object]], source: str, sheet: str, metadata: dict[str, str]) -> list[Document]:
    """Documents of one sheet: each region cut into blocks that repeat the region's header row (see the module doc)."""
    documents = []
    heading = (sheet,) if sheet else ()

    def emit(header: str, block: list[str], first: int, last: int) -> None:
        text = "\n".join([header, *block]) if block else header
        documents.append(Document(text, source, None, heading, {**metadata, "rows": f"{first}-{last}"}))

    for header, region in _regions(rows):
        header_row, header_line = header
        block: list[str] = []
        first = last = header_row
        for number, line in region:
            if block and len(header_line) + sum(len(text) + 1 for text in block) + len(line) > SHEET_BLOCK_CHARS:
                emit(header_line, block, first, last)
                block = []
            if not block:
                first = number
            block.append(line)
            last = number
        emit(header_line, block, first, last)
    return documents


def _regions(rows: Iterable[Iterable[object]]) -> Iterator[tuple[tuple[int, str], list[tuple[int, str]]]]:
    """``((header row number, header line), [(row number, line), ...])`` per run of non-empty rows (1-based)."""
    header: tuple[int, str] | None = None
    body: list[tuple[int, str]] = []
    for number, row in enumerate(rows, start=1):
        cells = [cell_text(value) for value in row]
        while cells and not cells[-1]:
            cells.pop()
        if not cells:
            if header is not None:
                yield header, body
            header, body = None, []
            continue
        line = " | ".join(cells)
        if header is None:
            header = (number, line)
        else:
            body.append((number, line))
    if header is not None:
        yield header, body


def parse_xlsx(path: Path, source: str, cfg: LoadConfig) -> list[Document]:
    """.xlsx/.xlsm via openpyxl (read-only, cached values, not formulas) after the zip-bomb check."""
    check_zip(path, cfg)
    import openpyxl

    workbook = openpyxl.load_workbook(str(path), read_only=True, data_only=True)
    try:
        metadata = {"parser": "openpyxl"}
        return [document for sheet in workbook.worksheets
                for document in sheet_documents(sheet.iter_rows(values_only=True), source, sheet.title, metadata)]
    finally:
        workbook.close()


def parse_xls(path: Path, source: str, cfg: LoadConfig) -> list[Document]:
    """.xls (Excel 97-2003) via xlrd; dates as ISO dates."""
    import xlrd

    book = xlrd.open_workbook(str(path), on_demand=True)
    documents = []
    for sheet in book.sheets():

        def values(sheet: xlrd.sheet.Sheet = sheet) -> Iterator[list[object]]:
            for index in range(sheet.nrows):
                row: list[object] = []
                for cell in sheet.row(index):
                    if cell.ctype == xlrd.XL_CELL_DATE:
                        row.append(xlrd.xldate.xldate_as_datetime(cell.value, book.datemode))
                    else:
                        row.append(cell.value)
                yield row

        documents += sheet_documents(values(), source, sheet.name, {"parser": "xlrd"})
    return documents


def parse_csv(path: Path, source: str, cfg: LoadConfig) -> list[Document]:
    """.csv/.tsv: encoding detected like plain text, the delimiter sniffed (tab for .tsv)."""
    text, encoding = decode_text(path.read_bytes())
    delimiter = "\t"
    if path.suffix.lower() != ".tsv":
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    rows = csv.reader(text.splitlines(), delimiter=delimiter)
    return sheet_documents(rows, source, "", {"parser": "csv", "encoding": encoding})
