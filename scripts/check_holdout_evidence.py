#!/usr/bin/env python3
"""Check eval/holdout_questions.jsonl against data/holdout_corpus (built by scripts/get_holdout_corpus.sh).

    .venv/bin/python scripts/check_holdout_evidence.py [--questions eval/holdout_questions.jsonl]
                                                       [--corpus data/holdout_corpus] [--loader]

The same checks as scripts/check_dev2_evidence.py (whose text units and language rules it reuses), for the held-out
set: fields, unique ids, split "holdout" on every line, kind by folder, lang, the cross_lingual flag, evidence of
10-80 characters that occurs in one text unit of its source after normalisation (NFKC, lower-case, all whitespace
removed); with --loader also in one Document of the project's own loader. Prints the counts; exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_dev2_evidence import CJK, EvidenceChecker

ROOT = Path(__file__).resolve().parent.parent
KINDS = {"man/": "command-ref", "calc-help/": "app-manual", "policy-html/": "manual-html", "policy-pdf/": "manual-pdf"}
FIELDS = {"id", "question", "evidence", "source", "split", "kind", "lang", "cross_lingual"}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--questions", default=str(ROOT / "eval/holdout_questions.jsonl"))
    ap.add_argument("--corpus", default=str(ROOT / "data/holdout_corpus"))
    ap.add_argument("--loader", action="store_true", help="also check against rag.ingest.load.parse_file Documents")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    rows = [json.loads(line) for line in Path(args.questions).read_text(encoding="utf-8").splitlines() if line.strip()]
    errors: list[str] = []
    checker = EvidenceChecker(args.loader)
    ids: set[str] = set()
    c: collections.Counter[str] = collections.Counter()
    for r in rows:
        qid = r.get("id")
        if set(r) != FIELDS:
            errors.append(f"{qid}: fields {sorted(set(r) ^ FIELDS)}")
            continue
        if qid in ids:
            errors.append(f"{qid}: duplicate id")
        ids.add(qid)
        if r["split"] != "holdout":
            errors.append(f"{qid}: split {r['split']!r} (every held-out question has split 'holdout')")
        src, ev = r["source"], r["evidence"]
        qlang = "zh" if CJK.search(r["question"]) else "en"
        if r["lang"] != qlang:
            errors.append(f"{qid}: lang {r['lang']} but the question looks {qlang}")
        c["total"] += 1
        c[f"lang:{qlang}"] += 1
        if not ev:
            if src or r["cross_lingual"]:
                errors.append(f"{qid}: an unanswerable question has no source and is not cross_lingual")
            if r["kind"] not in KINDS.values():
                errors.append(f"{qid}: kind {r['kind']!r}")
            c["unanswerable"] += 1
            c[f"unanswerable:{r['kind']}"] += 1
            c[f"unanswerable:lang:{qlang}"] += 1
            continue
        kind = next((k for p, k in KINDS.items() if src.startswith(p)), None)
        if r["kind"] != kind:
            errors.append(f"{qid}: kind {r['kind']} != {kind} for {src}")
        path = corpus / src
        if not path.is_file():
            errors.append(f"{qid}: missing source {src}")
            continue
        checker.check(r, path, qlang, errors)
        c[f"kind:{kind}"] += 1
        c[f"kind:{kind}:{qlang}"] += 1
        c["cross_lingual"] += bool(r["cross_lingual"])
        c[f"cross_lingual:{kind}"] += bool(r["cross_lingual"])
        c[f"documents:{kind}:{src}"] = 1
    docs: collections.Counter[str] = collections.Counter()
    for k in list(c):
        if k.startswith("documents:"):
            docs[k.split(":")[1]] += 1
            del c[k]
    for k in sorted(c):
        print(f"{k:32s} {c[k]}")
    for k in sorted(docs):
        print(f"{'documents:' + k:32s} {docs[k]}")
    for e in errors:
        print("FAIL", e)
    print(f"{len(errors)} failure(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
