"""Training augmentation and dataset: one warp per sample shared by image and boxes, colour jitter,
validation = the runtime's pre-processing, collate padding."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import IMAGES, require

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from nanoplus.runtime.metadata import ModelMeta  # noqa: E402
from nanoplus.runtime.preprocess import preprocess  # noqa: E402
from nanoplus.train.augment import augment, colour_jitter, random_warp_matrix, warp_boxes  # noqa: E402
from nanoplus.train.config import AugmentConfig  # noqa: E402
from nanoplus.train.dataset import DetectionDataset, collate  # noqa: E402

MEAN = [103.53, 116.28, 123.675]
STD = [57.375, 57.12, 58.395]


def identity_aug(**changes) -> AugmentConfig:
    aug = AugmentConfig(perspective=0.0, scale=[1.0, 1.0], stretch=[[1.0, 1.0], [1.0, 1.0]], rotation=0.0,
                        shear=0.0, translate=0.0, flip=0.0, brightness=0.0, contrast=[1.0, 1.0],
                        saturation=[1.0, 1.0], colour_prob=0.0)
    for k, v in changes.items():
        setattr(aug, k, v)
    return aug


def photo(h=120, w=200, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (5, 5), 0)


@pytest.mark.parametrize("letterbox", [False, True])
def test_identity_augmentation_is_the_runtime_preprocessing(letterbox):
    img = photo()
    meta = ModelMeta(class_names=["a"], input_hw=[96, 128], resize_mode="letterbox" if letterbox else "stretch")
    blob_ref, m_ref = preprocess(img, meta)
    blob, boxes, m = augment(img, np.zeros((0, 4)), (96, 128), identity_aug(), letterbox, MEAN, STD,
                             np.random.default_rng(0))
    np.testing.assert_allclose(m, m_ref, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(blob, blob_ref[0])


def test_flip_and_scale_matrix_hand_computed():
    # flip always, scale fixed at 0.5, stretch w x2: x -> (w - x) mirrored about the centre
    h, w = 100, 200
    aug = identity_aug(flip=1.0, scale=[0.5, 0.5], stretch=[[2.0, 2.0], [1.0, 1.0]])
    m = random_warp_matrix((h, w), (100, 200), aug, False, np.random.default_rng(0))
    # centre -> origin, scale 0.5 (x also x2 stretch), flip x, back to centre; resize is identity
    x, y = 30.0, 40.0
    expected_x = -(x - w / 2) * 0.5 * 2.0 + w / 2
    expected_y = (y - h / 2) * 0.5 + h / 2
    p = m @ np.array([x, y, 1.0])
    assert p[0] / p[2] == pytest.approx(expected_x)
    assert p[1] / p[2] == pytest.approx(expected_y)
    boxes = warp_boxes(np.array([[10, 20, 50, 60]], np.float32), m, (100, 200))
    # x: 10 -> 190, 50 -> 150 ; y: 20 -> 35, 60 -> 55
    np.testing.assert_allclose(boxes, [[150, 35, 190, 55]], atol=1e-4)


def test_random_matrix_distribution_follows_the_recipe():
    aug = AugmentConfig()  # upstream m_416 recipe: scale 0.6-1.4, stretch 0.8-1.2, translate 0.2, flip 0.5
    h, w, dst = 300, 400, (416, 416)
    rng = np.random.default_rng(123)
    sx, flips, tx = [], [], []
    for _ in range(2000):
        m = random_warp_matrix((h, w), dst, aug, False, rng)
        assert m[2, 0] == 0 and m[2, 1] == 0 and m[0, 1] == 0 and m[1, 0] == 0  # no perspective/rotation/shear
        scale_x = abs(m[0, 0]) / (dst[1] / w)
        sx.append(scale_x)
        flips.append(m[0, 0] < 0)
        centre = m @ np.array([w / 2, h / 2, 1.0])
        tx.append(centre[0] / (dst[1]))  # the source centre lands at U(0.3, 0.7) of the width
    sx, tx = np.array(sx), np.array(tx)
    assert sx.min() >= 0.6 * 0.8 - 1e-9 and sx.max() <= 1.4 * 1.2 + 1e-9
    assert abs(sx.mean() - 1.0) < 0.03  # E[scale] * E[stretch] = 1
    assert 0.45 < np.mean(flips) < 0.55
    assert tx.min() >= 0.3 - 1e-9 and tx.max() <= 0.7 + 1e-9 and abs(tx.mean() - 0.5) < 0.02


def test_boxes_follow_the_image():
    """A white rectangle on black, warped with rotation and shear: its box encloses the white pixels."""
    h, w = 240, 320
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = 60, 50, 200, 170
    img[y1:y2, x1:x2] = 255
    aug = AugmentConfig(rotation=15.0, shear=5.0, perspective=0.0005)
    aug.colour_prob = 0.0
    rng = np.random.default_rng(7)
    for _ in range(10):
        m = random_warp_matrix((h, w), (160, 160), aug, False, rng)
        warped = cv2.warpPerspective(img, m, (160, 160))
        box = warp_boxes(np.array([[x1, y1, x2, y2]], np.float32), m, (160, 160))[0]
        ys, xs = np.nonzero(warped[..., 0] > 127)
        if len(xs) == 0:
            assert box[2] - box[0] < 2 or box[3] - box[1] < 2
            continue
        # every bright pixel is inside the box (1 px of bilinear blur allowed)
        assert xs.min() >= box[0] - 1.5 and xs.max() + 1 <= box[2] + 1.5
        assert ys.min() >= box[1] - 1.5 and ys.max() + 1 <= box[3] + 1.5


def test_axis_aligned_warp_box_is_tight():
    h, w = 240, 320
    img = np.zeros((h, w, 3), np.uint8)
    img[40:120, 100:260] = 255
    rng = np.random.default_rng(3)
    aug = AugmentConfig(colour_prob=0.0)
    for _ in range(10):
        m = random_warp_matrix((h, w), (128, 128), aug, False, rng)
        warped = cv2.warpPerspective(img, m, (128, 128))
        box = warp_boxes(np.array([[100, 40, 260, 120]], np.float32), m, (128, 128))[0]
        ys, xs = np.nonzero(warped[..., 0] > 127)
        if len(xs) == 0 or box[2] - box[0] < 3 or box[3] - box[1] < 3:
            continue
        # within 1.5 px: bilinear edges, and a flip maps x -> w - x (pixel edges, not centres, mirror)
        assert abs(xs.min() - box[0]) <= 1.5 and abs(xs.max() + 1 - box[2]) <= 1.5
        assert abs(ys.min() - box[1]) <= 1.5 and abs(ys.max() + 1 - box[3]) <= 1.5


def test_colour_jitter_brightness_contrast_saturation():
    img = photo(40, 50).astype(np.uint8)
    rng = np.random.default_rng(0)
    only_brightness = identity_aug(brightness=0.2, colour_prob=1.0)
    out = colour_jitter(img, only_brightness, rng)
    shift = out - img.astype(np.float32)
    assert np.ptp(shift) < 1e-3 and abs(shift.mean()) <= 0.2 * 255 + 1e-3 and abs(shift.mean()) > 0
    only_contrast = identity_aug(contrast=[0.5, 0.5], colour_prob=1.0)
    np.testing.assert_allclose(colour_jitter(img, only_contrast, rng), img * 0.5, atol=1e-4)
    # saturation x0: grey with V = max(B, G, R), OpenCV's HSV
    grey = identity_aug(saturation=[0.0, 0.0], colour_prob=1.0)
    out = colour_jitter(img, grey, rng)
    expected = np.repeat(img.max(axis=2, keepdims=True).astype(np.float32), 3, axis=2)
    np.testing.assert_allclose(out, expected, atol=1e-3)
    # probability 0: untouched
    np.testing.assert_array_equal(colour_jitter(img, AugmentConfig(colour_prob=0.0), rng), img)


def test_colour_jitter_probability():
    img = np.full((4, 4, 3), 100, np.uint8)
    aug = identity_aug(brightness=0.2, colour_prob=0.5)
    rng = np.random.default_rng(1)
    changed = [not np.array_equal(colour_jitter(img, aug, rng), img) for _ in range(400)]
    assert 0.4 < np.mean(changed) < 0.6


# ------------------------------------------------------------------------------------------------
# Dataset


class _Record:
    def __init__(self, path, boxes, labels, h, w):
        self.path, self.image_id, self.height, self.width = str(path), 1, h, w
        self.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(labels, np.int64)


@pytest.fixture()
def records(tmp_path):
    out = []
    for i, (h, w) in enumerate([(120, 200), (200, 120), (90, 90)]):
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), photo(h, w, seed=i))
        # one normal box, one 0.5 px thin box (dropped after the warp)
        out.append(_Record(path, [[10, 10, 60, 50], [20, 20, 20.5, 40]], [0, 1], h, w))
    return out


def test_validation_item_is_runtime_preprocess(records):
    meta = ModelMeta(class_names=["a", "b"], input_hw=[64, 96])
    ds = DetectionDataset(records, meta, augment_cfg=None)
    item = ds[0]
    img = cv2.imread(records[0].path)
    blob, m = preprocess(img, meta)
    np.testing.assert_array_equal(item["image"].numpy(), blob[0])
    np.testing.assert_array_equal(item["warp_matrix"].numpy(), m)
    # box scaled by (96/200, 64/120); the 0.5 px box is dropped
    np.testing.assert_allclose(item["boxes"].numpy(), [[10 * 0.48, 10 * 64 / 120, 60 * 0.48, 50 * 64 / 120]], rtol=1e-5)
    assert item["labels"].tolist() == [0]
    assert item["src_hw"].tolist() == [120, 200]


@pytest.mark.parametrize("min_box_size, kept", [(1.0, [0]), (0.2, [0, 1]), (0.0, [0, 1]), (0.3, [0])])
def test_min_box_size_keeps_or_drops_thin_boxes(records, min_box_size, kept):
    """The 0.5 px wide box is 0.5 * 96/200 = 0.24 input pixels wide: kept at a limit of 0.2 or 0
    (upstream keeps every box), dropped at 0.3 and at the default 1."""
    meta = ModelMeta(class_names=["a", "b"], input_hw=[64, 96])
    item = DetectionDataset(records, meta, augment_cfg=None, min_box_size=min_box_size)[0]
    assert item["labels"].tolist() == kept
    widths = (item["boxes"][:, 2] - item["boxes"][:, 0]).numpy()
    np.testing.assert_allclose(widths, [50 * 0.48, 0.5 * 0.48][:len(kept)], rtol=1e-5)


def test_training_items_are_seeded_by_epoch_and_index(records):
    meta = ModelMeta(class_names=["a", "b"], input_hw=[64, 64])
    ds = DetectionDataset(records, meta, augment_cfg=AugmentConfig(), seed=5)
    a = ds[1]
    b = ds[1]
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    ds.set_epoch(1)
    c = ds[1]
    assert not np.array_equal(a["warp_matrix"].numpy(), c["warp_matrix"].numpy())
    # the image and the boxes went through the same matrix
    m = c["warp_matrix"].numpy()
    expected = warp_boxes(records[1].boxes, m, (64, 64))
    kept = (expected[:, 2] - expected[:, 0] >= 1) & (expected[:, 3] - expected[:, 1] >= 1)
    np.testing.assert_allclose(c["boxes"].numpy(), expected[kept])


def test_collate_pads_bottom_right_to_multiple_of_32():
    items = []
    for i, (h, w) in enumerate([(64, 96), (70, 40)]):
        items.append({"image": torch.full((3, h, w), float(i + 1)), "boxes": torch.zeros((i, 4)),
                      "labels": torch.zeros((i,), dtype=torch.int64), "index": i,
                      "warp_matrix": torch.eye(3, dtype=torch.float64), "src_hw": torch.tensor([h, w])})
    batch = collate(items)
    assert batch["images"].shape == (2, 3, 96, 96)
    assert torch.all(batch["images"][0, :, :64, :96] == 1) and torch.all(batch["images"][0, :, 64:] == 0)
    assert torch.all(batch["images"][1, :, :70, :40] == 2) and torch.all(batch["images"][1, :, :, 40:] == 0)
    assert [b.shape[0] for b in batch["boxes"]] == [0, 1]
    assert batch["index"].tolist() == [0, 1]


def test_real_photo_training_sample_is_finite():
    path = require(IMAGES / "dog.jpg")
    img = cv2.imread(str(path))
    blob, boxes, m = augment(img, np.array([[100, 100, 300, 400]], np.float32), (320, 320), AugmentConfig(),
                             False, MEAN, STD, np.random.default_rng(0))
    assert blob.shape == (3, 320, 320) and blob.dtype == np.float32 and np.isfinite(blob).all()
    assert math.isfinite(float(boxes.sum()))
