"""How many of the spaces between English words OCR gets back: the recogniser alone vs the loader's gap rule.

Why: the CER ignores whitespace, but BM25 needs the spaces between words; PP-OCRv4 drops most of them at scan sizes,
and :func:`rag.ingest.parsers.ocr_layout.respace` puts them back from the page's blank columns. This compares both
with the text layer of the same page: each scanned page (``scripts/make_scanned_copies.py``) is rendered at the
loader's dpi and recognised as the loader does (no direction classifier, character positions on); a recognised box
whose characters occur, spaces removed, in the text layer of its original page is aligned with it, and for every two
neighbouring characters where a space may go (``space_may_go``: Latin letters/digits, sentence starts) the space of
the text layer is compared with the OCR's. Counts: spaces in the text layer, read by the recogniser, found after
``respace``, and false spaces (OCR space, none in the text layer).

    .venv/bin/python bench/ocr_spaces.py --scanned /tmp/dev2_ocr/scanned/pdf/maint-guide.zh-cn.pdf \\
        --text /tmp/dev2_ocr/text/pdf/maint-guide.zh-cn.pdf --out spaces.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.ingest.parsers.ocr import ocr_engine, rapidocr_boxes  # noqa: E402
from rag.ingest.parsers.ocr_layout import respace, space_may_go  # noqa: E402


def spaced_chars(text: str) -> tuple[str, list[bool]]:
    """``text`` without whitespace (NFKC) and, for each character left, whether whitespace stood before it."""
    chars, before, pending = [], [], False
    for char in unicodedata.normalize("NFKC", text):
        if char.isspace():
            pending = True
            continue
        chars.append(char)
        before.append(pending)
        pending = False
    return "".join(chars), before


def count(line: str, page: str, page_spaces: list[bool]) -> dict[str, int] | None:
    """Spaces of ``line`` against the text layer where it occurs (None when it does not occur verbatim)."""
    squashed, line_spaces = spaced_chars(line)
    start = page.find(squashed) if len(squashed) >= 2 else -1
    if start < 0:
        return None
    counts = {"text_layer": 0, "found": 0, "false": 0}
    for index in range(1, len(squashed)):
        if space_may_go(squashed[index - 1], squashed[index]):
            wanted, got = page_spaces[start + index], line_spaces[index]
            counts["text_layer"] += wanted
            counts["found"] += wanted and got
            counts["false"] += got and not wanted
    return counts


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import pypdfium2 as pdfium

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scanned", type=Path, action="append", required=True, help="an image-only PDF (repeatable)")
    parser.add_argument("--text", type=Path, action="append", required=True, help="its original, same pages")
    parser.add_argument("--dpi", type=int, default=200, help="render resolution (load.ocr_dpi)")
    parser.add_argument("--min-confidence", type=float, default=0.5, help="load.ocr_min_confidence")
    parser.add_argument("--out", type=Path, help="also write the JSON lines here")
    args = parser.parse_args(argv)
    if len(args.scanned) != len(args.text):
        print("give one --text for each --scanned", file=sys.stderr)
        return 1
    out = args.out.open("w", encoding="utf-8") if args.out else None
    totals = {"recogniser": {"text_layer": 0, "found": 0, "false": 0}, "respace": {"text_layer": 0, "found": 0, "false": 0}}
    engine = ocr_engine()
    for scanned_path, text_path in zip(args.scanned, args.text, strict=True):
        scanned, text = pdfium.PdfDocument(str(scanned_path)), pdfium.PdfDocument(str(text_path))
        for number in range(len(scanned)):
            started = time.perf_counter()
            textpage = text[number].get_textpage()
            page_text, page_spaces = spaced_chars(textpage.get_text_bounded())
            image = np.asarray(scanned[number].render(scale=args.dpi / 72).to_pil().convert("RGB"))
            result, _ = engine(np.ascontiguousarray(image[:, :, ::-1]), use_cls=False, return_word_box=True,
                               text_score=0.0)
            grey = image.mean(axis=2).astype(np.uint8)
            record: dict[str, Any] = {"file": scanned_path.name, "page": number + 1}
            for box in rapidocr_boxes(result):
                if box.score < args.min_confidence or not box.text.strip():
                    continue
                for name, line in (("recogniser", box.text), ("respace", respace(box, grey))):
                    counts = count(line, page_text, page_spaces)
                    for key, value in (counts or {}).items():
                        totals[name][key] += value
                        record[f"{name}_{key}"] = record.get(f"{name}_{key}", 0) + value
            record["seconds"] = round(time.perf_counter() - started, 1)
            line_out = json.dumps(record, ensure_ascii=False)
            print(line_out, flush=True)
            if out:
                out.write(line_out + "\n")
        scanned.close()
        text.close()
    summary = json.dumps({"summary": totals}, ensure_ascii=False)
    print(summary)
    if out:
        out.write(summary + "\n")
        out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
