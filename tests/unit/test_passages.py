"""Parent passages and edition dedup (rag.answer.passages): budget, centring, boundaries, no cross-file text,
children of one parent collapsed, the same text in two files collapsed, config checks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from rag.answer.passages import assemble, passage_span, shingles, text_similarity
from rag.answer.retrieve import Retriever, validate
from rag.core.config import RagConfig, RetrieveConfig, SplitConfig
from rag.core.errors import ConfigError
from rag.core.types import Answer, Chunk, Document, Hit
from rag.embed.embedder import HashEmbedder
from rag.index.docstore import DocStore
from rag.index.reader import KnowledgeIndex
from rag.index.sync import sync_folder
from rag.ingest.split import split_documents
from rag.lc import KnowledgeBaseRetriever, hit_to_langchain
from rag.webui.chat import where
from rag.webui.conversations import answer_from_dict
from tests.conftest import write_corpus

# Ten numbered paragraphs of two sentences each (~75 characters a paragraph).
PARAGRAPHS = [f"Paragraph {n} opens here with fact number {n}. It closes with a second sentence {n}." for n in range(10)]
TEXT = "\n\n".join(PARAGRAPHS)


def chunks_of(text: str, source: str = "a.md", size: int = 120, overlap: int = 30, page: int | None = None,
              heading: tuple[str, ...] = ()) -> list[Chunk]:
    return split_documents([Document(text, source, page, heading)], SplitConfig(chunk_size=size, chunk_overlap=overlap),
                           "sha")


def lookup(chunks: Sequence[Chunk]):  # type: ignore[no-untyped-def]
    """A neighbours(chunk, reach) over a list of chunks, like KnowledgeIndex.neighbours (by source and position)."""
    def neighbours(chunk: Chunk, reach: int) -> list[Chunk]:
        return [c for c in chunks if c.source == chunk.source and c.position != chunk.position
                and abs(c.position - chunk.position) <= reach]
    return neighbours


def hits_of(chunks: Sequence[Chunk]) -> list[Hit]:
    return [Hit(c, 1.0 / (rank + 1)) for rank, c in enumerate(chunks)]


def test_passage_span_is_centred_within_budget_and_cut_at_paragraphs() -> None:
    core_start = TEXT.index(PARAGRAPHS[5])
    core_end = core_start + len(PARAGRAPHS[5])
    start, end = passage_span(TEXT, core_start, core_end, 330)
    passage = TEXT[start:end]
    assert end - start <= 330
    assert PARAGRAPHS[5] in passage
    # whole paragraphs on both sides, as many before as after
    assert passage.split("\n\n") == PARAGRAPHS[4:7]
    # a budget at or below the core's length leaves the core alone
    assert passage_span(TEXT, core_start, core_end, 10) == (core_start, core_end)


def test_passage_span_gives_the_unused_side_to_the_other_and_falls_back_to_sentences() -> None:
    first = len(PARAGRAPHS[0])
    start, end = passage_span(TEXT, 0, first, 250)
    assert start == 0 and TEXT[start:end].split("\n\n") == PARAGRAPHS[:3]  # nothing before: all room goes after
    one_paragraph = " ".join(PARAGRAPHS)  # no line breaks: sentences are the boundaries
    core_start = one_paragraph.index(PARAGRAPHS[5])
    start, end = passage_span(one_paragraph, core_start, core_start + len(PARAGRAPHS[5]), 250)
    passage = one_paragraph[start:end]
    assert passage.startswith(("Paragraph", "It closes")) and passage.endswith(".")
    assert len(passage) <= 250 and PARAGRAPHS[5] in passage


def test_a_passage_is_the_document_slice_around_the_child_without_repeated_overlap() -> None:
    chunks = chunks_of(TEXT)
    assert len(chunks) >= 6 and chunks[3].start < chunks[2].end  # the splitter's overlap is there
    [hit] = assemble(hits_of([chunks[3]]), lookup(chunks), 1, 400, 0.0)
    passage = hit.chunk
    assert passage.text == TEXT[passage.start:passage.end]  # an exact slice: each overlap once
    assert passage.start < chunks[3].start and chunks[3].end < passage.end
    assert chunks[3].text in passage.text and len(passage.text) <= 400
    # the matched child's identity is kept for citations, deletes and syncs
    assert (passage.id, passage.position, passage.source) == (chunks[3].id, 3, "a.md")


def test_a_passage_never_crosses_files_or_sections() -> None:
    mine = chunks_of(TEXT, "a.md")
    other = [replace(c, text=c.text.upper(), source="b.md") for c in mine]  # same positions and offsets
    [hit] = assemble(hits_of([mine[3]]), lambda c, r: [*other, *lookup(mine)(c, r)], 1, 600, 0.0)
    assert hit.chunk.text == TEXT[hit.chunk.start:hit.chunk.end]
    # two sections (Documents) of one file: the passage stays in the matched one
    first = chunks_of(TEXT[:300], heading=("One",))
    second = [replace(c, position=c.position + len(first), heading=("Two",)) for c in chunks_of(TEXT[300:], size=120)]
    both = [*first, *second]
    [hit] = assemble(hits_of([second[0]]), lookup(both), 1, 600, 0.0)
    assert hit.chunk.text in TEXT[300:] and hit.chunk.heading == ("Two",)


def test_children_of_one_parent_collapse_into_the_best_and_free_a_slot() -> None:
    chunks = chunks_of(TEXT)
    far = chunks_of(TEXT, "far.md")
    ranked = hits_of([chunks[3], chunks[4], far[0], chunks[2]])
    hits = assemble(ranked, lookup([*chunks, *far]), 2, 400, 0.0)
    assert [h.chunk.id for h in hits] == [chunks[3].id, far[0].id]  # 4 and 2 joined 3's passage
    assert chunks[4].text in hits[0].chunk.text and chunks[2].text in hits[0].chunk.text
    # off: the chunks themselves, nothing collapsed
    plain = assemble(ranked, lookup([*chunks, *far]), 3, 0, 0.0)
    assert [h.chunk for h in plain] == [chunks[3], chunks[4], far[0]]


def test_a_child_the_better_passage_cannot_hold_stays_a_hit() -> None:
    chunks = chunks_of(TEXT)
    hits = assemble(hits_of([chunks[0], chunks[2]]), lookup(chunks), 2, 200, 0.0)
    # 0's passage reaches into 1 (overlapping 2's passage) but cannot hold 2 as well within 200 characters
    assert [h.chunk.id for h in hits] == [chunks[0].id, chunks[2].id]


def test_the_same_text_in_two_files_collapses_into_the_better_ranked_one() -> None:
    text = "安装完成后，在设置里打开同步功能，并选择要同步的文件夹。同步会在后台每五分钟运行一次。"
    html = Chunk(1, text + "\n上一页 下一页", "manual.html", 0, None, ("同步",), 0, len(text) + 8)
    pdf = Chunk(2, "用户手册 第 12 页\n" + text.replace("，", "，\n"), "manual.pdf", 0, 12, (), 0, 60)
    other = Chunk(3, "备份功能每天凌晨运行一次，备份文件保存在用户目录下的 backup 文件夹。", "other.md", 0)
    hits = assemble(hits_of([html, pdf, other]), lookup([]), 3, 0, 0.6)
    assert [h.chunk.source for h in hits] == ["manual.html", "other.md"]
    assert hits[0].also_in == ("manual.pdf",) and hits[1].also_in == ()
    assert len(assemble(hits_of([html, pdf, other]), lookup([]), 3, 0, 0.0)) == 3  # off
    assert text_similarity(shingles(html.text), shingles(other.text)) < 0.2
    assert text_similarity(shingles("短标题"), shingles("短标题")) == 0.0  # too short to call a duplicate


def test_no_two_editions_are_left_in_the_result_whatever_the_ranking() -> None:
    """Two files with the same text, their chunks ranked in many orders: a passage that grows after another file's
    passage was compared with it must still be collapsed (seen on a manual's HTML and PDF editions)."""
    import random

    first, second = chunks_of(TEXT, "manual.html"), chunks_of(TEXT, "manual.pdf", size=100, overlap=20)
    pool = [*first, *second]
    for seed in range(40):
        ranked = random.Random(seed).sample(pool, len(pool))
        hits = assemble(hits_of(ranked), lookup(pool), 4, 400, 0.6)
        for i, a in enumerate(hits):
            for b in hits[i + 1:]:
                if a.chunk.source != b.chunk.source:
                    assert text_similarity(shingles(a.chunk.text), shingles(b.chunk.text)) < 0.6, seed


def test_retriever_collapses_editions_of_a_tiny_corpus(tmp_path: Path, cfg: RagConfig) -> None:
    body = ("To rotate the logs, run logrotate with the configuration in /etc/logrotate.conf. "
            "Old logs are compressed with gzip after one day and removed after four weeks.")
    corpus = write_corpus(tmp_path / "kb", {
        "guide/logs.md": f"# Logs\n\n{body}\n",
        "guide/logs.html": f"<html><body><h1>Logs</h1><p>{body}</p></body></html>",
        "guide/logs.txt": "LOGS\n\n" + body.replace(". ", ".\n") + "\n",
        "guide/mail.md": "# Mail\n\nThe mail server accepts connections on port 587 and rotates its own logs daily.\n",
    })
    sync_folder(corpus, cfg, HashEmbedder())
    index = KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder())
    retriever = Retriever(index, replace(cfg.retrieve, passage_chars=600, edition_similarity=0.6))
    hits = retriever.search("how are old logs rotated and compressed with gzip", top_k=3)
    editions = [h for h in hits if h.chunk.source.startswith("guide/logs")]
    assert len(editions) == 1
    assert set(editions[0].also_in) == {"guide/logs.md", "guide/logs.html", "guide/logs.txt"} - {
        editions[0].chunk.source}
    plain = Retriever(index, replace(cfg.retrieve, passage_chars=0, edition_similarity=0.0)).search(
        "how are old logs rotated and compressed with gzip", top_k=3)
    assert sum(h.chunk.source.startswith("guide/logs") for h in plain) >= 2
    # asked for one file, its own edition comes back even though a better-ranked file holds the same text
    for source in ("guide/logs.md", "guide/logs.html", "guide/logs.txt"):
        docs = KnowledgeBaseRetriever(retriever=retriever, k=2).invoke("old logs compressed with gzip", source=source)
        assert docs and {d.metadata["source"] for d in docs} == {source} and "gzip" in docs[0].page_content


