"""``load_dataset``: which format a path holds, and the one log line per loaded dataset;
``check_num_classes``: does a model fit the data."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

from nanoplus.runtime.datasets.coco import find_coco_json, load_coco
from nanoplus.runtime.datasets.issues import NOTES, DatasetError, Issues
from nanoplus.runtime.datasets.records import DetectionDataset
from nanoplus.runtime.datasets.voc import load_voc
from nanoplus.runtime.datasets.yolo import load_yolo

logger = logging.getLogger("nanoplus.datasets")


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
    issues = Issues(strict)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder (give a COCO folder or json, a YOLO data "
                           "YAML, or a Pascal VOC folder)")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            dataset = load_coco(path, image_dir, split, issues)
        elif suffix in (".yaml", ".yml"):
            dataset = load_yolo(path, split, issues)
        else:
            raise DatasetError(f"{path}: unknown dataset file type '{suffix}' (expected a COCO .json or "
                               "a YOLO data .yaml)")
    elif (path / "annotations").is_dir():
        dataset = load_coco(find_coco_json(path, split), image_dir, split, issues)
    elif (path / "Annotations").is_dir() and (path / "JPEGImages").is_dir():
        dataset = load_voc(path, split, class_names, issues)
    else:
        yamls = sorted(p for p in path.iterdir() if p.suffix.lower() in (".yaml", ".yml"))
        if len(yamls) == 1:
            dataset = load_yolo(yamls[0], split, issues)
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
