"""Detection datasets: COCO json, YOLO txt (Ultralytics layout) and Pascal VOC xml, validated on load.

``load_dataset(data, split)`` returns a :class:`DetectionDataset` whatever the format:

- ``records``: one :class:`ImageRecord` per image, with the boxes a trainer learns from
  (x1, y1, x2, y2 in original pixels, clipped to the image) and contiguous class indices 0..C-1.
  As upstream NanoDet does, crowd annotations and boxes with area <= 0, width < 1 or height < 1
  are left out of ``boxes`` (crowd / VOC ``difficult`` boxes are kept in ``ignore_boxes``).
- ``coco_gt``: the ground truth in COCO format for pycocotools. For a COCO source it is the json's
  own images / annotations / categories (crowd annotations included, so pycocotools ignores
  detections on them exactly as in the official evaluation). YOLO and VOC data are converted:
  category ids are the YOLO class ids (the keys of ``names``) or the VOC class index + 1, and a
  VOC ``difficult`` object becomes an ``iscrowd`` annotation, so that, as in the VOC evaluation,
  detections of it count neither as hits nor as false positives (pycocotools matches a crowd
  region by intersection over the detection's area, a small difference from VOC's IoU). The
  converted ground truth holds exactly the records' (clipped) boxes plus their ignore regions.
- ``category_ids``: class index -> category id of ``coco_gt``.

Problems in the data are either fixed and counted, or refused with a :class:`DatasetError` that
names the file and the line or annotation. All counts go into ONE log line per dataset (and
``dataset.issues``); ``strict=True`` turns every fix into an error.

| problem | what happens |
|---|---|
| image file missing / unreadable | image skipped (records and ground truth), counted |
| box partly outside the image | clipped to the image, counted |
| box entirely outside, zero-area, NaN / inf | dropped, counted |
| class id out of range / unknown category / unknown VOC name with a names list | error |
| float coordinates in VOC xml | accepted, counted (upstream crashes on them) |
| image with no boxes, or no YOLO label file | kept as a negative, counted |
| no YOLO label file for any image of the split | error (the labels are not where expected) |
| duplicate YOLO label rows | duplicates dropped, counted |
| COCO annotation with ``area`` <= 0 but a real box | left out of training as upstream, warned |
| annotation ids missing, < 1 or repeated (COCO) | renumbered in ``coco_gt``, counted |
| unreadable json / YAML / xml, missing keys | error naming the file, line and key |

For a COCO source, ``coco_gt`` keeps every annotation except NaN / zero-area ones and those of
skipped images; boxes sticking out of the image stay as written there (only the records clip).

YOLO: ``path`` is relative to the YAML's folder (else to the working directory); ``train`` /
``val`` / ``test`` are folders (searched recursively), ``.txt`` image lists or lists of those,
relative to ``path``; the label of ``.../images/x.jpg`` is ``.../labels/x.txt`` (beside the image
when there is no ``images`` folder); rows are ``class cx cy w h`` normalised to [0, 1], or
``class x1 y1 x2 y2 ...`` polygons (their bounding box is used).

VOC boxes are taken as written (x1 = xmin, y1 = ymin, x2 = xmax, y2 = ymax), as upstream does.
Image sizes come from the annotations where the format has them (COCO, VOC); for YOLO only the
image header is read (PIL's lazy open when PIL is installed, else a full decode with OpenCV),
corrected for EXIF orientation as ``cv2.imread`` applies it.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from nanoplus.errors import NanoplusError

logger = logging.getLogger("nanoplus.datasets")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm", ".ppm")
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
# A box edge may stick out of the image by this much (pixels) before it counts as "outside":
# official COCO boxes overshoot by float rounding.
_CLIP_TOLERANCE_PX = 0.01


class DatasetError(NanoplusError, ValueError):
    """Data that cannot be read as given; the message names the file, the line or key, and the fix."""


@dataclass
class ImageRecord:
    """One image and its training targets.

    boxes: (n, 4) float32 x1, y1, x2, y2 in original pixels, inside [0, width] x [0, height].
    labels: (n,) int64 class indices 0..C-1.
    ignore_boxes: (m, 4) float32 crowd / VOC-difficult regions, not training targets (upstream's
      gt_bboxes_ignore); ignore_labels: (m,) int64 their classes.
    """

    path: str
    image_id: int
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    ignore_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class DetectionDataset:
    """A validated dataset: records for training and inference, COCO ground truth for evaluation."""

    class_names: list[str]
    records: list[ImageRecord]
    coco_gt: dict  # {"images", "annotations", "categories"} as pycocotools reads them
    category_ids: list[int]  # class index -> category id used in coco_gt and in results files
    source: str  # the file the annotations came from (json, data YAML or VOC split list)
    format: str  # "coco" | "yolo" | "voc"
    split: str
    issues: dict[str, int] = field(default_factory=dict)  # issue kind -> count (see ISSUE_TEXT)
    issue_examples: dict[str, str] = field(default_factory=dict)  # issue kind -> first place seen
    _coco_api: Any = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_boxes(self) -> int:
        return int(sum(len(r.labels) for r in self.records))

    def coco(self):
        """The ground truth as a pycocotools ``COCO`` object (built once, quietly)."""
        if self._coco_api is None:
            from pycocotools.coco import COCO

            api = COCO()
            api.dataset = self.coco_gt
            with contextlib.redirect_stdout(io.StringIO()):
                api.createIndex()
            self._coco_api = api
        return self._coco_api

    def summary(self) -> str:
        """One line: size of the data and every counted fix or note."""
        head = (f"dataset {self.source} [{self.split}, {self.format}]: {len(self.records)} images, "
                f"{self.num_boxes} boxes, {self.num_classes} classes")
        parts = []
        for kind, count in self.issues.items():
            example = self.issue_examples.get(kind) if kind not in NOTES else None
            parts.append(f"{count} {ISSUE_TEXT[kind]}" + (f" (first: {example})" if example else ""))
        return head + ("; " + "; ".join(parts) if parts else "")


# issue kind -> text after the count; FIXES are changes to the user's data (errors when strict),
# the others are notes about data accepted as it is.
ISSUE_TEXT = {
    "missing_image": "image files missing, images skipped",
    "unreadable_image": "image files unreadable, images skipped",
    "clipped": "boxes outside the image clipped",
    "outside": "boxes (almost) entirely outside the image dropped",
    "degenerate": "zero-area boxes dropped",
    "nonfinite": "NaN/inf boxes dropped",
    "duplicate": "duplicate label rows dropped",
    "renumbered_ids": "annotation ids missing, < 1 or repeated, renumbered for pycocotools",
    "tiny": "boxes under 1 px left out of training, as upstream",
    "zero_area_field": "annotations with 'area' <= 0 left out of training as upstream does, although "
                       "their boxes are real (check the json's 'area' values)",
    "crowd": "crowd/difficult boxes ignored in training, kept as ignore regions for evaluation",
    "empty": "images without boxes kept as negatives",
    "no_label_file": "images without a label file kept as negatives",
    "float_coords": "VOC boxes with float coordinates accepted",
    "segments": "polygon labels converted to boxes",
    "size_from_file": "image sizes read from the image files",
}
FIXES = {"missing_image", "unreadable_image", "clipped", "outside", "degenerate", "nonfinite",
         "duplicate", "renumbered_ids"}
# notes about data that is fine as it is: logged at INFO level; everything else at WARNING
NOTES = {"tiny", "crowd", "empty", "no_label_file", "float_coords", "segments", "size_from_file"}


class _Issues:
    """Counts problems instead of logging each one; raises at once in strict mode."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.counts: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def add(self, kind: str, where: str, count: int = 1) -> None:
        if count <= 0:
            return
        if self.strict and kind in FIXES:
            raise DatasetError(f"{where}: {ISSUE_TEXT[kind].split(',')[0]} (strict mode refuses data "
                               "that needs fixing; correct the file or load without strict)")
        self.counts[kind] = self.counts.get(kind, 0) + count
        self.examples.setdefault(kind, where)

    def add_where(self, kind: str, mask: np.ndarray, describe) -> None:
        """Count every True of ``mask``; ``describe(index)`` names the first one."""
        hits = np.flatnonzero(mask)
        if len(hits):
            self.add(kind, describe(int(hits[0])), len(hits))


