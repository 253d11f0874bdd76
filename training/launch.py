"""`train launch`: a thin shell over torchrun. Builds the command, prints it, runs it.

The same command runs on every node; `--slurm` wraps it into an sbatch script with one task per
node and the first node of the allocation as rendezvous endpoint.
"""
from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from pathlib import Path

import torch

from training.config import RunConfig
from training.data import check_enough_shards, check_stream_layout
from training.plan import make_plan


def default_nproc_per_node() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(*, config: str, overrides: list[str], nnodes: int, nproc_per_node: int,
                     rdzv_endpoint: str, node_rank: int | None = None, rdzv_id: str = "vlfusion",
                     python: str | None = None) -> list[str]:
    cmd = [python or sys.executable, "-m", "torch.distributed.run",
           "--nnodes", str(nnodes), "--nproc-per-node", str(nproc_per_node),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id]
    if node_rank is not None:
        cmd += ["--node-rank", str(node_rank)]
    cmd += ["-m", "training.worker", "--config", config]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def preflight(cfg: RunConfig, *, nnodes: int, nproc_per_node: int) -> None:
    """Everything that can be refused before any process starts, each in one line naming the key: paths
    that are not there (data.shards, eval.shards, init.*), batch arithmetic, too few shards."""
    cfg.check_paths()
    make_plan(cfg, nnodes=nnodes, nproc_per_node=nproc_per_node)
    from shards import resolve
    shards = resolve(cfg.data.shards)
    check_enough_shards(len(shards), world_size=nnodes * nproc_per_node,
                        readers_per_rank=max(1, cfg.data.num_workers), streams=cfg.data.streams)
    if cfg.data.streams:   # with 0 a resumed run takes the checkpoint's count, checked when it loads
        check_stream_layout(streams=cfg.data.streams, world_size=nnodes * nproc_per_node,
                            readers_per_rank=max(1, cfg.data.num_workers), global_batch=cfg.batch.global_batch)


def slurm_script(cmd_args: list[str], *, nnodes: int, nproc_per_node: int, job_name: str, log_dir: str,
                 port: int = 29500) -> str:
    # rendezvous on the allocation's first node; "$HEAD:port" and the job id are expanded by bash on the node
    parts = []
    for a in cmd_args:
        if a == "@ENDPOINT@":
            parts.append('"$HEAD:' + str(port) + '"')
        elif a == "@RDZV_ID@":
            parts.append('"$SLURM_JOB_ID"')
        else:
            parts.append(shlex.quote(a))
    gpus = f"#SBATCH --gpus-per-node={nproc_per_node}\n" if torch.cuda.is_available() or nproc_per_node > 1 else ""
    return (
        "#!/bin/bash\n"
        f"#SBATCH --job-name={job_name}\n"
        f"#SBATCH --nodes={nnodes}\n"
        "#SBATCH --ntasks-per-node=1\n"
        f"{gpus}"
        f"#SBATCH --output={log_dir}/slurm-%j.out\n"
        "set -euo pipefail\n"
        'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
        "# one torchrun per node; it starts the node's processes and joins the c10d rendezvous\n"
        f"srun --kill-on-bad-exit=1 {' '.join(parts)}\n"
    )


def launch(*, config: str, overrides: list[str], nnodes: int = 1, nproc_per_node: int | None = None,
           rdzv_endpoint: str | None = None, node_rank: int | None = None, dry_run: bool = False,
           slurm: str | None = None) -> int:
    cfg = RunConfig.load(config, overrides)
    nproc = nproc_per_node or default_nproc_per_node()
    if slurm is None:
        preflight(cfg, nnodes=nnodes, nproc_per_node=nproc)
    else:
        make_plan(cfg, nnodes=nnodes, nproc_per_node=nproc)   # shards may live on the cluster only
    if slurm is not None:
        cmd = torchrun_command(config=config, overrides=overrides, nnodes=nnodes, nproc_per_node=nproc,
                               rdzv_endpoint="@ENDPOINT@", rdzv_id="@RDZV_ID@", python="python")
        text = slurm_script(cmd, nnodes=nnodes, nproc_per_node=nproc, job_name=f"vlfusion-{cfg.stage}",
                            log_dir=cfg.run_dir)
        Path(slurm).parent.mkdir(parents=True, exist_ok=True)
        Path(slurm).write_text(text)
        print(text, end="")
        print(f"# wrote {slurm}; submit with: sbatch {slurm}", file=sys.stderr)
        return 0
    if rdzv_endpoint is None:
        if nnodes > 1:
            raise ValueError("--rdzv-endpoint HOST:PORT is required with --nnodes > 1 (same value on every node)")
        rdzv_endpoint = f"127.0.0.1:{free_port()}"
    cmd = torchrun_command(config=config, overrides=overrides, nnodes=nnodes, nproc_per_node=nproc,
                           rdzv_endpoint=rdzv_endpoint, node_rank=node_rank)
    print(shlex.join(cmd), flush=True)
    if dry_run:
        return 0
    return subprocess.call(cmd)
