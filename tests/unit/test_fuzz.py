"""Property-based fuzzing (hypothesis, deterministic) of the parsers of untrusted text.

Whatever the input, each function either returns or raises one of the project's typed errors (rag.core.errors.RagError
and its subclasses: ConfigError, LoadError, DataError ...). Any other exception is a bug to fix in the code, not
here. The runs are derandomized (same examples every time, no example database), so a failure reproduces.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.answer.cite import MARKER, parse_citations, verify
from rag.answer.prompt import build_messages, defang
from rag.core.config import AnswerConfig, RagConfig, SplitConfig, apply_overrides, load_config, parse_override
from rag.core.errors import ConfigError, RagError
from rag.core.types import Chunk, Document, Hit, Message
from rag.ingest.parsers.text import decode_text
from rag.ingest.split import split_documents, split_spans

FUZZ = settings(derandomize=True, database=None, max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# Characters that matter to the code under test: CJK text and punctuation, brackets of every width, role-tag pieces,
# YAML syntax, whitespace and control characters, surrogate-free astral characters.
INTERESTING = "中文。，！？；：“”「」【】［］[]()（）<>＜＞|｜/\\-–~～、,;:.=#*`'\"\n\r\t \x00\x0b\x0c\u200b\u202e\ufeff𝔘"
text_strategy = st.text(alphabet=st.one_of(st.sampled_from(INTERESTING), st.characters(codec="utf-8")), max_size=400)


def only_rag_errors(call: Callable[[], Any]) -> Any:
    """Run ``call``; a RagError is an allowed outcome (returns None), anything else propagates and fails the test."""
    try:
        return call()
    except RagError:
        return None


# --- the splitter -----------------------------------------------------------------------------------------------------


@FUZZ
@given(text=text_strategy, chunk_size=st.integers(-5, 300), chunk_overlap=st.integers(-5, 300))
def test_split_spans_never_raises_outside_config_error(text: str, chunk_size: int, chunk_overlap: int) -> None:
    spans = only_rag_errors(lambda: split_spans(text, chunk_size, chunk_overlap))
    if spans is None:
        assert not (chunk_size >= 1 and 0 <= chunk_overlap < chunk_size)  # refused only for bad settings
        return
    for start, end in spans:
        assert 0 <= start < end <= len(text) and end - start <= chunk_size


@FUZZ
@given(texts=st.lists(text_strategy, max_size=4), chunk_size=st.integers(1, 200), overlap=st.integers(0, 199),
       min_chars=st.integers(-2, 20), page=st.one_of(st.none(), st.integers(-3, 5000)))
def test_split_documents_gives_dense_positions_or_a_config_error(texts: list[str], chunk_size: int, overlap: int,
                                                                 min_chars: int, page: int | None) -> None:
    docs = [Document(text, "a/b.md", page, ("标题", "节"), {"parser": "fuzz"}) for text in texts]
    cfg = SplitConfig(chunk_size=chunk_size, chunk_overlap=overlap, min_chunk_chars=min_chars)
    chunks = only_rag_errors(lambda: split_documents(docs, cfg, "0" * 64))
    if chunks is not None:
        assert [c.position for c in chunks] == list(range(len(chunks)))
        assert len({c.id for c in chunks}) == len(chunks)


# --- text decoding (encoding detection) -------------------------------------------------------------------------------


def _encoded(text: str) -> list[bytes]:
    out = []
    for codec in ("utf-8", "utf-16", "gb18030", "big5", "utf-8-sig", "utf-32"):
        with contextlib.suppress(UnicodeEncodeError):
            out.append(text.encode(codec))
    return out


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), text_strategy.map(lambda t: _encoded(t)[0]),
                      st.tuples(text_strategy, st.integers(0, 5)).map(lambda p: _encoded(p[0])[p[1] % len(_encoded(p[0]))]),
                      st.lists(st.binary(max_size=40), max_size=8).map(lambda parts: b"\n".join(parts))))
def test_decode_text_returns_text_or_a_load_error(data: bytes) -> None:
    result = only_rag_errors(lambda: decode_text(data))
    if result is not None:
        text, encoding = result
        assert isinstance(text, str) and encoding


@FUZZ
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=200))
def test_valid_utf8_text_decodes_to_itself(text: str) -> None:
    assert decode_text(text.encode("utf-8")) == (text, "utf-8")


# --- the config override parser ----------------------------------------------------------------------------------------

KEYS = ["retrieve.top_k", "split.chunk_size", "split.chunk_overlap", "load.timeout_s", "embed.source", "llm.model",
        "answer.language", "load.skip_patterns", "index.dir", "store.kind", "retrieve", "load", "x.y", "a", "llm.adapter"]
yaml_values = st.one_of(
    st.sampled_from(["8", "-1", "1e309", "nan", ".inf", "true", "no", "~", "null", "[a, b]", "{a: 1}", "[", "{",
                     "!!python/object:os.system", "2026-01-01", "0x1F", "1_000", "'quoted'", '"x', "*alias", "&a [1]",
                     "[[[[[[[[[[", "- a", ": :", "|", "? x", "%YAML 1.2", "\t", "\x00", "中文", "0o17", "!!binary AAAA"]),
    text_strategy,
)
override_strategy = st.one_of(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), yaml_values), text_strategy)


@FUZZ
@given(text=override_strategy)
def test_parse_override_returns_a_key_path_or_a_config_error(text: str) -> None:
    parsed = only_rag_errors(lambda: parse_override(text))
    if parsed is not None:
        parts, _ = parsed
        assert parts and all(parts)


@FUZZ
@given(overrides=st.lists(override_strategy, max_size=5))
def test_load_config_with_any_overrides_gives_a_config_or_a_config_error(overrides: list[str]) -> None:
    cfg = only_rag_errors(lambda: load_config(None, overrides))
    assert cfg is None or isinstance(cfg, RagConfig)
    merged = only_rag_errors(lambda: apply_overrides({"retrieve": {"top_k": 5}, "llm": "x"}, overrides))
    assert merged is None or isinstance(merged, dict)


def test_deeply_nested_yaml_override_is_a_config_error_not_a_crash() -> None:
    for value in ("[" * 5000, "[" * 5000 + "]" * 5000, "{a: " * 3000 + "1" + "}" * 3000):
        with pytest.raises(ConfigError, match="nests lists or mappings too deeply"):
            load_config(None, ["load.skip_patterns=" + value])


# --- citations -----------------------------------------------------------------------------------------------------------

marker_text = st.lists(st.one_of(text_strategy.map(lambda t: t[:40]),
                                 st.from_regex(r"[\[［【] ?\d{1,4}(?: ?[,，、;；\-–~～] ?\d{1,4}){0,3} ?[\]］】]", fullmatch=True)),
                       max_size=12).map("".join)


def _hits(texts: list[str]) -> list[Hit]:
    return [Hit(Chunk(id=1000 + i, text=text, source=f"d{i}.md", position=i), score=1.0) for i, text in enumerate(texts)]


@FUZZ
@given(answer=marker_text, chunk_texts=st.lists(text_strategy, max_size=5), min_overlap=st.floats(0, 1),
       drop=st.booleans())
def test_citations_parse_and_verify_only_ever_cite_real_hits(answer: str, chunk_texts: list[str], min_overlap: float,
                                                             drop: bool) -> None:
    for marker in parse_citations(answer):
        assert answer[marker.start:marker.end].strip() and marker.number >= 0
    hits = _hits(chunk_texts)
    result = verify(answer, hits, min_overlap=min_overlap, drop_unsupported=drop)
    ids = {hit.chunk.id for hit in hits}
    assert all(c.chunk.id in ids and 1 <= c.number <= len(hits) for c in result.citations)
    assert all(1 <= marker.number <= len(hits) for marker in parse_citations(result.text))
    assert set(result.quotes) <= {c.number for c in result.citations}


def test_a_marker_with_a_sentence_separator_inside_is_verified_whole() -> None:
    """"[1;9]": the ";" ends no sentence, so the out-of-range 9 is removed like any other (it used to survive)."""
    hits = _hits(["员工每年享受五天带薪年假。"])
    result = verify("员工每年享受五天带薪年假[1;9]。年假需要提前申请[1，\n7]。", hits)
    assert result.text == "员工每年享受五天带薪年假[1]。年假需要提前申请。"  # the 2nd [1] is unsupported: dropped
    assert result.removed == [9, 1, 7]


# --- prompts ---------------------------------------------------------------------------------------------------------------


@FUZZ
@given(text=text_strategy)
def test_defang_leaves_no_role_tag_or_fence(text: str) -> None:
    out = defang(text)
    assert "<|" not in out and "|>" not in out and ">>>" not in out and "<<<" not in out


@FUZZ
@given(question=text_strategy, chunk_texts=st.lists(text_strategy, max_size=4),
       history=st.lists(st.tuples(st.sampled_from(["user", "assistant", "system"]), text_strategy), max_size=4),
       context_tokens=st.integers(-10, 400), history_tokens=st.integers(-10, 200),
       language=st.sampled_from(["auto", "zh", "en"]))
def test_build_messages_quotes_passages_inside_their_fences(question: str, chunk_texts: list[str],
                                                            history: list[tuple[str, str]], context_tokens: int,
                                                            history_tokens: int, language: str) -> None:
    cfg = AnswerConfig(language=language, context_tokens=context_tokens, history_tokens=history_tokens)
    messages = [Message(role, content) for role, content in history]  # type: ignore[arg-type]
    prompt = only_rag_errors(lambda: build_messages(question, _hits(chunk_texts), messages, cfg, count_tokens=len))
    if prompt is None:
        return
    user = prompt.messages[-1].content
    assert prompt.messages[0].role == "system" and prompt.messages[-1].role == "user"
    for number in range(1, len(prompt.hits_used) + 1):  # each fence opened and closed exactly once
        assert user.count(f"<<<passage {number}\n") == 1 and user.count(f"\npassage {number}>>>") == 1
    bodies = re.findall(r"<<<passage (\d+)\n(.*?)\npassage \1>>>", user, flags=re.S)
    assert len(bodies) == len(prompt.hits_used)
    for _, body in bodies:  # passage text carries no citation marker, role tag or fence of its own
        assert not MARKER.search(body) and "<|" not in body and ">>>" not in body and "<<<" not in body


# --- finetune data converters -------------------------------------------------------------------------------------------

json_keys = st.one_of(st.sampled_from(["instruction", "input", "output", "system", "history", "conversations",
                                       "messages", "from", "value", "role", "content", "rating", "question", "answer",
                                       "correction", "citations", "number", "quote", "source", "page", "id", "summary",
                                       "Context", "Response", "human", "gpt"]), st.text(max_size=8))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False, allow_infinity=False),
              st.sampled_from(["human", "gpt", "user", "assistant", "system", "observation", "up", "down", ""]),
              text_strategy.map(lambda t: t[:60])),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(json_keys, children, max_size=5)),
    max_leaves=20,
)
records = st.lists(st.one_of(st.dictionaries(json_keys, json_values, max_size=6), json_values), min_size=1, max_size=4)


# Malformed training records must be reported as bad records, never raise (these two once did).
@pytest.mark.parametrize(("formatting", "row"), [
    ("feedback", None),
    ("feedback", [1]),
    ("sharegpt", {"conversations": [{"from": ["human"], "value": "问"}, {"from": "gpt", "value": "答"}]}),
    ("auto", {"messages": [{"role": {"a": 1}, "content": "问"}, {"role": "assistant", "content": "答"}]}),
])
def test_finetune_bad_records_are_reported_not_raised(formatting: str, row: Any, tmp_path: Path) -> None:
    data = pytest.importorskip("finetune.data.load")
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    result = data.load_conversations([data.DatasetSpec("bad", path, formatting)])
    assert len(result.bad) == 1 and not result.conversations


@FUZZ
@given(rows=records, formatting=st.sampled_from(["auto", "alpaca", "sharegpt", "advertisegen", "counselling",
                                                 "feedback"]), as_array=st.booleans(), context=st.sampled_from(["quotes", "none"]))
def test_finetune_converters_return_conversations_or_typed_errors(rows: list[Any], formatting: str, as_array: bool,
                                                                  context: str) -> None:
    data = pytest.importorskip("finetune.data.load")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        text = json.dumps(rows, ensure_ascii=False) if as_array else "\n".join(json.dumps(r, ensure_ascii=False)
                                                                               for r in rows)
        path.write_text(text, encoding="utf-8")
        spec = data.DatasetSpec("fuzz", path, formatting)
        result = only_rag_errors(lambda: data.check(data.load_conversations([spec], feedback_context=context), "error"))
    if result is not None:
        for conversation in result.conversations:
            roles = [m.role for m in conversation.messages if m.role != "system"]
            assert roles[-1] == "assistant" and all(isinstance(m.content, str) for m in conversation.messages)
