"""The page's background download (rag/webui/downloads.py): progress from the ``.partial`` folder, cancel, resume,
the disk-space check, and the CLI's result and error lines. No public hub is reachable here, so: the real
``python -m rag.models download`` against a Hugging Face-compatible hub on loopback (tests/fake_hub.py, through
``HF_ENDPOINT``), and, for quick cases, a stand-in child with the CLI's output contract (``use it with:
llm.model=<folder>`` / ``error: ...``) that writes into the same ``.partial`` folder. Also: the adapter catalogue's
change signature (adapters appear without a rescan button)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import pytest

from rag.core.errors import ConfigError
from rag.webui import downloads
from rag.webui.downloads import Downloader, partial_folders
from rag.webui.state import folder_signature
from tests.fake_hub import FakeHub

# writes 8 pieces of 64 KiB into <cache>/<org>--<name>.partial, resuming after the pieces already there; fails
# on request; renames into place and prints the CLI's last lines when done
STAND_IN = textwrap.dedent("""
    import os, sys, time
    model, source, cache, pause = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    if model.endswith("broken"):
        print("error: cannot download org/broken: Hugging Face org/broken: failed (RepositoryNotFoundError)",
              file=sys.stderr)
        sys.exit(1)
    partial = os.path.join(cache, model.replace("/", "--") + ".partial")
    os.makedirs(partial, exist_ok=True)
    have = len(os.listdir(partial))
    print(f"resuming after {have} pieces", flush=True)
    for piece in range(have, 8):
        with open(os.path.join(partial, f"piece{piece}"), "wb") as handle:
            handle.write(b"x" * 65536)
        time.sleep(pause)
    open(os.path.join(partial, "config.json"), "w").write("{}")
    final = partial[: -len(".partial")]
    os.replace(partial, final)
    print(f"downloaded {model} to {final}")
    print(f"use it with: {'embed' if 'text2vec' in model else 'llm'}.model={final}")
