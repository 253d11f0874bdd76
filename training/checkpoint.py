"""Checkpoints: sharded, resharding, atomic step directories with everything an exact resume needs.

    RUN_DIR/checkpoints/step_00000100/
        state/                 torch.distributed.checkpoint (DCP): model weights and AdamW moments,
                               every rank writing its own shard (replicated DDP tensors once)
        optim_groups.json      the optimizer's hyper-parameters (JSON, so DCP holds tensors only)
        train_state.json       step, world size, scheduler, counters
        data.json              the data position of every stream of the run (training.data)
        rng_00000.pt ...       per rank: torch/numpy/python/CUDA RNG states (tensors and numbers)
        config.json            the resolved run config; "model" = asdict(ModelConfig), "tokenizer"
        tokenizer.model        copy of the tokenizer, so a checkpoint is self-contained

Resharding. DCP records which slice of each tensor every file holds, so a checkpoint written by W
ranks loads on any W' (DDP or FSDP): each rank reads the slices it needs. The data position is a
world-size-independent rule (see training.data), so W' ranks read the samples W ranks would have read
next. RNG states are restored per rank when W' == W (bitwise-exact resume); otherwise each rank reseeds
from (seed, rank, step).

Atomicity. Every rank writes into `.tmp_step_XXXXXXXX` (the run dir must be on a filesystem all nodes
share); after a barrier rank 0 renames it into place, so a killed run never leaves a directory that
looks complete. With `checkpoint.async_save` the tensors are copied to host memory, written by a
background thread (over a separate gloo group), and the rename happens when the write has finished
on every rank: before the next save, or at the end of the run.

Safe loading. `.pt` files are read with `torch.load(weights_only=True)`; DCP's `.metadata` (a pickle)
is read through an unpickler that admits only DCP's metadata classes, and DCP objects that are not
tensors are refused (nothing but tensors is written there).

Memory at 64 GPUs: under FSDP a rank holds its 1/64 shard of weights and moments, and a save stages
just that shard to host memory (twice the shard while an async save is in flight); under DDP every
rank holds the full replicated state but DCP writes each replicated tensor from one rank only. Rank 0
alone gathers nothing: no full state dict is ever assembled during training.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from shards.fsutil import atomic_write_bytes

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
# -- safe DCP reading --------------------------------------------------------------------------------
_DCP_META_CLASSES = {
    ("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "MetadataIndex", "ChunkStorageMetadata", "TensorStorageMetadata", "BytesStorageMetadata",
        "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"), ("torch._utils", "_get_layout"), ("torch.serialization", "_get_layout"),
     ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
     ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _DCP_META_CLASSES or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                     torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"checkpoint metadata names {module}.{name}, which is not a DCP metadata "
                                     "class; refusing to load it")


def _safe_reader(path: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(Path(self.path) / ".metadata", "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(path))


def _tensor_only_planner():
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class TensorOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            raise ValueError(f"checkpoint entry {read_item.dest_index.fqn} is a pickled object, not a tensor; "
                             "refusing to unpickle it")

    return TensorOnlyPlanner()


def _dcp_load(sd: dict, path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    dcp.load(sd, storage_reader=_safe_reader(path), planner=_tensor_only_planner(),
             no_dist=not (dist.is_available() and dist.is_initialized()))


def _dcp_metadata(path: Path):
    return _safe_reader(path).read_metadata()


# -- state dicts for DCP ------------------------------------------------------------------------------
def _state_dicts(model, optimizer) -> tuple[dict, list]:
    """({"model": ..., "optim": {"state": ...}} with tensors only, optimizer param_groups for JSON)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    model_sd = get_model_state_dict(model)
    optim_sd = get_optimizer_state_dict(model, optimizer)
    return {"model": model_sd, "optim": {"state": optim_sd["state"]}}, optim_sd["param_groups"]


def _set_state_dicts(model, optimizer, sd: dict, groups: list) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    set_model_state_dict(model, sd["model"])
    set_optimizer_state_dict(model, optimizer, {"state": sd["optim"]["state"], "param_groups": groups})


