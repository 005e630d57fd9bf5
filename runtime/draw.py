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


def draw_detections(img_bgr: np.ndarray, detections, show_scores: bool = True) -> np.ndarray:
    """A copy of ``img_bgr`` (h, w, 3) uint8 with boxes and 'name 0.93' labels drawn.

    detections: anything with ``boxes`` (k, 4) original pixels, ``scores``, ``class_ids`` and
    ``class_names``. Line width and text size scale with the image.
    """
    out = img_bgr.copy()
    height, width = out.shape[:2]
    thickness = max(1, round(0.002 * (height + width) / 2 + 0.5))
    font_scale = max(0.4, min(height, width) / 900)
    font = cv2.FONT_HERSHEY_SIMPLEX
    # draw low scores first so the best boxes end on top
    for i in reversed(range(len(detections.scores))):
        x1, y1, x2, y2 = (int(round(float(v))) for v in detections.boxes[i])
        colour = class_colour(int(detections.class_ids[i]))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        label = detections.class_names[i] if i < len(detections.class_names) else str(int(detections.class_ids[i]))
        if show_scores:
            label = f"{label} {float(detections.scores[i]):.2f}"
        (tw, th), baseline = cv2.getTextSize(label, font, font_scale, max(1, thickness - 1))
        top = y1 - th - baseline - 2 if y1 - th - baseline - 2 >= 0 else y1  # above the box, else inside
        left = min(max(x1, 0), max(0, width - tw - 2))
        cv2.rectangle(out, (left, top), (left + tw + 2, top + th + baseline + 2), colour, -1)
        cv2.putText(out, label, (left + 1, top + th + 1), font, font_scale, _text_colour(colour),
                    max(1, thickness - 1), cv2.LINE_AA)
    return out
