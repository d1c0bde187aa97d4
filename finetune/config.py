"""The recipe's typed config: ``configs/finetune/*.yaml`` + dotted ``key=value`` overrides (``lora.r=16``).

Loaded with :func:`rag.core.config.load_typed`, so unknown keys are an error listing the valid ones and values are
type-checked, exactly like the app's own config. :func:`check` then validates the combinations a type can't
(a scheduler name, eval steps that the save steps must be a multiple of ...), with the fix in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rag.core.config import REPO_ROOT, load_typed
from rag.core.errors import ConfigError
from rag.models.adapters import is_safe_name

CONFIG_DIR = REPO_ROOT / "configs" / "finetune"
SEED_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]  # every linear of native GLM
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("cosine", "linear", "constant")
BATCHING = ("padded", "length", "packing")
FSDP_MODES = ("", "full_shard", "shard_grad_op")
ON_BAD_RECORD = ("error", "skip")
TINY_ARCHS = ("", "glm", "qwen2", "llama")
STAGES = ("sft", "dpo", "kto")
QUANTIZATIONS = ("", "4bit", "8bit")
REFERENCES = ("adapter", "base")


@dataclass
class ModelSection:
    """The base model: found like the app finds it (local folder -> caches -> hubs), ChatGLM3 converted to native."""

    name_or_path: str = "THUDM/chatglm3-6b"  # hub id, known short name or local folder (the app's llm.model)
    modelscope_id: str = ""  # the same model's id on ModelScope when it differs
    revision: str = ""  # pin a hub revision; recorded in rag_adapter.json
    source: str = "auto"  # auto | local | modelscope | huggingface
    cache_dir: str = "~/.cache/kbqa/models"
    hub_timeout_s: float = 1800.0
    template: str = "auto"  # auto (detected from the tokenizer, as the app does) | chatglm3 | chatml | glm4 | llama3
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 (if installed)
    build_tiny: str = ""  # glm | qwen2 | llama: build a tiny random model at name_or_path when it is missing (tests)
    quantization: str = ""  # "" | 4bit (QLoRA: bitsandbytes NF4, double quantisation, bf16 compute) | 8bit; CUDA only


@dataclass
class DataSection:
    """Training data: files or dataset_info.json names, each record one validated conversation."""

    datasets: list[str] = field(default_factory=list)  # names in <dataset_dir>/dataset_info.json, or file paths
    dataset_dir: str = "finetune/samples"  # where dataset_info.json and relative file names live
    format: str = "auto"  # for plain files: auto | alpaca | sharegpt | advertisegen | counselling | feedback
    dev_datasets: list[str] = field(default_factory=list)  # explicit dev set; empty = split off the training data
    dev_ratio: float = 0.05  # share of the training data held out when dev_datasets is empty
    dev_max_samples: int = 200  # at most this many held out
    max_samples: int = 0  # use only the first N training records (0 = all)
    system: str = ""  # system prompt for records without one ("" = none)
    max_input_tokens: int = 128  # the prompt before the last answer; longer: oldest turns dropped, else skipped
    max_output_tokens: int = 256  # the last answer's trained tokens; longer answers are cut (0 = no limit)
    on_bad_record: str = "error"  # error: stop and list every bad record | skip: log each and go on
    feedback_context: str = "quotes"  # feedback records: quotes (the app's prompt with the cited passages) | none


@dataclass
class LoraSection:
    """peft LoRA settings; the seed's finetune_demo used r 8, alpha 32, dropout 0.1."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.0  # the seed used 0.1 (configs/finetune/chatglm3_lora.yaml); 0 is ~4 % faster and 6 GB lighter
    target_modules: list[str] = field(default_factory=lambda: list(SEED_TARGETS))  # or ["all-linear"]


@dataclass
class PreferenceSection:
    """``stage: dpo`` / ``stage: kto`` (TRL's DPOTrainer / KTOTrainer): what they add to the SFT settings."""

    beta: float = 0.1  # how far the policy may move from the reference (the KL weight)
    loss_type: str = ""  # "" = the stage's own (dpo: sigmoid, kto: kto); any loss_type TRL's trainer accepts
    desirable_weight: float = 1.0  # kto: weight of 👍 examples (raise it when they are fewer than the 👎 ones)
    undesirable_weight: float = 1.0  # kto: weight of 👎 examples
    start_adapter: str = ""  # an SFT adapter (name in output.adapters_dir, or a folder) to continue from; "" = new LoRA
    reference: str = "adapter"  # with start_adapter: adapter (a frozen copy of it, LoRA-sized) | base (the base
    #                              model with the adapter disabled). Without start_adapter the reference is the base.


