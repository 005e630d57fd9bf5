"""The compiled pre-processing (nanoplus.runtime._native) is the definition: it equals the project's
plain numpy reference (runtime/preprocess_reference.py) bit for bit.

Real photos and generated images of every shape class (tiny, odd sizes, down- and up-scaling,
letterbox padding, one pixel wide, RGB models, strided views), through the vector path and the
portable path. Nothing here compares with the installed OpenCV (tests/test_preprocess.py checks the
OpenCV fallback against the reference with a measured tolerance).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import SHARED
from nanoplus.runtime import preprocess as pre
from nanoplus.runtime.metadata import ModelMeta
from nanoplus.runtime.preprocess_reference import reference_blob, reference_normalize, reference_warp

MEAN = (103.53, 116.28, 123.675)
STD = (57.375, 57.12, 58.395)

native = pytest.importorskip(
    "nanoplus.runtime._native",
    reason="nanoplus.runtime._native is not built (no C++ compiler when nanoplus was installed)",
)

# every vector path this CPU has (each by its cap), and the portable path always
PATHS = {name: cap for name, cap in (("avx512vbmi", "avx512vbmi"), ("avx2", "avx2")) if native.simd(cap).startswith(name)}
PATHS["portable"] = "none"


def _native(img, matrix, dst_hw, to_rgb, simd, mean=MEAN, std=STD):
    out = np.full((1, 3, *dst_hw), np.nan, np.float32)
    scale, shift = pre._scale_shift(mean, std)
    native.warp_normalize(img, matrix[0, 0], matrix[1, 1], out, tuple(map(float, scale)), tuple(map(float, shift)),
                          to_rgb, simd)
    return out


def _images(many: bool):
    """The shared photos and random images of every shape class; ``many`` adds 8 random sizes and Full HD."""
    photos = sorted((SHARED / "assets" / "images").glob("*.jpg")) if SHARED.is_dir() else []
    images = [(p.name, cv2.imread(str(p))) for p in photos]
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (1, 700), (700, 1), (2, 2), (3, 5), (97, 1001), (480, 640)] + ([(1080, 1920)] if many else [])
    for h, w in shapes:
        images.append((f"random {h}x{w}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    for _ in range(8 if many else 0):
        h, w = rng.integers(2, 1300, size=2)
        images.append((f"random {h}x{w}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return images


# square down, square up from small images, non-square, and an extreme aspect ratio
SIZES = [(416, 416), (320, 320), (256, 192), (33, 1000)]


@pytest.mark.parametrize("many", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["photos+shapes", "many"])
def test_native_equals_reference_bit_for_bit(many):
    """Every image, size, resize mode and channel order, both code paths: identical float32 blobs."""
    mismatches, compared = [], 0
    images = _images(many)
    for name, img in images:
        for dst_hw in SIZES:
            for keep_ratio in (False, True):
                matrix = pre.get_warp_matrix(img.shape[:2], dst_hw, keep_ratio)
                warped = reference_warp(img, matrix[0, 0], matrix[1, 1], dst_hw)
                for to_rgb in (False, True):
                    expected = reference_normalize(warped[:, :, ::-1] if to_rgb else warped, MEAN, STD)
                    for path, simd in PATHS.items():
                        got = _native(img, matrix, dst_hw, to_rgb, simd)
                        compared += 1
                        if not np.array_equal(got, expected):
                            diff = np.abs(got - expected)
                            mismatches.append(f"{name} -> {dst_hw} letterbox={keep_ratio} rgb={to_rgb} {path}: "
                                              f"{int((diff > 0).sum())} values differ, max {np.nanmax(diff):.3g}")
    assert not mismatches, "\n".join(mismatches[:10])
    assert compared == len(images) * len(SIZES) * 4 * len(PATHS)


def test_native_warp_alone_equals_reference_warp():
    """mul 1, add 0 gives the rounded warp itself: the uint8-input path (``warp_native_uint8``)."""
    rng = np.random.default_rng(5)
    for h, w, dst_hw in [(123, 77, (64, 96)), (480, 640, (416, 416)), (5, 3, (160, 128))]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        matrix = pre.get_warp_matrix(img.shape[:2], dst_hw)
        expected = reference_warp(img, matrix[0, 0], matrix[1, 1], dst_hw)
        for simd in PATHS.values():
            raw = _native(img, matrix, dst_hw, False, simd, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
            assert np.array_equal(raw[0], expected.transpose(2, 0, 1).astype(np.float32))
        got = pre.warp_native_uint8(img, matrix, dst_hw, to_rgb=True)
        assert got.dtype == np.uint8 and got.shape == (1, 3, *dst_hw)
        np.testing.assert_array_equal(got[0], expected[:, :, ::-1].transpose(2, 0, 1))


def test_preprocess_of_strided_views_equals_reference(monkeypatch):
    """Crops, every-other-pixel views and a channel-reversed view go through ``preprocess`` (which
    makes them contiguous for the compiled code) and give the reference's blob of the same pixels."""
    monkeypatch.setenv("NANOPLUS_NATIVE", "1")
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (301, 419, 3), dtype=np.uint8)
    views = {"crop": base[10:200, 33:380], "every other pixel": base[::2, ::3], "channels reversed": base[:, :, ::-1]}
    meta = ModelMeta(class_names=["a"], input_hw=[96, 128], color_order="RGB", resize_mode="letterbox")
    for name, view in views.items():
        assert not view.flags.c_contiguous, name
        blob, matrix = pre.preprocess(view, meta)
        expected = reference_blob(np.ascontiguousarray(view), matrix, (96, 128), meta.mean, meta.std, to_rgb=True)
        assert np.array_equal(blob, expected), name


