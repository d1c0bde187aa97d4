"""Decode attention for :class:`rag.llm.fastgen.generator.FastGenerator`: one new query per row against its KV cache.

The split-K Triton kernel reads only the filled part of the cache (one program per row, kv head and 256-position
split; the last split of a row and head to finish combines the splits that were written, :data:`ONE_KERNEL`); :func:`sdpa_decode` is the same thing as SDPA over the
whole cache with a mask, the reference the kernels are checked against and the fallback where Triton is missing or
fails that check (:func:`triton_ok`). Kept apart from the generator because it is self-contained GPU math with its
own tests, and because it is the only code that needs Triton. With :data:`FUSED_ROPE` the one kernel also applies the
model's rotary to q and the new k (as a rotation of pairs of dimensions, :func:`rag.llm.fastgen.ops.rope_partners`)
and writes the new k and v into the cache, so a layer's attention is one launch after its q/k/v GEMV. Both kernels take programmatic dependent launch like
the GEMVs (:data:`rag.llm.fastgen.gemv.PDL`): each program first waits for the previous kernel (nothing they read is
known before it ends: q, the cache and the positions are written by the step itself).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from rag.llm.fastgen.gemv import arrival_counters, pdl_on
from rag.llm.fastgen.ops import rotate_pairs

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU installs
    HAS_TRITON = False

logger = logging.getLogger(__name__)

SPLIT = 256  # cache positions per attention program; max_len is rounded up to a multiple of it
# One kernel per decode attention: the last program of a (row, kv head) to finish its split combines the splits
# (an arrival counter per row and head, reset by that program, so CUDA graph replays need nothing else); a row whose
# filled part is one split stores its output directly. False: the split kernel and a combine kernel (two launches a
# layer; the bench's same-run baseline). Read at each launch: a captured graph keeps what was on at its capture.
ONE_KERNEL = True
# The one-kernel attention also applies the rotary to q and the new k and writes the new k and v into the cache
# (``decode_attention(..., new_kv=, rope=)``; the rotary as pairs of dimensions, ops.rope_partners): one kernel a
# layer fewer (the compiled rotary + cache writes). Read by the generator when a decode graph is captured; False:
# the rotary and cache writes as their own op (the bench's same-run baseline).
FUSED_ROPE = True

if HAS_TRITON:

    @triton.jit
    def _rotated(ptr, d, pd, c, s):
        """Row(s) at ``ptr`` (offsets broadcast against the dimensions ``d``) rotated as ``x[d] c[d] + x[pd] s[d]``
        (``pd`` each dimension's partner, ops.rope_partners), float32."""
        return tl.load(ptr + d).to(tl.float32) * c + tl.load(ptr + pd).to(tl.float32) * s

    @triton.jit
    def _store_new_kv(kn_ptr, vn_ptr, stride_nb, k_ptr, v_ptr, b, h, pos, stride_kb, stride_kh, stride_kn, c, s, pd,
                      D: tl.constexpr):
        """Row b's new k (rotated) and v of kv head h into the caches at position pos; visible to this program's
        threads after it returns."""
        d = tl.arange(0, D)
        at = b * stride_kb + h * stride_kh + pos * stride_kn + d
        k = _rotated(kn_ptr + b * stride_nb + h * D, d, pd, c, s)
        tl.store(k_ptr + at, k.to(k_ptr.dtype.element_ty))
        tl.store(v_ptr + at, tl.load(vn_ptr + b * stride_nb + h * D + d))
        tl.debug_barrier()

    @triton.jit
    def _attend_split(q_ptr, k_ptr, v_ptr, b, h, start, pos, scale, stride_qb, stride_qh, stride_kb, stride_kh,
                      stride_kn, c_ptr, s_ptr, p_ptr, GROUP: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                      BLOCK_N: tl.constexpr, SPLIT_N: tl.constexpr, ROPE: tl.constexpr):
        """The GROUP query heads of kv head h of row b against cache positions [start, start + SPLIT_N) up to pos:
        (running max [GP], sum of exponentials [GP], unnormalised output [GP, D]) in float32. ``ROPE``: q rotated
        first (c, s of row b, partners p: ops.rope_tables), rounded to its dtype as the model's rotary does."""
        g = tl.arange(0, GP)
        d = tl.arange(0, D)
        heads = b * stride_qb + (h * GROUP + tl.minimum(g, GROUP - 1))[:, None] * stride_qh
        if ROPE:
            c = tl.load(c_ptr + b * D + d)[None, :]
            s = tl.load(s_ptr + b * D + d)[None, :]
            q = _rotated(q_ptr + heads, d[None, :], tl.load(p_ptr + d)[None, :], c, s).to(
                q_ptr.dtype.element_ty)  # [GP, D]; padded rows repeat the last head (their output is not stored)
        else:
            q = tl.load(q_ptr + heads + d[None, :])  # [GP, D]
        kv = k_ptr + b * stride_kb + h * stride_kh
        vv = v_ptr + b * stride_kb + h * stride_kh
        m_i = tl.full([GP], float("-inf"), tl.float32)
        l_i = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        for n0 in range(0, SPLIT_N, BLOCK_N):
            n = start + n0 + tl.arange(0, BLOCK_N)
            valid = n <= pos
            kt = tl.load(kv + n[None, :] * stride_kn + d[:, None], mask=valid[None, :], other=0.0)  # [D, BN]
            scores = tl.where(valid[None, :], tl.dot(q, kt) * scale, float("-inf"))  # [GP, BN]
            m_new = tl.maximum(m_i, tl.max(scores, 1))
            p = tl.exp(scores - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            v = tl.load(vv + n[:, None] * stride_kn + d[None, :], mask=valid[:, None], other=0.0)  # [BN, D]
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new
        return m_i, l_i, acc

    @triton.jit
    def _combine_splits(o_ptr, ml_ptr, first, filled, GP: tl.constexpr, D: tl.constexpr, CACHED: tl.constexpr):
        """The attention output [GP, D] from the partial results of splits 0 .. filled - 1 of one row and head
        (partial rows (first + s) * GP + g). ``CACHED`` False: read past L1 (written by other programs of the
        running kernel)."""
        g = tl.arange(0, GP)
        d = tl.arange(0, D)
        m_all = tl.full([GP], float("-inf"), tl.float32)
        l_all = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        for s in range(0, filled):
            row = (first + s) * GP + g
            if CACHED:
                m_s = tl.load(ml_ptr + row * 2)
                l_s = tl.load(ml_ptr + row * 2 + 1)
                o_s = tl.load(o_ptr + row[:, None] * D + d[None, :])
            else:
                m_s = tl.load(ml_ptr + row * 2, cache_modifier=".cg")
                l_s = tl.load(ml_ptr + row * 2 + 1, cache_modifier=".cg")
                o_s = tl.load(o_ptr + row[:, None] * D + d[None, :], cache_modifier=".cg")
            m_new = tl.maximum(m_all, m_s)
            a = tl.exp(m_all - m_new)
            c = tl.exp(m_s - m_new)
            acc = acc * a[:, None] + o_s * c[:, None]
            l_all = l_all * a + l_s * c
            m_all = m_new
        return acc / l_all[:, None]

    @triton.jit
    def _attn_split_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, o_ptr, ml_ptr, scale, stride_qb, stride_qh, stride_kb,
                           stride_kh, stride_kn, GROUP: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                           BLOCK_N: tl.constexpr, SPLIT_N: tl.constexpr, PDL: tl.constexpr):
        # program (row b, kv head h, split s): the GROUP query heads of h against cache positions [s*SPLIT_N, ...]
        b, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        if PDL:  # every program, also those past the filled part: the next kernel's wait must cover the one before
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        pos = tl.load(pos_ptr + b)  # newest filled position of row b
        start = s * SPLIT_N
        if start <= pos:  # splits past the filled part do nothing; the combine kernel skips them
            m_i, l_i, acc = _attend_split(q_ptr, k_ptr, v_ptr, b, h, start, pos, scale, stride_qb, stride_qh,
                                          stride_kb, stride_kh, stride_kn, q_ptr, q_ptr, q_ptr, GROUP, GP, D, BLOCK_N,
                                          SPLIT_N, False)
            g = tl.arange(0, GP)
            d = tl.arange(0, D)
            row = ((b * tl.num_programs(1) + h) * tl.num_programs(2) + s) * GP + g
            tl.store(o_ptr + row[:, None] * D + d[None, :], acc)
            tl.store(ml_ptr + row * 2, m_i)
            tl.store(ml_ptr + row * 2 + 1, l_i)

    @triton.jit
    def _attn_one_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, o_ptr, ml_ptr, cnt_ptr, out_ptr, kn_ptr, vn_ptr, stride_nb,
                         c_ptr, s_ptr, p_ptr, scale, stride_qb, stride_qh, stride_kb, stride_kh, stride_kn, stride_ob,
                         stride_oh, GROUP: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
                         SPLIT_N: tl.constexpr, ROPE: tl.constexpr, PDL: tl.constexpr):
        # program (row b, kv head h, split s) as _attn_split_kernel; then the last of the row's and head's filled
        # splits to arrive adds them up as _attn_combine_kernel does and resets the counter (ONE_KERNEL). ROPE: q
        # and the new k rotated here, and the split that holds position pos writes the new k and v there first
        b, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        pos = tl.load(pos_ptr + b)
        start = s * SPLIT_N
        if ROPE:  # noqa: SIM102 (a constexpr: the runtime test below is not compiled without it)
            if s == pos // SPLIT_N:
                d = tl.arange(0, D)
                _store_new_kv(kn_ptr, vn_ptr, stride_nb, k_ptr, v_ptr, b, h, pos, stride_kb, stride_kh, stride_kn,
                              tl.load(c_ptr + b * D + d), tl.load(s_ptr + b * D + d), tl.load(p_ptr + d), D)
        if start <= pos:
            m_i, l_i, acc = _attend_split(q_ptr, k_ptr, v_ptr, b, h, start, pos, scale, stride_qb, stride_qh,
                                          stride_kb, stride_kh, stride_kn, c_ptr, s_ptr, p_ptr, GROUP, GP, D, BLOCK_N,
                                          SPLIT_N, ROPE)
            g = tl.arange(0, GP)
            d = tl.arange(0, D)
            filled = pos // SPLIT_N + 1
            at = out_ptr + b * stride_ob + (h * GROUP + g)[:, None] * stride_oh + d[None, :]
            if filled == 1:
                tl.store(at, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=(g < GROUP)[:, None])
            else:
                head = b * tl.num_programs(1) + h
                row = (head * tl.num_programs(2) + s) * GP + g
                tl.store(o_ptr + row[:, None] * D + d[None, :], acc)
                tl.store(ml_ptr + row * 2, m_i)
                tl.store(ml_ptr + row * 2 + 1, l_i)
                tl.debug_barrier()  # every thread's stores issued before the (one-thread, releasing) count
                count = tl.atomic_add(cnt_ptr + head, 1, sem="acq_rel")
                if count == filled - 1:
                    out = _combine_splits(o_ptr, ml_ptr, head * tl.num_programs(2), filled, GP, D, False)
                    tl.store(at, out.to(out_ptr.dtype.element_ty), mask=(g < GROUP)[:, None])
                    tl.atomic_xchg(cnt_ptr + head, 0)

    @triton.jit
    def _attn_combine_kernel(o_ptr, ml_ptr, pos_ptr, out_ptr, n_splits, stride_ob, stride_oh,
                             GROUP: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, SPLIT_N: tl.constexpr,
                             PDL: tl.constexpr):
        b, h = tl.program_id(0), tl.program_id(1)
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        pos = tl.load(pos_ptr + b)
        g = tl.arange(0, GP)
        d = tl.arange(0, D)
        # only the splits the first kernel wrote
        out = _combine_splits(o_ptr, ml_ptr, (b * tl.num_programs(1) + h) * n_splits, pos // SPLIT_N + 1, GP, D,
                              True)
        tl.store(out_ptr + b * stride_ob + (h * GROUP + g)[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=(g < GROUP)[:, None])


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor,
                     scale: float, *, new_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                     rope: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One new query per row against its cache: q [B, Hq, D], caches [>=B, Hkv, L, D], positions [B] -> [B, Hq, D].

    Row b attends to cache positions 0..positions[b] (inclusive); L must be a multiple of ``SPLIT``. With ``new_kv =
    (k, v)`` ([B, Hkv, D] each, rows of D contiguous values; e.g. views of the q/k/v GEMV's output, like q) and ``rope
    = (c, s, partners)`` (:func:`rag.llm.fastgen.ops.rope_tables`): q and k are rotated first, and k and v written
    into the caches at the rows' positions (:data:`FUSED_ROPE`; in the one kernel, else in torch first).
    """
    if (new_kv is None) != (rope is None):
        raise ValueError("new_kv and rope go together")
    if rope is not None and new_kv is not None and not ONE_KERNEL:
        q, k = (rotate_pairs(t, *rope) for t in (q, new_kv[0]))
        rows = torch.arange(q.shape[0], device=q.device)
        k_cache[rows, :, positions] = k
        v_cache[rows, :, positions] = new_kv[1]
        new_kv = rope = None
    q = q if q.stride(-1) == 1 else q.contiguous()
    batch, heads, dim = q.shape
    kv_heads, length = k_cache.shape[1], k_cache.shape[2]
    group = heads // kv_heads
    padded = max(16, triton.next_power_of_2(group))  # tl.dot needs >= 16 rows
    splits = length // SPLIT
    partial = torch.empty(batch, kv_heads, splits, padded, dim, device=q.device, dtype=torch.float32)
    max_and_sum = torch.empty(batch, kv_heads, splits, padded, 2, device=q.device, dtype=torch.float32)
    out = torch.empty(batch, heads, dim, device=q.device, dtype=q.dtype)
    pdl = pdl_on(q)
    if ONE_KERNEL:
        counters = arrival_counters(q.device, batch * kv_heads)
        if new_kv is not None and rope is not None:
            k_new, v_new = new_kv
            if k_new.stride(-1) != 1 or v_new.stride() != k_new.stride() or k_new.stride(1) != dim:
                raise ValueError("new k and v need rows of D contiguous values with the same strides")
            extra = (k_new, v_new, k_new.stride(0), *rope)
        else:
            extra = (q, q, 0, q, q, q)
        _attn_one_kernel[(batch, kv_heads, splits)](
            q, k_cache, v_cache, positions, partial, max_and_sum, counters, out, *extra, scale, q.stride(0),
            q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), out.stride(0), out.stride(1),
            GROUP=group, GP=padded, D=dim, BLOCK_N=64, SPLIT_N=SPLIT, ROPE=rope is not None, PDL=pdl, launch_pdl=pdl)
        return out
    _attn_split_kernel[(batch, kv_heads, splits)](
        q, k_cache, v_cache, positions, partial, max_and_sum, scale, q.stride(0), q.stride(1), k_cache.stride(0),
        k_cache.stride(1), k_cache.stride(2), GROUP=group, GP=padded, D=dim, BLOCK_N=64, SPLIT_N=SPLIT, PDL=pdl,
        launch_pdl=pdl)
    _attn_combine_kernel[(batch, kv_heads)](partial, max_and_sum, positions, out, splits, out.stride(0), out.stride(1),
                                            GROUP=group, GP=padded, D=dim, SPLIT_N=SPLIT, PDL=pdl, launch_pdl=pdl)
    return out


def sdpa_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor,
                 scale: float) -> torch.Tensor:
    """Reference / fallback for :func:`decode_attention`: SDPA over the whole cache with a per-row mask."""
    batch, heads, dim = q.shape
    kv_heads, length = k_cache.shape[1], k_cache.shape[2]
    mask = torch.arange(length, device=q.device)[None, :] <= positions[:, None]  # [B, L]
    # query heads j*g..j*g+g-1 share kv head j (HF repeat_kv order): fold them into SDPA's query-length axis
    out = F.scaled_dot_product_attention(q.reshape(batch, kv_heads, heads // kv_heads, dim), k_cache[:batch],
                                         v_cache[:batch], attn_mask=mask[:, None, None, :], scale=scale)
    return out.reshape(batch, heads, dim)


def triton_ok(dtype: torch.dtype, device: torch.device, heads: int, kv_heads: int, dim: int) -> bool:
    """Use the Triton kernel only where it exists, fits, and agrees with SDPA on random data here."""
    if not (HAS_TRITON and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
            and dim >= 16 and dim & (dim - 1) == 0):
        return False
    try:
        q = torch.randn(3, heads, dim, device=device, dtype=dtype)
        k, v = (torch.randn(4, kv_heads, 2 * SPLIT, dim, device=device, dtype=dtype) for _ in range(2))
        pos = torch.tensor([0, SPLIT - 1, 2 * SPLIT - 7], device=device)
        got, ref = decode_attention(q, k, v, pos, dim**-0.5), sdpa_decode(q, k, v, pos, dim**-0.5)
        error = float((got.float() - ref.float()).abs().max())
    except Exception as exc:  # no compiler, unsupported GPU, ...
        logger.warning("Triton decode attention unavailable (%s); using SDPA over the whole cache", exc)
        return False
    if error > 2e-2:
        logger.warning("Triton decode attention differs from SDPA by %.3g; using SDPA", error)
    return error <= 2e-2

