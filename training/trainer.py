"""A training run from a RunConfig: set up, resume, loop over `train_step`, log, evaluate, checkpoint.

Runs inside every process torchrun starts (`python -m training.worker`); also runs as a single
process without torchrun. Set-up is split into small functions so each can be read on its own.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from training import checkpoint as ckpt_lib
from training.augment import jitter_flip_normalise
from training.config import RunConfig
from training.data import Loader, ShardStream, check_enough_shards, mix_seed
from training.loop import train_step
from training.metrics import MetricsLogger, MetricsWindow, device_peak_flops, peak_memory_mb
from training.optim import build_optimizer, lr_at
from training.plan import micro_batch_for

log = logging.getLogger("training")


# -- set-up pieces ------------------------------------------------------------------------------------
def init_distributed(train=None) -> tuple[int, int, torch.device]:
    """(rank, world size, device). NCCL + one GPU per process when CUDA is used (plus gloo for CPU-side
    collectives such as async checkpoint writes), else gloo on CPU. `train.device` picks; the process
    group times out after `train.pg_timeout_s`."""
    from datetime import timedelta
    want = getattr(train, "device", "auto")
    use_cuda = torch.cuda.is_available() and want != "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = \"cuda\" but torch sees no CUDA device")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, torch.device("cuda" if use_cuda else "cpu")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    timeout = timedelta(seconds=getattr(train, "pg_timeout_s", 1800.0))
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local} needs GPU {local} but this node has {torch.cuda.device_count()}: start at most "
                f"{torch.cuda.device_count()} process(es) per node, or set train.device = \"cpu\"")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("cpu:gloo,cuda:nccl", device_id=device, timeout=timeout)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timeout)
    return rank, world, device


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def tokenizer_path(cfg: RunConfig) -> str:
    """The run's SentencePiece model: init.tokenizer, else the tokenizer.model shipped with init.llm_checkpoint
    (a LLaMA checkpoint's embedding rows are indexed by its own tokenizer's ids); "" for the MAE stage."""
    if cfg.init.tokenizer:
        return str(Path(cfg.init.tokenizer).resolve())
    if cfg.stage == "fusion" and cfg.init.llm_checkpoint:
        shipped = Path(cfg.init.llm_checkpoint) / "tokenizer.model"
        if not shipped.is_file():
            raise FileNotFoundError(
                f"init.llm_checkpoint={cfg.init.llm_checkpoint} has no tokenizer.model and init.tokenizer is "
                "empty: name the checkpoint's SentencePiece model with init.tokenizer")
        return str(shipped.resolve())
    return ""


def resolve_model_config(cfg: RunConfig):
    """(ModelConfig, Tokenizer or None). With init.llm_checkpoint the text tower's shape comes from the
    checkpoint's config.json (model.overrides still win); otherwise the vocabulary follows the tokenizer
    unless model.overrides sets it."""
    from training.model import ModelConfig, text_config_from_llama
    overrides = dict(cfg.model.overrides)
    tok = None
    if cfg.stage == "fusion":
        from training.tokenizer import Tokenizer
        tok = Tokenizer.load(tokenizer_path(cfg))
    if cfg.stage == "fusion" and cfg.init.llm_checkpoint:
        from training.model.llama_loader import read_llama_config
        hf = read_llama_config(cfg.init.llm_checkpoint)
        problems = [] if tok.vocab_size == hf["vocab_size"] else \
            [f"{tok.vocab_size} pieces vs a {hf['vocab_size']}-row embedding table"]
        for name in ("bos", "eos"):
            want = hf.get(f"{name}_token_id")
            if isinstance(want, int) and want != getattr(tok, f"{name}_id"):
                problems.append(f"{name}_id {getattr(tok, f'{name}_id')} vs the checkpoint's {name}_token_id {want}")
        if problems:
            raise ValueError(
                f"tokenizer {tok.path} does not match init.llm_checkpoint={cfg.init.llm_checkpoint} ("
                + "; ".join(problems) + "): token ids would index the wrong embeddings; use the tokenizer.model "
                "shipped with the checkpoint (leave init.tokenizer empty)")
        mcfg = text_config_from_llama(cfg.init.llm_checkpoint, preset=cfg.model.preset, **overrides)
    else:
        if tok is not None:
            overrides.setdefault("vocab_size", tok.vocab_size)
        mcfg = ModelConfig.preset(cfg.model.preset, **overrides)
    if tok is not None and tok.vocab_size > mcfg.vocab_size:
        raise ValueError(f"tokenizer {tok.path} has {tok.vocab_size} pieces but model.overrides.vocab_size "
                         f"is {mcfg.vocab_size}; ids past the embedding table would crash")
    if cfg.stage == "fusion" and cfg.data.max_tokens > mcfg.max_len:
        raise ValueError(f"data.max_tokens={cfg.data.max_tokens} exceeds the model's max_len={mcfg.max_len}")
    return mcfg, tok


def build_model(cfg: RunConfig, mcfg):
    import training.model as tm
    if cfg.stage == "mae":
        return tm.MAEPretrainer(mcfg)
    model = tm.FusionModel(mcfg)
    if cfg.init.mae_encoder:
        model.load_mae_encoder(ckpt_lib.load_weights(cfg.init.mae_encoder))
        log.info("vision tower initialised from MAE encoder %s", cfg.init.mae_encoder)
    if cfg.init.llm_checkpoint:
        report = tm.load_llama_text_tower(model, cfg.init.llm_checkpoint)
        log.info("text tower initialised from %s (%d tensors, lm_head %s)", cfg.init.llm_checkpoint,
                 report["tensors"], "loaded" if report["lm_head"] else "tied to the embeddings")
    return model


def compile_blocks(model: torch.nn.Module) -> int:
    """torch.compile each transformer block in place (train.compile); returns how many.

    Per block, not the whole model: FSDP shards per block, graph breaks stay local, and blocks of one class
    share a compiled graph (their parameters are graph inputs), so compile time does not grow with depth.
    Module names and state dicts are unchanged (nn.Module.compile), so checkpoints do not see it."""
    blocks = [block for m in model.modules() if isinstance(m, torch.nn.ModuleList) for block in m]
    for block in blocks:
        block.compile()
    return len(blocks)


def parallelize(model, cfg: RunConfig, device: torch.device, world: int):
    if cfg.train.compile:
        compile_blocks(model)
    if world == 1:
        return model
    reduce_dtype = torch.bfloat16 if cfg.train.reduce_dtype == "bf16" else torch.float32
    if cfg.train.parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        param_dtype = torch.bfloat16 if amp_dtype(cfg, device) is not None else None
        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
        # shard each transformer block on its own so only one block is gathered at a time
        for m in list(model.modules()):
            if isinstance(m, torch.nn.ModuleList):
                for block in m:
                    fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
              find_unused_parameters=cfg.train.find_unused_parameters)
    if reduce_dtype == torch.bfloat16:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
        ddp.register_comm_hook(None, bf16_compress_hook)   # bf16 on the wire, fp32 gradients in memory
    return ddp


def amp_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    if cfg.train.precision != "bf16":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cfg.train.cpu_bf16 else None


def make_stream(cfg: RunConfig, *, shards: list, rank: int, world: int, micro_batch: int, image_size: int,
                train: bool = True, streams: int = 0) -> ShardStream:
    """The run's data stream: its data and augment sections as they are, plus what the run derived
    (`streams`: V, 0 = world x loader workers; the eval stream is one ordered pass)."""
    return ShardStream(shards, data=cfg.data, augment=cfg.augment, stage=cfg.stage, seed=cfg.seed,
                       tokenizer=tokenizer_path(cfg), image_size=image_size, micro_batch=micro_batch,
                       rank=rank, world_size=world, grad_accum=cfg.batch.grad_accum, streams=streams, train=train)


def to_device(batch: dict, device: torch.device, cfg: RunConfig) -> dict:
    """Loader batch (uint8 crops + per-sample flip/jitter) -> model batch; augmentation finishes here.
    With train.text_bucket > 0 a right-padded batch is first trimmed, on the host, to its longest row
    rounded up to the bucket (at most max_tokens / bucket distinct shapes for compiled graphs)."""
    nb = device.type == "cuda"
    out = {"image": jitter_flip_normalise(batch["image"].to(device, non_blocking=nb),
                                          batch["flip"].to(device), batch["jitter"].to(device),
                                          cfg.augment.mean, cfg.augment.std)}
    right_padded = False
    if "attention_mask" in batch and batch["attention_mask"].device.type == "cpu":
        # checked on the loader's host copy, so no device sync: a padding token followed by a real one
        # anywhere means some row is not right-padded, and the model keeps its explicit padding mask
        am = batch["attention_mask"].bool()
        right_padded = not bool((am[:, 1:] & ~am[:, :-1]).any())
    length = None
    if right_padded and cfg.train.text_bucket > 0:
        longest = int(batch["attention_mask"].sum(1).max())
        length = min(batch["attention_mask"].shape[1], -(-longest // cfg.train.text_bucket) * cfg.train.text_bucket)
    for k in ("input_ids", "attention_mask", "loss_mask", "itc_mask", "is_vqa", "image_id"):
        if k in batch:
            v = batch[k][:, :length] if length is not None and k in ("input_ids", "attention_mask", "loss_mask") \
                else batch[k]
            out[k] = v.to(device, non_blocking=nb)
    if right_padded:
        out["padding_side"] = "right"   # lets the model run maskless causal (flash) attention
    return out


# -- evaluation ---------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, cfg: RunConfig, *, shards: list, tokenizer, image_size: int, device, micro_batch: int,
             amp: torch.dtype | None) -> dict:
    """Loss on the first eval.num_batches batches of the eval shards (same slice every time) and a few
    generated captions. Every rank runs it on the same data (FSDP needs all ranks in each forward)."""
    stream = make_stream(cfg, shards=shards, rank=0, world=1, micro_batch=micro_batch, image_size=image_size,
                         train=False)
    inner = ckpt_lib.unwrap(model)
    inner.eval()
    losses: dict[str, list[float]] = {}
    captions = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):   # leave training RNG as it was
        for i, batch in enumerate(stream):
            if i >= cfg.eval.num_batches:
                break
            mb = to_device(batch, device, cfg)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = inner(mb)
            for k, v in out.items():
                if torch.is_tensor(v) and v.ndim == 0 and k != "itc_scale":
                    losses.setdefault(k, []).append(float(v))
            if i == 0 and cfg.stage == "fusion" and tokenizer is not None and cfg.eval.num_captions:
                caption_rows = [j for j in range(len(batch["text"])) if bool(batch["itc_mask"][j])]
                rows = caption_rows[: cfg.eval.num_captions]
                if rows:
                    gen = inner.generate(mb["image"][rows], [[tokenizer.bos_id]] * len(rows),
                                         max_new_tokens=cfg.eval.max_new_tokens, eos_id=tokenizer.eos_id)
                    captions = [{"reference": batch["text"][j], "generated": tokenizer.decode(g)}
                                for j, g in zip(rows, gen)]
    inner.train()
    result = {f"{k}_loss" if k != "loss" else "loss": sum(v) / len(v) for k, v in losses.items() if v}
    return {"eval": result, "captions": captions}


# -- the run ------------------------------------------------------------------------------------------
def run(cfg: RunConfig) -> dict:
    from shards import resolve

    rank, world, device = init_distributed(cfg.train)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        return _run(cfg, rank, world, device, resolve)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(cfg: RunConfig, rank: int, world: int, device: torch.device, resolve) -> dict:
    micro = micro_batch_for(cfg, world)
    accum = cfg.batch.grad_accum
    shards = resolve(cfg.data.shards)   # ShardRefs: the manifest's sizes and digests travel with them
    check_enough_shards(len(shards), world_size=world, readers_per_rank=max(1, cfg.data.num_workers),
                        streams=cfg.data.streams)
    run_dir = Path(cfg.run_dir)

    seed_everything(cfg.seed)                      # identical initial weights on every rank
    mcfg, tokenizer = resolve_model_config(cfg)
    model = build_model(cfg, mcfg).to(device)
    model.train()
    model = parallelize(model, cfg, device, world)
    optimizer = build_optimizer(model, cfg.optim, fused=device.type == "cuda")
    seed_everything(mix_seed(cfg.seed, "rank", rank))   # per-rank streams (dropout, MAE masks)
    amp = amp_dtype(cfg, device)

    step, skipped_steps, data_state = 0, 0, None
    resume_from = None
    if cfg.checkpoint.resume == "auto":
        resume_from = ckpt_lib.list_checkpoints(run_dir)[-1] if ckpt_lib.list_checkpoints(run_dir) else None
    elif cfg.checkpoint.resume != "none":
        resume_from = ckpt_lib.resolve(cfg.checkpoint.resume)
    if resume_from is not None:
        train_state, data_state = ckpt_lib.load(resume_from, model=model, optimizer=optimizer, seed=cfg.seed)
        step, skipped_steps = train_state["step"], train_state["skipped_steps"]
        log.info("resumed from %s at step %d (written by %d process(es), now %d)", resume_from, step,
                 train_state["world_size"], world)
    streams = cfg.data.streams or world * max(1, cfg.data.num_workers)
    if data_state is not None:
        if cfg.data.streams and cfg.data.streams != data_state["num_streams"]:
            raise ValueError(f"data.streams={cfg.data.streams} but the checkpoint's run has "
                             f"{data_state['num_streams']} streams; a run's streams are fixed at its first start "
                             "(leave data.streams = 0 to take the checkpoint's)")
        streams = int(data_state["num_streams"])

    loader = Loader(make_stream(cfg, shards=shards, rank=rank, world=world, micro_batch=micro,
                                image_size=mcfg.image_size, streams=streams),
                    pin_memory=device.type == "cuda", state=data_state)
    eval_shards = resolve(cfg.eval.shards) if cfg.eval.shards else []

    total = cfg.schedule.total_steps
    end = min(cfg.train.stop_at_step or total, total)
    metrics = MetricsLogger(run_dir, rank=rank, total_steps=total, start_step=step,
                            tensorboard=cfg.logging.tensorboard, progress=cfg.logging.progress,
                            print_every=cfg.logging.every_steps)
    flops = _flops_per_sample(mcfg, cfg)
    device_name, peak = device_peak_flops(device)
    config_record = cfg.to_record(model=mcfg.to_dict(), tokenizer=tokenizer_path(cfg),
                                  world_size=world, micro_batch=micro, device=device_name, data_streams=streams)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config_record, indent=1, sort_keys=True))
        log.info("stage %s, world %d x micro-batch %d x accum %d = global %d, device %s, amp %s, %d params",
                 cfg.stage, world, micro, accum, micro * world * accum, device_name, amp,
                 sum(p.numel() for p in model.parameters()))

    checkpointer = ckpt_lib.Checkpointer(run_dir, keep_last=cfg.checkpoint.keep_last,
                                         async_save=cfg.checkpoint.async_save)

    def save_checkpoint():
        checkpointer.save(step, model=model, optimizer=optimizer,
                          train_state={"skipped_steps": skipped_steps,
                                       "scheduler": {"step": step, "lr": lr_at(step, cfg.optim.lr, cfg.schedule)}},
                          data_state=loader.state_dict(), config=config_record,
                          tokenizer_path=config_record["tokenizer"])

    last_saved = step
    window = MetricsWindow()
    t_window, wait = time.perf_counter(), 0.0
    while step < end:
        micro_batches, tokens, consumed = [], 0.0, []
        for _ in range(accum):
            t = time.perf_counter()
            batch = next(loader)
            wait += time.perf_counter() - t
            tokens += _local_tokens(batch, cfg, mcfg)
            micro_batches.append(to_device(batch, device, cfg))
            if cfg.logging.sample_keys:
                consumed += [[k, txt] for k, txt in zip(batch["key"], batch.get("text") or [""] * len(batch["key"]))]
        if cfg.logging.sample_keys:
            _append_sample_keys(run_dir, rank, step + 1, consumed)
        result = train_step(model, optimizer, micro_batches, lr=lr_at(step, cfg.optim.lr, cfg.schedule),
                            clip_norm=cfg.train.clip_norm, amp_dtype=amp)
        step += 1
        window.add(result, tokens=tokens)
        evaluating = bool(eval_shards) and (step % cfg.eval.every_steps == 0 or step == total)
        saving = step % cfg.checkpoint.every_steps == 0 or step == end
        if step % cfg.logging.metrics_every_steps == 0 or evaluating or saving:
            values = window.flush()            # the loop's only host sync (and its one metrics collective)
            dt = time.perf_counter() - t_window
            skipped_now, n_steps, tokens_all = values.pop("skipped"), values.pop("steps"), values.pop("tokens")
            skipped_steps += skipped_now
            samples_per_s = micro * accum * world * n_steps / dt
            record = {"step": step, "steps": n_steps, **values, "lr": result.lr,
                      "skipped": skipped_now,     # steps skipped since the previous record
                      "skipped_steps": skipped_steps, "samples_per_s": samples_per_s,
                      "tokens_per_s": tokens_all / dt, "data_wait": wait / dt,
                      "mfu": (flops * samples_per_s / world / peak) if (peak and flops) else None,
                      "peak_mem_mb": peak_memory_mb(device), "data_skipped": loader.skipped_total(),
                      "time": time.time()}
            metrics.log(record)
            if skipped_steps > cfg.train.max_skipped_steps:
                raise RuntimeError(f"{skipped_steps} steps had a non-finite loss or gradient norm "
                                   f"(train.max_skipped_steps={cfg.train.max_skipped_steps}); stopping")
        if evaluating:
            metrics.log({"step": step, **evaluate(model, cfg, shards=eval_shards, tokenizer=tokenizer,
                                                  image_size=mcfg.image_size, device=device, micro_batch=micro,
                                                  amp=amp)})
        if saving:
            save_checkpoint()
            last_saved = step
        if window.steps == 0:             # a record was written: the next window starts after eval/checkpoint
            t_window, wait = time.perf_counter(), 0.0
    if last_saved != step:
        save_checkpoint()
    checkpointer.wait()
    metrics.close()
    if rank == 0:
        log.info("done at step %d; metrics: %s; checkpoints: %s", step, metrics.path, run_dir / "checkpoints")
    return {"step": step, "metrics": str(metrics.path), "checkpoints": str(run_dir / "checkpoints")}


def _append_sample_keys(run_dir: Path, rank: int, step: int, consumed: list) -> None:
    path = run_dir / "samples" / f"rank_{rank:05d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, "samples": consumed}) + "\n")


def _local_tokens(batch: dict, cfg, mcfg) -> float:
    """This rank's tokens in one loader batch, counted on the host copy (no device work): real text
    tokens (fusion) or visible patches (MAE). Summed over ranks once per metrics record."""
    if cfg.stage == "fusion":
        return float(batch["attention_mask"].sum())
    return float(batch["image"].shape[0] * mcfg.num_visible_patches)


def _flops_per_sample(mcfg, cfg) -> float | None:
    with contextlib.suppress(ImportError, AttributeError):
        from training.model import flops_per_sample
        return float(flops_per_sample(mcfg, stage=cfg.stage, seq_len=cfg.data.max_tokens))
    return None
