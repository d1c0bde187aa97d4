"""Hostile config and training-data files (issue 17 items 9 and 10): each gets one clear error that names the file,
the line or key, and the fix, never a traceback, a RecursionError or gigabytes of memory."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest

from finetune.__main__ import main
from finetune.config import load_finetune_config
from finetune.data.formats import resolve_dataset
from finetune.data.load import load_conversations, read_records
from rag.core.config import MAX_CONFIG_VALUES, load_config
from rag.core.errors import ConfigError


def laughs(levels: int, fan_out: int = 9) -> str:
    """A "billion laughs" YAML: each level is a list of ``fan_out`` aliases of the level before."""
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, levels + 1):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * fan_out)}]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_config_is_refused_before_it_expands(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(laughs(7), encoding="utf-8")  # 9^7 = 4.8 M values once expanded; 9 lines on disk
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError) as caught:
        load_config(bomb)
    assert str(caught.value) == (f"config file {bomb} expands to more than {MAX_CONFIG_VALUES} values through YAML "
                                 "aliases (&anchor / *alias); write the values out instead of nesting aliases")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing was expanded
    with pytest.raises(ConfigError, match="values through YAML aliases"):  # the finetune recipe reads it the same way
        load_finetune_config(bomb)
    small = tmp_path / "small.yaml"  # aliases as such stay allowed
    small.write_text("retrieve: &r {top_k: 3}\n", encoding="utf-8")
    assert load_config(small).retrieve.top_k == 3


def test_oversized_and_too_deep_configs(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bytes, over the 1048576 byte limit for a config; pass the right file"):
        load_config(big)
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="nests lists or mappings too deeply; flatten it"):
        load_config(deep)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(invalid continuation byte at byte 5\)"):
        load_config(latin)


def test_invalid_utf8_line_is_reported_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = {"instruction": "密码多久改一次？", "output": "90 天。"}
    data = tmp_path / "mixed.jsonl"
    data.write_bytes(json.dumps(good, ensure_ascii=False).encode() + b"\n"
                     + b'{"instruction": "caf\xe9", "output": "x"}\n'
                     + json.dumps(good, ensure_ascii=False).encode() + b"\n")
    out = tmp_path / "out.jsonl"
    assert main(["convert-data", str(data), "--output", str(out)]) == 1
    assert f"{data}:2: not valid UTF-8 (byte 0xe9 at column 21); save the file as UTF-8" in capsys.readouterr().err
    assert main(["convert-data", str(data), "--output", str(out), "--skip-bad"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote 2 conversations to {out} (1 bad records skipped")
    array = tmp_path / "array.json"
    array.write_bytes(b'[\n {"instruction": "a", "output": "b"},\n {"instruction": "caf\xe9", "output": "b"}\n]\n')
    assert list(read_records(array)) == [
        (3, None, "not valid UTF-8 (byte 0xe9 at column 22); save the file as UTF-8; the array was not read")]


def test_deeply_nested_record_is_one_bad_record(tmp_path: Path) -> None:
    data = tmp_path / "deep.jsonl"
    good = json.dumps({"instruction": "q", "output": "a"})
    data.write_text(good + "\n" + "[" * 100_000 + "]" * 100_000 + "\n" + good + "\n", encoding="utf-8")
    result = load_conversations([resolve_dataset(str(data), tmp_path)])
    assert len(result.conversations) == 2
    assert [str(bad) for bad in result.bad] == [
        f"{data}:2: nested too deeply (lists or objects inside each other past Python's recursion limit)"]
    array = tmp_path / "deep.json"
    array.write_text("[" + good + ",\n" + "[" * 100_000 + "]" * 100_000 + "]", encoding="utf-8")
    assert [row[0] for row in read_records(array)] == [1, 2]
    assert list(read_records(array))[1][2].endswith("; the rest of the array was not read")


def test_dataset_info_with_a_non_number_num_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d.jsonl").write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n", encoding="utf-8")
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({"mine": {"file_name": "d.jsonl", "num_samples": "lots"}}), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        resolve_dataset("mine", tmp_path)
    assert str(caught.value) == (f"{info} entry 'mine' has num_samples='lots'; it must be a whole number >= 0 "
                                 "(0 = all records)")
    assert main(["convert-data", "mine", "--dataset-dir", str(tmp_path), "--output", str(tmp_path / "o.jsonl")]) == 1
    assert capsys.readouterr().err.strip().endswith("it must be a whole number >= 0 (0 = all records)")
    info.write_text(json.dumps({"mine": {"file_name": "d.jsonl", "num_samples": "1"}}), encoding="utf-8")
    assert resolve_dataset("mine", tmp_path).num_samples == 1


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("bad", [b'{"x": "caf\xe9"}', DEEP], ids=["latin1", "deep"])
def test_every_jsonl_reader_names_the_bad_line(tmp_path: Path, bad: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """Questions (rag.eval), predictions (finetune score), prompts (finetune compare) and feedback all read JSON
    Lines through rag.core.jsonl: a bad second line is named with its line, never a traceback."""
    from finetune.evaluate import score_file
    from finetune.infer import read_prompts
    from rag.cli.eval import read_questions
    from rag.core.errors import RagError
    from rag.feedback import read_feedback

    reason = "not valid UTF-8 (byte 0xe9 at column 11)" if bad != DEEP else "nested too deeply"
    rows = {
        "questions.jsonl": b'{"id": "q1", "question": "q", "evidence": []}',
        "predictions.jsonl": b'{"prediction": "a", "reference": "a"}',
        "prompts.jsonl": b'{"prompt": "p"}',
    }
    for name, good in rows.items():
        path = tmp_path / name
        path.write_bytes(good + b"\n" + bad + b"\n")
        reader = {"questions.jsonl": read_questions, "predictions.jsonl": score_file, "prompts.jsonl": read_prompts}
        with pytest.raises(RagError) as caught:
            reader[name](path)
        assert str(caught.value).startswith(f"{path}:2: {reason}")
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_bytes(b'{"id": "a", "rating": "up"}\n' + bad + b"\n" + b'{"id": "b", "rating": "down"}\n')
    assert [record["id"] for record in read_feedback(feedback)] == ["a", "b"]
    assert f"{feedback}:2: skipped: {reason}" in caplog.text
    plain = tmp_path / "prompts.txt"
    plain.write_bytes(b"first\nsecond caf\xe9\n")
    with pytest.raises(RagError, match=r"prompts.txt:2: not valid UTF-8 \(byte 0xe9 at column 11\)"):
        read_prompts(plain)
