"""Which torch device and dtype to use, and recovering from running out of GPU memory."""

from __future__ import annotations

import gc
from typing import Any

from rag.core.errors import ConfigError

DTYPES = ("auto", "bfloat16", "float16", "float32")


def pick_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``mps`` on Apple silicon, else ``cpu``."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"llm.device={device} but torch sees no CUDA GPU; use llm.device=auto or cpu")
    return device


def pick_dtype(name: str, device: str) -> Any:
    """``auto``: bfloat16 on CUDA compute capability >= 8 (Ampere+), float16 on older GPUs (V100, T4) and MPS,
    float32 on CPU (half precision there is slow and loses accuracy)."""
    import torch

    if name not in DTYPES:
        raise ConfigError(f"llm.dtype={name!r} is not one of {', '.join(DTYPES)}")
    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda"):
        major, _ = torch.cuda.get_device_capability(torch.device(device))
        return torch.bfloat16 if major >= 8 else torch.float16
    return torch.float16 if device == "mps" else torch.float32


# how a full GPU shows up besides torch.OutOfMemoryError: cuBLAS / cuDNN failing to get workspace (seen on an H100
# filled to the last 2 MiB: SDPA's cuDNN backend raised "mha_graph.execute(...).is_good()" instead of an OOM)
OOM_MARKERS = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed", "mha_graph.execute")


def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc).lower() for marker in OOM_MARKERS)


def release_memory() -> None:
    """Give the accelerator's cached blocks back (after an out-of-memory error, or dropping the fast decoder)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
