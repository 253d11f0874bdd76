"""The official SPICE scorer (spice-1.0.jar from pycocoevalcap), run on the machine's Java.

We call `edu.anu.spice.SpiceScorer` ourselves instead of pycocoevalcap's wrapper, which would try to download
CoreNLP from Stanford and writes its temp files inside site-packages. Input and output are the scorer's own
JSON: [{"image_id", "test", "refs"}] in, [{"image_id", "scores": {"All": {"f", "pr", "re", ...}, ...}}] out.
The corpus score is the mean over images of the per-image "All" F-score, as in pycocoevalcap. "All" is computed
with NaNs disabled by the scorer (a caption without propositions gets 0), so the mean is always defined.

The parse cache (-cache) makes repeated evaluations of the same references fast (the first calibration run
parses 6,000 captions, minutes on two cores; later runs take seconds). It needs the FST serialiser to reach JDK
internals, hence the --add-opens flags on Java 9+.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval import java_deps

_OPENS = ("java.lang", "java.util", "java.math", "java.net", "java.text", "java.io", "java.nio",
          "java.lang.reflect", "java.util.concurrent", "java.util.concurrent.atomic")


class SpiceError(RuntimeError):
    pass


@dataclass(frozen=True, kw_only=True)
class SpiceResult:
    score: float                      # mean per-image F-score ("All" tuples): the SPICE metric
    per_image: dict[Any, float]       # image id -> F-score
    details: dict[Any, dict]          # image id -> the scorer's full per-image record (subsets, tp/fp/fn)


def default_cache_dir() -> Path:
    if os.environ.get("VLFUSION_SPICE_CACHE"):
        return Path(os.environ["VLFUSION_SPICE_CACHE"]).expanduser()
    return java_deps.cache_dir().parent / "spice-cache"


def spice_command(input_json: Path, output_json: Path, *, cache_dir: Path | None, heap: str,
                  threads: int | None) -> list[str]:
    java = java_deps.find_java()
    classpath = os.pathsep.join(str(p) for p in java_deps.spice_classpath())
    cmd = [java, f"-Xmx{heap}"]
    if java_deps.java_major_version(java) >= 9:
        cmd += [f"--add-opens=java.base/{pkg}=ALL-UNNAMED" for pkg in _OPENS]
    cmd += ["-cp", classpath, "edu.anu.spice.SpiceScorer", str(input_json), "-out", str(output_json),
            "-subset", "-silent"]
    if cache_dir is not None:
        cmd += ["-cache", str(cache_dir)]
    if threads:
        cmd += ["-threads", str(threads)]
    return cmd


def spice_score(references: Mapping[Any, list[str]], candidates: Mapping[Any, str], *,
                cache_dir: Path | str | None | bool = None, heap: str = "8G", threads: int | None = None,
                timeout_s: float | None = None) -> SpiceResult:
    """SPICE of one candidate caption per image against that image's references.

    Captions should be what the COCO toolkit feeds SPICE: PTB-tokenised, lower-cased, punctuation removed.
    cache_dir: None -> default cache (~/.cache/vlfusion/spice-cache or $VLFUSION_SPICE_CACHE); False -> no cache.
    """
    if set(references) != set(candidates):
        raise SpiceError("SPICE needs the same image ids in references and candidates")
    if not candidates:
        raise SpiceError("SPICE: nothing to score")
    ids = sorted(candidates, key=lambda x: (str(type(x)), x))
    for i in ids:
        if not references[i]:
            raise SpiceError(f"SPICE: image {i!r} has no reference caption")
    if cache_dir is None:
        cache_dir = default_cache_dir()
    cache = Path(cache_dir) if cache_dir is not False else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vlfusion-spice-") as tmp:
        in_path, out_path = Path(tmp) / "input.json", Path(tmp) / "output.json"
        # Plain string ids keep the Java side indifferent to id types; we map them back below.
        keyed = {str(i): i for i in ids}
        if len(keyed) != len(ids):
            raise SpiceError("SPICE: image ids collide once written as strings")
        in_path.write_text(json.dumps([{"image_id": str(i), "test": candidates[i], "refs": list(references[i])}
                                       for i in ids]))
        cmd = spice_command(in_path, out_path, cache_dir=cache, heap=heap, threads=threads)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise SpiceError(f"SPICE did not finish within {timeout_s} s") from None
        if proc.returncode != 0 or not out_path.is_file():
            tail = "\n".join(line for line in proc.stderr.splitlines() if " INFO " not in line)[-3000:]
            raise SpiceError(f"SPICE scorer failed (exit {proc.returncode}):\n{tail}")
        rows = json.loads(out_path.read_text())
    per_image: dict[Any, float] = {}
    details: dict[Any, dict] = {}
    for row in rows:
        image_id = keyed[str(row["image_id"])]
        f = row["scores"]["All"]["f"]
        if f is None:  # cannot happen for "All" (see module doc); refuse rather than average a NaN
            raise SpiceError(f"SPICE returned no F-score for image {image_id!r}")
        per_image[image_id] = float(f)
        details[image_id] = row["scores"]
    if set(per_image) != set(ids):
        raise SpiceError(f"SPICE returned {len(per_image)} scores for {len(ids)} images")
    return SpiceResult(score=sum(per_image.values()) / len(per_image), per_image=per_image, details=details)
