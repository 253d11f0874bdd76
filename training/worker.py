"""Entry point of each process torchrun starts: `python -m training.worker --config F [--set k=v ...]`."""
from __future__ import annotations

import argparse
import sys

from training.config import RunConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.worker")
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    cfg = RunConfig.load(args.config, args.overrides)
    from training.trainer import run
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
