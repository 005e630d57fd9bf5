"""NanoDet-Plus detection with ONNX Runtime, in one file: numpy + OpenCV + onnxruntime, nothing else.

Copy this file into your product. It runs an ONNX file exported by ``nanoplus export`` and reads
everything it needs from the file itself (``metadata_props['nanoplus']``: class names, input size,
mean/std, strides, resize mode), so it gives the same detections as ``nanoplus infer``.

    pip install numpy opencv-python-headless onnxruntime
    python onnxruntime_detect.py model.onnx dog.jpg [--score-thr 0.35] [--save drawn.jpg]

    from onnxruntime_detect import NanoDetPlus
    model = NanoDetPlus("model.onnx")
    for box, score, class_name in model(cv2.imread("dog.jpg")):   # box: x1, y1, x2, y2 in pixels
        ...

The model: input (1, 3, H, W) float32, the image warped to H x W by one matrix (``stretch``:
each axis scaled on its own; ``letterbox``: one scale, the image at the top-left, zeros around),
then (v - mean) / std per channel. Output (1, N, C + 4 * (reg_max + 1)): for each of N prior
points (every stride's grid, row by row; the point is the cell's top-left corner), C class scores
(sigmoid already applied) and, per box side (left, top, right, bottom), reg_max + 1 bin logits
whose softmax expectation times the stride is the distance from the point to that side.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import cv2
import numpy as np
import onnxruntime as ort


class NanoDetPlus:
    def __init__(self, onnx_path: str, score_thr: float = 0.35, iou_thr: float = 0.6, max_det: int = 100,
                 threads: int = 0):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        text = self.session.get_modelmeta().custom_metadata_map.get("nanoplus")
        if text is None:
            raise ValueError(f"{onnx_path}: no 'nanoplus' metadata; export the model with 'nanoplus export'")
        meta = json.loads(text)
        self.class_names = list(meta["class_names"])
        self.input_h, self.input_w = (int(v) for v in meta["input_hw"])
        self.strides = [int(s) for s in meta.get("strides", [8, 16, 32, 64])]
        self.num_bins = int(meta.get("reg_max", 7)) + 1
        self.mean = np.array(meta["mean"], np.float64)
        self.std = np.array(meta["std"], np.float64)
        self.to_rgb = meta.get("color_order", "BGR") == "RGB"
        self.letterbox = meta.get("resize_mode", "stretch") == "letterbox"
        self.logits = meta.get("score_activation", "sigmoid") == "none"
        self.input_name = self.session.get_inputs()[0].name
        self.score_thr, self.iou_thr, self.max_det = score_thr, iou_thr, max_det
        self.points = self._prior_points()

    def _prior_points(self) -> np.ndarray:
        """(N, 3) float32 rows (x, y, stride), in the model's output order."""
        levels = []
        for s in self.strides:
            rows, cols = math.ceil(self.input_h / s), math.ceil(self.input_w / s)
            ys, xs = np.mgrid[0:rows, 0:cols]
            levels.append(np.stack([xs.ravel() * s, ys.ravel() * s, np.full(rows * cols, s)], 1))
        return np.concatenate(levels).astype(np.float32)

    def preprocess(self, image_bgr: np.ndarray):
        """(h, w, 3) uint8 BGR -> ((1, 3, H, W) float32 input, (sx, sy) scales original -> input)."""
        h, w = image_bgr.shape[:2]
        sx, sy = self.input_w / w, self.input_h / h
        if self.letterbox:
            sx = sy = min(sx, sy)
        matrix = np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], np.float64)
        warped = cv2.warpPerspective(image_bgr, matrix, (self.input_w, self.input_h), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if self.to_rgb:
            warped = cv2.cvtColor(warped, cv2.COLOR_BGR2RGB)
        scale = (1.0 / self.std).astype(np.float32)
        shift = (-self.mean / self.std).astype(np.float32)
        blob = warped.astype(np.float32) * scale + shift
        return np.ascontiguousarray(blob.transpose(2, 0, 1)[None]), (sx, sy)

    def __call__(self, image_bgr: np.ndarray) -> list[tuple[list[float], float, str]]:
        """Detections, best first: [([x1, y1, x2, y2] in original pixels, score, class name), ...]."""
        blob, (sx, sy) = self.preprocess(image_bgr)
        output = self.session.run(None, {self.input_name: blob})[0][0]  # (N, C + 4 * bins)
        c = len(self.class_names)
        scores = output[:, :c].astype(np.float32)
        if self.logits:
            scores = 1.0 / (1.0 + np.exp(-scores))
        points, classes = np.nonzero(scores > self.score_thr)  # every (point, class) above the threshold
        if len(points) == 0:
            return []
        cand_scores = scores[points, classes]
        boxes = self._decode(output[points, c:], self.points[points])
        keep = self._nms(boxes, cand_scores, classes)
        h, w = image_bgr.shape[:2]
        boxes = boxes[keep] / np.array([sx, sy, sx, sy], np.float64)
        boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
        return [(box.tolist(), float(s), self.class_names[k])
                for box, s, k in zip(boxes, cand_scores[keep], classes[keep])]

    def _decode(self, bins: np.ndarray, points: np.ndarray) -> np.ndarray:
        """(k, 4 * bins) logits + (k, 3) points -> (k, 4) x1y1x2y2 in input pixels, inside the input."""
        logits = bins.reshape(len(bins), 4, self.num_bins).astype(np.float32)
        exp = np.exp(logits - logits.max(axis=2, keepdims=True))
        distance = (exp * np.arange(self.num_bins, dtype=np.float32)).sum(2) / exp.sum(2)  # (k, 4) in strides
        distance *= points[:, 2:3]
        x, y = points[:, 0], points[:, 1]
        boxes = np.stack([x - distance[:, 0], y - distance[:, 1], x + distance[:, 2], y + distance[:, 3]], 1)
        return np.clip(boxes, 0, [self.input_w, self.input_h, self.input_w, self.input_h])

    def _nms(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Greedy NMS per class (IoU > iou_thr suppresses), best first; indices of at most max_det kept."""
        order = np.argsort(-scores, kind="stable")
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = []
        suppressed = np.zeros(len(boxes), bool)
        for i in order:
            if suppressed[i]:
                continue
            keep.append(i)
            if len(keep) == self.max_det:
                break
            w = np.clip(np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]), 0, None)
            h = np.clip(np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]), 0, None)
            inter = w * h
            iou = inter / np.maximum(areas[i] + areas - inter, 1e-12)
            suppressed |= (iou > self.iou_thr) & (classes == classes[i])
        return np.array(keep, np.int64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="ONNX file exported by nanoplus")
    parser.add_argument("image", help="an image file")
    parser.add_argument("--score-thr", type=float, default=0.35)
    parser.add_argument("--iou-thr", type=float, default=0.6)
    parser.add_argument("--max-det", type=int, default=100)
    parser.add_argument("--save", help="write the image with the boxes drawn here")
    args = parser.parse_args()
    # np.fromfile + imdecode: works for any file name (cv2.imread crashes on names that are not UTF-8)
    image = cv2.imdecode(np.fromfile(args.image, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        print(f"{args.image}: not an image OpenCV can decode", file=sys.stderr)
        return 2
    model = NanoDetPlus(args.model, args.score_thr, args.iou_thr, args.max_det)
    detections = model(image)
    for box, score, name in detections:
        print(f"{name:15s} {score:.3f}  [{box[0]:.1f}, {box[1]:.1f}, {box[2]:.1f}, {box[3]:.1f}]")
    if args.save:
        for box, score, name in detections:
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            cv2.rectangle(image, (x1, y1), (x2, y2), (0, 200, 0), 2)
            cv2.putText(image, f"{name} {score:.2f}", (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 200, 0), 1)
        ok, encoded = cv2.imencode(args.save[args.save.rfind("."):] if "." in args.save else ".jpg", image)
        encoded.tofile(args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
