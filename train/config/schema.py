"""The experiment schema: one typed config that feeds every part of gobig.

Sections map one-to-one onto concerns (model, data, optim, zero, train,
cluster, run, checkpoint, logging, decode, guards). The DeepSpeed JSON, the Ray scaling
config and the loaders' arguments are all derived from it, never written by
hand a second time. Unknown keys are errors; cross-field checks raise
ValueError naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.config import ModelConfig
from model.presets import MODEL_PRESETS

DEFAULT_MODEL = "gpt-tiny"


class Section(BaseModel):
    # Forbid unknown keys (typos must not be silently ignored) and re-validate
    # on assignment so programmatic edits cannot bypass the checks.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """Where training data comes from and how it is streamed."""

    source: str = Field(
        "builtin:stdlib",
        description="builtin:NAME, a prepared dataset directory (with manifest.json), a brace "
        "pattern of shards, an http(s):// URL or a pipe: command",
    )
    val_source: str | None = Field(
        None, description="validation shards; default: the source's own validation split"
    )
    tokenizer: str | None = Field(
        None, description="sentencepiece model; default: the one recorded with the source"
    )
    num_workers: int = Field(
        0, ge=0, description="DataLoader worker processes per rank (0: load in the trainer)"
    )
    shuffle_buffer: int = Field(1024, ge=0, description="samples in the shuffle buffer")
    max_tokens: int | None = Field(
        None,
        ge=2,
        description="seq2seq: batches of sentence pairs of at most this many padded source "
        "+ target tokens (at least 2 x model.max_seq_len; train.micro_batch_size is then "
        "unused); default: train.micro_batch_size pairs a batch",
    )
    on_error: Literal["raise", "skip"] = "raise"
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0, description="BERT masking rate")
    augment: bool = Field(True, description="ViT random crop and flip at train time")


class OptimConfig(Section):
    """AdamW and its learning-rate schedule."""

    lr: float = Field(6e-4, gt=0.0)
    min_lr: float = Field(6e-5, ge=0.0, description="lr at the end of the decay")
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["cosine", "linear", "constant", "inverse_sqrt"] = Field(
        "cosine",
        description="after the linear warmup: cosine or linear decay to min_lr, constant, or "
        "inverse_sqrt (lr x sqrt(warmup_steps / step), the Transformer paper's; min_lr and "
        "decay_steps unused)",
    )
    decay_steps: int | None = Field(
        None, ge=1, description="steps from start to the end of the decay; default max_steps"
    )
    weight_decay: float = Field(0.1, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0.0)
    grad_clip: float = Field(1.0, ge=0.0, description="max global grad norm; 0 disables")
    fused: bool = Field(
        True,
        description="AdamW's fused kernel (all parameters in one pass) where the device has one",
    )


class ZeroConfig(Section):
    """DeepSpeed ZeRO partitioning and offload."""

    stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    nvme_path: str | None = Field(
        None, description="offload to NVMe at this path instead of CPU memory"
    )


class TrainConfig(Section):
    """The training loop: steps, batches, precision, cadence."""

    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    max_steps: int = Field(1000, ge=1)
    micro_batch_size: int = Field(8, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    global_batch_size: int | None = Field(
        None, ge=1, description="if set, grad_accum_steps is derived from it"
    )
    seed: int = 1337
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(200, ge=1)
    eval_batches: int = Field(20, ge=1)
    eval_bleu_sentences: int = Field(
        200,
        ge=0,
        description="seq2seq: at each evaluation, corpus BLEU (sacreBLEU) of the translations "
        "of the validation split's first this many pairs, decoded as `decode` says; 0: off",
    )
    checkpoint_every: int = Field(500, ge=1)
    compile: bool = False
    peak_tflops: float | None = Field(
        None, gt=0.0, description="per-worker peak for MFU; default: measured once per machine"
    )
    hang_timeout_s: float | None = Field(
        None,
        gt=0.0,
        description="a rank with no step for this long is hung: collectives time out, the "
        "run restarts (Ray) or exits; default 120 on CPU, 300 with GPUs",
    )
    slow_phase_timeout_s: float = Field(
        1800.0,
        gt=0.0,
        description="the allowance of start-up (first step: compilation, checkpoint "
        "loading), checkpoint saves and evaluation",
    )


class ClusterConfig(Section):
    """How many workers, with what resources, where."""

    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: int = Field(3, ge=-1, description="worker-group restarts; -1 is unlimited")
    address: str | None = Field(None, description="Ray cluster address; default: embedded local")


class RunConfig(Section):
    """Where a run keeps its files."""

    name: str | None = Field(None, description="default: model name and start time")
    dir: str = Field("runs", description="parent of run directories (path or s3:// / gs:// URI)")


class CheckpointConfig(Section):
    keep: int = Field(3, ge=1, description="newest complete checkpoints kept")
    asynchronous: bool = Field(
        False,
        description="write periodic checkpoints in a forked background process while "
        "training goes on (the last and stop checkpoints are always written at once)",
    )


class WandbConfig(Section):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "gobig"
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)


class ProfileConfig(Section):
    enabled: bool = Field(False, description="trace a few steps with torch.profiler")
    wait: int = Field(5, ge=0, description="steps before the trace starts")
    warmup: int = Field(2, ge=0, description="steps traced but discarded")
    active: int = Field(3, ge=1, description="steps recorded into RUN_DIR/profile/")


class LoggingConfig(Section):
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    profile: ProfileConfig = Field(default_factory=ProfileConfig)
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["The", "First"],
        description="at each evaluation a model that generates text continues these "
        "prompts (metrics.jsonl and a W&B table)",
    )
    sample_tokens: int = Field(32, ge=0, description="tokens per evaluation sample; 0: off")
    sample_translations: int = Field(
        3,
        ge=0,
        description="seq2seq: translated validation sentences shown at each evaluation "
        "(of the train.eval_bleu_sentences ones: console, metrics.jsonl, a W&B table)",
    )


class DecodeConfig(Section):
    """How a seq2seq model translates for its BLEU: at evaluations and in `gobig eval`.
    The defaults are the Transformer paper's (`gobig translate` has the same ones)."""

    beam_size: int = Field(4, ge=1, description="hypotheses kept per sentence (1: greedy)")
    length_penalty: float = Field(
        0.6, ge=0.0, description="alpha of the GNMT length penalty ((5 + len) / 6) ** alpha"
    )
    max_len_a: float = Field(
        1.0, ge=0.0, description="a translation has at most a x source tokens + max_len_b"
    )
    max_len_b: int = Field(50, ge=1, description="see max_len_a")
    batch_size: int = Field(32, ge=1, description="sentences decoded together")


