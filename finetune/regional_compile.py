"""Regional compilation: ``torch.compile`` each decoder layer instead of the whole model (``train.compile_layers``).

Why: in eager mode a LoRA step on ChatGLM3-6B's shape spends a large share of its time outside the GEMMs, in
memory-bound elementwise kernels that each read and write a whole activation: RMSNorm in float32 (cast, square,
mean, rsqrt, scale), the partial rotary embedding (slices, negation, concatenation), SwiGLU (chunk, SiLU, product),
LoRA's ``* scaling`` and residual adds, the residual stream. Inductor fuses these into a few kernels; compiling the
whole model (``train.compile``) did that and went from 29.8 % to 40.7 % of executed FLOPs on an H100, but traced
all 28 layers as one graph and took ~2.5 minutes before the first step.

The decoder layers are identical modules, so one compiled graph serves every layer: Dynamo treats a layer's
parameters as inputs (inlined ``nn.Module``s), not as constants, and the guards pass for each layer in turn. Two
graphs are compiled in practice, because the first layer's input (the frozen embeddings' output) needs no gradient
and the others' do. Everything outside the layers (embedding, the block-diagonal mask built from ``position_ids``,
TRL's chunked LM head and loss) stays eager. The arithmetic is the same as eager's up to kernel fusion order
(tests/unit/test_finetune_speed.py compares loss and gradients).

Shapes are kept few and static (``dynamic=False``: no slower shape-generic kernels for the common case): the recipe
pads packed micro-batches to the full row length when layers are compiled (finetune.trainer.make_trainer), so the
only other training shape is an epoch's last, smaller micro-batch, compiled once when it first comes. Evaluation
runs eagerly (:func:`eager`): generation's growing KV cache would recompile at every length, and the no-grad eval
passes would spend compiles (Dynamo allows 8 per function) on a few seconds of work.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)


def decoder_layers(model: Any) -> list[Any]:
    """The model's repeated blocks: modules whose class is named in the transformers model's ``_no_split_modules``
    (``GlmDecoderLayer``, ``Qwen2DecoderLayer``, ...), found through any peft / DDP wrapping."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return [module for module in model.modules() if type(module).__name__ in names]


def compile_decoder_layers(model: Any, backend: str = "inductor") -> int:
    """``torch.compile`` every decoder layer of ``model`` in place (``nn.Module.compile``: the module objects, their
    parameters and the LoRA layers inside them stay the same, so peft, the optimizer and checkpointing see no
    difference). Compilation itself happens at the first forward. Returns the number of layers compiled.

    Raises:
        ValueError: the model declares no decoder layer class (``_no_split_modules``), so there is nothing to compile.
    """
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer class (_no_split_modules is empty), so "
                         "train.compile_layers cannot find its layers; set train.compile_layers=false, or "
                         "train.compile=true to compile the whole model")
    for layer in layers:
        layer.compile(backend=backend, dynamic=False)
    logger.info("compiling %d %s layers (backend %s) at the first step", len(layers), type(layers[0]).__name__,
                backend)
    return len(layers)


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run compiled modules eagerly inside the block (generation, one-off measurements): no compilation for shapes
    that training never sees."""
    import torch

    with torch.compiler.set_stance("force_eager"):
        yield
