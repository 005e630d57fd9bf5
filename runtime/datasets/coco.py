"""COCO detection json -> DetectionDataset.

``coco_gt`` is the json's own images / annotations / categories (crowd annotations included, so
pycocotools ignores detections on them exactly as in the official evaluation), minus NaN / zero-area
annotations and skipped images; boxes sticking out of the image stay as written there (only the
records clip). Classes are the sorted category ids, as upstream. Annotations are handled as arrays:
860k COCO train annotations load in seconds.

Steps of ``load_coco``: read and check the json's top level -> classes -> images (folder, presence,
sizes) -> annotation arrays -> which annotations train, are ignored or are dropped -> records per
image -> ground truth.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nanoplus.runtime.datasets.convert import clip_boxes
from nanoplus.runtime.datasets.image_files import files_in, read_sizes
from nanoplus.runtime.datasets.issues import DatasetError, Issues
from nanoplus.runtime.datasets.records import DetectionDataset, ImageRecord


def split_stem(json_path: Path) -> str:
    stem = json_path.stem
    return stem[len("instances_"):] if stem.startswith("instances_") else stem


def find_coco_json(root: Path, split: str) -> Path:
    """The annotations/instances_{split}*.json of a COCO folder."""
    folder = root / "annotations"
    jsons = sorted(folder.glob("*.json"))
    exact = [p for p in jsons if split_stem(p) == split]
    if exact:
        return exact[0]
    starting = [p for p in jsons if p.stem.startswith(f"instances_{split}")]
    if len(starting) == 1:
        return starting[0]
    names = ", ".join(p.name for p in jsons) or "none"
    if starting:
        raise DatasetError(f"{folder}: split '{split}' matches several files ({names}); name one "
                           f"exactly, e.g. --split {split_stem(starting[-1])}")
    raise DatasetError(f"{folder}: no annotations/instances_{split}*.json for split '{split}' "
                       f"(found: {names}); choose another split or pass the json file")


def _coco_image_dir(json_path: Path, image_dir, file_names: Sequence[str]) -> Path:
    """The folder the json's file_names are relative to: given, or the usual COCO places."""
    if image_dir is not None:
        folder = Path(image_dir).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"{folder}: image folder not found (given for {json_path})")
        return folder
    split_name = split_stem(json_path)
    ann_dir = json_path.parent
    candidates = [ann_dir.parent / split_name, ann_dir / split_name, ann_dir.parent / "images" / split_name,
                  ann_dir.parent / "images", ann_dir / "images", ann_dir.parent, ann_dir]
    if not file_names:
        return candidates[0]
    for folder in candidates:  # the first folder that holds some of the listed files
        if any((folder / name).is_file() for name in file_names[:20]):
            return folder
    tried = ", ".join(str(c) for c in candidates[:3])
    raise DatasetError(f"{json_path}: cannot find the images (e.g. '{file_names[0]}'); looked in "
                       f"{tried} and nearby. Give the image folder (image_dir / --images)")


def _read_json(path: Path) -> Any:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the file ({e})") from None


def _coco_ids(items: list, key: str, where: str) -> np.ndarray:
    """items[i][key] for all i as an int64 array; on a bad entry, an error naming that entry."""
    try:
        return np.fromiter((int(item[key]) for item in items), np.int64, len(items))
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    for i, item in enumerate(items):  # slow path only to say where the problem is
        if not isinstance(item, dict):
            raise DatasetError(f"{where}[{i}]: expected an object, got {type(item).__name__}")
        ident = f" (id {item['id']})" if "id" in item and key != "id" else ""
        if key not in item:
            raise DatasetError(f"{where}[{i}]{ident}: missing key '{key}'")
        try:
            int(item[key])
        except (TypeError, ValueError):
            raise DatasetError(f"{where}[{i}]{ident}: '{key}' must be an integer, got {item[key]!r}") from None
    raise DatasetError(f"{where}: cannot read '{key}'")


def _coco_bboxes(anns: list, where: str) -> np.ndarray:
    try:
        boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(len(anns), -1)
        if boxes.shape[1] == 4:
            return boxes
    except (KeyError, TypeError, ValueError):
        pass
    for i, a in enumerate(anns):
        ident = f" (id {a.get('id')})" if isinstance(a, dict) else ""
        if not isinstance(a, dict) or "bbox" not in a:
            raise DatasetError(f"{where}[{i}]{ident}: missing key 'bbox' (x, y, width, height)")
        b = a["bbox"]
        try:
            ok = len(b) == 4 and all(isinstance(float(v), float) for v in b)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DatasetError(f"{where}[{i}]{ident}: 'bbox' must be 4 numbers [x, y, width, height], "
                               f"got {b!r}")
    raise DatasetError(f"{where}: malformed 'bbox' values")