class GuardsConfig(Section):
    """What watches the run's health: divergence and straggling ranks (train/guards/)."""

    anomaly_policy: Literal["skip", "rollback", "stop"] = Field(
        "skip",
        description="after a non-finite loss or grad norm, or a loss spike: skip that "
        "update; roll back to the newest checkpoint before it and skip its batches; or stop",
    )
    spike_sigmas: float = Field(
        6.0,
        ge=0.0,
        description="a loss this many std devs above the window's mean is a spike; 0: off",
    )
    spike_window: int = Field(100, ge=2, description="healthy steps in the running loss window")
    spike_min_steps: int = Field(
        20, ge=2, description="steps in the window before spikes are judged"
    )
    max_anomalies: int = Field(
        5, ge=1, description="this many anomalies within anomaly_window steps end the run"
    )
    anomaly_window: int = Field(100, ge=1)
    rollback_skip_steps: int = Field(
        1, ge=1, description="steps' worth of batches skipped after a rollback (up to the anomaly)"
    )
    straggler_factor: float = Field(
        1.5, ge=0.0, description="a rank this much slower than the median is a straggler; 0: off"
    )
    straggler_patience: int = Field(
        3, ge=1, description="log steps in a row a rank must be slow before it is reported"
    )


FaultKind = Literal[
    "kill",
    "kill_during_save",
    "hang",
    "stop",
    "nan_loss",
    "loss_spike",
    "corrupt_checkpoint",
    "fill_disk",
    "slow",
]


