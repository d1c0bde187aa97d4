"""``llm.quantization=int8|int4``: a model whose linears are served weight-only quantized by the fast decoder.

bitsandbytes (``4bit``/``nf4``/``8bit``) keeps transformers' own forward, which the CUDA-graph decoder cannot run, so
those models answer at ``generate``'s speed. ``int8``/``int4`` instead quantize every linear of the decoder layers (and
the output layer, int8) into :class:`rag.llm.fastgen.quant.QuantLinear` copies that
:class:`rag.llm.fastgen.generator.FastGenerator` reads directly: fewer bytes per weight, more tokens per second, and
LoRA adapters stay unmerged and switchable per request.

Loading never puts the bf16 weights on the GPU: the first start loads the model on the CPU, quantizes it one linear at a
time on the GPU (the bf16 copy of each linear is freed at once) and moves only what stays unquantized (embeddings,
norms, biases) to the GPU; then it writes the quantized tensors to a cache file beside the native conversion
(:func:`cache_file`). Later starts build the model with no weights at all (``meta``), read the unquantized tensors from
the checkpoint and the quantized ones from the cache: a fraction of the bytes, and no CPU copy of the model.
A cache that does not fit the model (another checkpoint, a damaged file) is reported and quantized again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from rag.core.errors import ConfigError

logger = logging.getLogger(__name__)

FAST_QUANTIZATIONS = ("int8", "int4")
# bump when the cached tensors' layout changes (2: int4 nibbles interleaved per 32-bit word within each group; 3:
# integer zero points, and nibbles k and k + 4 of a word two adjacent columns)
CACHE_FORMAT = 3


def check_settings(kind: str, *, fast_decode: str, device: str = "") -> None:
    """int8 / int4 are served by the CUDA-graph decoder only: not with ``llm.fast_decode=off``, not off CUDA (checked
    before any loading by :meth:`rag.llm.hf.model.HFChatModel.load`, and by the decoder built around such a model)."""
    if fast_decode == "off":
        raise ConfigError(f"llm.quantization={kind} is served by the fast decoder; llm.fast_decode=off cannot be "
                          "combined with it (use auto, or llm.quantization=nf4)")
    if device and not device.startswith("cuda"):
        raise ConfigError(f"llm.quantization={kind} is served by the fast GPU decoder, but the model runs on {device}; "
                          "set llm.quantization= (empty) on a CPU")


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files (the cache key and the tensors of a cached start come from them)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"llm.quantization int8/int4 reads safetensors weights; {folder} has none")
    return files


def cache_file(folder: Path, kind: str, cache_root: Path) -> Path:
    """Where the quantized tensors of ``folder`` are cached: keyed by the checkpoint's path, its weight files' names,
    sizes and modification times, the kind and :data:`CACHE_FORMAT`, so a changed checkpoint is quantized again."""
    stamp = [str(folder.resolve()), kind, CACHE_FORMAT] + [
        (p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in weight_files(folder)]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    return cache_root / "quantized" / f"{folder.name}-{kind}-{key}.safetensors"


def load(folder: Path, kind: str, device: str, dtype: Any, cache_root: Path, trust: bool = False
         ) -> tuple[Any, dict[str, Any], str]:
    """(model on ``device`` with its served linears' weights freed, ``{name: QuantLinear}``, "cache" | "quantized").

    Raises:
        ConfigError: no safetensors weights.
    """
    cached = cache_file(folder, kind, cache_root)
    if cached.is_file():
        t0 = time.perf_counter()
        try:
            model, quant = from_cache(folder, cached, device, dtype, trust)
        except Exception as exc:  # a damaged file, or a model this loader cannot build empty: quantize again
            logger.warning("quantized cache %s is unusable (%s: %s); quantizing the model again", cached,
                           type(exc).__name__, exc)
        else:
            logger.info("%s weights of %s read from %s in %.1f s", kind, folder, cached, time.perf_counter() - t0)
            return model, quant, "cache"
    t0 = time.perf_counter()
    model, quant = quantize_from_checkpoint(folder, kind, device, dtype, trust)
    logger.info("%s: quantized %d linears to %s in %.1f s", folder, len(quant), kind, time.perf_counter() - t0)
    try:
        save(cached, quant, folder, kind)
    except OSError as exc:  # a read-only or full cache only costs the next start its speed
        logger.warning("could not cache the %s weights at %s (%s); the next start quantizes again", kind, cached, exc)
    return model, quant, "quantized"


def quantize_from_checkpoint(folder: Path, kind: str, device: str, dtype: Any, trust: bool
                             ) -> tuple[Any, dict[str, Any]]:
    """The first start: the model on the CPU, its linears quantized one at a time on ``device``, the rest moved."""
    from transformers import AutoModelForCausalLM

    from rag.llm.fastgen.quant import quantize_served

    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                                      trust_remote_code=trust)
    quant = quantize_served(model, kind, release=True, device=device)
    return model.to(device).eval(), quant


def save(path: Path, quant: dict[str, Any], folder: Path, kind: str) -> None:
    """Write the quantized tensors (portable layout) atomically: a crash leaves no half-written cache behind."""
    from safetensors.torch import save_file

    from rag.llm.fastgen.quant import portable_tensors

    tensors: dict[str, Any] = {}
    for name, layer in quant.items():
        tensors.update(portable_tensors(name, layer))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    save_file(tensors, str(partial), metadata={"kind": kind, "source": str(folder), "format": str(CACHE_FORMAT)})
    os.replace(partial, path)


def from_cache(folder: Path, cached: Path, device: str, dtype: Any, trust: bool) -> tuple[Any, dict[str, Any]]:
    """A later start: an empty (``meta``) model filled with the checkpoint's unquantized tensors and the cache's
    quantized ones; nothing of the served linears' bf16 weights is read."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from rag.llm.fastgen.quant import from_portable, served_linears

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust)
    served = served_linears(model)
    raw = load_file(str(cached))
    quant = {name: from_portable(raw, name, device) for name in served}
    skip = {f"{name}.weight" for name in served}
    wanted = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    for file in weight_files(folder):
        with safe_open(str(file), framework="pt", device=device) as reader:
            for key in reader.keys():  # noqa: SIM118 (safe_open is no dict)
                if key in wanted and key not in skip:
                    assign(model, key, reader.get_tensor(key).to(dtype))
    for name, module in served.items():
        module.weight = torch.nn.Parameter(torch.empty(0, dtype=dtype, device=device), requires_grad=False)
        bias = quant[name].bias
        if module.bias is not None and module.bias.is_meta and bias is not None:
            module.bias = torch.nn.Parameter(bias, requires_grad=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    rotary = model.model.rotary_emb  # its buffers are computed at construction, not stored: build it for real
    model.model.rotary_emb = type(rotary)(config=model.config).to(device)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{len(left)} tensors not in the checkpoint (e.g. {left[0]})")
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder), local_files_only=True)
    return model.eval(), quant


def assign(model: Any, key: str, tensor: Any) -> None:
    """Put a loaded tensor in place of the ``meta`` parameter or buffer named ``key``."""
    import torch

    path, _, attr = key.rpartition(".")
    module = model.get_submodule(path)
    if attr in module._parameters:
        module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[attr] = tensor
