"""``python -m finetune {train,eval,merge,infer,convert-data,make-tiny-model} ...`` (``--help`` on each).

Errors of the project's own kind (bad config, bad records, missing model) print one line and exit 1; ``--debug``
shows the traceback. Multi-GPU training: ``accelerate launch -m finetune train CONFIG [key=value ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from rag.cli.common import run_cli


@contextlib.contextmanager
def quiet_libraries(debug: bool) -> Iterator[None]:
    """Our own tqdm bar and log lines only: no per-map / per-shard progress bars from datasets and transformers, no
    transformers warnings (unless --debug). Restored afterwards, so calling ``main`` in-process leaves no trace."""
    import datasets
    import transformers

    ours = logging.getLogger("finetune")
    saved = (ours.level, transformers.utils.logging.get_verbosity(),
             transformers.utils.logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled())
    ours.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        ours.setLevel(saved[0])
        transformers.utils.logging.set_verbosity(saved[1])
        if saved[2]:
            transformers.utils.logging.enable_progress_bar()
        if saved[3]:
            datasets.enable_progress_bars()


def cmd_train(args: argparse.Namespace) -> int:
    from finetune.config import load_finetune_config
    from finetune.train import train

    cfg = load_finetune_config(args.config, args.overrides)
    with quiet_libraries(args.debug):
        result = train(cfg, show_progress=not args.no_progress)
    if result.adapter_dir is not None:  # the main process
        keys = ("train_loss", "eval_loss", "bleu-4", "rouge-1", "rouge-2", "rouge-l")
        shown = {k: round(v, 4) for k, v in result.metrics.items() if k in keys}
        print(f"adapter: {result.adapter_dir}\nrun: {result.output_dir} (metrics.json, loss_curve.png)\n"
              f"metrics: {json.dumps(shown, ensure_ascii=False)}\n"
              f"data ({cfg.stage}): {', '.join(f'{k} {v}' for k, v in result.data_counts.items())}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from finetune.evaluate import evaluate_config, score_file

    if args.predictions:
        metrics = score_file(args.predictions)
    else:
        from finetune.config import load_finetune_config

        if not args.config:
            raise SystemExit("finetune eval: give a CONFIG (to generate on its dev split) or --predictions FILE")
        cfg = load_finetune_config(args.config, args.overrides)
        with quiet_libraries(args.debug):
            metrics = evaluate_config(cfg, args.adapter, args.samples, args.output, args.device)
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}, ensure_ascii=False))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from finetune.merge import merge_adapter

    with quiet_libraries(args.debug):
        out = merge_adapter(args.adapter, args.output, args.adapters_dir, args.base, args.dtype, args.source,
                            args.cache_dir)
    print(f"merged model: {out}")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from finetune.infer import compare, read_prompts, side_by_side

    prompts = list(args.prompt or []) + (read_prompts(args.prompts) if args.prompts else [])
    if not prompts:
        raise SystemExit('finetune infer: give --prompt "…" (repeatable) or --prompts FILE')
    with quiet_libraries(args.debug):
        results = compare(args.adapter, prompts, args.adapters_dir, args.base, args.system, args.max_new_tokens,
                          args.device, args.dtype, args.source, args.cache_dir)
    for result in results:
        print(side_by_side(result, args.adapter, args.width) + "\n")
    if args.output:
        lines = [json.dumps(r.__dict__, ensure_ascii=False) for r in results]
        Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from finetune.data.formats import resolve_dataset
    from finetune.data.load import check, load_conversations, to_jsonl_record

    spec = resolve_dataset(args.input, args.dataset_dir, args.format)
    result = check(load_conversations([spec], args.system, args.feedback_context),
                   "skip" if args.skip_bad else "error")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(to_jsonl_record(c), ensure_ascii=False) for c in result.conversations]
    output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} conversations to {output} ({len(result.bad)} bad records skipped, "
          f"{len(result.skipped)} thumbs-down without a correction)")
    return 0


def cmd_tiny(args: argparse.Namespace) -> int:
    from finetune.tiny import build_tiny_model

    print(f"tiny model: {build_tiny_model(args.folder, args.arch, args.template, args.seed)}")
    return 0


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, help="adapter name under --adapters-dir, or an adapter folder")
    parser.add_argument("--adapters-dir", default="adapters", help="the adapter registry (default: adapters)")
    parser.add_argument("--base", default="", help="base model (default: the one in rag_adapter.json)")
    parser.add_argument("--source", default="auto", help="auto | local | modelscope | huggingface")
    parser.add_argument("--cache-dir", default="~/.cache/kbqa/models", help="the model cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finetune", description="Fine-tune, evaluate, merge and compare "
                                     "LoRA adapters that the app serves (adapters/<name>/).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", parents=[common], help="LoRA fine-tune from a YAML recipe; registers adapters/<name>")
    p.add_argument("config", help="configs/finetune/X.yaml (or just X)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. lora.r=16 train.max_steps=100")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs only)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", parents=[common], help="BLEU-4 / ROUGE on a config's dev split (base, or --adapter), or of a file")
    p.add_argument("config", nargs="?", help="configs/finetune/X.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--adapter", default="", help="adapter name or folder (default: evaluate the base model)")
    p.add_argument("--samples", type=int, default=0, help="first N dev conversations (default: eval.generate_samples)")
    p.add_argument("--output", default=None, help="write predictions JSONL here")
    p.add_argument("--device", default="auto")
    p.add_argument("--predictions", default=None, help='score a JSONL of {"prediction", "reference"} instead')
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("merge", parents=[common], help="merge an adapter into its base model's weights (safetensors + tokenizer)")
    _model_args(p)
    p.add_argument("--output", required=True, help="new model folder")
    p.add_argument("--dtype", default="auto", help="auto | bfloat16 | float16 | float32")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("infer", parents=[common], help="base vs adapter answers side by side")
    _model_args(p)
    p.add_argument("--prompt", action="append", help="a question (repeatable)")
    p.add_argument("--prompts", default=None, help="file: one question a line, or JSONL with a prompt field")
    p.add_argument("--system", default="", help="system prompt for both models")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--width", type=int, default=100, help="output width in columns")
    p.add_argument("--output", default=None, help="also write {prompt, base, adapter} JSONL here")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("convert-data", parents=[common], help="any supported format -> conversations JSONL ({messages: [...]})")
    p.add_argument("input", help="a file, or a name in --dataset-dir/dataset_info.json")
    p.add_argument("--output", required=True, help="JSONL to write")
    p.add_argument("--format", default="auto", help="auto | alpaca | sharegpt | advertisegen | counselling | feedback")
    p.add_argument("--dataset-dir", default=".", help="where dataset_info.json lives")
    p.add_argument("--system", default="", help="system prompt for records without one")
    p.add_argument("--feedback-context", default="quotes", choices=["quotes", "none"],
                   help="feedback: the app's prompt with the cited passages (quotes) or the bare question (none)")
    p.add_argument("--skip-bad", action="store_true", help="report bad records and go on (default: stop)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("make-tiny-model", parents=[common], help="build a tiny random chat model (tests, quick tour)")
    p.add_argument("folder")
    p.add_argument("--arch", default="glm", choices=["glm", "qwen2", "llama"])
    p.add_argument("--template", default="", help="chat template (default: the family's own)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