def _read_coco_json(json_path: Path) -> dict:
    """The json, checked to hold the three lists a detection json needs."""
    data = _read_json(json_path)
    if not isinstance(data, dict):
        raise DatasetError(f"{json_path}: expected a COCO object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{json_path}: missing key '{key}' (a COCO detection json needs images, "
                               "annotations and categories)")
        if not isinstance(data[key], list):
            raise DatasetError(f"{json_path}: '{key}' must be a list")
    if not data["categories"]:
        raise DatasetError(f"{json_path}: 'categories' is empty; list the classes as {{'id', 'name'}}")
    return data


def _coco_classes(cats: list, src: str) -> tuple[list[int], list[str]]:
    """(category ids, class names), sorted by id as upstream (id -> position)."""
    cat_ids = _coco_ids(cats, "id", f"{src} categories")
    for i, c in enumerate(cats):
        if "name" not in c:
            raise DatasetError(f"{src} categories[{i}] (id {c['id']}): missing key 'name'")
    if len(set(cat_ids.tolist())) != len(cat_ids):
        raise DatasetError(f"{src}: 'categories' repeats an id; each category needs its own id")
    order = np.argsort(cat_ids, kind="stable")
    return cat_ids[order].tolist(), [str(cats[i]["name"]) for i in order]


@dataclass
class _CocoImages:
    """Per entry of the json's 'images': ids, paths, whether the file is usable, sizes."""

    ids: np.ndarray  # (I,) int64
    paths: list[str]
    present: np.ndarray  # (I,) bool: the file exists and its size is known
    heights: np.ndarray  # (I,) int64
    widths: np.ndarray  # (I,) int64


def _coco_images(images: list, json_path: Path, image_dir, issues: Issues) -> _CocoImages:
    """Find the image folder, check which files exist, and read the sizes the json lacks
    (written back into ``images`` so the ground truth has them)."""
    src = str(json_path)
    image_ids = _coco_ids(images, "id", f"{src} images")
    file_names = [img.get("file_name") if isinstance(img, dict) else None for img in images]
    for i, name in enumerate(file_names):
        if not isinstance(name, str):
            raise DatasetError(f"{src} images[{i}] (id {image_ids[i]}): missing key 'file_name'")
    if len(set(image_ids.tolist())) != len(image_ids):
        dup = next(int(v) for v, c in zip(*np.unique(image_ids, return_counts=True)) if c > 1)
        raise DatasetError(f"{src}: image id {dup} appears more than once in 'images'")
    folder = _coco_image_dir(json_path, image_dir, file_names)
    listing = files_in(folder)
    paths = [str(folder / name) for name in file_names]
    present = np.array([(name in listing) if "/" not in name else os.path.isfile(p)
                        for name, p in zip(file_names, paths)], bool)
    if len(images) and not present.any():
        raise DatasetError(f"{src}: none of its {len(images)} images is in {folder} (e.g. "
                           f"'{file_names[0]}'); give the image folder")
    issues.add_where("missing_image", ~present, lambda i: f"{paths[i]} (images[{i}] of {json_path.name})")
    heights = np.array([_size_field(img, "height", i, src) for i, img in enumerate(images)], np.int64)
    widths = np.array([_size_field(img, "width", i, src) for i, img in enumerate(images)], np.int64)
    # Every image's header is read (cheap): an unreadable file is found now, not after an epoch,
    # and the boxes are placed in the image as it really is, whatever size the json says.
    given = (heights > 0) & (widths > 0)
    checked = np.flatnonzero(present)
    for i, size in zip(checked, read_sizes([paths[i] for i in checked])):
        if size is None:
            present[i] = False
            issues.add("unreadable_image", paths[i])
            continue
        if given[i] and (heights[i], widths[i]) != size:
            issues.add("size_mismatch", f"{paths[i]} is {size[1]}x{size[0]}, images[{i}] of {json_path.name} "
                                        f"says {widths[i]}x{heights[i]}")
        heights[i], widths[i] = size
        images[i]["height"], images[i]["width"] = size
    need_size = np.flatnonzero(present & ~given)
    if len(need_size):
        issues.add("size_from_file", f"{json_path.name} images[{need_size[0]}]", len(need_size))
    return _CocoImages(image_ids, paths, present, heights, widths)


def _size_field(image: dict, key: str, index: int, src: str) -> int:
    """images[index]'s height or width as an integer; 0 when absent (read from the file)."""
    value = image.get(key, 0) or 0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{src} images[{index}] (id {image.get('id')}): '{key}' must be a number of "
                           f"pixels, got {value!r}; fix it or remove the key (the size is then read from "
                           "the image)") from None
    return int(number) if number == number and number > 0 else 0


