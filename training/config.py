"""Run configuration of `train`: one TOML file per run, `--set key=value` overrides on top.

Each component owns a keyword-only dataclass validated in `__post_init__`; `shards.tomlconfig.build` (the
builder `curate run` uses too) refuses unknown keys and wrong types, so a bad value fails before any
process starts, with a message naming the key and what is allowed. `RunConfig.load(path, overrides)` is
the entry point of the CLI and the worker; `RunConfig.from_record` reads a checkpoint's config.json back
(evaluation uses it). `RunConfig.check_paths()` checks that what the run reads exists here; the launcher
calls it before torchrun starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.tomlconfig import (
    ConfigError,
    build,
    check,
    check_choice,
    check_range,
    coerce,
    fail,
    field_types,
    load,
)

STAGES = ("mae", "fusion")
PRECISIONS = ("bf16", "fp32")
PARALLELS = ("ddp", "fsdp")
REDUCE_DTYPES = ("fp32", "bf16")
PRESETS = ("tiny", "base", "large")

# ImageNet's per-channel statistics: the pixel normalisation of training and, read back from a checkpoint's
# config, of evaluation (a model sees at test time the pixel scale it was trained on).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

@dataclass(kw_only=True)
class ModelSection:
    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)   # any ModelConfig field

    def __post_init__(self):
        check_choice("model.preset", self.preset, PRESETS)
        from training.model.config import ModelConfig
        known = field_types(ModelConfig)
        for name, value in list(self.overrides.items()):
            key = f"model.overrides.{name}"
            if name not in known:
                fail(key, f"unknown model key; known: {', '.join(sorted(known))}")
            self.overrides[name] = coerce(known[name], value, key)

    def build(self):
        from training.model import ModelConfig  # heavy import only when a model is wanted
        return ModelConfig.preset(self.preset, **self.overrides)


@dataclass(kw_only=True)
class DataConfig:
    shards: str = ""                  # dir | manifest.json | brace pattern | glob (shards.resolve)
    num_workers: int = 2              # DataLoader worker processes per rank (0 = in the main process)
    shuffle_buffer: int = 1000        # tar samples per shuffle window within a shard (one window per stream in memory)
    max_tokens: int = 77
    include_captions: bool = True     # one sample per caption of each image
    include_qa: bool = True           # one sample per QA pair of each image
    prefetch_factor: int = 2
    # streams of the world-size-independent data order (training.data), fixed for a run at its first start;
    # 0 = world size x max(1, num_workers) then. To resume on other world sizes pick a multiple of each
    # world size x workers that divides batch.global_batch (e.g. 512 for 32..128 GPUs x 4 workers, batch 2048)
    streams: int = 0

    def __post_init__(self):
        check_range("data.streams", self.streams, 0)
        check_range("data.num_workers", self.num_workers, 0)
        check_range("data.shuffle_buffer", self.shuffle_buffer, 1)
        check_range("data.max_tokens", self.max_tokens, 8, 4096)
        check(self.include_captions or self.include_qa, "data.include_captions",
              "data.include_captions and data.include_qa are both false: at least one must be true")
        check_range("data.prefetch_factor", self.prefetch_factor, 1)


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
    mean: list[float] = field(default_factory=lambda: list(IMAGE_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGE_STD))

    def __post_init__(self):
        check(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
              "augment.crop_scale", f"need [min, max] with 0 < min <= max <= 1, got {self.crop_scale}")
        check(len(self.crop_ratio) == 2 and 0 < self.crop_ratio[0] <= self.crop_ratio[1],
              "augment.crop_ratio", f"need [min, max] with 0 < min <= max, got {self.crop_ratio}")
        check_range("augment.hflip", self.hflip, 0, 1)
        for k in ("brightness", "contrast", "saturation"):
            v = getattr(self, k)
            check(0 <= v < 1, f"augment.{k}", f"must be in [0, 1), got {v}")
        check(len(self.mean) == 3, "augment.mean", f"need 3 values (R, G, B), got {self.mean}")
        check(len(self.std) == 3 and all(v > 0 for v in self.std), "augment.std",
              f"need 3 values > 0 (R, G, B), got {self.std}")


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 3e-4                  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.05        # not applied to norms, biases, embeddings

    def __post_init__(self):
        check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
              f"need two values in [0, 1), got {self.betas}")
        check(self.eps > 0, "optim.eps", f"must be > 0, got {self.eps}")
        check_range("optim.weight_decay", self.weight_decay, 0)


@dataclass(kw_only=True)
class ScheduleConfig:
    warmup_steps: int = 2000
    total_steps: int = 50_000
    min_lr: float = 1e-6

    def __post_init__(self):
        check_range("schedule.total_steps", self.total_steps, 1)
        check(0 <= self.warmup_steps <= self.total_steps, "schedule.warmup_steps",
              f"must be in [0, total_steps={self.total_steps}], got {self.warmup_steps}")
        check_range("schedule.min_lr", self.min_lr, 0)


@dataclass(kw_only=True)
class BatchConfig:
    global_batch: int = 2048          # samples per optimizer step, all ranks together
    grad_accum: int = 8               # micro-steps per optimizer step (gradients all-reduced on the last only)
    micro_batch: int = 0              # per device per micro-step; 0 = derived from the other two and the world size

    def __post_init__(self):
        check_range("batch.global_batch", self.global_batch, 1)
        check_range("batch.grad_accum", self.grad_accum, 1)
        check_range("batch.micro_batch", self.micro_batch, 0)


@dataclass(kw_only=True)
class TrainConfig:
    precision: str = "bf16"           # autocast dtype where the device supports it
    cpu_bf16: bool = False            # CPU bf16 autocast is slow on most CPUs: opt in
    clip_norm: float = 1.0            # 0 disables clipping (the norm is still logged)
    parallel: str = "ddp"
    stop_at_step: int = 0             # stop early (checkpointing) without changing the schedule; 0 = run to the end
    find_unused_parameters: bool = False
    max_skipped_steps: int = 100      # abort when this many steps had a non-finite loss or gradient
    device: str = "auto"              # "auto" (one GPU per process when CUDA exists, else CPU) | "cpu" | "cuda"
    # collectives wait this long before failing: a resume seeks instead of replaying data, so the longest
    # legitimate wait is a checkpoint write or the first batch; the NCCL default (10 min) can be too short
    pg_timeout_s: float = 1800.0
    # speed levers (README, "Where the recipe departs from the paper's text and why")
    compile: bool = False             # torch.compile each transformer block (fewer kernel launches; slow start)
    reduce_dtype: str = "fp32"        # gradient reduction dtype; "bf16" halves DDP/FSDP gradient traffic
    text_bucket: int = 0              # 0: text keeps the loader's fixed max_tokens (one static shape); N > 0:
                                      # trim right padding to the batch's longest row rounded up to N

    def __post_init__(self):
        check_choice("train.precision", self.precision, PRECISIONS)
        check_choice("train.parallel", self.parallel, PARALLELS)
        check_range("train.clip_norm", self.clip_norm, 0)
        check_range("train.stop_at_step", self.stop_at_step, 0)
        check_range("train.max_skipped_steps", self.max_skipped_steps, 0)
        check_choice("train.device", self.device, ("auto", "cpu", "cuda"))
        check(self.pg_timeout_s > 0, "train.pg_timeout_s", f"must be > 0, got {self.pg_timeout_s}")
        check_choice("train.reduce_dtype", self.reduce_dtype, REDUCE_DTYPES)
        check_range("train.text_bucket", self.text_bucket, 0)


@dataclass(kw_only=True)
class CheckpointConfig:
    every_steps: int = 1000
    keep_last: int = 3
    resume: str = "auto"              # "auto" (latest in run_dir if any) | "none" | path to a step dir
    async_save: bool = False          # write in a background thread; the step dir appears when all ranks finished

    def __post_init__(self):
        check_range("checkpoint.every_steps", self.every_steps, 1)
        check_range("checkpoint.keep_last", self.keep_last, 1)
        check(bool(self.resume), "checkpoint.resume", "must be \"auto\", \"none\" or a checkpoint path, got \"\"")


@dataclass(kw_only=True)
class LoggingConfig:
    every_steps: int = 10             # paces the console; JSON lines / TensorBoard follow metrics_every_steps
    metrics_every_steps: int = 1      # one record (window means) per N steps; the only host sync of the loop
    tensorboard: bool = True
    progress: bool = True             # rank-0 progress bar with ETA on stderr
    sample_keys: bool = False         # each rank appends the keys (and texts) it trained on per step to
                                      # RUN/samples/rank_XXXXX.jsonl: an audit of the data order across resumes

    def __post_init__(self):
        check_range("logging.every_steps", self.every_steps, 1)
        check_range("logging.metrics_every_steps", self.metrics_every_steps, 1)


@dataclass(kw_only=True)
class EvalConfig:
    shards: str = ""                  # eval shard set; "" disables periodic evaluation
    every_steps: int = 1000
    num_batches: int = 4              # slice of the eval shards used each time
    num_captions: int = 4             # generated captions written to the log (0: none)
    max_new_tokens: int = 20

    def __post_init__(self):
        check_range("eval.every_steps", self.every_steps, 1)
        check_range("eval.num_batches", self.num_batches, 1)
        check_range("eval.num_captions", self.num_captions, 0)
        check_range("eval.max_new_tokens", self.max_new_tokens, 1)


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
        check_choice("stage", self.stage, STAGES)
        check(bool(self.run_dir), "run_dir", "must not be empty")
        if self.stage == "fusion":
            check(bool(self.init.tokenizer or self.init.llm_checkpoint), "init.tokenizer",
                  "the fusion stage needs a tokenizer path (or init.llm_checkpoint, whose tokenizer.model is used)")
        if not self.init.llm_checkpoint:
            # with a LLaMA checkpoint the text tower's shape comes from it, so the preset alone says little
            try:
                self.model.build()
            except ValueError as e:
                fail("model.overrides", f"preset {self.model.preset!r} with these overrides is not a valid model: {e}")

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        return build(cls, d)

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
        return load(cls, str(path) if path else None, overrides or ())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # -- the checkpoint's record -----------------------------------------------------------
    def to_record(self, *, model: dict, tokenizer: str, **facts: Any) -> dict:
        """What a checkpoint's config.json holds: this configuration, with ``model`` the resolved
        ModelConfig (what the weights need), ``model_spec`` the configured preset and overrides, the
        tokenizer path and run facts (world size, micro-batch, device)."""
        d = self.to_dict()
        return {**d, "model": model, "model_spec": d["model"], "tokenizer": tokenizer, **facts}

    @classmethod
    def from_record(cls, record: dict, *, where: str = "config.json") -> RunConfig:
        """The configuration a checkpoint's config.json records, through the same builder and checks."""
        if "model_spec" not in record:
            raise ValueError(f"{where}: no 'model_spec' key: not a run record written by train launch")
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in record.items() if k in names}
        d["model"] = record["model_spec"]
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ValueError(f"{where}: {e}") from None

    # -- what the run reads must exist -----------------------------------------------------
    def check_paths(self) -> None:
        """Refuse, in one line naming the key and the path, a shard set or init path that is not there.

        Not part of ``__post_init__``: a configuration read back from a checkpoint elsewhere need not
        find its corpus. Local init paths are stat'ed; a shard spec is resolved (a directory is listed, a
        brace pattern's or a list's tars are each checked), which for a URL is one request per named tar.
        """
        check_shards("data.shards", self.data.shards)
        if self.eval.shards:
            check_shards("eval.shards", self.eval.shards)
        for key in ("tokenizer", "mae_encoder", "llm_checkpoint"):
            path = getattr(self.init, key)
            check(not path or Path(path).exists(), f"init.{key}", f"{path!r} does not exist")
        check(not self.init.tokenizer or Path(self.init.tokenizer).is_file(), "init.tokenizer",
              f"{self.init.tokenizer!r} is not a file")
        if self.stage == "fusion" and self.init.llm_checkpoint and not self.init.tokenizer:
            shipped = Path(self.init.llm_checkpoint) / "tokenizer.model"
            check(shipped.is_file(), "init.tokenizer",
                  f"empty, and init.llm_checkpoint={self.init.llm_checkpoint!r} has no tokenizer.model: "
                  "name the checkpoint's SentencePiece model")
        resume = self.checkpoint.resume
        check(resume in ("auto", "none") or Path(resume).exists(), "checkpoint.resume",
              f"{resume!r} does not exist (allowed: \"auto\", \"none\" or a checkpoint path)")


def check_shards(key: str, spec: str) -> None:
    """``spec`` names at least one shard and every tar it names by path exists, else a ConfigError."""
    from shards import fsutil, resolve

    check(bool(spec), key, "required: a corpus directory, manifest.json, brace pattern or glob")
    try:
        refs = resolve(spec)
    except FileNotFoundError:
        fail(key, f"no shards at {spec!r}{_siblings_hint(spec)}")
    check(bool(refs), key, f"{spec!r} names no shard (.tar)")
    if "{" in spec or spec.endswith(".tar"):
        missing = [r.path for r in refs if not fsutil.exists(r.path)]
        check(not missing, key, f"{len(missing)} of the {len(refs)} tars named by {spec!r} do not exist, "
                                f"e.g. {missing[:3]}")


def _siblings_hint(spec: str) -> str:
    """What the parent directory holds, for a local path that does not exist (a typo is easier seen)."""
    parent = Path(spec).parent
    if "://" in spec or not parent.is_dir():
        return ""
    names = sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))[:10]
    return f" ({parent} holds: {', '.join(names)})" if names else ""
