"""The LangChain retriever: LangChain's own standard retriever suite (langchain-tests) over an index built here, and
what the suite does not cover (per-call mode and source filter, metadata keys, an ainvoke that leaves the loop free)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import RetrieversIntegrationTests

from rag.answer.retrieve import Retriever
from rag.core.config import load_config
from rag.embed.embedder import HashEmbedder
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder
from rag.lc import KnowledgeBaseRetriever
from tests.conftest import write_corpus

QUERY = "打印机驱动怎么装"


@pytest.fixture(scope="module")
def kb_retriever(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Retriever]:
    """The shared corpus indexed with the hash embedder, behind our Retriever (module-scoped: built once)."""
    root = tmp_path_factory.mktemp("lc")
    cfg = load_config(None, [f"index.dir={root / 'index'}", "embed.source=hash", "load.workers=1",
                             "split.chunk_size=120", "split.chunk_overlap=20"])
    sync_folder(write_corpus(root / "kb"), cfg, HashEmbedder())
    index = KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder())
    try:
        yield Retriever(index, cfg.retrieve)
    finally:
        index.close()


class TestStandardRetrieverSuite(RetrieversIntegrationTests):
    """langchain-tests' RetrieversIntegrationTests, unchanged (its own check forbids overriding a test)."""

    retriever_under_test: Retriever | None = None

    @pytest.fixture(autouse=True)
    def _index(self, kb_retriever: Retriever) -> None:
        type(self).retriever_under_test = kb_retriever  # the suite's properties take no fixtures

    @property
    def retriever_constructor(self) -> type[KnowledgeBaseRetriever]:
        return KnowledgeBaseRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"retriever": self.retriever_under_test}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


def test_per_call_k_overrides_the_constructor(kb_retriever: Retriever) -> None:
    lc = KnowledgeBaseRetriever(retriever=kb_retriever, k=2)
    assert len(lc.invoke(QUERY)) == 2
    assert len(lc.invoke(QUERY, k=1)) == 1
    assert len(asyncio.run(lc.ainvoke(QUERY, k=3))) == 3


def test_metadata_has_langchain_keys_and_ours(kb_retriever: Retriever) -> None:
    doc = KnowledgeBaseRetriever(retriever=kb_retriever).invoke(QUERY)[0]
    assert doc.metadata["source"] == "运维/打印机.txt" and "驱动" in doc.page_content
    assert {"source", "page", "heading", "chunk_id", "start", "end", "score", "dense_score", "bm25_score"} <= set(
        doc.metadata)
    assert doc.id == str(doc.metadata["chunk_id"]) and doc.metadata["page"] is None  # a text file has no pages


@pytest.mark.parametrize("keyword", ["mode", "search_type"])
def test_mode_per_call_and_in_the_constructor(kb_retriever: Retriever, keyword: str) -> None:
    lc = KnowledgeBaseRetriever(retriever=kb_retriever)
    bm25 = lc.invoke("WireGuard", **{keyword: "bm25"})
    assert bm25 and all(d.metadata["dense_score"] is None for d in bm25)
    dense = KnowledgeBaseRetriever(retriever=kb_retriever, mode="dense").invoke("WireGuard")
    assert dense and all(d.metadata["bm25_score"] is None for d in dense)
    assert lc.invoke("WireGuard", search_type="similarity")[0].metadata["bm25_score"] is None  # LangChain's name


def test_filter_by_source(kb_retriever: Retriever) -> None:
    lc = KnowledgeBaseRetriever(retriever=kb_retriever)
    docs = lc.invoke(QUERY, filter={"source": "hr/年假.md"})
    assert docs and {d.metadata["source"] for d in docs} == {"hr/年假.md"}
    fixed = KnowledgeBaseRetriever(retriever=kb_retriever, source="en/vpn.md").invoke(QUERY)
    assert fixed and {d.metadata["source"] for d in fixed} == {"en/vpn.md"}


def test_bad_arguments_name_the_value_and_the_choices(kb_retriever: Retriever) -> None:
    lc = KnowledgeBaseRetriever(retriever=kb_retriever)
    with pytest.raises(ValueError, match=r"^search_type='mmr' is not one of dense, bm25, hybrid, similarity$"):
        lc.invoke(QUERY, search_type="mmr")
    with pytest.raises(ValueError, match=r"^k=0 must be at least 1$"):
        lc.invoke(QUERY, k=0)
    with pytest.raises(ValueError, match=r"^filter keys \['author'\] are not supported: filter by 'source' only$"):
        lc.invoke(QUERY, filter={"author": "x"})
    with pytest.raises(TypeError, match=r"^unexpected keyword 'fetch_k': KnowledgeBaseRetriever takes k, mode, "
                                        r"search_type, source, filter$"):
        lc.invoke(QUERY, fetch_k=20)


def test_ainvoke_runs_the_search_off_the_event_loop(kb_retriever: Retriever) -> None:
    """A search that blocks (a slow index) must leave the loop free: a ticker keeps running meanwhile."""
    release = threading.Event()

    class Blocking:
        def search(self, query: str, **kwargs: Any) -> Any:
            assert release.wait(30), "the event loop never ran while the search blocked"
            return kb_retriever.search(query, **kwargs)

    async def main() -> list[Document]:
        task = asyncio.ensure_future(KnowledgeBaseRetriever(retriever=Blocking()).ainvoke(QUERY, k=1))
        await asyncio.sleep(0.01)  # the loop runs while the search waits in its thread
        release.set()
        return await asyncio.wait_for(task, 30)

    docs = asyncio.run(main())
    assert len(docs) == 1 and docs[0].metadata["source"] == "运维/打印机.txt"
