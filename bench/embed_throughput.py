"""Ingest embedding throughput: the project's embedder vs the raw encoder forward, fp16, 256-token chunks.

text2vec-base-chinese's shape (BERT-base: hidden 768, 12 layers, 12 heads, vocab 21,128), random weights, saved as a
real sentence-transformers folder with a WordPiece tokenizer built here (one token per CJK character, like
bert-base-chinese). One JSON line per measurement, each naming the device; the last line is the summary.

    python bench/embed_throughput.py               # needs a CUDA GPU; ~1 minute
    python bench/embed_throughput.py --small       # tiny shape, CPU, seconds

Rows: ``raw_forward`` (pre-tokenised ids already on the GPU, encoder forward only), ``tokenize`` (CPU only),
``st_encode`` (``SentenceTransformer.encode``), ``encode_path`` (``SentenceTransformerEmbedder.embed_documents`` with
``direct="off"``: what ingest ran before the direct path), and per ``--workers`` value ``direct_workers_N``: the
direct path (``rag.embed.embedder``'s module docstring) as ingest runs it on CUDA, cold (first call: tokeniser processes
start, self-check), warm (median of 3 calls over all chunks), in ``rag.index.sync``'s calls of 128 texts, and its
tokenisation alone; with the lowest cosine of its vectors against ``encode_path``'s. ``--sketches`` adds the earlier
sketches (``pipelined``, ``pipelined_raw``, ``multiprocess``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TEXT2VEC = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
START = time.perf_counter()


def vocabulary(size: int = 21128) -> list[str]:
    """Specials, ASCII, CJK and full-width punctuation, then CJK characters until ``size``."""
    ranges = [(0x21, 0x7F), (0x3000, 0x3040), (0xFF01, 0xFF5F), (0x4E00, 0x9FA6)]
    chars = [chr(c) for lo, hi in ranges for c in range(lo, hi)]
    return (SPECIALS + chars)[:size]


def build_folder(folder: Path, shape: dict[str, int], max_seq_length: int) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Normalize, Pooling, Transformer
    from sentence_transformers import SentenceTransformer

    vocab = {token: i for i, token in enumerate(vocabulary())}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    hf_dir = folder.parent / "hf"
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(hf_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), max_position_embeddings=512, **shape)
    BertModel(config).half().save_pretrained(hf_dir)
    modules = [Transformer(str(hf_dir), max_seq_length=max_seq_length), Pooling(shape["hidden_size"], "mean"),
               Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    shutil.rmtree(hf_dir)
    return folder


_WORKER_TOKENIZER: Any = None


def _worker_init(path: str) -> None:
    global _WORKER_TOKENIZER
    from transformers import AutoTokenizer

    _WORKER_TOKENIZER = AutoTokenizer.from_pretrained(path)


def _worker_tokenize(job: tuple[list[str], int]) -> tuple[Any, Any]:
    features = _WORKER_TOKENIZER(job[0], padding=True, truncation=True, max_length=job[1], return_tensors="np")
    return features["input_ids"], features["attention_mask"]


def chunks(n: int, chars: int, seed: int = 0) -> list[str]:
    """Chinese-looking chunks of ``chars`` characters (every 20th a full stop); varied a little, like a splitter's."""
    rng = random.Random(seed)
    cjk = [chr(c) for c in range(0x4E00, 0x4E00 + 6000)]
    texts = []
    for _ in range(n):
        length = rng.randint(int(chars * 0.9), chars)
        texts.append("".join("。" if i % 20 == 19 else rng.choice(cjk) for i in range(length)))
    return texts


