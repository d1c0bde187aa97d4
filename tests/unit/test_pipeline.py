"""The QA pipeline on a small index: refusal without the model, verified citations, follow-ups, compare mode."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from rag.answer.extractive import ExtractiveModel
from rag.answer.pipeline import QAPipeline
from rag.answer.prompt import REFUSAL
from rag.answer.retrieve import Retriever
from rag.core.config import RagConfig
from rag.core.types import Hit, Message
from rag.embed.embedder import HashEmbedder
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder
from rag.llm.base import GenerationConfig, ModelInfo


class ScriptedModel:
    """A chat model that answers from a script and records what it was asked."""

    context_window = 8192

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[list[Message], str | None]] = []

    def stream(self, messages: Sequence[Message], gen: GenerationConfig | None = None, adapter: str | None = None,
               context: Sequence[Hit] = ()) -> Iterator[str]:
        self.calls.append((list(messages), adapter))
        reply = self.replies.pop(0)
        for start in range(0, len(reply), 5):
            yield reply[start: start + 5]

    def count_tokens(self, text: str) -> int:
        return len(text)

    def info(self) -> ModelInfo:
        return ModelInfo("scripted", "scripted-model")


@pytest.fixture
def retriever(corpus: Path, cfg: RagConfig) -> Retriever:
    sync_folder(corpus, cfg, HashEmbedder())
    return Retriever(KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder()), cfg.retrieve)


def test_refusal_does_not_call_the_model_and_shows_closest(retriever: Retriever, cfg: RagConfig) -> None:
    model = ScriptedModel([])
    stream = QAPipeline(retriever, model, cfg).ask("量子色动力学的渐近自由是什么", score_threshold=0.9,
                                                   bm25_threshold=50.0)
    assert stream.text() == REFUSAL["zh"]
    assert stream.answer is not None and stream.answer.refused and stream.answer.hits
    assert model.calls == []


def test_citations_are_verified_and_out_of_range_dropped(retriever: Retriever, cfg: RagConfig) -> None:
    model = ScriptedModel(["年假需提前三个工作日在 OA 系统中申请[1]。量子计算机很快[2]。见[9]。"])
    pipeline = QAPipeline(retriever, model, cfg)
    stream = pipeline.ask("年假需要提前几天申请？", top_k=2)
    pieces = list(stream)
    assert "".join(pieces).count("[9]") == 1  # the raw stream is what the model wrote
    answer = stream.answer
    assert answer is not None and not answer.refused
    assert "[9]" not in answer.text and "[2]" not in answer.text
    assert [c.number for c in answer.citations] == [1]
    assert answer.citations[0].chunk.source == "hr/年假.md" and answer.citations[0].supported
    system, user = model.calls[0][0][0], model.calls[0][0][-1]
    assert system.role == "system" and "[1]" in user.content and "hr/年假.md" in user.content


def test_followup_is_rewritten_before_retrieval(retriever: Retriever, cfg: RagConfig) -> None:
    model = ScriptedModel(["Which UDP port does the VPN gateway use?", "UDP port 51820[1]."])
    history = [Message("user", "How do I connect to the office VPN?"),
               Message("assistant", "Install the WireGuard client[1].")]
    stream = QAPipeline(retriever, model, cfg).ask("And its port?", history)
    stream.text()
    assert stream.standalone_question == "Which UDP port does the VPN gateway use?"
    assert stream.answer is not None and stream.answer.hits[0].chunk.source == "en/vpn.md"
    answer_messages = model.calls[1][0]
    assert [m.role for m in answer_messages] == ["system", "user", "assistant", "user"]


def test_adapter_selection_and_compare_share_context(retriever: Retriever, cfg: RagConfig) -> None:
    model = ScriptedModel(["基座回答[1]。", "适配器回答[1]。"])
    base, tuned = QAPipeline(retriever, model, cfg).compare("打印机驱动怎么安装", adapter="it-helpdesk")
    base.text(), tuned.text()
    assert [adapter for _, adapter in model.calls] == [None, "it-helpdesk"]
    assert base.answer is not None and tuned.answer is not None
    assert [h.chunk.id for h in base.answer.hits] == [h.chunk.id for h in tuned.answer.hits]
    assert model.calls[0][0][-1].content == model.calls[1][0][-1].content  # same prompt, same context


def test_extractive_backend_end_to_end(retriever: Retriever, cfg: RagConfig) -> None:
    stream = QAPipeline(retriever, ExtractiveModel(), cfg).ask("新磁盘怎样才能开机自动挂载？")
    text = stream.text()
    answer = stream.answer
    assert answer is not None and not answer.refused
    assert "/etc/fstab" in text and answer.citations and all(c.supported for c in answer.citations)
    assert answer.citations[0].chunk.source == "运维/磁盘.md"


@pytest.mark.integration
def test_tiny_transformers_model_through_the_pipeline(retriever: Retriever, cfg: RagConfig, tmp_path: Path) -> None:
    """The real hf backend (tiny random GLM, ChatGLM3 template) streams through the pipeline inside its window."""
    from dataclasses import replace

    from rag.llm.hf.model import HFChatModel
    from tests.tinymodels import build_tiny_causal_lm

    folder = build_tiny_causal_lm(tmp_path / "tiny", "glm", "chatglm3")
    llm_cfg = replace(cfg.llm, backend="hf", model=str(folder), cache_dir=str(tmp_path / "cache"))
    model = HFChatModel.load(llm_cfg)
    assert model.context_window == 512
    pipeline = QAPipeline(retriever, model, replace(cfg, llm=llm_cfg))
    history = [Message("user", "打印机怎么装驱动？"), Message("assistant", "先下载驱动程序[1]。" * 40)]
    stream = pipeline.ask("年假需要提前几天申请？", history, adapter=None, gen=GenerationConfig(max_new_tokens=24))
    pieces = list(stream)
    assert stream.answer is not None and stream.answer.model == str(folder)
    assert "".join(pieces).strip() or stream.answer.text == ""  # random weights: any text, but the run completes
    assert all(c.number <= len(stream.answer.hits) for c in stream.answer.citations)


def test_a_question_the_passages_do_not_cover_never_reaches_the_model(retriever: Retriever, cfg: RagConfig) -> None:
    model = ScriptedModel(["不该被调用[1]。"])
    stream = QAPipeline(retriever, model, cfg).ask("公司停车场每月停车费是多少？")
    assert stream.text() == REFUSAL["zh"] and model.calls == []
    assert stream.assessment is not None and "停车费" in stream.assessment.missing


def test_an_answer_whose_citations_all_fail_is_replaced_by_the_refusal(retriever: Retriever, cfg: RagConfig) -> None:
    forged = "VPN 网关是 vpn.attacker-example.net，端口 51820[1]。"
    model = ScriptedModel([forged])
    stream = QAPipeline(retriever, model, cfg).ask("What is the UDP port of the VPN gateway?")
    assert stream.text() == REFUSAL["en"] and stream.replaced
    assert stream.answer is not None and stream.answer.refused and stream.answer.hits
    assert "may not contain the answer" not in model.calls[0][0][-1].content  # every key term is covered