# ----------------------------------------------------------------------------------------------
# entry points


def load_dataset(data: Union[str, os.PathLike, DetectionDataset], split: str = "val", *,
                 image_dir: Union[str, os.PathLike, None] = None,
                 class_names: Optional[Sequence[str]] = None,
                 strict: bool = False, log: bool = True) -> DetectionDataset:
    """Read a dataset in any supported format and validate it.

    data: a COCO folder (``annotations/instances_{split}*.json`` + an image folder named after the
      json's split, e.g. ``val2017/``), a COCO json file (images in ``image_dir`` or found beside
      it), a YOLO data YAML (``path``, ``train``, ``val``, ``names``), a folder holding one data
      YAML, or a Pascal VOC folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``).
    split: "val", "train", "test" or a full name such as "val2017"; ignored for a json file.
    class_names: VOC only: the class list (its order gives the class indices). Without it, the 20
      standard VOC classes when the data uses only those, else the sorted names found in the xmls.
    strict: refuse (DatasetError) every problem that would otherwise be fixed and counted.
    """
    if isinstance(data, DetectionDataset):
        return data
    path = Path(data).expanduser()
    issues = _Issues(strict)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder (give a COCO folder or json, a YOLO data "
                           "YAML, or a Pascal VOC folder)")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            dataset = _load_coco(path, image_dir, split, issues)
        elif suffix in (".yaml", ".yml"):
            dataset = _load_yolo(path, split, issues)
        else:
            raise DatasetError(f"{path}: unknown dataset file type '{suffix}' (expected a COCO .json or "
                               "a YOLO data .yaml)")
    elif (path / "annotations").is_dir():
        dataset = _load_coco(_find_coco_json(path, split), image_dir, split, issues)
    elif (path / "Annotations").is_dir() and (path / "JPEGImages").is_dir():
        dataset = _load_voc(path, split, class_names, issues)
    else:
        yamls = sorted(p for p in path.iterdir() if p.suffix.lower() in (".yaml", ".yml"))
        if len(yamls) == 1:
            dataset = _load_yolo(yamls[0], split, issues)
        else:
            found = ", ".join(p.name for p in yamls) if yamls else "none"
            raise DatasetError(
                f"{path}: not a dataset folder I can read: expected annotations/instances_{split}*.json "
                f"(COCO), Annotations/ + JPEGImages/ (VOC) or one data YAML (YOLO; found: {found}). "
                "Pass the json or YAML file itself.")
    if not dataset.records:
        raise DatasetError(f"{dataset.source}: split '{dataset.split}' has no usable images"
                           + (f" ({dataset.summary()})" if dataset.issues else ""))
    if log:
        level = logging.WARNING if any(k not in NOTES for k in dataset.issues) else logging.INFO
        logger.log(level, dataset.summary())
    return dataset


