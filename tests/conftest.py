"""Shared test settings.

The test machines have 2 cores, and several test files start worker processes (Beam's
multi-processing runner, torchrun). Intra-op threads would then oversubscribe the cores: tiny
models run ~30x slower with 2 threads than with 1 under that contention, so tests use one.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def pytest_configure(config):
    # OMP_NUM_THREADS covers torch imported after this file; set it explicitly too, in case a plugin
    # imported torch first.
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
