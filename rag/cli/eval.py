"""Evaluate retrieval (and, with the answering pipeline, answers) on a questions file.

    python -m rag.eval retrieval --index DIR --questions Q.jsonl [--k 10] [--out results.jsonl] [key=value ...]

Questions file (JSONL): ``{"id", "question", "evidence": ["verbatim substring", ...], "source"}``; an empty
``evidence`` marks a question the corpus cannot answer (scored on refusal: the retriever returns nothing); an answerable
question that gets nothing back counts as a miss and as a false refusal (``false_refusal``).
A question is a hit at k when an evidence string occurs in one of the first k chunks after NFKC, lower-casing and
removing all whitespace; ``chars@5`` is the mean length of a returned text among the first 5 (a chunk, or with
``retrieve.passage_chars`` its passage): compare hit rates at a similar length. The last printed line is
``hit@5=0.xxx mrr=0.xxx n=N``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.cli.common import add_config_args, config_from_args, fallback_note, run_cli, table
from rag.core.errors import RagError
from rag.core.jsonl import json_lines
from rag.core.types import Hit

KS = (1, 3, 5, 10)
_SPACE = re.compile(r"\s+")
_CJK = re.compile(r"[\u3400-\u9fff]")


def normalise(text: str) -> str:
    return _SPACE.sub("", unicodedata.normalize("NFKC", text).lower())


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    evidence: tuple[str, ...]
    source: str = ""
    split: str = ""

    @property
    def answerable(self) -> bool:
        return bool(self.evidence)

    @property
    def language(self) -> str:
        return "zh" if _CJK.search(self.question) else "en"

    @property
    def group(self) -> str:
        return self.source.split("/", 1)[0] if self.source else "(unanswerable)"


def read_questions(path: str | Path, split: str | None = None) -> list[Question]:
    """Read a questions file; a malformed line is an error naming its line number."""
    questions = []
    if not Path(path).is_file():
        raise RagError(f"questions file {path} does not exist; give a JSONL file of "
                       '{"id", "question", "evidence", "source"} objects (docs/EVAL.md)')
    for number, row, problem in json_lines(path):
        if problem:
            raise RagError(f"{path}:{number}: {problem}")
        try:
            evidence = row.get("evidence") or ()
            if isinstance(evidence, str):  # one string, not a list: tuple() would make every character evidence
                evidence = (evidence,)
            if any(not isinstance(e, str) or not normalise(e) for e in evidence):
                raise RagError(f"{path}:{number}: evidence must be non-blank strings (a blank one matches any chunk); "
                               f"use \"evidence\": [] for a question the corpus cannot answer")
            question = Question(str(row["id"]), str(row["question"]), tuple(evidence),
                                str(row.get("source") or ""), str(row.get("split") or ""))
        except (KeyError, TypeError, AttributeError) as exc:
            raise RagError(f"{path}:{number}: not a question object ({exc})") from exc
        if split is None or question.split == split:
            questions.append(question)
    if not questions:
        raise RagError(f"{path} has no questions" + (f" in split {split!r}" if split else ""))
    return questions


def first_hit_rank(question: Question, hits: Sequence[Hit]) -> int | None:
    """1-based rank of the first chunk holding an evidence string, or None."""
    wanted = [normalise(e) for e in question.evidence]
    for rank, hit in enumerate(hits, 1):
        text = normalise(hit.chunk.text)
        if any(w in text for w in wanted):
            return rank
    return None


@dataclass
class Scores:
    """Accumulated retrieval metrics of one group of questions."""

    n: int = 0
    hits: dict[int, int] = field(default_factory=lambda: {k: 0 for k in KS})
    reciprocal: float = 0.0
    unanswerable: int = 0
    refused: int = 0
    false_refused: int = 0  # answerable questions the retriever returned nothing for (a refusal gate fired)
    # characters of the first 5 hits of answerable questions: a longer passage holds evidence more easily, so the
    # hit rates are only comparable at a similar length (docs/EVAL.md "parent passages")
    top5_chars: int = 0
    top5_texts: int = 0

    def add(self, question: Question, rank: int | None, returned: int, top5_lengths: Sequence[int] = ()) -> None:
        if not question.answerable:
            self.unanswerable += 1
            self.refused += int(returned == 0)
            return
        self.n += 1
        self.top5_chars += sum(top5_lengths)
        self.top5_texts += len(top5_lengths)
        self.false_refused += int(returned == 0)
        for k in KS:
            self.hits[k] += int(rank is not None and rank <= k)
        self.reciprocal += 1.0 / rank if rank else 0.0

    def row(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"hit@{k}": round(self.hits[k] / self.n, 3) if self.n else None for k in KS}
        out["mrr"] = round(self.reciprocal / self.n, 3) if self.n else None
        out["n"] = self.n
        out["refusal"] = round(self.refused / self.unanswerable, 3) if self.unanswerable else None
        out["n_unanswerable"] = self.unanswerable
        out["false_refusal"] = round(self.false_refused / self.n, 3) if self.n else None
        out["chars@5"] = round(self.top5_chars / self.top5_texts) if self.top5_texts else None
        return out


def evaluate_retrieval(retriever: Any, questions: Sequence[Question], k: int = 10, mode: str | None = None,
                       out: Path | None = None) -> dict[str, dict[str, Any]]:
    """Score ``retriever`` on ``questions``; returns {"all": ..., "source:X": ..., "lang:zh": ...} metric rows."""
    groups: dict[str, Scores] = defaultdict(Scores)
    lines = []
    for question in questions:
        hits = retriever.search(question.question, top_k=k, mode=mode)
        rank = first_hit_rank(question, hits) if question.answerable else None
        for name in ("all", f"source:{question.group}", f"lang:{question.language}"):
            groups[name].add(question, rank, len(hits), [len(h.chunk.text) for h in hits[:5]])
        lines.append({"id": question.id, "rank": rank, "chunks": [
            {"text": h.chunk.text, "source": h.chunk.source, "page": h.chunk.page, "score": h.score} for h in hits]})
    if out is not None:
        Path(out).write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return {name: scores.row() for name, scores in sorted(groups.items())}


def bigram_recall(evidence: str, answer: str) -> float:
    """Share of the evidence's character bigrams (after normalising) that occur in the answer."""
    ev, ans = normalise(evidence), normalise(answer)
    grams = {ev[i: i + 2] for i in range(max(1, len(ev) - 1))}
    return sum(1 for g in grams if g in ans) / len(grams) if grams else 0.0