@dataclass
class _CocoAnnotations:
    """The json's 'annotations' as arrays, one row per annotation (A of them)."""

    image_index: np.ndarray  # (A,) int64 position of the annotation's image in 'images'
    labels: np.ndarray  # (A,) int64 class index
    xywh: np.ndarray  # (A, 4) float64 as written
    crowd: np.ndarray  # (A,) bool iscrowd or ignore
    area: np.ndarray  # (A,) float64 the 'area' field, w * h where absent


def _coco_annotations(anns: list, image_ids: np.ndarray, category_ids: list[int], where: str) -> _CocoAnnotations:
    """Read the annotations into arrays; an unknown image or category id is an error."""
    n = len(anns)
    ann_image = _coco_ids(anns, "image_id", where) if n else np.zeros(0, np.int64)
    ann_cat = _coco_ids(anns, "category_id", where) if n else np.zeros(0, np.int64)
    xywh = _coco_bboxes(anns, where) if n else np.zeros((0, 4))
    crowd = np.array([_flag(a, "iscrowd", i, where) or _flag(a, "ignore", i, where) for i, a in enumerate(anns)], bool)
    area = np.array([_area(a, i, where) for i, a in enumerate(anns)], np.float64) if n else np.zeros(0)
    area = np.where(np.isnan(area) & np.isfinite(xywh).all(1), xywh[:, 2] * xywh[:, 3], area)

    id_to_index = {int(v): i for i, v in enumerate(image_ids.tolist())}
    image_index = np.array([id_to_index.get(int(v), -1) for v in ann_image.tolist()], np.int64)
    if (image_index < 0).any():
        i = int(np.flatnonzero(image_index < 0)[0])
        raise DatasetError(f"{where}[{i}] (id {anns[i].get('id')}): image_id {ann_image[i]} is not in "
                           "'images'; remove the annotation or add the image")
    cat_to_label = {c: k for k, c in enumerate(category_ids)}
    labels = np.array([cat_to_label.get(int(c), -1) for c in ann_cat.tolist()], np.int64)
    if (labels < 0).any():
        i = int(np.flatnonzero(labels < 0)[0])
        raise DatasetError(f"{where}[{i}] (id {anns[i].get('id')}): category_id {ann_cat[i]} is not in "
                           f"'categories' (ids {category_ids[0]}..{category_ids[-1]}); fix the id or add "
                           "the category")
    return _CocoAnnotations(image_index, labels, xywh, crowd, area)


def _flag(annotation: dict, key: str, index: int, where: str) -> bool:
    """An 0/1 field ('iscrowd', 'ignore'); 0 when absent. "0" / "1" written as text are read as
    numbers and written back as numbers, so that training and pycocotools read them alike (Python
    takes the text "0" as true)."""
    value = annotation.get(key, 0)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        value = annotation[key] = int(value.strip())
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return bool(value)
    raise DatasetError(f"{where}[{index}] (id {annotation.get('id')}): '{key}' must be 0 or 1, got {value!r}")


def _area(annotation: dict, index: int, where: str) -> float:
    """The 'area' field as a number (NaN when absent: width * height is used)."""
    value = annotation.get("area", np.nan)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}[{index}] (id {annotation.get('id')}): 'area' must be a number of square "
                           f"pixels, got {value!r}; fix it or remove the key (width * height is then used)") from None
    if isinstance(value, str):
        annotation["area"] = number  # pycocotools compares it with numbers
    return number


