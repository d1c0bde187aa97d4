"""finetune.data.load: every supported format becomes the exact conversation expected; bad records are reported with
their file and line, never dropped silently; dataset_info.json (LLaMA-Factory) entries resolve; the shipped samples
load clean; ``convert-data`` round-trips. No model or torch here."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from finetune.__main__ import main
from finetune.data.formats import DatasetSpec, resolve_dataset
from finetune.data.load import DataError, check, load_conversations, split_dev
from rag.core.config import REPO_ROOT
from rag.core.errors import ConfigError
from rag.core.types import Message

SAMPLES = REPO_ROOT / "finetune" / "samples"


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def load(path: Path, formatting: str = "auto", **kwargs: Any) -> list[tuple[Message, ...]]:
    result = check(load_conversations([DatasetSpec("t", path, formatting)], **kwargs))
    return [c.messages for c in result.conversations]


def test_alpaca_with_input_system_and_history(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps([
        {"instruction": "判断优先级。", "input": "整层楼断网。", "output": "P1 紧急。"},
        {"instruction": " 密码多久改一次？ ", "input": "", "output": "90 天。", "system": "你是 IT 助手。",
         "history": [["你好", "你好！"]]},
    ], ensure_ascii=False, indent=2), encoding="utf-8")
    assert load(path) == [
        (Message("user", "判断优先级。\n整层楼断网。"), Message("assistant", "P1 紧急。")),
        (Message("system", "你是 IT 助手。"), Message("user", "你好"), Message("assistant", "你好！"),
         Message("user", "密码多久改一次？"), Message("assistant", "90 天。")),  # edges stripped
    ]


def test_sharegpt_and_openai_messages(tmp_path: Path) -> None:
    sharegpt = write_jsonl(tmp_path / "s.jsonl", [{"system": "S", "conversations": [
        {"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
        {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]}])
    openai = write_jsonl(tmp_path / "o.jsonl", [{"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}])
    assert load(sharegpt) == [(Message("system", "S"), Message("user", "Q1"), Message("assistant", "A1"),
                               Message("user", "Q2"), Message("assistant", "A2"))]
    assert load(openai) == [(Message("system", "S"), Message("user", "Q"), Message("assistant", "A"))]


def test_advertisegen_counselling_and_default_system(tmp_path: Path) -> None:
    ads = write_jsonl(tmp_path / "ad.jsonl", [{"content": "类型#上衣*颜色#白色", "summary": "白色上衣。"}])
    care = write_jsonl(tmp_path / "c.jsonl", [{"Context": "睡不着。", "Response": "试试深呼吸。"}])
    assert load(ads, "advertisegen") == load(ads) == [(Message("user", "类型#上衣*颜色#白色"),
                                                        Message("assistant", "白色上衣。"))]
    assert load(care, system="你是心理咨询师。") == [
        (Message("system", "你是心理咨询师。"), Message("user", "睡不着。"), Message("assistant", "试试深呼吸。"))]


def feedback(**fields: Any) -> dict[str, Any]:
    record = {"time": "2026-11-20T10:00:00+0800", "question": "Q", "answer": "A", "rating": "up", "correction": "",
              "citations": [], "model": "m", "adapter": "", "id": "", "index": "indexes/default"}
    return {**record, **fields}


def test_feedback_to_conversations(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "feedback.jsonl", [
        feedback(id="a", question="邮箱多大？", answer="50 GB [2]，经理 100 GB [2][5]。",
                 citations=[{"number": 2, "source": "faq.html", "page": None, "quote": "邮箱容量为 50 GB。"},
                            {"number": 5, "source": "faq.html", "page": 3, "quote": ""}]),
        feedback(id="b", question="密码？", answer="30 天 [1]。", rating="down", correction="90 天。"),
        feedback(id="c", question="打印机？", answer="不知道。", rating="down"),  # nothing to learn: skipped
        feedback(id="d", question="旧问题", answer="旧回答"),
        feedback(id="d", question="VPN 地址？", answer="vpn.xinghe.example [1]", rating="down", correction=""),
    ])
    result = load_conversations([DatasetSpec("fb", path, "feedback")], feedback_context="quotes")
    assert [str(s) for s in result.skipped] == [f"{path}:3: thumbs-down without a correction",
                                                f"{path}:5: thumbs-down without a correction"]  # "d": the last wins
    quoted, corrected = result.conversations
    system, user, answer = quoted.messages
    assert system.role == "system" and "只根据用户消息里编号的参考资料回答" in system.content  # the app's own prompt
    assert user.content.endswith("[1] (faq.html)\n<<<passage 1\n邮箱容量为 50 GB。\npassage 1>>>\n\n问题：邮箱多大？")
    assert answer == Message("assistant", "50 GB [1]，经理 100 GB [1]。")  # [2] -> [1]; [5] had no quote: dropped
    assert corrected.messages == (Message("user", "密码？"), Message("assistant", "90 天。"))
    bare = load_conversations([DatasetSpec("fb", path, "feedback")], feedback_context="none").conversations
    assert bare[0].messages == (Message("user", "邮箱多大？"), Message("assistant", "50 GB，经理 100 GB。"))


def test_bad_records_are_listed_with_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([
        json.dumps({"instruction": "ok", "output": "fine"}),
        "{not json",
        json.dumps({"instruction": "no answer"}),
        "",
        json.dumps({"instruction": "   ", "output": "x"}),
        json.dumps([1, 2]),
        json.dumps({"instruction": "n", "output": 5}),
    ]) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        check(load_conversations([DatasetSpec("bad", path, "alpaca")]))
    assert [str(r) for r in caught.value.records] == [
        f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{path}:3: missing 'output'",
        f"{path}:5: turn 1 (user) is empty",
        f"{path}:6: a record must be a JSON object, got list",
        f"{path}:7: 'output' must be a string, got int",
    ]
    assert str(caught.value).startswith("5 bad record(s); fix them or set data.on_bad_record=skip:\n  ")


def test_bad_turn_order_and_roles(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"conversations": [{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}]},
        {"conversations": [{"from": "human", "value": "Q"}]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "function_call", "value": "{}"}]},
        {"conversations": [{"from": "robot", "value": "Q"}]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "system", "value": "S"}]},
    ])
    result = load_conversations([DatasetSpec("s", path, "sharegpt")])
    assert [r.reason for r in result.bad] == [
        "turn 1 is assistant, expected user (a system turn first, then user and assistant alternating)",
        "the last turn must be the assistant's answer",
        "turn 2 has role 'function_call'; tool and observation turns are not supported",
        "turn 1 has unknown role 'robot'; expected one of ['function_call', 'gpt', 'human', 'observation', "
        "'system'] (set the dataset's tags in dataset_info.json)",
        "turn 2 is a system turn; only the first turn may be one",
    ]
    assert [r.line for r in result.bad] == [1, 2, 3, 4, 5]


def test_json_array_records_report_the_line_they_start_on(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('[\n  {"instruction": "q1", "output": "a1"},\n  {"instruction": "q2"},\n'
                    '  {"instruction": "q3",\n   "output": ""}\n]\n', encoding="utf-8")
    result = load_conversations([DatasetSpec("a", path, "alpaca")])
    assert [(r.line, r.reason) for r in result.bad] == [(3, "missing 'output'"), (4, "turn 2 (assistant) is empty")]
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"instruction": "q1", "output": "a1"},\n  {"instruction": "q2", "output": }\n]',
                      encoding="utf-8")
    result = load_conversations([DatasetSpec("b", broken, "alpaca")])
    assert len(result.conversations) == 1
    assert [(r.line, r.reason) for r in result.bad] == [
        (3, "not valid JSON (Expecting value); the rest of the array was not read")]


def test_skip_mode_logs_each_bad_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "a"}, {"instruction": "q"}])
    with caplog.at_level(logging.WARNING, logger="finetune.data.load"):
        result = check(load_conversations([DatasetSpec("a", path, "alpaca")]), on_bad_record="skip")
    assert len(result.conversations) == 1
    assert f"skipped bad record {path}:2: missing 'output'" in caplog.text


def test_dataset_info_columns_tags_and_limits(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "chat.jsonl", [
        {"dialog": [{"speaker": "问", "text": "Q1"}, {"speaker": "答", "text": "A1"}], "sys": "S"},
        {"dialog": [{"speaker": "问", "text": "Q2"}, {"speaker": "答", "text": "A2"}], "sys": "S"},
    ])
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "mine": {"file_name": "chat.jsonl", "formatting": "sharegpt", "num_samples": 1,
                 "columns": {"messages": "dialog", "system": "sys"},
                 "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "问", "assistant_tag": "答"}},
        "remote": {"hf_hub_url": "org/data"},
        "prefs": {"file_name": "chat.jsonl", "ranking": True},
        "tools": {"file_name": "chat.jsonl", "formatting": "sharegpt", "columns": {"tools": "tools"}},
    }, ensure_ascii=False), encoding="utf-8")
    spec = resolve_dataset("mine", tmp_path)
    assert load_conversations([spec]).conversations[0].messages == (
        Message("system", "S"), Message("user", "Q1"), Message("assistant", "A1"))
    assert len(load_conversations([spec]).conversations) == 1  # num_samples
    info = tmp_path / "dataset_info.json"
    with pytest.raises(ConfigError, match=r"uses hf_hub_url; only local files are read here: download the data"):
        resolve_dataset("remote", tmp_path)
    assert resolve_dataset("prefs", tmp_path).ranking  # read by the dpo / kto stages (test_finetune_preference.py)
    with pytest.raises(ConfigError, match=r"maps \['tools'\]; tool calls and images are not supported"):
        resolve_dataset("tools", tmp_path)
    with pytest.raises(ConfigError) as caught:
        resolve_dataset("nope", tmp_path)
    assert str(caught.value) == (f"dataset 'nope' is neither a file nor a name in {info} "
                                 "(names: mine, prefs, remote, tools)")


def test_unknown_format_is_a_bad_record(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"foo": 1}])
    result = load_conversations([DatasetSpec("x", path, "auto")])
    assert [str(r) for r in result.bad] == [
        f"{path}:1: cannot tell the format from keys ['foo']; set the format (alpaca, sharegpt, advertisegen, "
        "counselling, feedback) in dataset_info.json or data.format"]


def test_split_is_seeded_disjoint_and_bounded() -> None:
    from finetune.data.load import Conversation

    conversations = [Conversation((Message("user", str(i)), Message("assistant", "a")), f"f:{i}") for i in range(50)]
    train, dev = split_dev(conversations, 0.1, 3, seed=7)
    assert len(dev) == 3 and len(train) == 47 and not {c.source for c in dev} & {c.source for c in train}
    assert split_dev(conversations, 0.1, 3, seed=7) == (train, dev)
    assert split_dev(conversations, 0.1, 3, seed=8)[1] != dev
    assert split_dev(conversations[:1], 0.5, 10, seed=7) == (conversations[:1], [])
    assert split_dev(conversations, 0.0, 10, seed=7) == (conversations, [])


def test_shipped_samples_load_clean() -> None:
    names = ["helpdesk_alpaca", "helpdesk_sharegpt", "advertisegen_sample", "counselling_sample", "feedback_sample"]
    counts = {}
    for name in names:
        result = load_conversations([resolve_dataset(name, SAMPLES)])
        assert result.bad == [], name
        counts[name] = len(result.conversations)
    assert counts["helpdesk_alpaca"] == 60 and counts["helpdesk_sharegpt"] >= 5
    assert counts["advertisegen_sample"] >= 10 and counts["counselling_sample"] >= 6 and counts["feedback_sample"] == 3


def test_convert_data_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["convert-data", "feedback_sample", "--dataset-dir", str(SAMPLES), "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == (f"wrote 3 conversations to {out} (0 bad records skipped, "
                                               "1 thumbs-down without a correction)")
    original = load_conversations([resolve_dataset("feedback_sample", SAMPLES)]).conversations
    assert load(out) == [c.messages for c in original]

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"content": "x", "summary": "y"}, {"content": "x"}])
    assert main(["convert-data", str(bad), "--format", "advertisegen", "--output", str(out)]) == 1
    assert f"{bad}:2: missing 'summary'" in capsys.readouterr().err
    assert main(["convert-data", str(bad), "--format", "advertisegen", "--output", str(out), "--skip-bad"]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1
