"""`curation.resize.Resizer` against img2dataset's own Resizer: the same output geometry in every mode, pixels
within JPEG noise of it, the same failures, and safe to run from several threads."""

from __future__ import annotations

import concurrent.futures
import io
import random

import numpy as np
import pytest
from PIL import Image

from curation.fetch import img2dataset_module
from curation.resize import MODES, Resizer
from curation.synthetic.images import random_scene, render_scene


def _pictures(n: int, seed: int = 0) -> list[bytes]:
    """JPEGs (colour and grey), PNGs with alpha, a CMYK JPEG: sides from 60 to 1500 px."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w, h = rng.randint(60, 1500), rng.randint(60, 1500)
        img = render_scene(random_scene(rng, width=w, height=h))
        buf = io.BytesIO()
        kind = i % 6
        if kind == 3:
            img.convert("L").save(buf, "JPEG", quality=90)
        elif kind == 4:
            rgba = np.array(img.convert("RGBA"))
            rgba[..., 3] = np.linspace(0, 255, rgba.shape[1], dtype=np.uint8)[None, :]
            Image.fromarray(rgba).save(buf, "PNG")
        elif kind == 5 and i < 12:
            img.convert("CMYK").save(buf, "JPEG", quality=90)
        else:
            img.save(buf, "JPEG", quality=int(rng.choice([70, 90, 95])))
        out.append(buf.getvalue())
    return out


def _header(data: bytes):
    with Image.open(io.BytesIO(data)) as im:
        return im.format, im.mode, *im.size


def _psnr(a: bytes, b: bytes) -> float:
    x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), np.float64)
    y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), np.float64)
    mse = float(((x - y) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


PICTURES = _pictures(48)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("only_if_bigger", [True, False])
def test_same_geometry_and_near_same_pixels_as_img2dataset(mode, only_if_bigger):
    ref = img2dataset_module("resizer").Resizer(image_size=224, resize_mode=mode,
                                                 resize_only_if_bigger=only_if_bigger, encode_quality=90)
    ours = Resizer(image_size=224, resize_mode=mode, resize_only_if_bigger=only_if_bigger, encode_quality=90)
    reduced = 0
    for data in PICTURES:
        header = _header(data)
        want, got = ref(io.BytesIO(data)), ours(data, header)
        assert got[5] is None and want[5] is None, (got[5], want[5])
        assert got[1:5] == want[1:5], (mode, header, got[1:5], want[1:5])
        psnr = _psnr(got[0], want[0])
        reduced += psnr < 99
        assert psnr > 30, (mode, header, psnr)
        with Image.open(io.BytesIO(got[0])) as im:
            assert im.format == "JPEG" and im.size == tuple(got[1:3])
    if mode != "no":
        assert reduced > 0       # some pictures were large enough to be decoded at reduced scale


def test_reduced_decoding_off_gives_img2dataset_bytes():
    """Without the reduced decode the pixels are img2dataset's own: identical files for JPEGs and PNGs."""
    ref = img2dataset_module("resizer").Resizer(image_size=256, resize_mode="keep_ratio",
                                                 resize_only_if_bigger=True, encode_quality=90)
    ours = Resizer(image_size=256, resize_mode="keep_ratio", resize_only_if_bigger=True, encode_quality=90,
                   reduced_decode=False)
    for data in PICTURES[:18]:
        assert ours(data, _header(data))[0] == ref(io.BytesIO(data))[0]


def test_failures_are_error_strings_like_img2dataset():
    ours = Resizer(image_size=64, resize_mode="keep_ratio", resize_only_if_bigger=False)
    for bad in (b"not an image at all", PICTURES[0][: len(PICTURES[0]) // 3][:40]):
        out = ours(bad, None)
        assert out[0] is None and isinstance(out[5], str) and out[5]
    with pytest.raises(ValueError, match="resize_mode"):
        Resizer(image_size=64, resize_mode="stretch", resize_only_if_bigger=True)


def test_threads_give_the_same_bytes_as_one_thread():
    ours = Resizer(image_size=128, resize_mode="center_crop", resize_only_if_bigger=False, encode_quality=85)
    items = [(d, _header(d)) for d in PICTURES]
    serial = [ours(d, h)[0] for d, h in items]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda it: ours(*it)[0], items * 3))
    assert parallel == serial * 3
