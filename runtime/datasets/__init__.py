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

One module per job: ``load`` (format detection, the log line), ``coco``, ``yolo``, ``voc`` (one
format each; their docstrings say how each is read), ``convert`` (YOLO / VOC boxes -> records and
COCO ground truth), ``issues`` (the table above), ``records`` (the loaded form), ``image_files``
(suffixes, sizes from headers).
"""
from nanoplus.runtime.datasets.image_files import IMAGE_SUFFIXES, read_image_size
from nanoplus.runtime.datasets.issues import FIXES, ISSUE_TEXT, NOTES, DatasetError
from nanoplus.runtime.datasets.load import check_num_classes, load_dataset
from nanoplus.runtime.datasets.records import DetectionDataset, ImageRecord
from nanoplus.runtime.datasets.voc import VOC_CLASSES

__all__ = ["DatasetError", "DetectionDataset", "FIXES", "IMAGE_SUFFIXES", "ISSUE_TEXT", "ImageRecord", "NOTES",
           "VOC_CLASSES", "check_num_classes", "load_dataset", "read_image_size"]
