"""pycocoevalcap's two Java tools, the PTB tokenizer and METEOR 1.5, run the toolkit's way on our Java.

Same jars, same arguments and the same post-processing as pycocoevalcap 1.2, with three differences that change
no score:
- the Java binary is `eval.java_deps.find_java()` ($VLFUSION_JAVA, else `java` on PATH), the one SPICE uses;
  the toolkit runs whatever `java` is first on PATH;
- the tokenizer's input file goes to a fresh temporary directory, not into site-packages (where the toolkit
  writes it, which fails on a read-only install and races between concurrent evaluations);
- `-Dfile.encoding=UTF-8`: the tokenizer reads and writes UTF-8 whatever the locale, and METEOR reads stdin
  with the platform charset, which the toolkit leaves to the locale. On the UTF-8 locales the toolkit is run
  under, this is what happens anyway; under a C/POSIX locale it keeps non-ASCII words intact.
Text goes in as UTF-8, unchanged (pycocoevalcap 1.2 does `sentences.encode()`); folding to ASCII is the
caller's choice (eval.caption_metrics, non_ascii="fold").

Memory: the tokenizer holds every caption of one call twice (text and tokens); METEOR's JVM is started per
scoring call with -Xmx2G, the toolkit's setting.
"""
from __future__ import annotations

import contextlib
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from eval import java_deps

# The toolkit's list, used on its tokenizer output.
PTB_PUNCTUATION = frozenset({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                             ".", "?", "!", ",", ":", "-", "--", "...", ";"})


def _pycocoevalcap_dir() -> Path:
    import pycocoevalcap.bleu.bleu as m  # the package has no __init__.py (namespace package)

    return Path(m.__file__).resolve().parent.parent


def ptb_jar() -> Path:
    jar = _pycocoevalcap_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    if not jar.is_file():
        raise java_deps.JavaDepsError(f"{jar} is missing: reinstall pycocoevalcap")
    return jar


def meteor_jar() -> Path:
    jar = _pycocoevalcap_dir() / "meteor" / "meteor-1.5.jar"
    if not jar.is_file():
        raise java_deps.JavaDepsError(f"{jar} is missing: reinstall pycocoevalcap")
    return jar


def ptb_tokenize(captions: dict[Any, list[str]]) -> dict[Any, list[str]]:
    """{image id: [caption, ...]} -> {image id: [tokenised caption, ...]}: lower-cased PTB tokens joined by
    spaces, the toolkit's punctuation tokens dropped. Captions must not contain line breaks (one per line)."""
    java = java_deps.find_java()
    image_ids = [k for k, v in captions.items() for _ in range(len(v))]
    lines = [c.replace("\n", " ") for v in captions.values() for c in v]
    with tempfile.TemporaryDirectory(prefix="vlfusion-ptb-") as tmp:
        src = Path(tmp) / "captions.txt"
        src.write_bytes("\n".join(lines).encode("utf-8"))
        cmd = [java, "-Dfile.encoding=UTF-8", "-cp", str(ptb_jar()), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", str(src)]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"PTB tokenizer failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode('utf-8', 'replace')[-2000:]}")
    out_lines = proc.stdout.decode("utf-8").split("\n")
    result: dict[Any, list[str]] = {k: [] for k in captions}
    for k, line in zip(image_ids, out_lines):
        result[k].append(" ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATION))
    for k, v in captions.items():
        if len(result[k]) != len(v):
            raise RuntimeError(f"PTB tokenizer returned {len(result[k])} captions for image {k!r}, expected {len(v)}")
    return result


class Meteor:
    """METEOR 1.5 as pycocoevalcap runs it (`-stdio -l en -norm`, one EVAL line for the corpus score), on our
    Java. The scoring protocol is the toolkit's own (`pycocoevalcap.meteor.meteor.Meteor.compute_score`);
    only the process is started here. Use as a context manager: the JVM is stopped on exit."""

    def __init__(self) -> None:
        cmd = [java_deps.find_java(), "-Dfile.encoding=UTF-8", "-jar", "-Xmx2G", str(meteor_jar()),
               "-", "-", "-stdio", "-l", "en", "-norm"]
        # cwd: METEOR finds its paraphrase tables next to the jar; it writes nothing.
        self.meteor_p = subprocess.Popen(cmd, cwd=str(meteor_jar().parent), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lock = threading.Lock()

    def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        from pycocoevalcap.meteor.meteor import Meteor as ToolkitMeteor

        return ToolkitMeteor.compute_score(self, gts, res)

    def _stat(self, hypothesis_str: str, reference_list: list[str]) -> str:
        from pycocoevalcap.meteor.meteor import Meteor as ToolkitMeteor

        return ToolkitMeteor._stat(self, hypothesis_str, reference_list)

    def close(self) -> None:
        proc = self.meteor_p
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(Exception):
                stream.close()
        proc.kill()
        proc.wait()

    def __enter__(self) -> Meteor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