def _answer_sentences(text: str) -> list[tuple[str, list[int]]]:
    """(sentence without markers, the numbers it cites) for each sentence of an answer."""
    from rag.answer.cite import parse_citations, sentence_spans, strip_citations

    out = []
    for start, end in sentence_spans(text):
        sentence = text[start:end]
        if strip_citations(sentence).strip():
            out.append((strip_citations(sentence).strip(), [m.number for m in parse_citations(sentence)]))
    return out


_SENTENCE_ENDS = "。！？!?.；;…"  # punctuation that ends a sentence


def sentence_faults(answer: Any, index: Any) -> tuple[int, int, int]:
    """(sentences, fragments, headings) of an extractive answer: a fragment does not end with sentence punctuation
    or does not start at a sentence start of its source text (the cited chunk with its neighbours), unless it is a
    whole line of that text quoted as it is (a command line); a heading is a heading line of that text (or of the
    chunk's heading path) quoted as an answer sentence."""
    from rag.answer.sentences import is_heading_line, is_whole_sentence, normalise, parent_text, segment

    sentences = fragments = headings = 0
    for sentence, numbers in _answer_sentences(answer.text):
        chunks = [answer.hits[n - 1].chunk for n in numbers if 1 <= n <= len(answer.hits)]
        if not chunks:
            continue
        sentences += 1
        sources = [parent_text(c, index.neighbours(c) if index is not None else [])[0] for c in chunks]
        fragments += int(not any(is_whole_sentence(sentence, source) for source in sources))
        bare = normalise(sentence).rstrip(_SENTENCE_ENDS)
        # the source's sentences and their normalised text, each normalised once
        cut = [(s, normalise(s.text)) for source, c in zip(sources, chunks, strict=True)
               for s in segment(source, c.heading)]
        heading_lines = {n for s, n in cut if s.heading} | {
            normalise(h) for c in chunks for h in c.heading}
        # a short sentence its source ends with its own punctuation ("-r      递归复制整个目录。") is no heading that
        # the answer punctuated
        punctuated = normalise(sentence) in {n for s, n in cut if s.complete and s.text.endswith(tuple(_SENTENCE_ENDS))}
        # judged as its source writes it: the answer shows a run of spaces as one ("124    如果指定…" of an exit
        # status list), which can make an item look like a numbered heading line
        quoted = next((s.text for s, n in cut if n.rstrip(_SENTENCE_ENDS) == bare), sentence)
        headings += int(bare in heading_lines or not punctuated and is_heading_line(quoted.rstrip("。.")))
    return sentences, fragments, headings


