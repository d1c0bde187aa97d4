"""Block rescoring: the chunk whose single block holds the question's words moves up; the chunk is what is returned."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rag.answer.blocks import best_block_weight, rerank_by_blocks
from rag.answer.retrieve import Retriever
from rag.core.config import RagConfig
from rag.embed.embedder import HashEmbedder
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder
from tests.conftest import write_corpus

WEIGHTS = {"count": 2.0, "退出": 3.0, "packets": 1.0}


def test_the_best_block_counts_each_term_once_and_only_inside_one_block() -> None:
    apart = "-c count count count\n\n-x 退出 退出"  # the words are in different blocks
    together = "-v verbose\n\n-c 收到 count 报文后退出"
    assert best_block_weight(apart, WEIGHTS) == 3.0
    assert best_block_weight(together, WEIGHTS) == 5.0
    assert best_block_weight("nothing here", WEIGHTS) == 0.0


def test_a_chunk_holding_the_words_in_one_block_passes_chunks_that_scatter_them() -> None:
    texts = {1: "-c count\n\n-x 退出", 2: "-n 不解析 count", 3: "-q quiet\n\n-c count packets 退出"}
    ranking = [(1, 0.9), (2, 0.8), (3, 0.7)]
    reordered = rerank_by_blocks(ranking, texts, WEIGHTS, rrf_k=10, block_weight=0.5)
    assert [i for i, _ in reordered] == [1, 3, 2]
    assert all(a[1] >= b[1] for a, b in zip(reordered, reordered[1:], strict=False))
    assert [i for i, _ in rerank_by_blocks(ranking, texts, WEIGHTS, rrf_k=10, block_weight=0.0)] == [1, 2, 3]
    assert [i for i, _ in rerank_by_blocks(ranking, {1: texts[1], 3: texts[3]}, WEIGHTS, 10, 0.5)] == [1, 3]


MAN_PAGES = {  # each file is one chunk; only tcpdump's -c block holds 报文, 数量 and 退出 together
    "a.txt": "报文 报文 报文 数量 数量\n\n退出 退出 退出",
    "b.txt": "数量 数量 报文 报文\n\n退出 退出 参数",
    "tcpdump.txt": "-A 以 ASCII 打印每个报文头部\n\n-c 收到指定数量的报文后退出\n\n-e 打印链路层头部信息",
    "d.txt": "报文 数量\n\n退出",
}


def test_the_retriever_moves_the_answering_option_up(tmp_path: Path, cfg: RagConfig) -> None:
    sync_folder(write_corpus(tmp_path / "man", MAN_PAGES), cfg, HashEmbedder())
    index = KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder())
    question = "数量 报文 退出"
    ranks = {}
    for weight in (0.0, 0.5):
        retriever = Retriever(index, replace(cfg.retrieve, bridge="", unknown_name_min_chars=0, block_weight=weight))
        hits = retriever.search(question, top_k=5, mode="bm25")
        ranks[weight] = next(r for r, h in enumerate(hits, 1) if h.chunk.source == "tcpdump.txt")
    assert ranks[0.5] < ranks[0.0], ranks
