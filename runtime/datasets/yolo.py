"""YOLO data YAML (Ultralytics layout) -> DetectionDataset.

``path`` is relative to the YAML's folder (else to the working directory); ``train`` / ``val`` /
``test`` are folders (searched recursively), ``.txt`` image lists or lists of those, relative to
``path``; the label of ``.../images/x.jpg`` is ``.../labels/x.txt`` (beside the image when there is
no ``images`` folder); rows are ``class cx cy w h`` normalised to [0, 1], or ``class x1 y1 x2 y2
...`` polygons (their bounding box is used). Image sizes come from the image headers. Category ids
of the converted ground truth are the YOLO class ids (the keys of ``names``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from nanoplus.runtime.datasets.convert import add_ground_truth, converted_dataset, converted_record
from nanoplus.runtime.datasets.image_files import IMAGE_SUFFIXES, read_sizes
from nanoplus.runtime.datasets.issues import DatasetError, Issues
from nanoplus.runtime.datasets.records import DetectionDataset


def _yolo_label_path(image_path: str) -> str:
    """images/x.jpg -> labels/x.txt (the last 'images' folder in the path), else x.txt beside it."""
    marker, replacement = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if marker in image_path:
        image_path = replacement.join(image_path.rsplit(marker, 1))
    return os.path.splitext(image_path)[0] + ".txt"


def _yolo_names(data: dict, yaml_path: Path) -> tuple[list[str], list[int]]:
    if "names" not in data:
        raise DatasetError(f"{yaml_path}: missing key 'names' (the class names, a list or a "
                           "{id: name} mapping)")
    names = data["names"]
    if isinstance(names, list):
        ids, class_names = list(range(len(names))), [str(n) for n in names]
    elif isinstance(names, dict):
        try:
            pairs = sorted((int(k), str(v)) for k, v in names.items())
        except (TypeError, ValueError):
            raise DatasetError(f"{yaml_path}: 'names' keys must be integer class ids, got "
                               f"{list(names)[:5]}") from None
        ids, class_names = [k for k, _ in pairs], [v for _, v in pairs]
    else:
        raise DatasetError(f"{yaml_path}: 'names' must be a list or a mapping, got {type(names).__name__}")
    if not class_names:
        raise DatasetError(f"{yaml_path}: 'names' is empty")
    if "nc" in data and str(data["nc"]) != str(len(class_names)):
        raise DatasetError(f"{yaml_path}: 'nc' is {data['nc']} but 'names' lists {len(class_names)} "
                           "classes; make them agree")
    return class_names, ids


def _yolo_image_files(entry: Any, root: Path, yaml_path: Path, key: str, issues: Issues) -> list[str]:
    """A split entry -> image paths: a folder (searched recursively), a .txt list or an image."""
    entries = entry if isinstance(entry, list) else [entry]
    files: list[str] = []
    for item in entries:
        if not isinstance(item, str):
            raise DatasetError(f"{yaml_path}: '{key}' must be a path or a list of paths, got {item!r}")
        p = Path(item).expanduser()
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            found = []
            for dirpath, _, names in os.walk(p):
                found.extend(os.path.join(dirpath, n) for n in names if n.lower().endswith(IMAGE_SUFFIXES))
            files.extend(sorted(found))
        elif p.is_file() and p.suffix.lower() == ".txt":
            with open(p, "r", encoding="utf-8") as f:
                for line_no, line in enumerate(f, 1):
                    line = line.strip()
                    if not line:
                        continue
                    q = Path(line)
                    if not q.is_absolute():  # relative to the list file, else to the dataset root
                        q = (p.parent / line) if (p.parent / line).exists() else root / line
                    if not q.is_file():
                        issues.add("missing_image", f"{p} line {line_no}")
                        continue
                    files.append(str(q))
        elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(str(p))
        else:
            raise DatasetError(f"{yaml_path}: '{key}: {item}' -> {p} is not a folder, an image list "
                               "(.txt) or an image; fix the path (relative paths start at 'path')")
    return files


def _parse_yolo_labels(label_path: str, num_classes: int, id_to_label: dict, height: int, width: int,
                       issues: Issues) -> tuple[np.ndarray, np.ndarray]:
    """One label file -> (boxes (n,4) xyxy pixels before clipping, labels (n,)), validated."""
    try:
        with open(label_path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{label_path}: cannot read the label file ({e})") from None
    rows, labels, seen = [], [], set()
    for line_no, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{label_path} line {line_no}"
        if len(parts) < 5:
            raise DatasetError(f"{where}: expected 'class cx cy w h' (normalised), got '{line.strip()}'")
        try:
            values = [float(v) for v in parts]
        except ValueError:
            raise DatasetError(f"{where}: not a number in '{line.strip()}'") from None
        cls = values[0]
        if not math.isfinite(cls) or cls != int(cls) or int(cls) not in id_to_label:
            valid = f"0..{num_classes - 1}" if list(id_to_label) == list(range(num_classes)) else sorted(id_to_label)
            raise DatasetError(f"{where}: class id {parts[0]} is out of range ({valid}, {num_classes} "
                               "names in the data YAML); fix the label or add the class to 'names'")
        coords = values[1:]
        if len(coords) == 4:
            cx, cy, w, h = coords
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        elif len(coords) >= 6 and len(coords) % 2 == 0:  # a segment polygon x1 y1 x2 y2 ...
            xs, ys = coords[0::2], coords[1::2]
            box = [min(xs), min(ys), max(xs), max(ys)]
            issues.add("segments", where)
        else:
            raise DatasetError(f"{where}: expected 'class cx cy w h' or 'class x1 y1 x2 y2 ...' "
                               f"(a polygon), got {len(parts)} values")
        if not all(math.isfinite(v) for v in box):
            issues.add("nonfinite", where)
            continue
        if max(abs(v) for v in coords) > 2.0:
            raise DatasetError(f"{where}: coordinates {parts[1:5]} are not normalised to [0, 1] "
                               "(YOLO labels are cx cy w h divided by the image width/height)")
        key = (int(cls), *box)
        if key in seen:
            issues.add("duplicate", where)
            continue
        seen.add(key)
        box_px = [box[0] * width, box[1] * height, box[2] * width, box[3] * height]
        if box_px[2] - box_px[0] <= 0 or box_px[3] - box_px[1] <= 0:
            issues.add("degenerate", where)
            continue
        rows.append(box_px)
        labels.append(id_to_label[int(cls)])
    return np.asarray(rows, np.float64).reshape(-1, 4), np.asarray(labels, np.int64)


def load_yolo(yaml_path: Path, split: str, issues: Issues) -> DetectionDataset:
    import yaml

    try:
        with open(yaml_path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise DatasetError(f"{yaml_path}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{yaml_path}: cannot read the file ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{yaml_path}: expected a mapping with keys path, train, val, names")
    class_names, yolo_ids = _yolo_names(data, yaml_path)
    id_to_label = {k: i for i, k in enumerate(yolo_ids)}

    root_value = data.get("path")
    if root_value:
        root = Path(str(root_value)).expanduser()
        if not root.is_absolute():  # relative to the YAML's folder, else to the working directory
            root = (yaml_path.parent / root) if (yaml_path.parent / root).is_dir() else root.resolve()
        if not root.is_dir():
            raise DatasetError(f"{yaml_path}: 'path: {root_value}' is not a folder (tried next to the YAML "
                               "and in the working directory)")
    else:
        root = yaml_path.parent
    if split not in data or data[split] in (None, ""):
        splits = [k for k in ("train", "val", "test") if data.get(k)]
        raise DatasetError(f"{yaml_path}: missing key '{split}' (the {split} images); this file has "
                           f"{', '.join(splits) or 'no splits'}")
    image_files = _yolo_image_files(data[split], root, yaml_path, split, issues)
    if not image_files:
        raise DatasetError(f"{yaml_path}: '{split}: {data[split]}' holds no images "
                           f"({', '.join(IMAGE_SUFFIXES[:5])}, ...)")

    label_files = [_yolo_label_path(p) for p in image_files]
    has_label = [os.path.isfile(p) for p in label_files]
    if not any(has_label):
        raise DatasetError(f"{yaml_path}: none of the {len(image_files)} '{split}' images has a label file "
                           f"(e.g. {label_files[0]} for {image_files[0]}); YOLO labels go in a 'labels' "
                           "folder beside 'images', one .txt per image")
    sizes = read_sizes(image_files)
    records, gt_images, gt_anns = [], [], []
    for path, size, label_path, labelled in zip(image_files, sizes, label_files, has_label):
        if size is None:
            issues.add("unreadable_image", path)
            continue
        height, width = size
        if labelled:
            boxes, labels = _parse_yolo_labels(label_path, len(class_names), id_to_label, height, width, issues)
        else:
            boxes, labels = np.zeros((0, 4)), np.zeros(0, np.int64)
            issues.add("no_label_file", label_path)
        record = converted_record(path, len(records) + 1, height, width, boxes, labels,
                                   np.zeros((0, 4)), np.zeros(0, np.int64), label_path, issues,
                                   count_empty=labelled)
        records.append(record)
        add_ground_truth(gt_images, gt_anns, record, os.path.relpath(path, root), yolo_ids)
    return converted_dataset(class_names, yolo_ids, records, gt_images, gt_anns, yaml_path, "yolo", split, issues)