def answer_row(counts: Counter[str]) -> dict[str, Any]:
    """One row of :func:`evaluate_answers` from its counts (all questions, or one source or language)."""
    def ratio(a: str, b: str) -> float | None:
        return round(counts[a] / counts[b], 3) if counts[b] else None

    return {"refusal_rate": ratio("refused_unanswerable", "unanswerable"),
            "false_refusal_rate": ratio("refused_answerable", "answerable"),
            "false_refusal_retrieved": ratio("refused_retrieved", "retrieved"), "n_retrieved": counts["retrieved"],
            "citation_precision": ratio("cited_ok", "cited"), "evidence_recall": ratio("recalled", "answerable"),
            "fragments": counts["fragments"], "headings": counts["headings"], "sentences": counts["sentences"],
            "n_answerable": counts["answerable"], "n_unanswerable": counts["unanswerable"]}


def evaluate_answers(pipeline: Any, questions: Sequence[Question], out: Path | None = None,
                     recall_threshold: float = 0.5) -> dict[str, Any]:
    """Run the full pipeline on every question and score refusals, citations, evidence recall and sentences.

    - refusal_rate: unanswerable questions that were refused;
    - false_refusal_rate: answerable questions that were refused;
    - citation_precision: citations (answerable questions) whose chunk contains an evidence string or whose
      citing sentence holds >= ``recall_threshold`` of an evidence string's character bigrams;
    - evidence_recall: answerable questions whose answer holds >= ``recall_threshold`` of an evidence string's
      character bigrams (verbatim for the extractive backend, paraphrase-tolerant for a language model);
    - fragments / headings: answer sentences that are not whole sentences of their source / are headings
      (:func:`sentence_faults`), out of ``sentences``;
    - false_refusal_retrieved: answerable questions refused although a retrieved chunk holds an evidence string
      (the answer's own share of false refusals; the rest are retrieval misses), out of ``n_retrieved``.

    The figures of all questions, and under ``groups`` the same per source folder (``source:man``) and per question
    language (``lang:zh``), as the retrieval report has them: a mean over a corpus hides the part it fails on.
    """
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    index = getattr(getattr(pipeline, "retriever", None), "index", None)
    index = index if hasattr(index, "neighbours") else None
    lines = []
    for question in questions:
        stream = pipeline.ask(question.question)
        stream.text()
        answer = stream.answer
        wanted = [normalise(e) for e in question.evidence]
        one: Counter[str] = Counter()
        rank: int | None = None
        cited_ok: dict[int, bool] = {}
        if not answer.refused:
            one["sentences"], one["fragments"], one["headings"] = sentence_faults(answer, index)
        if question.answerable:
            one["answerable"], one["refused_answerable"] = 1, int(answer.refused)
            rank = first_hit_rank(question, answer.hits)
            if rank is not None:
                one["retrieved"], one["refused_retrieved"] = 1, int(answer.refused)
            citing = _answer_sentences(answer.text)
            for citation in answer.citations:
                one["cited"] += 1
                said = " ".join(s for s, numbers in citing if citation.number in numbers)
                ok = any(w in normalise(citation.chunk.text) for w in wanted) or any(
                    bigram_recall(e, said) >= recall_threshold for e in question.evidence)
                one["cited_ok"] += int(ok)
                cited_ok[citation.number] = ok
            one["recalled"] = int(not answer.refused and any(
                bigram_recall(e, answer.text) >= recall_threshold for e in question.evidence))
        else:
            one["unanswerable"], one["refused_unanswerable"] = 1, int(answer.refused)
        for name in ("all", f"source:{question.group}", f"lang:{question.language}"):
            groups[name].update(one)
        assessment = getattr(stream, "assessment", None)
        coverage = assessment.coverage if assessment is not None else None
        cross = assessment.cross_language if assessment is not None else None
        similarity = assessment.similarity if assessment is not None else None
        semantic = assessment.semantic if assessment is not None else None
        probability = assessment.probability if assessment is not None else None
        lines.append({"id": question.id, "answer": answer.text, "refused": answer.refused, "coverage": coverage,
                      "cross_language": cross, "similarity": similarity, "semantic": semantic,
                      "probability": probability, "signals": assessment.signals if assessment is not None else {},
                      "answerable": question.answerable, "evidence_rank": rank, "citations": [
            {"n": c.number, "source": c.chunk.source, "page": c.chunk.page, "chunk_id": c.chunk.id,
             "supported": c.supported, "holds_evidence": cited_ok.get(c.number)} for c in answer.citations]})
    if out is not None:
        Path(out).write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    overall = groups.pop("all", Counter())
    return {**answer_row(overall), "groups": {name: answer_row(counts) for name, counts in sorted(groups.items())}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rag.eval", description="Evaluate retrieval on a questions file.")
    sub = parser.add_subparsers(dest="command", required=True)
    retrieval = sub.add_parser("retrieval", help="hit@k and MRR of the retriever")
    retrieval.add_argument("--index", default=None, help="index folder (default: index.dir)")
    retrieval.add_argument("--questions", required=True)
    retrieval.add_argument("--k", type=int, default=10)
    retrieval.add_argument("--out", default=None, help="write one JSON line per question with its chunks")
    retrieval.add_argument("--split", default=None, help="only questions of this split (tune / test)")
    retrieval.add_argument("--modes", default=None, help="compare modes, e.g. dense,bm25,hybrid")
    add_config_args(retrieval)
    answers = sub.add_parser("answers", help="refusals, citation precision and evidence recall of full answers")
    answers.add_argument("--index", default=None, help="index folder (default: index.dir)")
    answers.add_argument("--questions", required=True, action="append",
                         help="questions file (repeat the option to score several files together)")
    answers.add_argument("--out", default=None, help="write one JSON line per question with its answer")
    answers.add_argument("--split", default=None, help="only questions of this split (tune / test)")
    add_config_args(answers)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    from rag.answer.retrieve import Retriever
    from rag.index.reader import KnowledgeIndex

    cfg = config_from_args(args)
    files = args.questions if isinstance(args.questions, list) else [args.questions]
    questions = [q for path in files for q in read_questions(path, args.split)]
    if args.command == "answers":
        from rag.answer.pipeline import open_pipeline

        pipeline, fallback = open_pipeline(cfg, args.index)
        if fallback:
            print(fallback_note(fallback), file=sys.stderr)
        scores = evaluate_answers(pipeline, questions, Path(args.out) if args.out else None)
        groups = scores.pop("groups")
        columns = ["refusal_rate", "false_refusal_rate", "citation_precision", "evidence_recall", "n_answerable",
                   "n_unanswerable"]
        print(table([[name, *(row[c] for c in columns)] for name, row in {"all": scores, **groups}.items()],
                    ["group", "refusal", "false_refusal", "citation_precision", "evidence_recall", "n_answerable",
                     "n_unanswerable"]))
        print(json.dumps({"model": pipeline.model.info().model_id, **scores, "groups": groups}, ensure_ascii=False))
        print(" ".join(f"{k}={v}" for k, v in scores.items()))
        return 0
    retriever = Retriever(KnowledgeIndex.open(args.index or cfg.index.dir, cfg), cfg.retrieve)
    modes = args.modes.split(",") if args.modes else [None]
    result: dict[str, dict[str, Any]] = {}
    for mode in modes:
        label = retriever.effective_mode(mode)
        result = evaluate_retrieval(retriever, questions, args.k, mode, Path(args.out) if args.out and len(modes) == 1 else None)
        headers = ["group", *[f"hit@{k}" for k in KS], "mrr", "n", "refusal", "n_unanswerable", "false_refusal",
                   "chars@5"]
        print(f"mode: {label}")
        print(table([[name, *row.values()] for name, row in result.items()], headers))
        print(json.dumps({"mode": label, **result["all"]}))
    overall = result["all"]
    print(f"hit@5={overall['hit@5'] or 0:.3f} mrr={overall['mrr'] or 0:.3f} n={overall['n']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args()))