def _json_groups(groups: list) -> list:
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if torch.is_tensor(v):
            return v.item()
        return v
    return [{k: plain(v) for k, v in g.items()} for g in groups]


# -- save -------------------------------------------------------------------------------------------
def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


class Checkpointer:
    """Collective saves into step directories; one may be in flight (async) while training goes on."""

    def __init__(self, run_dir: str | Path, *, keep_last: int = 3, async_save: bool = False):
        self.run_dir, self.keep_last, self.async_save = Path(run_dir), keep_last, async_save
        self._pending = None          # (future, tmp, final)
        self._group = None
        if async_save and dist.is_available() and dist.is_initialized():
            # the background write's collectives must not interleave with training's on the default group
            self._group = dist.new_group(backend="gloo")

    def save(self, step: int, *, model, optimizer, train_state: dict, data_state: dict, config: dict,
             tokenizer_path: str = "") -> Path:
        """Collective: every rank calls it. Returns the final directory (complete once `wait` returned)."""
        import torch.distributed.checkpoint as dcp
        self.wait()
        rank, world = _rank(), _world()
        final = step_dir(self.run_dir, step)
        tmp = final.parent / f".tmp_{final.name}"
        sd, groups = _state_dicts(model, optimizer)        # collective under FSDP
        if rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)                  # left over by a killed run
            tmp.mkdir(parents=True)
        _barrier()
        torch.save({"rng": rng_state(), "rank": rank}, tmp / f"rng_{rank:05d}.pt")
        atomic_write_bytes(str(tmp / f"data_{rank:05d}.json"), json.dumps(data_state, sort_keys=True).encode())
        if rank == 0:
            atomic_write_bytes(str(tmp / "optim_groups.json"), json.dumps(_json_groups(groups)).encode())
            atomic_write_bytes(str(tmp / "train_state.json"),
                               json.dumps({**train_state, "step": step, "world_size": world}).encode())
            if tokenizer_path and Path(tokenizer_path).is_file():
                shutil.copyfile(tokenizer_path, tmp / "tokenizer.model")
            atomic_write_bytes(str(tmp / "config.json"), json.dumps(config, indent=1, sort_keys=True).encode())
        writer = dcp.FileSystemWriter(str(tmp / "state"))
        single = not (dist.is_available() and dist.is_initialized())
        if self.async_save:
            self._pending = (dcp.async_save(sd, storage_writer=writer, process_group=self._group, no_dist=single),
                             tmp, final)
        else:
            dcp.save(sd, storage_writer=writer, no_dist=single)
            self._finish(tmp, final)
        return final

    def wait(self) -> None:
        """Finish the save in flight, if any (collective)."""
        if self._pending is None:
            return
        future, tmp, final = self._pending
        self._pending = None
        future.result()
        self._finish(tmp, final)

    def _finish(self, tmp: Path, final: Path) -> None:
        _barrier()
        if _rank() == 0:
            world = _world()
            missing = [r for r in range(world) if not (tmp / f"rng_{r:05d}.pt").exists()
                       or not (tmp / f"data_{r:05d}.json").exists()]
            if missing or not (tmp / "state" / ".metadata").exists():
                raise RuntimeError(f"checkpoint {tmp}: files of rank(s) {missing or 'all'} not visible to rank 0; "
                                   "run_dir must be on a filesystem shared by all nodes")
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            prune(self.run_dir, self.keep_last)
        _barrier()


def save(run_dir: str | Path, step: int, *, model, optimizer, train_state: dict, data_state: dict,
         config: dict, tokenizer_path: str = "", keep_last: int = 3) -> Path:
    """Synchronous save (collective)."""
    return Checkpointer(run_dir, keep_last=keep_last).save(
        step, model=model, optimizer=optimizer, train_state=train_state, data_state=data_state, config=config,
        tokenizer_path=tokenizer_path)


