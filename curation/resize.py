"""img2dataset's resize, made cheaper: JPEGs are decoded at reduced scale when the target allows it.

`Resizer` gives the same output geometry as img2dataset's `Resizer` for every ``resize_mode`` (same target
sizes, same crop and padding, same interpolation: area to shrink, Lanczos to enlarge; alpha composited on
white; encoded by OpenCV at the same quality), so shards made either way have the same shapes and the
same bytes budget. Two things differ, both for speed:

- **Reduced decoding.** libjpeg can decode a JPEG straight at 1/2, 1/4 or 1/8 scale by dropping DCT
  coefficients, several times faster than a full decode. When the picture is at least 2x (4x, 8x) the size
  the resize would shrink it to, it is decoded at that scale and then area-resized to the exact target
  size; the result differs from a full decode + area resize by about the rounding of 8-bit levels (the
  test checks PSNR against img2dataset's output). Other formats, CMYK JPEGs and pictures that are not
  shrunk take img2dataset's path: full decode (``IMREAD_UNCHANGED``).
- **No per-image global state.** img2dataset wraps every call in a redirection of the process's stdout and
  stderr file descriptors and builds albumentations transforms per image; here nothing process-wide is
  touched per image, so several threads can resize at once (OpenCV releases the GIL while it decodes,
  resizes and encodes), and albumentations is not imported at all.

EXIF orientation is ignored, as img2dataset ignores it (``IMREAD_UNCHANGED`` does not rotate).
"""

from __future__ import annotations

import cv2
import numpy as np

# cv2 flags: decode as 3-channel BGR / grey at 1/2, 1/4, 1/8 of the size, without applying EXIF rotation.
_REDUCED = {"colour": {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                       8: cv2.IMREAD_REDUCED_COLOR_8},
            "grey": {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
                     4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}}
MODES = ("no", "keep_ratio", "center_crop", "border", "keep_ratio_largest")
_EXT = {"jpg": ".jpg", "png": ".png", "webp": ".webp"}
_QUALITY = {"jpg": cv2.IMWRITE_JPEG_QUALITY, "png": cv2.IMWRITE_PNG_COMPRESSION, "webp": cv2.IMWRITE_WEBP_QUALITY}

cv2.setNumThreads(1)     # one image per thread; OpenCV's own pool would oversubscribe the cores


class Resizer:
    """``Resizer(...)(data, header) -> (encoded, width, height, original_width, original_height, error)``,
    img2dataset's contract; ``header`` = (format, mode) from PIL's header-only open, or None."""

    def __init__(self, *, image_size: int, resize_mode: str, resize_only_if_bigger: bool,
                 encode_format: str = "jpg", encode_quality: int = 95, reduced_decode: bool = True):
        if resize_mode not in MODES:
            raise ValueError(f"resize_mode must be one of {MODES}, got {resize_mode!r}")
        if encode_format not in _EXT:
            raise ValueError(f"encode_format must be one of {sorted(_EXT)}, got {encode_format!r}")
        self.size, self.mode, self.only_if_bigger = image_size, resize_mode, resize_only_if_bigger
        self.ext, self.params = _EXT[encode_format], [int(_QUALITY[encode_format]), int(encode_quality)]
        self.reduced_decode = reduced_decode

    def target(self, w: int, h: int) -> tuple[int, int, bool] | None:
        """(new width, new height, shrinking) of the resize step, or None when the picture is kept as is."""
        if self.mode == "no":
            return None
        ref = min(w, h) if self.mode in ("keep_ratio", "center_crop") else max(w, h)
        shrink = ref > self.size
        if self.only_if_bigger and not shrink:
            return None
        s = self.size / ref
        # albumentations' SmallestMaxSize / LongestMaxSize (img2dataset's resize): Python's round, at least 1
        return max(1, round(w * s)), max(1, round(h * s)), shrink

    def __call__(self, data: bytes, header: tuple[str, str] | None = None):
        try:
            return self._resize(data, header)
        except Exception as err:  # noqa: BLE001 - img2dataset's contract: any failure is an error string
            return None, None, None, None, None, f"{type(err).__name__}: {err}"

    def _decode(self, buf: np.ndarray, header, w: int | None, h: int | None):
        """-> (pixels, scale factor used). Reduced only for plain JPEGs that will be shrunk enough."""
        fmt, mode = (header or (None, None))[:2]
        if self.reduced_decode and fmt == "JPEG" and mode in ("RGB", "L", "YCbCr") and w and h:
            t = self.target(w, h)
            if t is not None and t[2]:
                factor = 1
                while factor < 8 and min(w / (factor * 2), h / (factor * 2)) >= min(t[0], t[1]) \
                        and max(w, h) / (factor * 2) >= max(t[0], t[1]):
                    factor *= 2
                if factor > 1:
                    flag = _REDUCED["grey" if mode == "L" else "colour"][factor] | cv2.IMREAD_IGNORE_ORIENTATION
                    img = cv2.imdecode(buf, flag)
                    if img is not None:
                        return img, factor
        return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED), 1

    def _resize(self, data: bytes, header):
        buf = np.frombuffer(data, np.uint8)
        hw = _header_size(header)
        img, factor = self._decode(buf, header, *hw)
        if img is None:
            raise ValueError("Image decoding error")
        if img.ndim == 3 and img.shape[-1] == 4:
            alpha = img[:, :, 3, np.newaxis]
            img = np.rint((alpha / 255 * img[..., :3] + 255 - alpha).clip(0, 255)).astype(np.uint8)
        oh, ow = img.shape[:2]
        if factor > 1:
            ow, oh = hw    # the decode was reduced: report the picture's own size
        t = self.target(ow, oh)
        if t is not None:
            nw, nh, shrink = t
            if (img.shape[1], img.shape[0]) != (nw, nh):
                img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)
            if self.mode == "center_crop":
                y0, x0 = (nh - self.size) // 2, (nw - self.size) // 2
                img = img[max(0, y0):max(0, y0) + self.size, max(0, x0):max(0, x0) + self.size]
            elif self.mode == "border":
                top, left = int((self.size - nh) / 2.0), int((self.size - nw) / 2.0)
                if top > 0 or left > 0:
                    top, left = max(0, top), max(0, left)
                    img = cv2.copyMakeBorder(img, top, max(0, self.size - nh - top), left,
                                             max(0, self.size - nw - left), cv2.BORDER_CONSTANT,
                                             value=[255, 255, 255])
        height, width = img.shape[:2]
        ok, enc = cv2.imencode(self.ext, img, params=self.params)
        if not ok:
            raise ValueError("Image encoding error")
        return enc.tobytes(), width, height, ow, oh, None


def _header_size(header) -> tuple[int | None, int | None]:
    if header and len(header) >= 4:
        return header[2], header[3]
    return None, None
