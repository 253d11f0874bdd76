"""`curation.sources.textsplits`: a line-oriented file read in byte ranges gives every line exactly once."""

from __future__ import annotations

import gzip
import random

import pytest

from curation.sources.textsplits import plan_splits, read_split


def _lines(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.choice([0, 1, 2, 7, 40, 300])
        out.append(bytes(rng.choice(b"ab\tc d\xc3\xa9") for _ in range(k)))
    return out


@pytest.mark.parametrize("split_bytes", [1, 2, 3, 5, 17, 64, 1000, 1 << 20])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
@pytest.mark.parametrize("final_newline", [True, False])
def test_ranges_cover_every_line_once(tmp_path, split_bytes, ending, final_newline):
    lines = _lines(split_bytes, 200)
    data = ending.join(lines) + (ending if final_newline else b"")
    path = tmp_path / "rows.tsv"
    path.write_bytes(data)
    splits = plan_splits(str(path), split_bytes)
    assert len(splits) == (-(-len(data) // split_bytes) if len(data) > split_bytes else 1)
    got = [line for s in splits for line in read_split(s)]
    want = lines if final_newline or lines[-1] else lines[:-1]   # an empty last line without its newline is no line
    assert got == want


def test_glob_urls_and_gzip(tmp_path):
    a, b = _lines(1, 50), _lines(2, 60)
    (tmp_path / "part-0.tsv").write_bytes(b"\n".join(a) + b"\n")
    with gzip.open(tmp_path / "part-1.tsv.gz", "wb") as f:
        f.write(b"\n".join(b) + b"\n")
    for pattern in (str(tmp_path / "part-*"), f"file://{tmp_path}/part-*"):
        splits = plan_splits(pattern, 64)
        assert all(s[0].startswith("file://") == pattern.startswith("file://") for s in splits)
        assert [s for s in splits if s[0].endswith(".gz")][0][1:] == (0, -1)   # a compressed file is one range
        assert [line for s in splits for line in read_split(s)] == a + b


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        plan_splits(str(tmp_path / "nope.tsv"))
    with pytest.raises(FileNotFoundError):
        plan_splits(str(tmp_path / "nope-*.tsv"))
