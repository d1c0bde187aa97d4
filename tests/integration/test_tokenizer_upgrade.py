"""A read-only index whose BM25 tokens an older tokenizer made is still searched with today's tokens.

The reader re-tokenises in memory and never writes (an ingest would store the new tokens, but cannot on a read-only
mount), so the ``-H`` question finds the ``-H`` entry there too. The mount is a real read-only bind mount inside
``unshare -rm``; the test skips where user namespaces are not allowed.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rag.core.config import REPO_ROOT, RagConfig
from rag.embed.embedder import HashEmbedder
from rag.index.sync import sync_folder
from tests.conftest import write_corpus
from tests.integration.test_index_faults import needs_unshare
from tests.unit.test_option_tokens import DF, _store_v2_tokens

pytestmark = pytest.mark.integration
OVERRIDES = "embed.source=hash load.workers=1 split.chunk_size=120 split.chunk_overlap=20 retrieve.bridge="


@needs_unshare
def test_a_read_only_index_with_v2_tokens_answers_with_option_tokens(tmp_path: Path, cfg: RagConfig) -> None:
    index = Path(cfg.index.dir)
    sync_folder(write_corpus(tmp_path / "man", DF), cfg, HashEmbedder())
    _store_v2_tokens(index)
    mount = tmp_path / "ro"
    mount.mkdir()
    search = f"{shlex.quote(sys.executable)} -m rag.cli.search 'df -H 是什么意思？' --index {mount} --k 1 --mode bm25 --json"
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount --bind {index} {mount} && mount -o remount,bind,ro {mount} || exit 99\n"
         f"touch {mount}/probe 2>/dev/null && exit 98\n{search} {OVERRIDES}"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    if result.returncode in (98, 99):
        pytest.skip(f"cannot make a read-only bind mount here: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    hit = json.loads(result.stdout.splitlines()[0])
    assert hit["source"] == "df-si.txt", result.stdout
    assert "re-tokenising" in result.stderr and "Traceback" not in result.stderr
