"""See which models this machine can use, and download them.

    python -m rag.models check [--online] [--config F] [key=value ...]
    python -m rag.models download chatglm3-6b [--source auto|modelscope|huggingface] [--revision R] [--cache-dir D]

``check`` prints library versions, the GPUs, where the configured language model and embedder resolve from (or
why they do not), and every adapter under ``llm.adapters_dir`` with whether it can be used. It never downloads and
touches no network unless ``--online`` (then it only asks the hubs whether the models exist). It exits 0 even when a
model is missing: reporting that is its job.

``download`` fetches a model into the cache (``chatglm3-6b`` -> ``THUDM/chatglm3-6b`` on Hugging Face or
``ZhipuAI/chatglm3-6b`` on ModelScope; ``text2vec-base-chinese``; or any hub id), converts a ChatGLM3 checkpoint to
native GLM once, and prints the folder to put in ``llm.model=`` (or ``embed.model=``).
"""

from __future__ import annotations

import argparse
import platform
import signal
import sys
from importlib import metadata
from pathlib import Path

from rag.cli.common import add_config_args, config_from_args, run_cli, table
from rag.core.config import EmbedConfig, LLMConfig, RagConfig
from rag.core.errors import ModelUnavailableError, RagError
from rag.models import hub
from rag.models.adapters import list_adapters

PACKAGES = ("torch", "transformers", "peft", "accelerate", "sentence-transformers", "faiss-cpu", "faiss-gpu-cu12",
            "bitsandbytes", "modelscope", "huggingface-hub")
GIB = 1024**3


def versions() -> list[str]:
    """``name version`` for Python and each package this project's models need ("not installed" when absent)."""
    lines = [f"python {platform.python_version()}"]
    for package in PACKAGES:
        try:
            lines.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            if not package.startswith("faiss-gpu"):  # the optional GPU build is only mentioned when present
                lines.append(f"{package} not installed")
    return lines


def gpus() -> list[str]:
    """One line per CUDA GPU: name, free/total memory, compute capability and the dtype ``llm.dtype=auto`` picks."""
    try:
        import torch
    except ImportError:
        return ["torch not installed: no GPU check"]
    if not torch.cuda.is_available():
        return [f"CUDA: not available (torch {torch.__version__}); the model runs on CPU in float32 (slow for 6B)"]
    lines = [f"CUDA: available, {torch.cuda.device_count()} GPU(s), CUDA runtime {torch.version.cuda}"]
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        major, minor = torch.cuda.get_device_capability(index)
        dtype = "bfloat16" if major >= 8 else "float16"
        lines.append(f"GPU {index}: {torch.cuda.get_device_name(index)}, {free / GIB:.1f} GiB free of "
                     f"{total / GIB:.1f} GiB, compute capability {major}.{minor} (llm.dtype=auto -> {dtype})")
    return lines


def _template_of(folder: Path) -> str:
    """The chat template the model in ``folder`` would use, or "" when that cannot be told without loading it."""
    from rag.llm.hf.load import chat_template_for

    try:
        from transformers import AutoTokenizer

        return chat_template_for(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))[0]
    except (ImportError, OSError, ValueError, KeyError, RagError):
        return ""


def _is_chatglm3(folder: Path) -> bool:
    from rag.llm.glm import convert as chatglm3

    return bool(chatglm3.is_chatglm3_checkpoint(folder))


def _not_found(exc: ModelUnavailableError) -> str:
    """``  not found: <what was tried>. <the fix>`` (the model's name is on the line above)."""
    return "  not found: " + str(exc).split(" not found: ", 1)[-1]


def check_llm(cfg: LLMConfig, online: bool) -> tuple[list[str], str]:
    """Lines about the language model, and its chat template ("" when unknown)."""
    lines = [f"language model: {cfg.model} (llm.backend={cfg.backend}, llm.source={cfg.source})"]
    if cfg.backend in ("extractive", "openai"):
        return [*lines, "  not loaded locally with this backend"], ""
    template = ""
    try:
        folder, origin = hub.resolve_model(cfg.model, revision=cfg.revision, source=cfg.source,
                                           modelscope_id=cfg.modelscope_id, cache_dir=cfg.cache_dir,
                                           kind="language model", section="llm", network=False)
    except ModelUnavailableError as exc:
        lines.append(_not_found(exc))
        if cfg.backend == "auto":
            lines.append("  until it is installed the app answers extractively (quotes with citations)")
    else:
        lines.append(f"  found: {origin}")
        if _is_chatglm3(folder):
            lines.append("  ChatGLM3 checkpoint: converted to native GLM (no remote code) once, on first load")
            template = "chatglm3"
        else:
            template = _template_of(folder)
        lines.append(f"  chat template: {template or 'unknown until the model loads'}")
    if online:
        lines += [f"  {line}" for line in hub.probe(cfg.model, source=cfg.source, revision=cfg.revision,
                                                   modelscope_id=cfg.modelscope_id)]
    return lines, template


