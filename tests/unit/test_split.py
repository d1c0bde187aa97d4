"""rag.ingest.split: properties of the span splitter on generated mixed Chinese/English text, then worked examples."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rag.core.config import SplitConfig
from rag.core.errors import ConfigError
from rag.core.types import Chunk, Document, chunk_id
from rag.ingest.split import embedding_text, split_documents, split_spans

# ---------------------------------------------------------------------------------------------------- properties

CJK = "中文知识库问答检索文档分段句子模型向量数据"
PUNCT = list("。！？；，、,.!?;:") + ["。”", "）。", "...", "\u3000"]
_ASCII_WORD = st.text(alphabet="abcdefXYZ0123456789", min_size=1, max_size=14)
_TOKEN = st.one_of(
    st.text(alphabet=CJK, min_size=1, max_size=12),
    _ASCII_WORD,
    _ASCII_WORD.map(lambda w: f"http://{w}.com/a?b={w}"),
    st.sampled_from(PUNCT),
    st.sampled_from([" ", "  ", "\t", "\n", "\n\n", " \n \n "]),
)
TEXTS = st.lists(_TOKEN, max_size=80).map("".join)
SIZES = st.integers(min_value=1, max_value=60).flatmap(
    lambda size: st.tuples(st.just(size), st.integers(min_value=0, max_value=size - 1))
)
PROPERTY_SETTINGS = settings(derandomize=True, max_examples=300, deadline=None, database=None)
ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")


@PROPERTY_SETTINGS
@given(text=TEXTS, sizes=SIZES)
def test_spans_are_ordered_bounded_trimmed_and_at_most_chunk_size(text: str, sizes: tuple[int, int]) -> None:
    chunk_size, chunk_overlap = sizes
    spans = split_spans(text, chunk_size, chunk_overlap)
    for start, end in spans:
        assert 0 <= start < end <= len(text)
        assert end - start <= chunk_size
        piece = text[start:end]
        assert piece == piece.strip() and piece.strip()
    for (start_a, end_a), (start_b, end_b) in zip(spans, spans[1:], strict=False):
        assert start_a < start_b and end_a < end_b


@PROPERTY_SETTINGS
@given(text=TEXTS, sizes=SIZES)
def test_every_non_whitespace_character_is_in_a_chunk(text: str, sizes: tuple[int, int]) -> None:
    covered = [False] * len(text)
    for start, end in split_spans(text, *sizes):
        covered[start:end] = [True] * (end - start)
    missing = [i for i, char in enumerate(text) if not char.isspace() and not covered[i]]
    assert missing == []


@PROPERTY_SETTINGS
@given(text=TEXTS, sizes=SIZES)
def test_splitting_is_deterministic(text: str, sizes: tuple[int, int]) -> None:
    assert split_spans(text, *sizes) == split_spans(text, *sizes)


@PROPERTY_SETTINGS
@given(text=TEXTS, sizes=SIZES)
def test_no_word_shorter_than_chunk_size_is_cut(text: str, sizes: tuple[int, int]) -> None:
    chunk_size = sizes[0]
    inside_short_word = {
        pos
        for run in ALNUM_RUN.finditer(text)
        if run.end() - run.start() < chunk_size
        for pos in range(run.start() + 1, run.end())
    }
    for start, end in split_spans(text, *sizes):
        assert start not in inside_short_word, (text[start - 5 : start + 5], start)
        assert end not in inside_short_word, (text[end - 5 : end + 5], end)


@PROPERTY_SETTINGS
@given(text=TEXTS, sizes=SIZES)
def test_consecutive_chunks_overlap_by_at_most_chunk_overlap(text: str, sizes: tuple[int, int]) -> None:
    spans = split_spans(text, *sizes)
    for (_, end_a), (start_b, _) in zip(spans, spans[1:], strict=False):
        assert end_a - start_b <= sizes[1]


@PROPERTY_SETTINGS
@given(text=TEXTS, sizes=SIZES)
def test_chunk_text_is_the_document_slice(text: str, sizes: tuple[int, int]) -> None:
    chunk_size, chunk_overlap = sizes
    doc = Document(text=text, source="a.md")
    chunks = split_documents([doc], SplitConfig(chunk_size, chunk_overlap, min_chunk_chars=1), "sha")
    assert [(c.start, c.end) for c in chunks] == split_spans(text, chunk_size, chunk_overlap)
    assert all(c.text == text[c.start : c.end] for c in chunks)
    assert [c.position for c in chunks] == list(range(len(chunks)))


# ------------------------------------------------------------------------------------------------------ examples

SENTENCES = [
    "知识库问答系统先把文档切成小段。",
    "每一段都会被向量化并存入索引！",
    "用户提问时系统检索最相关的段落？",
    "然后语言模型根据这些段落生成回答；",
    "回答里的引用指向原始文件和页码。",
]
PARAGRAPH = "".join(SENTENCES)


def texts(text: str, spans: list[tuple[int, int]]) -> list[str]:
    return [text[start:end] for start, end in spans]


def test_chinese_paragraph_splits_at_sentence_ends_with_the_mark_on_its_sentence() -> None:
    pieces = texts(PARAGRAPH, split_spans(PARAGRAPH, 40, 0))
    assert "".join(pieces) == PARAGRAPH
    assert all(piece[-1] in "。！？；" for piece in pieces)
    assert not any(piece[0] in "。！？；" for piece in pieces)
    # greedy merging: as many whole sentences as fit in 40 characters
    assert pieces == [SENTENCES[0] + SENTENCES[1], SENTENCES[2] + SENTENCES[3], SENTENCES[4]]


def test_closing_quote_stays_with_its_sentence_end() -> None:
    text = "他说：“今天的索引已经建好了。”我们开始测试检索效果吧。"
    assert texts(text, split_spans(text, 20, 0)) == ["他说：“今天的索引已经建好了。”", "我们开始测试检索效果吧。"]


def test_paragraph_break_beats_a_later_sentence_end() -> None:
    text = "第一段很短。\n\n第二段有两句话。这是第二句。"
    assert texts(text, split_spans(text, 20, 0)) == ["第一段很短。", "第二段有两句话。这是第二句。"]


def test_clause_marks_split_a_sentence_too_long_for_a_chunk() -> None:
    text = "模型加载完成以后，系统读取配置文件，然后开始建立索引并写入磁盘。"
    pieces = texts(text, split_spans(text, 20, 0))
    assert pieces == ["模型加载完成以后，系统读取配置文件，", "然后开始建立索引并写入磁盘。"]


def test_english_splits_at_sentence_ends_then_spaces_and_keeps_urls_whole() -> None:
    text = "Install the package first. Then read https://example.com/docs/setup?lang=zh before indexing anything"
    pieces = texts(text, split_spans(text, 40, 0))
    assert pieces[0] == "Install the package first."
    assert "https://example.com/docs/setup?lang=zh" in pieces
    assert all(re.fullmatch(r"\S+( \S+)*", piece) for piece in pieces)  # every piece is whole words


def test_decimal_point_and_times_are_not_sentence_ends() -> None:
    text = "Version 3.14 ships at 12:30 today. Next one soon."
    assert texts(text, split_spans(text, 36, 0)) == ["Version 3.14 ships at 12:30 today.", "Next one soon."]


def test_overlap_starts_on_a_sentence_boundary_when_there_is_one() -> None:
    spans = split_spans(PARAGRAPH, 40, 20)
    pieces = texts(PARAGRAPH, spans)
    assert pieces[0] == SENTENCES[0] + SENTENCES[1]
    assert pieces[1].startswith(SENTENCES[1])  # the last whole sentence (15 characters) is repeated
    assert all(piece[0] not in "。！？；" for piece in pieces)


def test_overlap_falls_back_to_characters_without_a_boundary() -> None:
    text = "字" * 120
    assert split_spans(text, 50, 10) == [(0, 50), (40, 90), (80, 120)]


def test_word_longer_than_chunk_size_is_hard_cut() -> None:
    assert split_spans("a" * 1200, 500, 50) == [(0, 500), (450, 950), (900, 1200)]
    assert split_spans("x " + "b" * 30 + " y", 10, 0) == [(0, 1), (2, 12), (12, 22), (22, 32), (33, 34)]


def test_whitespace_only_and_empty_text_give_no_spans() -> None:
    assert split_spans("", 10, 2) == []
    assert split_spans(" \n\n\t\u3000 ", 10, 2) == []
    assert split_spans("  中文  ", 10, 2) == [(2, 4)]


@pytest.mark.parametrize(
    ("chunk_size", "chunk_overlap", "message"),
    [
        (0, 0, "split.chunk_size=0 must be at least 1, e.g. split.chunk_size=500"),
        (100, -1, "split.chunk_overlap=-1 must be 0 or more, e.g. split.chunk_overlap=50"),
        (100, 100, "split.chunk_overlap=100 must be smaller than split.chunk_size=100"),
        (50, 80, "split.chunk_overlap=80 must be smaller than split.chunk_size=50"),
    ],
)
def test_bad_sizes_raise_config_error_with_the_fix(chunk_size: int, chunk_overlap: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        split_spans("文本", chunk_size, chunk_overlap)
    assert str(info.value) == message
    with pytest.raises(ConfigError) as info:
        split_documents([], SplitConfig(chunk_size, chunk_overlap), "sha")
    assert str(info.value) == message


# ---------------------------------------------------------------------------------------------- split_documents


def pdf_pages() -> list[Document]:
    return [
        Document(text=PARAGRAPH, source="manual/guide.pdf", page=1, heading=("安装", "驱动")),
        Document(text="   \n\n  ", source="manual/guide.pdf", page=2),
        Document(text="第三页只有一句话。", source="manual/guide.pdf", page=3, heading=("附录",)),
    ]


def test_split_documents_numbers_chunks_across_the_file_and_keeps_metadata() -> None:
    chunks = split_documents(pdf_pages(), SplitConfig(chunk_size=40, chunk_overlap=0), "abc123")
    assert [c.position for c in chunks] == [0, 1, 2, 3]
    assert [c.page for c in chunks] == [1, 1, 1, 3]
    assert [c.heading for c in chunks] == [("安装", "驱动")] * 3 + [("附录",)]
    assert {c.source for c in chunks} == {"manual/guide.pdf"}
    assert [c.id for c in chunks] == [chunk_id("manual/guide.pdf", "abc123", i) for i in range(4)]
    assert chunks[3].text == "第三页只有一句话。" and (chunks[3].start, chunks[3].end) == (0, 9)
    docs = pdf_pages()
    for chunk in chunks:
        page = next(d for d in docs if d.page == chunk.page)
        assert page.text[chunk.start : chunk.end] == chunk.text


def test_chunk_ids_are_stable_and_differ_by_position_and_content_hash() -> None:
    cfg = SplitConfig(chunk_size=40, chunk_overlap=0)
    first = [c.id for c in split_documents(pdf_pages(), cfg, "sha-1")]
    assert first == [c.id for c in split_documents(pdf_pages(), cfg, "sha-1")]
    assert len(set(first)) == len(first)
    assert set(first).isdisjoint(c.id for c in split_documents(pdf_pages(), cfg, "sha-2"))
    assert all(0 <= chunk_id_ < 2**63 for chunk_id_ in first)


def test_min_chunk_chars_drops_short_chunks_and_positions_stay_dense() -> None:
    docs = [Document(text="短。\n\n这是一个足够长的句子。\n\n好", source="a.txt")]
    chunks = split_documents(docs, SplitConfig(chunk_size=12, chunk_overlap=0, min_chunk_chars=3), "sha")
    assert [c.text for c in chunks] == ["这是一个足够长的句子。"]
    assert chunks[0].position == 0 and chunks[0].id == chunk_id("a.txt", "sha", 0)


def test_split_documents_refuses_documents_of_several_files() -> None:
    docs = [Document(text="一。", source="a.txt"), Document(text="二。", source="b.txt")]
    with pytest.raises(ValueError, match=r"several files \['a.txt', 'b.txt'\]; call it once per file"):
        split_documents(docs, SplitConfig(), "sha")


def test_embedding_text_puts_the_heading_path_on_the_first_line() -> None:
    chunk = Chunk(id=1, text="安装驱动前先关闭电脑。", source="a.md", position=0, heading=("安装", "驱动 程序\n"))
    assert embedding_text(chunk) == "安装 > 驱动 程序\n安装驱动前先关闭电脑。"
    assert embedding_text(Chunk(id=1, text="正文", source="a.md", position=0)) == "正文"


# --------------------------------------------------------------------------------------------------- performance


def timed(text: str, chunk_size: int = 500, chunk_overlap: int = 50) -> tuple[list[tuple[int, int]], float]:
    started = time.perf_counter()
    spans = split_spans(text, chunk_size, chunk_overlap)
    return spans, time.perf_counter() - started


def test_one_megabyte_of_chinese_splits_in_well_under_two_seconds() -> None:
    text = ("\n\n".join([PARAGRAPH * 4, "，".join(SENTENCES) * 3]) + "\n\n") * 1800  # ~1 M characters, 3 MB UTF-8
    assert len(text.encode()) > 1_000_000
    spans, seconds = timed(text)
    assert seconds < 2.0
    assert len(spans) > len(text) // 500
    assert max(end - start for start, end in spans) <= 500


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("字" * 2_000_000, id="cjk-no-separators"),
        pytest.param("a" * 2_000_000, id="one-2MB-word"),
        pytest.param(" ".join(["retrieval", "augmented", "generation", "x"] * 140_000), id="english-words"),
        pytest.param(("." * 499 + "a") * 4000, id="dot-runs-that-end-no-sentence"),
        pytest.param("，" * 2_000_000, id="only-clause-marks"),
    ],
)
def test_two_megabyte_single_line_splits_in_linear_time(text: str) -> None:
    spans, seconds = timed(text)
    assert seconds < 5.0
    assert len(spans) >= len(text) // 500
    assert all(end - start <= 500 for start, end in spans)
    assert spans[-1][1] == len(text)
