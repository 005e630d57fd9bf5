"""The 80 COCO detection classes in model order (the names of the official annotation files), and
their official category ids.

Published NanoDet-Plus COCO models carry no class names; a foreign model with 80 classes gets these.
Model class index i is COCO category id ``COCO_CATEGORY_IDS[i]`` (ids run 1..90 with gaps), which
is what a COCO results file needs.
"""
from __future__ import annotations

COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

# Official COCO category ids (1..90; 12, 26, 29, 30, 45, 66, 68, 69, 71 and 83 are unused).
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))


def is_coco(class_names) -> bool:
    """True when ``class_names`` are exactly the 80 COCO names in COCO order."""
    return tuple(class_names) == COCO_CLASS_NAMES