def check_embedder(cfg: EmbedConfig, online: bool) -> list[str]:
    from rag.embed.e5 import is_complete, me5_small_path

    head = f"embedding model: {cfg.model} (embed.source={cfg.source})"
    if cfg.source == "hash":
        return [head, "  the hash embedder (for tests; no model)"]
    try:
        _, origin = hub.resolve_model(cfg.model, revision=cfg.revision, source=cfg.source,
                                      modelscope_id=cfg.modelscope_id, cache_dir=cfg.cache_dir,
                                      kind="embedding model", section="embed", network=False)
        lines = [head, f"  found: {origin}"]
    except ModelUnavailableError as exc:
        me5 = me5_small_path(cfg.cache_dir)
        fallback = {"none": "embed.fallback=none: ingest stops with this error",
                    "bm25": "embed.fallback=bm25: retrieval is BM25 only",
                    "me5-small": (f"fallback: the offline multilingual-e5-small at {me5}" if is_complete(me5) else
                                  "fallback: BM25 only (build the offline embedder with `python -m rag.embed.e5`)")}
        lines = [head, _not_found(exc), f"  {fallback.get(cfg.fallback, f'embed.fallback={cfg.fallback} is not valid')}"]
    if online:
        lines += [f"  {line}" for line in hub.probe(cfg.model, source=cfg.source, revision=cfg.revision,
                                                   modelscope_id=cfg.modelscope_id)]
    return lines


def check_adapters(cfg: LLMConfig, template: str) -> list[str]:
    infos = list_adapters(cfg.adapters_dir, base_model_id=cfg.model, template=template or None,
                          base_revision=cfg.revision)
    head = f"adapters in {cfg.adapters_dir}"
    if not infos:
        return [f"{head}: none"]
    rows = [[i.name, "yes" if i.usable else "no", i.metadata.base_model if i.metadata else "-",
             i.metadata.template if i.metadata else "-", i.reason or ("(template checked when the model loads)"
                                                                       if i.usable and not template else "")]
            for i in infos]
    return [f"{head}:", table(rows, ["adapter", "usable", "base model", "template", "reason"])]


def check(cfg: RagConfig, online: bool = False) -> list[str]:
    """Everything ``python -m rag.models check`` prints, as lines."""
    lines = versions() + gpus()
    llm_lines, template = check_llm(cfg.llm, online)
    return lines + llm_lines + check_embedder(cfg.embed, online) + check_adapters(cfg.llm, template)


def download_model(model: str, cfg: RagConfig, source: str, revision: str, cache_dir: str,
                   timeout_s: float) -> tuple[Path, str]:
    """Download ``model`` and make it loadable: (folder, the ``key=value`` setting that uses it)."""
    folder = hub.download(model, source=source, revision=revision, cache_dir=cache_dir, timeout_s=timeout_s)
    if (folder / "modules.json").is_file():  # a sentence-transformers model
        return folder, f"embed.model={folder}"
    if _is_chatglm3(folder):
        from rag.llm.hf.load import native_folder

        print(f"converting the ChatGLM3 checkpoint in {folder} to native GLM (once) ...", file=sys.stderr)
        folder = native_folder(folder, cache_dir)
    return folder, f"llm.model={folder}"


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rag.models", description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="report versions, GPUs, models and adapters (no download)")
    check_parser.add_argument("--online", action="store_true",
                              help="also ask the hubs whether the models exist (downloads nothing)")
    add_config_args(check_parser)
    download_parser = commands.add_parser("download", help="download a model into the cache and print its folder")
    download_parser.add_argument("model", help="chatglm3-6b, text2vec-base-chinese, or a hub id such as org/name")
    download_parser.add_argument("--source", choices=["auto", "modelscope", "huggingface"], default="auto",
                                 help="auto: ModelScope when installed, then Hugging Face")
    download_parser.add_argument("--revision", default="", help="hub commit or tag to pin (default: the hub's)")
    download_parser.add_argument("--cache-dir", default=None, help="default: llm.cache_dir ($KBQA_CACHE wins)")
    download_parser.add_argument("--timeout", type=float, default=None, help="seconds (default: llm.hub_timeout_s)")
    add_config_args(download_parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.command == "check":
        print("\n".join(check(cfg, online=args.online)))
        return 0
    # a stop (the page's cancel sends SIGTERM) ends the hub client too: as SystemExit it passes through
    # rag.models.hub, which kills the client's process group; the .partial folder stays for a resume
    signal.signal(signal.SIGTERM, _stop)
    folder, setting = download_model(args.model, cfg, args.source, args.revision, args.cache_dir or cfg.llm.cache_dir,
                                     args.timeout if args.timeout is not None else cfg.llm.hub_timeout_s)
    print(f"downloaded {args.model} to {folder}")
    print(f"use it with: {setting}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args()))
