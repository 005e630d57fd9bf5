"""The definition of the pre-processing, in plain numpy: what the compiled warp must give, bit for bit.

The compiled warp (runtime/native/warp_normalize.cpp) is what the runtime runs; this module writes
the same arithmetic out step by step, slowly and without vector tricks, so that tests and
``bench/preprocess_diff.py`` can check the compiled code against something the project owns
instead of against whatever OpenCV happens to be installed (OpenCV 5.1 rounds its
``warpPerspective`` differently from 5.0 in a few values in ten thousand).

The warp by ``diag(sx, sy, 1)`` (original pixels -> network pixels), bilinear, border 0:

1. source coordinate of output column x: ``float32(1 / sx) * x`` in float32; its floor is the first
   tap, the fraction ``alpha`` the weight of the second (the same for rows);
2. a tap outside the image reads 0;
3. each needed source row is blended horizontally, ``alpha * (v1 - v0) + v0`` rounded once to
   float32 (a fused multiply-add: formed exactly in float64 and rounded once, as the .cpp does);
4. the two blended rows are blended vertically the same way (their difference rounded to float32
   first), rounded to the nearest integer, ties to even;
5. normalisation ``u * float32(1/std) + float32(-mean/std)``, each operation rounded to float32
   (numpy's two roundings; the .cpp is compiled with -ffp-contract=off for this).

Torch-free and not used on the runtime's hot path.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# How far the OpenCV fallback (``preprocess`` without the compiled module, or NANOPLUS_NATIVE=0) may
# be from this reference on the warped uint8 image: at most this many grey levels, in at most this
# share of the values of one image. Measured (bench/preprocess_diff.py and tests/test_preprocess.py's
# images): OpenCV 5.0.0 is identical; 5.1.0 is 1 grey level off in up to 2.6% of the values (the
# Scream photo at 256x192); OpenCV 4.x interpolates in 1/32-pixel fixed point and is up to 8 grey
# levels off when up-scaling, outside this tolerance.
FALLBACK_MAX_GREY_LEVELS = 1
FALLBACK_MAX_SHARE = 0.05


def _taps(scale: float, count: int) -> tuple[np.ndarray, np.ndarray]:
    """First source index (int64) and float32 weight of the second, for ``count`` output indices."""
    inverse = np.float32(1.0 / float(scale))
    coord = inverse * np.arange(count, dtype=np.float32)  # float32 product, rounded once
    base = np.floor(coord)
    return base.astype(np.int64), coord - base  # the fraction of a float32 is exact


def _inside(index: np.ndarray, size: int) -> np.ndarray:
    """Source indices with every one outside [0, size) replaced by ``size``: the zero pad (border 0)."""
    return np.where((index >= 0) & (index < size), index, size)


def _blend(weight: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """float32 ``weight * (second - first) + first`` with one rounding (a fused multiply-add):
    float32 operands multiply exactly in float64, and the sum is rounded once to float32."""
    difference = (second - first).astype(np.float64)  # float32 subtraction, then widened exactly
    return (weight.astype(np.float64) * difference + first.astype(np.float64)).astype(np.float32)


def reference_warp(img: np.ndarray, scale_x: float, scale_y: float, dst_hw: Sequence[int]) -> np.ndarray:
    """(h, w, c) uint8 -> (H, W, c) uint8 warped by diag(scale_x, scale_y, 1); channels kept in order."""
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"reference_warp takes an (h, w, c) uint8 image, got {img.dtype} {img.shape}")
    src_h, src_w, channels = img.shape
    dst_h, dst_w = int(dst_hw[0]), int(dst_hw[1])
    padded = np.zeros((src_h + 1, src_w + 1, channels), np.uint8)  # one zero row and column at the end
    padded[:src_h, :src_w] = img
    first_x, alpha_x = _taps(scale_x, dst_w)
    first_y, alpha_y = _taps(scale_y, dst_h)
    col0, col1 = _inside(first_x, src_w), _inside(first_x + 1, src_w)
    row0, row1 = _inside(first_y, src_h), _inside(first_y + 1, src_h)

    def tap(rows, cols):  # (H, W, c) float32 source values
        return padded[np.ix_(rows, cols)].astype(np.float32)

    weight_x = alpha_x[None, :, None]
    # each of the two source rows of an output row blended horizontally, then the two vertically
    top = _blend(weight_x, tap(row0, col0), tap(row0, col1))
    bottom = _blend(weight_x, tap(row1, col0), tap(row1, col1))
    blended = _blend(alpha_y[:, None, None], top, bottom)
    return np.rint(blended).astype(np.uint8)  # rint: nearest, ties to even


def reference_normalize(warped: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32: ``v * float32(1/std) + float32(-mean/std)``, two roundings."""
    mean64 = np.asarray(mean, dtype=np.float64)
    std64 = np.asarray(std, dtype=np.float64)
    scale = (1.0 / std64).astype(np.float32)
    shift = (-mean64 / std64).astype(np.float32)
    values = warped.astype(np.float32).transpose(2, 0, 1)
    blob = values * scale[:, None, None]  # float32 product
    blob = blob + shift[:, None, None]  # float32 sum
    return np.ascontiguousarray(blob[None], dtype=np.float32)


def reference_blob(img_bgr: np.ndarray, matrix: np.ndarray, dst_hw: Sequence[int], mean: Sequence[float],
                   std: Sequence[float], to_rgb: bool = False) -> np.ndarray:
    """What ``preprocess`` must give for a float-input model: (h, w, 3) uint8 BGR -> (1, 3, H, W) float32.

    matrix: the diagonal (3, 3) from ``get_warp_matrix``.
    """
    warped = reference_warp(img_bgr, matrix[0, 0], matrix[1, 1], dst_hw)
    if to_rgb:
        warped = warped[:, :, ::-1]
    return reference_normalize(warped, mean, std)
