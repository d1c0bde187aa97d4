"""Fast decoding for Hugging Face decoder-only models (GLM / ChatGLM3, Llama, Qwen2, Mistral) on one CUDA GPU.

Batch-1 decoding of a 6 B model is bound by reading the weights once per token (~12.5 GB in bf16), but stock
``model.generate`` spends most of each step in Python and kernel launches. Here:

- the KV cache is preallocated (``[layers, max_batch, kv_heads, max_len, head_dim]``) and prefill writes it directly;
- the decode step (embedding -> layers -> lm_head -> sampling -> next input) is captured ONCE in a CUDA graph per
  (adapter state, batch size, greedy/sampling) and replayed per token; inputs live in static buffers and are updated
  inside the graph, so no host sync happens per token: the host reads the new tokens every ``chunk_tokens`` steps
  (stop tokens are found there; the few steps past a stop are wasted, not shown);
- decode attention is a split-K Triton kernel that reads only the filled part of the cache (SDPA over the whole cache
  when Triton is unavailable or fails its self-check);
- element-wise work (residual add + RMSNorm, rotary, gated activation) is ``torch.compile``-d once per function (not
  per layer or per graph), which removes two thirds of the ~1,300 kernels per step;
- with no adapter active, each linear is one Triton GEMV (:mod:`rag.llm.fastgen.gemv`) with its neighbours fused in:
  the RMSNorm before q/k/v, gate/up and the output layer, SiLU of the gate half as gate/up stores it and the product
  with up before down_proj, the residual add after o_proj and down_proj; rotary and both KV-cache writes are one compiled function (``fuse_gemv``);
- unmerged peft LoRA adapters run fused: the adapters of linears that share an input (q/k/v) become one A and one
  block-diagonal B (two compiled float32 reductions at decode, two GEMMs at prefill), whose sum is the base GEMM's
  ``C`` operand. A graph is kept per adapter state (``set_adapter`` / ``disable_adapter`` switch graphs; the first
  use of a state captures one in about a second); call :meth:`FastGenerator.reset` after replacing weights or adding
  adapters.

The layer math reuses the model's own modules (norms, rotary embedding and ``apply_rotary_pos_emb``, activation), so
``logits`` match the model's forward within bf16 rounding. On CPU, and for other model types, it falls back to
``model.generate`` (``backend="hf"``); ``backend="eager"`` runs the same step without a graph (any device, for tests).

The decode attention kernels live in :mod:`rag.llm.fastgen.attention`, the compiled element-wise ops and the LoRA
fusion in :mod:`rag.llm.fastgen.ops`; this module is the generator: static cache, layer walk, graphs, sampling.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from rag.llm.fastgen import attention, gemv, quant
from rag.llm.fastgen.attention import SPLIT, decode_attention, sdpa_decode, triton_ok
from rag.llm.fastgen.gemv import fused_gemv
from rag.llm.fastgen.ops import (
    STANDARD_NORMS,
    add_rms_norm,
    compiled,
    fuse_lora,
    gated,
    lora_active,
    lora_low,
    lora_low_mm,
    lora_mm,
    lora_sum,
    pad_lora,
    rms_norm,
    rope_partners,
    rope_tables,
    rope_to_cache,
)
from rag.llm.fastgen.quant import GEMV_MAX_ROWS, QuantLinear, concat_quant, quantize_served, served_linears
from rag.llm.fastgen.quant import KINDS as QUANT_KINDS

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("glm", "llama", "qwen2", "mistral")
BACKENDS = ("auto", "graph", "eager", "hf")


class FastGenerator:
    """Static-cache, CUDA-graph decoding of ``model`` (a ``*ForCausalLM`` or a peft model around one).

    Args:
        model: the model; it is put in eval mode. Its adapters may be switched between calls.
        max_batch: most prompts decoded together (:meth:`generate_batch`).
        max_len: prompt + new tokens per row (rounded up to a multiple of 256); the cache holds this many.
        backend: ``auto`` (``graph`` on CUDA for supported model types, else ``hf``), ``graph``, ``eager`` (the same
            step without a graph) or ``hf`` (plain ``model.generate``).
        compile: ``torch.compile`` the element-wise pieces of the decode step (residual add + RMSNorm, the model's
            rotary function, the gated activation) once each, ~10 s per process: a third of the kernels per step.
        attention: ``auto`` (Triton where it passes its self-check), ``triton`` or ``sdpa``.
        chunk_tokens: decode steps between host reads of the new tokens (stop-token checks, streaming granularity).
        fuse_lora: run plain LoRA adapters fused (else through peft's own forward, ~4 more kernels per linear).
        quantize: ``""`` (the model's own weights), ``int8`` or ``int4``: weight-only quantized copies of the blocks'
            linears (:mod:`rag.llm.fastgen.quant`; the output layer is int8 in both) serve every step; LoRA adapters
            stay unmerged and switchable. Needs ``fuse_lora`` and plain LoRA adapters.
        release_weights: with ``quantize``, free the model's own copies of those weights (the memory saving; the
            model can then only answer through this generator).
        fuse_qkv: serve each layer's q, k and v projections as one matrix (their weights become views of it, so no
            memory is added; quantized, one extra copy of q/k/v): one GEMV instead of three per layer and token,
            the k and v ones being small and far from the memory bandwidth.
        quantized: with ``quantize``, the quantized copies already made (by name, see
            :func:`rag.llm.fastgen.quant.quantize_served`), e.g. loaded from the cache of :mod:`rag.llm.hf.quantized`.
        fuse_gemv: decode steps with no adapter active run the fused GEMV layer walk
            (:meth:`_forward_fused`) where the model allows it (joined q/k/v, a joined gate/up matrix, standard RMSNorm,
            SiLU); other models and adapter states take the general walk. ``None`` (default): on for bf16 and int8
            weights, and for int4 through the bf16 or fp16-pair GEMV (``quant.int4_prologue_once``) — bf16 gained 15 %;
            int8 (its GEMVs through their bits, split-K for the layers of few rows) 13 % on an H200 (395.0 vs 348.5
            tok/s, same run); int4 8 % on an H100 (369.5 vs 342.0 tok/s, same run), where through the float32 int4
            GEMV (prologue per weight) its fused walk was 23 % slower (247.0 vs 321.1 tok/s; docs/BENCHMARKS.md).
            With int4 weights, plain LoRA adapters take the fused walk too (:attr:`lora_fused_walk`): an active r 8
            adapter on every linear costs 2.4 % of adapter-off decoding on an H100 (17.2 % on the general walk).
    """

    def __init__(self, model: Any, max_batch: int = 1, max_len: int = 4096, *, backend: str = "auto",
                 compile: bool = True, attention: str = "auto", chunk_tokens: int = 16, fuse_lora: bool = True,
                 quantize: str = "", release_weights: bool = False, fuse_qkv: bool = True,
                 quantized: Mapping[str, QuantLinear] | None = None, fuse_gemv: bool | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
        if quantize and quantize not in QUANT_KINDS:
            raise ValueError(f"quantize={quantize!r} is not one of {', '.join(QUANT_KINDS)} (or empty)")
        if quantize and not fuse_lora:
            raise ValueError("quantize needs fuse_lora=True (peft's own forward would read the unquantized weights)")
        self.model = model.eval()
        get_base = getattr(model, "get_base_model", None)
        self.lm: Any = get_base() if callable(get_base) else model
        config = self.lm.config
        self.device = self.lm.get_output_embeddings().weight.device
        supported = config.model_type in SUPPORTED_MODEL_TYPES
        if backend == "auto":
            backend = "graph" if self.device.type == "cuda" and supported else "hf"
        if backend != "hf" and not supported:
            raise ValueError(f"backend={backend} supports model types {SUPPORTED_MODEL_TYPES}, not "
                             f"{config.model_type!r}; use backend='hf'")
        if backend == "graph" and self.device.type != "cuda":
            raise ValueError(f"backend=graph needs the model on a CUDA device, not {self.device}; use backend='eager'")
        self.backend, self.max_batch, self.chunk_tokens = backend, max_batch, max(1, chunk_tokens)
        self.fuse_lora, self.quantize = fuse_lora, quantize
        self.max_len = -(-max_len // SPLIT) * SPLIT
        self._quant: dict[int, QuantLinear] = {}
        if backend == "hf":
            if quantize:
                raise ValueError(f"quantize={quantize} runs in the fast decoder's own step, not backend='hf'")
            return
        decoder: Any = self.lm.model
        self._embed, self._rotary, self._norm, self._layers = (decoder.embed_tokens, decoder.rotary_emb,
                                                               decoder.norm, list(decoder.layers))
        attn = self._layers[0].self_attn
        self._rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb  # the model's own rotary convention
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        dtype, dev = self._embed.weight.dtype, self.device
        shape = (len(self._layers), max_batch, self.kv_heads, self.max_len, self.head_dim)
        self._k, self._v = torch.zeros(shape, dtype=dtype, device=dev), torch.zeros(shape, dtype=dtype, device=dev)
        # static inputs/outputs of the captured step (per row): next input token, its position, sampling settings
        self._tokens = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self._positions = torch.zeros(max_batch, dtype=torch.long, device=dev)
        self._temperature = torch.zeros(max_batch, device=dev)
        self._top_p = torch.ones(max_batch, device=dev)
        self._out = torch.zeros(max_batch, self.chunk_tokens, dtype=torch.long, device=dev)  # tokens of this chunk
        self._step = torch.zeros(1, dtype=torch.long, device=dev)  # index into _out
        self.logits = torch.zeros(max_batch, config.vocab_size, device=dev)  # float32 logits of the last step
        self._rows = torch.arange(max_batch, device=dev)
        if attention not in ("auto", "triton", "sdpa"):
            raise ValueError(f"attention={attention!r} is not one of auto, triton, sdpa")
        self.attention = attention
        if attention == "auto":
            ok = triton_ok(dtype, dev, self.heads, self.kv_heads, self.head_dim)
            self.attention = "triton" if ok else "sdpa"
        # the rotary as pairs of dimensions, for the decode attention that applies it (attention.FUSED_ROPE); a
        # rotary this probe cannot run keeps its own op
        self._partners: torch.Tensor | None = None
        if self.attention == "triton":
            try:
                self._partners = rope_partners(self._rope, self._rotary, self.head_dim, dev)
            except Exception as exc:  # an unusual rotary signature: not worth failing the decoder for
                logger.debug("rotary kept as its own op: %s", exc)
        self._act = getattr(self._layers[0].mlp, "activation_fn", None) or self._layers[0].mlp.act_fn
        self._eager: dict[str, Any] = {"norm": rms_norm, "add_norm": add_rms_norm, "rope": self._rope,
                                       "gated": gated, "lora": lora_mm, "lora_low": lora_low_mm,
                                       "rope_cache": rope_to_cache, "rope_tables": rope_tables}
        self.compile = compile and backend == "graph"  # prefill keeps the eager ones (its lengths vary)
        self._fast = {**{k: compiled(f) for k, f in self._eager.items()}, "lora": compiled(lora_sum),
                      "lora_low": compiled(lora_low)} if self.compile else self._eager
        if quantize:
            self._quant = self._quantized(quantize, release_weights, quantized)
        self._cat = self._concatenated() if fuse_qkv else {}
        fuse = (quantize in ("", "int8") or quantize == "int4" and quant.int4_prologue_once()) if fuse_gemv is None \
            else fuse_gemv
        self._qkv_plan = self._fused_plan() if fuse else None
        self._layer_ids = torch.arange(len(self._layers), device=dev)
        self._graphs: dict[tuple[Any, ...], torch.cuda.CUDAGraph] = {}
        self._state: tuple[Any, ...] = ("base",)  # adapter state of the current call
        self._lora: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = {}
        # quantized decode adds LoRA's B projection in the GEMV epilogue (False: as an addend the GEMV reads, the old
        # path, kept for comparison); its zero-padded A and B, per adapter state and group (ops.pad_lora)
        self.lora_epilogue = True
        self._lora_pad: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        # quantized decode with plain LoRA adapters on takes the fused walk too, LoRA's x @ A^T made by the int4
        # pairs kernel (with the pairs, or alone before the bf16 GEMV: quant.int4_lora_low). None (default): on for
        # int4 (H100, through the pair GEMV: the adapter cost 2.4 % of adapter-off decoding instead of 17 % on the
        # general walk), off for int8 (its x @ A^T would be extra kernels, not measured); True / False: forced
        self.lora_fused_walk: bool | None = None
        self._lora_walk: dict[tuple[Any, ...], bool] = {}

    def _quantized(self, kind: str, release: bool, made: Mapping[str, QuantLinear] | None) -> dict[int, QuantLinear]:
        """Quantized copies of every block linear (``kind``) and of the output layer (int8), by module id: ``made``
        (by name, from :func:`rag.llm.fastgen.quant.quantize_served` or its cache) or quantized here."""
        modules = served_linears(self.lm)
        if made is None:
            made = quantize_served(self.lm, kind, release=release)
        missing = sorted(set(modules) - set(made))
        if missing:
            raise ValueError(f"quantized weights are missing for {len(missing)} linears (e.g. {missing[0]}); "
                             "they were made for another model")
        return {id(module): made[name] for name, module in modules.items()}

    def _concatenated(self) -> dict[tuple[int, ...], tuple[Any, torch.Tensor | None, list[int]]]:
        """Per layer, by the ids of its q/k/v base linears: (one weight [sum out, in] or one QuantLinear, the biases
        together or None, the widths). Plain weights are moved into the joined matrix and left as views of it."""
        out: dict[tuple[int, ...], tuple[Any, torch.Tensor | None, list[int]]] = {}
        for layer in self._layers:
            attn = layer.self_attn
            bases = [getattr(m, "base_layer", m) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
            widths = [b.out_features for b in bases]
            if not all(isinstance(b, torch.nn.Linear) for b in bases) or \
                    len({b.bias is None for b in bases}) != 1:
                continue
            if self._quant:  # the joined QuantLinear carries the biases itself
                parts = [self._quant[id(b)] for b in bases]
                if len({(p.kind, p.group) for p in parts}) == 1:
                    out[tuple(map(id, bases))] = (concat_quant(parts), None, widths)
                continue
            bias = None if bases[0].bias is None else torch.cat([b.bias.detach() for b in bases])
            weight = torch.cat([b.weight.detach() for b in bases])
            for b, piece in zip(bases, weight.split(widths), strict=True):
                b.weight.data = piece  # the model's own forward reads the same numbers, stored once
            if bias is not None:
                for b, piece in zip(bases, bias.split(widths), strict=True):
                    b.bias.data = piece
            out[tuple(map(id, bases))] = (weight, bias, widths)
        return out

    def _fused_plan(self) -> list[tuple[Any, torch.Tensor | None, list[int]]] | None:
        """Each layer's joined q/k/v (:meth:`_concatenated`) when :meth:`_forward_fused` can serve this model, else
        None: every layer's q/k/v joined, one gate/up matrix without bias, bias-free o/down projections, standard
        RMSNorms and a SiLU activation."""
        if not self._cat or type(self._norm).__name__ not in STANDARD_NORMS:
            return None
        probe = torch.linspace(-4, 4, 17)  # the activation by what it computes (SiLU has several classes)
        try:
            if not torch.allclose(self._act(probe), F.silu(probe), atol=1e-6):
                return None
        except (TypeError, RuntimeError):
            return None
        plan = []
        for layer in self._layers:
            attn, mlp = layer.self_attn, layer.mlp
            bases = tuple(id(getattr(m, "base_layer", m)) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
            if bases not in self._cat or not hasattr(mlp, "gate_up_proj"):
                return None
            for m in (attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
                base = getattr(m, "base_layer", m)
                if not isinstance(base, torch.nn.Linear) or base.bias is not None:
                    return None
            if any(type(n).__name__ not in STANDARD_NORMS
                   for n in (layer.input_layernorm, layer.post_attention_layernorm)):
                return None
            plan.append(self._cat[bases])
        head = self.lm.get_output_embeddings()
        return plan if isinstance(head, torch.nn.Linear) and head.bias is None else None

    @property
    def _fusable(self) -> bool:
        """Whether decode steps with no adapter active take :meth:`_forward_fused`."""
        return self._qkv_plan is not None

    @property
    def weight_bytes(self) -> int:
        """Bytes the decode step reads for the linears it serves quantized (0 without ``quantize``)."""
        return sum(q.nbytes for q in self._quant.values())

    def reset(self) -> None:
        """Drop captured graphs and fused adapter weights (after replacing weights or adding adapters)."""
        if self.backend != "hf":
            self._graphs.clear()
            self._lora.clear()
            self._lora_pad.clear()
            self._lora_walk.clear()

    # ---- the model math: reuse the model's modules, write the static cache ----
    def _adapter_state(self) -> tuple[Any, ...]:
        for module in self.lm.modules():  # the first peft layer tells the state of all (peft switches them together)
            if hasattr(module, "lora_A") and hasattr(module, "active_adapters"):
                return bool(module.disable_adapters), bool(module.merged), tuple(module.active_adapters)
        return ("base",)

    def _fused_lora(self, modules: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """For peft LoRA linears sharing one input: the fused weights (:func:`rag.llm.fastgen.ops.fuse_lora`)."""
        return fuse_lora(modules) if self.fuse_lora else None

    def _lora_low(self, fns: dict[str, Any], key: tuple[Any, ...], fused: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                  flat: torch.Tensor, quantized: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For quantized decode rows (the GEMV path): ``(x @ A^T [M, R], B [sum out, R])``, both zero-padded
        (:func:`rag.llm.fastgen.ops.pad_lora`, made once per adapter state), for the GEMVs' LoRA epilogue; else None
        (the bf16 path, prefill and ``lora_epilogue`` off add the whole delta)."""
        if not (quantized and self.lora_epilogue and flat.shape[0] <= GEMV_MAX_ROWS):
            return None
        a_pad, b_pad = self._padded(key, fused)
        return fns["lora_low"](flat, a_pad), b_pad

    def _padded(self, key: tuple[Any, ...],
                fused: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The zero-padded (A, B) of a group's fused adapters (:func:`rag.llm.fastgen.ops.pad_lora`), made once per
        adapter state and group (``key``)."""
        if key not in self._lora_pad:
            self._lora_pad[key] = pad_lora(fused[0], fused[1])
        return self._lora_pad[key]

    def _group_lora(self, modules: Sequence[Any]) -> tuple[tuple[Any, ...], Any]:
        """(key, fused adapters) of the linears ``modules`` that share an input, in this adapter state: ``key`` names
        the group and state, the fused adapters are :meth:`_fused_lora`'s (None: peft must run them), made once."""
        key = (self._state, *(id(m) for m in modules))
        if key not in self._lora:
            self._lora[key] = self._fused_lora(modules)
        return key, self._lora[key]

    def _linears(self, fns: dict[str, Any], modules: Sequence[Any], x: torch.Tensor) -> list[torch.Tensor]:
        """``[m(x) for m in modules]``, with unmerged LoRA as 2 small GEMMs for the group + the bases' own GEMMs (on
        quantized decode: ``x @ A^T`` for the group, ``B`` in the quantized GEMVs' epilogue)."""
        key, fused = self._group_lora(modules)
        cat = self._cat.get(tuple(id(getattr(m, "base_layer", m)) for m in modules)) if len(modules) > 1 else None
        if cat is not None and (fused is not None or not any(lora_active(m) for m in modules)):
            return self._joined(fns, cat, fused, x, key)
        if fused is None:  # not fusable as a group (e.g. LoRA on q and v, not k): each module on its own
            if len(modules) > 1:
                return [self._linears(fns, [m], x)[0] for m in modules]
            return [self._plain(modules[0], x)]
        a_cat, b_block, bias = fused
        flat = x.reshape(-1, x.shape[-1])
        quants = [self._quant.get(id(m.base_layer)) for m in modules]
        epilogue = self._lora_low(fns, key, fused, flat, all(q is not None for q in quants))
        if epilogue is not None:  # each quantized GEMV adds its bias and its rows of B (low) as it stores
            low, b_pad = epilogue
            outs, offset = [], 0
            for m, linear in zip(modules, quants, strict=True):
                width = m.base_layer.out_features
                out = linear(flat, lora=(low, b_pad[offset : offset + width]))  # type: ignore[misc]
                outs.append(out.view(*x.shape[:-1], width))
                offset += width
            return outs
        delta = fns["lora"](flat, a_cat, b_block, bias)  # bias + sum of scaled B(A x): [M, sum out]
        outs, offset = [], 0
        for m in modules:
            base = m.base_layer
            width = base.out_features
            part = delta[:, offset : offset + width]
            linear = self._quant.get(id(base))
            out = torch.addmm(part, flat, base.weight.t()) if linear is None else linear(flat, add=part)
            outs.append(out.view(*x.shape[:-1], width))
            offset += width
        return outs

    def _joined(self, fns: dict[str, Any], cat: tuple[Any, torch.Tensor | None, list[int]],
                fused: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, x: torch.Tensor,
                key: tuple[Any, ...]) -> list[torch.Tensor]:
        """q, k and v through their joined weight (one GEMV), plus the fused LoRA delta when adapters are on."""
        weight, bias, widths = cat
        flat = x.reshape(-1, x.shape[-1])
        epilogue = None if fused is None else \
            self._lora_low(fns, key, fused, flat, isinstance(weight, QuantLinear))
        if fused is None:
            out = weight(flat) if isinstance(weight, QuantLinear) else F.linear(flat, weight, bias)
        elif epilogue is not None:  # the joined QuantLinear adds its biases and B (low) as it stores
            out = weight(flat, lora=epilogue)
        else:  # the delta carries the biases
            delta = fns["lora"](flat, *fused)
            out = weight(flat, add=delta) if isinstance(weight, QuantLinear) else \
                torch.addmm(delta, flat, weight.t())
        return [part.view(*x.shape[:-1], part.shape[-1]) for part in out.split(widths, dim=-1)]

    def _plain(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        """``module(x)`` for a linear whose LoRA (if any) is not fused: through its quantized copy when it has one."""
        base = getattr(module, "base_layer", module)
        linear = self._quant.get(id(base))
        if linear is None:
            return module(x)
        if base is not module and (module.merged or (not module.disable_adapters and any(
                a in module.lora_A for a in module.active_adapters))):
            raise ValueError("quantized decoding runs plain unmerged LoRA adapters only (not merged, DoRA or other "
                             "variants); merge the adapter into the weights before quantizing, or quantize=''")
        return linear(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], linear.out_features)

    def _attention(self, fns: dict[str, Any], i: int, layer: Any, x: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, positions: torch.Tensor, prefill_row: int | None) -> torch.Tensor:
        attn = layer.self_attn
        batch, length, _ = x.shape
        q, k, v = (t.view(batch, length, -1, self.head_dim).transpose(1, 2)  # [B, heads, T, D]
                   for t in self._linears(fns, [attn.q_proj, attn.k_proj, attn.v_proj], x))
        q, k = fns["rope"](q, k, cos, sin)
        k_cache, v_cache = self._k[i], self._v[i]  # [max_batch, kv_heads, max_len, D]
        if prefill_row is not None:  # one prompt from position 0: causal attention over its own tokens
            k_cache[prefill_row, :, :length], v_cache[prefill_row, :, :length] = k[0], v[0]
            group = self.heads // self.kv_heads
            out = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                                 is_causal=True, scale=attn.scaling).transpose(1, 2)
        else:  # one new token per row at positions[b]
            pos = positions[:, 0]
            k_cache[self._rows[:batch], :, pos], v_cache[self._rows[:batch], :, pos] = k[:, :, 0], v[:, :, 0]
            attend = decode_attention if self.attention == "triton" else sdpa_decode
            out = attend(q[:, :, 0], k_cache, v_cache, pos, attn.scaling)
        return self._linears(fns, [attn.o_proj], out.reshape(batch, length, -1))[0]

    def _mlp(self, fns: dict[str, Any], mlp: Any, x: torch.Tensor) -> torch.Tensor:
        if hasattr(mlp, "gate_up_proj"):  # GLM: one fused gate+up matrix
            gate, up = self._linears(fns, [mlp.gate_up_proj], x)[0].chunk(2, dim=-1)
        else:
            gate, up = self._linears(fns, [mlp.gate_proj, mlp.up_proj], x)
        return self._linears(fns, [mlp.down_proj], fns["gated"](self._act, gate, up))[0]

    def _add_norm(self, fns: dict[str, Any], norm: Any, hidden: torch.Tensor,
                  delta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden + delta, norm(hidden + delta)); the model's own module where its norm is not a standard RMSNorm."""
        if type(norm).__name__ not in STANDARD_NORMS:
            hidden = hidden if delta is None else hidden + delta
            return hidden, norm(hidden)
        if delta is None:
            return hidden, fns["norm"](hidden, norm.weight, norm.variance_epsilon)
        return fns["add_norm"](hidden, delta, norm.weight, norm.variance_epsilon)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, prefill_row: int | None = None) -> torch.Tensor:
        """ids, positions [B, T] -> float32 logits of the last position [B, vocab]; writes the KV cache."""
        if prefill_row is None:  # graph warm-up runs a few steps ahead; real steps never pass max_len - 1
            positions = positions.clamp_max(self.max_len - 1)
            if self._fusable and (self._state == ("base",) or (self._state[0] and not self._state[1])
                                  or self._lora_walk_ok()):
                return self._forward_fused(ids, positions)
        fns = self._eager if prefill_row is not None else self._fast
        hidden = self._embed(ids)
        cos, sin = self._rotary(hidden, positions)
        hidden, x = self._add_norm(fns, self._layers[0].input_layernorm, hidden, None)
        for i, layer in enumerate(self._layers):
            attn = self._attention(fns, i, layer, x, cos, sin, positions, prefill_row)
            hidden, x = self._add_norm(fns, layer.post_attention_layernorm, hidden, attn)
            after = self._layers[i + 1].input_layernorm if i + 1 < len(self._layers) else self._norm
            hidden, x = self._add_norm(fns, after, hidden, self._mlp(fns, layer.mlp, x))
        return self._linears(fns, [self.lm.get_output_embeddings()], x[:, -1])[0].float()

    def _walk_groups(self) -> list[list[Any]]:
        """The linears of the fused walk by shared input: each layer's q/k/v, o, gate/up and down; the output layer."""
        groups = []
        for layer in self._layers:
            attn, mlp = layer.self_attn, layer.mlp
            groups += [[attn.q_proj, attn.k_proj, attn.v_proj], [attn.o_proj], [mlp.gate_up_proj], [mlp.down_proj]]
        return groups + [[self.lm.get_output_embeddings()]]

    def _lora_walk_ok(self) -> bool:
        """Whether this adapter state's decode steps take the fused walk (:attr:`lora_fused_walk`): quantized weights,
        the LoRA epilogue on, and every group's adapters plain LoRA that :func:`rag.llm.fastgen.ops.fuse_lora` can
        join (or none)."""
        on = self.quantize == "int4" and quant.int4_prologue_once() if self.lora_fused_walk is None \
            else self.lora_fused_walk
        if not (on and self._quant and self.lora_epilogue):
            return False
        if self._state not in self._lora_walk:
            self._lora_walk[self._state] = all(self._lora_ab(group) is not None or not any(map(lora_active, group))
                                               for group in self._walk_groups())
        return self._lora_walk[self._state]

    def _lora_ab(self, modules: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The zero-padded (A, B) of the fused LoRA adapters of ``modules`` in this adapter state (None: none active,
        or not joinable), for the quantized GEMVs' ``lora_ab``."""
        key, fused = self._group_lora(modules)
        return None if fused is None else self._padded(key, fused)

    def _gemv(self, module: Any, x: torch.Tensor, **fused: Any) -> torch.Tensor:
        """``module``'s base linear on ``x`` with the fused prologue / epilogue ``fused`` (see
        :func:`rag.llm.fastgen.gemv.fused_gemv`): its quantized copy's GEMV, or the bf16 one; the quantized one with
        its active LoRA adapter (``lora_ab``) when the walk runs with one."""
        base = getattr(module, "base_layer", module)
        linear = self._quant.get(id(base))
        if linear is None:
            return fused_gemv(x, base.weight, **fused)
        return linear(x, lora_ab=self._lora_ab([module]) if base is not module else None, **fused)

    def _forward_fused(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The decode step's layer walk with no adapter active (or plain LoRA adapters on quantized weights, with
        :attr:`lora_fused_walk`: their ``x @ A^T`` in the pairs kernels, B in the GEMVs' epilogue): per layer q/k/v
        GEMV (+ input norm), attention (+ rotary and cache writes, attention.FUSED_ROPE; else a compiled op before
        it), o GEMV (+ residual), gate/up GEMV (+ post-attention norm, + SiLU of the gate half as it stores), down
        GEMV (gate times up, + residual) — 5 kernels a layer instead of ~12. bf16, int8 or int4 weights alike."""
        fns = self._fast
        batch = ids.shape[0]
        hidden = self._embed(ids)  # [B, 1, H]
        cos, sin = self._rotary(hidden, positions)
        hidden = hidden[:, 0]
        pos, rows = positions[:, 0], self._rows[:batch]
        attend = decode_attention if self.attention == "triton" else sdpa_decode
        rope = None
        if self._partners is not None and attention.FUSED_ROPE and attention.ONE_KERNEL:
            rope = (*fns["rope_tables"](self._rope, cos, sin, self._partners), self._partners)
        assert self._qkv_plan is not None  # _forward calls this only when the model is fusable
        for i, (layer, (weight, bias, widths)) in enumerate(zip(self._layers, self._qkv_plan, strict=True)):
            attn, mlp = layer.self_attn, layer.mlp
            norm = layer.input_layernorm
            qkv = weight(hidden, norm_weight=norm.weight, eps=norm.variance_epsilon,
                         lora_ab=self._lora_ab([attn.q_proj, attn.k_proj, attn.v_proj])) \
                if isinstance(weight, QuantLinear) else \
                fused_gemv(hidden, weight, norm_weight=norm.weight, eps=norm.variance_epsilon, bias=bias)
            if rope is not None:  # the rotary and the cache writes in the attention kernel
                q, k, v = (t.view(batch, -1, self.head_dim) for t in qkv.split(widths, dim=-1))
                out = decode_attention(q, self._k[i], self._v[i], pos, attn.scaling, new_kv=(k, v), rope=rope)
            else:
                q, k, v = (t.view(batch, 1, -1, self.head_dim).transpose(1, 2) for t in qkv.split(widths, dim=-1))
                q = fns["rope_cache"](self._rope, q, k, v, cos, sin, self._k, self._v, self._layer_ids[i : i + 1],
                                     rows, pos)
                out = attend(q[:, :, 0], self._k[i], self._v[i], pos, attn.scaling)
            out = out.reshape(batch, -1)
            hidden = self._gemv(attn.o_proj, out, residual=hidden)
            norm = layer.post_attention_layernorm
            # SiLU on the gate half as the gate/up GEMV stores it (gemv.SILU_EPILOGUE), then down's prologue is x * up
            act = gemv.SILU_EPILOGUE
            gate_up = self._gemv(mlp.gate_up_proj, hidden, norm_weight=norm.weight, eps=norm.variance_epsilon,
                                 silu_rows=getattr(mlp.down_proj, "base_layer", mlp.down_proj).in_features
                                 if act else 0)
            gate, up = gate_up.chunk(2, dim=-1)
            hidden = self._gemv(mlp.down_proj, gate, up=up, activated=act, residual=hidden)
        return self._gemv(self.lm.get_output_embeddings(), hidden, norm_weight=self._norm.weight,
                          eps=self._norm.variance_epsilon).float()

    def _sample(self, logits: torch.Tensor, batch: int, sample: bool) -> torch.Tensor:
        """[B, vocab] -> [B] next tokens, on the device (no sync): argmax, or temperature + top-p per row."""
        greedy = logits.argmax(-1)
        if not sample:
            return greedy
        temperature, top_p = self._temperature[:batch, None], self._top_p[:batch, None]
        probs, order = torch.softmax(logits / temperature.clamp_min(1e-5), -1).sort(-1, descending=True)
        probs = probs * ((probs.cumsum(-1) - probs) < top_p)  # the smallest head holding top_p (always >= 1 token)
        choice = (probs / torch.empty_like(probs).exponential_()).argmax(-1, keepdim=True)  # exponential race
        return torch.where(temperature[:, 0] > 0, order.gather(-1, choice)[:, 0], greedy)

    def _decode_step(self, batch: int, sample: bool) -> None:
        """One token for rows [:batch], reading and updating only the static buffers (the graph's body)."""
        logits = self._forward(self._tokens[:batch, None], self._positions[:batch, None])
        token = self._sample(logits, batch, sample)
        self.logits[:batch].copy_(logits)
        self._tokens[:batch].copy_(token)
        self._out[:batch].index_copy_(1, self._step, token[:, None])
        self._step.add_(1)
        self._positions[:batch].add_(1)

    def _replay_fn(self, batch: int, sample: bool) -> Callable[[], None]:
        if self.backend == "eager":
            return lambda: self._decode_step(batch, sample)
        key = (self._state, batch, sample)
        if key not in self._graphs:
            saved = self._tokens.clone(), self._positions.clone()  # warm-up steps advance them; their cache
            stream = torch.cuda.Stream()  # writes land on slots that the real steps overwrite before reading
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # compile the element-wise pieces, fuse the LoRA weights, allocate
                    self._step.zero_()
                    self._decode_step(batch, sample)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._decode_step(batch, sample)
            self._tokens.copy_(saved[0])
            self._positions.copy_(saved[1])
            self._graphs[key] = graph
        return self._graphs[key].replay

    # ---- public API ----
    def generate(self, input_ids: Sequence[int] | torch.Tensor, max_new_tokens: int = 512,
                 stop_ids: Sequence[int] = (), temperature: float = 0.0, top_p: float = 1.0) -> Iterator[list[int]]:
        """Stream the new tokens of one prompt in chunks; the stop token itself is not yielded."""
        prompt = input_ids.flatten().tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
        for rows in self.generate_batch([prompt], max_new_tokens, stop_ids, temperature, top_p):
            if rows[0]:
                yield rows[0]

    @torch.no_grad()
    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 512,
                       stop_ids: Sequence[int] = (), temperature: float = 0.0,
                       top_p: float = 1.0) -> Iterator[list[list[int]]]:
        """Decode several prompts together; yields one list of new tokens per prompt per chunk (empty once stopped).

        The first chunk is the first token of every row (right after prefill), then ``chunk_tokens`` at a time.
        """
        if not prompts or len(prompts) > (self.max_batch if self.backend != "hf" else len(prompts)):
            raise ValueError(f"{len(prompts)} prompts; this generator takes 1 to max_batch={self.max_batch}")
        if min(len(p) for p in prompts) == 0:
            raise ValueError("every prompt needs at least one token")
        longest = max(len(p) for p in prompts) + max_new_tokens
        if self.backend != "hf" and longest > self.max_len:
            raise ValueError(f"prompt + max_new_tokens = {longest} tokens exceeds max_len={self.max_len}; "
                             "shorten the prompt or build the FastGenerator with a larger max_len")
        if max_new_tokens < 1:
            return
        stops = set(stop_ids)
        if self.backend == "hf":
            yield from self._hf_generate(prompts, max_new_tokens, stops, temperature, top_p)
            return
        batch, sample = len(prompts), temperature > 0
        self._state = self._adapter_state()
        self._temperature.fill_(max(temperature, 0.0))
        self._top_p.fill_(top_p)
        for row, prompt in enumerate(prompts):  # prefill row by row: no padding, exact positions
            ids = torch.tensor([list(prompt)], device=self.device)
            self.logits[row] = self._forward(ids, torch.arange(len(prompt), device=self.device)[None], row)[0]
            self._positions[row] = len(prompt)
        self._tokens[:batch] = self._sample(self.logits[:batch], batch, sample)
        done = [False] * batch
        chunk = [[t] for t in self._tokens[:batch].tolist()]
        left = max_new_tokens - 1
        replay: Callable[[], None] | None = None
        while True:
            for row, tokens in enumerate(chunk):
                cut = next((j for j, t in enumerate(tokens) if t in stops), None) if not done[row] else 0
                if cut is not None:
                    chunk[row], done[row] = tokens[:cut], True
            yield chunk
            if left <= 0 or all(done):
                return
            steps = min(self.chunk_tokens, left)
            replay = replay or self._replay_fn(batch, sample)  # adapter state is fixed for this call
            self._step.zero_()  # (also after the warm-up steps of a first capture)
            for _ in range(steps):
                replay()
            chunk, left = self._out[:batch, :steps].tolist(), left - steps  # the one host sync per chunk

    def _hf_generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stops: set[int],
                     temperature: float, top_p: float) -> Iterator[list[list[int]]]:
        """CPU / unsupported models: ``model.generate`` per prompt, then the same chunked output."""
        sampling: dict[str, Any] = {"do_sample": True, "temperature": temperature, "top_p": top_p} \
            if temperature > 0 else {"do_sample": False}
        rows = []
        for prompt in prompts:
            ids = torch.tensor([list(prompt)], device=self.device)
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=max_new_tokens, eos_token_id=sorted(stops) or None,
                                      pad_token_id=min(stops) if stops else 0, **sampling)
            tokens = out[0, len(prompt):].tolist()
            rows.append(tokens[: next((j for j, t in enumerate(tokens) if t in stops), len(tokens))])
        yield [r[:1] for r in rows]
        for start in range(1, max(len(r) for r in rows), self.chunk_tokens):
            yield [r[start : start + self.chunk_tokens] for r in rows]