def test_preprocess_uses_native_unless_switched_off(monkeypatch):
    """NANOPLUS_NATIVE=0 switches to OpenCV + numpy: same matrix, shape and dtype, float and uint8
    inputs; the compiled result is the reference's, the fallback within a grey level of it."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (123, 77, 3), dtype=np.uint8)
    for input_dtype in ("float32", "uint8"):
        meta = ModelMeta(class_names=["a"], input_hw=[64, 96], color_order="RGB", input_dtype=input_dtype)
        monkeypatch.setenv("NANOPLUS_NATIVE", "1")
        assert pre.implementation().startswith("native")
        fast, m1 = pre.preprocess(img, meta)
        monkeypatch.setenv("NANOPLUS_NATIVE", "0")
        assert pre.implementation() == "opencv+numpy"
        slow, m2 = pre.preprocess(img, meta)
        np.testing.assert_array_equal(m1, m2)
        assert fast.shape == slow.shape == (1, 3, 64, 96) and fast.dtype == slow.dtype == np.dtype(input_dtype)
        warped = reference_warp(img, m1[0, 0], m1[1, 1], (64, 96))[:, :, ::-1]
        if input_dtype == "uint8":
            expected = warped.transpose(2, 0, 1)[None]
            grey_step = 1.0
        else:
            expected = reference_normalize(warped, meta.mean, meta.std)
            grey_step = 1.0 / min(meta.std)
        assert np.array_equal(fast, expected)
        assert np.abs(slow.astype(np.float64) - expected).max() <= grey_step * (1 + 1e-6)


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


@pytest.mark.parametrize("src_hw, dst_hw, windows", [
    ((576, 768), (416, 416), "one window per 16 columns"),
    ((720, 1280), (416, 416), "two windows per 16 columns"),
    ((1080, 1920), (416, 416), "two windows per 16 columns"),
    ((1080, 1920), (320, 320), "a 6x downscale, too strong: the AVX2 path"),
])
def test_vbmi_path_covers_camera_frames_and_falls_back_beyond(src_hw, dst_hw, windows):
    """The AVX-512 VBMI path takes the taps of 16 columns from one or two 128-byte windows of a
    source row: it serves photos and camera frames up to a 5x downscale (the path is what the call
    returns), falls back to AVX2 beyond, and every case equals the reference bit for bit."""
    if "avx512vbmi" not in PATHS:
        pytest.skip(f"this CPU has no AVX-512 VBMI (vector paths here: {sorted(PATHS)})")
    img = np.random.default_rng(11).integers(0, 256, (*src_hw, 3), dtype=np.uint8)
    for keep_ratio in (False, True):
        matrix = pre.get_warp_matrix(src_hw, dst_hw, keep_ratio)
        out = np.full((1, 3, *dst_hw), np.nan, np.float32)
        scale, shift = pre._scale_shift(MEAN, STD)
        ran = native.warp_normalize(img, matrix[0, 0], matrix[1, 1], out, tuple(map(float, scale)),
                                    tuple(map(float, shift)), True)
        assert ran == ("avx2+fma" if "AVX2" in windows else "avx512vbmi"), (keep_ratio, ran)
        expected = reference_normalize(reference_warp(img, matrix[0, 0], matrix[1, 1], dst_hw)[:, :, ::-1], MEAN, STD)
        assert np.array_equal(out, expected), (src_hw, dst_hw, keep_ratio)
