"""Dataset reading: every format from small files written here, every validation case, and the
shared COCO subsets (counts from ASSETS.md and the json itself)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import COCO128, TINY_COCO, require
from nanoplus.errors import NanoplusError
from nanoplus.runtime.datasets import (DatasetError, VOC_CLASSES, check_num_classes, load_dataset,
                                       read_image_size)


def write_image(path: Path, height: int, width: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


# ---------------------------------------------------------------------------------------- COCO

def coco_folder(root: Path, annotations: list[dict], images=None, split="val2017", write=True) -> Path:
    images = images if images is not None else [
        {"id": 1, "file_name": "a.jpg", "height": 40, "width": 60},
        {"id": 2, "file_name": "b.jpg", "height": 30, "width": 50},
    ]
    if write:
        for img in images:
            write_image(root / split / img["file_name"], img.get("height", 40) or 40, img.get("width", 60) or 60)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]}  # unsorted ids on purpose
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def ann(id, image_id, bbox, category_id=3, **extra):
    fields = dict(id=id, image_id=image_id, bbox=bbox, category_id=category_id, iscrowd=0)
    if len(bbox) == 4:
        fields["area"] = bbox[2] * bbox[3] if all(np.isfinite(bbox)) else 0
    return {**fields, **extra}


def test_coco_folder_classes_boxes_and_ground_truth(tmp_path):
    root = coco_folder(tmp_path, [ann(1, 1, [10, 5, 20, 10], 7), ann(2, 1, [0, 0, 5, 6], 3),
                                  ann(3, 2, [1, 2, 3, 4], 3, iscrowd=1)])
    ds = load_dataset(root, "val")
    # category ids sorted (3 < 7): dog is class 0, cat class 1, as upstream's cat2label
    assert ds.class_names == ["dog", "cat"] and ds.category_ids == [3, 7]
    assert ds.split == "val2017" and ds.format == "coco" and len(ds) == 2
    a, b = ds.records
    assert a.image_id == 1 and (a.height, a.width) == (40, 60) and a.path.endswith("val2017/a.jpg")
    np.testing.assert_array_equal(a.boxes, np.float32([[10, 5, 30, 15], [0, 0, 5, 6]]))
    np.testing.assert_array_equal(a.labels, [1, 0])
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64
    # the crowd annotation is no training target but stays in the ground truth for pycocotools
    assert len(b.boxes) == 0 and b.ignore_boxes.tolist() == [[1, 2, 4, 6]] and b.ignore_labels.tolist() == [0]
    assert [x["id"] for x in ds.coco_gt["annotations"]] == [1, 2, 3]
    assert ds.coco_gt["annotations"][2]["iscrowd"] == 1
    assert ds.issues == {"crowd": 1, "empty": 1}


def test_coco_json_file_with_image_dir(tmp_path):
    coco_folder(tmp_path, [ann(1, 1, [10, 5, 20, 10])], split="val2017")
    images = tmp_path / "elsewhere"
    (tmp_path / "val2017").rename(images)
    ds = load_dataset(tmp_path / "annotations" / "instances_val2017.json", image_dir=images)
    assert Path(ds.records[0].path) == images / "a.jpg"
    with pytest.raises(DatasetError, match="cannot find the images"):
        load_dataset(tmp_path / "annotations" / "instances_val2017.json")


def test_coco_split_names(tmp_path):
    coco_folder(tmp_path, [], split="train2017")
    coco_folder(tmp_path, [], split="val2017")
    assert load_dataset(tmp_path, "train").split == "train2017"
    assert load_dataset(tmp_path, "val2017").split == "val2017"
    with pytest.raises(DatasetError, match=r"instances_test\*\.json.*found: instances_train2017.json"):
        load_dataset(tmp_path, "test")


def test_coco_fixes_are_counted_once_in_one_log_line(tmp_path, caplog):
    anns = [
        ann(1, 1, [50, 30, 20, 20]),            # sticks out right and bottom -> clipped to 60 x 40
        ann(2, 1, [float("nan"), 1, 5, 5]),     # NaN -> dropped from records and ground truth
        ann(3, 1, [5, 5, 0, 8]),                # zero width -> dropped from both
        ann(4, 1, [5, 5, 0.5, 8]),              # under 1 px -> left out of training only (upstream)
        ann(5, 1, [70, 5, 10, 10]),             # entirely outside -> dropped from training
        ann(6, 2, [1, 1, 5, 5]),
        ann(7, 2, [10, 10, 5, 5], area=0),      # 'area' 0: upstream leaves it out of training, with a warning
    ]
    root = coco_folder(tmp_path, anns)
    with caplog.at_level(logging.INFO, logger="nanoplus.datasets"):
        ds = load_dataset(root, "val")
    lines = [r for r in caplog.records if r.name == "nanoplus.datasets"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "1 NaN/inf boxes dropped" in lines[0].getMessage()
    assert ds.issues == {"nonfinite": 1, "degenerate": 1, "tiny": 1, "zero_area_field": 1, "clipped": 1,
                         "outside": 1}
    assert "annotations[0] (id 1)" in ds.issue_examples["clipped"]
    assert "annotations[6] (id 7)" in lines[0].getMessage()
    a, b = ds.records
    np.testing.assert_array_equal(a.boxes, np.float32([[50, 30, 60, 40]]))
    np.testing.assert_array_equal(b.boxes, np.float32([[1, 1, 6, 6]]))
    assert sorted(x["id"] for x in ds.coco_gt["annotations"]) == [1, 4, 5, 6, 7]


def test_coco_errors_name_the_file_and_the_annotation(tmp_path):
    root = coco_folder(tmp_path, [ann(1, 1, [1, 1, 5, 5]), ann(2, 1, [1, 1, 5, 5], category_id=99)])
    with pytest.raises(DatasetError, match=r"instances_val2017.json annotations\[1\] \(id 2\): category_id 99"):
        load_dataset(root, "val")
    coco_folder(tmp_path, [ann(1, 5, [1, 1, 5, 5])])
    with pytest.raises(DatasetError, match=r"annotations\[0\] \(id 1\): image_id 5 is not in 'images'"):
        load_dataset(root, "val")
    coco_folder(tmp_path, [{"id": 1, "image_id": 1, "category_id": 3}])
    with pytest.raises(DatasetError, match=r"annotations\[0\] \(id 1\): missing key 'bbox'"):
        load_dataset(root, "val")
    coco_folder(tmp_path, [ann(1, 1, [1, 1, 5])])
    with pytest.raises(DatasetError, match=r"'bbox' must be 4 numbers"):
        load_dataset(root, "val")
    path = root / "annotations" / "instances_val2017.json"
    path.write_text('{"images": [],\n "annotations": [\n  {"id": 1,, }]}')
    with pytest.raises(DatasetError, match=r"instances_val2017.json line 3 column \d+: not valid JSON"):
        load_dataset(root, "val")
    path.write_text('{"images": [], "annotations": []}')
    with pytest.raises(DatasetError, match="missing key 'categories'"):
        load_dataset(root, "val")
    assert issubclass(DatasetError, NanoplusError)


def test_coco_missing_images_skipped_or_refused_when_strict(tmp_path):
    root = coco_folder(tmp_path, [ann(1, 1, [1, 1, 5, 5]), ann(2, 2, [1, 1, 5, 5])])
    (root / "val2017" / "b.jpg").unlink()
    ds = load_dataset(root, "val")
    assert [r.image_id for r in ds.records] == [1]
    assert ds.issues["missing_image"] == 1 and "b.jpg" in ds.issue_examples["missing_image"]
    # the ground truth drops the image and its annotations, so evaluation is not charged for it
    assert [i["id"] for i in ds.coco_gt["images"]] == [1]
    assert [a["id"] for a in ds.coco_gt["annotations"]] == [1]
    with pytest.raises(DatasetError, match=r"b\.jpg.*image files missing.*strict"):
        load_dataset(root, "val", strict=True)


def test_coco_sizes_read_from_files_and_ids_renumbered(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg", "height": 30, "width": 50}]
    write_image(tmp_path / "val2017" / "a.jpg", 45, 70)
    write_image(tmp_path / "val2017" / "b.jpg", 30, 50)
    root = coco_folder(tmp_path, [ann(0, 1, [1, 1, 5, 5]), ann(0, 2, [1, 1, 5, 5])], images=images, write=False)
    ds = load_dataset(root, "val")
    assert (ds.records[0].height, ds.records[0].width) == (45, 70)
    assert ds.issues["size_from_file"] == 1
    # pycocotools treats annotation id 0 as "not matched", so ids are made unique and >= 1
    assert [a["id"] for a in ds.coco_gt["annotations"]] == [1, 2] and ds.issues["renumbered_ids"] == 2


# ---------------------------------------------------------------------------------------- YOLO

def yolo_dataset(root: Path, labels: dict[str, str], names="[cat, dog, bird]", extra="") -> Path:
    """images/{split}/x.jpg (48 x 64) with labels/{split}/x.txt; label text None = no file."""
    for rel, text in labels.items():
        write_image(root / "images" / f"{rel}.jpg", 48, 64)
        if text is not None:
            label = root / "labels" / f"{rel}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(text)
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {names}\n{extra}")
    return yaml_path


def test_yolo_boxes_in_pixels(tmp_path):
    yaml_path = yolo_dataset(tmp_path, {"val/a": "1 0.5 0.5 0.25 0.5\n0 0.125 0.25 0.25 0.5\n",
                                        "val/b": "", "train/c": "2 0.5 0.5 1 1\n"})
    ds = load_dataset(yaml_path, "val")
    assert ds.class_names == ["cat", "dog", "bird"] and ds.category_ids == [0, 1, 2] and ds.format == "yolo"
    a, b = ds.records
    assert (a.height, a.width) == (48, 64) and Path(a.path).name == "a.jpg"
    # cx 0.5 * 64 = 32, w 0.25 * 64 = 16 -> x 24..40; cy 0.5 * 48 = 24, h 0.5 * 48 = 24 -> y 12..36
    np.testing.assert_allclose(a.boxes, [[24, 12, 40, 36], [0, 0, 16, 24]])
    np.testing.assert_array_equal(a.labels, [1, 0])
    assert len(b.boxes) == 0 and ds.issues == {"empty": 1}
    gt = ds.coco_gt["annotations"]
    assert [g["bbox"] for g in gt] == [[24.0, 12.0, 16.0, 24.0], [0.0, 0.0, 16.0, 24.0]]
    assert [g["category_id"] for g in gt] == [1, 0] and [g["id"] for g in gt] == [1, 2]
    assert load_dataset(tmp_path, "train").records[0].boxes.tolist() == [[0, 0, 64, 48]]  # folder with one YAML


def test_yolo_names_mapping_image_list_and_polygons(tmp_path):
    yaml_path = yolo_dataset(tmp_path, {"val/a": "5 0.1 0.1 0.5 0.1 0.5 0.6\n"}, names="{2: cat, 5: dog}")
    (tmp_path / "val.txt").write_text("./images/val/a.jpg\n")
    yaml_path.write_text(yaml_path.read_text().replace("val: images/val", "val: val.txt"))
    ds = load_dataset(yaml_path, "val")
    assert ds.class_names == ["cat", "dog"] and ds.category_ids == [2, 5]
    np.testing.assert_allclose(ds.records[0].boxes, [[6.4, 4.8, 32, 28.8]], rtol=1e-6)
    assert ds.records[0].labels.tolist() == [1] and ds.issues["segments"] == 1


def test_yolo_fixes_counted(tmp_path):
    yaml_path = yolo_dataset(tmp_path, {
        "val/a": ("0 0.9 0.5 0.4 0.2\n"        # right edge at 1.1 -> clipped to the image
                  "1 nan 0.5 0.1 0.1\n"        # NaN -> dropped
                  "1 0.5 0.5 0 0.2\n"          # zero width -> dropped
                  "2 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n"),  # duplicate row -> dropped
        "val/b": None,                          # no label file -> negative
    })
    ds = load_dataset(yaml_path, "val")
    assert ds.issues == {"nonfinite": 1, "degenerate": 1, "duplicate": 1, "clipped": 1, "no_label_file": 1}
    assert ds.issue_examples["nonfinite"].endswith("a.txt line 2")
    assert ds.issue_examples["duplicate"].endswith("a.txt line 5")
    np.testing.assert_allclose(ds.records[0].boxes, [[44.8, 19.2, 64, 28.8], [25.6, 19.2, 38.4, 28.8]], rtol=1e-6)
    with pytest.raises(DatasetError, match=r"a\.txt line 2: NaN/inf boxes dropped.*strict"):
        load_dataset(yaml_path, "val", strict=True)


@pytest.mark.parametrize("text, message", [
    ("0 0.5 0.5 0.1 0.1\n3 0.5 0.5 0.1 0.1\n", r"a\.txt line 2: class id 3 is out of range \(0\.\.2"),
    ("-1 0.5 0.5 0.1 0.1\n", r"a\.txt line 1: class id -1 is out of range"),
    ("0 0.5 0.5\n", r"a\.txt line 1: expected 'class cx cy w h'"),
    ("0 0.5 x 0.1 0.1\n", r"a\.txt line 1: not a number"),
    ("\n0 320 240 50 60\n", r"a\.txt line 2: coordinates .* are not normalised"),
])
def test_yolo_label_errors_name_file_and_line(tmp_path, text, message):
    yaml_path = yolo_dataset(tmp_path, {"val/a": text})
    with pytest.raises(DatasetError, match=message):
        load_dataset(yaml_path, "val")


YOLO_YAML_ERRORS = [  # (data.yaml text, the message it must give)
    ("path: .\nval: images/val\nnames: [a, b\n", r"data\.yaml line \d+ column \d+: not valid YAML"),
    ("path: .\nval: images/val\n", "data.yaml: missing key 'names'"),
    ("path: .\ntrain: images/val\nnames: [a]\n", "missing key 'val'.*has train"),
    ("path: .\nval: images/nothere\nnames: [a]\n", "'val: images/nothere'.*is not a folder"),
    ("path: .\nval: images/val\nnames: [a, b]\nnc: 3\n", "'nc' is 3 but 'names' lists 2"),
]


@pytest.mark.parametrize("text,message", YOLO_YAML_ERRORS)
def test_yolo_yaml_errors(tmp_path, text, message):
    yaml_path = yolo_dataset(tmp_path, {"val/a": ""})
    yaml_path.write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(yaml_path, "val")


def test_yolo_without_any_label_file_is_refused(tmp_path):
    yaml_path = yolo_dataset(tmp_path, {"val/a": None, "val/b": None})
    with pytest.raises(DatasetError, match=r"none of the 2 'val' images has a label file \(e\.g\. .*labels/val/a\.txt"):
        load_dataset(yaml_path, "val")


def test_yolo_missing_image_in_list_and_unreadable_image(tmp_path):
    yaml_path = yolo_dataset(tmp_path, {"val/a": "0 0.5 0.5 0.1 0.1\n"})
    (tmp_path / "images" / "val" / "broken.jpg").write_bytes(b"not an image")
    ds = load_dataset(yaml_path, "val")
    assert len(ds) == 1 and ds.issues["unreadable_image"] == 1
    (tmp_path / "list.txt").write_text("images/val/a.jpg\nimages/val/gone.jpg\n")
    yaml_path.write_text(yaml_path.read_text().replace("val: images/val", "val: list.txt"))
    ds = load_dataset(yaml_path, "val")
    assert len(ds) == 1 and ds.issue_examples["missing_image"].endswith("list.txt line 2")


def test_image_size_from_header_follows_exif_rotation(tmp_path, monkeypatch):
    PIL = pytest.importorskip("PIL.Image")
    path = tmp_path / "rotated.jpg"
    img = PIL.fromarray(np.zeros((20, 30, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display; cv2.imread applies it
    img.save(path, exif=exif)
    assert cv2.imread(str(path)).shape[:2] == (30, 20)
    assert read_image_size(path) == (30, 20)
    monkeypatch.setitem(sys.modules, "PIL", None)  # the runtime works without PIL: OpenCV decodes
    assert read_image_size(path) == (30, 20)
    assert read_image_size(write_image(tmp_path / "plain.png", 11, 13)) == (11, 13)
    assert read_image_size(tmp_path / "missing.jpg") is None


# ----------------------------------------------------------------------------------------- VOC

VOC_XML = """<annotation><filename>{name}.jpg</filename>{size}{objects}</annotation>"""
VOC_OBJECT = ("<object><name>{cls}</name><difficult>{difficult}</difficult><bndbox><xmin>{box[0]}</xmin>"
              "<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>")


def voc_dataset(root: Path, images: dict[str, list], splits=None, sizes=True) -> Path:
    for name, objects in images.items():
        write_image(root / "JPEGImages" / f"{name}.jpg", 40, 60)
        size = "<size><width>60</width><height>40</height><depth>3</depth></size>" if sizes else ""
        objs = "".join(VOC_OBJECT.format(cls=c, box=b, difficult=int(d)) for c, b, d in objects)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{name}.xml").write_text(VOC_XML.format(name=name, size=size, objects=objs))
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for split, names in (splits or {"val": list(images)}).items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def test_voc_boxes_difficult_and_float_coordinates(tmp_path):
    root = voc_dataset(tmp_path, {
        "0001": [("dog", (10, 5, 30, 25), False), ("person", (1.5, 2, 20.25, 30), False),
                 ("cat", (40, 10, 55, 35), True)],
        "0002": [("dog", (50, 30, 70, 45), False)],   # past the 60 x 40 image -> clipped
        "0003": [],
    }, splits={"val": ["0001", "0002", "0003"], "train": ["0001"]})
    ds = load_dataset(root, "val")
    assert ds.class_names == list(VOC_CLASSES) and ds.category_ids == list(range(1, 21))
    a, b, c = ds.records
    np.testing.assert_allclose(a.boxes, [[10, 5, 30, 25], [1.5, 2, 20.25, 30]])
    assert a.labels.tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    # difficult: no training target, an iscrowd region in the ground truth (ignored as in VOC eval)
    assert a.ignore_boxes.tolist() == [[40, 10, 55, 35]] and a.ignore_labels.tolist() == [VOC_CLASSES.index("cat")]
    crowd = [g for g in ds.coco_gt["annotations"] if g["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["category_id"] == VOC_CLASSES.index("cat") + 1
    np.testing.assert_array_equal(b.boxes, np.float32([[50, 30, 60, 40]]))
    assert ds.issues == {"float_coords": 1, "crowd": 1, "clipped": 1, "empty": 1}
    assert ds.issue_examples["float_coords"].endswith("0001.xml object 2")


def test_voc_class_names_from_data_or_given(tmp_path):
    root = voc_dataset(tmp_path, {"a": [("widget", (1, 1, 9, 9), False)], "b": [("gadget", (1, 1, 9, 9), False)]},
                       splits={"val": ["a"], "train": ["b"]})
    # names come from every xml, so train and val get the same class indices
    assert load_dataset(root, "val").class_names == ["gadget", "widget"]
    assert load_dataset(root, "train").records[0].labels.tolist() == [0]
    ds = load_dataset(root, "val", class_names=["widget", "gadget"])
    assert ds.records[0].labels.tolist() == [0]
    with pytest.raises(DatasetError, match=r"a\.xml object 1: class 'widget' is not in the class names"):
        load_dataset(root, "val", class_names=["gadget"])


def test_voc_errors_and_sizes_from_files(tmp_path):
    root = voc_dataset(tmp_path, {"a": [("dog", (1, 1, 9, 9), False), ("dog", (5, 5, 5, 9), False)]}, sizes=False)
    ds = load_dataset(root, "val")
    assert (ds.records[0].height, ds.records[0].width) == (40, 60)
    assert ds.issues["size_from_file"] == 1 and ds.issues["degenerate"] == 1
    with pytest.raises(DatasetError, match=r"ImageSets/Main/test\.txt: no such split list \(splits here: val\)"):
        load_dataset(root, "test")
    (root / "Annotations" / "a.xml").write_text("<annotation>\n<object><name>dog</name>\n</annotation>")
    with pytest.raises(DatasetError, match=r"a\.xml line 3 column \d+: not valid XML"):
        load_dataset(root, "val")
    (root / "Annotations" / "a.xml").write_text("<annotation><object><name>dog</name></object></annotation>")
    with pytest.raises(DatasetError, match=r"a\.xml object 1 \('dog'\): missing <bndbox>"):
        load_dataset(root, "val")


def test_unknown_inputs_and_class_count_check(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="not a dataset folder"):
        load_dataset(tmp_path)
    root = coco_folder(tmp_path / "c", [ann(1, 1, [1, 1, 5, 5])])
    ds = load_dataset(root, "val")
    check_num_classes(ds, 2, "model.yaml")
    with pytest.raises(DatasetError, match=r"has 2 classes \(dog, cat\) but model.yaml has 80: train with "
                                           r"model.num_classes=2"):
        check_num_classes(ds, 80, "model.yaml")


# ------------------------------------------------------------------------------ shared COCO data

def test_tiny_coco_val_and_train():
    root = require(TINY_COCO)
    ds = load_dataset(root, "val")
    gt = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    assert len(ds) == 50 and len(ds.class_names) == 80 and ds.class_names[0] == "person"
    assert ds.class_names[-1] == "toothbrush" and ds.category_ids[-1] == 90
    # the ground truth is the json's own: 382 annotations of which 5 crowd (ASSETS.md)
    assert len(ds.coco_gt["annotations"]) == 382
    assert sum(a["iscrowd"] for a in ds.coco_gt["annotations"]) == 5
    # training targets: every non-crowd box (none is under 1 px in this file), category id -> index
    assert ds.num_boxes == 377 and sum(len(r.ignore_boxes) for r in ds.records) == 5
    first = gt["annotations"][0]
    record = next(r for r in ds.records if r.image_id == first["image_id"])
    x, y, w, h = first["bbox"]
    row = np.flatnonzero(np.all(np.isclose(record.boxes, [x, y, x + w, y + h]), 1))
    assert len(row) == 1
    assert record.labels[row[0]] == sorted(c["id"] for c in gt["categories"]).index(first["category_id"])
    assert set(ds.issues) <= {"crowd", "empty"}
    train = load_dataset(root, "train")
    assert len(train) == 50 and len(train.coco_gt["annotations"]) == 470


def test_coco128():
    ds = load_dataset(require(COCO128), "train")
    assert len(ds) == 128 and len(ds.coco_gt["annotations"]) == 939 and len(ds.class_names) == 80
    assert ds.num_boxes + sum(len(r.ignore_boxes) for r in ds.records) == 939
    assert all(Path(r.path).is_file() for r in ds.records)


# ------------------------------------------------------------- images checked at load (issue 12)

@pytest.mark.parametrize("fmt", ["coco", "voc"])
def test_unreadable_images_are_found_at_load_not_after_an_epoch(tmp_path, fmt):
    """A 0-byte file, a non-image and a JPEG cut short, with sizes in the annotations (so nothing
    needed to open them before): skipped and counted at load, refused when strict."""
    names = ["good", "empty", "text", "cut"]
    if fmt == "coco":
        images = [{"id": i + 1, "file_name": f"{n}.jpg", "height": 40, "width": 60} for i, n in enumerate(names)]
        root = coco_folder(tmp_path, [ann(i + 1, i + 1, [1, 1, 5, 5]) for i in range(4)], images=images)
        folder = root / "val2017"
    else:
        root = voc_dataset(tmp_path, {n: [("dog", (1, 1, 5, 5), False)] for n in names})
        folder = root / "JPEGImages"
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    data = (folder / "good.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    ds = load_dataset(root, "val")
    assert [Path(r.path).stem for r in ds.records] == ["good"]
    assert ds.issues["unreadable_image"] == 3
    with pytest.raises(DatasetError, match=r"empty\.jpg: image files unreadable.*strict"):
        load_dataset(root, "val", strict=True)


@pytest.mark.parametrize("fmt", ["coco", "voc"])
def test_annotation_size_that_disagrees_with_the_image(tmp_path, fmt):
    """The json / xml says 40x60 but the file is 80x120: the boxes (drawn on the real image) keep
    their place instead of being dropped as outside; the fix is counted and names both sizes."""
    if fmt == "coco":
        images = [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 60}]
        root = coco_folder(tmp_path, [ann(1, 1, [70, 50, 30, 20])], images=images, write=False)
        write_image(root / "val2017" / "a.jpg", 80, 120)
    else:
        root = voc_dataset(tmp_path, {"a": [("dog", (70, 50, 100, 70), False)]})  # <size> 60 x 40
        write_image(root / "JPEGImages" / "a.jpg", 80, 120)
    ds = load_dataset(root, "val")
    record = ds.records[0]
    assert (record.height, record.width) == (80, 120)
    np.testing.assert_array_equal(record.boxes, [[70, 50, 100, 70]])
    assert ds.issues["size_mismatch"] == 1 and "outside" not in ds.issues
    assert "is 120x80" in ds.issue_examples["size_mismatch"] and "says 60x40" in ds.issue_examples["size_mismatch"]
    with pytest.raises(DatasetError, match="differ from the image files.*strict"):
        load_dataset(root, "val", strict=True)


def test_coco_fields_as_text(tmp_path):
    """"iscrowd": "0" is not crowd (Python reads the text "0" as true); "area": "big" names the annotation."""
    root = coco_folder(tmp_path, [ann(1, 1, [1, 1, 10, 10], iscrowd="0", area="100"),
                                  ann(2, 1, [20, 20, 10, 10], iscrowd="1"), ann(3, 2, [1, 1, 5, 5])])
    ds = load_dataset(root, "val")
    np.testing.assert_array_equal(ds.records[0].boxes, [[1, 1, 11, 11]])
    np.testing.assert_array_equal(ds.records[0].ignore_boxes, [[20, 20, 30, 30]])
    gt = {a["id"]: a for a in ds.coco_gt["annotations"]}
    assert (gt[1]["iscrowd"], gt[1]["area"], gt[2]["iscrowd"]) == (0, 100.0, 1)  # pycocotools reads the same
    for bad, match in [(dict(area="big"), r"annotations\[0\] \(id 1\): 'area' must be a number.*'big'"),
                       (dict(iscrowd="yes"), r"annotations\[0\] \(id 1\): 'iscrowd' must be 0 or 1, got 'yes'")]:
        root = coco_folder(tmp_path / str(len(match)), [ann(1, 1, [1, 1, 10, 10], **bad)])
        with pytest.raises(DatasetError, match=match):
            load_dataset(root, "val")
    images = [{"id": 1, "file_name": "a.jpg", "height": "tall", "width": 60}]
    root = coco_folder(tmp_path / "h", [ann(1, 1, [1, 1, 10, 10])], images=images, write=False)
    write_image(root / "val2017" / "a.jpg", 40, 60)
    with pytest.raises(DatasetError, match=r"images\[0\] \(id 1\): 'height' must be a number.*'tall'"):
        load_dataset(root, "val")
