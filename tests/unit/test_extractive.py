"""The extractive backend: quotes supporting sentences with citations that pass verification, else refuses."""

from __future__ import annotations

import pytest

from rag.answer.cite import parse_citations, verify
from rag.answer.extractive import ExtractiveModel
from rag.answer.prompt import REFUSAL, build_messages
from rag.core.config import AnswerConfig
from rag.core.types import Chunk, Hit, Message
from rag.llm.base import ChatModel
from tests.conftest import CORPUS

HITS = [Hit(Chunk(i + 1, text, source, 0), 1.0 - i / 10) for i, (source, text) in enumerate(CORPUS.items())]
CFG = AnswerConfig()


def ask(model: ExtractiveModel, question: str, hits: list[Hit], cfg: AnswerConfig = CFG) -> tuple[list[str], list[Hit]]:
    prompt = build_messages(question, hits, [Message("user", "之前的问题")], cfg, model.count_tokens)
    return list(model.stream(prompt.messages, context=prompt.hits_used)), prompt.hits_used


@pytest.mark.parametrize(("question", "source", "expected"), [
    ("年假需要提前几天申请？", "hr/年假.md", "年假需提前三个工作日在 OA 系统中申请。"),
    ("磁盘空间不足怎么办", "运维/磁盘.md", "先用 df -h 查看各分区的使用率"),
    ("打印机的 IP 地址是多少", "运维/打印机.txt", "10.0.0.25"),
    ("What is the VPN gateway?", "en/vpn.md", "The VPN gateway is vpn.example.com on UDP port 51820."),
])
def test_answers_with_a_supported_citation(question: str, source: str, expected: str) -> None:
    model = ExtractiveModel()
    pieces, used = ask(model, question, HITS)
    text = "".join(pieces)
    assert expected in text
    numbers = {m.number for m in parse_citations(text)}
    assert numbers and all(1 <= n <= len(used) for n in numbers)
    assert used[parse_citations(text)[0].number - 1].chunk.source == source
    checked = verify(text, used, CFG.citation_min_overlap, drop_unsupported=True)
    assert checked.text == text and checked.removed == []  # nothing to drop: every sentence is a quote
    assert checked.citations and all(c.supported for c in checked.citations)


def test_streamed_pieces_join_to_the_answer() -> None:
    model = ExtractiveModel(piece_chars=5)
    pieces, used = ask(model, "年假需要提前几天申请？", HITS)
    assert len(pieces) > 2 and all(0 < len(p) <= 5 for p in pieces)
    assert "".join(pieces) == model.answer("年假需要提前几天申请？", used, "zh")


def test_refuses_on_empty_or_unrelated_context() -> None:
    model = ExtractiveModel()
    assert "".join(ask(model, "年假有几天？", [])[0]) == "根据知识库中的资料，无法回答这个问题。"
    assert "".join(ask(model, "How many days of leave?", [])[0]) == (
        "The knowledge base does not contain the answer to this question.")
    assert "".join(ask(model, "量子色动力学的渐近自由是什么", HITS)[0]) == REFUSAL["zh"]
    # the prompt's language wins over the question's: a Chinese question under language=en is refused in English
    assert "".join(ask(model, "年假有几天？", [], AnswerConfig(language="en"))[0]) == REFUSAL["en"]


def test_several_sentences_cite_their_own_hits_and_respect_the_limits() -> None:
    hits = [Hit(Chunk(1, "年假需提前三个工作日在 OA 系统中申请。年假制度由人事部解释。", "hr/a.md", 0), 0.9),
            Hit(Chunk(2, "病假需要提交医院证明，并在 OA 系统中登记。", "hr/b.md", 0), 0.8)]
    model = ExtractiveModel(max_sentences=2)
    text = model.answer("年假和病假在 OA 系统中怎么申请", hits)
    assert text == "年假需提前三个工作日在 OA 系统中申请。[1]病假需要提交医院证明，并在 OA 系统中登记。[2]"
    assert len(verify(text, hits, 0.25, True).citations) == 2
    long_hit = [Hit(Chunk(1, "年假申请" + "规则说明" * 200 + "。", "hr/c.md", 0), 1.0)]
    whole = ExtractiveModel(max_chars=50).answer("年假申请规则", long_hit)
    assert whole == long_hit[0].chunk.text + "[1]"  # a long sentence is quoted whole, never cut into a fragment
    assert verify(whole, long_hit, 0.25, True).text == whole


def test_duplicate_sentences_from_overlapping_chunks_are_quoted_once() -> None:
    sentence = "年假需提前三个工作日在 OA 系统中申请。"
    hits = [Hit(Chunk(1, "工作满一年的员工享受年假。" + sentence, "hr/a.md", 0), 0.9),
            Hit(Chunk(2, sentence + "年假不可跨年累计。", "hr/a.md", 1), 0.8)]
    text = ExtractiveModel().answer("年假需要提前几天在 OA 系统申请", hits)
    assert text.count(sentence) == 1 and text.startswith(sentence + "[1]")


def test_protocol_info_and_token_estimate() -> None:
    model: ChatModel = ExtractiveModel()
    assert model.info().backend == "extractive" and model.info().model_id == "extractive"
    assert model.context_window >= 100_000
    assert model.count_tokens("年假五天") == 4
    assert model.count_tokens("hello world") == 3  # ceil(2 × 1.3)
    assert model.count_tokens("年假 OA 系统。") == 6  # 4 CJK + 1.3 + 0.5 -> ceil(5.8)
    with pytest.raises(ValueError, match=r"^max_sentences=0 must be ≥ 1 and max_chars=400 ≥ 10$"):
        ExtractiveModel(max_sentences=0)