def _fsync_tree(d: Path) -> None:
    for f in d.rglob("*"):
        if f.is_file():
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


def _is_legacy(ckpt: Path) -> bool:
    return (ckpt / "model.safetensors").is_file() and not (ckpt / "state").is_dir()


def resolve(path: str | Path) -> Path:
    """A step dir, or a run dir / checkpoints dir (-> its latest step)."""
    p = Path(path)
    if STEP_DIR.match(p.name) and ((p / "train_state.json").exists() or (p / "train_state.pt").exists()):
        return p
    run_dir = p.parent if p.name == "checkpoints" else p
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"no checkpoint under {p} (looked for checkpoints/step_XXXXXXXX)")
    return found[-1]


# -- load -------------------------------------------------------------------------------------------
def load_train_state(ckpt: Path) -> dict:
    if (ckpt / "train_state.json").exists():
        return json.loads((ckpt / "train_state.json").read_text())
    return torch.load(ckpt / "train_state.pt", weights_only=True, map_location="cpu")


def load_data_state(ckpt: Path) -> dict:
    """The data position of every stream, merged from the per-rank files of the saving run."""
    from training.data import merge_states
    files = sorted(ckpt.glob("data_*.json"))
    if not files:
        raise FileNotFoundError(f"{ckpt} has no data_*.json (a checkpoint of an older format?)")
    return merge_states([json.loads(f.read_text()) for f in files])


def load(ckpt: str | Path, *, model, optimizer, seed: int = 0) -> tuple[dict, dict]:
    """Restores model and optimizer (resharding to this world size) and this rank's RNG (same world size)
    or a fresh per-rank seed (another world size); returns (train_state, data state of the whole run)."""
    ckpt = resolve(ckpt)
    state = load_train_state(ckpt)
    world, rank = _world(), _rank()
    if _is_legacy(ckpt):
        raise ValueError(f"checkpoint {ckpt} has the older full-state format (model.safetensors, per-worker data "
                         "positions), which cannot resume here; start a new run_dir initialised from its weights")
    sd, _ = _state_dicts(model, optimizer)
    _dcp_load(sd, ckpt / "state")
    _set_state_dicts(model, optimizer, sd, json.loads((ckpt / "optim_groups.json").read_text()))
    if state["world_size"] == world:
        set_rng_state(torch.load(ckpt / f"rng_{rank:05d}.pt", weights_only=True, map_location="cpu")["rng"])
    else:
        from training.data import mix_seed
        s = mix_seed(seed, "rank", rank, "resumed at", state["step"])
        torch.manual_seed(s)
        np.random.seed(s % 2**32)
        random.seed(s)
    return state, load_data_state(ckpt)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Full model weights of a step dir (or the latest step of a run dir, or a .safetensors file), in
    one process: DCP shards are read into full CPU tensors (the whole model in host memory)."""
    p = Path(path)
    if p.is_file():
        return load_file(str(p))
    ckpt = resolve(p)
    if _is_legacy(ckpt):
        return load_file(str(ckpt / "model.safetensors"))
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    meta = _dcp_metadata(ckpt / "state")
    model = {}
    for key, m in meta.state_dict_metadata.items():
        if key.startswith("model.") and isinstance(m, TensorStorageMetadata):
            model[key[len("model."):]] = torch.empty(m.size, dtype=m.properties.dtype)
    sd = {"model": model}
    _dcp_load(sd, ckpt / "state")
    return sd["model"]


def export_safetensors(ckpt_dir: str | Path, out: str | Path) -> Path:
    """One `model.safetensors` with the full weights of a sharded checkpoint (single process)."""
    sd = load_weights(ckpt_dir)
    out = Path(out)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out))
    return out


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
    model.load_state_dict(load_weights(ckpt), strict=True)
    model.to(device).eval()
    tok_path = ckpt / "tokenizer.model"
    tokenizer = Tokenizer.load(tok_path if tok_path.exists() else cfg["tokenizer"])
    return model, tokenizer, cfg
