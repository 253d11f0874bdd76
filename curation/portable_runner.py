"""Beam's Prism portable runner for `curate run`, built at set-up time from its Go module.

A portable runner exercises what a cluster does (the pipeline is translated to the portable protos, run by
a separate job service, DoFns executed by an SDK worker), unlike the in-process DirectRunner. Beam's Python
SDK would download a Prism release from GitHub at run time; this machine only reaches the Go module proxy,
so set-up builds the same binary from its Go module, pinned to the installed Beam version::

    python -m curation.portable_runner install      # ~2 min, needs `go` (1.22+); writes .cache/prism/prism
    curate run --config run.toml -- --runner=PrismRunner --prism_location=.cache/prism/prism \\
        --environment_type=LOOPBACK

Equivalent shell command (what `install` runs)::

    GOBIN=$PWD/.cache/prism go install github.com/apache/beam/sdks/v2/go/cmd/prism@v<beam version>

Tests never build or download anything: they look for the binary (``$VLFUSION_PRISM`` or
``.cache/prism/prism``) and fail with this instruction when it is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / ".cache" / "prism"


def beam_version() -> str:
    import apache_beam
    return apache_beam.__version__


def prism_binary() -> str | None:
    env = os.environ.get("VLFUSION_PRISM")
    for candidate in [env, str(DEFAULT_DIR / "prism")]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def install(dest: Path = DEFAULT_DIR) -> str:
    go = shutil.which("go")
    if go is None:
        raise SystemExit("portable_runner: `go` is not on PATH; install Go 1.22+ to build Prism")
    dest.mkdir(parents=True, exist_ok=True)
    module = f"github.com/apache/beam/sdks/v2/go/cmd/prism@v{beam_version()}"
    subprocess.run([go, "install", module], check=True, env={**os.environ, "GOBIN": str(dest)})
    return str(dest / "prism")


def prism_args(binary: str) -> list[str]:
    # Own job server per pipeline: the process-wide singleton may already hold one created without
    # --prism_location (Beam's DirectRunner probes Prism first), which would try to download a release.
    return ["--runner=PrismRunner", f"--prism_location={binary}", "--environment_type=LOOPBACK",
            "--experiments=disable_prism_server_singleton"]


if __name__ == "__main__":
    if sys.argv[1:] == ["install"]:
        print(install())
    elif sys.argv[1:] == ["path"]:
        print(prism_binary() or "")
    else:
        raise SystemExit("usage: python -m curation.portable_runner install | path")