def check_num_classes(dataset: DetectionDataset, num_classes: int, source: str,
                      class_names: Optional[Sequence[str]] = None) -> None:
    """Refuse a model whose class count differs from the data's; warn when the names differ.

    source: where ``num_classes`` comes from (a config file, a checkpoint, a model file), for the
    message.
    """
    if int(num_classes) != dataset.num_classes:
        shown = ", ".join(dataset.class_names[:8]) + (", ..." if dataset.num_classes > 8 else "")
        raise DatasetError(
            f"{dataset.source} has {dataset.num_classes} classes ({shown}) but {source} has "
            f"{num_classes}: train with model.num_classes={dataset.num_classes} (class names come "
            "from the data), or use data with the model's classes")
    if class_names is not None and list(class_names) != list(dataset.class_names):
        diff = next(i for i, (a, b) in enumerate(zip(class_names, dataset.class_names)) if a != b)
        logger.warning(f"class names of {source} differ from {dataset.source}: class {diff} is "
                       f"'{class_names[diff]}' in the model and '{dataset.class_names[diff]}' in the data "
                       "(classes are matched by index)")


def read_image_size(path: Union[str, os.PathLike]) -> Optional[tuple[int, int]]:
    """(height, width) of an image as ``cv2.imread`` returns it (EXIF rotation applied), or None
    when the file cannot be read. Reads only the header where PIL is available."""
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        try:
            with Image.open(path) as img:
                width, height = img.size
                orientation = img.getexif().get(0x0112, 1) if img.format in ("JPEG", "MPO") else 1
            if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: cv2.imread swaps the sides
                width, height = height, width
            return int(height), int(width)
        except Exception:  # a format PIL does not know may still be readable by OpenCV
            pass
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else (int(img.shape[0]), int(img.shape[1]))


