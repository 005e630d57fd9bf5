"""The compiled pre-processing (nanoplus.runtime._native) gives the same bits as OpenCV + numpy.

Real photos and random images of every shape class (down- and up-scaling, letterbox padding, one
pixel wide, RGB models), through the vector path and the portable path.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import SHARED
from nanoplus.runtime import preprocess as pre
from nanoplus.runtime.metadata import ModelMeta

MEAN = (103.53, 116.28, 123.675)
STD = (57.375, 57.12, 58.395)

native = pytest.importorskip(
    "nanoplus.runtime._native",
    reason="nanoplus.runtime._native is not built (no C++ compiler when nanoplus was installed)",
)


def _reference(img, dst_hw, keep_ratio, to_rgb):
    matrix = pre.get_warp_matrix(img.shape[:2], dst_hw, keep_ratio)
    warped = pre.warp_image(img, matrix, dst_hw)
    if to_rgb:
        warped = cv2.cvtColor(warped, cv2.COLOR_BGR2RGB)
    return pre.normalize_to_blob(warped, MEAN, STD), matrix


def _native(img, matrix, dst_hw, to_rgb, simd):
    out = np.full((1, 3, *dst_hw), np.nan, np.float32)
    scale, shift = pre._scale_shift(MEAN, STD)
    native.warp_normalize(img, matrix[0, 0], matrix[1, 1], out, tuple(map(float, scale)), tuple(map(float, shift)),
                          to_rgb, simd)
    return out


def _images():
    photos = sorted((SHARED / "assets" / "images").glob("*.jpg")) if SHARED.is_dir() else []
    images = [(p.name, cv2.imread(str(p))) for p in photos]
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (1, 700), (700, 1), (3, 5), (97, 1001), (480, 640), (1080, 1920)]:
        images.append((f"random {h}x{w}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    for _ in range(8):
        h, w = rng.integers(2, 1300, size=2)
        images.append((f"random {h}x{w}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return images


@pytest.mark.parametrize("simd", [True, False], ids=["vector", "portable"])
def test_native_equals_opencv_bit_for_bit(simd):
    mismatches = []
    for name, img in _images():
        for dst_hw in [(416, 416), (320, 320), (256, 192), (33, 1000)]:
            for keep_ratio in (False, True):
                for to_rgb in (False, True):
                    expected, matrix = _reference(img, dst_hw, keep_ratio, to_rgb)
                    got = _native(img, matrix, dst_hw, to_rgb, simd)
                    if not np.array_equal(got, expected):
                        diff = np.abs(got - expected)
                        mismatches.append(f"{name} -> {dst_hw} letterbox={keep_ratio} rgb={to_rgb}: "
                                          f"{int((diff > 0).sum())} values differ, max {np.nanmax(diff):.3g}")
    assert not mismatches, "\n".join(mismatches[:10])


def test_preprocess_uses_native_unless_switched_off(monkeypatch):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (123, 77, 3), dtype=np.uint8)
    meta = ModelMeta(class_names=["a"], input_hw=[64, 96], color_order="RGB")
    monkeypatch.setenv("NANOPLUS_NATIVE", "1")
    assert pre.implementation().startswith("native")
    fast, m1 = pre.preprocess(img, meta)
    monkeypatch.setenv("NANOPLUS_NATIVE", "0")
    assert pre.implementation() == "opencv+numpy"
    slow, m2 = pre.preprocess(img, meta)
    np.testing.assert_array_equal(m1, m2)
    assert fast.shape == slow.shape == (1, 3, 64, 96) and fast.dtype == slow.dtype == np.float32
    np.testing.assert_array_equal(fast, slow)


def test_native_rejects_wrong_arrays_clearly():
    out = np.empty((1, 3, 8, 8), np.float32)
    args = ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="uint8"):
        native.warp_normalize(np.zeros((4, 4, 3), np.float32), 1.0, 1.0, out, *args)
    with pytest.raises(ValueError, match=r"\(h, w, 3\)"):
        native.warp_normalize(np.zeros((4, 4, 4), np.uint8), 1.0, 1.0, out, *args)
    with pytest.raises(ValueError, match="float32|'f'"):
        native.warp_normalize(np.zeros((4, 4, 3), np.uint8), 1.0, 1.0, out.astype(np.float64), *args)
    with pytest.raises(ValueError, match="contiguous"):
        native.warp_normalize(np.zeros((4, 8, 3), np.uint8)[:, ::2], 1.0, 1.0, out, *args)
    with pytest.raises(ValueError, match="positive"):
        native.warp_normalize(np.zeros((4, 4, 3), np.uint8), 0.0, 1.0, out, *args)
