"""Draw detections on an image: one readable colour per class, a label with name and score."""
from __future__ import annotations

import colorsys

import cv2
import numpy as np


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A BGR colour per class: hues spread by the golden ratio so neighbouring ids differ."""
    hue = (int(class_id) * 0.618033988749895 + 0.1) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def _text_colour(bgr: tuple[int, int, int]) -> tuple[int, int, int]:
    b, g, r = bgr
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label_rectangles(boxes, sizes, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Where each label goes: (left, top, right, bottom), in the order given (best first).

    boxes: (k, 4) integer x1y1x2y2; sizes: (k,) (label width, label height) in pixels. A label sits
    above its box's top-left corner (inside the box at the image's top edge); one that would cover
    an earlier label moves down, a label height at a time, so labels of boxes that coincide (a car
    that is also a truck) stack instead of hiding each other.
    """
    placed: list[tuple[int, int, int, int]] = []
    for (x1, y1, _x2, _y2), (w, h) in zip(boxes, sizes):
        left = min(max(int(x1), 0), max(0, width - w))
        top = int(y1) - h if int(y1) - h >= 0 else max(int(y1), 0)
        rect = (left, top, left + w, top + h)
        for _ in range(len(placed)):
            if not any(_overlaps(rect, other) for other in placed) or rect[3] + h > height:
                break
            rect = (left, rect[1] + h, left + w, rect[3] + h)
        placed.append(rect)
    return placed


def draw_detections(img_bgr: np.ndarray, detections, show_scores: bool = True) -> np.ndarray:
    """A copy of ``img_bgr`` (h, w, 3) uint8 with boxes and 'name 0.93' labels drawn.

    detections: anything with ``boxes`` (k, 4) original pixels, ``scores``, ``class_ids`` and
    ``class_names`` (best first). Line width and text size scale with the image.
    """
    out = img_bgr.copy()
    height, width = out.shape[:2]
    thickness = max(1, round(0.002 * (height + width) / 2 + 0.5))
    font_scale = max(0.4, min(height, width) / 900)
    font = cv2.FONT_HERSHEY_SIMPLEX
    count = len(detections.scores)
    boxes = [tuple(int(round(float(v))) for v in detections.boxes[i]) for i in range(count)]
    colours = [class_colour(int(detections.class_ids[i])) for i in range(count)]
    labels, sizes, baselines = [], [], []
    for i in range(count):
        label = detections.class_names[i] if i < len(detections.class_names) else str(int(detections.class_ids[i]))
        if show_scores:
            label = f"{label} {float(detections.scores[i]):.2f}"
        (tw, th), baseline = cv2.getTextSize(label, font, font_scale, max(1, thickness - 1))
        labels.append(label)
        sizes.append((tw + 2, th + baseline + 2))
        baselines.append(baseline)
    rects = label_rectangles(boxes, sizes, width, height)
    # low scores first, so the best boxes and labels end on top
    for i in reversed(range(count)):
        x1, y1, x2, y2 = boxes[i]
        cv2.rectangle(out, (x1, y1), (x2, y2), colours[i], thickness, cv2.LINE_AA)
    for i in reversed(range(count)):
        left, top, right, bottom = rects[i]
        cv2.rectangle(out, (left, top), (right, bottom), colours[i], -1)
        cv2.putText(out, labels[i], (left + 1, bottom - baselines[i] - 1), font, font_scale,
                    _text_colour(colours[i]), max(1, thickness - 1), cv2.LINE_AA)
    return out
