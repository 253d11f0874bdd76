"""`train`: launch | plan | worker.

    train plan   --config F [--set k=v ...] [--nnodes N --nproc-per-node P] [--json]
    train launch --config F [--set k=v ...] [--nnodes N --nproc-per-node P --rdzv-endpoint H:P --node-rank R]
                 [--dry-run] [--slurm SCRIPT]
    train worker --config F [--set k=v ...]      (what torchrun runs in each process)
"""
from __future__ import annotations

import argparse
import json
import sys


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run TOML, e.g. training/configs/tiny.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=1e-4 (repeatable)")


def _topology(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--nproc-per-node", type=int, default=None,
                   help="processes per node (default: GPUs on this node, or 1 on CPU)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train", description="vlfusion training")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("plan", help="print the batch arithmetic; refuse what does not divide")
    _common(p)
    _topology(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("launch", help="build, print and run the torchrun command")
    _common(p)
    _topology(p)
    p.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of the c10d rendezvous (multi-node)")
    p.add_argument("--node-rank", type=int, default=None)
    p.add_argument("--dry-run", action="store_true", help="only print the command")
    p.add_argument("--slurm", metavar="SCRIPT", default=None, help="write an sbatch script instead of running")

    p = sub.add_parser("worker", help="run training in this process (torchrun runs this)")
    _common(p)

    args = parser.parse_args(argv)
    try:
        if args.verb == "plan":
            from training.config import RunConfig
            from training.launch import default_nproc_per_node
            from training.plan import make_plan, plan_dict
            cfg = RunConfig.load(args.config, args.overrides)
            plan = make_plan(cfg, nnodes=args.nnodes, nproc_per_node=args.nproc_per_node or default_nproc_per_node())
            print(json.dumps(plan_dict(plan), indent=1) if args.json else "\n".join(plan.lines()))
            return 0
        if args.verb == "launch":
            from training.launch import launch
            return launch(config=args.config, overrides=args.overrides, nnodes=args.nnodes,
                          nproc_per_node=args.nproc_per_node, rdzv_endpoint=args.rdzv_endpoint,
                          node_rank=args.node_rank, dry_run=args.dry_run, slurm=args.slurm)
        from training.worker import main as worker_main
        return worker_main(["--config", args.config] + [x for o in args.overrides for x in ("--set", o)])
    except (ValueError, FileNotFoundError) as e:
        print(f"train {args.verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
