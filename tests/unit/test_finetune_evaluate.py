"""finetune.evaluate: the metrics are ChatGLM3 finetune_demo's compute_metrics, number for number."""

from __future__ import annotations

import jieba
import numpy as np
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

from finetune.evaluate import score, score_pair

PAIRS = [
    ("VPN 服务器地址是 vpn.xinghe.example。", "VPN 服务器地址是 vpn.xinghe.example。"),
    ("错误 691 说明用户名或密码不正确", "错误 691 说明用户名或密码不正确，或者账号已被锁定。"),
    ("访客网络每周更新密码。", "访客网络的密码每周一上午 9:00 更新。"),
]


def finetune_demo_metrics(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """ChatGLM3 finetune_demo/finetune_hf.py compute_metrics, on decoded texts."""
    metrics: dict[str, list[float]] = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred_txt, label_txt in pairs:
        pred_tokens = list(jieba.cut(pred_txt))
        label_tokens = list(jieba.cut(label_txt))
        scores = Rouge().get_scores(" ".join(pred_tokens), " ".join(label_tokens))
        for k, v in scores[0].items():
            metrics[k].append(round(v["f"] * 100, 4))
        metrics["bleu-4"].append(sentence_bleu([label_tokens], pred_tokens,
                                               smoothing_function=SmoothingFunction().method3))
    return {k: float(np.mean(v)) for k, v in metrics.items()}


def test_metrics_match_finetune_demo() -> None:
    got = score([p for p, _ in PAIRS], [r for _, r in PAIRS])
    expected = finetune_demo_metrics(PAIRS)
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0 < got["bleu-4"] < 1 and 0 < got["rouge-l"] < 100  # BLEU as a fraction, ROUGE in percent


def test_edge_cases() -> None:
    assert score_pair(PAIRS[0][0], PAIRS[0][1]) == pytest.approx(
        {"bleu-4": 1.0, "rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0})
    assert score_pair("", "参考答案") == {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    assert score([], []) == {}
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score(["a", "b"], ["a"])
