"""Generation metrics of ChatGLM3's finetune_demo, computed the same way so numbers compare with published ones.

For each (prediction, reference) pair both texts are cut into words with ``jieba.cut`` (spaces kept as tokens, as the
demo does); BLEU-4 is NLTK's ``sentence_bleu`` with ``SmoothingFunction().method3`` over those tokens, and
ROUGE-1/2/L are rouge-chinese's F-scores over the space-joined tokens. The reported numbers are means over the pairs,
ROUGE in percent and BLEU-4 as a fraction (0-1), both exactly as the demo reports them. An empty prediction scores 0
(rouge-chinese raises on it).

Command line: ``python -m finetune eval`` (generate on the dev split, then score) or
``python -m finetune eval --predictions FILE.jsonl`` (score ``{"prediction", "reference"}`` lines).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag.core.errors import ConfigError
from rag.core.jsonl import json_lines

METRICS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")
_INSTALL = "pip install nltk==3.10.4 rouge-chinese==1.0.3 jieba==0.42.1 (the finetune lines of requirements.txt)"


def _libraries() -> tuple[Any, Any, Any, Any]:
    try:
        import jieba
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from rouge_chinese import Rouge
    except ImportError as exc:
        raise ConfigError(f"generation metrics need {exc.name}: {_INSTALL}") from exc
    jieba.setLogLevel(60)  # silence "Building prefix dict" on stderr
    return jieba, sentence_bleu, SmoothingFunction().method3, Rouge()


def score_pair(prediction: str, reference: str) -> dict[str, float]:
    """BLEU-4 (0-1) and ROUGE-1/2/L F (percent) of one prediction against one reference."""
    return score([prediction], [reference])


def score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean BLEU-4 (0-1) and ROUGE-1/2/L F (percent) over aligned lists; ``{}`` for empty lists.

    Raises:
        ValueError: the lists differ in length.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {}
    jieba, sentence_bleu, smoothing, rouge = _libraries()
    per_metric: dict[str, list[float]] = {name: [] for name in METRICS}
    for prediction, reference in zip(predictions, references, strict=True):
        predicted = list(jieba.cut(prediction.strip()))
        wanted = list(jieba.cut(reference.strip()))
        if not "".join(predicted).strip() or not "".join(wanted).strip():
            for name in METRICS:
                per_metric[name].append(0.0)
            continue
        scores = rouge.get_scores(" ".join(predicted), " ".join(wanted))[0]
        for name in ("rouge-1", "rouge-2", "rouge-l"):
            per_metric[name].append(round(scores[name]["f"] * 100, 4))
        per_metric["bleu-4"].append(float(sentence_bleu([wanted], predicted, smoothing_function=smoothing)))
    return {name: float(statistics.fmean(values)) for name, values in per_metric.items()}


def score_file(path: str | Path) -> dict[str, float]:
    """Score a JSONL file of ``{"prediction": ..., "reference": ...}`` lines."""
    predictions, references = [], []
    for number, record, problem in json_lines(path):
        if problem:
            raise ConfigError(f"{path}:{number}: {problem}")
        try:
            predictions.append(str(record["prediction"]))
            references.append(str(record["reference"]))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{number}: expected {{\"prediction\": ..., \"reference\": ...}} ({exc})") from exc
    return score(predictions, references)


def generate_answers(model: Any, tokenizer: Any, template: Any, conversations: Sequence[Any], max_new_tokens: int,
                     batch_size: int = 8) -> list[str]:
    """Greedy answers to each conversation's last question, prompted exactly as the app prompts (the template's
    generation prompt) and stopped at the template's stop tokens; left-padded batches.

    Args:
        model: a causal LM (a peft model answers with its active adapter).
        tokenizer: its tokenizer.
        template: the :class:`rag.models.templates.ChatTemplate`.
        conversations: :class:`finetune.data.load.Conversation` objects; the last turn (the reference) is not shown.
        max_new_tokens: answer length limit.
        batch_size: prompts generated together.
    """
    import torch
    from transformers import GenerationConfig

    from finetune.templates import prompt_ids

    stop = template.stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    settings = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop, pad_token_id=pad)
    prompts = [prompt_ids(template, tokenizer, c.messages) for c in conversations]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        with torch.no_grad():
            for first in range(0, len(prompts), max(batch_size, 1)):
                batch = prompts[first:first + max(batch_size, 1)]
                width = max(len(p) for p in batch)
                input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)  # [b, width]
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
                output = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=settings)
                for row in output[:, width:].tolist():  # [b, new_tokens]
                    cut = next((i for i, token in enumerate(row) if token in stop), len(row))
                    answers.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return answers


def evaluate_config(cfg: Any, adapter: str = "", samples: int = 0, output: str | Path | None = None,
                    device: str = "auto") -> dict[str, float]:
    """BLEU-4 / ROUGE of greedy answers on the dev split of a recipe config (the split training held out).

    Args:
        cfg: a :class:`finetune.config.FinetuneConfig`.
        adapter: registry name or folder of the adapter to evaluate; "" = the base model (the baseline).
        samples: evaluate the first N dev conversations (0 = ``cfg.eval.generate_samples``, or all if that is 0).
        output: also write ``{"source", "prompt", "prediction", "reference"}`` JSONL lines here.
        device: auto | cpu | cuda[:N].
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.base_model import find_base_model, pick_template
    from finetune.data.load import load_splits
    from finetune.merge import base_for, locate_adapter
    from rag.core.device import pick_device, pick_dtype
    from rag.llm.adapters import prepare_adapter

    _, dev, _ = load_splits(cfg)
    if not dev:
        raise ConfigError("the config has no dev split: set data.dev_ratio > 0 or data.dev_datasets")
    count = samples or cfg.eval.generate_samples or len(dev)
    dev = dev[:count]
    info = locate_adapter(adapter, cfg.output.adapters_dir) if adapter else None
    folder = (base_for(info, "", cfg.model.source, cfg.model.cache_dir).folder if info is not None
              else find_base_model(cfg.model).folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    template = pick_template(cfg.model.template, tokenizer)
    where = pick_device(device)
    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                      dtype=pick_dtype("auto", where))
    model = model.to(where)
    if info is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(prepare_adapter(info, cfg.model.cache_dir, model.config)))
    answers = generate_answers(model, tokenizer, template, dev, cfg.eval.max_new_tokens, cfg.eval.generate_batch_size)
    references = [c.messages[-1].content for c in dev]
    if output is not None:
        lines = [json.dumps({"source": c.source, "prompt": c.messages[-2].content, "prediction": a, "reference": r},
                            ensure_ascii=False) for c, a, r in zip(dev, answers, references, strict=True)]
        Path(output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {**score(answers, references), "samples": float(len(dev))}
