"""Saved conversations: one SQLite file (WAL), one row per question and answer, one transaction per message.

The chat page keeps each session's conversation here as it goes, so a reload (F5) or a restart of the page finds it
again, and the sidebar lists a user's past conversations (newest first) to reopen, rename, delete or export.

Whose conversations they are is an *owner* string that the page derives (:func:`owner_key`): without a page password
it is a random key kept in the browser (a cookie and the ``?u=`` query parameter); with the password on it is that key
hashed together with the password, so the same browser with another password sees none of them. No accounts: the key
is the only secret, like a session cookie.

A :class:`Turn` is stored as JSON (its answer with the retrieved passages and citations), so a restored conversation
shows the same source cards and ratings as when it was asked. Importing this module needs no Streamlit.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag.core.errors import ConfigError
from rag.core.types import Answer, Chunk, Citation, Hit

FILE_NAME = "conversations.sqlite"
TITLE_CHARS = 40  # a new conversation is titled with the start of its first question
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")  # owner keys and conversation ids that the page accepts
SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_owner ON conversations(owner, updated);
CREATE TABLE IF NOT EXISTS turns (
    conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    turn_id TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (conversation, position)
);
"""


@dataclass
class Turn:
    """One question and its answer (in compare mode ``answer`` is the adapter's and ``base`` the base model's)."""

    id: str
    question: str
    answer: Answer
    quotes: dict[int, str]
    adapter: str  # "" = the base model
    index: str
    base: Answer | None = None
    base_quotes: dict[int, str] = field(default_factory=dict)
    rating: str = ""
    correction_saved: bool = False


@dataclass(frozen=True)
class Conversation:
    """A saved conversation as the sidebar lists it."""

    id: str
    title: str
    created: float
    updated: float
    turns: int


def new_key() -> str:
    """A random owner key (22 URL-safe characters, 128 bits)."""
    return secrets.token_urlsafe(16)


def new_conversation_id() -> str:
    return uuid.uuid4().hex


def valid_key(value: str | None) -> bool:
    return bool(value) and KEY_PATTERN.match(str(value)) is not None


def owner_key(browser_key: str, password: str = "") -> str:
    """Whose conversations: the browser's key, or with a page password, the key bound to that password."""
    if not password:
        return browser_key
    return hashlib.sha256(f"{password}\x00{browser_key}".encode()).hexdigest()[:32]


