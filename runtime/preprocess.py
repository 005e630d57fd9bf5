"""The one pre-processing path: warp an image to the network input, normalise it, and map boxes back.

Upstream NanoDet-Plus validates (and its demos run) with a single 3x3 matrix from original pixels
to network-input pixels, applied by ``cv2.warpPerspective`` (bilinear, constant border 0) to the
uint8 image, then per-channel ``(v - mean) / std`` in float32. Training's validation pipeline, every
backend of the runtime and the exporters' parity checks all call these functions, so what is
evaluated is what is deployed. A plain ``cv2.resize`` is NOT equivalent (it samples at pixel
centres, a half-pixel shift that moves mAP by about 0.01 on small sets).

Resize modes (``ModelMeta.resize_mode``):
- ``stretch`` (upstream's default): M = diag(W/w, H/h, 1), the aspect ratio is not kept.
- ``letterbox``: one scale min(W/w, H/h) for both axes, image at the top-left corner, the rest of
  the input (bottom or right) padded with 0.

The compiled warp is the definition: ``nanoplus.runtime._native`` (runtime/native/warp_normalize.cpp,
built at install where a C++ compiler is found) does the separable warp, the normalisation and the
HWC -> CHW split in one pass, about 3x faster than OpenCV + numpy, and equals the plain numpy
reference ``runtime/preprocess_reference.py`` bit for bit (tests/test_native_preprocess.py). It
serves float and uint8 inputs alike, so every caller of ``preprocess`` gets the same warp. Where it
is not built, or NANOPLUS_NATIVE=0, OpenCV's ``warpPerspective`` + numpy run instead: that fallback
is within 1 grey level of the reference on the warped image, in a small share of values that
depends on the OpenCV version (measured in README.md, checked in tests/test_preprocess.py); it is
never mixed with the compiled path in one comparison. ``implementation()`` says which one runs.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Optional, Sequence

import cv2
import numpy as np

from nanoplus.runtime.metadata import ModelMeta
from nanoplus.runtime.postprocess import scale_boxes_back

try:
    from nanoplus.runtime import _native
except ImportError:  # not built (no compiler at install): OpenCV + numpy
    _native = None


_UINT8 = np.dtype(np.uint8)


def native_enabled() -> bool:
    """Whether ``preprocess`` uses the compiled path: built, and not switched off by NANOPLUS_NATIVE=0."""
    return _native is not None and os.environ.get("NANOPLUS_NATIVE", "1") != "0"


def implementation() -> str:
    """'native (avx512vbmi)', 'native (avx2+fma)', 'native (none)' (portable C++) or 'opencv+numpy':
    what ``preprocess`` runs (avx512vbmi serves downscales up to about 5x; beyond, avx2+fma runs)."""
    return f"native ({_native.simd()})" if native_enabled() else "opencv+numpy"


def get_warp_matrix(src_hw: Sequence[int], dst_hw: Sequence[int], keep_ratio: bool = False) -> np.ndarray:
    """Matrix mapping original pixel coordinates (x, y, 1) to network-input coordinates.

    src_hw, dst_hw: (height, width). Returns (3, 3) float64.
    """
    src_h, src_w = float(src_hw[0]), float(src_hw[1])
    dst_h, dst_w = float(dst_hw[0]), float(dst_hw[1])
    scale_x, scale_y = dst_w / src_w, dst_h / src_h
    if keep_ratio:
        scale_x = scale_y = min(scale_x, scale_y)
    return np.array(((scale_x, 0.0, 0.0), (0.0, scale_y, 0.0), (0.0, 0.0, 1.0)))


def warp_image(img: np.ndarray, matrix: np.ndarray, dst_hw: Sequence[int]) -> np.ndarray:
    """Warp ``img`` (h, w, 3) by any ``matrix`` to (H, W, 3) with OpenCV: bilinear, constant border 0, dtype kept.

    Training's augmentation (general matrices) and the fallback of ``preprocess``; its rounding
    follows the installed OpenCV (within 1 grey level of the compiled warp for diagonal matrices).
    """
    dst_h, dst_w = int(dst_hw[0]), int(dst_hw[1])
    return cv2.warpPerspective(
        img, matrix, (dst_w, dst_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def _scale_shift(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """float32 (1/std, -mean/std), each computed in float64 and rounded once."""
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    return (1.0 / std).astype(np.float32), (-mean / std).astype(np.float32)


@lru_cache(maxsize=16)
def _scale_shift_tuples(mean: tuple, std: tuple) -> tuple[tuple, tuple]:
    scale, shift = _scale_shift(mean, std)
    return tuple(float(v) for v in scale), tuple(float(v) for v in shift)


def warp_normalize_native(img_bgr: np.ndarray, matrix: np.ndarray, dst_hw: Sequence[int], mean: Sequence[float],
                          std: Sequence[float], to_rgb: bool = False) -> np.ndarray:
    """The compiled warp + (RGB swap) + normalisation in one pass (the definition of ``preprocess``).

    img_bgr: (h, w, 3) uint8; matrix: diagonal (3, 3). Returns (1, 3, H, W) float32.
    """
    if _native is None:
        raise RuntimeError("nanoplus.runtime._native is not built (reinstall nanoplus with a C++ compiler)")
    out = np.empty((1, 3, int(dst_hw[0]), int(dst_hw[1])), dtype=np.float32)
    scale, shift = _scale_shift_tuples(tuple(mean), tuple(std))
    _native.warp_normalize(np.ascontiguousarray(img_bgr), float(matrix[0, 0]), float(matrix[1, 1]), out,
                           scale, shift, bool(to_rgb))
    return out


def warp_native_uint8(img_bgr: np.ndarray, matrix: np.ndarray, dst_hw: Sequence[int], to_rgb: bool = False) -> np.ndarray:
    """The compiled warp alone, for uint8-input models: (h, w, 3) uint8 -> (1, 3, H, W) uint8.

    Normalising by 1 and 0 leaves the rounded 0..255 values exact in float32, so this is the same
    warp the float path runs (a uint8 model's parity gate compares it with the float PyTorch input).
    """
    return warp_normalize_native(img_bgr, matrix, dst_hw, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), to_rgb).astype(np.uint8)


def normalize_to_blob(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(H, W, 3) uint8 or float (0..255 scale) -> (1, 3, H, W) float32, ``(v - mean) / std`` per channel.

    Computed as ``v * (1/std) + (-mean/std)`` straight into the NCHW output plane by plane (one pass
    per channel, no HWC float copy); equal to the reference formula within 1e-6.
    """
    scale, shift = _scale_shift(mean, std)
    height, width = img.shape[:2]
    blob = np.empty((1, 3, height, width), dtype=np.float32)
    for c, plane in enumerate(cv2.split(img)):
        out = blob[0, c]
        np.multiply(plane, scale[c], out=out, dtype=np.float32, casting="unsafe")
        out += shift[c]
    return blob


def preprocess(img_bgr: np.ndarray, meta: ModelMeta) -> tuple[np.ndarray, np.ndarray]:
    """Image as OpenCV reads it -> the network input and the warp matrix.

    img_bgr: (h, w, 3) uint8 BGR. Returns (blob (1, 3, H, W) float32 normalised — or uint8, not
    normalised, when ``meta.input_dtype == "uint8"`` (mean/std folded into the graph) — and
    M (3, 3) float64 from original to input pixels).
    """
    if img_bgr.ndim == 2:
        img_bgr = cv2.cvtColor(img_bgr, cv2.COLOR_GRAY2BGR)
    elif img_bgr.shape[2] == 4:
        img_bgr = cv2.cvtColor(img_bgr, cv2.COLOR_BGRA2BGR)
    dst_hw = (int(meta.input_hw[0]), int(meta.input_hw[1]))
    matrix = get_warp_matrix(img_bgr.shape[:2], dst_hw, keep_ratio=meta.resize_mode == "letterbox")
    to_rgb = meta.color_order == "RGB"
    if img_bgr.dtype == np.uint8 and native_enabled():
        if meta.input_dtype == "uint8":
            return warp_native_uint8(img_bgr, matrix, dst_hw, to_rgb), matrix
        return warp_normalize_native(img_bgr, matrix, dst_hw, meta.mean, meta.std, to_rgb), matrix
    warped = warp_image(img_bgr, matrix, dst_hw)
    if to_rgb:
        warped = cv2.cvtColor(warped, cv2.COLOR_BGR2RGB)
    if meta.input_dtype == "uint8":
        return np.ascontiguousarray(warped.transpose(2, 0, 1))[None], matrix
    return normalize_to_blob(warped, meta.mean, meta.std), matrix


class Preprocessor:
    """``preprocess(img, meta)`` for one model, its settings read once: what a ``Detector`` runs per image.

    The same blob and matrix as ``preprocess`` (tests compare them), with less Python around the
    compiled warp: at 416x416 a call costs about 0.1 ms less right after an inference, when the
    interpreter's own code and data are out of the caches. Whether the compiled path runs
    (NANOPLUS_NATIVE) is decided when it is made.
    """

    def __init__(self, meta: ModelMeta):
        self.meta = meta
        self.dst_hw = (int(meta.input_hw[0]), int(meta.input_hw[1]))
        self.out_shape = (1, 3) + self.dst_hw
        self.keep_ratio = meta.resize_mode == "letterbox"
        self.to_rgb = meta.color_order == "RGB"
        self.uint8_input = meta.input_dtype == "uint8"
        self.native = native_enabled()
        if self.uint8_input:
            self.mul_add = ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
        else:
            self.mul_add = _scale_shift_tuples(tuple(meta.mean), tuple(meta.std))
        # the last source size, its warp (scale_x, scale_y), its matrix (read-only, shared by the
        # images of that size) and the way back (diagonal_inverse)
        self.last = (None, None, None, None)

    def warp_for(self, src_hw: tuple) -> tuple:
        """(src_hw, (scale_x, scale_y), M read-only, (1/sx, 1/sy, w, h)) for images of this size."""
        last = self.last
        if last[0] != src_hw:
            matrix = get_warp_matrix(src_hw, self.dst_hw, self.keep_ratio)
            matrix.flags.writeable = False
            last = (src_hw, (float(matrix[0, 0]), float(matrix[1, 1])), matrix, diagonal_inverse(matrix, src_hw))
            self.last = last  # one assignment: a thread reading it sees the old tuple or the new one
        return last

    def __call__(self, img_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(h, w, 3) uint8 BGR -> (blob, M), as ``preprocess``; M is read-only."""
        _, (scale_x, scale_y), matrix, _ = self.warp_for(img_bgr.shape[:2])
        if not (self.native and img_bgr.dtype is _UINT8 and img_bgr.ndim == 3 and img_bgr.shape[2] == 3):
            return preprocess(img_bgr, self.meta)[0], matrix
        out = np.empty(self.out_shape, dtype=np.float32)
        mul, add = self.mul_add
        try:
            _native.warp_normalize(img_bgr, scale_x, scale_y, out, mul, add, self.to_rgb)
        except ValueError:  # a strided view (a crop, a flip): the compiled code reads rows in order
            _native.warp_normalize(np.ascontiguousarray(img_bgr), scale_x, scale_y, out, mul, add, self.to_rgb)
        return (out.astype(np.uint8) if self.uint8_input else out), matrix


def warp_boxes(boxes_xyxy: np.ndarray, matrix: np.ndarray, dst_hw: Sequence[int]) -> np.ndarray:
    """Boxes through a warp: the 4 corners through ``matrix``, their axis-aligned hull, clipped.

    boxes_xyxy: (k, 4); matrix: (3, 3); dst_hw: (height, width) of the destination image.
    Returns (k, 4) float32 clipped to [0, width] x [0, height].
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    if n == 0:
        return np.zeros((0, 4), dtype=np.float32)
    corners = np.ones((n * 4, 3))
    corners[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    corners = corners @ np.asarray(matrix, dtype=np.float64).T
    corners = (corners[:, :2] / corners[:, 2:3]).reshape(n, 8)
    xs, ys = corners[:, 0::2], corners[:, 1::2]
    out = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)
    np.clip(out[:, 0::2], 0, dst_hw[1], out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, dst_hw[0], out=out[:, 1::2])
    return out.astype(np.float32)


def boxes_to_original(boxes_xyxy: np.ndarray, matrix: np.ndarray, src_hw: Sequence[int]) -> np.ndarray:
    """Boxes in network-input pixels -> original pixels: the inverse warp of ``warp_boxes``.

    boxes_xyxy: (k, 4); matrix: the (3, 3) original->input matrix; src_hw: original (height, width).
    Returns (k, 4) float32 clipped to [0, w] x [0, h].
    """
    if len(boxes_xyxy) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    back = diagonal_inverse(matrix, src_hw)
    if back is not None:
        # the matrices preprocess makes: diag(sx, sy, 1). Multiplying by 1/sx is what the general
        # path computes (the inverse LAPACK gives, corners times it, hull unchanged), in 4 steps.
        return scale_boxes_back(boxes_xyxy, *back)
    return warp_boxes(boxes_xyxy, np.linalg.inv(matrix), src_hw)


def diagonal_inverse(matrix: np.ndarray, src_hw: Sequence[int]) -> Optional[tuple[float, float, int, int]]:
    """(1/sx, 1/sy, w, h) when ``matrix`` is diag(sx, sy, 1) with sx, sy > 0 (what ``preprocess``
    makes), for ``scale_boxes_back`` / ``postprocess(to_original=...)``; else None."""
    (a, b, c), (d, e, f), (g, h, i) = np.asarray(matrix, dtype=np.float64).tolist()
    if a > 0 and e > 0 and b == c == d == f == g == h == 0 and i == 1:
        return 1.0 / a, 1.0 / e, int(src_hw[1]), int(src_hw[0])
    return None


if __name__ == "__main__":  # python -m nanoplus.runtime.preprocess: which implementation runs here
    print(implementation())
