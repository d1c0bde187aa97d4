"""eval/dev_questions.jsonl: its format always; its evidence against the dev corpus when that has been fetched.

The corpus check needs data/dev_corpus (``bash scripts/get_dev_corpus.sh``); without it that test is skipped.
"""

from __future__ import annotations

import json
import re
import unicodedata
import warnings
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ROOT / "eval" / "dev_questions.jsonl"
CORPUS = ROOT / "data" / "dev_corpus"
PACKAGES = ("debian-reference", "lilypond", "linuxcnc")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def normalise(text: str) -> str:
    """What evaluation matches on: NFKC, lower case, no whitespace at all."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text).lower())


def load_rows() -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(QUESTIONS.read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"line {number} is blank"
        rows.append(json.loads(line))
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return load_rows()


def test_fields_and_types(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        assert set(row) == {"id", "question", "evidence", "source", "split"}, row
        assert isinstance(row["id"], str) and re.fullmatch(r"q\d{3,}", row["id"]), row
        assert isinstance(row["question"], str) and len(row["question"].strip()) >= 5, row
        assert isinstance(row["evidence"], list) and all(isinstance(e, str) for e in row["evidence"]), row
        assert isinstance(row["source"], str), row
        assert row["split"] in ("tune", "test"), row
        if row["evidence"]:
            assert 1 <= len(row["evidence"]) <= 3, row
            assert row["source"].split("/", 1)[0] in PACKAGES, row
            assert not row["source"].startswith("/") and ".." not in row["source"].split("/"), row
            for evidence in row["evidence"]:
                assert len(normalise(evidence)) >= 8 and len(evidence) <= 80, (row["id"], evidence)
        else:
            assert row["source"] == "", row


def test_ids_unique_and_split_deterministic(rows: list[dict[str, Any]]) -> None:
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids))
    for row in rows:  # the split is a function of the id, so it cannot drift when questions are edited
        assert row["split"] == ("tune" if zlib.crc32(row["id"].encode()) % 2 == 0 else "test"), row["id"]
    splits = Counter(row["split"] for row in rows)
    assert min(splits.values()) >= len(rows) // 3, splits


def test_counts(rows: list[dict[str, Any]]) -> None:
    assert len(rows) >= 150
    assert sum(1 for row in rows if not row["evidence"]) >= 15
    english = [row for row in rows if not _CJK.search(row["question"])]
    assert len(english) >= 10
    per_package = Counter(row["source"].split("/", 1)[0] for row in rows if row["source"])
    assert all(per_package[package] >= 10 for package in PACKAGES), per_package


def test_questions_unique(rows: list[dict[str, Any]]) -> None:
    questions = [normalise(row["question"]) for row in rows]
    assert len(questions) == len(set(questions))


# --- against the corpus --------------------------------------------------------------------------------------


def _project_parser() -> Any:
    """The project's loader (rag.ingest.load.parse_file), or its per-format parsers, or None."""
    try:
        from rag.core.config import LoadConfig
        from rag.ingest.load import parse_file

        cfg = LoadConfig()
        return lambda path, source: [doc.text for doc in parse_file(path, source, cfg)]
    except ImportError:
        pass
    try:
        from rag.core.config import LoadConfig
        from rag.ingest.parsers.markup import parse_html
        from rag.ingest.parsers.pdf import parse_pdf

        cfg = LoadConfig()
        return lambda path, source: [
            doc.text for doc in (parse_pdf if path.suffix.lower() == ".pdf" else parse_html)(path, source, cfg)
        ]
    except ImportError:
        return None


def _fallback_parse(path: Path, source: str) -> list[str]:
    """BeautifulSoup / pypdfium2 text, for when the project's loader cannot be imported."""
    if path.suffix.lower() == ".pdf":
        import pypdfium2 as pdfium

        pdf = pdfium.PdfDocument(str(path))
        try:
            return [pdf[i].get_textpage().get_text_range() for i in range(len(pdf))]
        finally:
            pdf.close()
    from bs4 import BeautifulSoup

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        soup = BeautifulSoup(path.read_bytes(), "lxml")
    for tag in soup(["script", "style"]):
        tag.decompose()
    return [soup.get_text("\n")]


@pytest.mark.integration
def test_evidence_occurs_in_source(rows: list[dict[str, Any]]) -> None:
    if not CORPUS.is_dir():
        pytest.skip("data/dev_corpus is missing: run `bash scripts/get_dev_corpus.sh` to fetch the dev corpus")
    parse = _project_parser() or _fallback_parse
    texts: dict[str, list[str]] = {}
    missing = []
    for row in rows:
        if not row["source"]:
            continue
        source = row["source"]
        path = CORPUS / source
        assert path.is_file(), f"{row['id']}: {source} is not in data/dev_corpus (re-run scripts/get_dev_corpus.sh)"
        if source not in texts:
            texts[source] = [normalise(text) for text in parse(path, source)]
        for evidence in row["evidence"]:
            # each piece of evidence must lie inside one parsed Document (one page of a PDF), where a chunk can hold it
            if not any(normalise(evidence) in text for text in texts[source]):
                missing.append(f"{row['id']} {source}: {evidence}")
    assert not missing, "evidence not found in its source:\n" + "\n".join(missing)
