"""Pascal VOC folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``) ->
DetectionDataset.

Boxes are taken as written (x1 = xmin, y1 = ymin, x2 = xmax, y2 = ymax), as upstream does; float
coordinates are accepted (upstream crashes on them). Category ids of the converted ground truth are
the class index + 1; a ``difficult`` object becomes an ``iscrowd`` annotation, so that, as in the
VOC evaluation, detections of it count neither as hits nor as false positives (pycocotools matches a
crowd region by intersection over the detection's area, a small difference from VOC's IoU).
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from nanoplus.runtime.datasets.convert import add_ground_truth, converted_dataset, converted_record
from nanoplus.runtime.datasets.image_files import IMAGE_SUFFIXES, files_in, read_image_size
from nanoplus.runtime.datasets.issues import DatasetError, Issues
from nanoplus.runtime.datasets.records import DetectionDataset

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)


def _parse_voc_xml(xml_path: Path) -> ET.Element:
    try:
        return ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        line, col = e.position
        raise DatasetError(f"{xml_path} line {line} column {col}: not valid XML ({e})") from None
    except OSError as e:
        raise DatasetError(f"{xml_path}: cannot read the file ({e})") from None


def _voc_objects(root: ET.Element, xml_path: Path) -> list[tuple[str, list[str], bool, int]]:
    """(name, [xmin, ymin, xmax, ymax] texts, difficult, object number) for each <object>."""
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetError(f"{xml_path} object {k + 1}: missing <name>")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DatasetError(f"{xml_path} object {k + 1} ('{name}'): missing <bndbox>")
        texts = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = bnd.findtext(tag)
            if text is None:
                raise DatasetError(f"{xml_path} object {k + 1} ('{name}'): missing <bndbox><{tag}>")
            texts.append(text.strip())
        difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "", "false", "False")
        objects.append((name, texts, difficult, k + 1))
    return objects


def load_voc(root: Path, split: str, class_names: Optional[Sequence[str]], issues: Issues) -> DetectionDataset:
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        main = root / "ImageSets" / "Main"
        have = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem) if main.is_dir() else []
        raise DatasetError(f"{split_file}: no such split list (splits here: {', '.join(have) or 'none'}); "
                           "a VOC folder needs ImageSets/Main/<split>.txt with one image id per line")
    with open(split_file, "r", encoding="utf-8") as f:
        ids = [line.split()[0] for line in f if line.strip()]
    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"

    parsed = {}
    for image_id in ids:
        xml_path = ann_dir / f"{image_id}.xml"
        if not xml_path.is_file():
            raise DatasetError(f"{split_file}: image '{image_id}' has no {xml_path}")
        parsed[image_id] = _parse_voc_xml(xml_path)

    if class_names is None:
        found = set()
        for xml_path in sorted(ann_dir.glob("*.xml")):  # every split, so train and val agree
            tree = parsed.get(xml_path.stem)
            tree = tree if tree is not None else _parse_voc_xml(xml_path)
            found.update((obj.findtext("name") or "").strip() for obj in tree.findall("object"))
        found.discard("")
        class_names = list(VOC_CLASSES) if found <= set(VOC_CLASSES) else sorted(found)
    class_names = [str(n) for n in class_names]
    name_to_label = {n: i for i, n in enumerate(class_names)}
    category_ids = list(range(1, len(class_names) + 1))

    listing = files_in(img_dir)
    records, gt_images, gt_anns = [], [], []
    for image_id in ids:
        tree = parsed[image_id]
        xml_path = ann_dir / f"{image_id}.xml"
        file_name = next((n for n in (f"{image_id}.jpg", (tree.findtext("filename") or "").strip())
                          if n and n in listing), None)
        if file_name is None:
            file_name = next((f"{image_id}{s}" for s in IMAGE_SUFFIXES if f"{image_id}{s}" in listing), None)
        if file_name is None:
            issues.add("missing_image", f"{img_dir / (image_id + '.jpg')} ({xml_path.name})")
            continue
        path = img_dir / file_name
        try:
            width = int(float(tree.findtext("size/width") or 0))
            height = int(float(tree.findtext("size/height") or 0))
        except ValueError:
            width = height = 0
        # the header of every image is read (cheap): an unreadable file is found now, not after an
        # epoch, and boxes are placed in the image as it really is, whatever <size> says
        size = read_image_size(path)
        if size is None:
            issues.add("unreadable_image", str(path))
            continue
        if width <= 0 or height <= 0:
            issues.add("size_from_file", str(xml_path))
        elif (height, width) != size:
            issues.add("size_mismatch", f"{path} is {size[1]}x{size[0]}, {xml_path} <size> says {width}x{height}")
        height, width = size
        boxes, labels, ignore, ignore_labels = [], [], [], []
        for name, texts, difficult, k in _voc_objects(tree, xml_path):
            where = f"{xml_path} object {k}"
            if name not in name_to_label:
                raise DatasetError(f"{where}: class '{name}' is not in the class names "
                                   f"({', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''}); "
                                   "add it to the names list or fix the xml")
            try:
                values = [float(t) for t in texts]
            except ValueError:
                raise DatasetError(f"{where}: <bndbox> values must be numbers, got {texts}") from None
            if not all(math.isfinite(v) for v in values):
                issues.add("nonfinite", where)
                continue
            if any(v != int(v) or "." in t for v, t in zip(values, texts)):
                issues.add("float_coords", where)
            if values[2] - values[0] <= 0 or values[3] - values[1] <= 0:
                issues.add("degenerate", where)
                continue
            (ignore if difficult else boxes).append(values)
            (ignore_labels if difficult else labels).append(name_to_label[name])
        issues.add("crowd", str(xml_path), len(ignore))
        record = converted_record(
            path, len(records) + 1, height, width, np.asarray(boxes, np.float64).reshape(-1, 4),
            np.asarray(labels, np.int64), np.asarray(ignore, np.float64).reshape(-1, 4),
            np.asarray(ignore_labels, np.int64), str(xml_path), issues)
        records.append(record)
        add_ground_truth(gt_images, gt_anns, record, file_name, category_ids)
    return converted_dataset(class_names, category_ids, records, gt_images, gt_anns, split_file, "voc", split, issues)