def _coco_filter(ann: _CocoAnnotations, images: _CocoImages, anns: list, where: str,
                 issues: Issues) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decide each annotation's fate and clip the boxes.

    Returns (keep_gt (A,) bool: stays in the ground truth, train_or_ignore (A,) bool: a training
    target or ignore region of its record, boxes (A, 4) float64 xyxy clipped to the image).
    """
    def ann_where(i: int) -> str:
        return f"{where}[{i}] (id {anns[i].get('id')})"

    n = len(ann.labels)
    xywh = ann.xywh
    finite = np.isfinite(xywh).all(1)
    issues.add_where("nonfinite", ~finite, ann_where)
    with np.errstate(invalid="ignore"):
        degenerate = finite & ((xywh[:, 2] <= 0) | (xywh[:, 3] <= 0))
    issues.add_where("degenerate", degenerate, ann_where)
    image_ok = images.present[ann.image_index] if n else np.zeros(0, bool)
    keep_gt = finite & ~degenerate & image_ok

    # training targets: upstream's filter on the original box, then clip to the image
    with np.errstate(invalid="ignore"):
        tiny = keep_gt & ((xywh[:, 2] < 1) | (xywh[:, 3] < 1))
        zero_area_field = keep_gt & ~tiny & (ann.area <= 0)
    issues.add_where("tiny", tiny, ann_where)
    issues.add_where("zero_area_field", zero_area_field, ann_where)
    tiny |= zero_area_field
    issues.add_where("crowd", keep_gt & ann.crowd, ann_where)
    train_or_ignore = keep_gt & ~tiny
    boxes = np.zeros((n, 4), np.float64)
    if n:
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        h_per_ann = images.heights[ann.image_index].astype(np.float64)
        w_per_ann = images.widths[ann.image_index].astype(np.float64)
        limits = np.stack([w_per_ann, h_per_ann, w_per_ann, h_per_ann], 1)
        # NaN boxes are already out (not finite); zeroing them keeps np.clip quiet
        boxes, stuck_out = clip_boxes(np.nan_to_num(xyxy), limits)
        after_w = boxes[:, 2] - boxes[:, 0]
        after_h = boxes[:, 3] - boxes[:, 1]
        outside = train_or_ignore & ((after_w < 1) | (after_h < 1))
        issues.add_where("clipped", train_or_ignore & stuck_out & ~outside, ann_where)
        issues.add_where("outside", outside, ann_where)
        train_or_ignore &= ~outside
    return keep_gt, train_or_ignore, boxes


def _coco_records(images: _CocoImages, ann: _CocoAnnotations, train_or_ignore: np.ndarray,
                  boxes: np.ndarray, json_path: Path, issues: Issues) -> list[ImageRecord]:
    """One record per usable image: its training boxes, and its crowd boxes as ignore regions."""
    records = []
    per_image = np.argsort(ann.image_index, kind="stable")
    starts = np.searchsorted(ann.image_index[per_image], np.arange(len(images.ids) + 1))
    num_empty = 0
    for i in range(len(images.ids)):
        if not images.present[i]:
            continue
        idx = per_image[starts[i]:starts[i + 1]]
        idx = idx[train_or_ignore[idx]]
        is_crowd = ann.crowd[idx]
        target = idx[~is_crowd]
        if len(target) == 0:
            num_empty += 1
        records.append(ImageRecord(
            path=images.paths[i], image_id=int(images.ids[i]), height=int(images.heights[i]),
            width=int(images.widths[i]), boxes=boxes[target].astype(np.float32), labels=ann.labels[target],
            ignore_boxes=boxes[idx[is_crowd]].astype(np.float32), ignore_labels=ann.labels[idx[is_crowd]]))
    issues.add("empty", f"{json_path.name}", num_empty)
    return records


def _coco_ground_truth(data: dict, present: np.ndarray, keep_gt: np.ndarray, area: np.ndarray,
                       where: str, issues: Issues) -> dict:
    """The json's own entries, minus what could not be evaluated fairly; ids made valid for
    pycocotools, 'area' and 'iscrowd' filled in where absent."""
    images, anns = data["images"], data["annotations"]
    gt_images = images if present.all() else [img for img, ok in zip(images, present) if ok]
    gt_anns = anns if keep_gt.all() else [a for a, ok in zip(anns, keep_gt) if ok]
    ann_ids = [a.get("id") for a in gt_anns]
    if any(not isinstance(v, int) or v < 1 for v in ann_ids) or len(set(ann_ids)) != len(ann_ids):
        # pycocotools marks matches by annotation id and treats id 0 as "unmatched"
        issues.add("renumbered_ids", f"{where}", sum(1 for v in ann_ids if not isinstance(v, int) or v < 1) or 1)
        gt_anns = [dict(a, id=k + 1) for k, a in enumerate(gt_anns)]
    for a, ar in zip(gt_anns, area[keep_gt]):
        if "area" not in a:
            a["area"] = float(ar)
        if "iscrowd" not in a:
            a["iscrowd"] = 0
    return {"images": gt_images, "annotations": gt_anns, "categories": data["categories"]}


def load_coco(json_path: Path, image_dir, split: str, issues: Issues) -> DetectionDataset:
    data = _read_coco_json(json_path)
    src = str(json_path)
    category_ids, class_names = _coco_classes(data["categories"], src)
    images = _coco_images(data["images"], json_path, image_dir, issues)
    where = f"{src} annotations"
    ann = _coco_annotations(data["annotations"], images.ids, category_ids, where)
    keep_gt, train_or_ignore, boxes = _coco_filter(ann, images, data["annotations"], where, issues)
    records = _coco_records(images, ann, train_or_ignore, boxes, json_path, issues)
    coco_gt = _coco_ground_truth(data, images.present, keep_gt, ann.area, where, issues)
    return DetectionDataset(class_names, records, coco_gt, category_ids, src, "coco",
                            split_stem(json_path) if json_path.stem.startswith("instances_") else split,
                            issues.counts, issues.examples)