# ----------------------------------------------------------------------------------------------
# helpers shared by the formats


def _read_sizes(paths: Sequence[str]) -> list[Optional[tuple[int, int]]]:
    """Image sizes for many files: header reads in a few threads, a progress bar for big sets."""
    if len(paths) < 64:
        return [read_image_size(p) for p in paths]
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(tqdm(pool.map(read_image_size, paths, chunksize=64), total=len(paths),
                         desc="reading image sizes", unit="img", leave=False,
                         disable=len(paths) < 2000))


def _clip_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip (n, 4) xyxy boxes to the image; also says which ones stuck out by more than the
    tolerance."""
    limits = np.array([width, height, width, height], np.float64)
    out = ((boxes[:, :2] < -_CLIP_TOLERANCE_PX).any(1)
           | (boxes[:, 2:] > limits[2:] + _CLIP_TOLERANCE_PX).any(1))
    clipped = np.clip(boxes, 0.0, limits)
    return clipped, out


def _files_in(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def _finish(class_names, category_ids, records, gt_images, gt_anns, source, fmt, split, issues):
    """Assemble a converted (YOLO / VOC) dataset; categories are built from the class list."""
    coco_gt = {"images": gt_images, "annotations": gt_anns,
               "categories": [{"id": int(c), "name": str(n), "supercategory": ""}
                              for c, n in zip(category_ids, class_names)]}
    return DetectionDataset(list(class_names), records, coco_gt, list(category_ids), str(source), fmt,
                            split, issues.counts, issues.examples)


# ----------------------------------------------------------------------------------------------
# COCO


def _split_stem(json_path: Path) -> str:
    stem = json_path.stem
    return stem[len("instances_"):] if stem.startswith("instances_") else stem


def _find_coco_json(root: Path, split: str) -> Path:
    folder = root / "annotations"
    jsons = sorted(folder.glob("*.json"))
    exact = [p for p in jsons if _split_stem(p) == split]
    if exact:
        return exact[0]
    starting = [p for p in jsons if p.stem.startswith(f"instances_{split}")]
    if len(starting) == 1:
        return starting[0]
    names = ", ".join(p.name for p in jsons) or "none"
    if starting:
        raise DatasetError(f"{folder}: split '{split}' matches several files ({names}); name one "
                           f"exactly, e.g. --split {_split_stem(starting[-1])}")
    raise DatasetError(f"{folder}: no annotations/instances_{split}*.json for split '{split}' "
                       f"(found: {names}); choose another split or pass the json file")


def _coco_image_dir(json_path: Path, image_dir, file_names: Sequence[str]) -> Path:
    """The folder the json's file_names are relative to: given, or the usual COCO places."""
    if image_dir is not None:
        folder = Path(image_dir).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"{folder}: image folder not found (given for {json_path})")
        return folder
    split_name = _split_stem(json_path)
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