@dataclass
class TrainSection:
    """The optimisation loop (transformers Trainer / TRL SFTTrainer arguments, under readable names)."""

    output_dir: str = "runs/{name}"  # checkpoints, metrics.json, loss_curve.png; {name} = the run name
    max_steps: int = 0  # optimizer steps; 0 = run `epochs` epochs instead
    epochs: float = 3.0
    micro_batch_size: int = 12  # sequences (or packed rows) per device per forward; 12 packed rows of 384 tokens
    #                             keep a 6B model under 40 GiB at ~11,700 tokens/s on an H100 (docs/BENCHMARKS.md)
    grad_accum_steps: int = 1
    learning_rate: float = 1e-4  # for ~20 conversations per step; the seed's 5e-5 was for batch 1
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"  # cosine | linear | constant (all with linear warmup)
    warmup_ratio: float = 0.0  # share of the steps spent warming up (used when warmup_steps is 0)
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0 = no clipping
    precision: str = "auto"  # auto (bf16 on Ampere+, fp16 on older GPUs, fp32 on CPU) | bf16 | fp16 | fp32
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the whole model (CUDA; ~2.5 min before the first step on ChatGLM3-6B)
    fused_lora: bool = True  # add LoRA's update inside its B GEMM (torch.addmm), not in two extra passes over each
    #                          adapted layer's output (finetune/fused_lora.py); the same sum, one rounding less
    compile_layers: bool | str = "auto"  # torch.compile each decoder layer (finetune/regional_compile.py): one
    #   layer's graph serves all, so it compiles in a fraction of the time. auto = on for SFT on a CUDA GPU with an
    #   unquantised base and no gradient checkpointing; true | false. Either compile pads packed batches to one shape
    fsdp: str = ""  # "" = DDP (each GPU holds the whole model) | full_shard | shard_grad_op: FSDP, for models that
    #                 do not fit one GPU; needs several processes (accelerate launch / torchrun)
    batching: str = "packing"  # packing (rows of whole conversations, no padding) | length (group similar lengths) |
    #                            padded (random order, the seed's)
    device: str = "auto"  # auto | cpu (a CUDA machine still trains on CPU); multi-GPU: accelerate launch / torchrun
    logging_steps: int = 10
    save_steps: int = 500  # checkpoint every N steps (0 = only the final adapter)
    save_total_limit: int = 3
    resume: str = ""  # "" = fresh start | auto = the latest checkpoint in output_dir | a checkpoint folder
    dataloader_workers: int = 0
    cpu_threads: int = 0  # torch threads when training on CPU (0 = torch's default; 1 is fastest for tiny models)


@dataclass
class EvalSection:
    """Evaluation every N steps on the dev split: loss, and BLEU-4 / ROUGE of greedy answers on a sample."""

    steps: int = 500  # 0 = no evaluation during training
    batch_size: int = 1  # for the dev loss
    generate_samples: int = 50  # dev conversations answered greedily for BLEU/ROUGE (0 = loss only)
    generate_batch_size: int = 8
    max_new_tokens: int = 256
    early_stop_patience: int = 0  # stop after N evaluations without improvement of early_stop_metric (0 = off)
    early_stop_metric: str = "loss"  # loss | bleu-4 | rouge-1 | rouge-2 | rouge-l (any eval metric name)


@dataclass
class OutputSection:
    """Where the finished adapter goes: the app's adapter registry."""

    adapters_dir: str = "adapters"
    adapter_name: str = ""  # "" = the run name
    register: bool = True  # False: leave the adapter in <output_dir>/adapter only


@dataclass
class FinetuneConfig:
    """One fine-tuning run (``configs/finetune/*.yaml``)."""

    name: str = "chatglm3-lora"
    seed: int = 42
    stage: str = "sft"  # sft (supervised) | dpo (chosen/rejected pairs) | kto (👍/👎 unpaired examples)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    preference: PreferenceSection = field(default_factory=PreferenceSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output: OutputSection = field(default_factory=OutputSection)

    @property
    def output_path(self) -> Path:
        return Path(self.train.output_dir.format(name=self.name)).expanduser()

    @property
    def adapter_name(self) -> str:
        return self.output.adapter_name or self.name


def _one_of(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(repr(v) for v in valid)}")


