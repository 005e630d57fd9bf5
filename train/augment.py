"""Training augmentation: one random perspective warp per sample, then colour jitter (SPEC §2).

The warp is a single 3x3 matrix, composed as upstream NanoDet-Plus does it (its ``ShapeTransform``):

    M = Resize @ T @ F @ Sh @ R @ Str @ Scl @ P @ C

C moves the image centre to the origin; P perspective, Scl scale, Str independent w/h stretch,
R rotation, Sh shear, F horizontal flip; T moves the centre back with a random translation
(fractions of the source size); Resize is the runtime's own resize matrix
(``nanoplus.runtime.preprocess.get_warp_matrix``: stretch, or letterbox with keep_ratio).
With every random part at its identity the matrix IS the runtime's pre-processing matrix, and
the image goes through the runtime's ``warp_image`` and ``normalize_to_blob``: what is trained is
what is deployed. Validation samples use ``nanoplus.runtime.preprocess.preprocess`` unchanged.

Colour jitter follows upstream's ``color_aug_and_norm``: on the warped image as float (no clipping,
as upstream), each of brightness (+U(-b, b) of full scale), contrast (x U(lo, hi)) and saturation
(HSV S channel x U(lo, hi)) with probability ``colour_prob``, then normalisation.

Randomness comes from an explicit ``numpy.random.Generator`` (the dataset seeds one per sample
from (seed, epoch, index)), so augmentation does not depend on worker count or process rank.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from nanoplus.runtime.preprocess import get_warp_matrix, normalize_to_blob, warp_image
from nanoplus.train.config import AugmentConfig


def random_warp_matrix(
    src_hw: tuple[int, int],
    dst_hw: tuple[int, int],
    aug: AugmentConfig,
    keep_ratio: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """One random warp from source pixels to network-input pixels.

    src_hw, dst_hw: (height, width). Returns (3, 3) float64.
    """
    height, width = int(src_hw[0]), int(src_hw[1])

    centre = np.eye(3)
    centre[0, 2] = -width / 2
    centre[1, 2] = -height / 2

    perspective = np.eye(3)
    perspective[2, 0] = rng.uniform(-aug.perspective, aug.perspective)
    perspective[2, 1] = rng.uniform(-aug.perspective, aug.perspective)

    scale = np.eye(3)
    s = rng.uniform(aug.scale[0], aug.scale[1])
    scale[0, 0] = scale[1, 1] = s

    stretch = np.eye(3)
    stretch[0, 0] = rng.uniform(aug.stretch[0][0], aug.stretch[0][1])
    stretch[1, 1] = rng.uniform(aug.stretch[1][0], aug.stretch[1][1])

    rotation = np.eye(3)
    # Same as cv2.getRotationMatrix2D(center=(0, 0), angle=a, scale=1): positive a turns
    # anticlockwise on screen (image y points down).
    a = math.radians(rng.uniform(-aug.rotation, aug.rotation))
    rotation[:2, :2] = [[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]

    shear = np.eye(3)
    shear[0, 1] = math.tan(math.radians(rng.uniform(-aug.shear, aug.shear)))
    shear[1, 0] = math.tan(math.radians(rng.uniform(-aug.shear, aug.shear)))

    flip = np.eye(3)
    if rng.random() < aug.flip:
        flip[0, 0] = -1

    translate = np.eye(3)
    translate[0, 2] = rng.uniform(0.5 - aug.translate, 0.5 + aug.translate) * width
    translate[1, 2] = rng.uniform(0.5 - aug.translate, 0.5 + aug.translate) * height

    resize = get_warp_matrix((height, width), tuple(dst_hw), keep_ratio=keep_ratio)
    return resize @ translate @ flip @ shear @ rotation @ stretch @ scale @ perspective @ centre


def warp_boxes(boxes: np.ndarray, matrix: np.ndarray, dst_hw: tuple[int, int]) -> np.ndarray:
    """Warp x1y1x2y2 boxes: the 4 corners through ``matrix``, their axis-aligned hull, clipped.

    boxes: (n, 4) in source pixels; returns (n, 4) float32 in destination pixels, clipped to
    [0, W] x [0, H].
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    if n == 0:
        return np.zeros((0, 4), np.float32)
    corners = np.ones((n * 4, 3))
    corners[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    corners = corners @ matrix.T
    corners = (corners[:, :2] / corners[:, 2:3]).reshape(n, 8)
    xs, ys = corners[:, 0::2], corners[:, 1::2]
    out = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, dst_hw[1])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, dst_hw[0])
    return out.astype(np.float32)


def colour_jitter(img: np.ndarray, aug: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation on a BGR image.

    img: (H, W, 3) uint8 or float; returns (H, W, 3) float32 on the 0..255 scale, not clipped
    (upstream normalises the unclipped values too).
    """
    out = img.astype(np.float32)
    if rng.random() < aug.colour_prob:
        # upstream adds U(-b, b) to the image scaled to [0, 1]
        out += np.float32(rng.uniform(-aug.brightness, aug.brightness) * 255.0)
    if rng.random() < aug.colour_prob:
        out *= np.float32(rng.uniform(aug.contrast[0], aug.contrast[1]))
    if rng.random() < aug.colour_prob:
        # OpenCV's float HSV is homogeneous in V, so the 0..255 scale gives upstream's result x255
        hsv = cv2.cvtColor(out, cv2.COLOR_BGR2HSV)
        hsv[..., 1] *= np.float32(rng.uniform(aug.saturation[0], aug.saturation[1]))
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    return out


def augment(
    img_bgr: np.ndarray,
    boxes: np.ndarray,
    dst_hw: tuple[int, int],
    aug: AugmentConfig,
    keep_ratio: bool,
    mean,
    std,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp + colour jitter + normalise one training sample.

    img_bgr: (h, w, 3) uint8; boxes: (n, 4) x1y1x2y2 in original pixels.
    Returns (image (3, H, W) float32 normalised, boxes (n, 4) float32 in input pixels, clipped,
    warp matrix (3, 3) float64). Tiny boxes are NOT dropped here (see dataset.py).
    """
    matrix = random_warp_matrix(img_bgr.shape[:2], dst_hw, aug, keep_ratio, rng)
    warped = warp_image(img_bgr, matrix, tuple(dst_hw))
    jittered = colour_jitter(warped, aug, rng)
    blob = normalize_to_blob(jittered, mean, std)[0]
    return blob, warp_boxes(boxes, matrix, dst_hw), matrix