def _load_coco(json_path: Path, image_dir, split: str, issues: _Issues) -> DetectionDataset:
    data = _read_json(json_path)
    src = str(json_path)
    if not isinstance(data, dict):
        raise DatasetError(f"{src}: expected a COCO object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{src}: missing key '{key}' (a COCO detection json needs images, "
                               "annotations and categories)")
        if not isinstance(data[key], list):
            raise DatasetError(f"{src}: '{key}' must be a list")
    images, anns, cats = data["images"], data["annotations"], data["categories"]
    if not cats:
        raise DatasetError(f"{src}: 'categories' is empty; list the classes as {{'id', 'name'}}")

    # classes: sorted category ids, as upstream (id -> position)
    cat_ids = _coco_ids(cats, "id", f"{src} categories")
    for i, c in enumerate(cats):
        if "name" not in c:
            raise DatasetError(f"{src} categories[{i}] (id {c['id']}): missing key 'name'")
    if len(set(cat_ids.tolist())) != len(cat_ids):
        raise DatasetError(f"{src}: 'categories' repeats an id; each category needs its own id")
    order = np.argsort(cat_ids, kind="stable")
    category_ids = cat_ids[order].tolist()
    class_names = [str(cats[i]["name"]) for i in order]

    # images
    image_ids = _coco_ids(images, "id", f"{src} images")
    file_names = [img.get("file_name") if isinstance(img, dict) else None for img in images]
    for i, name in enumerate(file_names):
        if not isinstance(name, str):
            raise DatasetError(f"{src} images[{i}] (id {image_ids[i]}): missing key 'file_name'")
    if len(set(image_ids.tolist())) != len(image_ids):
        dup = next(int(v) for v, c in zip(*np.unique(image_ids, return_counts=True)) if c > 1)
        raise DatasetError(f"{src}: image id {dup} appears more than once in 'images'")
    folder = _coco_image_dir(json_path, image_dir, file_names)
    listing = _files_in(folder)
    paths = [str(folder / name) for name in file_names]
    present = np.array([(name in listing) if "/" not in name else os.path.isfile(p)
                        for name, p in zip(file_names, paths)], bool)
    if len(images) and not present.any():
        raise DatasetError(f"{src}: none of its {len(images)} images is in {folder} (e.g. "
                           f"'{file_names[0]}'); give the image folder")
    issues.add_where("missing_image", ~present, lambda i: f"{paths[i]} (images[{i}] of {json_path.name})")
    heights = np.array([img.get("height", 0) or 0 for img in images], np.int64)
    widths = np.array([img.get("width", 0) or 0 for img in images], np.int64)
    need_size = np.flatnonzero(present & ((heights <= 0) | (widths <= 0)))
    if len(need_size):
        for i, size in zip(need_size, _read_sizes([paths[i] for i in need_size])):
            if size is None:
                present[i] = False
                issues.add("unreadable_image", paths[i])
            else:
                heights[i], widths[i] = size
                images[i]["height"], images[i]["width"] = size
        issues.add("size_from_file", f"{json_path.name} images[{need_size[0]}]", len(need_size))

    # annotations, vectorised: 860k COCO train annotations load in seconds
    where = f"{src} annotations"
    n = len(anns)
    ann_image = _coco_ids(anns, "image_id", where) if n else np.zeros(0, np.int64)
    ann_cat = _coco_ids(anns, "category_id", where) if n else np.zeros(0, np.int64)
    xywh = _coco_bboxes(anns, where) if n else np.zeros((0, 4))
    crowd = np.array([bool(a.get("iscrowd", 0)) or bool(a.get("ignore", 0)) for a in anns], bool)
    area = np.array([a.get("area", np.nan) for a in anns], np.float64) if n else np.zeros(0)
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

    def ann_where(i: int) -> str:
        return f"{where}[{i}] (id {anns[i].get('id')})"

    finite = np.isfinite(xywh).all(1)
    issues.add_where("nonfinite", ~finite, ann_where)
    with np.errstate(invalid="ignore"):
        degenerate = finite & ((xywh[:, 2] <= 0) | (xywh[:, 3] <= 0))
    issues.add_where("degenerate", degenerate, ann_where)
    image_ok = present[image_index] if n else np.zeros(0, bool)
    keep_gt = finite & ~degenerate & image_ok

    # training targets: upstream's filter on the original box, then clip to the image
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1) if n else np.zeros((0, 4))
    with np.errstate(invalid="ignore"):
        tiny = keep_gt & ((xywh[:, 2] < 1) | (xywh[:, 3] < 1))
        zero_area_field = keep_gt & ~tiny & (area <= 0)
    issues.add_where("tiny", tiny, ann_where)
    issues.add_where("zero_area_field", zero_area_field, ann_where)
    tiny |= zero_area_field
    issues.add_where("crowd", keep_gt & crowd, ann_where)
    train_or_ignore = keep_gt & ~tiny
    records_boxes = np.zeros((n, 4), np.float64)
    outside = np.zeros(n, bool)
    if n:
        h_per_ann = heights[image_index].astype(np.float64)
        w_per_ann = widths[image_index].astype(np.float64)
        limits = np.stack([w_per_ann, h_per_ann, w_per_ann, h_per_ann], 1)
        stuck_out = (xyxy[:, :2] < -_CLIP_TOLERANCE_PX).any(1) | (xyxy[:, 2:] > limits[:, 2:] + _CLIP_TOLERANCE_PX).any(1)
        records_boxes = np.clip(np.nan_to_num(xyxy), 0.0, limits)
        after_w = records_boxes[:, 2] - records_boxes[:, 0]
        after_h = records_boxes[:, 3] - records_boxes[:, 1]
        outside = train_or_ignore & ((after_w < 1) | (after_h < 1))
        issues.add_where("clipped", train_or_ignore & stuck_out & ~outside, ann_where)
        issues.add_where("outside", outside, ann_where)
    train_or_ignore &= ~outside

    # group per image
    records = []
    per_image = np.argsort(image_index, kind="stable")
    starts = np.searchsorted(image_index[per_image], np.arange(len(images) + 1))
    num_empty = 0
    for i in range(len(images)):
        if not present[i]:
            continue
        idx = per_image[starts[i]:starts[i + 1]]
        idx = idx[train_or_ignore[idx]]
        is_crowd = crowd[idx]
        target = idx[~is_crowd]
        if len(target) == 0:
            num_empty += 1
        records.append(ImageRecord(
            path=paths[i], image_id=int(image_ids[i]), height=int(heights[i]), width=int(widths[i]),
            boxes=records_boxes[target].astype(np.float32), labels=labels[target],
            ignore_boxes=records_boxes[idx[is_crowd]].astype(np.float32), ignore_labels=labels[idx[is_crowd]]))
    issues.add("empty", f"{json_path.name}", num_empty)

    # ground truth: the json's own entries, minus what could not be evaluated fairly
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
    coco_gt = {"images": gt_images, "annotations": gt_anns, "categories": cats}
    return DetectionDataset(class_names, records, coco_gt, category_ids, src, "coco",
                            _split_stem(json_path) if json_path.stem.startswith("instances_") else split,
                            issues.counts, issues.examples)


