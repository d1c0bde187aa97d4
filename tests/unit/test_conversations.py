"""Saved conversations (rag.webui.conversations): per owner, newest first, one transaction per message, exports."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from rag.core.errors import ConfigError
from rag.core.types import Answer, Chunk, Citation, Hit
from rag.webui.conversations import (
    ConversationStore,
    Turn,
    owner_key,
    to_json,
    to_markdown,
    turn_from_dict,
    turn_to_dict,
)


def make_turn(n: int, question: str = "VPN 连不上怎么办？") -> Turn:
    chunk = Chunk(7, "VPN 网关是 vpn.example.com，端口 51820。", "网络/vpn.md", 0, page=3, heading=("网络", "VPN"))
    answer = Answer("网关是 vpn.example.com [1]。", [Hit(chunk, 0.9, dense_score=0.8)], [Citation(1, chunk)],
                    model="extractive")
    return Turn(f"t{n}", question, answer, {1: "VPN 网关是 vpn.example.com"}, "", "indexes/default")


def test_a_turn_survives_json_exactly() -> None:
    turn = make_turn(1)
    assert turn_from_dict(json.loads(json.dumps(turn_to_dict(turn), ensure_ascii=False))) == turn


def test_conversations_are_per_owner_newest_first_and_survive_reopening(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path)
    store.append("alice-key", "c1", make_turn(1, "第一个对话的问题，" + "很长" * 30))
    store.append("alice-key", "c2", make_turn(2, "第二个"))
    store.append("alice-key", "c1", make_turn(3, "追问"))  # c1 is now the most recent
    store.append("bob-key", "c3", make_turn(4, "bob"))
    store.close()

    store = ConversationStore(tmp_path)  # a restart
    listed = store.recent("alice-key")
    assert [c.id for c in listed] == ["c1", "c2"] and [c.turns for c in listed] == [2, 1]
    assert listed[0].title.startswith("第一个对话的问题") and listed[0].title.endswith("…") and len(listed[0].title) == 40
    assert [t.id for t in store.turns("alice-key", "c1")] == ["t1", "t3"]
    assert store.turns("bob-key", "c1") == [] and [c.id for c in store.recent("bob-key")] == ["c3"]
    with pytest.raises(ConfigError, match="belongs to another user"):
        store.append("bob-key", "c1", make_turn(5))

    store.rename("alice-key", "c2", "  VPN   问题 ")
    store.rename("bob-key", "c1", "hijacked")  # not bob's: nothing happens
    assert {c.id: c.title for c in store.recent("alice-key")}["c2"] == "VPN 问题"
    assert store.get("alice-key", "c1").title.startswith("第一个")  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="cannot be empty"):
        store.rename("alice-key", "c2", "  ")
    rated = make_turn(3, "追问")
    rated.rating = "down"
    store.update("alice-key", "c1", rated)
    assert store.turns("alice-key", "c1")[1].rating == "down"
    store.delete("bob-key", "c2")
    assert len(store.recent("alice-key")) == 2
    store.delete("alice-key", "c2")
    assert [c.id for c in store.recent("alice-key")] == ["c1"]
    assert sqlite3.connect(tmp_path / "conversations.sqlite").execute("SELECT COUNT(*) FROM turns WHERE conversation='c2'"
                                                                      ).fetchone()[0] == 0
    assert sqlite3.connect(tmp_path / "conversations.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    stores = [ConversationStore(tmp_path) for _ in range(4)]  # four connections, as four page processes would hold

    def write(n: int) -> None:
        for i in range(25):
            stores[n].append("owner-key", "shared", make_turn(n * 100 + i))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(t.id for t in stores[0].turns("owner-key", "shared")) == sorted(f"t{n * 100 + i}" for n in range(4)
                                                                                   for i in range(25))


def test_exports_are_readable_markdown_and_utf8_json(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path)
    store.append("k", "c1", make_turn(1))
    conversation, turns = store.get("k", "c1"), store.turns("k", "c1")
    assert conversation is not None
    markdown = to_markdown(conversation.title, turns)
    assert markdown.startswith("# VPN 连不上怎么办？\n") and "## VPN 连不上怎么办？" in markdown
    assert "- [1] 网络/vpn.md, p. 3: “VPN 网关是 vpn.example.com”" in markdown
    exported = to_json(conversation, turns)
    assert "连不上" in exported and json.loads(exported)["turns"][0]["answer"]["citations"][0]["chunk"]["page"] == 3


def test_the_password_binds_the_owner() -> None:
    assert owner_key("browser-key-123456") == "browser-key-123456"
    assert owner_key("browser-key-123456", "pw1") != owner_key("browser-key-123456", "pw2")
    assert "browser" not in owner_key("browser-key-123456", "pw1")


def test_an_unwritable_folder_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="set KBQA_CONVERSATIONS to a writable folder"):
        ConversationStore(blocker / "sub")
