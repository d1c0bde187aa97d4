"""Dump the answerability decision's signals for every question of a question set (for calibrating the decision).

    python eval/answer_features.py --index /tmp/ans_dev2 --questions eval/dev2_questions.jsonl \
        --questions eval/dev2_unanswerable.jsonl --split tune --out /tmp/features_dev2_tune.jsonl

One JSON line per question: its label (answerable or not, its split, evidence retrieved or not), whether the lead
passage holds every name and number of the question (``anchored``) and the signals the calibrated decision combines
(``rag.answer.calibration``), computed by the decision itself: the lead passage's key-term coverage, the best
question-to-sentence similarity (the index embedder) and the share of the question's weight no chunk holds.
``eval/calibrate_answerability.py`` fits the decision on them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rag.answer.answerable import assess
from rag.answer.calibration import SIGNALS, Calibration
from rag.answer.pipeline import open_pipeline
from rag.cli.eval import first_hit_rank, read_questions
from rag.core.config import load_config


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", required=True)
    parser.add_argument("--questions", action="append", required=True)
    parser.add_argument("--split", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--align-lead", type=int, default=None, help="answer.align_lead (default: the config's)")
    args = parser.parse_args()
    cfg = load_config(None, ["answer.decision=coverage"])  # the probe below decides; no calibration is read
    pipeline, _ = open_pipeline(cfg, args.index)
    corpus = pipeline.retriever.index
    answer = cfg.answer
    questions = [q for path in args.questions for q in read_questions(path, args.split)]
    embedder = corpus.embedder.describe().get("name", "")
    # a probe model: every signal computed, the decision left to the anchors (P = 0.5 >= 0)
    n = len(SIGNALS)
    probe = Calibration(SIGNALS, (0.0,) * n, (1.0,) * n, (0.0,) * n, 0.0, 0.0, embedder)
    with open(args.out, "w", encoding="utf-8") as out:
        for number, question in enumerate(questions, 1):
            hits = pipeline.retrieve(question.question)
            decision = assess(question.question, hits, corpus, min_coverage=answer.min_term_coverage,
                              cross_language_min_dense=answer.cross_language_min_dense,
                              max_sentences=answer.max_sentences, dictionary=pipeline.dictionary,
                              relative_credit=answer.relative_credit, similarity=pipeline.similarity,
                              calibration=probe, alignment=pipeline.alignment,
                              align_lead=answer.align_lead if args.align_lead is None else args.align_lead)
            row = {
                "id": question.id, "answerable": question.answerable, "split": question.split, "source": question.source,
                "lang": question.language, "embedder": embedder,
                "retrieved": first_hit_rank(question, hits) is not None if question.answerable else None,
                "anchored": decision.answerable, "cross": decision.cross_language, **decision.signals,
                "coverage": decision.coverage, "n_hits": len(hits),
                "missing": list(decision.missing), "terms": [(t.text, round(t.weight, 2)) for t in decision.terms],
                "question": question.question,
                "support": [s.text for s in decision.support],
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            print(f"{number}/{len(questions)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
