"""The one pre-processing path against upstream's fixture, hand-computed values and the project's
reference (runtime/preprocess_reference.py); the OpenCV fallback within its measured tolerance."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from conftest import SHARED, TINY_COCO, UPSTREAM_CASE, require
from nanoplus.runtime import preprocess as preprocess_module
from nanoplus.runtime.metadata import ModelMeta
from nanoplus.runtime.preprocess import (Preprocessor, boxes_to_original, diagonal_inverse, get_warp_matrix, normalize_to_blob, preprocess, warp_boxes,
                                         warp_image)
from nanoplus.runtime.preprocess_reference import (FALLBACK_MAX_GREY_LEVELS, FALLBACK_MAX_SHARE, reference_blob,
                                                   reference_warp)

MEAN = (103.53, 116.28, 123.675)
STD = (57.375, 57.12, 58.395)


@pytest.fixture(scope="module")
def case():
    require(UPSTREAM_CASE / "case.npz")
    return np.load(UPSTREAM_CASE / "case.npz"), json.loads((UPSTREAM_CASE / "meta.json").read_text())


def _fixture_photo(meta, i):
    """meta.json names the photo as 'shared/assets/...'."""
    return require(SHARED / meta["images"][i]["path_in_shared"].split("/", 1)[1])


def test_stretch_matrix_is_upstreams(case):
    arrays, meta = case
    for i in range(len(meta["images"])):
        matrix = get_warp_matrix(arrays["src_hw"][i], meta["input_hw"])
        assert matrix.dtype == np.float64 and matrix.shape == (3, 3)
        np.testing.assert_array_equal(matrix, arrays["warp_matrix"][i])


@pytest.mark.parametrize("implementation", ["native", "reference", "opencv"])
def test_preprocess_reproduces_fixture_input(case, implementation, monkeypatch):
    """Photo -> warp -> normalise gives upstream's network input (fixture `img`) within 1e-5 with the
    compiled pre-processing and with the reference; the OpenCV fallback within its tolerance (a value
    FALLBACK_MAX_GREY_LEVELS grey levels off, in at most FALLBACK_MAX_SHARE of the values)."""
    if implementation == "native" and not preprocess_module.native_enabled():
        pytest.skip("nanoplus.runtime._native is not built (no C++ compiler when nanoplus was installed)")
    monkeypatch.setenv("NANOPLUS_NATIVE", "0" if implementation == "opencv" else "1")
    arrays, meta = case
    model_meta = ModelMeta(class_names=["x"] * meta["num_classes"], input_hw=meta["input_hw"])
    for i in range(len(meta["images"])):
        img = cv2.imread(str(_fixture_photo(meta, i)))
        assert tuple(img.shape[:2]) == tuple(arrays["src_hw"][i])
        if implementation == "reference":
            matrix = get_warp_matrix(img.shape[:2], meta["input_hw"])
            blob = reference_blob(img, matrix, meta["input_hw"], model_meta.mean, model_meta.std)
        else:
            assert preprocess_module.implementation().startswith(implementation)
            blob, matrix = preprocess(img, model_meta)
        assert blob.shape == (1, 3, *meta["input_hw"]) and blob.dtype == np.float32
        np.testing.assert_array_equal(matrix, arrays["warp_matrix"][i])
        diff = np.abs(blob[0] - arrays["img"][i])
        if implementation == "opencv":
            assert diff.max() <= FALLBACK_MAX_GREY_LEVELS / min(STD) + 1e-5
            assert (diff > 1e-5).mean() <= FALLBACK_MAX_SHARE
        else:
            assert diff.max() <= 1e-5


def _fallback_images():
    photos = sorted((SHARED / "assets" / "images").glob("*.jpg")) if SHARED.is_dir() else []
    images = [(p.name, cv2.imread(str(p))) for p in photos]
    rng = np.random.default_rng(11)
    for h, w in [(1, 1), (3, 5), (97, 1001), (480, 640)]:
        images.append((f"random {h}x{w}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return images


def test_opencv_fallback_is_within_tolerance_of_the_reference():
    """The installed OpenCV's warp (the fallback where the compiled module is absent) is at most
    FALLBACK_MAX_GREY_LEVELS off the reference, in at most FALLBACK_MAX_SHARE of the values of any
    image (photos and random images, down- and up-scaling, stretch and letterbox)."""
    worst_level, worst_share, failures = 0, 0.0, []
    for name, img in _fallback_images():
        for dst_hw in [(416, 416), (320, 320), (256, 192)]:
            for keep_ratio in (False, True):
                matrix = get_warp_matrix(img.shape[:2], dst_hw, keep_ratio)
                diff = np.abs(warp_image(img, matrix, dst_hw).astype(np.int16)
                              - reference_warp(img, matrix[0, 0], matrix[1, 1], dst_hw))
                level, share = int(diff.max()), float((diff > 0).mean())
                worst_level, worst_share = max(worst_level, level), max(worst_share, share)
                if level > FALLBACK_MAX_GREY_LEVELS or share > FALLBACK_MAX_SHARE:
                    failures.append(f"{name} -> {dst_hw} letterbox={keep_ratio}: {level} grey levels, {share:.2%}")
    assert not failures, (f"OpenCV {cv2.__version__}'s warp is outside the fallback tolerance "
                          f"({FALLBACK_MAX_GREY_LEVELS} grey level, {FALLBACK_MAX_SHARE:.0%} of values):\n"
                          + "\n".join(failures[:10]))
    print(f"OpenCV {cv2.__version__}: worst {worst_level} grey level(s), {worst_share:.3%} of values")


def test_reference_warp_by_hand():
    """The reference itself against values worked out by hand: identity, 2x up-scaling with the
    zero border, ties rounded to even, letterbox padding."""
    img = np.random.default_rng(2).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(reference_warp(img, 1.0, 1.0, (7, 9)), img)
    row = np.array([[[0], [100]]], np.uint8)  # (1, 2, 1)
    # x' = x / 2: 0, 0.5, 1, 1.5 (between 100 and the zero border), 2 and 2.5 outside
    np.testing.assert_array_equal(reference_warp(row, 2.0, 1.0, (1, 6))[0, :, 0], [0, 50, 100, 50, 0, 0])
    # halfway values: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (ties to even)
    ties = np.array([[[0], [1], [2], [3]]], np.uint8)
    np.testing.assert_array_equal(reference_warp(ties, 2.0, 1.0, (1, 7))[0, :, 0], [0, 0, 1, 2, 2, 2, 3])
    # two rows, vertical blend: 10 and 30 -> 20 halfway, then 15 (30 halfway to the border)
    col = np.array([[[10]], [[30]]], np.uint8)
    np.testing.assert_array_equal(reference_warp(col, 1.0, 2.0, (4, 1))[:, 0, 0], [10, 20, 30, 15])
    # letterbox 0.5: a 4x8 image into 8x8 samples source rows/columns 0, 2, 4, ...: a 2x4 image, zero padding
    flat = np.full((4, 8, 3), 200, np.uint8)
    out = reference_warp(flat, 0.5, 0.5, (8, 8))
    assert (out[:2, :4] == 200).all() and (out[2:] == 0).all() and (out[:, 4:] == 0).all()


def test_normalize_matches_formula_for_uint8_and_float():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    expected = ((img.astype(np.float64) - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)[None]
    blob = normalize_to_blob(img, MEAN, STD)
    assert blob.shape == (1, 3, 37, 53) and blob.dtype == np.float32 and blob.flags.c_contiguous
    np.testing.assert_allclose(blob, expected, rtol=0, atol=1e-5)
    # colour-jittered training images arrive as unclipped float32 on the 0..255 scale
    jittered = img.astype(np.float32) * 1.3 - 20
    expected = ((jittered.astype(np.float64) - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(normalize_to_blob(jittered, MEAN, STD), expected, rtol=0, atol=1e-5)


def test_warp_is_bilinear_with_zero_border():
    img = np.full((10, 20, 3), 200, np.uint8)
    # shift right by 5 px: the first 5 columns come from outside the image -> 0
    matrix = np.array([[1.0, 0, 5], [0, 1, 0], [0, 0, 1]])
    out = warp_image(img, matrix, (10, 20))
    assert out.dtype == np.uint8 and out.shape == (10, 20, 3)
    assert (out[:, :4] == 0).all() and (out[:, 6:] == 200).all()
    # half-pixel shift of a step edge gives the bilinear mean
    step = np.zeros((4, 4, 3), np.uint8)
    step[:, 2:] = 100
    half = warp_image(step, np.array([[1.0, 0, 0.5], [0, 1, 0], [0, 0, 1]]), (4, 4))
    assert half[1, 2, 0] == 50


def test_letterbox_keeps_ratio_pads_bottom_right():
    src_hw, dst_hw = (100, 200), (160, 160)
    matrix = get_warp_matrix(src_hw, dst_hw, keep_ratio=True)
    np.testing.assert_allclose(matrix, np.diag([0.8, 0.8, 1.0]))
    img = np.full((*src_hw, 3), 255, np.uint8)
    meta = ModelMeta(class_names=["a"], input_hw=list(dst_hw), resize_mode="letterbox", input_dtype="uint8")
    blob, m = preprocess(img, meta)
    np.testing.assert_array_equal(m, matrix)
    assert blob.dtype == np.uint8 and blob.shape == (1, 3, 160, 160)
    assert (blob[0, :, :79] == 255).all() and (blob[0, :, 81:] == 0).all()  # image 80 rows, then padding
    # tall image: padding on the right
    tall = get_warp_matrix((200, 100), (160, 160), keep_ratio=True)
    np.testing.assert_allclose(tall, np.diag([0.8, 0.8, 1.0]))


def test_uint8_and_rgb_inputs():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    meta = ModelMeta(class_names=["a"], input_hw=[32, 32], input_dtype="uint8")
    blob, _ = preprocess(img, meta)
    np.testing.assert_array_equal(blob[0], img.transpose(2, 0, 1))  # identity warp, no normalising
    meta_rgb = ModelMeta(class_names=["a"], input_hw=[32, 32], color_order="RGB", mean=[1.0, 2.0, 3.0], std=[1.0, 1.0, 1.0])
    blob, _ = preprocess(img, meta_rgb)
    np.testing.assert_allclose(blob[0, 0], img[:, :, 2] - 1.0)  # R first, with the first mean
    np.testing.assert_allclose(blob[0, 2], img[:, :, 0] - 3.0)


def test_warp_boxes_reproduces_fixture_gt(case):
    """COCO boxes of the fixture photos -> network-input boxes (fixture `gt_bboxes_i`, 1e-4 px)."""
    arrays, meta = case
    coco = json.loads(require(TINY_COCO / "annotations" / "instances_train2017.json").read_text())
    for i, image in enumerate(meta["images"]):
        anns = [a for a in coco["annotations"] if a["image_id"] == image["coco_image_id"] and not a.get("iscrowd")
                and a["area"] > 0 and a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        warped = warp_boxes(boxes, arrays["warp_matrix"][i], meta["input_hw"])
        np.testing.assert_allclose(warped, arrays[f"gt_bboxes_{i}"], rtol=0, atol=1e-4)


def test_boxes_to_original_reproduces_fixture(case):
    arrays, meta = case
    for i in range(len(meta["images"])):
        dets = arrays[f"pp_dets_{i}"]
        orig = boxes_to_original(dets[:, :4], arrays["warp_matrix"][i], arrays["src_hw"][i])
        assert orig.dtype == np.float32
        np.testing.assert_allclose(orig, arrays[f"pp_dets_orig_{i}"][:, :4], rtol=0, atol=1e-3)


def test_boxes_to_original_diagonal_shortcut_equals_the_general_inverse():
    """preprocess's matrices are diagonal, and boxes_to_original divides instead of inverting: the
    same float32 boxes as the 3x3 inverse through the corners, for any scales; other matrices
    still take the general path."""
    rng = np.random.default_rng(0)
    for i in range(300):
        src_hw = tuple(int(v) for v in rng.integers(1, 4000, 2))
        matrix = get_warp_matrix(src_hw, tuple(int(v) for v in rng.integers(32, 1300, 2)), keep_ratio=bool(i % 2))
        boxes = rng.uniform(-50, 1400, (7, 4)).astype(np.float32)
        boxes[:, 2:] = boxes[:, :2] + rng.uniform(0, 400, (7, 2)).astype(np.float32)
        np.testing.assert_array_equal(boxes_to_original(boxes, matrix, src_hw),
                                      warp_boxes(boxes, np.linalg.inv(matrix), src_hw))
    shifted = np.array([[0.5, 0, 10], [0, 0.5, 20], [0, 0, 1]])  # a translation: not the shortcut
    np.testing.assert_allclose(boxes_to_original(np.array([[10, 30, 50, 70]], np.float32), shifted, (500, 500)),
                               [[0, 20, 80, 100]])


def test_boxes_to_original_inverts_letterbox_and_clips():
    matrix = get_warp_matrix((100, 200), (160, 160), keep_ratio=True)  # scale 0.8
    boxes = np.array([[8, 16, 80, 40], [150, 70, 170, 90]], np.float32)
    out = boxes_to_original(boxes, matrix, (100, 200))
    np.testing.assert_allclose(out[0], [10, 20, 100, 50], atol=1e-4)
    np.testing.assert_allclose(out[1], [187.5, 87.5, 200, 100], atol=1e-4)  # clipped to w=200, h=100
    assert boxes_to_original(np.zeros((0, 4)), matrix, (100, 200)).shape == (0, 4)


@pytest.mark.parametrize("input_dtype", ["float32", "uint8"])
@pytest.mark.parametrize("resize_mode", ["stretch", "letterbox"])
@pytest.mark.parametrize("native", ["1", "0"])
def test_preprocessor_equals_preprocess(input_dtype, resize_mode, native, monkeypatch):
    """Preprocessor(meta)(img) is preprocess(img, meta): the same blob (dtype, bits) and matrix for
    contiguous images, strided views and a second size (its matrix made anew), compiled or not;
    the matrix it returns is read-only and ``diagonal_inverse`` of it is what it keeps."""
    monkeypatch.setenv("NANOPLUS_NATIVE", native)
    meta = ModelMeta(class_names=["a"], input_hw=[96, 128], color_order="RGB", resize_mode=resize_mode,
                     input_dtype=input_dtype)
    pre = Preprocessor(meta)
    rng = np.random.default_rng(2)
    big = rng.integers(0, 256, (301, 419, 3), dtype=np.uint8)
    for img in (big, big[:, ::-1], rng.integers(0, 256, (77, 123, 3), dtype=np.uint8), big):
        blob, matrix = pre(img)
        expected_blob, expected_matrix = preprocess(img, meta)
        assert blob.dtype == expected_blob.dtype and blob.shape == expected_blob.shape
        np.testing.assert_array_equal(blob, expected_blob)
        np.testing.assert_array_equal(matrix, expected_matrix)
        assert not matrix.flags.writeable
        assert pre.last[3] == diagonal_inverse(expected_matrix, img.shape[:2])