def title_of(question: str) -> str:
    line = " ".join(question.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


# --- turns as JSON --------------------------------------------------------------------------------------------------


def _chunk(data: dict[str, Any]) -> Chunk:
    return Chunk(**{**data, "heading": tuple(data.get("heading") or ())})


def answer_from_dict(data: dict[str, Any]) -> Answer:
    hits = [Hit(**{**h, "chunk": _chunk(h["chunk"]), "also_in": tuple(h.get("also_in") or ())})
            for h in data.get("hits", [])]
    citations = [Citation(c["number"], _chunk(c["chunk"]), c.get("supported", True)) for c in data.get("citations", [])]
    return Answer(data["text"], hits, citations, bool(data.get("refused")), str(data.get("model", "")))


def turn_to_dict(turn: Turn) -> dict[str, Any]:
    return asdict(turn)


def turn_from_dict(data: dict[str, Any]) -> Turn:
    def numbered(quotes: dict[str, str] | None) -> dict[int, str]:  # JSON object keys are strings
        return {int(number): quote for number, quote in (quotes or {}).items()}

    base = data.get("base")
    return Turn(data["id"], data["question"], answer_from_dict(data["answer"]), numbered(data.get("quotes")),
                data.get("adapter", ""), data.get("index", ""), answer_from_dict(base) if base else None,
                numbered(data.get("base_quotes")), data.get("rating", ""), bool(data.get("correction_saved")))


# --- export ---------------------------------------------------------------------------------------------------------


def to_markdown(title: str, turns: list[Turn]) -> str:
    """The conversation as Markdown: each question as a heading, the answer, its sources as a list."""
    lines = [f"# {title}", ""]
    for turn in turns:
        lines += [f"## {turn.question}", ""]
        if turn.base is not None:
            lines += ["**base**", "", turn.base.text, "", f"**{turn.adapter}**", ""]
        lines += [turn.answer.text, ""]
        citations = {c.number: c for answer in (turn.base, turn.answer) if answer for c in answer.citations}
        if citations:
            lines.append("Sources:")
            for number, citation in sorted(citations.items()):
                chunk = citation.chunk
                page = f", p. {chunk.page}" if chunk.page is not None else ""
                quote = turn.quotes.get(number) or turn.base_quotes.get(number, "")
                lines.append(f"- [{number}] {chunk.source}{page}" + (f": “{quote}”" if quote else ""))
            lines.append("")
    return "\n".join(lines)


def to_json(conversation: Conversation, turns: list[Turn]) -> str:
    """The conversation as JSON (UTF-8 text, not ASCII-escaped): its title, times and every turn with its sources."""
    return json.dumps({"id": conversation.id, "title": conversation.title, "created": conversation.created,
                       "updated": conversation.updated, "turns": [turn_to_dict(t) for t in turns]},
                      ensure_ascii=False, indent=2)


# --- the store ------------------------------------------------------------------------------------------------------


class ConversationStore:
    """The conversations of every user of one page, in ``folder/conversations.sqlite``.

    Thread-safe (Streamlit runs each session in its own thread); several processes may share the file (WAL, busy
    timeout). Every method that takes an ``owner`` only sees that owner's conversations.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / FILE_NAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"conversations folder {folder} cannot hold {FILE_NAME} ({exc}); set "
                              "KBQA_CONVERSATIONS to a writable folder") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def recent(self, owner: str, limit: int = 50) -> list[Conversation]:
        """The owner's conversations, the most recently used first."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT c.id, c.title, c.created, c.updated, COUNT(t.position) FROM conversations c "
                "LEFT JOIN turns t ON t.conversation = c.id WHERE c.owner = ? GROUP BY c.id "
                "ORDER BY c.updated DESC, c.rowid DESC LIMIT ?", (owner, limit)).fetchall()
        return [Conversation(*row) for row in rows]

    def get(self, owner: str, conversation_id: str) -> Conversation | None:
        return next((c for c in self.recent(owner, limit=-1) if c.id == conversation_id), None)

    def turns(self, owner: str, conversation_id: str) -> list[Turn]:
        """The turns of one of the owner's conversations, in order (empty when it is not theirs or not there)."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT t.data FROM turns t JOIN conversations c ON c.id = t.conversation "
                "WHERE c.id = ? AND c.owner = ? ORDER BY t.position", (conversation_id, owner)).fetchall()
        return [turn_from_dict(json.loads(data)) for (data,) in rows]

    def append(self, owner: str, conversation_id: str, turn: Turn) -> None:
        """Add ``turn`` at the end of the conversation (created, titled by this question, if new): one transaction."""
        now = time.time()
        data = json.dumps(turn_to_dict(turn), ensure_ascii=False)
        with self._transaction() as conn:
            row = conn.execute("SELECT owner FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO conversations(id, owner, title, created, updated) VALUES (?, ?, ?, ?, ?)",
                             (conversation_id, owner, title_of(turn.question), now, now))
            elif row[0] != owner:
                raise ConfigError(f"conversation {conversation_id} belongs to another user; start a new one")
            position = conn.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM turns WHERE conversation = ?",
                                    (conversation_id,)).fetchone()[0]
            conn.execute("INSERT INTO turns(conversation, position, turn_id, data) VALUES (?, ?, ?, ?)",
                         (conversation_id, position, turn.id, data))
            conn.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))

    def update(self, owner: str, conversation_id: str, turn: Turn) -> None:
        """Store a changed turn (its rating) in place; nothing happens when it is not the owner's."""
        data = json.dumps(turn_to_dict(turn), ensure_ascii=False)
        with self._transaction() as conn:
            conn.execute("UPDATE turns SET data = ? WHERE turn_id = ? AND conversation IN "
                         "(SELECT id FROM conversations WHERE id = ? AND owner = ?)",
                         (data, turn.id, conversation_id, owner))

    def rename(self, owner: str, conversation_id: str, title: str) -> None:
        title = " ".join(title.split())
        if not title:
            raise ConfigError("a conversation title cannot be empty; type a few words")
        with self._transaction() as conn:
            conn.execute("UPDATE conversations SET title = ? WHERE id = ? AND owner = ?",
                         (title[:200], conversation_id, owner))

    def delete(self, owner: str, conversation_id: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM conversations WHERE id = ? AND owner = ?", (conversation_id, owner))