def multiprocess(st: Any, auto: Any, texts: list[str], seq: int, device: str, tmp: Path, emit: Any,
                 timed: Any, bs: int = 128, workers: int = 8) -> None:
    """Tokenisation in worker processes (it does not scale with threads here), feeding the encoder directly."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    st.tokenizer.save_pretrained(tmp / "tokenizer")
    jobs = [(texts[s : s + bs], seq) for s in range(0, len(texts), bs)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                             initargs=(str(tmp / "tokenizer"),)) as pool:
        list(pool.map(_worker_tokenize, jobs[:workers]))  # start the workers
        tokenize = timed(lambda: list(pool.map(_worker_tokenize, jobs)))

        def run() -> Any:
            outs = []
            with torch.inference_mode():
                for ids, mask in pool.map(_worker_tokenize, jobs):
                    ids_t = torch.from_numpy(ids).to(device, non_blocking=True)
                    mask_t = torch.from_numpy(mask).to(device, non_blocking=True)
                    hidden = auto(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
                    weights = mask_t.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * weights).sum(1).float() / weights.sum(1).float()
                    outs.append(torch.nn.functional.normalize(pooled, dim=-1))
                return torch.cat(outs).cpu().numpy()

        run()
        pipelined = timed(run)
    emit("multiprocess", workers=workers, batch_size=bs, tokenize_chunks_per_s=round(len(texts) / tokenize),
         pipelined_chunks_per_s=round(len(texts) / pipelined))


def sketches(st: Any, auto: Any, texts: list[str], bs: int, seq: int, device: str, timed: Any) -> dict[str, float]:
    """The sketches that led to the direct path (--sketches): tokenise on a thread ahead of the GPU, and the bare fast
    tokenizer on 4 threads with the encoder called directly."""
    n = len(texts)

    def pipelined() -> Any:
        order = sorted(range(n), key=lambda i: -len(texts[i]))
        batches = [[texts[i] for i in order[s : s + bs]] for s in range(0, n, bs)]
        outs = []
        with ThreadPoolExecutor(1) as pool, torch.inference_mode():
            pending = pool.submit(st.tokenize, batches[0])
            for j in range(len(batches)):
                features = pending.result()
                if j + 1 < len(batches):
                    pending = pool.submit(st.tokenize, batches[j + 1])
                features = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                            for k, v in features.items()}
                outs.append(st(features)["sentence_embedding"])
            return torch.cat(outs).float().cpu().numpy()

    def pipelined_raw(workers: int = 4) -> Any:
        tokenizer = st.tokenizer
        order = sorted(range(n), key=lambda i: -len(texts[i]))
        batches = [[texts[i] for i in order[s : s + bs]] for s in range(0, n, bs)]

        def tokenize(batch: list[str]) -> Any:
            return tokenizer(batch, padding=True, truncation=True, max_length=seq, return_tensors="pt")

        outs = []
        with ThreadPoolExecutor(workers) as pool, torch.inference_mode():
            for features in pool.map(tokenize, batches):  # tokenises ahead on `workers` threads
                ids = features["input_ids"].to(device, non_blocking=True)
                mask = features["attention_mask"].to(device, non_blocking=True)
                hidden = auto(input_ids=ids, attention_mask=mask).last_hidden_state
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1).float() / weights.sum(1).float()
                outs.append(torch.nn.functional.normalize(pooled, dim=-1))
            return torch.cat(outs).cpu().numpy()

    pipelined()
    pipelined_raw()
    return {"pipelined": n / timed(pipelined), "pipelined_raw": n / timed(pipelined_raw)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--chunks", type=int, default=4096)
    parser.add_argument("--seq", type=int, default=256, help="tokens per chunk (max_seq_length)")
    parser.add_argument("--batch-sizes", default="32,128")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--multiprocess", action="store_true", help="also in --small mode (with --sketches)")
    parser.add_argument("--workers", default="1,4", help="tokeniser processes of the direct path to compare (1: a thread)")
    parser.add_argument("--sketches", action="store_true", help="also the earlier sketches (pipelined, multiprocess)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    if args.small:
        args.chunks, args.seq = 256, 64
    sink = args.out.open("a") if args.out else None
    results: dict[str, Any] = {}

    def emit(stage: str, **fields: Any) -> None:
        line = {"stage": stage, "device": name, "t_s": round(time.perf_counter() - START, 1), **fields}
        results[stage] = line
        print(json.dumps(line, ensure_ascii=False), flush=True)
        if sink:
            sink.write(json.dumps(line, ensure_ascii=False) + "\n")

    def timed(fn: Any) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    import sentence_transformers
    import transformers

    from rag.embed.embedder import SentenceTransformerEmbedder

    tmp = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    try:
        folder = build_folder(tmp / "text2vec-shape", SMALL if args.small else TEXT2VEC, args.seq)
        texts = chunks(args.chunks, args.seq - 2)
        encode_path = SentenceTransformerEmbedder(folder, name="text2vec-shape", device=device, direct="off")
        st = encode_path.model
        auto = st[0].auto_model
        lengths = [len(ids) for ids in st.tokenize(texts[:64])["input_ids"]]
        emit("env", torch=torch.__version__, transformers=transformers.__version__,
             sentence_transformers=sentence_transformers.__version__, dtype=str(auto.dtype),
             attn_implementation=str(getattr(auto.config, "_attn_implementation", "?")), chunks=len(texts),
             tokens_per_chunk=max(lengths), cpu_threads=torch.get_num_threads())
        n = len(texts)

        def measure(bs: int) -> None:
            ids = torch.randint(5, auto.config.vocab_size, (bs, args.seq), device=device)
            mask = torch.ones_like(ids)
            with torch.inference_mode():
                auto(input_ids=ids, attention_mask=mask)
                raw = timed(lambda: [auto(input_ids=ids, attention_mask=mask) for _ in range(n // bs)])
            tok = timed(lambda: [st.tokenize(texts[i : i + bs]) for i in range(0, n, bs)])
            st.encode(texts[:bs], batch_size=bs)
            enc = timed(lambda: st.encode(texts, batch_size=bs, convert_to_numpy=True))
            encode_path.batch_size = bs
            encode_path.embed_documents(texts[:bs])
            old = timed(lambda: encode_path.embed_documents(texts))
            rate = {"raw_forward": (n // bs) * bs / raw, "tokenize": n / tok, "st_encode": n / enc,
                    "encode_path": n / old}
            if args.sketches:
                rate.update(sketches(st, auto, texts, bs, args.seq, device, timed))
            emit(f"batch_{bs}", batch_size=bs, chunks_per_s={k: round(v) for k, v in rate.items()},
                 encode_path_over_raw=round(rate["encode_path"] / rate["raw_forward"], 3),
                 st_encode_over_raw=round(rate["st_encode"] / rate["raw_forward"], 3),
                 ms_per_batch={"gpu_forward": round(1e3 * bs / rate["raw_forward"], 2),
                               "tokenize": round(1e3 * bs / rate["tokenize"], 2),
                               "encode_path": round(1e3 * bs / rate["encode_path"], 2)})

        def direct(workers: int) -> None:
            """The direct path as ingest runs it: a fresh embedder (cold: tokeniser processes start, self-check),
            then warm calls over all chunks, then sync.py's pattern (calls of 4 x embed.batch_size = 128 texts)."""
            embedder = SentenceTransformerEmbedder(folder, name="text2vec-shape", device=device, direct="on",
                                                   tokenize_workers=workers)
            cold = timed(lambda: embedder.embed_documents(texts))
            assert embedder.direct_path.plan is not None, embedder.direct_path.failure
            warm = statistics.median(timed(lambda: embedder.embed_documents(texts)) for _ in range(3))
            calls = timed(lambda: [embedder.embed_documents(texts[i : i + 128]) for i in range(0, n, 128)])
            jobs = [texts[i : i + 128] for i in range(0, n, 128)]
            tokenize = timed(lambda: list(embedder.direct_path.tokenized(jobs, embedder.direct_path.workers())))
            got, want = embedder.embed_documents(texts[:512]), encode_path.embed_documents(texts[:512])
            rate = {"cold_first_call": n / cold, "warm": n / warm, "calls_of_128": n / calls,
                    "tokenize_only": n / tokenize}
            best_raw = max(v["chunks_per_s"]["raw_forward"] for k, v in results.items() if k.startswith("batch_"))
            emit(f"direct_workers_{workers}", workers=embedder.direct_path.workers(),
                 batch_size=embedder.direct_path.batch_size(),
                 chunks_per_s={k: round(v) for k, v in rate.items()},
                 warm_over_raw=round(rate["warm"] / best_raw, 3), cold_over_raw=round(rate["cold_first_call"] / best_raw, 3),
                 calls_of_128_over_raw=round(rate["calls_of_128"] / best_raw, 3),
                 min_cosine_vs_encode_path=round(float(np.min(np.sum(got * want, axis=1))), 5))

        one_call = timed(lambda: st.tokenizer(texts, padding=True, truncation=True, max_length=args.seq,
                                              return_tensors="pt"))
        emit("tokenizer_one_call", chunks_per_s=round(n / one_call),
             tokenizers_parallelism=os.environ.get("TOKENIZERS_PARALLELISM", "(unset)"))
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            measure(bs)
        for workers in (int(w) for w in args.workers.split(",")):
            try:
                direct(workers)
            except Exception as exc:  # one failing variant must not lose the others
                emit(f"direct_workers_{workers}", error=f"{type(exc).__name__}: {exc}"[:300])
        if args.sketches and (not args.small or args.multiprocess):
            multiprocess(st, auto, texts, args.seq, device, tmp, emit, timed)
        batches = [v for k, v in results.items() if k.startswith("batch_")]
        default = next((b for b in batches if b["batch_size"] == 32), batches[0])
        best_raw = max(b["chunks_per_s"]["raw_forward"] for b in batches)
        directs = {k: v for k, v in results.items() if k.startswith("direct_") and "chunks_per_s" in v}
        best = max(directs.values(), key=lambda v: v["chunks_per_s"]["warm"], default=None)
        emit("summary", encode_path_chunks_s=default["chunks_per_s"]["encode_path"],
             encode_path_ratio=default["encode_path_over_raw"], best_raw_chunks_s=best_raw,
             direct_warm_chunks_s={k: v["chunks_per_s"]["warm"] for k, v in directs.items()},
             direct_cold_chunks_s={k: v["chunks_per_s"]["cold_first_call"] for k, v in directs.items()},
             direct_calls_of_128_chunks_s={k: v["chunks_per_s"]["calls_of_128"] for k, v in directs.items()},
             best_direct=best and {"workers": best["workers"], "warm_over_raw": best["warm_over_raw"]},
             target_warm_over_raw=0.75)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