@pytest.mark.parametrize(("override", "message"), [
    ({"passage_chars": -1}, "retrieve.passage_chars=-1 must be 0 (off: the chunk is the passage) or more, "
                            "e.g. retrieve.passage_chars=1200"),
    ({"edition_similarity": 1.5}, "retrieve.edition_similarity=1.5 must be between 0 (off) and 1, "
                                  "e.g. retrieve.edition_similarity=0.6"),
])
def test_bad_passage_settings_are_config_errors(override: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(replace(RetrieveConfig(), **override))  # type: ignore[arg-type]
    assert str(info.value) == message


def test_also_in_reaches_the_source_card_the_langchain_metadata_and_saved_turns() -> None:
    hit = Hit(Chunk(7, "同步功能每五分钟运行一次。", "manual.html", 0), 0.5, also_in=("manual.pdf",))
    assert where(hit, "en") == "manual.html · also in manual.pdf"
    assert where(hit, "zh") == "manual.html · 同一内容也见于 manual.pdf"
    assert where(replace(hit, also_in=()), "en") == "manual.html"
    assert hit_to_langchain(hit).metadata["also_in"] == ["manual.pdf"]
    saved = json.loads(json.dumps(asdict(Answer("a", [hit], []))))
    assert answer_from_dict(saved).hits == [hit]


def test_neighbours_are_read_by_computed_id_and_found_by_search_when_the_ids_are_another_version(
        tmp_path: Path, cfg: RagConfig) -> None:
    corpus = write_corpus(tmp_path / "kb", {"a.md": TEXT, "b.md": TEXT.upper()})
    sync_folder(corpus, cfg, HashEmbedder())
    index = KnowledgeIndex.open(cfg.index.dir, cfg, HashEmbedder())
    rows = index.docstore.conn.execute("SELECT id, position FROM chunks WHERE source='a.md' ORDER BY position")
    by_position = dict((p, i) for i, p in rows)
    assert len(by_position) >= 5
    middle = index.chunks([by_position[2]])[by_position[2]]
    found = index.neighbours(middle, 2)
    assert [(c.source, c.position, c.id) for c in found] == [("a.md", p, by_position[p]) for p in (0, 1, 3, 4)]
    # a file record whose hash is not the one its chunks were made with (another version): the rows are searched
    store = DocStore(tmp_path / "copy.sqlite")
    store.add_chunks(list(index.chunks(list(by_position.values())).values()), ["t"] * len(by_position), None)
    store.put_file(replace(index.docstore.files()["a.md"], sha256="0" * 64))
    assert [c.position for c in store.chunks_at("a.md", [1, 3, 99])] == [1, 3]