# ----------------------------------------------------------------------------------------------
# YOLO (Ultralytics layout)


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


def _yolo_image_files(entry: Any, root: Path, yaml_path: Path, key: str, issues: _Issues) -> list[str]:
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
                       issues: _Issues) -> tuple[np.ndarray, np.ndarray]:
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


def _load_yolo(yaml_path: Path, split: str, issues: _Issues) -> DetectionDataset:
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
    sizes = _read_sizes(image_files)
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
        record = _converted_record(path, len(records) + 1, height, width, boxes, labels,
                                   np.zeros((0, 4)), np.zeros(0, np.int64), label_path, issues,
                                   count_empty=labelled)
        records.append(record)
        _add_gt(gt_images, gt_anns, record, os.path.relpath(path, root), yolo_ids)
    return _finish(class_names, yolo_ids, records, gt_images, gt_anns, yaml_path, "yolo", split, issues)


def _converted_record(path, image_id, height, width, boxes, labels, ignore, ignore_labels, where,
                      issues: _Issues, count_empty=True) -> ImageRecord:
    """Clip, apply upstream's < 1 px rule and build the record (YOLO and VOC)."""
    record_boxes, record_labels = [], []
    for group, group_labels in ((boxes, labels), (ignore, ignore_labels)):
        clipped, stuck_out = _clip_boxes(np.asarray(group, np.float64).reshape(-1, 4), height, width)
        w = clipped[:, 2] - clipped[:, 0]
        h = clipped[:, 3] - clipped[:, 1]
        orig_w = group[:, 2] - group[:, 0] if len(group) else w
        orig_h = group[:, 3] - group[:, 1] if len(group) else h
        tiny = (orig_w < 1) | (orig_h < 1)
        outside = ~tiny & ((w < 1) | (h < 1))
        issues.add("tiny", where, int(tiny.sum()))
        issues.add("outside", where, int(outside.sum()))
        issues.add("clipped", where, int((stuck_out & ~tiny & ~outside).sum()))
        keep = ~tiny & ~outside
        record_boxes.append(clipped[keep].astype(np.float32))
        record_labels.append(np.asarray(group_labels, np.int64)[keep])
    if len(record_labels[0]) == 0 and count_empty:
        issues.add("empty", where)
    return ImageRecord(path=str(path), image_id=int(image_id), height=int(height), width=int(width),
                       boxes=record_boxes[0], labels=record_labels[0], ignore_boxes=record_boxes[1],
                       ignore_labels=record_labels[1])


