"""Eval-set images: read through fsspec, and a missing one is an error, never a smaller eval set.

An eval set is what a model is scored on and what the corpus is decontaminated against: silently losing
an image would both shrink the benchmark and let its near-duplicates into the training corpus. So a run
whose eval set names an image that is not there stops, naming the set and the image.
"""

from __future__ import annotations

import re

from shards import fsutil

_PATTERN = re.compile(r"eval set '(?P<set>[^']*)' names image (?P<path>\S+), which does not exist")


class MissingEvalImage(RuntimeError):
    def __init__(self, eval_set: str, path: str):
        super().__init__(f"eval set '{eval_set}' names image {path}, which does not exist (eval images are "
                         f"never downloaded: put it under the eval set's `images` folder, or drop the set)")
        self.eval_set, self.path = eval_set, path

    @staticmethod
    def find(err: BaseException) -> str | None:
        """This error's message, wherever it sits in ``err``'s chain or in the text a runner wrapped it in
        (Beam's runners re-raise worker errors as new exceptions carrying the worker's traceback as text)."""
        seen = set()
        while err is not None and id(err) not in seen:
            seen.add(id(err))
            m = _PATTERN.search(str(err))
            if m:
                return str(MissingEvalImage(m["set"], m["path"]))
            err = err.__cause__ or err.__context__
        return None


def read(eval_set: str, path: str) -> bytes:
    try:
        return fsutil.read_bytes(path)
    except FileNotFoundError:
        raise MissingEvalImage(eval_set, path) from None
