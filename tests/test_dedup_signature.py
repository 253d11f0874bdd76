"""The near-dup signature against its definition, computed here another way (window crops, area resampling
by integrating, scipy's DCT), and what `ImagePreparer.prepare` derives from it."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image
from scipy.fft import dctn

from curation.config import ResizeConfig
from curation.dedup.phash import phash
from curation.dedup.signature import (
    BASE,
    COLOUR_SIDE,
    SIGNATURE_BYTES,
    WINDOWS,
    Thresholds,
    image_hashes,
    image_signature,
    match,
    squash,
    unpack,
)
from curation.fetch import ImagePreparer
from curation.synthetic.images import encode, make_variant, random_scene, random_size, render_scene


def _area(a: np.ndarray, out: int) -> np.ndarray:
    """Area resampling of the first two axes to out x out, as the integral of a piecewise-constant image."""
    for axis in (0, 1):
        n = a.shape[axis]
        a = np.moveaxis(a, axis, 0)
        integral = np.concatenate([np.zeros((1, *a.shape[1:])), np.cumsum(a, axis=0)])
        edges = np.arange(out + 1) * n / out
        lo, frac = np.floor(edges).astype(int), edges - np.floor(edges)
        nxt = np.minimum(lo + 1, n)
        at = integral[lo] + frac.reshape(-1, *[1] * (a.ndim - 1)) * (integral[nxt] - integral[lo])
        a = np.moveaxis((at[1:] - at[:-1]) / (n / out), 0, axis)
    return a


def _bits(c: np.ndarray) -> int:
    flat = c.ravel()
    return int("".join("1" if v > np.median(flat) else "0" for v in flat), 2)


def _reference(base: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """(64-bit hash, 256-bit hash, colour cells) of each window, straight from the module docstring."""
    grey = base @ np.array([0.299, 0.587, 0.114])
    out = []
    for scale, ox, oy in WINDOWS:
        side = round(BASE * scale)
        x0, y0 = round(BASE * (0.5 + ox) - side / 2), round(BASE * (0.5 + oy) - side / 2)
        g = grey[y0:y0 + side, x0:x0 + side]
        h64 = _bits(dctn(_area(g, 32), norm="ortho")[:8, :8])
        h256 = _bits(dctn(_area(g, 64), norm="ortho")[:16, :16])
        lg = np.log(_area(base[y0:y0 + side, x0:x0 + side], COLOUR_SIDE) + 16.0)
        z = (lg - lg.mean()) / max(lg.std(), 0.05)
        out.append((h64, h256, np.clip(np.round(128 + 32 * z), 0, 255).ravel()))
    return out


def _pictures(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w, h = random_size(rng, min_side=40, max_side=900)
        img = render_scene(random_scene(rng, width=w, height=h))
        out.append(encode(img, quality=rng.randint(40, 95)) if i % 3 else encode(img.convert("L"), "png"))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_every_window_is_its_definition(seed):
    for data in _pictures(6, seed):
        sig = image_signature(data)
        assert len(sig) == SIGNATURE_BYTES
        h64, h256, colour = unpack(sig)
        for k, (r64, r256, rcol) in enumerate(_reference(squash(data))):
            assert int(h64[k]) == r64, k
            assert int.from_bytes(h256[k].astype(">u8").tobytes(), "big") == r256, k
            # colour: rounding at exactly .5 may go either way between two float orders, nothing more
            assert np.abs(colour[k] - rcol).max() <= 1 and np.mean(colour[k] == rcol) > 0.98, k


def test_windows_differ_and_flat_pictures_have_flat_colour():
    data = _pictures(1, 3)[0]
    h64, _h256, colour = unpack(image_signature(data))
    assert len(set(h64.tolist())) > len(WINDOWS) // 2        # the windows are different views
    _h, _H, c = unpack(image_signature(encode(Image.new("RGB", (300, 200), (128, 128, 128)))))
    assert (c == 128).all()                                   # no spread: the floor keeps noise from colouring it
    _h, _H, c = unpack(image_signature(encode(Image.new("RGB", (300, 200), (90, 140, 200)))))
    cells = c.reshape(len(WINDOWS), -1, 3)
    assert (cells == cells[:1, :1]).all()                     # one colour in every cell of every window ...
    assert cells[0, 0, 0] < cells[0, 0, 1] < cells[0, 0, 2]   # ... blue above green above red


def test_image_hashes_are_the_signature_phash_and_grey_spread():
    for data in _pictures(4, 4):
        got = image_hashes(data)
        assert got.signature == image_signature(data) == image_signature(Image.open(io.BytesIO(data)))
        assert got.phash == f"{int(unpack(got.signature)[0][0]):016x}" == phash(data)
        grey = squash(data) @ np.array([0.299, 0.587, 0.114])
        assert got.pixel_std == pytest.approx(_area(grey, 32).std(), abs=1e-3)


def test_prepare_carries_the_stored_images_signature():
    prep = ImagePreparer(ResizeConfig(image_size=128), max_pixels=10_000_000)
    t = Thresholds()
    base = render_scene(random_scene(random.Random(7), width=640, height=480))
    a = prep.prepare(encode(base))
    copy = prep.prepare(make_variant(base, "bright")[0])
    other = prep.prepare(encode(render_scene(random_scene(random.Random(8), width=640, height=480))))
    for p in (a, copy, other):
        assert p.dedup_signature == image_signature(p.image) and p.phash == p.dedup_signature[:8].hex()
    assert match(a.dedup_signature, copy.dedup_signature, t) is not None
    assert match(a.dedup_signature, other.dedup_signature, t) is None


def test_webp_storage_needs_a_pillow_that_reads_it_back():
    from PIL import features
    if features.check("webp"):
        prep = ImagePreparer(ResizeConfig(encode_format="webp"), max_pixels=10_000_000)
        assert len(prep.prepare(encode(render_scene(random_scene(random.Random(9), width=300, height=200))))
                   .dedup_signature) == SIGNATURE_BYTES
    else:
        with pytest.raises(ValueError, match=r"resize\.encode_format"):
            ImagePreparer(ResizeConfig(encode_format="webp"), max_pixels=10_000_000)
