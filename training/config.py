"""Run configuration: one TOML file per run, `--set key=value` overrides on top.

Each component owns a keyword-only dataclass validated in `__post_init__`, so a bad
value fails before any process starts, with a message naming the key and what is allowed.
`RunConfig.load(path, overrides)` is the only entry point the CLI and the worker use.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.tomlconfig import load_toml

STAGES = ("mae", "fusion")
PRECISIONS = ("bf16", "fp32")
PARALLELS = ("ddp", "fsdp")
REDUCE_DTYPES = ("fp32", "bf16")
PRESETS = ("tiny", "base", "large")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"config key '{key}': {msg}")


@dataclass(kw_only=True)
class ModelSection:
    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        _check(self.preset in PRESETS, "model.preset", f"got {self.preset!r}, allowed {PRESETS}")

    def build(self):
        from training.model import ModelConfig  # heavy import only when a model is wanted
        return ModelConfig.preset(self.preset, **self.overrides)


@dataclass(kw_only=True)
class DataConfig:
    shards: str = ""                  # dir | manifest.json | brace pattern (shards.resolve_shards)
    num_workers: int = 2              # DataLoader worker processes per rank (0 = in the main process)
    shuffle_buffer: int = 1000        # samples held by each reader for shuffling
    max_tokens: int = 77
    include_captions: bool = True     # one sample per caption of each image
    include_qa: bool = True           # one sample per QA pair of each image
    prefetch_factor: int = 2

    def __post_init__(self):
        _check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        _check(self.shuffle_buffer >= 1, "data.shuffle_buffer", f"must be >= 1, got {self.shuffle_buffer}")
        _check(8 <= self.max_tokens <= 4096, "data.max_tokens", f"must be in [8, 4096], got {self.max_tokens}")
        _check(self.include_captions or self.include_qa, "data.include_captions/include_qa",
               "at least one of them must be true")
        _check(self.prefetch_factor >= 1, "data.prefetch_factor", "must be >= 1")


@dataclass(kw_only=True)
class AugmentConfig:
    # output size is the model's image_size (224 for base/large, 32 for tiny)
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])   # area fraction
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5                # probability; the paired text swaps "left"/"right"
    brightness: float = 0.4           # colour jitter strengths, factor drawn in [1-s, 1+s]
    contrast: float = 0.4
    saturation: float = 0.4
    fast_decode: bool = True          # JPEG draft mode: decode at the smallest scale >= the crop's need
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])

    def __post_init__(self):
        lo, hi = self.crop_scale
        _check(0 < lo <= hi <= 1, "augment.crop_scale", f"need 0 < min <= max <= 1, got {self.crop_scale}")
        lo, hi = self.crop_ratio
        _check(0 < lo <= hi, "augment.crop_ratio", f"need 0 < min <= max, got {self.crop_ratio}")
        _check(0 <= self.hflip <= 1, "augment.hflip", f"is a probability, got {self.hflip}")
        for k in ("brightness", "contrast", "saturation"):
            v = getattr(self, k)
            _check(0 <= v < 1, f"augment.{k}", f"must be in [0, 1), got {v}")
        _check(len(self.mean) == 3 and len(self.std) == 3, "augment.mean/std", "need 3 values each")


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 3e-4                  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.05        # not applied to norms, biases, embeddings

    def __post_init__(self):
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
               f"need two values in [0, 1), got {self.betas}")
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")


@dataclass(kw_only=True)
class ScheduleConfig:
    warmup_steps: int = 2000
    total_steps: int = 50_000
    min_lr: float = 1e-6

    def __post_init__(self):
        _check(self.total_steps >= 1, "schedule.total_steps", f"must be >= 1, got {self.total_steps}")
        _check(0 <= self.warmup_steps <= self.total_steps, "schedule.warmup_steps",
               f"must be in [0, total_steps={self.total_steps}], got {self.warmup_steps}")
        _check(self.min_lr >= 0, "schedule.min_lr", "must be >= 0")


@dataclass(kw_only=True)
class BatchConfig:
    global_batch: int = 2048          # samples per optimizer step, all ranks together
    grad_accum: int = 8               # micro-steps per optimizer step (gradients all-reduced on the last only)
    micro_batch: int = 0              # per device per micro-step; 0 = derived from the other two and the world size

    def __post_init__(self):
        _check(self.global_batch >= 1, "batch.global_batch", f"must be >= 1, got {self.global_batch}")
        _check(self.grad_accum >= 1, "batch.grad_accum", f"must be >= 1, got {self.grad_accum}")
        _check(self.micro_batch >= 0, "batch.micro_batch", f"must be >= 0, got {self.micro_batch}")


@dataclass(kw_only=True)
class TrainConfig:
    precision: str = "bf16"           # autocast dtype where the device supports it
    cpu_bf16: bool = False            # CPU bf16 autocast is slow on most CPUs: opt in
    clip_norm: float = 1.0            # 0 disables clipping (the norm is still logged)
    parallel: str = "ddp"
    stop_at_step: int = 0             # stop early (checkpointing) without changing the schedule; 0 = run to the end
    find_unused_parameters: bool = False
    max_skipped_steps: int = 100      # abort when this many steps had a non-finite loss or gradient
    # speed levers (README, "Where the recipe departs from the paper's text and why")
    compile: bool = False             # torch.compile each transformer block (fewer kernel launches; slow start)
    reduce_dtype: str = "fp32"        # gradient reduction dtype; "bf16" halves DDP/FSDP gradient traffic
    text_bucket: int = 0              # 0: text keeps the loader's fixed max_tokens (one static shape); N > 0:
                                      # trim right padding to the batch's longest row rounded up to N

    def __post_init__(self):
        _check(self.precision in PRECISIONS, "train.precision", f"got {self.precision!r}, allowed {PRECISIONS}")
        _check(self.parallel in PARALLELS, "train.parallel", f"got {self.parallel!r}, allowed {PARALLELS}")
        _check(self.clip_norm >= 0, "train.clip_norm", "must be >= 0")
        _check(self.stop_at_step >= 0, "train.stop_at_step", "must be >= 0")
        _check(self.reduce_dtype in REDUCE_DTYPES, "train.reduce_dtype",
               f"got {self.reduce_dtype!r}, allowed {REDUCE_DTYPES}")
        _check(self.text_bucket >= 0, "train.text_bucket", f"must be >= 0, got {self.text_bucket}")


@dataclass(kw_only=True)
class CheckpointConfig:
    every_steps: int = 1000
    keep_last: int = 3
    resume: str = "auto"              # "auto" (latest in run_dir if any) | "none" | path to a step dir

    def __post_init__(self):
        _check(self.every_steps >= 1, "checkpoint.every_steps", f"must be >= 1, got {self.every_steps}")
        _check(self.keep_last >= 1, "checkpoint.keep_last", f"must be >= 1, got {self.keep_last}")


@dataclass(kw_only=True)
class LoggingConfig:
    every_steps: int = 10             # paces the console; JSON lines / TensorBoard follow metrics_every_steps
    metrics_every_steps: int = 1      # one record (window means) per N steps; the only host sync of the loop
    tensorboard: bool = True
    progress: bool = True             # rank-0 progress bar with ETA on stderr

    def __post_init__(self):
        _check(self.every_steps >= 1, "logging.every_steps", "must be >= 1")
        _check(self.metrics_every_steps >= 1, "logging.metrics_every_steps",
               f"must be >= 1, got {self.metrics_every_steps}")


@dataclass(kw_only=True)
class EvalConfig:
    shards: str = ""                  # eval shard set; "" disables periodic evaluation
    every_steps: int = 1000
    num_batches: int = 4              # slice of the eval shards used each time
    num_captions: int = 4             # generated captions written to the log
    max_new_tokens: int = 20

    def __post_init__(self):
        _check(self.every_steps >= 1, "eval.every_steps", "must be >= 1")
        _check(self.num_batches >= 1, "eval.num_batches", "must be >= 1")


@dataclass(kw_only=True)
class InitConfig:
    tokenizer: str = ""               # SentencePiece model path; "" with llm_checkpoint = its tokenizer.model
    mae_encoder: str = ""             # fusion stage: MAE run dir or step dir whose encoder initialises the vision tower
    llm_checkpoint: str = ""          # fusion stage: HF LLaMA-layout dir; the text tower takes its shape and weights


@dataclass(kw_only=True)
class RunConfig:
    stage: str = "fusion"
    seed: int = 0
    run_dir: str = "runs/default"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    init: InitConfig = field(default_factory=InitConfig)

    def __post_init__(self):
        _check(self.stage in STAGES, "stage", f"got {self.stage!r}, allowed {STAGES}")
        _check(bool(self.run_dir), "run_dir", "must not be empty")
        if self.stage == "fusion":
            _check(bool(self.init.tokenizer or self.init.llm_checkpoint), "init.tokenizer",
                   "the fusion stage needs a tokenizer path (or init.llm_checkpoint, whose tokenizer.model is used)")

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        return _build(cls, d, "")

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
        return cls.from_dict(load_toml(str(path) if path else None, overrides or ()))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ValueError(f"config key '{prefix.rstrip('.')}': expected a table, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) {[prefix + u for u in unknown]}; "
                         f"allowed in '{prefix.rstrip('.') or 'top level'}': {sorted(fields)}")
    kwargs = {}
    for name, value in d.items():
        f = fields[name]
        sub = _section_type(f)
        if sub is not None:
            kwargs[name] = _build(sub, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, f, prefix + name)
    return cls(**kwargs)


_SECTIONS = {}


def _section_type(f):
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    return _SECTIONS.get(t)


def _coerce(value, f, key):
    t = f.type if isinstance(f.type, str) else str(f.type)
    if t == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ValueError(f"config key '{key}': expected an integer, got {value!r}")
    if t == "float" and not isinstance(value, float):
        raise ValueError(f"config key '{key}': expected a number, got {value!r}")
    if t == "bool" and not isinstance(value, bool):
        raise ValueError(f"config key '{key}': expected true/false, got {value!r}")
    if t == "str" and not isinstance(value, str):
        raise ValueError(f"config key '{key}': expected a string, got {value!r}")
    if t.startswith("list[float]"):
        if not isinstance(value, list):
            raise ValueError(f"config key '{key}': expected a list of numbers, got {value!r}")
        return [float(v) for v in value]
    return value


for _c in (ModelSection, DataConfig, AugmentConfig, OptimConfig, ScheduleConfig, BatchConfig, TrainConfig,
           CheckpointConfig, LoggingConfig, EvalConfig, InitConfig):
    _SECTIONS[_c.__name__] = _c