class FaultConfig(Section):
    """One failure to cause on purpose (train/faults.py): for tests and rehearsals."""

    kind: FaultKind
    step: int = Field(ge=1, description="the step at (or after) which it happens")
    rank: int = Field(0, ge=0, description="the rank it happens to")
    seconds: float = Field(
        0.0, ge=0.0, description="hang: how long (0: for good); slow: delay per step"
    )
    factor: float = Field(100.0, gt=0.0, description="loss_spike: how much larger the loss is")
    file: Literal["model", "optim", "rank"] = Field(
        "optim", description="corrupt_checkpoint: which kind of file gets flipped bytes"
    )


class ExperimentConfig(Section):
    """A whole experiment. Build it with `train.config.load_config`."""

    model: ModelConfig = Field(default_factory=lambda: MODEL_PRESETS[DEFAULT_MODEL])
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    zero: ZeroConfig = Field(default_factory=ZeroConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    faults: list[FaultConfig] = Field(
        default_factory=list, description="failures to inject (inert unless listed)"
    )
    deepspeed: dict[str, Any] = Field(
        default_factory=dict,
        description="advanced DeepSpeed keys merged over the derived JSON",
    )

    @model_validator(mode="before")
    @classmethod
    def _model_preset_defaults(cls, data: Any) -> Any:
        # `model.name` picks a registry preset whose fields are the defaults;
        # keys given beside it override them.
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            return data
        section = data["model"]
        name = section.get("name", DEFAULT_MODEL if "family" not in section else None)
        if name in MODEL_PRESETS:
            data = {**data, "model": {**MODEL_PRESETS[name].to_dict(), **section}}
        elif "family" not in section:
            known = ", ".join(sorted(MODEL_PRESETS))
            raise ValueError(
                f"model.name: unknown model {name!r}; use one of {known}, "
                "or give model.family for a custom shape"
            )
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        train, cluster = self.train, self.cluster
        if train.global_batch_size is not None:
            per_step = train.micro_batch_size * cluster.num_workers
            if train.global_batch_size % per_step:
                raise ValueError(
                    f"train.global_batch_size ({train.global_batch_size}) must be divisible by "
                    f"train.micro_batch_size x cluster.num_workers ({per_step})"
                )
            accum = train.global_batch_size // per_step
            if "grad_accum_steps" in train.model_fields_set and train.grad_accum_steps != accum:
                raise ValueError(
                    f"train.grad_accum_steps ({train.grad_accum_steps}) contradicts "
                    f"train.global_batch_size ({train.global_batch_size})"
                )
            # Bypass validate_assignment: this is a derived value, not user input.
            object.__setattr__(train, "grad_accum_steps", accum)
        if self.optim.min_lr > self.optim.lr:
            raise ValueError(
                f"optim.min_lr ({self.optim.min_lr}) exceeds optim.lr ({self.optim.lr})"
            )
        if self.zero.offload_params and self.zero.stage != 3:
            raise ValueError("zero.offload_params needs zero.stage 3")
        if self.zero.offload_optimizer and self.zero.stage == 0:
            raise ValueError("zero.offload_optimizer needs zero.stage 1, 2 or 3")
        if self.train.precision == "fp16" and not self.cluster.use_gpu:
            raise ValueError("train.precision fp16 needs cluster.use_gpu (use bf16 or fp32 on CPU)")
        return self

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step: micro batch x grad accumulation x workers."""
        t = self.train
        return t.micro_batch_size * t.grad_accum_steps * self.cluster.num_workers

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: the only form that crosses to workers."""
        return self.model_dump(mode="json")
