"""The generated shapes dataset: deterministic, valid, and readable by the dataset loader."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from nanoplus.errors import NanoplusError
from nanoplus.runtime.datasets import load_dataset
from nanoplus.train.synthetic import CLASS_NAMES, main, make_synthetic_dataset


def files_of(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "shapes", num_train=60, num_val=12,
                                  image_hw=(96, 128), seed=3)


def test_same_seed_same_files_other_seed_other_files(shapes, tmp_path):
    again = make_synthetic_dataset(tmp_path / "again", num_train=60, num_val=12, image_hw=(96, 128), seed=3)
    first, second = files_of(shapes), files_of(again)
    assert len(first) == 60 + 12 + 3 and first == second
    other = files_of(make_synthetic_dataset(tmp_path / "other", num_train=60, num_val=12, image_hw=(96, 128), seed=4))
    assert other.keys() == first.keys() and other["train/000000.jpg"] != first["train/000000.jpg"]
    # an image does not depend on how many were asked for: the first 5 of 60 equal a run of 5
    few = files_of(make_synthetic_dataset(tmp_path / "few", num_train=5, num_val=1, image_hw=(96, 128), seed=3))
    assert few["train/000004.jpg"] == first["train/000004.jpg"]


def test_boxes_inside_images_and_tight_around_saturated_shapes(shapes):
    for split in ("train", "val"):
        coco = json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())
        assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES)
        sizes = {i["id"]: (i["height"], i["width"]) for i in coco["images"]}
        assert set(sizes.values()) == {(96, 128)}
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            assert w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 96
            assert a["category_id"] in (1, 2, 3) and a["area"] == w * h
    # objects are saturated, the background is not: every box holds strongly coloured pixels, and
    # the box is tight: the shape reaches each of its four sides (coloured pixels in the 2-px strip
    # inside every edge)
    coco = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    for a in coco["annotations"]:
        img = cv2.imread(str(shapes / "val" / f"{a['image_id'] - 1:06d}.jpg"))
        sat = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[..., 1].astype(int)
        x, y, w, h = (int(v) for v in a["bbox"])
        inside = sat[y:y + h, x:x + w]
        assert inside.max() > 120
        for strip in (inside[:2], inside[-2:], inside[:, :2], inside[:, -2:]):
            assert strip.max() > 60


def test_variety_empty_images_overlaps_and_sizes(shapes):
    ds = load_dataset(shapes, "train", log=False)
    counts = [len(r.labels) for r in ds.records]
    assert 0 in counts and max(counts) >= 4
    assert set(np.concatenate([r.labels for r in ds.records]).tolist()) == {0, 1, 2}
    areas = np.concatenate([np.prod(r.boxes[:, 2:] - r.boxes[:, :2], 1) for r in ds.records])
    assert areas.min() < 20 ** 2 and areas.max() > 45 ** 2
    overlapping = 0
    for r in ds.records:
        b = r.boxes
        for i in range(len(b)):
            for j in range(i + 1, len(b)):
                overlapping += bool(min(b[i, 2], b[j, 2]) > max(b[i, 0], b[j, 0])
                                    and min(b[i, 3], b[j, 3]) > max(b[i, 1], b[j, 1]))
    assert overlapping > 0


def test_loadable_without_fixes(shapes):
    for split, n in (("train", 60), ("val", 12)):
        ds = load_dataset(shapes, split, log=False)
        assert len(ds) == n and ds.class_names == list(CLASS_NAMES) and ds.category_ids == [1, 2, 3]
        assert set(ds.issues) <= {"empty"}  # nothing clipped, dropped or renumbered


def test_reuse_regenerate_and_refuse_foreign_folders(shapes, tmp_path):
    stamp = (shapes / "train" / "000000.jpg").stat().st_mtime_ns
    make_synthetic_dataset(shapes, num_train=60, num_val=12, image_hw=(96, 128), seed=3)
    assert (shapes / "train" / "000000.jpg").stat().st_mtime_ns == stamp  # up to date: reused
    small = make_synthetic_dataset(tmp_path / "s", num_train=4, num_val=2, image_hw=(64, 64))
    make_synthetic_dataset(small, num_train=3, num_val=2, image_hw=(64, 64))  # other arguments: rewritten
    assert len(list((small / "train").iterdir())) == 3
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(NanoplusError, match="holds files this generator did not write"):
        make_synthetic_dataset(foreign, num_train=2, num_val=1)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_command_line(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--num-train", "3", "--num-val", "2", "--height", "64", "--width", "80"]) == 0
    assert "3 train + 2 val images" in capsys.readouterr().out
    assert load_dataset(tmp_path / "cli", "val", log=False).records[0].width == 80
    assert main([str(tmp_path / "bad"), "--height", "8"]) == 2


def test_small_objects_option(tmp_path):
    """--object-size MIN MAX bounds the drawn objects (fractions of the shorter side); --max-objects
    allows crowded images."""
    assert main([str(tmp_path / "small"), "--num-train", "12", "--num-val", "2", "--height", "128", "--width", "160",
                 "--object-size", "0.04", "0.1", "--max-objects", "10"]) == 0
    records = load_dataset(tmp_path / "small", "train", log=False).records
    sides = np.concatenate([r.boxes[:, 2:] - r.boxes[:, :2] for r in records])
    # a shape of size s fits in an s x s square (triangles are smaller); + a pixel on each side for rasterising
    assert sides.max() <= 0.1 * 128 + 2
    assert np.median(sides.max(1)) >= 0.04 * 128 * 0.5  # not degenerate
    assert max(len(r.labels) for r in records) > 4
    assert json.loads((tmp_path / "small" / "synthetic.json").read_text())["object_size"] == [0.04, 0.1]


@pytest.mark.parametrize("object_size, max_objects", [((0.2, 0.1), 4), ((0.0, 0.1), 4), ((0.01, 0.1), 4),
                                                      ((0.1, 0.95), 4), ((0.1, 0.2), 0)])
def test_bad_object_size_or_count_is_refused(tmp_path, object_size, max_objects):
    with pytest.raises(NanoplusError, match="object_size|max_objects"):
        make_synthetic_dataset(tmp_path / "x", num_train=2, num_val=1, image_hw=(64, 64), object_size=object_size,
                               max_objects=max_objects)
    assert not (tmp_path / "x").exists()
