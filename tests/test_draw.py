"""Drawing detections: labels of coinciding boxes stack instead of covering each other."""
from __future__ import annotations

import numpy as np

from nanoplus.runtime.detector import Detections
from nanoplus.runtime.draw import draw_detections, label_rectangles


def _intersect(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_labels_of_one_box_stack_without_overlapping():
    boxes = [(50, 40, 200, 150)] * 3  # car, truck, bus on one object
    rects = label_rectangles(boxes, [(60, 12), (70, 12), (50, 12)], width=320, height=240)
    assert rects[0] == (50, 28, 110, 40)  # the best label above the box, at its left edge
    for i in range(3):
        for j in range(i):
            assert not _intersect(rects[i], rects[j]), (rects[i], rects[j])
    assert rects[1][1] == rects[0][3] and rects[2][1] == rects[1][3]  # stacked, one label height apart


def test_labels_stay_inside_the_image():
    rects = label_rectangles([(-5, 2, 30, 30), (300, 100, 330, 130)], [(40, 12), (40, 12)], width=320, height=240)
    assert rects[0] == (0, 2, 40, 14)  # no room above: inside the box, moved right onto the image
    assert rects[1][2] <= 320 and rects[1][0] == 280


def test_draw_marks_the_box_and_keeps_the_input():
    img = np.zeros((120, 160, 3), np.uint8)
    dets = Detections(boxes=np.array([[20, 30, 100, 90], [20, 30, 100, 90]], np.float32),
                      scores=np.array([0.9, 0.8], np.float32), class_ids=np.array([2, 7]),
                      class_names=["car", "truck"])
    out = draw_detections(img, dets)
    assert out.shape == img.shape and not img.any()  # a copy; the input is untouched
    assert out[60, 20].any() and out[60, 100].any()  # the box's left and right edges are drawn
    assert not out[60, 60].any()  # its inside is not filled
