"""LoRA's update added inside its second GEMM (``train.fused_lora``): ``torch.addmm(result, A(x), B^T, alpha=scaling)``.

Why: peft computes ``result + lora_B(lora_A(x)) * scaling``, i.e. after the small B GEMM two more passes over a
full ``[tokens, d_out]`` activation (the ``* scaling`` writes a new tensor, the ``+`` reads two and writes a third),
and the same again in the backward pass. On ChatGLM3-6B with LoRA on every linear layer that is 40,192 output
features per token and layer (q, k, v, o, gate_up, down) read and written several times over: memory-bound work of
the order of 10 % of an eager step. cuBLAS adds ``result`` in the GEMM's epilogue instead (``beta = 1``), and the
backward of ``addmm`` needs no elementwise pass either (the gradient of ``result`` is the incoming gradient itself;
``alpha`` is folded into the two gradient GEMMs).

The arithmetic is the same sum with one rounding less (the B product is not rounded to the activation dtype before
the add); tests/unit/test_finetune_speed.py compares loss and gradients with peft's own forward. Only plain LoRA
layers take the fused path: dropout (it needs the dropped input), DoRA and other variants, LoRA biases, mixed
adapter batches, disabled or merged adapters all run peft's own forward.
"""

from __future__ import annotations

import logging
import types
from typing import Any

logger = logging.getLogger(__name__)


def fuse_lora_additions(model: Any) -> int:
    """Give every plain peft LoRA ``Linear`` in ``model`` the fused forward (an instance attribute: the module, its
    weights and the saved adapter are unchanged). Returns how many layers take it."""
    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear

    def fused_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        """peft's ``lora.Linear.forward`` for plain adapters, ``* scaling`` and ``+`` folded into ``torch.addmm``."""
        active = [name for name in self.active_adapters if name in self.lora_A]
        mixed_dtypes = not torch.is_autocast_enabled(x.device.type) and any(
            self.lora_A[name].weight.dtype != x.dtype for name in active)  # peft casts the input; keep its way
        if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None or mixed_dtypes:
            return LoraLinear.forward(self, x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        result_dtype = result.dtype
        for name in active:
            down = self.lora_A[name](x)  # [..., r]
            # [tokens, d_out] = result + scaling * down @ B^T in one GEMM (under autocast, in the autocast dtype)
            flat = torch.addmm(result.reshape(-1, result.shape[-1]), down.reshape(-1, down.shape[-1]),
                               self.lora_B[name].weight.t(), alpha=self.scaling[name])
            result = flat.view(result.shape)
        return result.to(result_dtype)

    fused = 0
    for module in model.modules():
        if type(module) is not LoraLinear:  # bitsandbytes / other subclasses keep their own forward
            continue
        plain = all(isinstance(module.lora_dropout[name], torch.nn.Identity) and name not in module.lora_variant
                    and module.lora_B[name].bias is None for name in module.lora_A)
        if plain:
            setattr(module, "forward", types.MethodType(fused_forward, module))  # noqa: B010  (this instance only)
            fused += 1
    logger.info("%d LoRA layers add their update inside the B GEMM", fused)
    return fused
