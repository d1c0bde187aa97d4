"""The recipe under DDP on CPU: ``torchrun --standalone --nproc_per_node 2 -m finetune train`` (gloo, one torch thread
per process) with micro_batch_size 1 gives the same per-step losses as one process with micro_batch_size 2 (the
same global batch of 2, the same seed and data, LoRA dropout off), and only rank 0 writes the adapter and reports.

Why the losses can match: accelerate shards the one seeded sampler's batches of 1 round-robin over the ranks, so a
global step sees the same two examples as the single process's batch of 2; the trainer normalises the token-summed
loss by the token count of the whole global batch (``average_tokens_across_devices``) and DDP averages the gradients,
so loss and gradient are the single-process ones up to float summation order (and padding in the batch of 2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.base_model import build_tiny_base
from finetune.config import ModelSection
from rag.core.config import REPO_ROOT

pytestmark = pytest.mark.integration

TINY = "kbqa/tiny-glm"
STEPS = 10
# fp32; the only differences are summation order (all-reduce of gradients, per-rank vs batched reductions) and the
# batch of 2 being padded: observed differences ~1e-7 relative; 1e-4 leaves room while any change of examples,
# normalisation or a missing gradient average shows up at the 1e-2 level or more.
RTOL = 1e-4
RECIPE = ["data.datasets=[helpdesk_alpaca]", "data.max_samples=16", "data.dev_ratio=0", "eval.steps=0",
          f"train.max_steps={STEPS}", "train.grad_accum_steps=1", "train.batching=padded", "train.logging_steps=1",
          "train.save_steps=0", "train.lr_scheduler=constant", "train.warmup_ratio=0", "train.cpu_threads=1",
          "train.device=cpu", "train.precision=fp32", "lora.dropout=0", "seed=1234"]


def environment(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                                     "MASTER_", "ACCELERATE_", "TORCHELASTIC"))}
    env.update(KBQA_CACHE=str(cache), HF_HUB_OFFLINE="1", KBQA_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ACCELERATE_USE_CPU="true",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")])))
    return env


def run(work: Path, name: str, processes: int, micro_batch: int, extra: tuple[str, ...] = ()) -> Path:
    overrides = [*RECIPE, *extra, f"name={name}", f"train.micro_batch_size={micro_batch}",
                 f"output.adapters_dir={work / 'adapters' / name}", f"train.output_dir={work / 'runs'}/{{name}}"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    command = [*launcher, "-m", "finetune", "train", "tiny", *overrides, "--no-progress"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=environment(work / "cache"), capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return work / "runs" / name


def losses(run_dir: Path) -> dict[int, float]:
    history = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBQA_CACHE", str(tmp_path / "cache"))
    build_tiny_base(ModelSection(name_or_path=TINY, build_tiny="glm", template="chatglm3"))  # built once, shared

    single = run(tmp_path, "single", processes=1, micro_batch=2)
    ddp = run(tmp_path, "ddp", processes=2, micro_batch=1)

    report = json.loads((ddp / "metrics.json").read_text(encoding="utf-8"))
    assert report["processes"] == 2 and report["steps"] == STEPS and report["parallelism"] == "ddp"
    assert json.loads((single / "metrics.json").read_text(encoding="utf-8"))["processes"] == 1
    one, two = losses(single), losses(ddp)
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1)), (one, two)
    assert len(set(one.values())) > 1  # the steps see different batches and the loss moves
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=RTOL), (step, one, two)

    # exactly one adapter, written once by rank 0: no per-rank copies, no partial folders left behind
    adapters = tmp_path / "adapters" / "ddp"
    assert sorted(p.name for p in adapters.iterdir()) == ["ddp"]
    assert sorted(p.name for p in (adapters / "ddp").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "rag_adapter.json"]
    assert json.loads((adapters / "ddp" / "rag_adapter.json").read_text(encoding="utf-8"))["training"]["steps"] == STEPS


def test_fsdp_is_refused_where_it_cannot_shard_and_maps_to_trainer_arguments() -> None:
    """accelerate shards only over CUDA GPUs: on CPU or with one process ``train.fsdp`` would quietly run as DDP (this
    was seen: the 2-process CPU run reported "ddp"), so it is an error naming what to do. Where it can run (2+ GPUs,
    not available here) it becomes the Trainer's FSDP arguments."""
    from unittest import mock

    from finetune.config import load_finetune_config
    from finetune.trainer import fsdp_arguments
    from rag.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train.fsdp=full_shard shards the model over several CUDA GPUs.*here "
                                          r"there is no CUDA GPU"):
        fsdp_arguments("full_shard")
    with pytest.raises(ConfigError, match=r"train.fsdp='zero3' is not one of '', 'full_shard', 'shard_grad_op'"):
        load_finetune_config("tiny", ["train.fsdp=zero3"])
    assert fsdp_arguments("") == {}
    with mock.patch("finetune.trainer.check_fsdp_possible") as check:  # as on 2+ GPUs
        args = fsdp_arguments("full_shard")
    check.assert_called_once_with("full_shard")
    assert args["fsdp"] == "full_shard auto_wrap"
    assert args["fsdp_config"]["use_orig_params"] and args["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"