def _add_gt(gt_images: list, gt_anns: list, record: ImageRecord, file_name: str,
            category_ids: Sequence[int]) -> None:
    """Converted ground truth of one record: its boxes, and its ignore boxes as crowd regions."""
    gt_images.append({"id": record.image_id, "file_name": file_name, "height": record.height,
                      "width": record.width})
    for boxes, labels, crowd in ((record.boxes, record.labels, 0), (record.ignore_boxes, record.ignore_labels, 1)):
        for box, label in zip(boxes.tolist(), labels.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": record.image_id,
                            "category_id": int(category_ids[label]), "bbox": [box[0], box[1], w, h],
                            "area": w * h, "iscrowd": crowd})


# ----------------------------------------------------------------------------------------------
# Pascal VOC


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


def _load_voc(root: Path, split: str, class_names: Optional[Sequence[str]], issues: _Issues) -> DetectionDataset:
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

    listing = _files_in(img_dir)
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
        if width <= 0 or height <= 0:
            size = read_image_size(path)
            if size is None:
                issues.add("unreadable_image", str(path))
                continue
            height, width = size
            issues.add("size_from_file", str(xml_path))
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
        record = _converted_record(
            path, len(records) + 1, height, width, np.asarray(boxes, np.float64).reshape(-1, 4),
            np.asarray(labels, np.int64), np.asarray(ignore, np.float64).reshape(-1, 4),
            np.asarray(ignore_labels, np.int64), str(xml_path), issues)
        records.append(record)
        _add_gt(gt_images, gt_anns, record, file_name, category_ids)
    return _finish(class_names, category_ids, records, gt_images, gt_anns, split_file, "voc", split, issues)