def check(cfg: FinetuneConfig) -> FinetuneConfig:
    """Validate what the types can't; returns ``cfg``. Raises ConfigError naming the key and the fix."""
    _one_of("train.precision", cfg.train.precision, PRECISIONS)
    _one_of("train.lr_scheduler", cfg.train.lr_scheduler, SCHEDULERS)
    _one_of("train.batching", cfg.train.batching, BATCHING)
    _one_of("train.fsdp", cfg.train.fsdp, FSDP_MODES)
    _one_of("data.on_bad_record", cfg.data.on_bad_record, ON_BAD_RECORD)
    _one_of("data.feedback_context", cfg.data.feedback_context, ("quotes", "none"))
    _one_of("model.build_tiny", cfg.model.build_tiny, TINY_ARCHS)
    _one_of("stage", cfg.stage, STAGES)
    _one_of("model.quantization", cfg.model.quantization, QUANTIZATIONS)
    _one_of("preference.reference", cfg.preference.reference, REFERENCES)
    if cfg.stage != "sft":
        if cfg.train.batching != "padded":
            raise ConfigError(f"stage={cfg.stage} compares whole sequences, padded in random batches; "
                              f"train.batching={cfg.train.batching} is for sft: set train.batching=padded")
        if cfg.preference.beta <= 0:
            raise ConfigError(f"preference.beta={cfg.preference.beta} must be positive, e.g. 0.1")
        if cfg.stage == "kto" and cfg.train.micro_batch_size < 2:
            raise ConfigError("stage=kto estimates its KL term from the other answers of a micro-batch; set "
                              "train.micro_batch_size=2 or more")
        if cfg.eval.early_stop_metric != "loss":
            raise ConfigError(f"stage={cfg.stage} has no generation metrics; use eval.early_stop_metric=loss")
    layers = cfg.train.compile_layers
    if isinstance(layers, str) and layers != "auto":
        raise ConfigError(f"train.compile_layers={layers!r} is not one of true, false, 'auto'")
    if layers is True and cfg.train.compile:
        raise ConfigError("train.compile=true compiles the whole model and train.compile_layers=true each decoder "
                          "layer; choose one (e.g. train.compile_layers=false)")
    if cfg.model.quantization and cfg.train.fsdp:
        raise ConfigError(f"model.quantization={cfg.model.quantization} cannot be sharded with train.fsdp here; "
                          "leave train.fsdp empty (one GPU or DDP)")
    if not is_safe_name(cfg.adapter_name):
        raise ConfigError(f"adapter name {cfg.adapter_name!r} (name / output.adapter_name) must be a safe folder name: "
                          "letters, digits, CJK, '-', '_' and '.', starting with a letter or digit")
    if not cfg.data.datasets:
        raise ConfigError("data.datasets is empty; name a dataset of dataset_info.json or a file, "
                          "e.g. data.datasets=[helpdesk_alpaca]")
    if cfg.train.max_steps <= 0 and cfg.train.epochs <= 0:
        raise ConfigError("set train.max_steps (> 0) or train.epochs (> 0)")
    for key, value in (("train.micro_batch_size", cfg.train.micro_batch_size),
                       ("train.grad_accum_steps", cfg.train.grad_accum_steps), ("lora.r", cfg.lora.r),
                       ("train.logging_steps", cfg.train.logging_steps)):
        if value < 1:
            raise ConfigError(f"{key}={value} must be at least 1")
    if not 0 <= cfg.data.dev_ratio < 1:
        raise ConfigError(f"data.dev_ratio={cfg.data.dev_ratio} must be in [0, 1), e.g. 0.05")
    if not 0 <= cfg.lora.dropout < 1:
        raise ConfigError(f"lora.dropout={cfg.lora.dropout} must be in [0, 1)")
    if cfg.data.max_input_tokens < 1:
        raise ConfigError(f"data.max_input_tokens={cfg.data.max_input_tokens} must be at least 1")
    if cfg.train.batching == "packing" and cfg.data.max_output_tokens <= 0:
        raise ConfigError("train.batching=packing packs rows of max_input_tokens + max_output_tokens tokens; "
                          "set data.max_output_tokens > 0")
    if cfg.eval.early_stop_patience > 0:
        if cfg.eval.steps <= 0:
            raise ConfigError("eval.early_stop_patience needs evaluations: set eval.steps > 0")
        if cfg.train.save_steps <= 0 or cfg.train.save_steps % cfg.eval.steps:
            raise ConfigError(f"early stopping keeps the best checkpoint, so train.save_steps={cfg.train.save_steps} "
                              f"must be a positive multiple of eval.steps={cfg.eval.steps}")
        if cfg.eval.early_stop_metric != "loss" and cfg.eval.generate_samples <= 0:
            raise ConfigError(f"eval.early_stop_metric={cfg.eval.early_stop_metric} is a generation metric; "
                              "set eval.generate_samples > 0 or use eval.early_stop_metric=loss")
    return cfg


def load_finetune_config(path: str | Path | None, overrides: list[str] | None = None) -> FinetuneConfig:
    """Load and check a recipe config; ``path`` may be a file or a name in ``configs/finetune`` (``tiny``)."""
    if path is not None and not Path(path).is_file():
        if not (CONFIG_DIR / f"{path}.yaml").is_file():
            names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
            raise ConfigError(f"config {path} not found; give a YAML file or one of: {names}")
        path = CONFIG_DIR / f"{path}.yaml"
    return check(load_typed(FinetuneConfig, path, overrides))
