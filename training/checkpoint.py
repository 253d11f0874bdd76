"""Checkpoints: atomic step directories with everything an exact resume needs.

    RUN_DIR/checkpoints/step_00000100/
        model.safetensors   weights (full, unsharded), readable without torch.load
        optimizer.pt        AdamW state (tensors and numbers only)
        train_state.pt      step, world size, scheduler, counters
        rank_00000.pt ...   per rank: torch/numpy/python/CUDA RNG states and the data position of
                            every loader worker of that rank
        config.json         the resolved run config; "model" = asdict(ModelConfig), "tokenizer"
        tokenizer.model     copy of the tokenizer, so a checkpoint is self-contained

Every rank writes into `.tmp_step_XXXXXXXX` (the run dir must be on a filesystem all nodes share)
and rank 0 renames it into place once all files are there, so a killed run never leaves a
directory that looks complete. `.pt` files hold plain tensors / numbers / strings and are read
with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step_(\d{8})$")


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _is_fsdp(model) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


# -- RNG ------------------------------------------------------------------------------------------
def rng_state() -> dict:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# -- model / optimizer state ------------------------------------------------------------------
def full_model_state(model) -> dict[str, torch.Tensor]:
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def full_optimizer_state(model, optimizer) -> dict:
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_model_state(model, sd: dict[str, torch.Tensor]) -> None:
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True))
    else:
        unwrap(model).load_state_dict(sd, strict=True)


def load_optimizer_state(model, optimizer, sd: dict) -> None:
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, sd, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(sd)
        _match_state_shapes(optimizer)


def _match_state_shapes(optimizer) -> None:
    # A parameter that changed shape but not size (FusionModel.logit_scale went from 0-d to 1 element so FSDP
    # can shard it) would otherwise meet moments of the old shape in the first in-place AdamW update.
    for group in optimizer.param_groups:
        for p in group["params"]:
            for k, v in optimizer.state.get(p, {}).items():
                if torch.is_tensor(v) and k != "step" and v.shape != p.shape and v.numel() == p.numel():
                    optimizer.state[p][k] = v.reshape(p.shape)


# -- save -------------------------------------------------------------------------------------------
def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def save(run_dir: str | Path, step: int, *, model, optimizer, train_state: dict, rank_state: dict,
         config: dict, tokenizer_path: str = "", keep_last: int = 3) -> Path:
    """Collective: every rank calls it. Returns the final directory."""
    rank, world = _rank(), _world()
    final = step_dir(run_dir, step)
    tmp = final.parent / f".tmp_{final.name}"
    model_sd = full_model_state(model)          # collective under FSDP
    optim_sd = full_optimizer_state(model, optimizer)
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)                  # left over by a killed run
        tmp.mkdir(parents=True)
    _barrier()
    torch.save({**rank_state, "rng": rng_state(), "rank": rank}, tmp / f"rank_{rank:05d}.pt")
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model_sd.items()}, str(tmp / "model.safetensors"),
                  metadata={"step": str(step)})
        torch.save(optim_sd, tmp / "optimizer.pt")
        torch.save({**train_state, "step": step, "world_size": world}, tmp / "train_state.pt")
        if tokenizer_path and Path(tokenizer_path).is_file():
            shutil.copyfile(tokenizer_path, tmp / "tokenizer.model")
        (tmp / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    _barrier()
    if rank == 0:
        missing = [r for r in range(world) if not (tmp / f"rank_{r:05d}.pt").exists()]
        if missing:
            raise RuntimeError(f"checkpoint {tmp}: rank file(s) {missing} not visible to rank 0; "
                               "run_dir must be on a filesystem shared by all nodes")
        _fsync_dir_files(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune(run_dir, keep_last)
    _barrier()
    return final


def _fsync_dir_files(d: Path) -> None:
    for f in d.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def prune(run_dir: str | Path, keep_last: int) -> None:
    for p in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)


def resolve(path: str | Path) -> Path:
    """A step dir, or a run dir / checkpoints dir (-> its latest step)."""
    p = Path(path)
    if STEP_DIR.match(p.name) and (p / "train_state.pt").exists():
        return p
    run_dir = p.parent if p.name == "checkpoints" else p
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"no checkpoint under {p} (looked for checkpoints/step_XXXXXXXX)")
    return found[-1]


# -- load -------------------------------------------------------------------------------------------
def load_train_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "train_state.pt", weights_only=True, map_location="cpu")


def load(ckpt: str | Path, *, model, optimizer) -> tuple[dict, dict]:
    """Restores model, optimizer and this rank's RNG; returns (train_state, this rank's state)."""
    ckpt = resolve(ckpt)
    state = load_train_state(ckpt)
    world, rank = _world(), _rank()
    if state["world_size"] != world:
        raise ValueError(
            f"checkpoint {ckpt} was written by {state['world_size']} process(es), this run has {world}. "
            "Exact resume needs the same world size (each rank's data position and RNG are its own); "
            "relaunch with the same --nnodes x --nproc-per-node, or start a new run_dir with "
            "checkpoint.resume = \"none\" and init from these weights.")
    load_model_state(model, load_file(str(ckpt / "model.safetensors")))
    load_optimizer_state(model, optimizer, torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    rank_state = torch.load(ckpt / f"rank_{rank:05d}.pt", weights_only=True, map_location="cpu")
    set_rng_state(rank_state["rng"])
    return state, rank_state


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """model.safetensors of a step dir (or the latest step of a run dir)."""
    p = Path(path)
    if p.is_file():
        return load_file(str(p))
    return load_file(str(resolve(p) / "model.safetensors"))


def load_for_inference(ckpt_dir: str | Path, *, device: str | torch.device = "cpu"):
    """(FusionModel in eval mode, Tokenizer, config dict) from a fusion-stage step dir or run dir."""
    from training.model import FusionModel, ModelConfig
    from training.tokenizer import Tokenizer

    ckpt = resolve(ckpt_dir)
    cfg = json.loads((ckpt / "config.json").read_text())
    if cfg.get("stage") != "fusion":
        raise ValueError(f"{ckpt} is a {cfg.get('stage')!r}-stage checkpoint; load_for_inference needs the "
                         "fusion stage (the MAE stage trains only the vision encoder)")
    model = FusionModel(ModelConfig.from_dict(cfg["model"]))
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=True)
    model.to(device).eval()
    tok_path = ckpt / "tokenizer.model"
    tokenizer = Tokenizer.load(tok_path if tok_path.exists() else cfg["tokenizer"])
    return model, tokenizer, cfg
