"""rag.cli.eval on a small index: hit@k / MRR / refusal and full-answer scores, via the real CLI entry points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.cli import eval as rag_eval
from rag.core.config import RagConfig
from rag.core.errors import RagError
from rag.embed.embedder import HashEmbedder
from rag.index.sync import sync_folder

QUESTIONS = [
    {"id": "q1", "question": "新磁盘怎样才能开机自动挂载？", "evidence": ["写入 /etc/fstab"], "source": "运维/磁盘.md"},
    {"id": "q2", "question": "VPN 用哪个 UDP 端口？", "evidence": ["UDP port 51820"], "source": "en/vpn.md"},
    {"id": "q3", "question": "工作十五年有几天年假？", "evidence": ["年假十天"], "source": "hr/年假.md"},
    {"id": "q4", "question": "火星基地的氧气配额是多少？", "evidence": [], "source": ""},
]


@pytest.fixture
def setup(corpus: Path, cfg: RagConfig, tmp_path: Path) -> tuple[Path, list[str]]:
    sync_folder(corpus, cfg, HashEmbedder())
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    return questions, ["embed.source=hash", f"index.dir={cfg.index.dir}"]


def test_retrieval_cli_prints_metrics_and_writes_chunks(setup: tuple[Path, list[str]], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    questions, overrides = setup
    out = tmp_path / "results.jsonl"
    args = rag_eval.parse_args(["retrieval", "--questions", str(questions), "--k", "5", "--out", str(out),
                                "retrieve.bm25_threshold=2.5", "retrieve.score_threshold=0.2",
                                "answer.cross_language_min_dense=0", *overrides])  # hash vectors: names decide
    assert rag_eval.main(args) == 0
    capsys_lines = capsys.readouterr().out.strip().splitlines()
    last = capsys_lines[-1]
    assert last.startswith("hit@5=") and last.endswith("n=3")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["q1", "q2", "q3", "q4"]
    assert rows[0]["chunks"][0]["source"] == "运维/磁盘.md" and rows[0]["rank"] == 1
    assert {"text", "source", "page", "score"} <= set(rows[0]["chunks"][0])
    # chars@5: the mean length of the first 5 texts returned for the answerable questions
    answerable = [len(c["text"]) for r in rows if r["id"] != "q4" for c in r["chunks"][:5]]
    summary = json.loads(capsys_lines[-2])
    assert summary["chars@5"] == round(sum(answerable) / len(answerable))


def test_scores_are_computed_from_ranks(setup: tuple[Path, list[str]]) -> None:
    class Fixed:  # a retriever that returns nothing: every answerable question misses, every other is refused
        def search(self, question: str, top_k: int, mode: str | None) -> list[object]:
            return []

    result = rag_eval.evaluate_retrieval(Fixed(), rag_eval.read_questions(setup[0]), k=5)
    assert result["all"]["hit@5"] == 0.0 and result["all"]["mrr"] == 0.0 and result["all"]["refusal"] == 1.0
    assert result["all"]["false_refusal"] == 1.0  # the answerable ones got nothing back either
    assert result["lang:zh"]["n"] == 3


def test_answers_cli_with_extractive_backend(setup: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    questions, overrides = setup
    out = tmp_path / "answers.jsonl"
    args = rag_eval.parse_args(["answers", "--questions", str(questions), "--out", str(out), "llm.backend=extractive",
                                "retrieve.bm25_threshold=2.5", "retrieve.score_threshold=0.2",
                                "answer.cross_language_min_dense=0", *overrides])  # hash vectors: names decide
    assert rag_eval.main(args) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-2])
    assert scores["n_answerable"] == 3 and scores["n_unanswerable"] == 1
    assert scores["citation_precision"] is not None and scores["citation_precision"] > 0
    # q3 needs arithmetic over ranges (十五年 in 满十年不满二十年): the term-coverage decision refuses it
    assert scores["evidence_recall"] >= 0.33 and scores["refusal_rate"] == 1.0
    assert scores["fragments"] == 0 and scores["headings"] == 0 and scores["sentences"] >= 1  # q1's answer
    # the same figures per question language and per source folder, as the retrieval report has them
    groups = scores["groups"]
    assert sum(row["n_answerable"] for name, row in groups.items() if name.startswith("lang:")) == 3
    assert sum(row["n_answerable"] for name, row in groups.items() if name.startswith("source:")) == 3
    assert groups["source:(unanswerable)"] == {**groups["source:(unanswerable)"], "refusal_rate": 1.0,
                                               "n_unanswerable": 1, "n_answerable": 0}
    # per question: where the evidence was retrieved, and whether each citation's chunk (or sentence) holds it
    rows = {r["id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert rows["q1"]["evidence_rank"] == 1 and not rows["q1"]["refused"]
    assert rows["q1"]["citations"] and all(c["holds_evidence"] is True for c in rows["q1"]["citations"])
    assert rows["q4"]["evidence_rank"] is None and rows["q4"]["citations"] == []
    cited = sum(len(r["citations"]) for r in rows.values() if r["answerable"])
    held = sum(bool(c["holds_evidence"]) for r in rows.values() if r["answerable"] for c in r["citations"])
    assert round(held / cited, 3) == scores["citation_precision"]


def test_bad_questions_file_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "x", "evidence": []}\n{"question": "no id"}\n', encoding="utf-8")
    with pytest.raises(RagError, match=r"bad.jsonl:2: not a question object"):
        rag_eval.read_questions(bad)


def test_questions_file_variants_read_safely(tmp_path: Path) -> None:
    """A BOM, one evidence string instead of a list, and blank evidence (which would match every chunk)."""
    path = tmp_path / "q.jsonl"
    rows = [{"id": 1, "question": "年假几天？", "evidence": "提前三天"}, {"id": "u", "question": "食堂几点开？"}]
    path.write_text("\ufeff" + "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    first, second = rag_eval.read_questions(path)
    assert first.evidence == ("提前三天",) and first.id == "1" and first.answerable
    assert second.evidence == () and not second.answerable
    path.write_text(json.dumps({"id": "b", "question": "x", "evidence": ["ok", " \n"]}) + "\n", encoding="utf-8")
    with pytest.raises(RagError, match=r"q.jsonl:1: evidence must be non-blank strings"):
        rag_eval.read_questions(path)


def test_a_short_sentence_punctuated_in_its_source_is_no_heading_but_a_punctuated_heading_is() -> None:
    from rag.core.types import Answer, Chunk, Hit

    page = Chunk(1, "       -p     保留文件的修改时间。\n\n       -r      递归复制整个目录。\n\n6. Error codes\n"
                    "When the thermostat detects a problem, it shows an error code.", "man/scp.1.txt", 0)
    hits = [Hit(page, 1.0)]
    assert rag_eval.sentence_faults(Answer("-r      递归复制整个目录。[1]", hits), None) == (1, 0, 0)
    assert rag_eval.sentence_faults(Answer("6. Error codes.[1]", hits), None)[2] == 1


def test_an_item_shown_with_its_spaces_collapsed_is_judged_as_its_source_writes_it() -> None:
    """The answer shows "124    如果指定…选项" (an exit status list item, no full stop in the man page) as "124 如果…
    选项。"; with one space it looks like a numbered heading line, as its source writes it it does not."""
    from rag.core.types import Answer, Chunk, Hit

    page = Chunk(1, "退出状态\n       124    如果指定“命令”超时，且未指定 --preserve-status 选项\n\n"
                    "       125    如果 timeout 命令本身出错\n", "man/timeout.1.txt", 0)
    hits = [Hit(page, 1.0)]
    shown = "124 如果指定“命令”超时，且未指定 --preserve-status 选项。[1]"
    assert rag_eval.sentence_faults(Answer(shown, hits), None) == (1, 0, 0)
    assert rag_eval.sentence_faults(Answer("退出状态。[1]", hits), None)[2] == 1  # a heading stays one