""")


def stand_in(pause: float) -> object:
    def command(model: str, source: str, cache_dir: str) -> list[str]:
        return [sys.executable, "-c", STAND_IN, model, source, cache_dir, str(pause)]

    return command


@pytest.fixture(autouse=True)
def known_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KBQA_CACHE", raising=False)
    monkeypatch.setitem(downloads.KNOWN_SIZES, "tiny-model", 8 * 65536)


def test_a_download_shows_progress_finishes_and_names_its_folder(tmp_path: Path) -> None:
    job = Downloader(str(tmp_path / "cache"), tmp_path / "logs", command=stand_in(0.15))  # type: ignore[arg-type]
    assert job.state().status == "idle"
    job.start("org/tiny-model")
    with pytest.raises(ConfigError, match="org/tiny-model is still downloading; cancel it first"):
        job.start("org/tiny-model")
    seen = []
    deadline = time.monotonic() + 20
    while (state := job.state()).status == "running" and time.monotonic() < deadline:
        seen.append(state.fraction)
        time.sleep(0.05)
    assert state.status == "done", state
    assert state.folder == str(tmp_path / "cache" / "org--tiny-model")
    assert any(f is not None and 0 < f < 1 for f in seen), seen  # a bar that moved, not only 0 and done
    assert state.done_bytes >= 8 * 65536
    assert state.answers and state.message == f"llm.model={state.folder}"


def test_cancel_keeps_the_partial_folder_and_a_new_start_resumes(tmp_path: Path) -> None:
    job = Downloader(str(tmp_path / "cache"), tmp_path / "logs", command=stand_in(0.3))  # type: ignore[arg-type]
    job.start("org/tiny-model")
    partial = partial_folders("org/tiny-model", str(tmp_path / "cache"))[0]
    deadline = time.monotonic() + 20
    while job.state().done_bytes < 2 * 65536 and time.monotonic() < deadline:
        time.sleep(0.05)
    job.cancel()
    state = job.state()
    assert state.status == "cancelled" and state.folder == str(partial)
    kept = len(list(partial.iterdir()))
    assert 2 <= kept < 8
    time.sleep(0.5)
    assert len(list(partial.iterdir())) == kept  # the child really stopped writing
    job.start("org/tiny-model")
    assert job.wait(20).status == "done"
    assert f"resuming after {kept} pieces" in job.log_path.read_text(encoding="utf-8")


def test_an_embedding_model_is_done_but_not_offered_for_answering(tmp_path: Path) -> None:
    job = Downloader(str(tmp_path / "cache"), tmp_path / "logs", command=stand_in(0))  # type: ignore[arg-type]
    job.start("org/text2vec-mini")
    state = job.wait(20)
    assert state.status == "done" and not state.answers
    assert state.message == f"embed.model={tmp_path / 'cache' / 'org--text2vec-mini'}"


def test_the_real_cli_downloads_from_a_hub_with_progress_cancel_and_resume(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # the client writes in 10 MiB pieces (huggingface_hub's DOWNLOAD_CHUNK_SIZE): a 24 MiB shard sent in 1 MiB
    # pieces (~4 s) grows in steps a test can see; a 1 MiB shard finishes at once
    big, small = os.urandom(24 * 2**20), os.urandom(2**20)
    files = {"config.json": b'{"model_type": "llama"}', "model-00001.safetensors": small,
             "model-00002.safetensors": big}
    hub = FakeHub("org/tiny-llm", files, piece_bytes=2**20, pause_s=0.15)
    for name in ("HF_HUB_OFFLINE", "KBQA_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    try:
        job = Downloader(str(tmp_path / "cache"), tmp_path / "logs")  # the real command: python -m rag.models ...
        job.start("org/tiny-llm", "huggingface")
        partial = partial_folders("org/tiny-llm", str(tmp_path / "cache"))[0]
        deadline = time.monotonic() + 60
        while ((state := job.state()).done_bytes < 11 * 2**20 or not (partial / "model-00001.safetensors").is_file()) \
                and state.status == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.status == "running", job.log_path.read_text(encoding="utf-8")
        assert state.total_bytes == sum(map(len, files.values()))  # the hub's file list (the client's tree cache)
        assert state.fraction is not None and 0 < state.fraction < 1
        job.cancel()
        cancelled = job.state()
        assert cancelled.status == "cancelled" and cancelled.folder == str(partial)
        time.sleep(0.5)
        assert job.state().done_bytes == cancelled.done_bytes < len(big)  # the hub client stopped with the CLI
        assert list(partial.glob(".cache/huggingface/download/*.incomplete"))  # what the killed client left

        job.start("org/tiny-llm", "huggingface")  # drops the orphan first, keeps the finished shard
        done = job.wait(60)
        assert done.status == "done" and done.answers, job.log_path.read_text(encoding="utf-8")
        folder = Path(done.folder)
        assert (folder / "model-00002.safetensors").read_bytes() == big
        assert (folder / "model-00001.safetensors").read_bytes() == small
        fetched = [name for name, _ in hub.gets]
        assert fetched.count("model-00001.safetensors") == 1  # the finished shard was not fetched again
        assert fetched.count("model-00002.safetensors") == 2
        assert not list(folder.glob(".cache/huggingface/download/*.incomplete"))
    finally:
        hub.close()


def test_the_real_cli_offline_fails_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    job = Downloader(str(tmp_path / "cache"), tmp_path / "logs")
    job.start("Qwen/Qwen2.5-0.5B-Instruct", "huggingface")
    state = job.wait(60)
    assert state.status == "failed"
    assert state.message.startswith("cannot download Qwen/Qwen2.5-0.5B-Instruct: offline (HF_HUB_OFFLINE=1); unset")


def test_a_failed_download_says_why(tmp_path: Path) -> None:
    job = Downloader(str(tmp_path / "cache"), tmp_path / "logs", command=stand_in(0))  # type: ignore[arg-type]
    job.start("org/broken")
    state = job.wait(20)
    assert state.status == "failed"
    assert state.message == "cannot download org/broken: Hugging Face org/broken: failed (RepositoryNotFoundError)"


def test_too_little_disk_space_refuses_before_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(downloads.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**9, 10**9))
    job = Downloader(str(tmp_path / "cache"), tmp_path / "logs", command=stand_in(0))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"not enough disk space in .*cache: 1.0 GB free, chatglm3-6b needs about "
                                          r"25.0 GB more; free some space or set llm.cache_dir to a larger disk"):
        job.start("chatglm3-6b")
    assert job.state().status == "idle"
    with pytest.raises(ConfigError, match=r"'\.\./x' is not a model id"):
        job.start("../x")


def test_the_cli_passes_a_stop_on_to_its_hub_client(tmp_path: Path) -> None:
    """SIGTERM to ``python -m rag.models download`` (the page's cancel) ends the hub client it runs too."""
    marker = tmp_path / "client.pid"
    script = (f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    runner = textwrap.dedent(f"""
        import sys
        from rag.models import hub
        hub._DOWNLOAD = {script!r}
        sys.argv = ["rag.models", "download", "org/some-model", "--source", "huggingface",
                    "--cache-dir", {str(tmp_path / 'cache')!r}]
        import runpy
        runpy.run_module("rag.cli.models", run_name="__main__")
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "KBQA_OFFLINE", "KBQA_CACHE")}
    cli = subprocess.Popen([sys.executable, "-c", runner], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (marker.is_file() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    client = int(marker.read_text())
    os.killpg(cli.pid, signal.SIGTERM)
    assert cli.wait(timeout=10) == 128 + signal.SIGTERM
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):  # the client (its own process group) is gone too
        os.kill(client, 0)


def test_the_adapter_folder_signature_changes_when_an_adapter_is_added_or_rewritten(tmp_path: Path) -> None:
    assert folder_signature(tmp_path / "missing") == ()
    before = folder_signature(tmp_path)
    (tmp_path / "law-qa").mkdir()
    added = folder_signature(tmp_path)
    assert added != before
    (tmp_path / "law-qa" / "adapter_config.json").write_text("{}", encoding="utf-8")
    written = folder_signature(tmp_path)
    assert written != added
    os.utime(tmp_path / "law-qa" / "adapter_config.json", ns=(1, 1))
    (tmp_path / "law-qa" / "adapter_config.json").write_text("{ }", encoding="utf-8")
    assert folder_signature(tmp_path) != written  # rewritten in place: size and time differ
    assert folder_signature(tmp_path) == folder_signature(tmp_path)  # nothing changed: no rescan
